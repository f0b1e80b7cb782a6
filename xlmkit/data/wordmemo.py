"""A word -> ids memo in front of SentencePiece: each distinct word is encoded once per process.

Why it is exact: xlmkit's Unigram tokenizer splits on spaces before the model (Metaspace with
split=True, so no piece holds a '▁' after its first character), which makes a line's Viterbi path
the concatenation of its words' paths. Encoding "▁w" once and reusing its ids wherever w occurs
gives the very ids of encoding the line; `tokenizers` itself encodes word by word.

Why it is fast: natural text is Zipfian; in 20 MB of Leipzig news 86% of the words were seen before
in the same process (450k distinct of 3.15M). SentencePiece spends ~0.6 us on a word; a seen word
costs a few vectorised numpy operations (key, probe, gather), no Python code per word. The words not
yet in the memo go to SentencePiece a few hundred to a call. Chinese, written without spaces, gains
nothing: its "words" are whole clauses.

Words are keyed by their first 16 bytes, their length and a hash of the rest (`word_keys`): two
words of at most 16 bytes never share an entry, longer ones only on a 64-bit collision among words
of the same length and first 8 bytes. A word whose key matches an entry with another check is left
to the exact line path. Memory is bounded: past `max_words` distinct words or `max_ids` stored ids
the memo starts empty again (the output does not depend on it). Each worker process has its own.
"""

from __future__ import annotations

import itertools

import numpy as np

