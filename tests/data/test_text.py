"""Text cleaning: normalisation, control characters, whitespace, idempotence, strict UTF-8 reading."""

from __future__ import annotations

import numpy as np
import pytest

from xlmkit.core.errors import DataError
from xlmkit.data.text import (HashSet64, clean_line, count_lines, filter_reason, line_hash, line_hashes, read_lines,
                              remove_accents)

TRICKY = [
    "  Ｆｕｌｌ－ｗｉｄｔｈ  ﬁne   ligatures\u00a0and no-break spaces ",
    "tab\tand\nnewline\r\nand\x0bvertical\x1ffield",
    "nul\x00 bell\x07 del\x7f c1\x85nel\x9a bom\ufeff zwsp\u200b",
    "Persian zwnj: می\u200cخواهم, emoji zwj: 👩\u200d💻",
    "Ångström CAFÉ İstanbul Straße ΣΊΣΥΦΟΣ",
    "e\u0301 (decomposed é) ½ ² ㎏ ℃",
    "",
    "   ",
]


def test_nfkc_controls_and_whitespace():
    assert clean_line("  Ｆｕｌｌ  ﬁne\u00a0x ") == "Full fine x"
    assert clean_line("a\tb\nc\r\nd\x0be\x1ff") == "a b c d e f"  # whitespace controls become one space
    assert clean_line("a\x00b\x07c\x7fd\x9ae\ufefff\u200bg") == "abcdefg"  # the others disappear
    assert clean_line("a \x00 b") == "a b"  # removal happens before whitespace is collapsed
    assert clean_line("e\u0301") == "\u00e9"  # NFKC composes
    assert clean_line("می\u200cخواهم") == "می\u200cخواهم"  # ZWNJ carries meaning: kept


def test_lowercase_and_accents_are_optional():
    assert clean_line("Ça CAFÉ") == "Ça CAFÉ"
    assert clean_line("Ça CAFÉ", lowercase=True) == "ça café"
    assert clean_line("Ça CAFÉ", strip_accents=True) == "Ca CAFE"
    assert clean_line("Ça CAFÉ", lowercase=True, strip_accents=True) == "ca cafe"
    assert remove_accents("Ångström naïve") == "Angstrom naive"


@pytest.mark.parametrize("lower,accents", [(False, False), (True, False), (False, True), (True, True)])
def test_cleaning_is_idempotent(lower, accents):
    for text in TRICKY:
        once = clean_line(text, lower, accents)
        assert clean_line(once, lower, accents) == once


def test_length_filter():
    assert filter_reason("ab", 3, 5) == "too_short"
    assert filter_reason("abc", 3, 5) is None
    assert filter_reason("abcdef", 3, 5) == "too_long"


def test_line_hash_is_stable_64_bit_and_never_zero():
    assert line_hash("hello") == line_hash("hello")
    assert line_hash("hello") != line_hash("hello ")
    assert 0 < line_hash("x") < 2**64 and 0 < line_hash("") < 2**64
    # the same in a fresh process with another PYTHONHASHSEED: workers and reruns must agree
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "from xlmkit.data.text import line_hash; print(line_hash('hello'))"],
                         env={**os.environ, "PYTHONHASHSEED": "123"}, capture_output=True, text=True, check=True)
    assert int(out.stdout) == line_hash("hello")


def test_line_hashes_without_the_compiled_helper_are_blake2b(monkeypatch):
    """The fallback where _wordtable was not built, and for texts holding a line break."""
    from hashlib import blake2b

    import xlmkit.data.text as T

    def b2(x: bytes) -> int:
        return int.from_bytes(blake2b(x, digest_size=8).digest(), "little")

    assert T.line_hashes(["a\nb", "c"]).tolist() == [b2(b"a\nb"), b2(b"c")]
    monkeypatch.setattr(T, "_hash_lines", None)
    assert T.line_hash("hello") == b2(b"hello")
    assert T.line_hashes([b"x", b"y z"]).tolist() == [b2(b"x"), b2(b"y z")]


def test_line_hashes_tell_apart_a_few_hundred_thousand_near_identical_lines():
    lines = [f"{i} " + "ab" * (i % 13) + f" {i % 7}" for i in range(300_000)]
    lines += [x[::-1] for x in lines[:1000]] + [x + " " for x in lines[:1000]]
    assert len(set(line_hashes(lines).tolist())) == len(set(lines))


