"""The word memo in front of SentencePiece (xlmkit.data.wordmemo): exactly the ids of the line path,
with the C table (xlmkit/data/_wordtable.c) and with the numpy one.

The parity tests over every sentence of ../shared/data (test_prepare_engine.py) check the default one
on real text; these build what real text seldom holds: forced resets, words and lines it must leave
to the line path, a key clash.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from xlmkit.data.tokenizer import METASPACE, FastEncoder, train_tokenizer
from xlmkit.data.wordmemo import MAX_WORD_BYTES, CompiledWordMemo, WordMemo, word_keys

EOS = 2


MEMOS = {"compiled": CompiledWordMemo, "numpy": WordMemo}


@pytest.fixture(params=sorted(MEMOS))
def memo_kind(request):
    if request.param == "compiled":
        pytest.importorskip("xlmkit.data._wordtable", reason="the C word table was not built")
    return MEMOS[request.param]


def test_the_c_table_is_built_where_a_compiler_is():
    """CI builds it (pip install -e . with gcc): a missing build would fall back silently, slower."""
    import shutil

    if shutil.which("gcc") or shutil.which("cc"):
        import xlmkit.data._wordtable  # noqa: F401


@pytest.fixture(scope="module")
def tok():
    text = [f"word{i % 37} and more text {i} über café" for i in range(3000)]
    return train_tokenizer(text, ["en"], "unigram", 400, byte_fallback=True)


def reference(tok, lines: list[str]) -> tuple[list[int], list[int]]:
    """What a user of the exported tokenizer.json gets, in the shards' form (eos after each line)."""
    want = [e.ids + [EOS] for e in Tokenizer.from_str(tok.to_str()).encode_batch(lines, add_special_tokens=False)]
    return [i for x in want for i in x], [len(x) for x in want]


def encode_flat(fast: FastEncoder, lines: list[str]) -> tuple[list[int], list[int]]:
    flat, lengths = fast.encode_flat(lines, EOS, "int32")
    return flat.tolist(), lengths.tolist()


def test_the_same_ids_through_resets(tok, memo_kind):
    """A memo far too small for the text starts empty again and again; the ids do not change."""
    lines = [f"word{i % 53} text{i % 701} and {i} more café{i % 11}" for i in range(4000)]
    fast = FastEncoder(tok)
    memo = fast.memo = memo_kind(fast.spm, max_words=300, max_ids=2000)
    sizes = []
    for start in range(0, len(lines), 50):
        chunk = lines[start:start + 50]
        assert encode_flat(fast, chunk) == reference(tok, chunk)
        sizes.append(len(memo))
    assert max(sizes) <= 300 + 170  # full past 300 words, emptied at the next chunk (<= 170 new words each)
    resets = sum(b < a for a, b in zip(sizes, sizes[1:]))
    assert resets >= 10

def test_lines_the_memo_cannot_take_go_to_the_line_path(tok, memo_kind):
    long_word = "x" * (MAX_WORD_BYTES + 1)
    lines = ["word1 and more", "", "two  spaces", " leading", "trailing ", f"a {long_word} b",
             "a <mask> b", "x</s>y", "<0x41> literal", ("word2 and more " * 200).strip(), "ünknown ☃ chars", "word3"]
    fast = FastEncoder(tok)
    fast.memo = memo_kind(fast.spm)
    flat, lengths, bad = fast.memo.encode("\n".join(lines).encode(), len(lines), EOS)
    assert bad.tolist() == [1, 2, 3, 4, 5]  # empty words, the over-long word; FastEncoder finds specials, long lines
    assert encode_flat(fast, lines) == encode_flat(FastEncoder(tok, memo=False), lines)
    clean = [x for x in lines if x == " ".join(x.split())]  # FastEncoder's input (tokenizers strips the others)
    assert len(clean) == 9 and encode_flat(fast, clean) == reference(tok, clean)
    # a line holding a line break: the memo refuses the chunk, the line path takes all of it
    with pytest.raises(ValueError, match="3 lines expected, 4 found"):
        fast.memo.encode("\n".join(["a", "b\nc", "d"]).encode(), 3, EOS)
    assert encode_flat(fast, ["a", "b\nc", "d"]) == encode_flat(FastEncoder(tok, memo=False), ["a", "b\nc", "d"])