MAX_WORD_BYTES = 200  # longer words (URLs, runs of symbols) are left to the line path
MAX_GROUP_BYTES = 1000  # group start offsets; a group's text stays under 1200 bytes < MAX_EXACT_CHARS
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd constants: multiplying by them is a bijection
_MIX2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P = np.uint64(0x100000001B3)  # FNV-64 prime: the polynomial hash of bytes past a word's 16th
_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)  # the low k bytes of a uint64
with np.errstate(over="ignore"):
    _POWERS = np.cumprod(np.concatenate([[np.uint64(1)], np.full(MAX_WORD_BYTES, _P)]), dtype=np.uint64)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that spreads every input bit over all 64."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def word_keys(a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(key, check) of each word a[start:end] of the uint8 array `a`, from its first 16 bytes read as
    two little-endian uint64 (v0, v1), its length and a polynomial hash of the rest: key =
    mix64(v1 ^ v0 * C1 ^ length * C2 ^ rest), check = v0. For a fixed (v0, length, rest) the key is a
    bijection of v1, so for words of at most 16 bytes equal (key, check, length) means equal words;
    longer ones need a 64-bit collision among words of the same length and first 8 bytes.
    Operations per word, not per byte, but for the bytes past the 16th."""
    n = len(a)
    padded = np.zeros(n + 16, dtype=np.uint8)
    padded[:n] = a
    as_u64 = np.ndarray((n + 9,), dtype="<u8", buffer=padded, strides=(1,))  # a uint64 at every byte offset
    length = ends - starts
    v0 = as_u64[starts] & _MASKS[np.minimum(length, 8)]
    v1 = as_u64[starts + 8] & _MASKS[np.clip(length - 8, 0, 8)]
    rest = np.zeros(len(starts), dtype=np.uint64)
    long = np.flatnonzero((length > 16) & (length <= MAX_WORD_BYTES))
    with np.errstate(over="ignore"):
        if len(long):
            k = length[long] - 16
            first = np.cumsum(k) - k
            within = np.arange(int(k.sum())) - np.repeat(first, k)
            terms = padded[np.repeat(starts[long] + 16, k) + within].astype(np.uint64) * _POWERS[within]
            rest[long] = np.add.reduceat(terms, first)
        key = mix64(v1 ^ (v0 * _MIX) ^ (length.astype(np.uint64) * _MIX2) ^ rest)
    key[key == 0] = 1  # 0 marks an empty slot
    return key, v0


def encode_word_groups(sp, starts_word: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """SentencePiece ids of the words of `texts` (each a group of words joined by single spaces), one
    call for all: a group is encoded as one sentence (its Viterbi path is its words' paths one after
    another) and split where a piece starts a word (`starts_word[id]`: it begins with '▁'). Groups
    stay well under MAX_EXACT_CHARS, so the sums stay within float32's exact range as on a short
    line. -> (ids, ids per word, in order)."""
    encoded = sp.encode(texts, out_type=int, num_threads=1)
    per_text = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32, count=int(per_text.sum()))
    word_start = starts_word[flat]
    words_per_text = np.fromiter(map(str.count, texts, itertools.repeat(" ")), dtype=np.int64, count=len(texts)) + 1
    text_first = np.cumsum(per_text) - per_text
    if (per_text > 0).all() and word_start[text_first].all() \
            and np.array_equal(np.add.reduceat(word_start.astype(np.int64), text_first), words_per_text):
        return flat, np.diff(np.flatnonzero(word_start), append=len(flat))
    # a group whose pieces do not split into its words ('▁' inside <unk>, say): one call per word
    words = [w for text in texts for w in text.split(" ")]
    encoded = sp.encode(words, out_type=int, num_threads=1)
    counts = np.fromiter(map(len, encoded), dtype=np.int64, count=len(words))
    return np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32, count=int(counts.sum())), counts


def pieces_starting_a_word(sp) -> np.ndarray:
    """(vocab,) bool: the pieces that begin with '▁', i.e. begin a word."""
    return np.array([sp.id_to_piece(i).startswith("\u2581") for i in range(sp.get_piece_size())])


def make_memo(sp, max_words: int = 1 << 19, max_ids: int = 1 << 22, pieces: list[str] | None = None):
    """The compiled table where it was built (xlmkit/data/_wordtable.c), else the numpy one: same ids.
    None where word by word would not be exact: a piece holding '▁' past its first character could
    span two words. `pieces`, where the caller has them, are sp's pieces by id (saves asking sp for
    each: ~15 ms at 8000)."""
    if pieces is None:
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    if any("\u2581" in p[1:] for p in pieces):
        return None
    starts_word = np.array([p.startswith("\u2581") for p in pieces])
    try:
        return CompiledWordMemo(sp, max_words, max_ids, starts_word)
    except ImportError:
        return WordMemo(sp, max_words, max_ids, starts_word)


class CompiledWordMemo:
    """WordMemo's contract on the C table: words split, looked up (compared byte for byte, so no
    hash can mix two words up), stored and their ids copied in C; SentencePiece encodes the missing
    words here, a few hundred to a call (encode_word_groups)."""

    def __init__(self, sp, max_words: int = 1 << 19, max_ids: int = 1 << 22, starts_word: np.ndarray | None = None):
        from xlmkit.data._wordtable import WordTable

        self.sp = sp
        self.starts_word = pieces_starting_a_word(sp) if starts_word is None else starts_word
        self.table = WordTable(max_words, max_ids, MAX_WORD_BYTES, MAX_GROUP_BYTES)
        self._starts_word = self.starts_word.astype(np.uint8).tobytes()

    def __len__(self) -> int:
        return len(self.table)

    def encode(self, data: bytes, n_lines: int, eos: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As WordMemo.encode."""
        missing = self.table.lookup(data, n_lines)
        if missing:
            texts = missing.decode("utf-8").split("\n")
            # SentencePiece's lists go to C as they are (building arrays from them here cost ~10% of encoding)
            if not self.table.fill_groups(self.sp.encode(texts, out_type=int, num_threads=1), self._starts_word):
                flat, counts = encode_word_groups(self.sp, self.starts_word, texts)
                self.table.fill(flat.astype("<i4").tobytes(), counts.astype("<i8").tobytes())
        flat, lengths, bad = self.table.emit(-1 if eos is None else eos)
        return (np.frombuffer(flat, dtype="<i4"), np.frombuffer(lengths, dtype="<i8").copy(),
                np.array(bad, dtype=np.int64))