@pytest.mark.parametrize("compiled", [True, False], ids=["C", "numpy"])
def test_hash_set_matches_a_python_set_across_batches_and_growth(compiled, monkeypatch):
    import xlmkit.data.text as text

    if compiled and text._hashset_add is None:
        pytest.skip("xlmkit/data/_wordtable.c not built")
    if not compiled:
        monkeypatch.setattr(text, "_hashset_add", None)
    rng = np.random.default_rng(0)
    hs, reference = HashSet64(capacity=16), set()
    for _ in range(40):
        batch = rng.integers(1, 3000, size=257).astype(np.uint64)  # many repeats, within and across batches
        expected = []
        for x in batch.tolist():
            expected.append(x not in reference)
            reference.add(x)
        assert hs.add(batch).tolist() == expected
    assert len(hs) == len(reference) and len(hs.table) >= 2 * len(hs)
    assert hs.add(np.zeros(0, dtype=np.uint64)).tolist() == []
    assert hs.add(np.arange(1, 41, dtype=np.uint64)[::2]).tolist() == [x > 3000 for x in range(1, 41, 2)]


def test_compiled_hash_set_insert_refuses_what_would_break_it():
    hashset_add = pytest.importorskip("xlmkit.data._wordtable").hashset_add
    table = np.zeros(8, dtype=np.uint64)
    with pytest.raises(ValueError, match="more than half full"):
        hashset_add(table, 0, np.arange(1, 6, dtype=np.uint64))
    with pytest.raises(ValueError, match="0 is not a valid hash"):
        hashset_add(table, 0, np.array([5, 0], dtype=np.uint64))
    assert not table.any()  # refused before any insert
    with pytest.raises(ValueError, match="power-of-two"):
        hashset_add(np.zeros(6, dtype=np.uint64), 0, np.array([1], dtype=np.uint64))
    mask, added = hashset_add(table, 0, np.array([9, 1, 9], dtype=np.uint64))  # 9 and 1 share slot 1
    assert (list(mask), added) == ([1, 1, 0], 2) and sorted(table[table != 0].tolist()) == [1, 9]


def test_read_lines_strips_endings_and_stops_at_max(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"one\r\ntwo\nthree")
    assert list(read_lines(p)) == ["one", "two", "three"]
    assert list(read_lines(p, max_lines=2)) == ["one", "two"]
    assert count_lines(p) == 3


def test_invalid_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"ok\nstill ok\nbroken \xff\xfe here\nfine\n")
    with pytest.raises(DataError, match=r"bad\.txt:3: invalid UTF-8"):
        list(read_lines(p))
    assert list(read_lines(p, skip_bad_lines=True)) == ["ok", "still ok", None, "fine"]


def test_compiled_cleaning_scan_matches_the_numpy_one():
    """clean_lines' one-pass C scan (odd characters, spaces to collapse) against the numpy passes it
    replaces, on random text dense in what it looks for: whitespace and controls of every width."""
    import random

    import xlmkit.data.text as text

    if text._odd_lines_c is None:
        pytest.skip("xlmkit/data/_wordtable.c not built")
    rng = random.Random(1)
    alphabet = ["a", "b", " ", " ", "\n", "é", "中", "\xa0", "\x01", "\u2009", "\u3000", "\ufeff", "\u200b",
                "\x85", "°", "\x7f", "\u200c", "\x9f", "\U0001f600"]
    for _ in range(5000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))).encode()
        found, spaces = text._odd_lines_c(raw, text._ODD_TUPLE)
        arr = np.frombuffer(raw, dtype=np.uint8)
        space, brk = arr == 32, arr == 10
        want_spaces = bool(len(arr)) and bool(space[0] or space[-1] or (space[1:] & (space[:-1] | brk[:-1])).any()
                                              or (space[:-1] & brk[1:]).any())
        assert (np.frombuffer(found, np.int64).tolist(), spaces) == (text._odd_lines(raw).tolist(), want_spaces), raw
    with pytest.raises(ValueError, match="1 to 4 bytes"):
        text._odd_lines_c(b"a", (b"",))
