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
         config: str = "tiny", overrides: Sequence[str] = (), mt_steps: int = 150) -> dict:
    """Prepare `data_dir` (default: a generated corpus) into OUT/data, pretrain OUT/run on it, then
    train en <-> fr translation from it for `mt_steps` steps (OUT/mt; 0 = skip); returns pretraining's
    final metrics. `steps` sets train.max_steps."""
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
    if mt_steps > 0:
        _translation(cfg, prepared, run_dir, out / "mt", mt_steps)
    print(f"[demo] done: run directory {out / 'run'} (try `xlmkit info {out / 'run'}`)")
    return final


def _translation(cfg, data_dir: Path, run_dir: Path, mt_dir: Path, steps: int) -> None:
    """A few seconds of en <-> fr translation from the pretrained run (xlmkit train-mt), and one held-out
    sentence translated before and after."""
    import dataclasses

    from xlmkit.core.config import TranslateConfig
    from xlmkit.data.format import PreparedData
    from xlmkit.tasks.translation import load_translator, train_translation, translate, translator_from_pretrained

    data = PreparedData(data_dir)
    pair = next((p for p in data.pairs if set(p.split("-")) == {"en", "fr"}), None)
    if pair is None or data.count("para", pair, "valid") == 0:
        print("[demo] no en-fr parallel text: translation skipped")
        return
    side = data.para(pair, "valid")[0 if pair.startswith("en") else 1]
    tokenizer = data.tokenizer
    sentence = tokenizer.decode(side.sentence(0).tolist())
    before = translate(translator_from_pretrained(run_dir), [sentence], "en", "fr", beam_size=1).lines[0]
    mt_cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, max_steps=steps, eval_every=steps, save_every=steps, log_every=10,
                                       warmup_steps=min(cfg.train.warmup_steps, steps)),
        mt=TranslateConfig(mt_steps=("en-fr", "fr-en"), eval_sentences=50, max_len=64))
    if (mt_dir / "config.json").is_file():
        shutil.rmtree(mt_dir)
    final = train_translation(mt_cfg, data_dir, mt_dir, init=run_dir)
    after = translate(load_translator(mt_dir), [sentence], "en", "fr", beam_size=5).lines[0]
    print(f"[demo] translation en -> fr after {steps} steps ({final['elapsed_s']:.0f}s; valid BLEU en-fr "
          f"{final.get('bleu/en-fr', float('nan')):.1f}, fr-en {final.get('bleu/fr-en', float('nan')):.1f}):")
    print(f"  source: {sentence}")
    print(f"  before: {before}")
    print(f"  after:  {after}")


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
    parser.add_argument("--mt-steps", type=int, default=150,
                        help="translation steps (en <-> fr) from the pretrained model; 0 = skip (default 150)")
    add_config_arguments(parser, default="tiny")


def run(args: argparse.Namespace) -> int:
    demo(args.out, args.data_dir, args.steps, args.config, args.overrides, args.mt_steps)
    return 0