class WordMemo:
    """Encodes a chunk of lines with `sp` (a SentencePieceProcessor, no bos/eos), word by word.

    An open-addressing table (linear probing, load <= 1/2) of three 64-bit arrays: the key, the
    check (word_keys) and the value, packed: where the word's ids start in `ids` << 24 | how many
    << 8 | the word's length in bytes (<= MAX_WORD_BYTES).
    """

    def __init__(self, sp, max_words: int = 1 << 19, max_ids: int = 1 << 22, starts_word: np.ndarray | None = None):
        self.sp = sp
        self.max_words, self.max_ids = max_words, max_ids
        # a group's word boundaries in its ids
        self.starts_word = pieces_starting_a_word(sp) if starts_word is None else starts_word
        # the table's final size from the start, so that slots found in a chunk stay valid (a chunk of
        # more than max_words words grows it)
        self._reset(1 << max(16, (2 * max_words - 1).bit_length()))

    def _reset(self, slots: int) -> None:
        self.keys = np.zeros(slots, dtype=np.uint64)  # 0 = empty slot
        self.check = np.zeros(slots, dtype=np.uint64)
        self.value = np.zeros(slots, dtype=np.int64)
        self.ids = np.zeros(1 << 16, dtype=np.int32)
        self.n_ids = 1  # ids[0] is the slot of the end-of-sentence id
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def encode(self, data: bytes, n_lines: int, eos: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`data`: n_lines lines joined by '\\n' (UTF-8). -> (ids of every line one after another, each
        followed by eos when given; ids per line, eos included; indices of the lines this path left
        to the caller, whose ids in the output are wrong and must be replaced)."""
        if n_lines == 0:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        a = np.frombuffer(data, dtype=np.uint8)
        seps = np.flatnonzero((a == 32) | (a == 10))
        starts = np.concatenate([[0], seps + 1])
        ends = np.concatenate([seps, [len(a)]])
        newline_after = np.concatenate([a[seps] == 10, [True]])  # the word ends its line
        line_ends = np.flatnonzero(newline_after)  # index of each line's last word
        if len(line_ends) != n_lines:
            raise ValueError(f"{n_lines} lines expected, {len(line_ends)} found (a line holds '\\n'?)")
        length = ends - starts
        key, check = word_keys(a, starts, ends)
        # empty words (two spaces, a space at a line's edge) and very long ones are the line path's
        storable = (length > 0) & (length <= MAX_WORD_BYTES)
        if self.size > self.max_words or self.n_ids > self.max_ids:
            self._reset(len(self.keys))  # full: start empty again (the output does not depend on it)
        slot, found = self._lookup(key)
        missing = self._distinct(key, ~found & storable)
        if 2 * (self.size + len(missing[0])) > len(self.keys):  # one chunk of more than max_words words
            while 2 * (self.size + len(missing[0])) > len(self.keys):
                self._grow()
            slot, found = self._lookup(key)  # slots move when the table grows
        if len(missing[0]):
            keys, pos, inverse = missing
            new_slots = self._add(data, keys, pos, starts, ends, check)
            at = np.flatnonzero(~found & storable)
            slot[at], found[at] = new_slots[inverse], True
        value = self.value[slot]
        ok = found & (self.check[slot] == check) & ((value & 0xFF) == length)
        bad_lines = np.unique(np.searchsorted(line_ends, np.flatnonzero(~ok)))

        # items: every word, and after each line's last word its eos (ids[0]); gathered in one pass
        self.ids[0] = 0 if eos is None else eos
        word_off = value >> 24
        word_cnt = np.where(ok, (value >> 8) & 0xFFFF, 0)
        item_off = np.insert(word_off, line_ends + 1, 0)
        item_cnt = np.insert(word_cnt, line_ends + 1, 0 if eos is None else 1)
        first = np.cumsum(item_cnt) - item_cnt
        flat = self.ids[np.repeat(item_off - first, item_cnt) + np.arange(int(first[-1] + item_cnt[-1]))]
        first_item = np.concatenate([[0], line_ends[:-1] + 1]) + np.arange(n_lines)  # words and eos before
        return flat, np.add.reduceat(item_cnt, first_item), bad_lines

    @staticmethod
    def _distinct(key: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distinct keys among the marked words, a position of each, each marked word's index in them)."""
        at = np.flatnonzero(where)
        keys, first, inverse = np.unique(key[at], return_index=True, return_inverse=True)
        return keys, at[first], inverse

    def _lookup(self, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slot of each key (linear probing) and whether it is there."""
        mask = len(self.keys) - 1
        slot = (key & np.uint64(mask)).astype(np.int64)
        held = self.keys[slot]
        found = held == key
        pending = np.flatnonzero(~found & (held != 0))  # slot held by another key: probe on
        while len(pending):
            s = (slot[pending] + 1) & mask
            slot[pending] = s
            held = self.keys[s]
            hit = held == key[pending]
            found[pending[hit]] = True
            pending = pending[~hit & (held != 0)]
        return slot, found

    def _add(self, data: bytes, keys, pos, starts, ends, check) -> np.ndarray:
        """Encode each missing word once with SentencePiece and store it; -> the words' slots."""
        flat, counts = self._encode_words(data, starts[pos], ends[pos])
        n_new = len(flat)
        while self.n_ids + n_new > len(self.ids):
            self.ids = np.concatenate([self.ids, np.zeros(len(self.ids), dtype=np.int32)])
        offs = self.n_ids + np.cumsum(counts) - counts
        self.ids[self.n_ids:self.n_ids + n_new] = flat
        self.n_ids += n_new
        return self._insert(keys, check[pos], (offs << 24) | (counts << 8) | (ends[pos] - starts[pos]))

    def _encode_words(self, data: bytes, starts: np.ndarray, ends: np.ndarray):
        """SentencePiece ids of the words data[starts[k]:ends[k]] (encode_word_groups), -> (ids, ids per word)."""
        lengths = ends - starts
        a = np.frombuffer(data, dtype=np.uint8)
        dest = np.cumsum(lengths + 1) - (lengths + 1)  # each word, then its separator
        group = dest // MAX_GROUP_BYTES
        out = np.empty(int(dest[-1] + lengths[-1] + 1), dtype=np.uint8)
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[np.repeat(dest, lengths) + within] = a[np.repeat(starts, lengths) + within]
        last_of_group = np.concatenate([group[1:] != group[:-1], [True]])
        out[dest + lengths] = np.where(last_of_group, 10, 32)
        return encode_word_groups(self.sp, self.starts_word, out[:-1].tobytes().decode("utf-8").split("\n"))

    def _insert(self, keys: np.ndarray, check: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Insert distinct keys not in the table; -> their slots."""
        mask = len(self.keys) - 1
        slot = (keys & np.uint64(mask)).astype(np.int64)
        pending = np.arange(len(keys))
        while len(pending):
            s = slot[pending]
            empty = self.keys[s] == 0
            self.keys[s[empty]] = keys[pending[empty]]  # several may claim one slot: one wins
            won = np.zeros(len(pending), dtype=bool)
            won[empty] = self.keys[s[empty]] == keys[pending[empty]]
            w = pending[won]
            self.check[slot[w]], self.value[slot[w]] = check[w], value[w]
            lost = pending[~won]
            slot[lost] = (slot[lost] + 1) & mask
            pending = lost
        self.size += len(keys)
        return slot

    def _grow(self) -> None:
        used = self.keys != 0
        old = (self.keys[used], self.check[used], self.value[used])
        ids, n_ids = self.ids, self.n_ids
        self._reset(2 * len(self.keys))
        self.ids, self.n_ids = ids, n_ids
        self._insert(*old)
