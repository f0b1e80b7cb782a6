"""`xlmkit distill`: the command line of xlmkit.train.distill.distill."""

from __future__ import annotations

import argparse

from xlmkit.cli.options import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="the pretrained run (or checkpoint) to distil")
    parser.add_argument("--data", required=True, help="prepared data directory (the teacher's)")
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument("--resume", action="store_true", help="continue the distillation in --out")
    add_config_arguments(parser, default="")


def run(args: argparse.Namespace) -> int:
    from xlmkit.train.distill import distill

    final = distill(args.teacher, args.data, args.out, config=args.config, overrides=args.overrides,
                    resume=args.resume)
    print(f"[distill] done in {final['elapsed_s']:.1f}s: {args.out}"
          + (f"; student validation mean perplexity {final['mean_ppl']:.2f}" if "mean_ppl" in final else ""))
    return 0
