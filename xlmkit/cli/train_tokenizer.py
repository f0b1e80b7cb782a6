"""`xlmkit train-tokenizer`: clean raw text and train only the shared tokenizer (OUT/tokenizer.json).

Same inputs and settings as `xlmkit prepare` (whose pipeline it reuses up to the tokenizer), for
trying vocabulary sizes or tokenizer kinds without encoding the whole corpus.
"""

from __future__ import annotations

import argparse

from xlmkit.data.prepare import add_input_arguments, inputs_from_args, train_tokenizer_only


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from xlmkit.core.config import config_from_args

    cfg = config_from_args(args)
    mono, para = inputs_from_args(args)
    train_tokenizer_only(cfg.prepare, args.out, mono, para, args.data_dir, progress=not args.quiet)
    return 0
