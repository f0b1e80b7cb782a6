"""Downstream task data: readers for JSONL, TSV, CoNLL-U and CoNLL (NER) files, and splits.

Every reader returns a list of `Example`s; every example knows its language, its label(s), where it
came from (`file:line`, for error messages) and a `uid` that names the same sentence across the
languages of a parallel set (the CoNLL-U `sent_id`, a JSONL / TSV `id`, else its index in the file).

Formats (the task decides which fields are read):

    classification  JSONL {"text": …, "label": …, "lang": …}            TSV columns text, label[, lang][, id]
    pair            JSONL {"text_a": …, "text_b": …, "label": …, "lang": …}  TSV columns text_a, text_b, label[, lang]
    token           JSONL {"tokens": [...], "labels": [...], "lang": …}
                    CoNLL-U (UPOS column; tokens = FORM; multiword ranges `1-2` and empty nodes `1.1` skipped)
                    CoNLL (`.conll`, `.iob`, `.bio`, `.ner`): one token per line, first column the token,
                    last column the tag, a blank line between sentences, `-DOCSTART-` lines skipped

Aliases understood: sentence -> text; sentence1 / premise -> text_a; sentence2 / hypothesis -> text_b;
gold_label -> label; tags / ner_tags / upos -> labels. Labels are strings (JSON 0 / 1 become "0" / "1").

A record without a `lang` field takes its language from the file name: the first of its parts
(split on `.`, `_`, `-`) that is a known language code, canonicalised with xlmkit.core.langs
(`en_pud-ud-test.conllu` -> en, `xnli.fra.dev.jsonl` -> fr). A file's split (train / dev / test) is
read from its name the same way (`train`, `dev` / `valid` / `validation` / `val`, `test`).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from xlmkit.core.errors import DataError, reading
from xlmkit.core.langs import CORPUS_CODES, canonical_lang

TASKS = ("classification", "pair", "token")
SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".conllu": "conllu",
            ".conll": "conll", ".iob": "conll", ".bio": "conll", ".ner": "conll"}
SPLIT_NAMES = {"train": "train", "dev": "dev", "valid": "dev", "validation": "dev", "val": "dev", "test": "test"}

_TEXT_KEYS = ("text", "sentence")
_TEXT_A_KEYS = ("text_a", "sentence1", "premise")
_TEXT_B_KEYS = ("text_b", "sentence2", "hypothesis")
_LABEL_KEYS = ("label", "gold_label")
_TOKENS_KEYS = ("tokens", "words")
_TAGS_KEYS = ("labels", "tags", "ner_tags", "upos")
_KNOWN_CODES = CORPUS_CODES | {canonical_lang(c) for c in CORPUS_CODES}


@dataclass
class Example:
    lang: str
    label: str | list[str]  # one label (classification, pair) or one tag per token (token)
    text: str | None = None  # classification: the text; pair: the first text
    text_b: str | None = None  # pair: the second text
    tokens: list[str] | None = None  # token task: the words
    source: str = ""  # "file:line" of the record (for a CoNLL sentence, its first line)
    uid: str = ""  # the same sentence in every language of a parallel set has the same uid
    token_lines: list[int] = field(default_factory=list)  # token task: file line of each token

    def where(self, token_index: int | None = None) -> str:
        """`file:line` of the record, or of one token of it."""
        if token_index is not None and self.token_lines:
            return f"{self.source.rsplit(':', 1)[0]}:{self.token_lines[token_index]}"
        return self.source


# ----------------------------------------------------------------------------------------------
# File names: language and split


def _name_parts(path: str | Path) -> list[str]:
    name = Path(path).name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return [p for p in re.split(r"[._\-]", name) if p]


def lang_from_filename(path: str | Path) -> str | None:
    """The language a file name names, or None: the first part that is a known code."""
    for part in _name_parts(path):
        if part.lower() in _KNOWN_CODES:
            return canonical_lang(part)
    parts = _name_parts(path)
    # an unlisted two-letter code standing alone ("xx.jsonl") is taken as a language too
    if len(parts) == 1 and re.fullmatch(r"[a-z]{2}", parts[0]):
        return parts[0]
    return None


def split_from_filename(path: str | Path) -> str | None:
    """'train' / 'dev' / 'test' when the file name says so, else None."""
    for part in _name_parts(path):
        if part.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[part.lower()]
    return None


def _lang_of(value, default: str | None, where: str) -> str:
    if value is None or value == "":
        if default is None:
            raise DataError(f"{where}: no language: add a 'lang' field or name the file after its language "
                            f"(e.g. en.jsonl, en_pud-ud-test.conllu)")
        return default
    try:
        return canonical_lang(str(value))
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None


def _label_str(value, where: str) -> str:
    if value is None or isinstance(value, (dict, list)):
        raise DataError(f"{where}: label must be a string or a number, got {value!r}")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _first(record: dict, keys: tuple[str, ...]):
    for k in keys:
        if k in record:
            return record[k]
    return None


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


# ----------------------------------------------------------------------------------------------
# Readers


def _example_from_record(record: dict, task: str, default_lang: str | None, where: str, uid: str) -> Example:
    lang = _lang_of(record.get("lang", record.get("language")), default_lang, where)
    uid = str(record.get("id", record.get("uid", uid)))
    if task == "token":
        tokens = _first(record, _TOKENS_KEYS)
        tags = _first(record, _TAGS_KEYS)
        if not isinstance(tokens, list) or not isinstance(tags, list):
            raise DataError(f"{where}: a token-task record needs lists 'tokens' and 'labels'")
        if len(tokens) != len(tags):
            raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} labels")
        if not tokens:
            raise DataError(f"{where}: empty token list")
        return Example(lang=lang, label=[_label_str(t, where) for t in tags], tokens=[str(t) for t in tokens],
                       source=where, uid=uid)
    label = _first(record, _LABEL_KEYS)
    if label is None or label == "":
        raise DataError(f"{where}: missing 'label'")
    if task == "classification":
        text = _first(record, _TEXT_KEYS)
        if not isinstance(text, str):
            raise DataError(f"{where}: missing 'text' (a string)")
        return Example(lang=lang, label=_label_str(label, where), text=text, source=where, uid=uid)
    a, b = _first(record, _TEXT_A_KEYS), _first(record, _TEXT_B_KEYS)
    if not isinstance(a, str) or not isinstance(b, str):
        raise DataError(f"{where}: a pair record needs strings 'text_a' and 'text_b'")
    return Example(lang=lang, label=_label_str(label, where), text=a, text_b=b, source=where, uid=uid)


def _utf8_lines(path: Path) -> Iterator[str]:
    """The lines of a file (with their line ending), each decoded as UTF-8; a line that is not valid
    UTF-8 raises DataError naming the file and its 1-based line number."""
    with reading(path), open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{i}: invalid UTF-8 ({e.reason} at byte {e.start} of the line)") from None


@contextmanager
def _open_utf8(path: Path):
    yield _utf8_lines(Path(path))


def read_jsonl(path: str | Path, task: str, lang: str | None = None) -> list[Example]:
    _check_task(task)
    path = Path(path)
    default_lang = lang if lang is not None else lang_from_filename(path)
    out = []
    with _open_utf8(path) as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{i}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON: {e}") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object")
            out.append(_example_from_record(record, task, default_lang, where, uid=str(len(out))))
    return out


def read_tsv(path: str | Path, task: str, lang: str | None = None) -> list[Example]:
    """Tab-separated with a header row naming the columns. No quoting: a tab or newline inside a
    text is not representable (as in XNLI's and PAWS-X's TSV files)."""
    _check_task(task)
    if task == "token":
        raise DataError(f"{path}: TSV holds classification or pair data; for tokens use CoNLL-U, CoNLL or JSONL")
    path = Path(path)
    default_lang = lang if lang is not None else lang_from_filename(path)
    out = []
    with _open_utf8(path) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            return out
        header = [h.strip() for h in header]
        for i, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            where = f"{path}:{i}"
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} columns but the header has {len(header)} ({', '.join(header)})")
            out.append(_example_from_record(dict(zip(header, row)), task, default_lang, where, uid=str(len(out))))
    return out


def read_conllu(path: str | Path, lang: str | None = None, column: str = "upos") -> list[Example]:
    """One Example per sentence: tokens = FORM, labels = UPOS (or XPOS with column='xpos').
    Multiword token ranges (`1-2`) and empty nodes (`1.1`) are skipped."""
    col = {"upos": 3, "xpos": 4}.get(column)
    if col is None:
        raise DataError(f"CoNLL-U column must be upos or xpos, got {column!r}")
    path = Path(path)
    default_lang = lang if lang is not None else lang_from_filename(path)
    out: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    sent_id = None
    start = 0

    def flush():
        nonlocal tokens, tags, lines, sent_id
        if tokens:
            where = f"{path}:{start}"
            out.append(Example(lang=_lang_of(None, default_lang, where), label=tags, tokens=tokens, source=where,
                               uid=sent_id if sent_id is not None else str(len(out)), token_lines=lines))
        tokens, tags, lines, sent_id = [], [], [], None

    with _open_utf8(path) as f:
        for i, raw in enumerate(f, start=1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                flush()
                continue
            if line.startswith("#"):
                m = re.match(r"#\s*sent_id\s*=\s*(.+)", line)
                if m:
                    sent_id = m.group(1).strip()
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise DataError(f"{path}:{i}: a CoNLL-U token line has 10 tab-separated columns, got {len(cols)}")
            if "-" in cols[0] or "." in cols[0]:
                continue  # multiword token range / empty node
            if not tokens:
                start = i
            tag = cols[col]
            if tag in ("", "_"):
                raise DataError(f"{path}:{i}: token {cols[1]!r} has no {column.upper()} tag")
            tokens.append(cols[1])
            tags.append(tag)
            lines.append(i)
    flush()
    return out


def read_conll(path: str | Path, lang: str | None = None) -> list[Example]:
    """CoNLL-2003 / WikiANN style: `token [cols…] tag` per line, blank line between sentences.
    A token written `xx:word` (WikiANN's language prefix) keeps the prefix; strip it beforehand."""
    path = Path(path)
    default_lang = lang if lang is not None else lang_from_filename(path)
    out: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    start = 0

    def flush():
        nonlocal tokens, tags, lines
        if tokens:
            where = f"{path}:{start}"
            out.append(Example(lang=_lang_of(None, default_lang, where), label=tags, tokens=tokens, source=where,
                               uid=str(len(out)), token_lines=lines))
        tokens, tags, lines = [], [], []

    with _open_utf8(path) as f:
        for i, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                flush()
                continue
            if line.startswith("-DOCSTART-"):
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            if len(cols) < 2:
                raise DataError(f"{path}:{i}: expected `token … tag`, got {line!r}")
            if not tokens:
                start = i
            tokens.append(cols[0])
            tags.append(cols[-1])
            lines.append(i)
    flush()
    return out


def read_task_file(path: str | Path, task: str, lang: str | None = None) -> list[Example]:
    """Read any supported file; the format comes from its suffix."""
    _check_task(task)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown data format; expected one of {', '.join(sorted(SUFFIXES))}")
    if fmt in ("conllu", "conll") and task != "token":
        raise DataError(f"{path}: {fmt.upper()} files hold token-task data, not {task} data")
    if fmt == "jsonl":
        return read_jsonl(path, task, lang)
    if fmt == "tsv":
        return read_tsv(path, task, lang)
    if fmt == "conllu":
        return read_conllu(path, lang)
    return read_conll(path, lang)


def list_task_files(spec: str | Path | Iterable[str | Path]) -> list[Path]:
    """A directory (its data files, sorted), a comma-separated string of files, or a list of them."""
    if isinstance(spec, (str, Path)):
        p = Path(spec)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not files:
                raise DataError(f"{p}: no data files ({', '.join(sorted(SUFFIXES))})")
            return files
        items = [s for s in str(spec).split(",") if s.strip()]
    else:
        items = list(spec)
    files = []
    for s in items:
        p = Path(str(s).strip())
        if p.is_dir():
            files.extend(list_task_files(p))
        elif not p.is_file():
            raise DataError(f"data file not found: {p}")
        else:
            files.append(p)
    return files


def read_task_files(spec, task: str) -> list[Example]:
    out = []
    for f in list_task_files(spec):
        out.extend(read_task_file(f, task))
    return out


# ----------------------------------------------------------------------------------------------
# Labels, languages and splits


def group_by_lang(examples: Iterable[Example]) -> dict[str, list[Example]]:
    out: dict[str, list[Example]] = {}
    for ex in examples:
        out.setdefault(ex.lang, []).append(ex)
    return dict(sorted(out.items()))


def label_list(examples: Iterable[Example]) -> list[str]:
    """Sorted labels (classes or tags) seen in the examples."""
    seen: set[str] = set()
    for ex in examples:
        if isinstance(ex.label, list):
            seen.update(ex.label)
        else:
            seen.add(ex.label)
    return sorted(seen)


def label_counts(examples: Iterable[Example]) -> Counter:
    c: Counter = Counter()
    for ex in examples:
        if isinstance(ex.label, list):
            c.update(ex.label)
        else:
            c[ex.label] += 1
    return c


def unknown_labels(examples: Iterable[Example], labels: Iterable[str]) -> list[tuple[str, str]]:
    """[(file:line, label)] for every label not in `labels`, in file order."""
    known = set(labels)
    out = []
    for ex in examples:
        if isinstance(ex.label, list):
            out.extend((ex.where(i), t) for i, t in enumerate(ex.label) if t not in known)
        elif ex.label not in known:
            out.append((ex.where(), ex.label))
    return out


def check_labels(examples: Iterable[Example], labels: Iterable[str], what: str = "the training data") -> None:
    """Raise DataError naming the file, line and label of the first label not in `labels`."""
    labels = list(labels)
    bad = unknown_labels(examples, labels)
    if bad:
        where, lab = bad[0]
        more = f" ({len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{where}: label {lab!r} does not occur in {what} (labels: {', '.join(labels)}){more}")


