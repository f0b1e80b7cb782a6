"""`xlmkit demo`: the main job on a built-in default, end to end in a minute on a laptop CPU.

Without arguments: writes a small generated en/fr/de corpus with en-fr and en-de parallel text
(xlmkit.data.synthetic), prepares it (shared tokenizer, shards), pretrains a `tiny` XLM with MLM + TLM,
and prints validation perplexity per language before and after. With `--data-dir` it runs the same
on real text (e.g. `--data-dir ../shared/data --config small`).

    from xlmkit.cli.demo import demo
    final = demo("runs/demo", steps=50)
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Sequence

from xlmkit.cli.options import add_config_arguments


def demo(out: str | Path = "runs/demo", data_dir: str | Path | None = None, steps: int | None = None,
         config: str = "tiny", overrides: Sequence[str] = ()) -> dict:
    """Prepare `data_dir` (default: a generated corpus) into OUT/data and pretrain OUT/run on it; returns
    pretraining's final metrics. `steps` sets train.max_steps."""
    from xlmkit.core.config import load_config
    from xlmkit.data.prepare import prepare_data
    from xlmkit.train.pretrain import pretrain

    overrides = list(overrides)
    if steps is not None:
        overrides.append(f"train.max_steps={steps}")
    if data_dir is None and not any(o.startswith("prepare.vocab_size=") for o in overrides):
        # The generated corpus has a few hundred distinct words: a larger vocabulary cannot be learnt from it.
        overrides.insert(0, "prepare.vocab_size=150")
    cfg = load_config(config, overrides)
    out = Path(out)
    if data_dir is None:
        from xlmkit.data.synthetic import write_corpus

        corpus = write_corpus(out / "corpus", n_mono=3000, n_para=1500, seed=cfg.prepare.seed)
        print(f"[demo] built-in corpus (en, fr, de; en-fr, en-de) written to {corpus}")
    else:
        corpus = Path(data_dir)
    prepared = prepare_data(cfg.prepare, out / "data", data_dir=corpus)
    print(f"[demo] prepared data in {prepared}")
    run_dir = out / "run"
    if (run_dir / "config.json").is_file():  # the demo's own earlier run: start it again from scratch
        print(f"[demo] replacing the earlier demo run in {run_dir}")
        shutil.rmtree(run_dir)
    final = pretrain(cfg, prepared, run_dir)
    _print_summary(out / "run" / "metrics.jsonl")
    print(f"[demo] done: run directory {out / 'run'} (try `xlmkit info {out / 'run'}`)")
    return final


def _print_summary(metrics_path: Path) -> None:
    valid = [json.loads(line) for line in metrics_path.read_text().splitlines() if '"valid"' in line]
    if not valid:
        return
    first, last = valid[0], valid[-1]
    keys = sorted(k for k in last if k.startswith("ppl/"))
    print(f"[demo] validation perplexity, step {first['step']} -> step {last['step']}:")
    for k in keys:
        print(f"  {k[4:]:>8}: {first.get(k, float('nan')):10.2f} -> {last[k]:10.2f}")


# ----------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument("--data-dir", default=None,
                        help="raw text directory ({lang}.txt, {a}-{b}.{a}); default: a built-in generated corpus")
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the preset's)")
    add_config_arguments(parser, default="tiny")


def run(args: argparse.Namespace) -> int:
    demo(args.out, args.data_dir, args.steps, args.config, args.overrides)
    return 0
