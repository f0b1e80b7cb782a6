"""`xlmkit prepare`: raw text -> clean text -> shared tokenizer -> memory-mappable token shards.

The output format is the contract in xlmkit/data/format.py (read by `PreparedData`). The pipeline streams,
and reads and cleans the text once:

1. scan    each input file's line count and the byte offset of every `prepare.chunk_lines`-th
           line (bytes.count per MiB; parallel files in lockstep, different line counts are an error).
2. sample  a language-balanced sample drawn over the raw lines (q_i ∝ n_i^alpha, parallel text
           counted toward its languages), read at those offsets and cleaned (xlmkit.data.text.clean_line);
           the tokenizer is trained on it. Drawing before cleaning is what lets the tokenizer exist
           before the one pass over the text.
3. encode  the fused pass: worker processes read their chunk's bytes, decode, clean
           (xlmkit.data.text.clean_lines), filter by length and encode it, and return the ids with a
           64-bit hash of each surviving line. The parent takes the chunks in order, dedups them
           (xlmkit.data.text.HashSet64 per language / pair, across its corpora: the only state that grows
           with the corpus, 16-32 bytes per line; first occurrences are kept whatever the chunking
           or worker count) and streams the kept sentences to a per-language temporary file, which
           is split into train / valid / test shards once the count is known. At most 2 chunks per
           worker are in flight, so memory does not grow with the corpus.
4. finish  manifest.json (written last) and a rename of OUT.tmp-xxxx to OUT, so a failed run never
           leaves an output that a later run could take for finished.

Re-running with the same inputs (by sha256) and the same settings finds the stamp in the existing
manifest and returns at once ("up to date").
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import operator
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xlmkit.core.config import PrepareConfig, config_to_dict
from xlmkit.data.contract import RunContract
from xlmkit.data.format import FORMAT, FORMAT_VERSION, SPLITS, SpecialIds, shard_paths, shard_records
from xlmkit.core.errors import DataError, reading
from xlmkit.core.langs import canonical_lang, canonical_pair, check_lang
from xlmkit.data.text import (HashSet64, clean_line, clean_lines, count_lines, decode_lines, file_sha256,
                              joined_line_hashes, line_hashes)

# How the output is derived from the inputs: bumped whenever the same inputs and settings give
# different shards or tokenizer, so that an output of an earlier version is rebuilt, not taken as up
# to date (2: the tokenizer sample is drawn over the raw lines, cleaning fused into encoding).
PIPELINE_VERSION = 2

# Settings that change how fast the output is made, not what it contains (left out of the stamp).
_NON_OUTPUT_SETTINGS = ("workers", "chunk_lines")


# ----------------------------------------------------------------------------------------------
# Inputs: discovery, canonical language codes, duplicates


@dataclass(frozen=True)
class Source:
    """One corpus: a monolingual file, or two line-aligned files of a parallel pair. A language or
    pair may have several (news, UN, subtitles, ...): their lines go into the same shards, in order,
    deduplicated across them."""

    kind: str  # "mono" | "para"
    name: str  # "en" or "en-fr"
    files: tuple[Path, ...]  # (path,) or (path_a, path_b) in pair order
    given: str = field(default="", compare=False)  # how it was given, for messages

    @property
    def langs(self) -> tuple[str, ...]:
        return (self.name,) if self.kind == "mono" else tuple(self.name.split("-"))


_PARA_NAME = re.compile(r"^(?:(?P<prefix>.+)\.)?(?P<a>[A-Za-z]{2,3})-(?P<b>[A-Za-z]{2,3})\.(?P<side>[A-Za-z]{2,3})$")


def _discover(data_dir: str | Path) -> list[tuple[str, str, tuple[Path, ...]]]:
    """(kind, canonical code, files) of every corpus in `data_dir` and its mono/ and parallel/."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data directory not found: {root}")
    folders = [root] + [root / sub for sub in ("mono", "parallel") if (root / sub).is_dir()]
    found: list[tuple[str, str, tuple[Path, ...]]] = []
    sides: dict[tuple[str, str], dict[str, Path]] = {}  # (prefix, raw pair) -> {raw side code: path}
    for folder in folders:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            if path.suffix == ".txt" and "." not in path.stem:
                try:
                    found.append(("mono", path.stem, (path,)))
                    canonical_lang(path.stem)
                except ValueError:
                    found.pop()  # README.txt, notes.txt ...
                continue
            m = _PARA_NAME.match(path.name)
            if m and m["side"].lower() in (m["a"].lower(), m["b"].lower()):
                raw_pair = f"{m['a']}-{m['b']}"
                sides.setdefault((str(path.parent / (m["prefix"] or "")), raw_pair), {})[m["side"].lower()] = path
    for (_prefix, raw_pair), files in sorted(sides.items()):
        a, b = (x.lower() for x in raw_pair.split("-"))
        if a not in files or b not in files:
            have = next(iter(files.values()))
            missing = b if a in files else a
            raise DataError(f"{have}: parallel file without its other side (expected a file ending in "
                            f"{raw_pair}.{missing} beside it)")
        found.append(("para", raw_pair, (files[a], files[b])))
    return found


def discover_inputs(data_dir: str | Path) -> tuple[dict[str, Path | list[Path]],
                                                   dict[str, tuple[Path, Path] | list[tuple[Path, Path]]]]:
    """Find monolingual `{lang}.txt` and parallel `[name.]{a}-{b}.{a}` / `.{b}` files.

    Looks in `data_dir` itself and in its `mono/` and `parallel/` subfolders (other subfolders, such
    as evaluation sets, are ignored; give them as further data directories). Codes are canonicalised
    (mono/eng.txt -> 'en'). A language or pair with one corpus maps to its path (pair of paths), one
    with several to the list of them; the same text twice for one language is an error.
    """
    sources = _dedupe([_as_source(kind, code, files, " ".join(map(str, files)), ()) for kind, code, files
                       in _discover(data_dir)], check_iso=False)
    mono: dict = {}
    para: dict = {}
    for src in sources:
        target, value = (mono, src.files[0]) if src.kind == "mono" else (para, src.files)
        if src.name in target:
            prev = target[src.name]
            target[src.name] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            target[src.name] = value
    return mono, para


