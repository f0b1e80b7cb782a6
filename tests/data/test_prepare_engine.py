"""The encoding engine, reproducible builds, character coverage, several corpora per language, ISO codes.

Shards are encoded by SentencePiece from the exported tokenizer.json (xlmkit.data.tokenizer.FastEncoder);
`tokenizers` loading that same file must give exactly the shard ids.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from xlmkit.cli.main import main
from xlmkit.core.config import load_config
from xlmkit.data.format import SPLITS, PreparedData
from xlmkit.core.errors import DataError
from xlmkit.data.prepare import prepare_data
from xlmkit.data.text import clean_line
from xlmkit.data.tokenizer import FastEncoder, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def tiny(**changes):
    return dataclasses.replace(load_config("tiny").prepare, **changes)


def clean_lines(path: Path, every: int = 1, limit: int | None = None) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [clean_line(x) for i, x in enumerate(f) if i % every == 0]
    return [x for x in lines if x][:limit]


def real_files(shared_data: Path) -> list[Path]:
    return (sorted((shared_data / "mono").glob("*.txt")) + sorted((shared_data / "mono-extra").glob("*.txt"))
            + sorted((shared_data / "langid").glob("*.txt")))


def assert_parity(tok, lines: list[str]) -> None:
    """SentencePiece (the shards' encoder) and `tokenizers` on the same tokenizer.json agree on every line."""
    fast = FastEncoder(tok)
    assert fast.engine == "sentencepiece"
    reference = Tokenizer.from_str(tok.to_str())  # what a user of the exported file gets
    got = fast.encode(lines)
    want = [e.ids for e in reference.encode_batch(lines, add_special_tokens=False)]
    bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert not bad, f"{len(bad)} of {len(lines)} lines differ, e.g. {lines[bad[0]]!r}"
    # the shards' path: word by word through the memo (the C table where it is built, and the numpy
    # one), in chunks as the pipeline's workers see them
    assert fast.memo is not None
    from xlmkit.data.wordmemo import WordMemo

    for memo in {type(fast.memo), WordMemo}:
        fast.memo = memo(fast.spm)
        for start in range(0, len(lines), 5000):
            chunk = lines[start:start + 5000]
            # every other chunk given as the bytes the workers read, as they give it
            data = "\n".join(chunk).encode() if start // 5000 % 2 else None
            flat, lengths = fast.encode_flat(chunk, 2, "int32", data)
            assert lengths.tolist() == [len(x) + 1 for x in want[start:start + 5000]], memo.__name__
            assert flat.tolist() == [i for x in want[start:start + 5000] for i in [*x, 2]], memo.__name__


def _sample(shared_data: Path, n_per_file: int) -> list[str]:
    return [x for p in real_files(shared_data)[:7] for x in clean_lines(p, limit=n_per_file)]


@pytest.mark.parametrize("byte_fallback", [False, True])
def test_exported_tokenizer_gives_the_encoders_ids_on_real_text(shared_data, byte_fallback):
    """Every 16th sentence of mono/, mono-extra/ and langid/ (75 languages, most of them unseen by the
    tokenizer: <unk> or byte pieces); the slow test below takes every sentence."""
    langs = ["de", "en", "fr", "it", "nl", "ru", "zh"]
    tok = train_tokenizer(_sample(shared_data, 400), langs, "unigram", 2000, character_coverage=0.9995,
                          byte_fallback=byte_fallback)
    lines = [x for p in real_files(shared_data) for x in clean_lines(p, every=16)]
    lines += ["a <mask> b", "x</s>y", "<lang:en> z", "<0x41> literal", "<s>"]  # special-token text: tokenizers' rules
    assert_parity(tok, lines)


@pytest.mark.slow
def test_exported_tokenizer_parity_every_sentence(shared_data):
    langs = ["de", "en", "fr", "it", "nl", "ru", "zh"]
    for byte_fallback, vocab in ((False, 8000), (True, 4000)):
        tok = train_tokenizer(_sample(shared_data, 3000), langs, "unigram", vocab, character_coverage=0.9995,
                              byte_fallback=byte_fallback)
        assert_parity(tok, [x for p in real_files(shared_data) for x in clean_lines(p)])


def test_shards_are_what_the_exported_tokenizer_gives(shared_data, tmp_path):
    """Through the whole pipeline: every shard sentence equals tokenizer.json's encoding of its clean line."""
    extra = shared_data / "mono-extra"
    cfg = tiny(max_lines=1500, vocab_size=3000, workers=2, chunk_lines=500)
    out = prepare_data(cfg, tmp_path / "d", mono={"zh": extra / "zho.txt", "ru": extra / "rus.txt",
                                                  "fr": shared_data / "mono" / "fra.txt"}, progress=False)
    data = PreparedData(out)
    assert data.manifest["tokenizer"]["encoded_with"].startswith("sentencepiece")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for lang in ("zh", "ru", "fr"):
        shards = [data.mono(lang, s) for s in SPLITS]
        ids = [shard.sentence(i).tolist() for shard in shards for i in range(len(shard))]
        texts = [tok.decode(x) for x in ids]
        assert len(ids) == data.manifest["sources"][[s["name"] for s in data.manifest["sources"]].index(lang)]["kept"]
        # decoded text re-encodes to the same ids wherever the sentence has no <unk>
        for x, text in zip(ids, texts):
            if data.specials.unk not in x:
                assert tok.encode(text, add_special_tokens=False).ids == x


# ----------------------------------------------------------------------------------------------
# Reproducibility


def _fresh_prepare(out: Path, workers: int, inputs: list[str], *sets: str) -> None:
    cmd = [sys.executable, "-m", "xlmkit", "prepare", "--config", "tiny", "--quiet", "--out", str(out),
           "--set", f"prepare.workers={workers}", "--set", "prepare.chunk_lines=300", *sum((["--set", s] for s in sets), []),
           *inputs]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)


