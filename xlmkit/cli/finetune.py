"""`xlmkit finetune`: the command line of xlmkit.tasks.finetune.finetune_run."""

from __future__ import annotations

import argparse

from xlmkit.cli.options import add_model_and_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from xlmkit.tasks.io import TASKS

    add_model_and_config_arguments(parser)
    parser.add_argument("--train", required=True, help="training file(s), comma-separated, or a directory")
    parser.add_argument("--dev", default=None, help="dev file(s) for early stopping and the best checkpoint")
    parser.add_argument("--task", default=None, choices=TASKS, help="task (default: finetune.task)")
    parser.add_argument("--out", required=True, help="output directory for the fine-tuned model")
    parser.add_argument("--resume", action="store_true",
                        help="continue the fine-tuning run in --out from its newest checkpoint (same settings)")


def run(args: argparse.Namespace) -> int:
    from xlmkit.tasks.finetune import finetune_run

    finetune_run(args.model, args.train, args.out, dev=args.dev, task=args.task, which=args.which,
                 config=args.config, overrides=args.overrides, pooling=args.pooling,
                 unknown_lang_id=args.unknown_lang_id, resume=args.resume)
    return 0
