"""`xlmkit langid`: the command line of xlmkit.tasks.langid.langid."""

from __future__ import annotations

import argparse

from xlmkit.cli.options import add_model_and_config_arguments, comma_list


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_and_config_arguments(parser, unknown_lang=False)
    parser.add_argument("--data", required=True, help="directory of {lang}.txt files")
    parser.add_argument("--out", required=True, help="output directory (results.json, results.md, model/)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--all-langs", action="store_true",
                       help="every language with a file (default: the model's languages)")
    group.add_argument("--langs", default=None, help="these languages (comma-separated)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="test share per language (default 0.2)")
    parser.add_argument("--dev-fraction", type=float, default=0.1, help="dev share per language (default 0.1)")
    parser.add_argument("--max-per-lang", type=int, default=0,
                        help="use at most this many sentences per language (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-language split")


def run(args: argparse.Namespace) -> int:
    from xlmkit.tasks.langid import langid

    langid(args.model, args.data, args.out, langs=comma_list(args.langs) if args.langs else None,
           all_langs=args.all_langs, test_fraction=args.test_fraction, dev_fraction=args.dev_fraction,
           max_per_lang=args.max_per_lang, seed=args.seed, which=args.which, config=args.config,
           overrides=args.overrides, pooling=args.pooling)
    return 0
