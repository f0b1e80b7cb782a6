"""Benchmark `xlmkit prepare` end to end against SentencePiece and Hugging Face `tokenizers` encoding
the same text in the same run; peak memory at two input sizes 10x apart.

    python bench/prepare.py                      # default: ~4 MB and ~40 MB, unigram, vocab 8000, 2 workers
    python bench/prepare.py --sizes 10,100 --tokenizer bpe

Inputs are real sentences, every one different: by default all the distinct text of ../shared/data
(10 languages and scripts, ~47 MB: Leipzig, mono-extra, every parallel side once), each language's
share in proportion to what it has; `--text mono` takes the 5 Leipzig files alone (20 MB, so the
40 MB input holds each sentence twice, with a copy number appended: distinct lines, seen words). The
synthetic corpus stands in when ../shared/data is missing.

For each size, each in its own subprocess, its peak RSS from the kernel's rusage for that child
(os.wait4: the largest process of its tree, the parent or one encoding worker):

- xlmkit: `xlmkit prepare` (hash the inputs, scan line offsets, train the tokenizer on its sample,
  then one fused pass: worker processes read, clean, filter and encode their chunks, the parent
  dedups and writes the shards). The acceptance figure ("end to end" in issue 14's words: read,
  clean, encode, write shards) is input bytes / (prepare_data's own time - tokenizer training);
  tokenizer training (drawing and cleaning its sample, training) is timed and printed apart, as
  are the total (prepare_data with training) and the wall time of the whole command (interpreter
  start and imports too).
- sentencepiece: the same tokenizer (the SentencePiece model that xlmkit rebuilds from the
  tokenizer.json it wrote) encoding every input line, `encode(lines, num_threads=1)`, whole files in
  memory: the bare encode rate of one core, the issue's reference point.
- tokenizers: `Tokenizer.from_file(tokenizer.json).encode_batch(lines)`, whole files in memory (its own
  threads): what xlmkit used before.

Printed ratios: xlmkit end to end without tokenizer training / (sentencepiece x workers) (the
acceptance bar: >= 0.9), the same with the command's wall time (interpreter start included), and
SentencePiece's encode CPU seconds / xlmkit's CPU seconds without tokenizer training (parent and
workers): on a shared machine the wall-clock ratios move with other jobs, this one much less, and
it is about the best the wall ratio can be on W idle cores (the work spread perfectly).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MONO = ROOT.parent / "shared" / "data" / "mono"


# Every distinct text of ../shared/data by language (2-letter codes), each file once: the English sides
# of Multi30K and of the UN corpus are the same text in every pair, so one of each.
SHARED = ROOT.parent / "shared" / "data"
REAL_TEXT = {
    "en": ["mono/eng.txt", "parallel/multi30k.en-de.en", "parallel-extra/un.en-fr.en", "parallel-extra/wmt.en-ru.en",
           "parallel-extra/wmt.en-zh.en", "parallel-extra/manythings.en-zh.en"],
    "de": ["mono/deu.txt", "parallel/multi30k.en-de.de"],
    "fr": ["mono/fra.txt", "parallel/multi30k.en-fr.fr", "parallel-extra/un.en-fr.fr"],
    "it": ["mono/ita.txt"],
    "nl": ["mono/nld.txt"],
    "ru": ["mono-extra/rus.txt", "parallel-extra/un.en-ru.ru", "parallel-extra/wmt.en-ru.ru"],
    "zh": ["mono-extra/zho.txt", "parallel-extra/un.en-zh.zh", "parallel-extra/wmt.en-zh.zh",
           "parallel-extra/manythings.en-zh.zh"],
    "ar": ["parallel-extra/un.en-ar.ar"],
    "es": ["parallel-extra/un.en-es.es"],
    "cs": ["parallel/multi30k.en-cs.cs"],
}


def _sources(text: str, out: Path) -> dict[str, list[str]]:
    """Lines by language: all distinct real text (text="all"), the 5 Leipzig files (text="mono"), or
    the synthetic corpus when ../shared/data is missing."""
    if text == "all" and all((SHARED / f).is_file() for fs in REAL_TEXT.values() for f in fs):
        return {lang: [x for f in files for x in (SHARED / f).read_text(encoding="utf-8").splitlines()]
                for lang, files in REAL_TEXT.items()}
    if MONO.is_dir():
        return {p.stem: p.read_text(encoding="utf-8").splitlines() for p in sorted(MONO.glob("*.txt"))}
    from xlmkit.data.synthetic import write_corpus

    syn = write_corpus(out / "synthetic", n_mono=20000, n_para=0, pairs=())
    return {p.stem: p.read_text(encoding="utf-8").splitlines() for p in sorted(syn.glob("*.txt"))}


def build_inputs(out: Path, total_mb: float, text: str = "all") -> dict[str, Path]:
    """One file per language, ~total_mb MB in all, each language's share in proportion to the text it
    has. Up to the size of the real text (~47 MB with text="all", 20 MB with "mono") every line is
    a different real sentence; past it the text is cycled, with a copy number appended to each
    repeated line so that dedup keeps them all (but its words are then words seen before)."""
    out.mkdir(parents=True, exist_ok=True)
    sources = _sources(text, out)
    sizes = {lang: sum(len(x.encode("utf-8")) + 1 for x in lines) for lang, lines in sources.items()}
    scale = total_mb * 1e6 / sum(sizes.values())
    files = {}
    for lang, lines in sources.items():
        path, budget = out / f"{lang}.txt", sizes[lang] * scale
        written, copy = 0, 0
        with open(path, "w", encoding="utf-8") as f:
            while written < budget:
                for line in lines:
                    line = f"{line} {copy}\n" if copy else f"{line}\n"
                    f.write(line)
                    written += len(line.encode("utf-8"))
                    if written >= budget:
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


# Each peer: load the tokenizer, read the files (not timed), encode every line (timed); print seconds, tokens.
PEER = r"""
import sys, time
from tokenizers import Tokenizer
engine, tok_path, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
tok = Tokenizer.from_file(tok_path)
lines = [l.rstrip("\n") for p in paths for l in open(p, encoding="utf-8")]
if engine == "sentencepiece":
    from xlmkit.data.tokenizer import FastEncoder
    sp = FastEncoder(tok, memo=False).spm
    assert sp is not None, "not a tokenizer SentencePiece can encode (BPE?)"
    t, c = time.perf_counter(), time.process_time()
    ids = sp.encode(lines, out_type=int, num_threads=1)
