"""Compressed models: sentences/s, size and accuracy of fp32, int8, trimmed and ONNX variants, in one run.

    python bench/compress.py                      # D=256, 4 layers, V=32000, 2048 sentences, 2 threads
    python bench/compress.py --quick              # a smaller model, fewer sentences (a smoke test)

What is measured, on one fine-tuned model and its compressed copies (each made with the xlmkit
commands' own functions):
- The model: an XLM encoder (language embeddings, post-LN), D=256, 4 layers, FFN 1024, V=32000 (the
  embeddings are ~70% of the weights, as in XLM-R base), with a Unigram tokenizer trained here on the
  shared Leipzig text (en, de, fr) and random initial weights (no pretrained run is at hand in a bench),
  then fine-tuned on SIB-200 English (topic classification, 7 labels, 701 sentences; xlmkit.tasks.finetune).
  Accuracy: SIB-200 dev (99 sentences) in English (in-language) and French / German (zero-shot). A
  random-init encoder fine-tuned on 701 sentences is weak, so the absolute figures are low; the
  column to read is each variant's change against fp32.
- Variants: fp32 (torch), bf16 autocast (torch, for reference), int8 run dequantized on load (what
  `xlmkit quantize` writes and every command loads), int8 run on PyTorch's int8 kernels
  (`xlmkit.interop.compress.int8_kernels`), the run trimmed (`xlmkit trim-vocab`) to the pieces of the
  bench sentences and of SIB-200 en/fr/de, trimmed + int8 kernels, ONNX fp32 and ONNX int8
  (onnxruntime.quantization.quantize_dynamic) on onnxruntime.
- Speed: sentence embeddings (mean-pooled last layer, batch 64, sorted by length) of real sentences:
  ../shared/data/tatoeba lines of English, French and German (without the data: synthetic ones).
  torch and onnxruntime on the same number of threads (--threads, default 2). Best of --repeats
  rounds, the variants taking turns within each round (the machine may be shared).
- Size: bytes of the weights files (model.safetensors + head.safetensors; the .onnx file).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
SIB_LANGS = {"en": "eng_Latn", "fr": "fra_Latn", "de": "deu_Latn"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--sentences", type=int, default=2048)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs on SIB-200 English")
    p.add_argument("--quick", action="store_true", help="D=64, 2 layers, V=4000, 256 sentences, 1 epoch")
    p.add_argument("--work", default=None, help="directory for the runs (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.dim, args.layers, args.vocab, args.sentences, args.epochs, args.repeats = 64, 2, 4000, 256, 1, 1
    return args


def read_sentences(n: int, seed: int = 0) -> tuple[list[str], str]:
    lines: list[str] = []
    for code in ("deu", "fra"):
        for side in (code, "eng"):
            f = SHARED / "tatoeba" / f"tatoeba.{code}-eng.{side}"
            if f.is_file():
                lines += [s for s in f.read_text(encoding="utf-8").splitlines() if s.strip()]
    where = "tatoeba deu, fra and eng lines"
    if not lines:
        import numpy as np

        from xlmkit.data.synthetic import sentence

        rng = np.random.default_rng(seed)
        lines = [" ".join(sentence(rng)["en"] for _ in range(rng.integers(1, 4))) for _ in range(n)]
        where = "synthetic sentences (no ../shared/data/tatoeba)"
    random.Random(seed).shuffle(lines)
    return lines[:n], where


def read_sib(lang: str, split: str):
    from xlmkit.tasks.io import Example

    f = SHARED / "classification" / "sib-200" / SIB_LANGS[lang] / f"{split}.tsv"
    if not f.is_file():
        return None
    rows = [line.split("\t") for line in f.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    return [Example(lang=lang, label=r[1], text=r[2], source=f"{f}:{i + 2}", uid=r[0]) for i, r in enumerate(rows)]


def tokenizer_text(limit: int = 20000) -> list[str]:
    lines = []
    for code in ("eng", "deu", "fra"):
        f = SHARED / "mono" / f"{code}.txt"
        if f.is_file():
            lines += f.read_text(encoding="utf-8").splitlines()[:limit]
    return [s for s in lines if s.strip()]


def build_finetuned(args, work: Path, sentences: list[str]) -> tuple[Path, dict]:
    """A random-init run with a tokenizer trained on real text, fine-tuned on SIB-200 English."""
    import dataclasses

    import torch

    from xlmkit.train.checkpoint import load_model, save_model_run
    from xlmkit.core.config import load_config
    from xlmkit.tasks.finetune import finetune
    from xlmkit.model.encoder import XLMModel
    from xlmkit.data.tokenizer import train_tokenizer

    langs = ["de", "en", "fr"]
    if (work / "ft" / "checkpoints" / "best" / "state.json").is_file():  # --work of an earlier run: reuse it
        return work / "ft", json.loads((work / "ft_info.json").read_text())
    text = tokenizer_text() or sentences
    tok = train_tokenizer(text, langs, kind="unigram", vocab_size=args.vocab)
    tok_path = work / "tokenizer.json"
    tok.save(str(tok_path))
    cfg = load_config("small")
    mcfg = dataclasses.replace(cfg.model, dim=args.dim, n_layers=args.layers, n_heads=max(args.dim // 64, 1),
                               ffn_dim=4 * args.dim, vocab_size=tok.get_vocab_size(), n_langs=3, pad_id=1,
                               max_positions=256)
    cfg = dataclasses.replace(cfg, model=mcfg)
    torch.manual_seed(0)
    vocab = {"lang2id": {lang: i for i, lang in enumerate(langs)},
             "specials": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 4}, "languages": langs, "pairs": [],
             "vocab_size": tok.get_vocab_size()}
    base = work / "base"
    save_model_run(base, XLMModel(mcfg), cfg, vocab, tok_path)
    train, dev = read_sib("en", "train"), read_sib("en", "dev")
    if train is None:
        from xlmkit.data.synthetic import sentence
        from xlmkit.tasks.io import Example
        import numpy as np

        rng = np.random.default_rng(0)
        rows = [sentence(rng) for _ in range(400)]
        train = [Example(lang="en", label=str(r["en"].split()[2] in ("cat", "dog", "bird")), text=r["en"]) for r in rows]
        dev = train[:100]
    ft = dataclasses.replace(cfg.finetune, task="classification", epochs=args.epochs, lr=3e-4, head_lr=1e-3,
                             precision="auto", device="cpu", patience=0)
    t0 = time.time()
    finetune(load_model(base), ft, train, dev, out_dir=work / "ft", log=lambda s: None)
    info = {"finetune_seconds": round(time.time() - t0, 1), "train_examples": len(train)}
    (work / "ft_info.json").write_text(json.dumps(info) + "\n")
    return work / "ft", info


def dev_sets() -> dict[str, list]:
    out = {}
    for lang in SIB_LANGS:
        exs = read_sib(lang, "dev")
        if exs:
            out[lang] = exs
    return out


def accuracy_torch(ft_dir: Path, dev: dict, int8_kernels: bool = False, precision: str = "fp32") -> dict:
    import torch

    from xlmkit.interop.compress import int8_kernels as convert
    from xlmkit.tasks.finetune import TaskEncoder, load_finetuned, predict, score

    ftm = load_finetuned(ft_dir)
    if int8_kernels:
        convert(ftm.model.encoder)
    enc = TaskEncoder(ftm.tokenizer, ftm.vocab, ftm.spec, ftm.model.encoder)
    out = {}
    for lang, exs in dev.items():
        data, _ = enc.encode(exs, allow_unknown=True)
        preds = predict(ftm.model, data, enc.pad_id, 64, torch.device("cpu"), precision)
        out[lang] = 100 * score(exs, preds, list(ftm.spec.labels))["accuracy"]
    return out


def accuracy_onnx(ft_dir: Path, onnx_path: Path, dev: dict, threads: int) -> dict:
    import numpy as np

    from xlmkit.tasks.finetune import TaskEncoder, collate, load_finetuned, score
    from xlmkit.interop.onnx import session

    ftm = load_finetuned(ft_dir)
    sess = session(onnx_path, threads)
    names = {i.name for i in sess.get_inputs()}
    enc = TaskEncoder(ftm.tokenizer, ftm.vocab, ftm.spec, ftm.model.encoder)
    out = {}
    for lang, exs in dev.items():
        data, _ = enc.encode(exs, allow_unknown=True)
        preds = []
        for start in range(0, len(data), 64):
            batch = collate(data[start:start + 64], enc.pad_id)
            feed = {k: v.numpy().astype(np.int64) for k, v in batch.items() if k in names and v is not None}
            preds += sess.run(["logits"], feed)[0].argmax(-1).tolist()
        out[lang] = 100 * score(exs, preds, list(ftm.spec.labels))["accuracy"]
    return out


def torch_encoder(ft_dir: Path, args, int8_kernels: bool = False, precision: str = "fp32"):
    from xlmkit.interop.compress import int8_kernels as convert
    from xlmkit.tasks.retrieval import load_encoder

    enc, _ = load_encoder(ft_dir, device="cpu", precision=precision, batch_size=args.batch)
    if int8_kernels:
        convert(enc.model)
    return enc


def onnx_encoder(ft_dir: Path, onnx_path: Path, args):
    from xlmkit.interop.onnx import session

    enc = torch_encoder(ft_dir, args)
    enc.onnx_session = session(onnx_path, args.threads)
    return enc


def timed_rounds(encoders: list, sentences: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """Best sentences/s (wall clock) and sentences per CPU-second (this process's CPU time, all its
    threads) of each encoder over `repeats` rounds, the encoders taking turns within a round (so
    load from other processes on a shared machine falls on all of them alike)."""
    for enc in encoders:
        enc.embed(sentences[:64], "en")  # warm-up
    best = [0.0] * len(encoders)
    best_cpu = [0.0] * len(encoders)
    for _ in range(repeats):
        for i, enc in enumerate(encoders):
            t0, c0 = time.perf_counter(), time.process_time()
            enc.embed(sentences, "en")
            best[i] = max(best[i], len(sentences) / (time.perf_counter() - t0))
            best_cpu[i] = max(best_cpu[i], len(sentences) / (time.process_time() - c0))
    return best, best_cpu


def main(argv=None) -> int:
    import platform
    import subprocess

    import torch

    from xlmkit.interop.compress import model_bytes, quantize_run, trim_run
    from xlmkit.interop.onnx import export_onnx

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if line.startswith("Model name")), platform.processor())
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="xlmkit-bench-compress-"))
    work.mkdir(parents=True, exist_ok=True)
    sentences, where = read_sentences(args.sentences)
    print(f"[bench] {len(sentences)} sentences ({where}); CPU {cpu}, {args.threads} threads; work dir {work}")
    ft_dir, ft_info = build_finetuned(args, work, sentences)
    print(f"[bench] fine-tuned on SIB-200 en in {ft_info['finetune_seconds']}s")
    dev = dev_sets()
    int8_dir, trim_dir, trim8_dir = work / "int8", work / "trim", work / "trim-int8"
    import shutil

    for d in (int8_dir, trim_dir, trim8_dir):
        shutil.rmtree(d, ignore_errors=True)
    quantize_run(ft_dir, int8_dir)
    trim_text = work / "trim.txt"
    trim_text.write_text("\n".join(sentences + [ex.text for exs in dev.values() for ex in exs]
                                   + [ex.text for lang in SIB_LANGS for ex in (read_sib(lang, "train") or [])]) + "\n",
                         encoding="utf-8")
    trim_info = trim_run(ft_dir, trim_dir, text_files=[trim_text])
    quantize_run(trim_dir, trim8_dir)
    onnx32, onnx8 = work / "model.onnx", work / "model.int8.onnx"
    m32 = export_onnx(ft_dir, onnx32)
    m8 = export_onnx(ft_dir, onnx8, int8=True)
    print(f"[bench] ONNX parity fp32 {m32['parity_max_abs_diff']:.2e}; trimmed vocabulary "
          f"{trim_info['old_vocab']} -> {trim_info['new_vocab']}")

    variants = [
        ("fp32 (torch)", lambda: torch_encoder(ft_dir, args), lambda: accuracy_torch(ft_dir, dev),
         model_bytes(ft_dir)),
        ("bf16 autocast (torch)", lambda: torch_encoder(ft_dir, args, precision="bf16"),
         lambda: accuracy_torch(ft_dir, dev, precision="bf16"), model_bytes(ft_dir)),
        ("int8 run, dequantized on load (torch fp32)", lambda: torch_encoder(int8_dir, args),
         lambda: accuracy_torch(int8_dir, dev), model_bytes(int8_dir)),
        ("int8 run, int8 kernels (torch quantize_dynamic)", lambda: torch_encoder(int8_dir, args, True),
         lambda: accuracy_torch(int8_dir, dev, True), model_bytes(int8_dir)),
        ("trimmed (torch fp32)", lambda: torch_encoder(trim_dir, args), lambda: accuracy_torch(trim_dir, dev),
         model_bytes(trim_dir)),
        ("trimmed + int8, int8 kernels", lambda: torch_encoder(trim8_dir, args, True),
         lambda: accuracy_torch(trim8_dir, dev, True), model_bytes(trim8_dir)),
        ("ONNX fp32 (onnxruntime)", lambda: onnx_encoder(ft_dir, onnx32, args),
         lambda: accuracy_onnx(ft_dir, onnx32, dev, args.threads), onnx32.stat().st_size),
        ("ONNX int8 (onnxruntime quantize_dynamic)", lambda: onnx_encoder(ft_dir, onnx8, args),
         lambda: accuracy_onnx(ft_dir, onnx8, dev, args.threads), onnx8.stat().st_size),
    ]
    speeds, cpu_speeds = timed_rounds([make() for _, make, _, _ in variants], sentences, args.repeats)
    rows = []
    for (name, _, acc, size), speed, cpu_speed in zip(variants, speeds, cpu_speeds):
        rows.append({"variant": name, "sentences_per_s": round(speed, 1), "sentences_per_cpu_s": round(cpu_speed, 1),
                     "bytes": size, "accuracy": acc()})
        print(f"[bench] {name}: {rows[-1]['sentences_per_s']} sentences/s, {size / 1e6:.1f} MB, accuracy {rows[-1]['accuracy']}")
    base = rows[0]
    langs = list(dev)
    print()
    print(f"| variant | sentences/s | speed-up | sentences/CPU-s | speed-up | MB | size | "
          + " | ".join(f"SIB-200 {lang} dev" for lang in langs) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(langs))
    for r in rows:
        accs = " | ".join(f"{r['accuracy'][lang]:.1f} ({r['accuracy'][lang] - base['accuracy'][lang]:+.1f})"
                          for lang in langs)
        print(f"| {r['variant']} | {r['sentences_per_s']:,.0f} | {r['sentences_per_s'] / base['sentences_per_s']:.2f}x "
              f"| {r['sentences_per_cpu_s']:,.0f} | {r['sentences_per_cpu_s'] / base['sentences_per_cpu_s']:.2f}x "
              f"| {r['bytes'] / 1e6:.1f} | {100 * r['bytes'] / base['bytes']:.0f}% | {accs} |")
    result = {"cpu": cpu, "threads": args.threads, "sentences": len(sentences), "where": where,
              "model": {"dim": args.dim, "layers": args.layers, "vocab": args.vocab}, "trim": trim_info,
              "finetune": ft_info, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
