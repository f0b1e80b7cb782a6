"""`xlmkit pretrain` (also under torchrun): the command line of xlmkit.train.pretrain.pretrain."""

from __future__ import annotations

import argparse

from xlmkit.cli.options import add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="prepared data directory (from `xlmkit prepare`)")
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its latest checkpoint (same config)")
    parser.add_argument("--init", metavar="RUN_OR_CHECKPOINT",
                        help="start a new run from this run's weights and model config (e.g. one made by "
                             "`xlmkit import`); prepare --data with `xlmkit prepare --tokenizer RUN`")
    add_config_arguments(parser, default="tiny")


def run(args: argparse.Namespace) -> int:
    from xlmkit.core.runtime import dist_info_from_env, distributed_errors
    from xlmkit.train.pretrain import pretrain

    cfg = config_from_args(args)
    with distributed_errors(cfg.train.dist_timeout_s):  # another process died or hangs: one clear error
        final = pretrain(cfg, args.data, args.out, resume=args.resume, init=args.init)
    if not dist_info_from_env().is_main:  # only rank 0 reports
        return 0
    langs = sorted(k[4:] for k in final if k.startswith("ppl/"))
    if langs:
        print(f"[pretrain] step {final['step']}: validation perplexity "
              + ", ".join(f"{lang} {final[f'ppl/{lang}']:.2f}" for lang in langs)
              + (f"; mean {final['mean_ppl']:.2f}" if "mean_ppl" in final else ""))
    print(f"[pretrain] done in {final['elapsed_s']:.1f}s: {args.out}")
    return 0