def test_a_key_clash_is_left_to_the_line_path(tok):
    """numpy table: a word whose key matches an entry whose check differs is not given that entry's
    ids. (The C table compares the words' bytes.)"""
    fast = FastEncoder(tok)
    fast.memo = WordMemo(fast.spm)
    lines = ["word1 and more", "more text", "and word2"]
    assert encode_flat(fast, lines) == reference(tok, lines)
    memo = fast.memo
    data = b"and"
    key, _ = word_keys(np.frombuffer(data, dtype=np.uint8), np.array([0]), np.array([3]))
    slot, found = memo._lookup(key)
    assert found[0]
    memo.check[slot[0]] ^= np.uint64(1)  # as if another word had the same key
    _, _, bad = memo.encode("\n".join(lines).encode(), len(lines), EOS)
    assert bad.tolist() == [0, 2]
    assert encode_flat(fast, lines) == reference(tok, lines)


def test_word_keys_depend_on_the_word_alone():
    """Same word anywhere (line start, after other bytes, at the end): same key; words of <= 16 bytes
    that differ in any byte or in length: different (key, check, length)."""
    words = ["a", "ab", "abcdefgh", "abcdefghi", "abcdefghijklmnop", "abcdefghijklmnopq",
             "abcdefghijklmnopr", "abcdefghijklmnoq", "ünïcödé", "x" * 40, "x" * 41, "y" + "x" * 40]
    text = " ".join(words) + "\n" + " ".join(reversed(words))
    a = np.frombuffer(text.encode(), dtype=np.uint8)
    seps = np.flatnonzero((a == 32) | (a == 10))
    starts, ends = np.concatenate([[0], seps + 1]), np.concatenate([seps, [len(a)]])
    key, check = word_keys(a, starts, ends)
    n = len(words)
    assert key[:n].tolist() == key[n:][::-1].tolist() and check[:n].tolist() == check[n:][::-1].tolist()
    triples = {(k, c, e - s) for k, c, s, e in zip(key[:n].tolist(), check[:n].tolist(), starts[:n], ends[:n])}
    assert len(triples) == n


def test_no_memo_for_a_vocabulary_with_pieces_across_words(tok):
    """A piece holding '▁' past its first character could span two words: word by word would not be
    the line's Viterbi path, so that tokenizer is encoded line by line."""
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    i = next(k for k, (p, _) in enumerate(vocab) if p.startswith(METASPACE) and len(p) > 2)
    vocab[i][0] = "e" + vocab[i][0]
    other = Tokenizer.from_str(json.dumps(data))
    fast = FastEncoder(other)
    assert fast.engine == "sentencepiece" and fast.memo is None
    assert FastEncoder(tok).memo is not None


def test_the_c_table_contract_and_its_errors():
    """lookup -> the missing words in groups, pending; fill their ids; emit the chunk. Out of order or
    with ids that do not match, a ValueError, never a crash."""
    WordTable = pytest.importorskip("xlmkit.data._wordtable", reason="the C word table was not built").WordTable
    t = WordTable(10, 100, 200, 3)  # groups close at >= 3 bytes
    with pytest.raises(ValueError, match="emit: no lookup"):
        t.emit(EOS)
    assert t.lookup(b"a b\nc a", 2) == b"a b\nc"  # distinct, in order; "a b " is 4 bytes: a new group
    with pytest.raises(ValueError, match="not filled"):
        t.emit(EOS)
    i32, i64 = (lambda *x: np.array(x, dtype="<i4").tobytes()), (lambda *x: np.array(x, dtype="<i8").tobytes())
    with pytest.raises(ValueError, match="2 counts for 3 pending"):
        t.fill(i32(5, 6), i64(1, 1))
    with pytest.raises(ValueError, match="do not sum to the 3 ids given"):
        t.fill(i32(5, 6, 7), i64(1, 1, 2))
    t.fill(i32(5, 6, 7, 8), i64(1, 1, 2))
    flat, lengths, bad = t.emit(EOS)
    assert np.frombuffer(flat, "<i4").tolist() == [5, 6, EOS, 7, 8, 5, EOS]
    assert np.frombuffer(lengths, "<i8").tolist() == [3, 4] and bad == [] and len(t) == 3
    assert t.lookup(b"b  a", 1) == b""  # all known; the empty word makes the line bad
    flat, lengths, bad = t.emit(-1)
    assert flat == b"" and np.frombuffer(lengths, "<i8").tolist() == [0] and bad == [0]