def _output_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != "manifest.json"}


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_two_fresh_runs_workers_1_and_2_are_byte_identical(synthetic_corpus, tmp_path, kind):
    inputs = ["--data-dir", str(synthetic_corpus)]
    sets = [f"prepare.tokenizer={kind}", "prepare.vocab_size=100", "prepare.max_lines=600"]
    _fresh_prepare(tmp_path / "a", 1, inputs, *sets)
    _fresh_prepare(tmp_path / "b", 2, inputs, *sets)
    a, b = _output_bytes(tmp_path / "a"), _output_bytes(tmp_path / "b")
    assert "tokenizer.json" in a and any(k.endswith(".ids.bin") for k in a)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    ma, mb = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ab")
    assert ma["mono"] == mb["mono"] and ma["para"] == mb["para"]


def test_real_text_build_is_byte_identical(shared_data, tmp_path):
    """Real text, the SentencePiece trainer (threads fixed) and encoder, 1 vs 2 workers."""
    extra = shared_data / "mono-extra"
    inputs = ["--mono", f"zh={extra / 'zho.txt'}", "--mono", f"ru={extra / 'rus.txt'}",
              "--data-dir", str(shared_data / "parallel")]
    sets = ["prepare.vocab_size=2000", "prepare.max_lines=1500", "prepare.tokenizer_sample_sentences=4000"]
    _fresh_prepare(tmp_path / "a", 1, inputs, *sets)
    _fresh_prepare(tmp_path / "b", 2, inputs, *sets)
    a, b = _output_bytes(tmp_path / "a"), _output_bytes(tmp_path / "b")
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []


# ----------------------------------------------------------------------------------------------
# Character coverage and byte fallback


def test_chinese_with_a_small_vocabulary(shared_data, tmp_path):
    """~4000 distinct Han characters, vocabularies of 1000 and 2000: coverage is lowered to fit, the
    rest is <unk>, or bytes with byte_fallback (then every sentence decodes back exactly)."""
    mono = {"zh": shared_data / "mono-extra" / "zho.txt", "en": shared_data / "mono" / "eng.txt"}
    for vocab, byte_fallback in ((2000, False), (1000, True)):
        cfg = tiny(max_lines=3000, vocab_size=vocab, byte_fallback=byte_fallback)
        out = prepare_data(cfg, tmp_path / f"d{vocab}", mono=mono, progress=False)
        data = PreparedData(out)
        assert data.vocab_size == vocab == data.tokenizer.get_vocab_size()
        zh = data.mono("zh", "train")
        unk = data.manifest["mono"]["zh"]["train"]["unk"]
        if byte_fallback:
            assert unk == 0 and data.tokenizer.token_to_id("<0xE4>") is not None
            want = clean_lines(mono["zh"], limit=3000)
            decoded = {data.tokenizer.decode(zh.sentence(i).tolist()) for i in range(len(zh))}
            assert decoded <= set(want)
        else:
            assert 0 < unk < 0.1 * zh.n_tokens  # ~6%: 1500 characters of ~4000 fit