def _as_source(kind: str, code: str, files: tuple[Path, ...], given: str, extra_langs, check_iso: bool = True
               ) -> Source:
    """A Source with canonical, ISO 639-checked codes (or codes listed in prepare.extra_langs)."""
    check = (lambda c: check_lang(c, extra_langs)) if check_iso else canonical_lang
    if kind == "mono":
        try:
            return Source("mono", check(code), files, given)
        except ValueError as e:
            raise DataError(f"unknown language code {code!r} for {files[0]} ({e})") from None
    try:
        pair = canonical_pair(code)
        for lang in code.split("-"):
            check(lang)
    except ValueError as e:
        raise DataError(f"bad language pair {code!r} for {files[0]}, {files[1]}: {e}") from None
    return Source("para", pair, files, given)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _dedupe(sources: list[Source], check_iso: bool = True) -> list[Source]:
    """One orientation per pair (the first corpus's; later ones given the other way round are
    swapped), existing files, and no text given twice for one language or pair (same sha256)."""
    orientation: dict[frozenset, str] = {}
    out: list[Source] = []
    seen: dict[tuple, Source] = {}
    for src in sources:
        if src.kind == "para":
            key = frozenset(src.name.split("-"))
            first = orientation.setdefault(key, src.name)
            if first != src.name:
                src = Source("para", first, src.files[::-1], src.given)
        for path in src.files:
            if not path.is_file():
                raise DataError(f"{path}: file not found ({src.kind} input for {src.name})")
        sig = (src.kind, src.name, tuple(file_sha256_cached(p) for p in src.files))
        if sig in seen:
            what = "language" if src.kind == "mono" else "language pair"
            name = src.name if src.kind == "mono" else src.given.split("=", 1)[0] if "=" in src.given else src.name
            raise DataError(f"duplicate {what} {name!r}: {seen[sig].given} and {src.given} are the same text")
        seen[sig] = src
        out.append(src)
    return out


def resolve_sources(mono: dict | None = None, para: dict | None = None, data_dir=None,
                    extra_langs: tuple[str, ...] = ()) -> list[Source]:
    """Merge discovered and explicit inputs into Sources with canonical codes; check the files exist.

    `mono` maps a language to a file or a list of files, `para` a pair to (file_a, file_b) or a list
    of such; `data_dir` is one directory or a list. Several corpora per language or pair are kept
    (in the order given), but the same text twice is an error: 'eng' and 'en' are one language, so
    `{'en': a, 'eng': a_copy}` is a duplicate, as is one pair given both ways round. Codes must be
    ISO 639-1 / 639-3 or listed in `extra_langs`.
    """
    items: list[Source] = []
    for d in _as_list(data_dir):
        for kind, code, files in _discover(d):
            items.append(_as_source(kind, code, files, " ".join(map(str, files)), extra_langs))
    for code, value in (mono or {}).items():
        for path in _as_list(value):
            items.append(_as_source("mono", code, (Path(path),), f"{code}={path}", extra_langs))
    for code, value in (para or {}).items():
        single = isinstance(value, tuple) and all(isinstance(x, (str, Path)) for x in value)
        for files in ([value] if single else _as_list(value)):
            if len(files) != 2:
                raise DataError(f"parallel pair {code!r} needs two files, got {len(files)}")
            files = (Path(files[0]), Path(files[1]))
            items.append(_as_source("para", code, files, f"{code}={files[0]},{files[1]}", extra_langs))
    if not items:
        dirs = ", ".join(map(str, _as_list(data_dir)))
        where = f" in {dirs} (looked for {{lang}}.txt and {{a}}-{{b}}.{{a}} files, also in mono/ and parallel/)" \
            if dirs else ""
        raise DataError(f"no input text{where}; give --data-dir, --mono or --para")
    sources = _dedupe(items)
    return sorted(sources, key=lambda s: (s.kind != "mono", s.name))  # stable: corpora keep their order


_SHA_CACHE: dict[tuple, str] = {}


def file_sha256_cached(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]


# ----------------------------------------------------------------------------------------------
# Stage 1: scan (line offsets; the text itself is cleaned in the encode workers)


@dataclass
class Cleaned:
    """A source planned for the fused clean + encode pass (its files' line offsets, every
    `chunk_lines` lines), and once encoded, what cleaning kept and dropped."""

    source: Source
    chunk_lines: int  # lines per chunk
    raw_lines: int  # lines to read of each file (prepare.max_lines applied)
    offsets: tuple[tuple[int, ...], ...]  # per file: byte offset of lines 0, chunk_lines, 2 chunk_lines, ... and the end
    work_dir: Path  # for the group's temporary id streams
    n_lines: int = 0  # kept lines (pairs), after cleaning, filters and dedup
    lines_read: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict(bad_utf8=0, too_short=0, too_long=0, duplicate=0))

    @property
    def n_chunks(self) -> int:
        return len(self.offsets[0]) - 1


def _line_offsets(path: Path, every: int, max_lines: int) -> tuple[int, list[int]]:
    """(number of lines, byte offsets of lines 0, every, 2 every, ... followed by the end of the last
    line), reading at most `max_lines` lines (0: all). Newlines are counted by bytes.count per MiB;
    numpy finds exact positions only in the blocks where a chunk starts."""
    starts, n, pos, last, end = [0], 0, 0, b"\n", None
    with reading(path), open(path, "rb") as f:
        while block := f.read(1 << 20):
            c = block.count(b"\n")
            stop = bool(max_lines) and n + c >= max_lines  # the last line to read ends in this block
            top = max_lines if stop else n + c
            mark = len(starts) * every  # the next chunk starts after this many lines
            if mark <= top or stop:
                nl = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
                starts += [pos + int(nl[m - n - 1]) + 1 for m in range(mark, top + 1, every)]
                if stop:
                    end, n = pos + int(nl[top - n - 1]) + 1, top
                    break
            n, pos, last = n + c, pos + len(block), block[-1:]
    if end is None:
        if last != b"\n":
            n += 1  # a last line without a newline
        end = pos
    return n, [s for s in starts if s < end] + [end]


