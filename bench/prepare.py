"""Benchmark `xlmkit prepare`: raw-text throughput and peak memory at two input sizes (10x apart).

    python bench/prepare.py                      # default: ~4 MB and ~40 MB, BPE tokenizer
    python bench/prepare.py --sizes 10,100 --tokenizer unigram

Inputs are built by cycling the real monolingual text in ../shared/data/mono (or the synthetic
corpus when it is missing), with a copy number appended to each repeated line so that every line is
distinct: dedup keeps them all and the work really grows 10x. Each `xlmkit prepare` runs in its own
subprocess; its peak RSS (the largest process of its tree: the parent or one encoding worker) comes
from the kernel's rusage for that child (os.wait4; getrusage(RUSAGE_CHILDREN) reports the same
maximum over all children).

For comparison, the same encoding done the plain Hugging Face way: the whole file read into a list
and `Tokenizer.encode_batch` over it in one process (tokenizers' own threads), also in a subprocess.
The printed ratio is that time over our encode stage (reading the clean text, encoding in worker
processes, writing shards): > 1 means the pipeline encodes faster.

The default run takes about 2-3 minutes on 2 busy cores. BPE by default because Hugging Face's
unigram trainer needs minutes on this much text, which would measure the trainer, not the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MONO = ROOT.parent / "shared" / "data" / "mono"


def build_inputs(out: Path, total_mb: float) -> dict[str, Path]:
    """One file per language, ~total_mb MB in all, every line distinct."""
    out.mkdir(parents=True, exist_ok=True)
    if MONO.is_dir():
        sources = {p.stem: p.read_text(encoding="utf-8").splitlines() for p in sorted(MONO.glob("*.txt"))}
    else:
        from xlmkit.synthetic import write_corpus

        syn = write_corpus(out / "synthetic", n_mono=20000, n_para=0, pairs=())
        sources = {p.stem: p.read_text(encoding="utf-8").splitlines() for p in sorted(syn.glob("*.txt"))}
    per_lang = total_mb * 1e6 / len(sources)
    files = {}
    for lang, lines in sources.items():
        path = out / f"{lang}.txt"
        written, copy = 0, 0
        with open(path, "w", encoding="utf-8") as f:
            while written < per_lang:
                for line in lines:
                    text = f"{line} {copy}\n" if copy else f"{line}\n"
                    f.write(text)
                    written += len(text.encode("utf-8"))
                    if written >= per_lang:
                        break
                copy += 1
        files[lang] = path
    return files


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """Run cmd; return (wall seconds, peak RSS in MB of its process tree, stdout)."""
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (and its reaped workers')
        err_file.seek(0)
        err = err_file.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out


HF_BASELINE = r"""
import sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
t = time.perf_counter()
n = 0
for path in sys.argv[2:]:
    lines = open(path, encoding="utf-8").read().splitlines()
    n += sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False))
print(time.perf_counter() - t, n)
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="4,40", help="input sizes in MB, comma-separated (default 4,40)")
    p.add_argument("--tokenizer", default="bpe", choices=["bpe", "unigram"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--sample", type=int, default=20000,
                   help="prepare.tokenizer_sample_sentences (default 20000: below the line count of both default "
                        "sizes, so the trainer's memory is the same for both and the comparison shows the rest)")
    p.add_argument("--chunk-lines", type=int, default=5000,
                   help="prepare.chunk_lines (default 5000: memory per chunk is bounded by this, so it is kept below "
                        "the lines per file of the smaller size, where chunks would otherwise be partial)")
    p.add_argument("--keep", action="store_true", help="keep the generated inputs and outputs")
    args = p.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="xlmkit-bench-prepare-"))
    print(f"xlmkit prepare benchmark: tokenizer {args.tokenizer}, vocab {args.vocab}, workers {args.workers}, "
          f"chunk_lines {args.chunk_lines}, tokenizer sample {args.sample}, "
          f"{os.cpu_count()} CPUs; text from {MONO if MONO.is_dir() else 'xlmkit.synthetic'}")
    header = (f"{'input MB':>8} {'lines':>9} {'wall s':>7} {'MB/s':>6} {'clean s':>7} {'tok s':>6} "
              f"{'encode s':>8} {'peak RSS MB':>11} | {'HF encode_batch s':>17} {'HF RSS MB':>9} {'HF/ours':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    try:
        for size in sizes:
            inputs = build_inputs(tmp / f"in{size:g}", size)
            nbytes = sum(f.stat().st_size for f in inputs.values())
            out = tmp / f"out{size:g}"
            cmd = [sys.executable, "-m", "xlmkit", "prepare", "--config", "tiny", "--quiet", "--out", str(out),
                   "--set", f"prepare.tokenizer={args.tokenizer}", "--set", f"prepare.vocab_size={args.vocab}",
                   "--set", f"prepare.workers={args.workers}", "--set", f"prepare.tokenizer_sample_sentences={args.sample}",
                   "--set", f"prepare.chunk_lines={args.chunk_lines}"]
            for lang, path in inputs.items():
                cmd += ["--mono", f"{lang}={path}"]
            wall, rss, _ = run_measured(cmd)
            manifest = json.loads((out / "manifest.json").read_text())
            t = manifest["timings_s"]
            lines = sum(s["lines_read"] for s in manifest["sources"])
            hf_wall, hf_rss, hf_out = run_measured([sys.executable, "-c", HF_BASELINE, str(out / "tokenizer.json"),
                                                    *map(str, inputs.values())])
            hf_encode = float(hf_out.split()[0])
            rows.append((nbytes / 1e6, lines, wall, rss, t, hf_encode, hf_rss))
            print(f"{nbytes / 1e6:8.1f} {lines:9,d} {wall:7.1f} {nbytes / 1e6 / wall:6.2f} {t['clean']:7.1f} "
                  f"{t['tokenizer']:6.1f} {t['encode']:8.1f} {rss:11.0f} | {hf_encode:17.1f} {hf_rss:9.0f} "
                  f"{hf_encode / t['encode']:7.2f}", flush=True)
            if not args.keep:
                import shutil

                shutil.rmtree(inputs[next(iter(inputs))].parent)
                shutil.rmtree(out)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    if len(rows) >= 2:
        (mb0, *_r0, rss0, _t0, _h0, hfr0), (mb1, *_r1, rss1, _t1, _h1, hfr1) = rows[0], rows[-1]
        print(f"\ninput grew {mb1 / mb0:.1f}x: peak RSS {rss0:.0f} -> {rss1:.0f} MB ({rss1 / rss0:.2f}x) for xlmkit "
              f"prepare, {hfr0:.0f} -> {hfr1:.0f} MB ({hfr1 / hfr0:.2f}x) for the in-memory encode_batch baseline")
    all_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"(getrusage(RUSAGE_CHILDREN) max over all runs: {all_children:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
