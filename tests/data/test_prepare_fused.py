"""The fused clean + encode pass: its batch cleaning, block decoding and line scan give exactly what
the per-line functions give; the tokenizer sample is clean and reproducible."""

from __future__ import annotations

import random

import numpy as np
import pytest

from test_text import TRICKY
from xlmkit.core.config import PrepareConfig
from xlmkit.core.errors import DataError
from xlmkit.data.prepare import Source, _line_offsets, scan_source, tokenizer_sample
from xlmkit.data.text import clean_line, clean_lines, decode_lines, line_hash, line_hashes, read_lines

# every character clean_line treats specially, some it does not, and text around them
ODD = ["\x00", "\t", "\x0b", "\r", "\x1f", "\x7f", "\x85", "\x9a", "\xa0", "\u1680", "\u2002", "\u200b", "\u2028",
       "\u202f", "\u205f", "\u3000", "\ufeff", "\u00ad", "\u200c", "é", "e\u0301", "  ", " ", "ﬁ", "„", "€", "Σ", "İ",
       "ab", "x", "Ｆ"]


@pytest.mark.parametrize("lower,accents", [(False, False), (True, False), (False, True), (True, True)])
def test_clean_lines_is_clean_line_on_every_line(lower, accents):
    rng = random.Random(0)
    for trial in range(1500):
        lines = ["".join(rng.choice(ODD) for _ in range(rng.randint(0, 7))) for _ in range(rng.randint(0, 9))]
        lines += rng.sample([x.replace("\n", " ") for x in TRICKY], 2)
        want = [clean_line(x, lower, accents) for x in lines]
        assert clean_lines(lines, lower, accents) == want
        raw = "\n".join(lines).encode() + rng.choice([b"", b"\n"])
        if b"\r" not in raw:  # the bytes path's precondition: the lines are exactly the decoded bytes
            assert clean_lines(lines, lower, accents, raw) == want, lines


def test_clean_lines_on_real_text(shared_data):
    for path in sorted((shared_data / "mono").glob("*.txt"))[:2] + sorted((shared_data / "mono-extra").glob("*.txt")):
        raw = path.read_bytes()[:2_000_000]
        raw = raw[:raw.rfind(b"\n") + 1]
        lines = decode_lines(raw, path)
        want = [clean_line(x) for x in lines]
        assert clean_lines(lines) == want
        if b"\r" not in raw:
            assert clean_lines(lines, raw=raw) == want


def test_decode_lines_is_read_lines(tmp_path):
    data = b"one\r\ntwo\n\nthr\xc3\xa9e\r\r\nlast without newline"
    path = tmp_path / "x.txt"
    path.write_bytes(data)
    assert decode_lines(data, path) == list(read_lines(path))
    bad = b"ok\ncaf\xe9 latin-1\nok again\n"
    path.write_bytes(bad)
    assert decode_lines(bad, path, skip_bad_lines=True) == list(read_lines(path, skip_bad_lines=True)) == [
        "ok", None, "ok again"]
    with pytest.raises(DataError, match=r"x\.txt:12: invalid UTF-8 \(invalid continuation byte at byte 3\)"):
        decode_lines(bad, path, first_lineno=11)
    with pytest.raises(DataError, match=r"x\.txt:2: invalid UTF-8 \(invalid continuation byte at byte 3\)"):
        list(read_lines(path))


def test_line_hashes_are_line_hash():
    texts = ["a", "", "é ü", "x\ty"]
    assert line_hashes(texts).tolist() == [line_hash(t) for t in texts]