def scan_source(src: Source, cfg: PrepareConfig, work_dir: Path) -> Cleaned:
    """Plan one source: its line count and the byte offsets of its chunks (parallel files in
    lockstep: different line counts are an error naming both). Reads the files at memchr speed;
    cleaning happens in the encode workers (encode_sources)."""
    scans = [_line_offsets(p, cfg.chunk_lines, cfg.max_lines) for p in src.files]
    if len({n for n, _ in scans}) > 1:
        a_path, b_path = src.files
        raise DataError(f"parallel files have different line counts: {a_path} has {count_lines(a_path)} lines, "
                        f"{b_path} has {count_lines(b_path)} lines")
    if scans[0][0] == 0:
        raise DataError(f"{_files(src)}: empty file" + ("s" if len(src.files) > 1 else ""))
    return Cleaned(src, cfg.chunk_lines, scans[0][0], tuple(tuple(o) for _, o in scans), work_dir)


def clean_source(src: Source, cfg: PrepareConfig, work_dir: Path, progress: bool = False, **_) -> Cleaned:
    """The former name of scan_source (cleaning now runs fused with encoding)."""
    return scan_source(src, cfg, work_dir)


def progress_bar(progress: bool, **kwargs):
    """A tqdm bar on an interactive terminal only, and only once a step has run for a second: in a
    log file or CI output, bars are lines of carriage returns and `clean de: 0 lines`."""
    from tqdm import tqdm

    shown = progress and sys.stderr.isatty()
    return tqdm(disable=not shown, file=sys.stderr, mininterval=0.5, delay=1.0, leave=False, **kwargs)


def _files(src: Source) -> str:
    return " / ".join(str(p) for p in src.files)


def _read_range(path: Path, start: int, end: int) -> bytes:
    with reading(path), open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


_REASONS = ("too_short", "too_long", "bad_utf8")  # codes 1, 2, 3 of a dropped line


def process_chunk(task: tuple, encoder=None) -> tuple:
    """Read, clean, filter and (with an encoder) encode one chunk of a source: the fused pass.

    -> (lines read, dropped counts in _REASONS order, 64-bit hashes of the survivors (None without
    dedup), per side (ids with </s> after each sentence, lengths) of the survivors or None). Dedup
    itself is left to the parent, which sees the chunks in order: first occurrences are kept
    whatever the chunking or worker count.
    """
    files, starts, ends, first_lineno, opts = task
    lowercase, strip_accents, min_chars, max_chars, dedup, skip_bad, dtype, eos = opts
    raws = [_read_range(p, a, b) for p, a, b in zip(files, starts, ends)]
    sides = [decode_lines(raw, p, first_lineno, skip_bad) for raw, p in zip(raws, files)]
    n = len(sides[0])
    bad = None
    if skip_bad and any(None in s for s in sides):
        bad = np.zeros(n, dtype=bool)
        for s in sides:
            bad[[i for i, x in enumerate(s) if x is None]] = True
        sides = [["" if x is None else x for x in s] for s in sides]
    # the bytes help the cleaning scans where they are exactly the decoded lines (no \r, no bad line)
    texts = [clean_lines(s, lowercase, strip_accents, raw if bad is None and b"\r" not in raw else None)
             for s, raw in zip(sides, raws)]
    reason = np.zeros(n, dtype=np.int64)
    for t in reversed(texts):  # the first side with a reason gives it (filter_reason's rule, on arrays)
        lengths = np.fromiter(map(len, t), dtype=np.int64, count=n)
        r = np.where(lengths < min_chars, 1, np.where(lengths > max_chars, 2, 0))
        reason = np.where(r > 0, r, reason)
    if bad is not None:
        reason[bad] = 3
    dropped = np.bincount(reason, minlength=4)[1:].tolist()
    # cleaning changed no line (clean_lines hands back the very objects) and decoding stripped no \r: the
    # bytes as read are the clean lines' UTF-8
    as_read = bad is None and not any(b"\r" in raw for raw in raws) \
        and all(all(map(operator.is_, t, s)) for t, s in zip(texts, sides))
    if any(dropped):
        keep = np.flatnonzero(reason == 0).tolist()
        texts = [[t[i] for i in keep] for t in texts]
    n_kept = len(texts[0])
    # Each side's kept lines joined by '\n', in UTF-8: the input of the line hashes and of the word memo.
    # Where no line changed or went, the bytes as read but the last line break; else joined once here.
    data = [None] * len(texts)
    if n_kept and (encoder is not None or (dedup and len(texts) == 1)):
        data = [raw[:-1] if raw.endswith(b"\n") else raw for raw in raws] if as_read and not any(dropped) \
            else ["\n".join(t).encode("utf-8") for t in texts]
    hashes = None
    if dedup:
        hashes = joined_line_hashes(data[0], n_kept) if len(texts) == 1 and data[0] is not None else None
        if hashes is None:  # a pair is hashed whole (clean text holds no tab, so joining is unambiguous)
            hashes = line_hashes(texts[0] if len(texts) == 1 else list(map("\t".join, zip(*texts))))
    encoded = None if encoder is None else [encoder.encode_flat(t, eos, dtype, d) for t, d in zip(texts, data)]
    return n, dropped, hashes, encoded


def _chunk_tasks(c: Cleaned, cfg: PrepareConfig, dtype: str, eos: int) -> list[tuple]:
    opts = (cfg.lowercase, cfg.strip_accents, cfg.min_chars, cfg.max_chars, cfg.dedup, cfg.skip_bad_lines, dtype, eos)
    return [(c.source.files, tuple(o[k] for o in c.offsets), tuple(o[k + 1] for o in c.offsets),
             k * c.chunk_lines + 1, opts) for k in range(c.n_chunks)]


def _no_usable_lines(c: Cleaned, cfg: PrepareConfig) -> DataError:
    drops = ", ".join(f"{k}={v}" for k, v in c.dropped.items() if v)
    return DataError(f"{_files(c.source)}: no usable lines after cleaning ({c.lines_read} read; dropped {drops}; "
                     f"prepare.min_chars={cfg.min_chars}, prepare.max_chars={cfg.max_chars})")


