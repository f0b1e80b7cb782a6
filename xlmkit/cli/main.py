"""The `xlmkit` command: a table of subcommands, one small module of xlmkit.cli each.

Each command module reads its arguments (argparse lives only in xlmkit.cli) and calls the command's
typed function in the library with explicit parameters (README, "Python API"). It exposes
`add_arguments(parser)` (or `add_arguments_for(name, parser)` when it serves two commands) and
`run(args) -> int`. Only the chosen subcommand's module is imported, so `xlmkit info` starts in
milliseconds and never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (command module of xlmkit.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("xlmkit.cli.demo", "the main job on a built-in default: prepare data, a short pretraining, a few seconds of translation"),
    "prepare": ("xlmkit.cli.prepare", "clean raw text, train a shared tokenizer, write token shards + manifest"),
    "train-tokenizer": ("xlmkit.cli.train_tokenizer", "train only the shared tokenizer on raw text"),
    "info": ("xlmkit.cli.info", "summarise a prepared data directory or a run directory"),
    "pretrain": ("xlmkit.cli.pretrain", "pretrain with MLM / TLM / CLM on prepared data"),
    "train-mt": ("xlmkit.cli.translate", "train a translation model: mt / ae / bt steps, from a pretrained run"),
    "translate": ("xlmkit.cli.translate", "translate a file or stdin line by line with a train-mt run"),
    "evaluate-mt": ("xlmkit.cli.translate", "sacreBLEU and chrF of a train-mt run on a test set"),
    "generate": ("xlmkit.cli.translate", "continue prompts with a run pretrained with CLM steps (greedy or sampled)"),
    "finetune": ("xlmkit.cli.finetune", "fine-tune a pretrained model on a classification or tagging task"),
    "qa": ("xlmkit.cli.qa", "extractive question answering: fine-tune a span head, zero-shot XQuAD EM / F1"),
    "evaluate": ("xlmkit.cli.evaluate", "zero-shot cross-lingual evaluation: train on one language, test on all"),
    "embed": ("xlmkit.cli.retrieval", "sentence embeddings of a text file"),
    "retrieve": ("xlmkit.cli.retrieval", "bitext retrieval accuracy (Tatoeba protocol)"),
    "langid": ("xlmkit.cli.langid", "train and evaluate a language identifier"),
    "report": ("xlmkit.cli.report", "plots and tables of a run"),
    "quantize": ("xlmkit.cli.compress", "int8 copy of a run (Linear layers and embeddings), loaded by every inference command"),
    "trim-vocab": ("xlmkit.cli.compress", "copy of a run keeping only the vocabulary of given text or languages"),
    "distill": ("xlmkit.cli.distill", "distil a pretrained run into a smaller student (DistilBERT's loss)"),
    "export-onnx": ("xlmkit.cli.export_onnx", "export an encoder (and a fine-tuned head) to ONNX"),
    "export": ("xlmkit.cli.hf", "export a run to a Hugging Face transformers directory"),
    "import": ("xlmkit.cli.hf", "import a local transformers XLM / XLM-R checkpoint as an xlmkit run"),
}


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xlmkit", description="Cross-lingual language model pretraining toolkit.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        args = _top_parser().parse_args(argv)
        if args.version:
            from xlmkit import __version__

            print(__version__)
            return 0
        _top_parser().print_help()
        return 0 if not argv else 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            print(f"xlmkit {name}: not available in this version", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"xlmkit {name}", description=help_text)
    module.add_arguments(parser) if not hasattr(module, "add_arguments_for") else module.add_arguments_for(name, parser)
    args = parser.parse_args(argv[1:])
    args.command = name
    from xlmkit.core.config import ConfigError
    from xlmkit.core.errors import Interrupted, XlmkitError

    try:
        return int(module.run(args) or 0)
    except Interrupted as e:
        print(f"xlmkit {name}: {_one_line(str(e))}", file=sys.stderr)
        return 128 + e.signum
    except (ConfigError, XlmkitError) as e:
        print(f"xlmkit {name}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # a read or write error (EIO, permission, disk full): name the file, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"xlmkit {name}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


def _one_line(message: str) -> str:
    """Errors are one line: a message that quotes a multi-line library error is folded."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


if __name__ == "__main__":
    raise SystemExit(main())
