"""`xlmkit train-tokenizer`: clean raw text and train only the shared tokenizer (OUT/tokenizer.json).

Same inputs and settings as `xlmkit prepare` (whose pipeline it reuses up to the tokenizer), for
trying vocabulary sizes or tokenizer kinds without encoding the whole corpus. The command line of
xlmkit.data.prepare.train_tokenizer_only.
"""

from __future__ import annotations

import argparse

from xlmkit.cli.options import config_from_args, input_paths
from xlmkit.cli.prepare import add_input_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from xlmkit.data.prepare import train_tokenizer_only

    cfg = config_from_args(args)
    mono, para = input_paths(args.mono, args.para, args.data_dir)
    train_tokenizer_only(cfg.prepare, args.out, mono, para, args.data_dir, progress=not args.quiet)
    return 0