def split_uids(uids: list[str], fractions: tuple[float, ...], seed: int) -> list[list[str]]:
    """Deterministic partition of distinct uids by a seeded permutation: parts of sizes
    round(f * n) (the last part takes the rest). The same uids and seed give the same parts."""
    distinct = sorted(dict.fromkeys(uids))
    order = np.random.default_rng(seed).permutation(len(distinct))
    parts, start = [], 0
    for i, f in enumerate(fractions):
        stop = len(distinct) if i == len(fractions) - 1 else start + int(round(f * len(distinct)))
        parts.append(sorted(distinct[j] for j in order[start:stop]))
        start = stop
    return parts


def select_uids(examples: list[Example], uids: Iterable[str]) -> list[Example]:
    keep = set(uids)
    return [ex for ex in examples if ex.uid in keep]


# ----------------------------------------------------------------------------------------------
# A real classification task from real data


def build_pud_genre(ud_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Sentence genre classification (news vs wikipedia) from the Parallel UD treebanks.

    PUD's 1000 sentences are 500 news and 500 Wikipedia sentences, and the treebanks say which: the
    sent_id starts with `n` (news) or `w` (wikipedia), the same id in every language. So the labels are
    the corpus's own metadata (nothing is labelled by hand) and the sets are parallel across languages.
    Writes `{lang}.jsonl` ({"text", "label", "lang", "id"}; text = the `# text` line) per treebank."""
    ud_dir, out_dir = Path(ud_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for f in sorted(ud_dir.glob("*.conllu")):
        lang = lang_from_filename(f)
        if lang is None:
            continue
        rows, sent_id = [], None
        with _open_utf8(f) as fh:
            for line in fh:
                m = re.match(r"#\s*sent_id\s*=\s*(\S+)", line)
                if m:
                    sent_id = m.group(1)
                m = re.match(r"#\s*text\s*=\s*(.*)", line)
                if m and sent_id is not None:
                    genre = {"n": "news", "w": "wikipedia"}.get(sent_id[0])
                    if genre is not None:
                        rows.append({"text": m.group(1).strip(), "label": genre, "lang": lang, "id": sent_id})
                    sent_id = None
        if rows:
            path = out_dir / f"{lang}.jsonl"
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            written.append(path)
    if not written:
        raise DataError(f"{ud_dir}: no PUD .conllu files with sent_id / text lines")
    return written