def _count_usable(cleaned: list[Cleaned], cfg: PrepareConfig) -> None:
    """Clean (without encoding) every chunk of these sources, dedup as encode_sources does, and raise
    the 'no usable lines' error for the first one left empty. Only for a language whose tokenizer
    sample came out empty, to say why before the trainer fails on nothing."""
    seen: dict[tuple[str, str], HashSet64] = {}
    for c in cleaned:
        probe = Cleaned(c.source, c.chunk_lines, c.raw_lines, c.offsets, c.work_dir)
        for task in _chunk_tasks(probe, cfg, "int64", 0):
            n, dropped, hashes, _ = process_chunk(task)
            _count(probe, n, dropped)
            kept = len(hashes) if hashes is not None else n - sum(dropped)
            if hashes is not None:
                kept = int(seen.setdefault((c.source.kind, c.source.name), HashSet64()).add(hashes).sum())
                probe.dropped["duplicate"] += len(hashes) - kept
            probe.n_lines += kept
        if probe.n_lines == 0:
            raise _no_usable_lines(probe, cfg)


def _count(c: Cleaned, n: int, dropped: list[int]) -> None:
    c.lines_read += n
    for k, v in zip(_REASONS, dropped):
        c.dropped[k] += v


# ----------------------------------------------------------------------------------------------
# Stage 2: the language-balanced tokenizer sample and the tokenizer


def _lang_segments(cleaned: list[Cleaned]) -> dict[str, list[tuple[Cleaned, int]]]:
    """lang -> the (source, side) pairs holding its lines (mono files and parallel sides), in order."""
    segments: dict[str, list[tuple[Cleaned, int]]] = {}
    for c in cleaned:
        for side, lang in enumerate(c.source.langs):
            segments.setdefault(lang, []).append((c, side))
    return segments


def _sampled_lines(c: Cleaned, side: int, indices: np.ndarray, cfg: PrepareConfig) -> Iterator[str]:
    """Clean lines at the given sorted raw line indices of one file (repeats repeated); lines the
    filters drop are left out (not replaced)."""
    path, offsets = c.source.files[side], c.offsets[side]
    chunk_of = indices // c.chunk_lines
    for k in np.unique(chunk_of).tolist():
        raw = decode_lines(_read_range(path, offsets[k], offsets[k + 1]), path, k * c.chunk_lines + 1,
                           cfg.skip_bad_lines)
        for i in (indices[chunk_of == k] - k * c.chunk_lines).tolist():
            if raw[i] is None:
                continue
            text = clean_line(raw[i], cfg.lowercase, cfg.strip_accents)
            if cfg.min_chars <= len(text) <= cfg.max_chars:
                yield text


def _sample_by_lang(cleaned: list[Cleaned], cfg: PrepareConfig, rng: np.random.Generator
                    ) -> tuple[Iterator[tuple[str, str]], dict[str, int]]:
    from xlmkit.data.tokenizer import sample_line_indices

    segments = _lang_segments(cleaned)
    counts = {lang: sum(c.raw_lines for c, _ in segs) for lang, segs in segments.items()}
    indices = sample_line_indices(counts, cfg.alpha, cfg.tokenizer_sample_sentences, rng)

    def lines() -> Iterator[tuple[str, str]]:
        for lang in sorted(segments):
            base = 0
            for c, side in segments[lang]:
                lo, hi = np.searchsorted(indices[lang], [base, base + c.raw_lines])
                for text in _sampled_lines(c, side, indices[lang][lo:hi] - base, cfg):
                    yield lang, text
                base += c.raw_lines

    return lines(), {lang: len(ix) for lang, ix in indices.items()}


def tokenizer_sample(cleaned: list[Cleaned], cfg: PrepareConfig, rng: np.random.Generator
                     ) -> tuple[Iterator[str], dict[str, int]]:
    """A streaming language-balanced sample of the clean text, and the sentences per language drawn.

    Drawn over the raw lines (their counts are known before anything is cleaned, so the tokenizer
    can be trained before the one fused clean + encode pass), then cleaned; lines the filters drop
    are left out, so a language's sample can be a little smaller than drawn. Duplicates are not
    removed first: a line repeated in the corpus is that much likelier to be drawn.
    """
    pairs, sizes = _sample_by_lang(cleaned, cfg, rng)
    return (text for _, text in pairs), sizes


def fit_tokenizer(cleaned: list[Cleaned], cfg: PrepareConfig, progress: bool = False):
    """Train the shared tokenizer on a balanced sample; return (tokenizer, sample sizes per language).

    The sample is held in memory (as SentencePiece's trainer holds it anyway) rather than read and
    cleaned once per trainer pass."""
    from xlmkit.data.tokenizer import train_tokenizer

    pairs, drawn = _sample_by_lang(cleaned, cfg, np.random.default_rng([cfg.seed, 1]))
    sample, got = [], dict.fromkeys(drawn, 0)
    for lang, text in pairs:
        sample.append(text)
        got[lang] += 1
    empty = [lang for lang, k in got.items() if k == 0 and drawn[lang] > 0]
    if empty:  # say which input has nothing usable, rather than let the trainer fail on nothing
        _count_usable([c for c in cleaned if set(c.source.langs) & set(empty)], cfg)
    tok = train_tokenizer(lambda: sample, sorted(drawn), cfg.tokenizer, cfg.vocab_size, cfg.lowercase,
                          cfg.strip_accents, n_sentences=len(sample),
                          character_coverage=cfg.character_coverage, byte_fallback=cfg.byte_fallback)
    return tok, got


# ----------------------------------------------------------------------------------------------
# Stage 3: read, clean, encode in worker processes (one fused pass); dedup and write split shards