def test_the_c_table_fills_from_sentencepiece_lists():
    """fill_groups: each group's ids (Python lists, as SentencePiece gives them) split at the pieces
    that start a word. A group whose pieces do not split into its words gives False and stores
    nothing (the caller then encodes word by word); malformed input is an error."""
    WordTable = pytest.importorskip("xlmkit.data._wordtable", reason="the C word table was not built").WordTable
    starts = bytes([0, 1, 0, 1])  # pieces 1 and 3 start a word
    t = WordTable(10, 100, 200, 3)
    assert t.lookup(b"a b\nc a", 2) == b"a b\nc"  # groups "a b" and "c"
    with pytest.raises(ValueError, match="1 groups for 2"):
        t.fill_groups([[1, 3]], starts)
    with pytest.raises(ValueError, match="out of range"):
        t.fill_groups([[1, 4], [3]], starts)
    with pytest.raises(TypeError, match="must be a list"):
        t.fill_groups([(1, 3), [3]], starts)
    assert t.fill_groups([[1, 2, 2], [3]], starts) is False  # "a b" gave one word start, not two
    assert t.fill_groups([[2, 1], [3]], starts) is False  # the group's first piece does not start a word
    assert t.fill_groups([[1, 3, 3], [3]], starts) is False  # three word starts for two words
    with pytest.raises(ValueError, match="not filled"):
        t.emit(EOS)  # nothing stored: still pending
    with pytest.raises(TypeError, match="ids must be int"):  # nothing that could run Python code mid-way
        t.fill_groups([[1, 2, 2, 3], [3, np.int64(0)]], starts)
    assert t.fill_groups([[1, 2, 2, 3], [3, 0]], starts) is True
    with pytest.raises(ValueError, match="2 groups for 0"):  # found by review: a second fill overwrote the first
        t.fill_groups([[1, 2, 2, 3], [3, 0]], starts)
    flat, lengths, bad = t.emit(EOS)
    assert np.frombuffer(flat, "<i4").tolist() == [1, 2, 2, 3, EOS, 3, 0, 1, 2, 2, EOS]
    assert np.frombuffer(lengths, "<i8").tolist() == [5, 6] and bad == []


def test_the_c_helpers_refuse_sizes_that_would_overflow():
    """Found by review under AddressSanitizer: counts that wrap around 2^64, a line count past what
    the data can hold, __init__ again between lookup and emit; each a ValueError now."""
    wt = pytest.importorskip("xlmkit.data._wordtable", reason="the C word table was not built")
    t = wt.WordTable(10, 100, 200, 1000)
    assert t.lookup(b"a b c", 1) == b"a b c"
    big = 2**63 - 1
    with pytest.raises(ValueError, match="do not sum to the 1 ids"):
        t.fill(np.array([7], "<i4").tobytes(), np.array([3, big, big], "<i8").tobytes())
    with pytest.raises(ValueError, match="ids must be int32 and counts int64"):
        t.fill(np.array([7], "<i4").tobytes() + b"\x01", np.array([1, 1, 1], "<i8").tobytes())
    t.__init__(10, 100, 200, 1000)
    with pytest.raises(ValueError, match="emit: no lookup"):
        t.emit(EOS)
    with pytest.raises(ValueError, match="eos must fit int32"):
        t.lookup(b"a", 1), t.fill(np.array([7], "<i4").tobytes(), np.array([1], "<i8").tobytes()), t.emit(2**31)
    with pytest.raises(ValueError, match="lines expected"):
        wt.hash_lines(b"a\nb\nc\nd", 2**61 + 1)
    assert len(np.frombuffer(wt.hash_lines(b"a\n\nb", 3), "<u8")) == 3
