"""The shared tokenizer: balanced sampling, fixed special ids, round trip, vocab-size check."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from xlmkit.core.config import PrepareConfig
from xlmkit.core.errors import DataError
from xlmkit.data.prepare import Source, clean_source, tokenizer_sample
from xlmkit.data.text import clean_line
from xlmkit.data.tokenizer import (iter_sampled, language_shares, make_normalizer, sample_line_indices, sample_sizes,
                              train_tokenizer)
from xlmkit.data.synthetic import sentence

from test_text import TRICKY


def test_shares_follow_n_to_the_alpha():
    counts = {"en": 10000, "sw": 100}
    q = language_shares(counts, 0.3)
    expected_en = 10000**0.3 / (10000**0.3 + 100**0.3)
    assert q["en"] == pytest.approx(expected_en)
    assert language_shares(counts, 1.0)["en"] == pytest.approx(10000 / 10100)
    assert language_shares(counts, 0.0)["en"] == pytest.approx(0.5)


def test_sample_sizes_sum_to_total():
    sizes = sample_sizes({"a": 7, "b": 13, "c": 1000}, 0.3, 101)
    assert sum(sizes.values()) == 101


def test_sample_indices_are_sorted_seeded_and_upsample_small_languages():
    counts = {"en": 10000, "sw": 100}
    a = sample_line_indices(counts, 0.3, 5000, np.random.default_rng(0))
    b = sample_line_indices(counts, 0.3, 5000, np.random.default_rng(0))
    assert all(np.array_equal(a[k], b[k]) for k in counts)
    assert all((np.diff(ix) >= 0).all() for ix in a.values())
    assert len(a["sw"]) > 100 and a["sw"].max() < 100  # more than it has: drawn with replacement
    assert len(np.unique(a["en"])) == len(a["en"])  # enough lines: drawn without replacement
    assert list(iter_sampled(["x", "y", "z"], np.array([0, 2, 2]))) == ["x", "z", "z"]


def _skewed_corpus(tmp_path, cfg):
    (tmp_path / "en.txt").write_text("\n".join(f"en line {i}" for i in range(10000)) + "\n")
    (tmp_path / "sw.txt").write_text("\n".join(f"sw mstari {i}" for i in range(100)) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    return [clean_source(Source("mono", lang, (tmp_path / f"{lang}.txt",)), cfg, work) for lang in ("en", "sw")]


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_tokenizer_sample_is_language_balanced(tmp_path, alpha):
    """10000 vs 100 lines: the streamed sample's language shares are n^alpha / sum n^alpha."""
    cfg = PrepareConfig(alpha=alpha, tokenizer_sample_sentences=20000)
    cleaned = _skewed_corpus(tmp_path, cfg)
    lines, sizes = tokenizer_sample(cleaned, cfg, np.random.default_rng(0))
    lines = list(lines)
    assert len(lines) == 20000 == sum(sizes.values())
    share_sw = sum(line.startswith("sw ") for line in lines) / len(lines)
    expected = language_shares({"en": 10000, "sw": 100}, alpha)["sw"]
    assert share_sw == pytest.approx(expected, abs=0.005)
    if alpha == 1.0:
        assert share_sw == pytest.approx(100 / 10100, abs=0.001)  # proportional
    else:
        assert share_sw > 0.15  # ~20%, against 1% of the raw text


def test_tokenizer_sample_counts_parallel_text_toward_its_languages(tmp_path):
    cfg = PrepareConfig(alpha=1.0, tokenizer_sample_sentences=3000)
    (tmp_path / "en.txt").write_text("\n".join(f"en {i}" for i in range(1000)) + "\n")
    (tmp_path / "p.en").write_text("\n".join(f"en p {i}" for i in range(1000)) + "\n")
    (tmp_path / "p.fr").write_text("\n".join(f"fr p {i}" for i in range(1000)) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    cleaned = [clean_source(Source("mono", "en", (tmp_path / "en.txt",)), cfg, work),
               clean_source(Source("para", "en-fr", (tmp_path / "p.en", tmp_path / "p.fr")), cfg, work)]
    _, sizes = tokenizer_sample(cleaned, cfg, np.random.default_rng(0))
    assert sizes == {"en": 2000, "fr": 1000}


def _synthetic_lines(n=3000):
    rng = np.random.default_rng(0)
    return [s for _ in range(n) for s in sentence(rng).values()]


def test_specials_have_fixed_ids_and_file_loads(tmp_path):
    tok = train_tokenizer(_synthetic_lines(), ["fr", "en", "de"], "unigram", vocab_size=80)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    loaded = Tokenizer.from_file(str(path))
    for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<lang:de>", "<lang:en>", "<lang:fr>"]):
        assert loaded.token_to_id(t) == i
    text = "Der kleine Hund sieht die Katze heute."
    ids = loaded.encode(text, add_special_tokens=False).ids
    assert loaded.decode(ids) == text


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_vocab_larger_than_data_allows_is_an_error(kind):
    with pytest.raises(DataError, match=r"prepare\.vocab_size=5000 is larger than the data allows.* only \d+ tokens"):
        train_tokenizer(_synthetic_lines(300), ["en", "fr"], kind, vocab_size=5000)


def test_tokenizer_normalizer_mirrors_clean_line():
    """Raw text through the tokenizer's normaliser equals the pipeline's cleaning (for later users)."""
    for lower, accents in [(False, False), (True, True)]:
        norm = make_normalizer(lower, accents)
        for text in TRICKY:
            assert norm.normalize_str(text) == clean_line(text, lower, accents), text


def test_unigram_round_trip_on_real_text(shared_data):
    """Real sentences in Latin and Cyrillic script decode back to exactly the clean text."""
    lines = []
    for path in [shared_data / "mono" / "fra.txt", shared_data / "mono" / "deu.txt", shared_data / "langid" / "ru.txt"]:
        with open(path, encoding="utf-8") as f:
            lines += [clean_line(next(f)) for _ in range(300)]
    tok = train_tokenizer(lines, ["de", "fr", "ru"], "unigram", vocab_size=1000)
    assert tok.get_vocab_size() == 1000
    for line in lines:
        assert tok.decode(tok.encode(line, add_special_tokens=False).ids) == line
