"""Argument groups shared by several commands, and the few conversions of their strings to typed values.

The library never sees an `argparse.Namespace`: each command module of xlmkit.cli reads its arguments
and calls the command's typed function with explicit parameters. Imports stay light (no torch), so
`xlmkit COMMAND --help` answers at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_config_arguments(parser: argparse.ArgumentParser, default: str = "tiny") -> None:
    from xlmkit.core.config import PRESETS

    parser.add_argument("--config", default=default,
                        help=f"preset ({', '.join(PRESETS)}) or a .toml/.yaml file (default: {default})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set train.lr=3e-4 (repeatable)")


def config_from_args(args: argparse.Namespace):
    """The `Config` of --config and --set."""
    from xlmkit.core.config import load_config

    return load_config(args.config, args.overrides)


POOLINGS = ("mean", "first")  # xlmkit.tasks.finetune.POOLINGS (a test checks they agree)


def add_model_and_config_arguments(parser: argparse.ArgumentParser, unknown_lang: bool = True,
                                   pooling: bool = True, model_help: str | None = None) -> None:
    """The pretrained model and fine-tuning settings of finetune, evaluate and langid."""
    parser.add_argument("--model", required=True, help=model_help or "pretrained run directory (or checkpoint directory)")
    parser.add_argument("--which", default="best", choices=("best", "latest"),
                        help="checkpoint of the run to start from (default: best)")
    parser.add_argument("--config", default=None,
                        help="preset or config file whose finetune section to use (default: the run's own)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="finetune.KEY=VALUE",
                        help="override a fine-tuning setting, e.g. --set finetune.lr=1e-4 (repeatable; also "
                             "model.dropout / model.attention_dropout)")
    if unknown_lang:
        parser.add_argument("--unknown-lang-id", default=None, metavar="LANG|ID",
                            help="language-embedding id for languages the model has none for: a language of "
                                 "the model (e.g. en) or an integer id (default: such languages are an error)")
    if not pooling:
        return
    parser.add_argument("--pooling", default="mean", choices=POOLINGS,
                        help="sentence representation for classification / pair: mean of the tokens "
                             "(default) or the first token (XLM)")


def comma_list(value: str) -> list[str]:
    """'a,b,,c' -> ['a', 'b', 'c']: the non-blank parts, as written (callers canonicalise them)."""
    return [part for part in value.split(",") if part.strip()]


def input_paths(mono: list[str], para: list[str], data_dir: list[str] | None) -> tuple[dict, dict]:
    """--mono LANG=PATH / --para A-B=PATH_A,PATH_B values -> {code: [files]} dicts, codes as given
    (duplicate text is caught by xlmkit.data.prepare.resolve_sources)."""
    from xlmkit.core.errors import DataError

    mono_files: dict[str, list[Path]] = {}
    for item in mono:
        code, sep, path = item.partition("=")
        if not sep or not code or not path:
            raise DataError(f"--mono {item!r}: expected LANG=PATH, e.g. --mono en=en.txt")
        mono_files.setdefault(code, []).append(Path(path))
    para_files: dict[str, list[tuple[Path, Path]]] = {}
    for item in para:
        code, sep, paths = item.partition("=")
        files = paths.split(",")
        if not sep or not code or len(files) != 2 or not all(files):
            raise DataError(f"--para {item!r}: expected A-B=PATH_A,PATH_B, e.g. --para en-fr=train.en,train.fr")
        para_files.setdefault(code, []).append((Path(files[0]), Path(files[1])))
    if not mono_files and not para_files and not data_dir:
        raise DataError("no input text: give --data-dir, --mono LANG=PATH or --para A-B=PATH_A,PATH_B")
    return mono_files, para_files
