"""`xlmkit train-mt`, `xlmkit translate`, `xlmkit evaluate-mt`: the command lines of
xlmkit.tasks.translation.

    xlmkit train-mt --data DATA --out MT --init PRETRAINED [--set mt.ae_steps=en,fr --set mt.bt_steps=en-fr,fr-en]
    xlmkit translate --model MT --from de --to en < in.de > out.en       # or --input / --output
    xlmkit evaluate-mt --model MT --from de --to en --src test.de --ref test.en    # sacreBLEU + chrF
    xlmkit generate --model CLM_RUN --lang en --prompt "The dog" --sample --top-p 0.9  # text from a CLM run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments_for(name: str, parser: argparse.ArgumentParser) -> None:
    from xlmkit.cli.options import add_config_arguments

    if name == "train-mt":
        parser.add_argument("--data", required=True, help="prepared data directory (from `xlmkit prepare`)")
        parser.add_argument("--out", required=True, help="run directory to write")
        parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
        parser.add_argument("--init", metavar="RUN", help="pretrained run whose encoder initialises encoder and "
                                                          "decoder (prepare --data with `xlmkit prepare --tokenizer RUN`)")
        add_config_arguments(parser, default="tiny")
        return
    if name == "generate":
        parser.add_argument("--model", required=True, help="run pretrained with CLM steps (train.clm_steps)")
        parser.add_argument("--lang", required=True, help="language of the prompts")
        parser.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
        parser.add_argument("--input", default=None, help="file of prompts, one per line (- = stdin)")
        parser.add_argument("--max-new-tokens", type=int, default=40)
        parser.add_argument("--sample", action="store_true", help="sample (default: greedy)")
        parser.add_argument("--temperature", type=float, default=1.0)
        parser.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
        parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = all)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--which", default="best", choices=("best", "latest"))
        parser.add_argument("--device", default="auto")
        parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
        return
    parser.add_argument("--model", required=True, help="translation run (from `xlmkit train-mt`)")
    parser.add_argument("--which", default="best", choices=("best", "latest"), help="checkpoint (default: best)")
    parser.add_argument("--from", dest="src_lang", required=True, help="source language")
    parser.add_argument("--to", dest="tgt_lang", required=True, help="target language")
    parser.add_argument("--beam", type=int, default=5, help="beam size (1 = greedy; default 5)")
    parser.add_argument("--length-penalty", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per decoding batch")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    if name == "translate":
        parser.add_argument("--input", default="-", help="text file, one sentence per line (default: stdin)")
        parser.add_argument("--output", default="-", help="where the translations go (default: stdout)")
    else:
        parser.add_argument("--src", dest="src_file", required=True, help="source sentences, one per line")
        parser.add_argument("--ref", dest="ref_file", required=True, help="reference translations, line by line")
        parser.add_argument("--out", default=None, help="table to write (default: MODEL/eval/mt/SRC-TGT.{json,md})")


def _read_input(path: str) -> tuple[list[str], str]:
    from xlmkit.tasks.retrieval import decode_lines, read_lines

    if path != "-":
        return read_lines(path), path
    return decode_lines(sys.stdin.buffer.read(), "<stdin>"), "<stdin>"


def _translate(args, lines: list[str], where: str):
    from tqdm.auto import tqdm

    from xlmkit.tasks.translation import load_translator, translate

    if args.beam < 1 or args.batch_size < 1:
        from xlmkit.core.errors import XlmkitError

        raise XlmkitError("--beam and --batch-size must be >= 1")
    tr = load_translator(args.model, args.which, args.device, args.precision)
    with tqdm(total=sum(1 for x in lines if x.strip()), desc=f"translate {args.src_lang}-{args.tgt_lang}", unit="sent",
              file=sys.stderr, disable=len(lines) < 2) as bar:
        out = translate(tr, lines, args.src_lang, args.tgt_lang, args.beam, args.batch_size, args.length_penalty, bar.update)
    if out.truncated:
        print(f"[translate] warning: {out.truncated} of {len(lines)} lines of {where} are longer than the model's "
              f"{tr.framing.max_len} positions and were cut", file=sys.stderr)
    return tr, out


def run(args: argparse.Namespace) -> int:
    if args.command == "train-mt":
        from xlmkit.cli.options import config_from_args
        from xlmkit.core.runtime import dist_info_from_env, distributed_errors
        from xlmkit.tasks.translation import train_translation

        cfg = config_from_args(args)
        with distributed_errors(cfg.train.dist_timeout_s):
            final = train_translation(cfg, args.data, args.out, resume=args.resume, init=args.init)
        if dist_info_from_env().is_main:
            bleu = {k[5:]: v for k, v in final.items() if k.startswith("bleu/")}
            if bleu:
                print(f"[train-mt] step {final['step']}: valid BLEU "
                      + ", ".join(f"{d} {v:.2f}" for d, v in sorted(bleu.items())))
            print(f"[train-mt] done in {final['elapsed_s']:.1f}s: {args.out}")
        return 0

    if args.command == "generate":
        from xlmkit.core.errors import XlmkitError
        from xlmkit.tasks.translation import generate_texts

        prompts = list(args.prompt) + (_read_input(args.input)[0] if args.input else [])
        if not prompts:
            raise XlmkitError("give a --prompt or an --input file of prompts")
        if args.max_new_tokens < 1 or args.temperature <= 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
            raise XlmkitError("--max-new-tokens must be >= 1, --temperature > 0, --top-p in (0, 1], --top-k >= 0")
        for line in generate_texts(args.model, prompts, args.lang, args.max_new_tokens, args.sample,
                                   args.temperature, args.top_k, args.top_p, args.seed, args.which, args.device,
                                   args.precision):
            print(line)
        return 0

    if args.command == "translate":
        lines, where = _read_input(args.input)
        _tr, out = _translate(args, lines, where)
        text = "".join(line + "\n" for line in out.lines)
        if args.output == "-":
            sys.stdout.write(text)
        else:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(text, encoding="utf-8")
        return 0

    # evaluate-mt
    from xlmkit.core.errors import DataError
    from xlmkit.report.render import write_table
    from xlmkit.tasks.retrieval import read_lines
    from xlmkit.tasks.translation import score_translations

    src, refs = read_lines(args.src_file), read_lines(args.ref_file)
    if len(src) != len(refs):
        raise DataError(f"{args.src_file} has {len(src)} lines but {args.ref_file} has {len(refs)}")
    _tr, out = _translate(args, src, args.src_file)
    scores = score_translations(out.lines, refs)
    direction = f"{args.src_lang}-{args.tgt_lang}"
    stem = Path(args.out) if args.out else Path(args.model) / "eval" / "mt" / direction
    row = {"direction": direction, "sentences": len(src), "bleu": round(scores["bleu"], 2),
           "chrf": round(scores["chrf"], 2)}
    write_table(stem, [row], ["direction", "sentences", "bleu", "chrf"],
                f"Translation {direction}: sacreBLEU (13a, mixed case) and chrF",
                meta={"model": str(args.model), "src": str(args.src_file), "ref": str(args.ref_file),
                      "beam": args.beam})
    (stem.parent / (stem.name + ".hyp")).write_text("".join(x + "\n" for x in out.lines), encoding="utf-8")
    print(f"[evaluate-mt] {direction}: BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f} "
          f"({len(src)} sentences, beam {args.beam}); table {stem}.md")
    return 0
