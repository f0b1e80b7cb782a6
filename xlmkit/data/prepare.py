"""`xlmkit prepare`: raw text -> clean text -> shared tokenizer -> memory-mappable token shards.

The output format is the contract in xlmkit/data/format.py (read by `PreparedData`). The pipeline streams:

1. clean   each input file is read line by line, normalised (xlmkit.data.text.clean_line), filtered by
           length and deduplicated (xlmkit.data.text.HashSet64 of 64-bit line hashes per language / pair:
           the only state that grows with the corpus, 16-32 bytes per distinct line); clean lines go
           to a work file and nothing else is kept. Parallel files are read in lockstep: a pair is dropped if either
           side is filtered, dedup is on the pair.
2. sample  a language-balanced sample of the clean lines (q_i ∝ n_i^alpha, parallel text counted
           toward its languages) streams into the tokenizer trainer; memory O(sample size).
3. encode  worker processes encode chunks of `prepare.chunk_lines` lines, reading their chunk from
           the work file themselves; the parent writes results in order to the split shards. At
           most 2 chunks per worker are in flight, so memory does not grow with the corpus.
4. finish  manifest.json (written last) and a rename of OUT.tmp-xxxx to OUT, so a failed run never
           leaves an output that a later run could take for finished.

Re-running with the same inputs (by sha256) and the same settings finds the stamp in the existing
manifest and returns at once ("up to date").
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xlmkit.core.config import PrepareConfig, config_to_dict
from xlmkit.data.contract import RunContract
from xlmkit.data.format import FORMAT, FORMAT_VERSION, SPLITS, SpecialIds, shard_paths, shard_records
from xlmkit.core.errors import DataError
from xlmkit.core.langs import canonical_lang, canonical_pair, check_lang
from xlmkit.data.text import (HashSet64, clean_line, count_lines, file_sha256, line_hash,
                         read_lines)

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
# Stage 1: clean, filter, dedup (streaming)


@dataclass
class Cleaned:
    """A source after cleaning: its clean lines in work files, and what was dropped on the way."""

    source: Source
    work_files: tuple[Path, ...]
    chunk_lines: int  # lines per encoding chunk
    n_lines: int = 0  # kept lines (pairs)
    chunk_starts: list[tuple[int, ...]] = field(default_factory=list)  # byte offsets, every chunk_lines lines
    lines_read: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict(bad_utf8=0, too_short=0, too_long=0, duplicate=0))


def _paired_lines(src: Source, cfg: PrepareConfig) -> Iterator[tuple[str | None, str | None]]:
    """Both sides of a parallel source in lockstep; different line counts are an error naming both."""
    a_path, b_path = src.files
    end = object()
    a_lines = read_lines(a_path, cfg.max_lines, cfg.skip_bad_lines)
    b_lines = read_lines(b_path, cfg.max_lines, cfg.skip_bad_lines)
    for a, b in itertools.zip_longest(a_lines, b_lines, fillvalue=end):
        if a is end or b is end:
            raise DataError(f"parallel files have different line counts: {a_path} has {count_lines(a_path)} lines, "
                            f"{b_path} has {count_lines(b_path)} lines")
        yield a, b


def progress_bar(progress: bool, **kwargs):
    """A tqdm bar on an interactive terminal only, and only once a step has run for a second: in a
    log file or CI output, bars are lines of carriage returns and `clean de: 0 lines`."""
    from tqdm import tqdm

    shown = progress and sys.stderr.isatty()
    return tqdm(disable=not shown, file=sys.stderr, mininterval=0.5, delay=1.0, leave=False, **kwargs)


def clean_source(src: Source, cfg: PrepareConfig, work_dir: Path, progress: bool = False,
                 batch_lines: int = 4096, seen: HashSet64 | None = None, index: int = 0) -> Cleaned:
    """Stream one source through cleaning into work files (one clean line per line).

    Lines go through in batches so that dedup (a HashSet64 of 64-bit line hashes, the only state
    that grows with the corpus) costs a few numpy operations per batch rather than per line. `seen`
    is shared by the corpora of one language or pair, so dedup runs across them.
    """
    work_files = tuple(work_dir / f"{src.kind}.{src.name}.{index}.{i}.txt" for i in range(len(src.files)))
    out = Cleaned(src, work_files, cfg.chunk_lines)
    seen = HashSet64() if seen is None else seen
    lines = ((x,) for x in read_lines(src.files[0], cfg.max_lines, cfg.skip_bad_lines)) \
        if src.kind == "mono" else _paired_lines(src, cfg)
    bar = progress_bar(progress, desc=f"clean {src.name}", unit=" lines")
    lower, accents, min_chars, max_chars = cfg.lowercase, cfg.strip_accents, cfg.min_chars, cfg.max_chars
    handles = [open(p, "w", encoding="utf-8", newline="\n") for p in work_files]
    try:
        while batch := list(itertools.islice(lines, batch_lines)):
            out.lines_read += len(batch)
            bar.update(len(batch))
            survivors = []
            for raw in batch:
                if None in raw:
                    out.dropped["bad_utf8"] += 1
                    continue
                texts = [clean_line(x, lower, accents) for x in raw]
                reason = None
                for t in texts:  # the first side with a reason gives it (filter_reason's rule, inlined)
                    if len(t) < min_chars:
                        reason = "too_short"
                        break
                    if len(t) > max_chars:
                        reason = "too_long"
                        break
                if reason:
                    out.dropped[reason] += 1
                else:
                    survivors.append(texts)
            if cfg.dedup and survivors:
                # Dedup on the whole pair for parallel text; clean text holds no tab, so joining is unambiguous.
                hashes = np.fromiter((line_hash("\t".join(t)) for t in survivors), dtype=np.uint64, count=len(survivors))
                is_new = seen.add(hashes)
                out.dropped["duplicate"] += len(survivors) - int(is_new.sum())
                survivors = [t for t, new in zip(survivors, is_new) if new]
            i = 0
            while i < len(survivors):  # written a chunk's worth at a time, noting where each chunk starts
                if out.n_lines % cfg.chunk_lines == 0:
                    out.chunk_starts.append(tuple(f.tell() for f in handles))
                take = min(len(survivors) - i, cfg.chunk_lines - out.n_lines % cfg.chunk_lines)
                for side, f in enumerate(handles):
                    f.write("".join(t[side] + "\n" for t in survivors[i:i + take]))
                out.n_lines += take
                i += take
    finally:
        bar.close()
        for f in handles:
            f.close()
    if out.lines_read == 0:
        raise DataError(f"{_files(src)}: empty file" + ("s" if len(src.files) > 1 else ""))
    if out.n_lines == 0:
        drops = ", ".join(f"{k}={v}" for k, v in out.dropped.items() if v)
        raise DataError(f"{_files(src)}: no usable lines after cleaning ({out.lines_read} read; dropped {drops}; "
                        f"prepare.min_chars={cfg.min_chars}, prepare.max_chars={cfg.max_chars})")
    return out


def _files(src: Source) -> str:
    return " / ".join(str(p) for p in src.files)


def _read_work_lines(path: Path, start: int = 0, n: int | None = None) -> Iterator[str]:
    with open(path, encoding="utf-8", newline="\n") as f:
        f.seek(start)
        for line in itertools.islice(f, n):
            yield line[:-1]


# ----------------------------------------------------------------------------------------------
# Stage 2: the language-balanced tokenizer sample and the tokenizer


def _lang_segments(cleaned: list[Cleaned]) -> dict[str, list[tuple[Path, int]]]:
    """lang -> the work files holding its clean lines (mono file and parallel sides), with line counts."""
    segments: dict[str, list[tuple[Path, int]]] = {}
    for c in cleaned:
        for lang, path in zip(c.source.langs, c.work_files):
            segments.setdefault(lang, []).append((path, c.n_lines))
    return segments


def tokenizer_sample(cleaned: list[Cleaned], cfg: PrepareConfig, rng: np.random.Generator
                     ) -> tuple[Iterator[str], dict[str, int]]:
    """A streaming language-balanced sample of the clean text, and the sentences per language in it."""
    from xlmkit.data.tokenizer import iter_sampled, sample_line_indices

    segments = _lang_segments(cleaned)
    counts = {lang: sum(n for _, n in segs) for lang, segs in segments.items()}
    indices = sample_line_indices(counts, cfg.alpha, cfg.tokenizer_sample_sentences, rng)

    def lines() -> Iterator[str]:
        for lang in sorted(segments):
            chained = itertools.chain.from_iterable(_read_work_lines(p) for p, _ in segments[lang])
            yield from iter_sampled(chained, indices[lang])

    return lines(), {lang: len(ix) for lang, ix in indices.items()}


def fit_tokenizer(cleaned: list[Cleaned], cfg: PrepareConfig, progress: bool = False):
    """Train the shared tokenizer on a balanced sample; return (tokenizer, sample sizes per language)."""
    from xlmkit.data.tokenizer import train_tokenizer

    def sample():  # the same seeded sample each time it is asked for (the trainer may need two passes)
        return tokenizer_sample(cleaned, cfg, np.random.default_rng([cfg.seed, 1]))

    _, sizes = sample()
    tok = train_tokenizer(lambda: sample()[0], sorted(sizes), cfg.tokenizer, cfg.vocab_size, cfg.lowercase,
                          cfg.strip_accents, n_sentences=cfg.tokenizer_sample_sentences,
                          character_coverage=cfg.character_coverage, byte_fallback=cfg.byte_fallback)
    return tok, sizes


# ----------------------------------------------------------------------------------------------
# Stage 3: encode in worker processes, write split shards


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


def _init_worker(tokenizer_json: str) -> None:
    """Load the tokenizer once per process (workers inherit TOKENIZERS_PARALLELISM=false: the
    processes are the parallelism)."""
    global _WORKER_ENCODER
    from tokenizers import Tokenizer

    from xlmkit.data.tokenizer import FastEncoder

    _WORKER_ENCODER = FastEncoder(Tokenizer.from_str(tokenizer_json))


def encode_lines(encoder, lines: list[str], eos: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids with </s> after every sentence, per-sentence lengths including the </s>). `encoder` is
    an xlmkit.data.tokenizer.FastEncoder or a `tokenizers` Tokenizer."""
    if not hasattr(encoder, "engine"):
        from xlmkit.data.tokenizer import FastEncoder

        encoder = FastEncoder(encoder)
    ids = encoder.encode(lines)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
    ends = np.cumsum(lengths) - 1
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    body = np.ones(len(flat), dtype=bool)
    body[ends] = False
    flat[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=len(flat) - len(ids))
    flat[ends] = eos
    return flat, lengths


