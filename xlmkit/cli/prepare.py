"""`xlmkit prepare`: the command line of xlmkit.data.prepare.prepare_data."""

from __future__ import annotations

import argparse

from xlmkit.cli.options import add_config_arguments, config_from_args, input_paths


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The raw-text inputs and settings of prepare and train-tokenizer."""
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--data-dir", action="append", default=None,
                        help="folder with {lang}.txt and [name.]{a}-{b}.{a}/.{b} files (also looked for in its "
                             "mono/ and parallel/ subfolders); repeatable")
    parser.add_argument("--mono", action="append", default=[], metavar="LANG=PATH",
                        help="a monolingual text file, one sentence per line (repeatable, also for one language: "
                             "its corpora are used together)")
    parser.add_argument("--para", action="append", default=[], metavar="A-B=PATH_A,PATH_B",
                        help="line-aligned parallel files (repeatable, also for one pair)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    add_config_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    parser.add_argument("--tokenizer", metavar="RUN_OR_TOKENIZER_JSON",
                        help="reuse this run's tokenizer and its ids (RUN/tokenizer.json + RUN/vocab.json) instead "
                             "of training one, e.g. to continue pretraining a run made by `xlmkit import`")


def run(args: argparse.Namespace) -> int:
    from xlmkit.data.prepare import prepare_data

    cfg = config_from_args(args)
    mono, para = input_paths(args.mono, args.para, args.data_dir)
    prepare_data(cfg.prepare, args.out, mono, para, args.data_dir, progress=not args.quiet, tokenizer=args.tokenizer)
    return 0
