"""`xlmkit report`: the command line of xlmkit.report.render.build_report."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory (metrics.jsonl, config.json, eval*/)")
    parser.add_argument("--out", default=None, help="output directory (default: RUN_DIR/report)")
    parser.add_argument("--tables", nargs="+", default=[], metavar="JSON",
                        help="more table files to include (besides RUN_DIR/eval*/**/*.json)")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")


def run(args: argparse.Namespace) -> int:
    from xlmkit.report.render import build_report

    summary = build_report(args.run_dir, args.out, args.tables, plots=not args.no_plots)
    print(f"[report] {len(summary['figures'])} plot(s), {len(summary['tables'])} table file(s)"
          + (f", {len(summary['skipped'])} non-table JSON skipped" if summary["skipped"] else "")
          + (f", {summary['bad_lines']} unreadable metrics line(s) skipped" if summary["bad_lines"] else ""))
    print(f"[report] {summary['html']}")
    print(f"[report] {summary['markdown']}")
    return 0