def _encode_task(task: tuple) -> list[tuple[np.ndarray, np.ndarray]]:
    files, starts, n, dtype, eos = task
    out = []
    for path, start in zip(files, starts):
        lines = list(_read_work_lines(path, start, n))
        out.append(encode_lines(_WORKER_ENCODER, lines, eos, dtype))
    return out


def _chunk_tasks(c: Cleaned, dtype: str, eos: int) -> list[tuple]:
    tasks = []
    for i, starts in enumerate(c.chunk_starts):
        n = min(c.chunk_lines, c.n_lines - i * c.chunk_lines)
        tasks.append((c.work_files, starts, n, dtype, eos))
    return tasks


def _pool_context():
    """fork where available: spawn would re-import the caller's __main__ (breaking `python - <<EOF`
    scripts and unguarded scripts). tokenizers' threads in the parent are why workers are told to
    stay single-threaded (TOKENIZERS_PARALLELISM=false, set before the fork so they inherit it)."""
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods and sys.platform != "darwin" else "spawn")


def _run_tasks(tasks: list[tuple], tokenizer_json: str, workers: int) -> Iterator:
    """Results of `_encode_task` in task order, with at most 2 tasks per worker in flight.

    (Pool.imap would read ahead without bound.) A single task, or workers=1, runs in this process:
    a worker pool costs start-up time that small inputs do not repay.
    """
    if workers == 1 or len(tasks) <= 1:
        _init_worker(tokenizer_json)
        for t in tasks:
            yield _encode_task(t)
        return
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = _pool_context().Pool(workers, initializer=_init_worker, initargs=(tokenizer_json,))
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    with pool:
        pending: deque = deque()
        for t in tasks:
            pending.append(pool.apply_async(_encode_task, (t,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


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


def encode_sources(cleaned: list[Cleaned], tok, out: Path, cfg: PrepareConfig, dtype: str,
                   progress: bool = False, specials: SpecialIds | None = None) -> dict[str, dict]:
    """Encode every source into the split shards of its language / pair (the corpora of one in the
    order given, one after another); return the manifest counts, and per corpus its split sizes
    (`counts["corpora"][i]` for cleaned[i])."""
    specials = specials or SpecialIds()
    tasks, owners = [], []
    for ci, c in enumerate(cleaned):
        for t in _chunk_tasks(c, dtype, specials.eos):
            tasks.append(t)
            owners.append(ci)
    group_lines: dict[tuple[str, str], int] = {}
    for c in cleaned:
        key = (c.source.kind, c.source.name)
        group_lines[key] = group_lines.get(key, 0) + c.n_lines
    unk = specials.unk
    counts: dict = {"mono": {}, "para": {}, "corpora": [dict.fromkeys(SPLITS, 0) for _ in cleaned]}
    bar = progress_bar(progress, total=sum(c.n_lines for c in cleaned), desc="encode", unit=" lines")
    writers: list[list[ShardWriter]] = []  # [split][side]
    group, line0, valid, test = None, 0, None, None
    results = _run_tasks(tasks, tok.to_str(), cfg.workers)
    for ci, result in zip(owners, results):
        c = cleaned[ci]
        if (c.source.kind, c.source.name) != group:
            if writers:
                _finish(group, writers, counts)
            group, line0 = (c.source.kind, c.source.name), 0
            valid, test = split_indices(group_lines[group], cfg, c.source.name)
            writers = [[ShardWriter(*shard_paths(out, c.source.kind, c.source.name, split,
                                                 None if c.source.kind == "mono" else lang), dtype, unk)
                        for lang in c.source.langs] for split in SPLITS]
        n = len(result[0][1])
        labels = _split_labels(line0, n, valid, test)
        for si, split in enumerate(SPLITS):
            keep = labels == si
            if not keep.any():
                continue
            counts["corpora"][ci][split] += int(keep.sum())
            for side, (ids, lengths) in enumerate(result):
                writers[si][side].append(ids[np.repeat(keep, lengths)], lengths[keep])
        line0 += n
        bar.update(n)
    if writers:
        _finish(group, writers, counts)
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
    """sha256 of (format, output-relevant settings, input file hashes); and the file hashes."""
    hashes = {p: file_sha256_cached(p) for s in sources for p in s.files}
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in _NON_OUTPUT_SETTINGS}
    key = {"format": FORMAT, "version": FORMAT_VERSION, "settings": settings,
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


def _clean_all(sources: list[Source], cfg: PrepareConfig, work: Path, progress: bool) -> list[Cleaned]:
    work.mkdir(parents=True, exist_ok=True)
    cleaned = []
    seen: dict[tuple[str, str], HashSet64] = {}  # one dedup set per language / pair, across its corpora
    for i, src in enumerate(sources):
        c = clean_source(src, cfg, work, progress, seen=seen.setdefault((src.kind, src.name), HashSet64()), index=i)
        _log(progress, f"  {src.kind} {src.name} ({' / '.join(p.name for p in src.files)}): {c.n_lines} lines kept "
                       f"of {c.lines_read}" + "".join(f", {v} {k}" for k, v in c.dropped.items() if v))
        cleaned.append(c)
    return cleaned


def prepare_data(cfg: PrepareConfig, out_dir: str | Path, mono: dict | None = None, para: dict | None = None,
                 data_dir=None, progress: bool = True, tokenizer: str | Path | None = None) -> Path:
    """Clean, tokenize and shard the inputs into `out_dir` (format: xlmkit/data/format.py). Returns out_dir.

    `mono` maps language -> text file (or a list of them), `para` maps 'a-b' -> (file_a, file_b) (or a
    list of such); `data_dir` (one or a list) adds what `discover_inputs` finds there. Codes are ISO
    639-1 or 639-3 ('eng' == 'en') or listed in `cfg.extra_langs`. `tokenizer` (a run
    directory or its tokenizer.json) reuses that run's tokenizer and ids instead of training one
    (`reuse_tokenizer`), for continued pretraining of the run.
    """
    t0 = time.perf_counter()
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
        timings = {}
        t = time.perf_counter()
        cleaned = _clean_all(sources, cfg, tmp / "work", progress)
        timings["clean"] = time.perf_counter() - t
        t = time.perf_counter()
        from xlmkit.data.tokenizer import check_tokenizer, language_shares

        line_counts = {lang: sum(n for _, n in segs) for lang, segs in _lang_segments(cleaned).items()}
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
        dtype = "uint16" if ids["vocab_size"] <= 1 << 16 else "int32"
        t = time.perf_counter()
        from xlmkit.data.tokenizer import FastEncoder

        engine = FastEncoder(tok).engine
        _log(progress, f"  encoding with {engine} in {cfg.workers} worker process{'es' if cfg.workers > 1 else ''}")
        counts = encode_sources(cleaned, tok, tmp, cfg, dtype, progress, SpecialIds(**ids["specials"]))
        tokenizer_entry["encoded_with"] = _engine_version(engine)
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
            "timings_s": {k: round(v, 3) for k, v in timings.items()},  # informative only
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(progress, f"xlmkit prepare: wrote {out} in {time.perf_counter() - t0:.1f}s "
                   f"({len(languages)} languages, {len(counts['para'])} pairs, vocab {ids['vocab_size']})")
    return out


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
        cleaned = _clean_all(sources, cfg, Path(tmp) / "work", progress)
        tok, _ = fit_tokenizer(cleaned, cfg, progress)
        tok.save(str(Path(tmp) / "tokenizer.json"))
        os.replace(Path(tmp) / "tokenizer.json", out / "tokenizer.json")
    _log(progress, f"xlmkit train-tokenizer: wrote {out / 'tokenizer.json'} (vocab {tok.get_vocab_size()})")
    return out / "tokenizer.json"