def split_indices(n: int, cfg: PrepareConfig, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted line indices of the valid and test splits of a source with n kept lines.

    A seeded choice keyed by (seed, source name), capped at 10% of the lines each, so splits do not
    depend on chunking or worker count, and memory is O(valid + test), not O(n).
    """
    n_valid = min(cfg.valid_sentences, n // 10)
    n_test = min(cfg.test_sentences, n // 10)
    rng = np.random.default_rng([cfg.seed, zlib.crc32(name.encode()), 2])
    chosen = rng.choice(n, size=n_valid + n_test, replace=False)
    return np.sort(chosen[:n_valid]), np.sort(chosen[n_valid:])


_WORKER_ENCODER = None


def _init_worker(encoder) -> None:
    """The encoder of this process: inherited as is under fork (no second build of the SentencePiece
    model), rebuilt from the tokenizer.json text under spawn. Workers inherit
    TOKENIZERS_PARALLELISM=false: the processes are the parallelism."""
    global _WORKER_ENCODER
    if isinstance(encoder, str):
        from tokenizers import Tokenizer

        from xlmkit.data.tokenizer import FastEncoder

        encoder = FastEncoder(Tokenizer.from_str(encoder))
    _WORKER_ENCODER = encoder


def encode_lines(encoder, lines: list[str], eos: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids with </s> after every sentence, per-sentence lengths including the </s>). `encoder` is
    an xlmkit.data.tokenizer.FastEncoder or a `tokenizers` Tokenizer."""
    if not hasattr(encoder, "engine"):
        from xlmkit.data.tokenizer import FastEncoder

        encoder = FastEncoder(encoder)
    return encoder.encode_flat(lines, eos, dtype)


def _encode_task(task: tuple) -> tuple:
    return process_chunk(task, _WORKER_ENCODER)


def _pool_context():
    """fork where available: spawn would re-import the caller's __main__ (breaking `python - <<EOF`
    scripts and unguarded scripts). tokenizers' threads in the parent are why workers are told to
    stay single-threaded (TOKENIZERS_PARALLELISM=false, set before the fork so they inherit it)."""
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods and sys.platform != "darwin" else "spawn")


def _run_tasks(tasks: list[tuple], encoder, workers: int) -> Iterator:
    """Results of `_encode_task` in task order, with at most 4 tasks per worker in flight.

    (Pool.imap would read ahead without bound; with 2 a worker, workers idled ~12% of the time
    behind a slow chunk at the head of the queue.) A single task, or workers=1, runs in this
    process: a worker pool costs start-up time that small inputs do not repay.
    """
    if workers == 1 or len(tasks) <= 1:
        _init_worker(encoder)
        for t in tasks:
            yield _encode_task(t)
        return
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    ctx = _pool_context()
    try:
        pool = ctx.Pool(workers, initializer=_init_worker,
                        initargs=(encoder if ctx.get_start_method() == "fork" else encoder.tok.to_str(),))
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    # The pool's result thread reads each result (~1 MB) from its pipe in 64 KB pieces and needs the
    # GIL after each, which this thread (dedup, writes) holds for up to the switch interval (5 ms): the
    # worker blocks on its full pipe meanwhile. A 0.1 ms interval cut the workers' idle time by half.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        with pool:
            pending: deque = deque()
            for t in tasks:
                pending.append(pool.apply_async(_encode_task, (t,)))
                if len(pending) >= 4 * workers:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
    finally:
        sys.setswitchinterval(switch_interval)