else:
    t, c = time.perf_counter(), time.process_time()
    ids = [e.ids for e in tok.encode_batch(lines, add_special_tokens=False)]
print(time.perf_counter() - t, sum(map(len, ids)), time.process_time() - c)
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="4,40", help="input sizes in MB, comma-separated (default 4,40)")
    p.add_argument("--tokenizer", default="unigram", choices=["bpe", "unigram"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--sample", type=int, default=20000,
                   help="prepare.tokenizer_sample_sentences (default 20000: below the line count of both default "
                        "sizes, so the trainer's memory is the same for both and the comparison shows the rest)")
    p.add_argument("--chunk-lines", type=int, default=5000,
                   help="prepare.chunk_lines (default 5000: memory per chunk is bounded by this, so it is kept below "
                        "the lines per file of the smaller size, where chunks would otherwise be partial)")
    p.add_argument("--keep", action="store_true", help="keep the generated inputs and outputs")
    p.add_argument("--no-tokenizers", action="store_true",
                   help="leave out the `tokenizers` peer (minutes at 40 MB on 2 cores; the rest is unchanged)")
    p.add_argument("--text", default="all", choices=["all", "mono"],
                   help="all: every distinct text of ../shared/data, 10 languages (default); mono: the 5 Leipzig "
                        "files (20 MB, so the 40 MB input repeats every sentence once)")
    p.add_argument("--build", nargs=3, metavar=("DIR", "MB", "TEXT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.build:  # in a child process: a parent holding the text would pass its RSS on to every child
        print(json.dumps({k: str(v) for k, v in build_inputs(Path(args.build[0]), float(args.build[1]), args.build[2]).items()}))
        return 0
    sizes = [float(s) for s in args.sizes.split(",")]
    peers = ["sentencepiece", "tokenizers"] if args.tokenizer == "unigram" else ["tokenizers"]
    if args.no_tokenizers and "sentencepiece" in peers:
        peers.remove("tokenizers")

    # Not imported here: a child's peak RSS starts from its parent's at fork, so the parent stays small.
    cap = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         capture_output=True, text=True).stdout.strip() or "?"
    print(f"xlmkit prepare benchmark: tokenizer {args.tokenizer}, vocab {args.vocab}, workers {args.workers}, "
          f"chunk_lines {args.chunk_lines}, tokenizer sample {args.sample}, {os.cpu_count()} CPUs ({cap}); "
          f"text: {args.text} ({SHARED if SHARED.is_dir() else 'xlmkit.data.synthetic'})")
    tmp = Path(tempfile.mkdtemp(prefix="xlmkit-bench-prepare-"))
    rows = []
    try:
        for size in sizes:
            built = subprocess.run([sys.executable, __file__, "--build", str(tmp / f"in{size:g}"), str(size), args.text],
                                   capture_output=True, text=True, check=True, cwd=ROOT).stdout
            inputs = {k: Path(v) for k, v in json.loads(built).items()}
            nbytes = sum(f.stat().st_size for f in inputs.values())
            mb = nbytes / 1e6
            out = tmp / f"out{size:g}"
            cmd = [sys.executable, "-m", "xlmkit", "prepare", "--config", "tiny", "--quiet", "--out", str(out),
                   "--set", f"prepare.tokenizer={args.tokenizer}", "--set", f"prepare.vocab_size={args.vocab}",
                   "--set", f"prepare.workers={args.workers}",
                   "--set", f"prepare.tokenizer_sample_sentences={args.sample}",
                   "--set", f"prepare.chunk_lines={args.chunk_lines}"]
            for lang, path in inputs.items():
                cmd += ["--mono", f"{lang}={path}"]
            wall, rss, _ = run_measured(cmd)
            manifest = json.loads((out / "manifest.json").read_text())
            t = manifest["timings_s"]
            lines = sum(s["lines_read"] for s in manifest["sources"])
            pipeline = t["total"] - t["tokenizer"]  # read, clean, encode, write: the acceptance figure's time
            row = {"mb": mb, "lines": lines, "wall": wall, "rss": rss, "timings": t, "pipeline": pipeline,
                   "cpu": manifest["cpu_s"]["rest"],
                   "engine": manifest["tokenizer"].get("encoded_with", "?"), "peers": {}}
            print(f"\n{mb:.1f} MB, {lines:,d} lines: xlmkit prepare end to end without tokenizer training "
                  f"{pipeline:.2f} s = {mb / pipeline:.2f} MB/s (hash inputs {t['inputs']:.2f} s, scan {t['scan']:.2f} s, "
                  f"fused read+clean+encode+write {t['encode']:.2f} s = {mb / t['encode']:.2f} MB/s with {row['engine']}); "
                  f"tokenizer training {t['tokenizer']:.1f} s; total {t['total']:.1f} s = {mb / t['total']:.2f} MB/s; "
                  f"command wall {wall:.1f} s (wall - training {wall - t['tokenizer']:.2f} s = "
                  f"{mb / (wall - t['tokenizer']):.2f} MB/s); peak RSS {rss:.0f} MB; CPU without tokenizer training "
                  f"{row['cpu']:.2f} s (parent and workers)", flush=True)
            for peer in peers:
                pwall, prss, pout = run_measured([sys.executable, "-c", PEER, peer, str(out / "tokenizer.json"),
                                                  *map(str, inputs.values())])
                secs, cpu = float(pout.split()[0]), float(pout.split()[2])
                row["peers"][peer] = (secs, prss, cpu)
                print(f"    {peer:13s} encode {secs:6.1f} s = {mb / secs:6.2f} MB/s ({cpu:.1f} CPU s), peak RSS "
                      f"{prss:.0f} MB (all lines in memory)", flush=True)
            rows.append(row)
            if not args.keep:
                shutil.rmtree(inputs[next(iter(inputs))].parent)
                shutil.rmtree(out)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'input MB':>8} | {'e2e MB/s':>8} {'tok. s':>6} {'total MB/s':>10} {'wall-tok MB/s':>13} {'RSS MB':>6} | "
          + " | ".join(f"{p + ' MB/s':>18} {'RSS MB':>6}" for p in peers)
          + (f" | {'e2e / (spm x W)':>15} {'wall-tok / (spm x W)':>20} {'CPU spm / e2e':>13} {'spm / tokenizers':>16}"
             if "sentencepiece" in peers else f" | {'e2e / tokenizers':>16}"))
    for r in rows:
        mb, w, t = r["mb"], args.workers, r["timings"]
        cells = " | ".join(f"{mb / r['peers'][p][0]:18.2f} {r['peers'][p][1]:6.0f}" for p in peers)
        line = (f"{mb:8.1f} | {mb / r['pipeline']:8.2f} {t['tokenizer']:6.1f} {mb / t['total']:10.2f} "
                f"{mb / (r['wall'] - t['tokenizer']):13.2f} {r['rss']:6.0f} | {cells}")
        if "sentencepiece" in peers:
            spm_rate = mb / r["peers"]["sentencepiece"][0]
            line += (f" | {mb / r['pipeline'] / (spm_rate * w):15.2f} "
                     f"{mb / (r['wall'] - t['tokenizer']) / (spm_rate * w):20.2f} "
                     f"{r['peers']['sentencepiece'][2] / r['cpu']:13.2f} "
                     + (f"{r['peers']['tokenizers'][0] / r['peers']['sentencepiece'][0]:16.2f}"
                        if "tokenizers" in r["peers"] else f"{'-':>16}"))
        else:
            line += f" | {mb / r['pipeline'] / (mb / r['peers']['tokenizers'][0]):16.2f}"
        print(line)
    if len(rows) >= 2:
        r0, r1 = rows[0], rows[-1]
        print(f"\ninput grew {r1['mb'] / r0['mb']:.1f}x: peak RSS {r0['rss']:.0f} -> {r1['rss']:.0f} MB "
              f"({r1['rss'] / r0['rss']:.2f}x) for xlmkit prepare; "
              + "; ".join(f"{p} (in memory) {r0['peers'][p][1]:.0f} -> {r1['peers'][p][1]:.0f} MB "
                          f"({r1['peers'][p][1] / r0['peers'][p][1]:.2f}x)" for p in peers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
