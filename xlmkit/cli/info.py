"""`xlmkit info`: the command line of xlmkit.report.info.info. Imports no torch (tested)."""

from __future__ import annotations

import argparse

from xlmkit.report.info import info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a prepared data directory or a run directory")
    parser.add_argument("--verify", action="store_true",
                        help="read everything: every token id and offset of every shard, every file's sha256")


def run(args: argparse.Namespace) -> int:
    info(args.path, verify=args.verify)
    return 0
