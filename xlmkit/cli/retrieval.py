"""`xlmkit embed` and `xlmkit retrieve`: the command line of xlmkit.tasks.retrieval.embed_file and retrieve."""

from __future__ import annotations

import argparse
import sys

from xlmkit.cli.options import comma_list


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="run directory or checkpoint directory")
    parser.add_argument("--which", choices=("best", "latest"), default="best",
                        help="checkpoint of a run directory (default: best)")
    parser.add_argument("--layer", type=int, default=-1,
                        help="hidden-state index to mean-pool: 0 = embeddings, 1..n_layers, -1 = last (default)")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per forward pass (default: 64)")
    parser.add_argument("--max-len", type=int, default=None,
                        help="max tokens per sentence, wrapping included (default: the model's max_positions)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="forward-pass precision (output is always float32; default: auto = bf16 where the "
                             "hardware computes it natively, else fp32)")
    parser.add_argument("--wrap", choices=("auto", "xlm", "roberta"), default="auto",
                        help="sentence wrapping: xlm = </s> … </s>, roberta = <s> … </s>; "
                             "auto = vocab.json's sentence_wrap, else xlm")
    parser.add_argument("--unknown-lang-id", default=None, metavar="ID|LANG",
                        help="language-embedding id (or a language of the model) for languages the model "
                             "has no embedding for (default: embed refuses, retrieve skips them)")
    parser.add_argument("--random-init", action="store_true",
                        help="use a randomly initialised model of the run's shape (a baseline)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init (default: 0)")
    parser.add_argument("--onnx", default=None, metavar="MODEL.onnx",
                        help="compute the embeddings with onnxruntime on this graph (xlmkit export-onnx of the "
                             "run; last layer only; needs the onnx extra)")


def add_arguments_for(name: str, parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser)
    if name == "embed":
        parser.add_argument("--input", required=True, help="text file, one sentence per line")
        parser.add_argument("--lang", required=True, help="language of the input (en, fra, …)")
        parser.add_argument("--out", required=True, help="output .npy file: float32 (lines, dim)")
    elif name == "retrieve":
        parser.add_argument("--data", required=True,
                            help="directory of parallel test files (tatoeba.XXX-eng.XXX / .eng, or {a}-{b}.{a})")
        parser.add_argument("--langs", default=None,
                            help="comma-separated languages (any code form: deu,fra or de,fr); default: the "
                                 "model's languages present in the data (all of the data's without lang2id)")
        parser.add_argument("--pivot", default="en", help="the side every language retrieves from (default: en)")
        parser.add_argument("--both-directions", action="store_true", help="also report en→xx accuracy")
        parser.add_argument("--center", action="store_true",
                            help="subtract each language's mean embedding before cosine similarity "
                                 "(removes the language offset; not part of the XTREME protocol)")
        parser.add_argument("--max-sentences", type=int, default=0,
                            help="use the first N lines of each file (default: 0 = all)")
        parser.add_argument("--out", default=None,
                            help="output directory for retrieval.json / retrieval.md "
                                 "(default: RUN/eval/retrieve-<data dir name>[-centered][-random-init])")
    else:
        raise ValueError(f"xlmkit.cli.retrieval serves embed and retrieve, not {name!r}")


def _encoder_options(args: argparse.Namespace) -> dict:
    return dict(which=args.which, layer=args.layer, batch_size=args.batch_size, max_len=args.max_len,
                device=args.device, precision=args.precision, wrap=args.wrap, unknown_lang_id=args.unknown_lang_id,
                random_init=args.random_init, seed=args.seed, onnx=args.onnx)


def run(args: argparse.Namespace) -> int:
    from xlmkit.core.errors import XlmkitError
    from xlmkit.tasks.retrieval import embed_file, retrieve

    if args.command == "embed":
        embed_file(args.model, args.input, args.lang, args.out, **_encoder_options(args))
        return 0
    if args.command == "retrieve":
        result = retrieve(args.model, args.data, args.out,
                          langs=comma_list(args.langs) if args.langs is not None else None, pivot=args.pivot,
                          both_directions=args.both_directions, centered=args.center,
                          max_sentences=args.max_sentences, **_encoder_options(args))
        if not result["rows"]:
            print("[retrieve] no language evaluated", file=sys.stderr)
            return 1
        return 0
    raise XlmkitError(f"xlmkit.cli.retrieval serves embed and retrieve, not {args.command!r}")