def test_vocab_too_small_for_the_specials_and_bytes(tmp_path):
    (tmp_path / "en.txt").write_text("".join(f"line {i} here\n" for i in range(100)))
    with pytest.raises(DataError, match=r"prepare\.vocab_size=200 leaves no room.*256 byte pieces"):
        prepare_data(tiny(vocab_size=200, byte_fallback=True, workers=1), tmp_path / "o",
                     mono={"en": tmp_path / "en.txt"}, progress=False)


# ----------------------------------------------------------------------------------------------
# Several corpora per language and pair


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return path


def test_several_corpora_per_language_and_pair(synthetic_corpus, tmp_path, capsys):
    en = (synthetic_corpus / "en.txt").read_text(encoding="utf-8").splitlines()
    a = _write(tmp_path / "news.en.txt", en[:900])
    b = _write(tmp_path / "web.en.txt", en[600:1500])  # 300 lines shared with a: dropped from b
    pen = (synthetic_corpus / "en-fr.en").read_text(encoding="utf-8").splitlines()
    pfr = (synthetic_corpus / "en-fr.fr").read_text(encoding="utf-8").splitlines()
    p1 = (_write(tmp_path / "one.en", pen[:500]), _write(tmp_path / "one.fr", pfr[:500]))
    p2 = (_write(tmp_path / "two.fr", pfr[400:]), _write(tmp_path / "two.en", pen[400:]))  # given as fr-en
    args = ["prepare", "--out", str(tmp_path / "d"), "--config", "tiny", "--set", "prepare.vocab_size=100", "--quiet",
            "--mono", f"en={a}", "--mono", f"eng={b}", "--mono", f"fr={synthetic_corpus / 'fr.txt'}",
            "--para", f"en-fr={p1[0]},{p1[1]}", "--para", f"fr-en={p2[0]},{p2[1]}"]
    assert main(args) == 0
    data = PreparedData(tmp_path / "d")
    m = data.manifest
    assert data.pairs == ["en-fr"] and data.languages == ["en", "fr"]
    srcs = [(s["kind"], s["name"], Path(s["files"][0]["path"]).name) for s in m["sources"]]
    assert srcs == [("mono", "en", "news.en.txt"), ("mono", "en", "web.en.txt"), ("mono", "fr", "fr.txt"),
                    ("para", "en-fr", "one.en"), ("para", "en-fr", "two.en")]  # the fr-en corpus turned round
    dedup_a = len(dict.fromkeys(clean_line(x) for x in en[:900]))
    by_name = {Path(s["files"][0]["path"]).name: s for s in m["sources"]}
    assert by_name["news.en.txt"]["kept"] == dedup_a
    assert by_name["web.en.txt"]["kept"] == len(dict.fromkeys(clean_line(x) for x in en)) - dedup_a
    for name in ("mono", "para"):
        for key, entry in m[name].items():
            corpora = [s for s in m["sources"] if s["kind"] == name and s["name"] == key]
            for split in SPLITS:
                assert entry[split]["sentences"] == sum(s["sentences"][split] for s in corpora)
            assert sum(s["kept"] for s in corpora) == sum(entry[s]["sentences"] for s in SPLITS)
    # the shards hold a's lines then b's new ones, still line-aligned for the pair
    tok = data.tokenizer
    train_en = {tok.decode(data.mono("en", "train").sentence(i).tolist()) for i in range(len(data.mono("en", "train")))}
    assert train_en <= {clean_line(x) for x in en}
    en_side, fr_side = data.para("en-fr", "train")
    pairs = set(zip(pen, pfr))
    assert all((tok.decode(en_side.sentence(i).tolist()), tok.decode(fr_side.sentence(i).tolist())) in pairs
               for i in range(len(en_side)))


