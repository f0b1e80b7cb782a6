"""Raw text -> clean lines: normalisation, filters, dedup hashes and a strict streaming line reader.

Cleaning is a pure function of its arguments (no global state), so the same cleaning runs in the
pipeline, in tests and in downstream code. `clean_line` is idempotent:
`clean_line(clean_line(x)) == clean_line(x)`, which is what lets the tokenizer's own normaliser (see
xlmkit.data.tokenizer) be a no-op on text that went through the pipeline.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import operator
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from xlmkit.core.errors import DataError, reading

# Control characters that carry no text: C0/C1 controls except the whitespace ones (tab, newlines,
# \x0b-\x0d, \x1c-\x1f and NEL \x85 count as whitespace and become one space), DEL, the byte-order
# mark and the zero-width space. Zero-width (non-)joiners (U+200C/U+200D) are kept on purpose: they
# change the rendering and sometimes the meaning of Persian, Indic scripts and emoji sequences.
CONTROL_CHARS = "\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u200b\ufeff"
# Unicode whitespace (what str.isspace() accepts), spelt out so the tokenizer's Rust regex matches
# exactly the same set (xlmkit.data.tokenizer builds its normaliser from these two strings).
WHITESPACE_CHARS = "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_CONTROL_RE = re.compile(f"[{CONTROL_CHARS}]")
_SPACE_RE = re.compile(f"[{WHITESPACE_CHARS}]+")


def remove_accents(text: str) -> str:
    """Remove combining marks (Unicode category Mn) after canonical decomposition: 'é' -> 'e'.

    Same rule as `tokenizers.normalizers.StripAccents` (after NFD), so the tokenizer can mirror it.
    """
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if unicodedata.category(c) != "Mn"))


def clean_line(text: str, lowercase: bool = False, strip_accents: bool = False) -> str:
    """NFKC, drop control characters, optional lowercase / accent stripping, collapse whitespace.

    NFKC first (as XLM-R's SentencePiece does) so compatibility forms (full-width letters, ligatures,
    no-break spaces) become their plain equivalents before anything else looks at the text.
    """
    if not text.isascii() and not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    # Fast path (most lines): printable text holds no control character and no whitespace but ' '
    # (every character of CONTROL_CHARS and WHITESPACE_CHARS except ' ' is non-printable), so the two
    # regex passes reduce to collapsing runs of spaces. Same result, ~3x faster.
    printable = text.isprintable()
    if not printable:
        text = _CONTROL_RE.sub("", text)
    if lowercase:
        # Character by character for 'Σ' as the tokenizer's Lowercase does (str.lower() would turn a
        # word-final Σ into ς), so the tokenizer's normaliser gives the same result on raw text.
        text = "".join(c.lower() for c in text) if "Σ" in text else text.lower()
    if strip_accents:
        text = remove_accents(text)
    if not printable or "  " in text:
        text = _SPACE_RE.sub(" ", text)
    return text.strip(" ") if printable else text.strip()


def _expand_class(chars: str) -> list[str]:
    """The characters of a regex character-class body made of characters and a-b ranges."""
    out, i = [], 0
    while i < len(chars):
        if i + 2 < len(chars) and chars[i + 1] == "-":
            out += [chr(c) for c in range(ord(chars[i]), ord(chars[i + 2]) + 1)]
            i += 3
        else:
            out.append(chars[i])
            i += 1
    return out


# The characters clean_line removes or turns into spaces (all but ' ' and the line break), as UTF-8:
# what lets clean_lines find the lines that hold one by a few numpy passes over the chunk's bytes.
_ODD_UTF8 = sorted({c.encode() for c in _expand_class(CONTROL_CHARS) + _expand_class(WHITESPACE_CHARS)} - {b" ", b"\n"})
_ODD_LEADS = sorted({x[0] for x in _ODD_UTF8 if len(x) > 1})  # first bytes of the multi-byte ones
_ODD_MULTI = {k: np.array([int.from_bytes(x, "big") for x in _ODD_UTF8 if len(x) == k], dtype=np.int64) for k in (2, 3, 4)}
# the single-byte ones are the C0 controls but the line break, and DEL: found by two comparisons
assert {x for x in _ODD_UTF8 if len(x) == 1} == {bytes([b]) for b in [*range(10), *range(11, 32), 127]}


try:
    from xlmkit.data._wordtable import odd_lines as _odd_lines_c
except ImportError:  # not built: the numpy scans below
    _odd_lines_c = None
_ODD_TUPLE = tuple(_ODD_UTF8)


def _odd_lines(raw: bytes) -> np.ndarray:
    """Indices of the lines of `raw` (UTF-8, lines separated by \\n) holding a character of _ODD_UTF8.
    Comparisons of the uint8 array (vectorised), not table lookups (which widen every byte to intp)."""
    arr = np.frombuffer(raw, dtype=np.uint8)
    brk = arr == 10
    pos = np.flatnonzero(((arr < 32) & ~brk) | (arr == 127))
    is_lead = arr == _ODD_LEADS[0]
    for b in _ODD_LEADS[1:]:
        is_lead |= arr == b
    lead = np.flatnonzero(is_lead)
    if len(lead):
        padded = np.concatenate([arr, np.zeros(3, dtype=np.uint8)])
        code = padded[lead].astype(np.int64)
        hits = np.zeros(len(lead), dtype=bool)
        for k in (2, 3, 4):
            code = (code << 8) | padded[lead + k - 1]
            if len(_ODD_MULTI[k]):
                hits |= np.isin(code, _ODD_MULTI[k])
        pos = np.concatenate([pos, lead[hits]])
    if not len(pos):
        return pos
    return np.unique(np.searchsorted(np.flatnonzero(brk), pos))  # line = newlines before the character


def _scan_raw(raw: bytes) -> tuple[list[int], bool]:
    """(the lines of raw holding a character of _ODD_UTF8, whether a run of spaces or a space at a line's
    edge is anywhere in it): one pass in C where xlmkit/data/_wordtable.c was built, else numpy passes."""
    if _odd_lines_c is not None:
        found, spaces = _odd_lines_c(raw, _ODD_TUPLE)
        return np.frombuffer(found, dtype=np.int64).tolist(), spaces
    arr = np.frombuffer(raw, dtype=np.uint8)
    space, brk = arr == 32, arr == 10
    spaces = bool(len(arr)) and bool(space[0] or space[-1] or (space[1:] & (space[:-1] | brk[:-1])).any()
                                     or (space[:-1] & brk[1:]).any())
    return _odd_lines(raw).tolist(), spaces


def clean_lines(lines: list[str], lowercase: bool = False, strip_accents: bool = False, raw: bytes | None = None
                ) -> list[str]:
    """`[clean_line(x, lowercase, strip_accents) for x in lines]`, the same strings, at a fraction of
    the cost on real text: the pipeline's workers clean a chunk of lines at a time with it.

    Only scans that run no Python code per line find the few lines that need more than the common
    case (clean_line takes those): not NFKC (is_normalized answers at once for ASCII), or holding a
    control character or whitespace other than ' '. On the others the rest of clean_line is a no-op
    but for lowercasing, accents and runs of spaces, done once on the joined text. `raw`, the UTF-8
    bytes the lines were decoded from (joined by newlines, no \\r), moves the character and space
    scans onto bytes and numpy: str searches there cost ~2 ns a character each (measured).
    """
    if raw is None:  # without the bytes, str scans cost about what clean_line's own fast path does
        return list(map(clean_line, lines, itertools.repeat(lowercase), itertools.repeat(strip_accents)))
    n = len(lines)
    slow = set(itertools.compress(range(n), map(operator.not_, map(unicodedata.is_normalized,
                                                                   itertools.repeat("NFKC"), lines))))
    odd, spaces = _scan_raw(raw)
    slow.update(odd)
    out = list(lines)
    for i in slow:
        out[i] = clean_line(lines[i], lowercase, strip_accents)
    if not (lowercase or strip_accents or spaces):
        return out
    fast = [x for i, x in enumerate(lines) if i not in slow] if slow else lines
    text = "\n".join(fast)
    changed = False
    # printable text holds no whitespace but ' ' (see clean_line): collapsing and stripping are about ' ' only
    if lowercase:
        text = (text.replace("Σ", "σ") if "Σ" in text else text).lower()  # = per character (see clean_line)
        changed = True
    if strip_accents:
        text = remove_accents(text)
        changed = True
    if spaces and "  " in text:
        while "  " in text:
            text = text.replace("  ", " ")
        changed = True
    if spaces and (" \n" in text or "\n " in text or text.startswith(" ") or text.endswith(" ")):
        text = text.replace(" \n", "\n").replace("\n ", "\n").strip(" ")
        changed = True
    if not changed:
        return out
    cleaned = text.split("\n") if fast else []
    if not slow:
        return cleaned
    it = iter(cleaned)
    return [out[i] if i in slow else next(it) for i in range(n)]


def filter_reason(text: str, min_chars: int, max_chars: int) -> str | None:
    """Why a clean line is dropped ("too_short" / "too_long"), or None when it is kept."""
    if len(text) < min_chars:
        return "too_short"
    if len(text) > max_chars:
        return "too_long"
    return None


def line_hash(text: str) -> int:
    """64-bit digest of a line for dedup (never 0: HashSet64 uses 0 for an empty slot): `line_hashes`
    of one line. The same on every run and worker (no PYTHONHASHSEED in it)."""
    return int(line_hashes([text])[0])


def line_hashes(texts: list[str] | list[bytes]) -> np.ndarray:
    """The dedup hash of each text (or of each line's UTF-8 bytes, which saves encoding them), as a
    uint64 array. With the compiled helper (xlmkit/data/_wordtable.c, MurmurHash3's 64-bit mixing):
    the texts joined and hashed in one C call, ~3.5x faster than blake2b's call per line (0.09 s
    against 0.33 s on 40 MB in 5000-line chunks), which is the fallback (where the helper was not
    built, or a text holds a line break). Either way the chance that two different lines of a
    100M-line corpus collide is about n^2 / 2^65 ~ 3e-4; the C hash is not cryptographic, so lines
    crafted to collide could be taken for duplicates."""
    data = texts if texts and isinstance(texts[0], bytes) else list(map(str.encode, texts))
    if _hash_lines is not None and data:
        joined = b"\n".join(data)
        if joined.count(b"\n") == len(data) - 1:
            return np.frombuffer(_hash_lines(joined, len(data)), dtype=np.uint64).copy()
    digests = b"".join(map(hashlib.blake2b.digest, map(_blake2b_8, data)))
    h = np.frombuffer(digests, dtype="<u8").astype(np.uint64)
    h[h == 0] = 1
    return h


def joined_line_hashes(data: bytes, n_lines: int) -> np.ndarray | None:
    """line_hashes of the n_lines lines of `data` (their UTF-8 joined by '\\n'), from the bytes as
    they are; None where the compiled helper is missing or data does not hold n_lines lines."""
    if _hash_lines is None or n_lines < 1:
        return None
    try:
        return np.frombuffer(_hash_lines(data, n_lines), dtype=np.uint64).copy()
    except ValueError:
        return None


try:
    from xlmkit.data._wordtable import hash_lines as _hash_lines
    from xlmkit.data._wordtable import hashset_add as _hashset_add
except ImportError:  # not built: blake2b, and HashSet64's numpy inserts
    _hash_lines = _hashset_add = None
_blake2b_8 = functools.partial(hashlib.blake2b, digest_size=8)


class HashSet64:
    """A set of 64-bit line hashes in one numpy array (open addressing, linear probing).

    Dedup is the one part of the pipeline whose memory grows with the corpus: it must remember every
    distinct line. Here that costs 8 bytes per slot at a load of 1/4 to 1/2 (16-32 bytes per distinct
    line; 100M lines ~ 2-3 GB) against ~70 bytes per line for a Python set of ints. Batches are
    inserted in C where xlmkit/data/_wordtable.c was built (prefetching the slots ahead), else with
    vectorised numpy probing (a few numpy operations per batch); the same answers either way.
    """

    def __init__(self, capacity: int = 1 << 16):
        self.table = np.zeros(max(capacity, 16), dtype=np.uint64)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, hashes: np.ndarray) -> np.ndarray:
        """Insert a batch; return a mask, True where the hash was not seen before (in earlier batches
        or earlier in this batch)."""
        hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        is_new = np.zeros(len(hashes), dtype=bool)
        if len(hashes) == 0:
            return is_new
        if _hashset_add is not None:
            while 2 * (self.size + len(hashes)) > len(self.table):
                self._grow()
            mask, added = _hashset_add(self.table, self.size, hashes)
            self.size += added
            return np.frombuffer(mask, dtype=bool).copy()
        keys, first = np.unique(hashes, return_index=True)
        while 2 * (self.size + len(keys)) > len(self.table):
            self._grow()
        inserted = self._insert(keys)
        is_new[first[inserted]] = True
        return is_new

    def _insert(self, keys: np.ndarray) -> np.ndarray:
        """Insert distinct non-zero keys; True where a key was not already present."""
        table, mask = self.table, np.uint64(len(self.table) - 1)
        slots = keys & mask
        inserted = np.zeros(len(keys), dtype=bool)
        pending = np.arange(len(keys))
        while len(pending):
            k, s = keys[pending], slots[pending]
            current = table[s]
            found = current == k
            empty = current == 0
            table[s[empty]] = k[empty]  # several keys may claim one empty slot: one of them wins
            won = np.zeros_like(empty)
            won[empty] = table[s[empty]] == k[empty]
            inserted[pending[won]] = True
            move = ~found & ~empty  # slot held by another key: probe the next one (losers retry theirs)
            slots[pending[move]] = (s[move] + np.uint64(1)) & mask
            pending = pending[~(found | won)]
        self.size += int(inserted.sum())
        return inserted

    def _grow(self) -> None:
        old = self.table[self.table != 0]
        self.table = np.zeros(2 * len(self.table), dtype=np.uint64)
        self.size = 0
        if _hashset_add is not None:
            self.size = _hashset_add(self.table, 0, old)[1]
        else:
            self._insert(old)


def read_lines(path: str | Path, max_lines: int = 0, skip_bad_lines: bool = False) -> Iterator[str | None]:
    """Stream the lines of a UTF-8 file without their line ending, one at a time.

    A line that is not valid UTF-8 raises DataError naming the file and the 1-based line number; with
    `skip_bad_lines` it is yielded as None instead, so the caller can count it. `max_lines` > 0 stops
    after that many lines.
    """
    path = Path(path)
    with reading(path), open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if max_lines and lineno > max_lines:
                return
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if skip_bad_lines:
                    yield None
                    continue
                raise DataError(f"{path}:{lineno}: invalid UTF-8 ({e.reason} at byte {e.start}); "
                                f"fix the file or set prepare.skip_bad_lines=true to skip such lines") from None
            yield line.rstrip("\r\n")


def decode_lines(data: bytes, path: str | Path, first_lineno: int = 1, skip_bad_lines: bool = False
                 ) -> list[str | None]:
    """The lines of a block of whole lines of a UTF-8 file (line `first_lineno` onwards), as read_lines
    gives them: without their endings, None for invalid UTF-8 with `skip_bad_lines`, else the same
    DataError naming the file and line. One decode for the block; line by line only when it fails."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()  # the block ends with a newline
        return [x.rstrip("\r") for x in lines] if "\r" in text else lines
    out: list[str | None] = []
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    for k, raw in enumerate(parts):
        try:  # decoded with its newline, as read_lines does, for the same error position and reason
            out.append((raw + b"\n" if k < len(parts) - 1 or data.endswith(b"\n") else raw).decode("utf-8")
                       .rstrip("\r\n"))
        except UnicodeDecodeError as e:
            if not skip_bad_lines:
                raise DataError(f"{path}:{first_lineno + k}: invalid UTF-8 ({e.reason} at byte {e.start}); "
                                f"fix the file or set prepare.skip_bad_lines=true to skip such lines") from None
            out.append(None)
    return out


def count_lines(path: str | Path) -> int:
    """Number of lines of a file (a last line without a newline counts), read in 1 MiB blocks."""
    n, last = 0, b"\n"
    with reading(path), open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with reading(path), open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
