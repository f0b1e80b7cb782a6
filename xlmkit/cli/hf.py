"""`xlmkit export` and `xlmkit import`: the command line of xlmkit.interop.hf.export_run and
import_checkpoint."""

from __future__ import annotations

import argparse

from xlmkit.cli.options import add_config_arguments


def add_arguments_for(name: str, parser: argparse.ArgumentParser) -> None:
    from xlmkit.interop.hf import FORMATS

    if name == "export":
        parser.add_argument("run_dir", help="xlmkit run directory (or a checkpoint directory inside one)")
        parser.add_argument("out_dir", help="directory to write (loads with transformers' from_pretrained)")
        parser.add_argument("--format", choices=FORMATS, default=None,
                            help="xlm: XLMWithLMHeadModel; xlmr: XLMRobertaForMaskedLM (default: xlmr for a model "
                                 "with XLM-R's MLM head, model.head_transform=true; xlm otherwise)")
        parser.add_argument("--which", choices=("best", "latest"), default="best",
                            help="checkpoint of a run directory to export (default: best)")
        parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT_DIR")
    else:
        parser.add_argument("hf_dir", help="local transformers XLM / XLM-R model directory (config.json + weights)")
        parser.add_argument("run_dir", help="xlmkit run directory to create")
        parser.add_argument("--languages", default="",
                            help="XLM-R only: comma-separated languages the model covers, recorded in vocab.json "
                                 "(all map to language id 0; default: 'xx')")
        add_config_arguments(parser, default="base")


def run(args: argparse.Namespace) -> int:
    from xlmkit.interop.hf import export_run, import_checkpoint

    if args.command == "export":
        out = export_run(args.run_dir, args.out_dir, fmt=args.format, which=args.which, overwrite=args.overwrite)
        print(f"wrote {out} (transformers: AutoModelForMaskedLM.from_pretrained / AutoTokenizer.from_pretrained)")
        return 0
    languages = [x.strip() for x in args.languages.split(",") if x.strip()]
    out = import_checkpoint(args.hf_dir, args.run_dir, languages=languages, config=args.config,
                            overrides=args.overrides)
    print(f"wrote run {out}")
    return 0