def test_several_data_dirs_and_the_same_text_twice(synthetic_corpus, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    _write(other / "eng.txt", [f"another english line {i}" for i in range(300)])
    out = prepare_data(tiny(vocab_size=100, workers=1, max_lines=400), tmp_path / "d",
                       data_dir=[synthetic_corpus, other], progress=False)
    names = [(s["name"], Path(s["files"][0]["path"]).name) for s in PreparedData(out).manifest["sources"]]
    assert ("en", "en.txt") in names and ("en", "eng.txt") in names
    with pytest.raises(DataError, match=r"duplicate language 'en': .*en\.txt and en=.*en\.txt are the same text"):
        prepare_data(tiny(vocab_size=100, workers=1), tmp_path / "e", data_dir=synthetic_corpus,
                     mono={"en": synthetic_corpus / "en.txt"}, progress=False)


def test_all_shared_corpora_together(shared_data, tmp_path):
    """The issue's command: both data dirs and the extra mono text, every corpus of every pair used."""
    extra = shared_data / "mono-extra"
    cfg = tiny(max_lines=400, vocab_size=4000, tokenizer_sample_sentences=8000)
    out = prepare_data(cfg, tmp_path / "d", data_dir=[shared_data, shared_data / "parallel-extra"],
                       mono={"ru": extra / "rus.txt", "zh": extra / "zho.txt"}, progress=False)
    data = PreparedData(out)
    assert data.mono_languages == ["de", "en", "fr", "it", "nl", "ru", "zh"]
    assert data.pairs == ["en-ar", "en-cs", "en-de", "en-es", "en-fr", "en-ru", "en-zh"]
    corpora = [s["name"] for s in data.manifest["sources"] if s["kind"] == "para"]
    assert corpora.count("en-zh") == 3 and corpora.count("en-fr") == 2 and corpora.count("en-ru") == 2


# ----------------------------------------------------------------------------------------------
# Language codes


def test_unknown_iso_code_is_an_error_with_an_escape_hatch(tmp_path, capsys):
    f = _write(tmp_path / "x.txt", [f"some text line {i}" for i in range(200)])
    for code in ("zz", "fe"):
        assert main(["prepare", "--out", str(tmp_path / "d"), "--mono", f"{code}={f}", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"xlmkit prepare: error: unknown language code '{code}' for ") and "x.txt" in err
        assert f"prepare.extra_langs={code}" in err and err.count("\n") == 1
    assert main(["prepare", "--out", str(tmp_path / "d"), "--mono", f"zz={f}", "--quiet", "--set",
                 "prepare.vocab_size=40", "--set", "prepare.extra_langs=zz"]) == 0
    assert PreparedData(tmp_path / "d").languages == ["zz"]
    for code in ("qaa", "yue", "cmn", "zh-Hans", "ber"):  # local use, 639-3, subtag, 639-5: accepted
        from xlmkit.core.langs import check_lang

        check_lang(code)


# ----------------------------------------------------------------------------------------------
# Progress output


def test_progress_output_has_no_empty_bars_or_blank_lines(synthetic_corpus, tmp_path, capsys):
    prepare_data(tiny(vocab_size=100, workers=2, max_lines=300), tmp_path / "d", data_dir=synthetic_corpus,
                 progress=True)
    err = capsys.readouterr().err
    lines = err.split("\n")[:-1]
    assert lines and all(line.strip() for line in lines), err
    assert "\r" not in err and " 0 lines" not in err
    assert "encoding with sentencepiece" in err
    assert any("mono en (en.txt): 300 lines kept of 300" in line for line in lines)


def test_encode_lines_matches_tokenizers_on_odd_input(tmp_path):
    from xlmkit.data.prepare import encode_lines

    tok = train_tokenizer([f"word{i % 37} and more text {i}" for i in range(3000)], ["en"], "unigram", 120)
    lines = ["word1 and", "", "ünknown ☃ chars", "a <mask> b", "word2 and more " * 200]  # the last: > 2000 chars
    flat, lengths = encode_lines(tok, lines, 2, "uint16")
    want = [e.ids + [2] for e in tok.encode_batch(lines, add_special_tokens=False)]
    assert lengths.tolist() == [len(x) for x in want]
    assert flat.tolist() == [i for x in want for i in x]
    assert np.dtype(flat.dtype) == np.uint16


def test_only_tokenizers_on_xlmkits_score_grid_use_sentencepiece():
    """A Unigram tokenizer.json from elsewhere (scores off the 2^-7 grid: float32 sums would round
    otherwise than tokenizers' float64) and BPE are encoded by tokenizers itself."""
    tok = train_tokenizer([f"word{i % 37} and more text {i}" for i in range(3000)], ["en"], "unigram", 120)
    assert FastEncoder(tok).engine == "sentencepiece"
    data = json.loads(tok.to_str())
    data["model"]["vocab"] = [[p, sc - 0.1 if sc < 0 else sc] for p, sc in data["model"]["vocab"]]
    assert FastEncoder(Tokenizer.from_str(json.dumps(data))).engine == "tokenizers"
    bpe = train_tokenizer([f"word{i % 37} and more text {i}" for i in range(3000)], ["en"], "bpe", 120)
    assert FastEncoder(bpe).engine == "tokenizers"