@pytest.mark.parametrize("newline_at_end", [True, False])
def test_line_offsets_every_k_lines_and_max_lines(tmp_path, newline_at_end):
    lines = [f"line {i} " + "é" * (i % 5) for i in range(23)]
    data = "\n".join(lines).encode() + (b"\n" if newline_at_end else b"")
    path = tmp_path / "f.txt"
    path.write_bytes(data)
    starts = [0] + [i + 1 for i, b in enumerate(data) if b == 10]
    for every in (1, 3, 5, 23, 100):
        n, offsets = _line_offsets(path, every, 0)
        assert n == 23
        assert offsets == [starts[k] for k in range(0, 23, every)] + [len(data)]
        for max_lines in (1, 7, 22, 23, 40):
            n, offsets = _line_offsets(path, every, max_lines)
            m = min(max_lines, 23)
            end = starts[m] if m < 23 else len(data)
            assert (n, offsets) == (m, [starts[k] for k in range(0, m, every)] + [end])
    path.write_bytes(b"")
    assert _line_offsets(path, 3, 0) == (0, [0])


def test_tokenizer_sample_is_clean_filtered_and_seeded(tmp_path):
    lines = [f"  Line\u00a0{i}\tﬁne " if i % 3 else "x" for i in range(3000)]  # every third too short
    (tmp_path / "en.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = PrepareConfig(tokenizer_sample_sentences=500, min_chars=3)
    work = tmp_path / "work"
    c = scan_source(Source("mono", "en", (tmp_path / "en.txt",)), cfg, work)
    a, sizes = tokenizer_sample([c], cfg, np.random.default_rng(0))
    a = list(a)
    b = list(tokenizer_sample([c], cfg, np.random.default_rng(0))[0])
    assert a == b and sizes == {"en": 500}
    assert 250 < len(a) < 400  # the short lines drawn are left out
    assert all(clean_line(x) == x and x.startswith("Line ") and "fine" in x for x in a)


def test_dedup_is_on_the_clean_text_whatever_the_bytes(tmp_path):
    """Lines equal once cleaned (CRLF, spaces, NFKC) are duplicates, across chunks and workers."""
    import dataclasses

    from xlmkit.core.config import load_config
    from xlmkit.data.format import PreparedData
    from xlmkit.data.prepare import prepare_data

    base = [f"sentence number {i} is here" for i in range(300)]
    (tmp_path / "a.txt").write_bytes("".join(x + "\n" for x in base).encode())
    (tmp_path / "b.txt").write_bytes("".join(x + "\r\n" for x in base[::2]).encode()
                                     + "".join(" " + x.replace(" ", "\u00a0") + "\n" for x in base[1::2]).encode()
                                     + b"a new line here\n")
    for workers in (1, 2):
        cfg = dataclasses.replace(load_config("tiny").prepare, vocab_size=60, workers=workers, chunk_lines=37)
        out = prepare_data(cfg, tmp_path / f"d{workers}", mono={"en": [tmp_path / "a.txt", tmp_path / "b.txt"]},
                           progress=False)
        a, b = PreparedData(out).manifest["sources"]
        assert (a["kept"], b["kept"], b["dropped"]["duplicate"]) == (300, 1, 300)


def test_shard_form_of_the_encoder_is_tokenizers_ids_then_eos(shared_data):
    """encode_flat (SentencePiece appending </s> itself, lists packed into one array) gives the
    exported tokenizer.json's ids, each sentence followed by </s>, on real text of 7 languages."""
    from tokenizers import Tokenizer

    from xlmkit.data.tokenizer import FastEncoder, train_tokenizer

    files = sorted((shared_data / "mono").glob("*.txt")) + sorted((shared_data / "mono-extra").glob("*.txt"))
    lines = [clean_line(x) for p in files for i, x in enumerate(p.read_text(encoding="utf-8").splitlines()) if i % 8 == 0]
    lines = [x for x in lines if x] + ["a <mask> b", "", "x" * 2500]
    tok = train_tokenizer(lines[::4], ["de", "en", "fr", "it", "nl", "ru", "zh"], "unigram", 3000,
                          character_coverage=0.9995)
    fast = FastEncoder(tok)
    flat, lengths = fast.encode_flat(lines, 2, "uint16")
    want = [e.ids + [2] for e in Tokenizer.from_str(tok.to_str()).encode_batch(lines, add_special_tokens=False)]
    assert lengths.tolist() == [len(x) for x in want]
    assert flat.tolist() == [i for x in want for i in x] and flat.dtype == np.uint16
