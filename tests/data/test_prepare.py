"""`xlmkit prepare`: the prepared directory reads back, counts add up, decoding gives the clean text."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from xlmkit.cli.main import main
from xlmkit.core.config import load_config
from xlmkit.data.format import SPLITS, PreparedData
from xlmkit.data.prepare import discover_inputs, prepare_data, split_indices
from xlmkit.data.text import clean_line

# The synthetic grammar has ~150 distinct words: far fewer subwords than tiny's 1000 (see
# test_prepare_errors for what happens then), so synthetic tests ask for a vocabulary it can fill.
SYNTHETIC_VOCAB = 120


def tiny(**changes):
    return dataclasses.replace(load_config("tiny").prepare, **changes)


@pytest.fixture(scope="module")
def prepared(synthetic_corpus, tmp_path_factory):
    cfg = tiny(vocab_size=SYNTHETIC_VOCAB, chunk_lines=400, workers=1)
    out = prepare_data(cfg, tmp_path_factory.mktemp("prep") / "data", data_dir=synthetic_corpus, progress=False)
    return cfg, out


def expected_lines(cfg, paths):
    """Reference cleaning: clean, filter by length, exact-text dedup (on the pair for parallel data)."""
    sides = [Path(p).read_text(encoding="utf-8").splitlines() for p in paths]
    if cfg.max_lines:
        sides = [s[: cfg.max_lines] for s in sides]
    kept, seen = [], set()
    for row in zip(*sides):
        clean = tuple(clean_line(x, cfg.lowercase, cfg.strip_accents) for x in row)
        if not all(cfg.min_chars <= len(x) <= cfg.max_chars for x in clean):
            continue
        if cfg.dedup and clean in seen:
            continue
        seen.add(clean)
        kept.append(clean)
    return kept, len(sides[0])


def split_of(kept, cfg, name):
    valid, test = split_indices(len(kept), cfg, name)
    where = {int(i): "valid" for i in valid} | {int(i): "test" for i in test}
    out = {s: [] for s in SPLITS}
    for i, row in enumerate(kept):
        out[where.get(i, "train")].append(row)
    return out


def decode_all(tok, shard):
    return [tok.decode(shard.sentence(i).tolist()) for i in range(len(shard))]


def test_manifest_contract(prepared):
    cfg, out = prepared
    data = PreparedData(out)
    assert data.languages == ["de", "en", "fr"]
    assert data.pairs == ["en-de", "en-fr"]
    assert data.lang2id == {"de": 0, "en": 1, "fr": 2}
    assert data.vocab_size == SYNTHETIC_VOCAB == data.tokenizer.get_vocab_size()
    assert data.dtype == "uint16"
    assert data.specials.all == (0, 1, 2, 3, 4)
    assert data.lang_token_ids == {"de": 5, "en": 6, "fr": 7}
    for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<lang:de>", "<lang:en>", "<lang:fr>"]):
        assert data.tokenizer.token_to_id(token) == i
    assert data.manifest["config"]["vocab_size"] == SYNTHETIC_VOCAB
    assert all(len(f["sha256"]) == 64 for s in data.manifest["sources"] for f in s["files"])
    assert not list(out.parent.glob("*.tmp-*")) and not (out / "work").exists()


def test_counts_match_inputs_and_shards(prepared):
    cfg, out = prepared
    data = PreparedData(out)
    m = data.manifest
    for src in m["sources"]:
        entry = m[src["kind"]][src["name"]]
        kept = sum(entry[s]["sentences"] for s in SPLITS)
        assert kept == src["kept"]
        assert kept + src["dropped_total"] == src["lines_read"] == 1500 if src["kind"] == "mono" else 800
    for lang in data.mono_languages:
        for split in SPLITS:
            shard = data.mono(lang, split)
            e = m["mono"][lang][split]
            assert (len(shard), shard.n_tokens) == (e["sentences"], e["tokens"])
            assert int((np.asarray(shard.ids) == data.specials.unk).sum()) == e["unk"]
            ends = np.asarray(shard.offsets[1:]) - 1
            assert (np.asarray(shard.ids)[ends] == data.specials.eos).all()  # every sentence ends in </s>
    assert m["mono"]["en"]["valid"]["sentences"] == min(cfg.valid_sentences, m["sources"][1]["kept"] // 10)


def test_decoding_shards_gives_back_the_clean_text(prepared, synthetic_corpus):
    cfg, out = prepared
    data = PreparedData(out)
    tok = data.tokenizer
    for lang in ("en", "de"):
        kept, _ = expected_lines(cfg, [synthetic_corpus / f"{lang}.txt"])
        want = split_of([k[0] for k in kept], cfg, lang)
        for split in SPLITS:
            assert decode_all(tok, data.mono(lang, split)) == want[split]
    kept, _ = expected_lines(cfg, [synthetic_corpus / "en-fr.en", synthetic_corpus / "en-fr.fr"])
    want = split_of(kept, cfg, "en-fr")
    for split in SPLITS:
        en, fr = data.para("en-fr", split)
        assert list(zip(decode_all(tok, en), decode_all(tok, fr))) == want[split]  # still line-aligned


def test_shards_do_not_depend_on_workers_or_chunks(prepared, synthetic_corpus, tmp_path):
    """Encoding with 2 worker processes and odd chunks writes the same bytes as in-process encoding.

    (Compared with one fixed tokenizer: Hugging Face's trainers are not bit-reproducible run to run.)
    """
    from xlmkit.data.prepare import _clean_all, encode_sources, resolve_sources

    cfg, out = prepared
    tok = PreparedData(out).tokenizer
    for name, workers, chunk in (("a", 1, 10_000), ("b", 2, 97)):
        run_cfg = dataclasses.replace(cfg, workers=workers, chunk_lines=chunk)
        cleaned = _clean_all(resolve_sources(data_dir=synthetic_corpus), run_cfg, tmp_path / f"work{name}", False)
        encode_sources(cleaned, tok, tmp_path / name, run_cfg, "uint16")
    files = sorted(p.relative_to(out) for p in out.rglob("*.bin"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.bin"))
    for rel in files:
        assert (out / rel).read_bytes() == (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_rerun_is_up_to_date_and_settings_change_redoes(synthetic_corpus, tmp_path, capsys):
    cfg = tiny(vocab_size=SYNTHETIC_VOCAB, workers=1)
    out = prepare_data(cfg, tmp_path / "d", data_dir=synthetic_corpus, progress=False)
    before = (out / "manifest.json").stat().st_mtime_ns
    capsys.readouterr()
    prepare_data(cfg, out, data_dir=synthetic_corpus, progress=True)
    assert "up to date" in capsys.readouterr().err
    assert (out / "manifest.json").stat().st_mtime_ns == before
    prepare_data(dataclasses.replace(cfg, workers=2), out, data_dir=synthetic_corpus, progress=False)
    assert (out / "manifest.json").stat().st_mtime_ns == before  # speed settings are not part of the stamp
    prepare_data(dataclasses.replace(cfg, lowercase=True), out, data_dir=synthetic_corpus, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["lowercase"] is True
    assert not list(tmp_path.glob("d.*"))  # no tmp or old dirs left beside it


def test_failed_run_keeps_previous_output_and_leaves_no_partial_dir(synthetic_corpus, tmp_path):
    from xlmkit.core.errors import DataError

    cfg = tiny(vocab_size=SYNTHETIC_VOCAB, workers=1)
    out = prepare_data(cfg, tmp_path / "d", data_dir=synthetic_corpus, progress=False)
    manifest = (out / "manifest.json").read_text()
    with pytest.raises(DataError):
        prepare_data(dataclasses.replace(cfg, vocab_size=5000), out, data_dir=synthetic_corpus, progress=False)
    assert (out / "manifest.json").read_text() == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_a_killed_runs_leftover_is_removed_by_the_next_run(synthetic_corpus, tmp_path):
    """A run killed outright (SIGKILL: no cleanup) leaves OUT.tmp-PID-*; the next run removes it when
    that process is gone, and leaves a live process's directory alone."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    orphan = tmp_path / f"d.tmp-{dead.stdout.strip()}-abc"
    (orphan / "work").mkdir(parents=True)
    live = tmp_path / f"d.tmp-{os.getpid()}-xyz"
    live.mkdir()
    prepare_data(tiny(vocab_size=SYNTHETIC_VOCAB, workers=1, max_lines=200), tmp_path / "d",
                 data_dir=synthetic_corpus, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", live.name]


def test_discover_inputs_canonicalises_codes(synthetic_corpus, shared_data):
    mono, para = discover_inputs(synthetic_corpus)
    assert sorted(mono) == ["de", "en", "fr"] and sorted(para) == ["en-de", "en-fr"]
    assert para["en-fr"] == (synthetic_corpus / "en-fr.en", synthetic_corpus / "en-fr.fr")
    mono, para = discover_inputs(shared_data)
    assert mono["en"] == shared_data / "mono" / "eng.txt"
    assert sorted(mono) == ["de", "en", "fr", "it", "nl"]  # langid/, tatoeba/, ud-pud/ are not inputs
    assert sorted(para) == ["en-cs", "en-de", "en-fr"]
    assert para["en-fr"][1] == shared_data / "parallel" / "multi30k.en-fr.fr"


def test_cli_prepare_info_and_train_tokenizer(synthetic_corpus, tmp_path, capsys):
    c = synthetic_corpus
    args = ["--config", "tiny", "--set", f"prepare.vocab_size={SYNTHETIC_VOCAB}", "--quiet",
            "--mono", f"eng={c / 'en.txt'}", "--mono", f"fr={c / 'fr.txt'}",
            "--para", f"en-fr={c / 'en-fr.en'},{c / 'en-fr.fr'}"]
    assert main(["prepare", "--out", str(tmp_path / "data"), *args]) == 0
    data = PreparedData(tmp_path / "data")
    assert data.languages == ["en", "fr"] and data.pairs == ["en-fr"]
    capsys.readouterr()
    assert main(["info", str(tmp_path / "data")]) == 0
    text = capsys.readouterr().out
    assert "languages (2): en=0, fr=1" in text and "en-fr" in text and f"vocab {SYNTHETIC_VOCAB}" in text
    assert main(["train-tokenizer", "--out", str(tmp_path / "tok"), *args]) == 0
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.json"]
    tok = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    assert tok.get_vocab_size() == SYNTHETIC_VOCAB and tok.token_to_id("<lang:fr>") == 6


def test_info_on_a_run_dir(tmp_path, capsys):
    (tmp_path / "vocab.json").write_text(json.dumps({"vocab_size": 180, "languages": ["en", "fr"], "pairs": ["en-fr"]}))
    (tmp_path / "config.json").write_text(json.dumps({"preset": "tiny", "model": {"dim": 64}}))
    assert main(["info", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "vocab 180" in text and "en, fr" in text and "dim=64" in text


def _check_real(out, shared_data, cfg, n_check):
    data = PreparedData(out)
    m = data.manifest
    assert data.languages == ["cs", "de", "en", "fr", "it", "nl"]
    assert data.pairs == ["en-cs", "en-de", "en-fr"]
    for src in m["sources"]:
        entry = m[src["kind"]][src["name"]]
        assert sum(entry[s]["sentences"] for s in SPLITS) + src["dropped_total"] == src["lines_read"]
    # Round trip on the sentences without unknown pieces (characters the tokenizer never saw).
    kept, n_read = expected_lines(cfg, [shared_data / "mono" / "fra.txt"])
    assert n_read == next(s["lines_read"] for s in m["sources"] if s["name"] == "fr")
    want = split_of([k[0] for k in kept], cfg, "fr")["train"][:n_check]
    shard = data.mono("fr", "train")
    exact = 0
    for i, text in enumerate(want):
        ids = shard.sentence(i)
        if data.specials.unk not in ids:
            assert data.tokenizer.decode(ids.tolist()) == text
            exact += 1
    assert exact >= 0.95 * len(want)


def test_real_data_slice(shared_data, tmp_path):
    """Fast variant of the real-data run: the first 2000 lines of each file.

    BPE here because Hugging Face's unigram trainer needs ~15 s on this slice (test_tokenizer has a
    small unigram round trip on real text; the slow test runs the default unigram on everything).
    """
    cfg = tiny(max_lines=2000, tokenizer="bpe")
    out = prepare_data(cfg, tmp_path / "real", data_dir=shared_data, progress=False)
    assert all(s["lines_read"] == 2000 for s in PreparedData(out).manifest["sources"])
    _check_real(out, shared_data, cfg, 500)


@pytest.mark.slow
def test_real_data_full(shared_data, tmp_path):
    # Every character kept: the round trip below counts sentences without <unk>, and the default coverage
    # (0.9995, as XLM-R) leaves ~8% of these sentences with a rare character as <unk> (test_prepare_engine).
    cfg = tiny(character_coverage=1.0)
    out = prepare_data(cfg, tmp_path / "real", data_dir=shared_data, progress=False)
    _check_real(out, shared_data, cfg, 5000)


def test_an_output_of_an_earlier_pipeline_version_is_rebuilt(synthetic_corpus, tmp_path, monkeypatch, capsys):
    """The same inputs and settings under another pipeline version (a change in how shards are derived)
    are not taken as up to date."""
    import xlmkit.data.prepare as P

    cfg = tiny(vocab_size=SYNTHETIC_VOCAB, workers=1)
    out = prepare_data(cfg, tmp_path / "d", data_dir=synthetic_corpus, progress=False)
    monkeypatch.setattr(P, "PIPELINE_VERSION", P.PIPELINE_VERSION - 1)  # what an older xlmkit stamped
    stamp_old = json.loads((out / "manifest.json").read_text())["stamp"]
    capsys.readouterr()
    prepare_data(cfg, out, data_dir=synthetic_corpus, progress=True)
    assert "up to date" not in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["stamp"] != stamp_old
