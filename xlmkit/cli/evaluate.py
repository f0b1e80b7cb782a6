"""`xlmkit evaluate`: the command line of xlmkit.tasks.evaluate.evaluate (zero-shot transfer)."""

from __future__ import annotations

import argparse

from xlmkit.cli.options import add_model_and_config_arguments, comma_list


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from xlmkit.tasks.io import TASKS

    add_model_and_config_arguments(parser)
    parser.add_argument("--task", default=None, choices=TASKS, help="task (default: finetune.task)")
    parser.add_argument("--data", required=True, help="data directory or comma-separated files")
    parser.add_argument("--train-lang", default=None, help="language to fine-tune on (default: finetune.train_lang, en)")
    parser.add_argument("--langs", default=None, help="test only these languages (comma-separated; default: all)")
    parser.add_argument("--out", required=True, help="output directory (results.json, results.md, model/)")
    parser.add_argument("--train-fraction", type=float, default=0.8,
                        help="share of the training language's ids used for training when it has no train "
                             "file (the rest is held out in every language; default 0.8)")
    parser.add_argument("--dev-fraction", type=float, default=0.1,
                        help="share of the training examples kept as dev when there is no dev file (default 0.1)")
    parser.add_argument("--test-all", action="store_true",
                        help="test the other languages on all their examples, not only the held-out ids")
    parser.add_argument("--train-split", default="train", choices=("train", "dev"),
                        help="the training language's split to fine-tune on (default train; dev for sets without "
                             "training data, as XNLI's en.dev: then other languages without a test file are "
                             "tested on their dev file)")
    parser.add_argument("--test-split", default="test", choices=("test", "dev"),
                        help="the split every language is tested on when the training language has a train "
                             "file (default test; dev for sets that publish train and dev only, as SIB-200)")
    parser.add_argument("--per-class", action="store_true", help="also report per-class precision / recall / F1")
    parser.add_argument("--unknown-labels", default="error", choices=("error", "ignore"),
                        help="a test label unseen in training: error (default) or leave it out of the scores")
    parser.add_argument("--center", action="store_true",
                        help="move each test language's features to the training language's mean before the "
                             "head (per-language mean centering, Libovicky et al. 2020; test inputs, no labels)")
    parser.add_argument("--align", action="append", default=[], metavar="DIR",
                        help="fit, per test language, an affine map of its features onto the training language's "
                             "on the parallel text in DIR (prepare's file names; repeatable), applied before the "
                             "head (Libovicky et al. 2020's learned projection)")
    parser.add_argument("--align-sentences", type=int, default=2000,
                        help="parallel sentence pairs per language for --align, drawn evenly (default 2000)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train / dev / test id split")


def run(args: argparse.Namespace) -> int:
    from xlmkit.tasks.evaluate import evaluate

    evaluate(args.model, args.data, args.out, task=args.task, train_lang=args.train_lang,
             langs=comma_list(args.langs) if args.langs else None, which=args.which, config=args.config,
             overrides=args.overrides, pooling=args.pooling, unknown_lang_id=args.unknown_lang_id,
             train_fraction=args.train_fraction, dev_fraction=args.dev_fraction, test_all=args.test_all,
             train_split=args.train_split, test_split=args.test_split, per_class=args.per_class,
             unknown_labels=args.unknown_labels, split_seed=args.split_seed,
             center=args.center, align=args.align, align_sentences=args.align_sentences)
    return 0
