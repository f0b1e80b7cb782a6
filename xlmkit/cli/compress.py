"""`xlmkit quantize` and `xlmkit trim-vocab`: the command line of xlmkit.interop.compress.quantize and
trim_run."""

from __future__ import annotations

import argparse
import time

from xlmkit.cli.options import comma_list


def add_arguments_for(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="run directory (pretrained or fine-tuned)")
    parser.add_argument("--out", required=True, help="output run directory")
    parser.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint (default: best)")
    if name == "quantize":
        parser.add_argument("--text", default=None,
                            help="text file (one sentence a line) to compare fp32 and int8 sentence embeddings on")
        parser.add_argument("--lang", default="en", help="language of --text (default: en)")
        parser.add_argument("--dev", default=None,
                            help="fine-tuned run: task file(s) to compare fp32 and int8 accuracy on")
    elif name == "trim-vocab":
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--text", nargs="+", default=None, help="text files whose pieces to keep")
        group.add_argument("--langs", default=None,
                           help="comma-separated languages whose prepared shards (vocab.json data_dir) to keep")
    else:
        raise ValueError(f"xlmkit.cli.compress serves quantize and trim-vocab, not {name!r}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def run(args: argparse.Namespace) -> int:
    from xlmkit.core.errors import XlmkitError
    from xlmkit.interop.compress import quantize, trim_run

    t0 = time.perf_counter()
    if args.command == "quantize":
        info = quantize(args.run_dir, args.out, args.which, text=args.text, lang=args.lang, dev=args.dev)
        print(f"[quantize] {args.run_dir} -> {args.out}: {info['tensors']} weight matrices in int8; weights "
              f"{_mb(info['fp32_bytes'])} -> {_mb(info['int8_bytes'])} "
              f"({100 * info['int8_bytes'] / info['fp32_bytes']:.0f}%)")
        if "embeddings" in info:
            agree = info["embeddings"]
            print(f"[quantize] sentence embeddings int8 vs fp32 on {args.text}: mean cosine "
                  f"{agree['mean_cosine']:.5f} (min {agree['min_cosine']:.5f}), max abs diff {agree['max_abs_diff']:.4g}")
        if "dev" in info:
            a, b = info["dev"]["fp32"], info["dev"]["int8"]
            print(f"[quantize] {args.dev}: fp32 {100 * a:.2f}, int8 {100 * b:.2f} ({100 * (b - a):+.2f} points)")
    elif args.command == "trim-vocab":
        langs = comma_list(args.langs or "")
        info = trim_run(args.run_dir, args.out, args.text or (), langs, args.which)
        print(f"[trim-vocab] {args.run_dir} -> {args.out}: vocabulary {info['old_vocab']} -> {info['new_vocab']} "
              f"pieces; weights {_mb(info['fp32_bytes'])} -> {_mb(info['trimmed_bytes'])} "
              f"({100 * info['trimmed_bytes'] / info['fp32_bytes']:.0f}%)")
    else:
        raise XlmkitError(f"xlmkit.cli.compress serves quantize and trim-vocab, not {args.command!r}")
    print(f"[{args.command}] done in {time.perf_counter() - t0:.1f}s")
    return 0