class ShardWriter:
    """Appends sentences to one (ids, offsets) shard pair and counts tokens and unknowns."""

    def __init__(self, ids_path: Path, offsets_path: Path, dtype: str, unk_id: int):
        ids_path.parent.mkdir(parents=True, exist_ok=True)
        self.ids = open(ids_path, "wb")
        self.offsets = open(offsets_path, "wb")
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.unk_id = unk_id
        self.n_ids = 0
        self.sentences = 0
        self.unk = 0
        self.offsets.write(np.zeros(1, dtype="<i8").tobytes())

    def append(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        self.ids.write(ids.astype(self.dtype, copy=False).tobytes())
        self.offsets.write((self.n_ids + np.cumsum(lengths)).astype("<i8").tobytes())
        self.n_ids += int(lengths.sum())
        self.sentences += len(lengths)
        self.unk += int(np.count_nonzero(ids == self.unk_id))

    @property
    def tokens(self) -> int:
        """Subword tokens, </s> separators excluded (as TokenShard.n_tokens)."""
        return self.n_ids - self.sentences

    def close(self) -> None:
        self.ids.close()
        self.offsets.close()


def _split_labels(start: int, n: int, valid: np.ndarray, test: np.ndarray) -> np.ndarray:
    """0 = train, 1 = valid, 2 = test for lines start .. start+n-1."""
    labels = np.zeros(n, dtype=np.int8)
    for value, chosen in ((1, valid), (2, test)):
        lo, hi = np.searchsorted(chosen, [start, start + n])
        labels[chosen[lo:hi] - start] = value
    return labels


class _GroupStream:
    """The kept sentences of one language / pair (all its corpora), in order, in temporary files:
    which of them go to valid and test depends on how many there are, known only at the end. Then
    they are copied to the split shards in runs (valid and test are a few scattered sentences, so
    train is a few long slices). Memory stays O(chunk), whatever the corpus size."""

    BLOCK = 1 << 20  # sentences routed at a time

    def __init__(self, work_dir: Path, key: tuple[str, str], n_sides: int, dtype: str):
        work_dir.mkdir(parents=True, exist_ok=True)
        stem = work_dir / f"{key[0]}.{key[1]}"
        self.paths = [(Path(f"{stem}.{s}.ids"), Path(f"{stem}.{s}.len")) for s in range(n_sides)]
        self.files = [(open(a, "wb"), open(b, "wb")) for a, b in self.paths]
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.n = 0

    def append(self, sides: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for (ids, lengths), (fi, fl) in zip(sides, self.files):
            fi.write(ids.astype(self.dtype, copy=False).tobytes())
            fl.write(lengths.astype("<i8", copy=False).tobytes())
        self.n += len(sides[0][1])

    def route(self, writers: list[list[ShardWriter]], valid: np.ndarray, test: np.ndarray) -> None:
        """Write every sentence to its split's shards, a block of sentences at a time."""
        for fi, fl in self.files:
            fi.close()
            fl.close()
        for side, (ids_path, len_path) in enumerate(self.paths):
            ids = np.memmap(ids_path, dtype=self.dtype, mode="r") if ids_path.stat().st_size else np.zeros(0, self.dtype)
            all_lengths = np.fromfile(len_path, dtype="<i8")
            tok0 = 0
            for start in range(0, self.n, self.BLOCK):
                lengths = all_lengths[start:start + self.BLOCK]
                n_tok = int(lengths.sum())
                block = np.asarray(ids[tok0:tok0 + n_tok])
                labels = _split_labels(start, len(lengths), valid, test)
                for si in range(3):
                    sel = labels == si
                    if sel.all():
                        writers[si][side].append(block, lengths)
                    elif sel.any():  # one boolean gather per block: a write per run of train costs far more
                        writers[si][side].append(block[np.repeat(sel, lengths)], lengths[sel])
                tok0 += n_tok
            del ids, block
            ids_path.unlink()
            len_path.unlink()


def encode_sources(cleaned: list[Cleaned], tok, out: Path, cfg: PrepareConfig, dtype: str,
                   progress: bool = False, specials: SpecialIds | None = None) -> dict[str, dict]:
    """The fused pass: workers read, clean, filter and encode chunks of every source; this process
    dedups them in order (one HashSet64 per language / pair, across its corpora) and writes the
    split shards of each language / pair (its corpora in the order given, one after another).
    Fills each Cleaned's counts; returns the manifest counts, and per corpus its split sizes
    (`counts["corpora"][i]` for cleaned[i]). `tok` is a `tokenizers` Tokenizer or a FastEncoder."""
    from xlmkit.data.tokenizer import FastEncoder

    specials = specials or SpecialIds()
    encoder = tok if isinstance(tok, FastEncoder) else FastEncoder(tok)
    # warmed here, before the workers fork, so that each does not pay for it again (~40 ms a worker,
    # measured: the eos-appending SentencePiece model, lazy imports behind the first clean and encode)
    encoder.encode_flat(["a"], specials.eos, dtype)
    clean_lines(["a b", "c\xa0d"], raw="a b\nc\xa0d".encode())
    line_hashes([b"a"])
    tasks, owners = [], []
    for ci, c in enumerate(cleaned):
        for t in _chunk_tasks(c, cfg, dtype, specials.eos):
            tasks.append(t)
            owners.append(ci)
    last_chunk = {ci: i for i, ci in enumerate(owners)}
    group_lines: dict[tuple[str, str], int] = {}
    for c in cleaned:
        key = (c.source.kind, c.source.name)
        group_lines[key] = group_lines.get(key, 0) + c.raw_lines
    counts: dict = {"mono": {}, "para": {}, "corpora": [dict.fromkeys(SPLITS, 0) for _ in cleaned]}
    bar = progress_bar(progress, total=sum(c.raw_lines for c in cleaned), desc="encode", unit=" lines")
    group, stream, seen, members = None, None, None, []

    def finish_group():
        c0 = cleaned[members[0]]
        valid, test = split_indices(stream.n, cfg, c0.source.name)
        writers = [[ShardWriter(*shard_paths(out, c0.source.kind, c0.source.name, split,
                                             None if c0.source.kind == "mono" else lang), dtype, specials.unk)
                    for lang in c0.source.langs] for split in SPLITS]
        stream.route(writers, valid, test)
        start = 0  # each corpus's share of each split, from its range of the group's sentences
        for ci in members:
            n = cleaned[ci].n_lines
            labels = _split_labels(start, n, valid, test)
            for si, split in enumerate(SPLITS):
                counts["corpora"][ci][split] = int(np.count_nonzero(labels == si))
            start += n
        _finish(group, writers, counts)

    for i, (ci, (n, dropped, hashes, encoded)) in enumerate(zip(owners, _run_tasks(tasks, encoder, cfg.workers))):
        c = cleaned[ci]
        key = (c.source.kind, c.source.name)
        if key != group:
            if stream is not None:
                finish_group()
            # sized for every line of the group at once (at most half full): growing re-inserts every key
            group, seen, members = key, HashSet64(1 << max(16, (2 * group_lines[key]).bit_length())), []
            stream = _GroupStream(c.work_dir, key, len(c.source.files), dtype)
        if ci not in members:
            members.append(ci)
        _count(c, n, dropped)
        if hashes is not None:
            is_new = seen.add(hashes)
            kept = int(is_new.sum())
            c.dropped["duplicate"] += len(hashes) - kept
            if kept < len(hashes):
                encoded = [(ids[np.repeat(is_new, lengths)], lengths[is_new]) for ids, lengths in encoded]
        stream.append(encoded)
        c.n_lines += len(encoded[0][1])
        bar.update(n)
        if last_chunk[ci] == i:
            if c.n_lines == 0:
                raise _no_usable_lines(c, cfg)
            _log(progress, f"  {c.source.kind} {c.source.name} ({' / '.join(p.name for p in c.source.files)}): "
                           f"{c.n_lines} lines kept of {c.lines_read}"
                           + "".join(f", {v} {k}" for k, v in c.dropped.items() if v))
    if stream is not None:
        finish_group()
    bar.close()
    return counts


def _finish(group: tuple[str, str], writers: list[list[ShardWriter]], counts: dict) -> None:
    kind, name = group
    langs = (name,) if kind == "mono" else tuple(name.split("-"))
    entry = {}
    for split, sides in zip(SPLITS, writers):
        for w in sides:
            w.close()
        if kind == "mono":
            w = sides[0]
            entry[split] = {"sentences": w.sentences, "tokens": w.tokens, "unk": w.unk}
        else:
            entry[split] = {"sentences": sides[0].sentences,
                            "tokens": {lang: w.tokens for lang, w in zip(langs, sides)},
                            "unk": {lang: w.unk for lang, w in zip(langs, sides)}}
    counts[kind][name] = entry


# ----------------------------------------------------------------------------------------------
# Reusing a run's tokenizer (continued pretraining)


@dataclass
class ReusedTokenizer:
    """A run's tokenizer with the ids its model was trained with (its vocab.json), not xlmkit's fixed ones."""

    tokenizer: object  # tokenizers.Tokenizer
    source: Path  # the tokenizer.json
    vocab_size: int  # the model's (may exceed the tokenizer's, e.g. an imported model with spare rows)
    specials: dict[str, int]  # bos/pad/eos/unk/mask
    lang2id: dict[str, int]
    lang_tokens: dict[str, int]
    special_ids: list[int]  # every id never predicted nor drawn as a random replacement
    stamp: str  # sha256 of tokenizer.json + vocab.json, for the up-to-date check


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it ({e})") from None


def reuse_tokenizer(path: str | Path, languages: list[str]) -> ReusedTokenizer:
    """Load RUN/tokenizer.json (or the given tokenizer.json) and the ids of RUN/vocab.json beside it.

    The new text's languages must be in the run's lang2id when its model has language embeddings
    (RUN/config.json model.use_lang_emb); otherwise a language it does not know is recorded with id 0,
    which such a model never reads. Unlike `check_tokenizer`, nothing assumes xlmkit's fixed ids."""
    from tokenizers import Tokenizer

    path = Path(path)
    tok_path = path / "tokenizer.json" if path.is_dir() else path
    run = tok_path.parent
    if not tok_path.is_file():
        raise DataError(f"--tokenizer {path}: no tokenizer.json there (give a run directory or its tokenizer.json)")
    vocab_path = run / "vocab.json"
    if not vocab_path.is_file():
        raise DataError(f"--tokenizer {path}: no vocab.json beside {tok_path.name}; its special ids and languages "
                        f"are unknown (give the directory of an xlmkit run, e.g. one made by `xlmkit import`)")
    vocab = _read_json(vocab_path)
    try:
        tok = Tokenizer.from_file(str(tok_path))
    except Exception as e:  # noqa: BLE001 (tokenizers raises a bare Exception)
        raise DataError(f"{tok_path}: not a tokenizers file ({e})") from None
    contract = RunContract.from_vocab(vocab, source=vocab_path)
    specials = asdict(contract.specials)
    lang2id = dict(contract.lang2id)
    config = _read_json(run / "config.json").get("model", {}) if (run / "config.json").is_file() else {}
    has_lang_emb = bool(config.get("use_lang_emb", len(set(lang2id.values())) > 1))
    unknown = [lang for lang in languages if lang not in lang2id]
    if unknown and has_lang_emb:
        raise DataError(f"language{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} of the new text "
                        f"{'are' if len(unknown) > 1 else 'is'} unknown to {run} (its model has language embeddings "
                        f"for: {', '.join(sorted(lang2id)) or 'none'})")
    lang2id.update({lang: 0 for lang in unknown})
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    vocab_size = contract.vocab_size or n_tok
    if vocab_size < n_tok:
        raise DataError(f"{vocab_path}: vocab_size {vocab_size} is smaller than its tokenizer ({n_tok} tokens)")
    lang_tokens = dict(contract.lang_tokens)
    special_ids = sorted(contract.reserved_ids(tok))
    digest = hashlib.sha256(tok_path.read_bytes() + vocab_path.read_bytes()).hexdigest()
    return ReusedTokenizer(tok, tok_path.resolve(), vocab_size, specials, lang2id, lang_tokens, special_ids, digest)


# ----------------------------------------------------------------------------------------------
# The whole pipeline


def input_stamp(sources: list[Source], cfg: PrepareConfig) -> tuple[str, dict[Path, str]]:
    """sha256 of (format, pipeline version, output-relevant settings, input file hashes); and the file hashes."""
    files = list(dict.fromkeys(p for s in sources for p in s.files))
    # hashlib lets go of the GIL while it hashes a block: the files are hashed side by side
    with ThreadPoolExecutor(max(1, min(cfg.workers, len(files)))) as pool:
        hashes = dict(zip(files, pool.map(file_sha256_cached, files)))
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in _NON_OUTPUT_SETTINGS}
    key = {"format": FORMAT, "version": FORMAT_VERSION, "pipeline": PIPELINE_VERSION, "settings": settings,
           "inputs": [[s.kind, s.name, [hashes[p] for p in s.files]] for s in sources]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest(), hashes


def _is_up_to_date(out: Path, stamp: str) -> bool:
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return data.get("stamp") == stamp and (out / "tokenizer.json").is_file()


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _remove_orphan_tmp_dirs(out: Path) -> None:
    """Delete OUT.tmp-PID-* directories left by a run that was killed outright (no cleanup ran), i.e.
    whose process no longer exists. A live run's directory (another process preparing the same
    output right now) is left alone."""
    for tmp in out.parent.glob(f"{out.name}.tmp-*-*"):
        pid = tmp.name[len(out.name) + len(".tmp-"):].split("-", 1)[0]
        if not pid.isdigit() or not tmp.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _new_tmp_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise DataError(f"{out} exists, is not empty and holds no manifest.json; refusing to replace it "
                        f"(choose another --out or remove it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphan_tmp_dirs(out)
    # the pid in the name tells a later run whether the process that made it is still alive
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the output is an ordinary directory
    return tmp


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished tmp dir into place; an older output is moved aside first, then deleted."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _scan_all(sources: list[Source], cfg: PrepareConfig, work: Path, progress: bool = False) -> list[Cleaned]:
    work.mkdir(parents=True, exist_ok=True)
    return [scan_source(src, cfg, work) for src in sources]


_clean_all = _scan_all  # the former name


def prepare_data(cfg: PrepareConfig, out_dir: str | Path, mono: dict | None = None, para: dict | None = None,
                 data_dir=None, progress: bool = True, tokenizer: str | Path | None = None) -> Path:
    """Clean, tokenize and shard the inputs into `out_dir` (format: xlmkit/data/format.py). Returns out_dir.

    `mono` maps language -> text file (or a list of them), `para` maps 'a-b' -> (file_a, file_b) (or a
    list of such); `data_dir` (one or a list) adds what `discover_inputs` finds there. Codes are ISO
    639-1 or 639-3 ('eng' == 'en') or listed in `cfg.extra_langs`. `tokenizer` (a run
    directory or its tokenizer.json) reuses that run's tokenizer and ids instead of training one
    (`reuse_tokenizer`), for continued pretraining of the run.
    """
    t0, cpu0 = time.perf_counter(), _cpu_s()
    out = Path(out_dir)
    sources = resolve_sources(mono, para, data_dir, cfg.extra_langs)
    stamp, hashes = input_stamp(sources, cfg)
    reused = None
    if tokenizer is not None:
        reused = reuse_tokenizer(tokenizer, sorted({lang for src in sources for lang in src.langs}))
        stamp = hashlib.sha256((stamp + reused.stamp).encode()).hexdigest()
    if _is_up_to_date(out, stamp):
        _log(progress, f"xlmkit prepare: {out} is up to date (same inputs and settings); nothing to do")
        return out
    tmp = _new_tmp_dir(out)
    try:
        _log(progress, f"xlmkit prepare: {len(sources)} inputs -> {out}")
        timings = {"inputs": time.perf_counter() - t0}  # sha256 of the inputs (the stamp, duplicate text)
        t = time.perf_counter()
        cleaned = _scan_all(sources, cfg, tmp / "work", progress)
        timings["scan"] = time.perf_counter() - t
        t, cpu_t = time.perf_counter(), _cpu_s()
        from xlmkit.data.tokenizer import FastEncoder, check_tokenizer, language_shares

        line_counts: dict[str, int] = {}
        for c in cleaned:
            for lang in c.source.langs:
                line_counts[lang] = line_counts.get(lang, 0) + c.raw_lines
        languages = sorted(line_counts)
        if reused is None:
            _log(progress, f"  training {cfg.tokenizer} tokenizer (vocab {cfg.vocab_size}, "
                           f"{cfg.tokenizer_sample_sentences} sampled sentences, alpha {cfg.alpha})")
            tok, sample_sizes = fit_tokenizer(cleaned, cfg, progress)
            info = check_tokenizer(tok, languages)
            ids = {"lang2id": {lang: i for i, lang in enumerate(languages)}, "vocab_size": info.vocab_size,
                   "specials": info.specials, "lang_tokens": info.lang_tokens}
            tokenizer_entry = {"file": "tokenizer.json", "type": cfg.tokenizer, "vocab_size": info.vocab_size,
                               "trained_with": _engine_version("sentencepiece" if cfg.tokenizer == "unigram"
                                                               else "tokenizers"),
                               "character_coverage": cfg.character_coverage, "byte_fallback": cfg.byte_fallback,
                               "alpha": cfg.alpha, "sample_sentences": sample_sizes,
                               # over the raw line counts: the sample is drawn before the text is cleaned
                               "sample_shares": language_shares(line_counts, cfg.alpha)}
        else:
            _log(progress, f"  reusing the tokenizer of {reused.source} (vocab {reused.vocab_size})")
            tok = reused.tokenizer
            ids = {"lang2id": reused.lang2id, "vocab_size": reused.vocab_size, "specials": reused.specials,
                   "lang_tokens": reused.lang_tokens, "special_ids": reused.special_ids}
            tokenizer_entry = {"file": "tokenizer.json", "reused_from": str(reused.source),
                               "vocab_size": reused.vocab_size}
        tok.save(str(tmp / "tokenizer.json"))
        timings["tokenizer"] = time.perf_counter() - t
        cpu_tokenizer = _cpu_s() - cpu_t
        dtype = "uint16" if ids["vocab_size"] <= 1 << 16 else "int32"
        t = time.perf_counter()
        encoder = FastEncoder(tok)  # built once: worker processes inherit it
        _log(progress, f"  cleaning and encoding with {encoder.engine} in {cfg.workers} worker "
                       f"process{'es' if cfg.workers > 1 else ''}")
        counts = encode_sources(cleaned, encoder, tmp, cfg, dtype, progress, SpecialIds(**ids["specials"]))
        tokenizer_entry["encoded_with"] = _engine_version(encoder.engine)
        timings["encode"] = time.perf_counter() - t
        shutil.rmtree(tmp / "work")
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "languages": languages,
            "pairs": sorted(counts["para"]),
            "lang2id": ids["lang2id"],
            "vocab_size": ids["vocab_size"],
            "dtype": dtype,
            "specials": ids["specials"],
            "lang_tokens": ids["lang_tokens"],
            **({"special_ids": ids["special_ids"]} if "special_ids" in ids else {}),
            "mono": counts["mono"],
            "para": counts["para"],
            "shards": shard_records(tmp),  # size + sha256 of each shard file, checked when opened
            "sources": [_source_entry(c, hashes, splits) for c, splits in zip(cleaned, counts["corpora"])],
            "config": config_to_dict(cfg),
            "tokenizer": tokenizer_entry,
            "stamp": stamp,
            "timings_s": None,  # filled in below
        }
        # informative only. inputs: sha256 of the input files; scan: line offsets; tokenizer: its sample
        # drawn and cleaned, training; encode: the fused read, clean, dedup, encode and shard writing;
        # total: the whole call, manifest and shard checksums included.
        timings["total"] = time.perf_counter() - t0
        manifest["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        # CPU seconds of this process and its finished workers: less at the mercy of a shared machine
        cpu_total = _cpu_s() - cpu0
        manifest["cpu_s"] = {"tokenizer": round(cpu_tokenizer, 3), "rest": round(cpu_total - cpu_tokenizer, 3),
                             "total": round(cpu_total, 3)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(progress, f"xlmkit prepare: wrote {out} in {time.perf_counter() - t0:.1f}s "
                   f"({len(languages)} languages, {len(counts['para'])} pairs, vocab {ids['vocab_size']})")
    return out


def _cpu_s() -> float:
    """User + system CPU seconds of this process and of its waited-for children (the pool's workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _source_entry(c: Cleaned, hashes: dict[Path, str], splits: dict[str, int]) -> dict:
    """One corpus: its files, what cleaning kept and dropped (duplicates include lines already seen in
    an earlier corpus of the same language / pair) and how many of its sentences went to each split."""
    return {
        "kind": c.source.kind, "name": c.source.name,
        "files": [{"path": str(p.resolve()), "sha256": hashes[p]} for p in c.source.files],
        "lines_read": c.lines_read, "kept": c.n_lines,
        "dropped": dict(c.dropped), "dropped_total": sum(c.dropped.values()),
        "sentences": dict(splits),
    }


def _engine_version(engine: str) -> str:
    from importlib.metadata import version

    return f"{engine} {version(engine)}"


def train_tokenizer_only(cfg: PrepareConfig, out_dir: str | Path, mono=None, para=None, data_dir=None,
                         progress: bool = True) -> Path:
    """Clean the inputs and train the shared tokenizer; write only OUT/tokenizer.json. Returns its path."""
    out = Path(out_dir)
    sources = resolve_sources(mono, para, data_dir, cfg.extra_langs)
    if (out / "manifest.json").is_file():
        raise DataError(f"{out} is a prepared data directory: its tokenizer.json must stay the one its shards "
                        f"were encoded with; write the tokenizer elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tokenizer.tmp-", dir=out) as tmp:
        cleaned = _scan_all(sources, cfg, Path(tmp) / "work", progress)
        tok, _ = fit_tokenizer(cleaned, cfg, progress)
        tok.save(str(Path(tmp) / "tokenizer.json"))
        os.replace(Path(tmp) / "tokenizer.json", out / "tokenizer.json")
    _log(progress, f"xlmkit train-tokenizer: wrote {out / 'tokenizer.json'} (vocab {tok.get_vocab_size()})")
    return out / "tokenizer.json"

