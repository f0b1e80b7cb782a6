"""Sentence embeddings and bitext retrieval: the metric on known inputs, embedding order / padding
invariance, and `xlmkit retrieve` end to end on a tiny generated parallel set."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xlmkit.cli.main import main
from xlmkit.tasks.retrieval import (
    SentenceFormat,
    cosine_top1,
    cosine_top1_accuracy,
    embed_ids,
    encode_sentences,
    find_bitexts,
    load_encoder,
)

# ----------------------------------------------------------------------------------------------
# The metric


def test_cosine_top1_accuracy_identity_is_one():
    x = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    assert cosine_top1_accuracy(x, x) == 1.0
    # cosine ignores the scale of each row
    assert cosine_top1_accuracy(x * np.arange(1, 51)[:, None], x) == 1.0


def test_cosine_top1_accuracy_shuffled_known():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 32))
    perm = np.arange(40)
    perm[:10] = np.roll(perm[:10], 1)  # rows 0..9 point elsewhere, rows 10..39 stay
    assert np.array_equal(cosine_top1(x, x[perm]), np.argsort(perm))
    assert cosine_top1_accuracy(x, x[perm]) == pytest.approx(30 / 40)
    assert cosine_top1_accuracy(x, x[rng.permutation(40)[::-1]]) < 0.2


def test_cosine_top1_hand_computed():
    src = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    tgt = np.array([[2.0, 0.1], [1.0, 1.1], [0.0, 3.0]])
    # cos: row0 -> tgt0; row1 -> tgt2; row2 -> tgt1
    assert cosine_top1(src, tgt).tolist() == [0, 2, 1]
    assert cosine_top1_accuracy(src, tgt) == pytest.approx(1 / 3)


def test_cosine_top1_accuracy_rejects_misaligned():
    with pytest.raises(ValueError, match="aligned"):
        cosine_top1_accuracy(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        cosine_top1(np.ones((3, 4)), np.ones((3, 5)))


# ----------------------------------------------------------------------------------------------
# A tiny run: word-level tokenizer over the generated corpus' words, tiny XLM, saved as a run


def _word_pieces(text: str) -> list[str]:
    from tokenizers.pre_tokenizers import Whitespace

    return [w for w, _ in Whitespace().pre_tokenize_str(text.lower())]


def _tokenizer(path: Path, dictionary: bool) -> Path:
    """Word-level tokenizer with the fixed specials over the generated corpus' words.
    dictionary=True: its normalizer first translates every French / German / Spanish word into
    English, so a sentence and its translation become (nearly) the same bag of ids."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    from xlmkit.data import synthetic

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4,
             "<lang:de>": 5, "<lang:en>": 6, "<lang:es>": 7, "<lang:fr>": 8}
    tables = [synthetic._NOUNS, synthetic._ADJS, synthetic._VERBS, synthetic._ADVS, {"the": synthetic._DET}]
    rules = []
    for table in tables:
        for words in table.values():
            for w in words:
                for p in _word_pieces(w):
                    vocab.setdefault(p, len(vocab))
                if w.lower() != words[0].lower():
                    rules.append((w.lower(), words[0].lower()))
    vocab.setdefault(".", len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    norms = [normalizers.Lowercase()]
    if dictionary:
        rules.sort(key=lambda r: -len(r[0]))  # multi-word entries first
        norms += [normalizers.Replace(Regex(r"\b" + w + r"\b"), en) for w, en in rules]
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def _make_run(tmp: Path, dictionary: bool = False, use_lang_emb: bool = True, seed: int = 0) -> Path:
    from tokenizers import Tokenizer

    from xlmkit.train.checkpoint import save_model_run
    from xlmkit.core.config import load_config
    from xlmkit.model.encoder import XLMModel

    tok_path = _tokenizer(tmp / "tokenizer.json", dictionary)
    vocab_size = Tokenizer.from_file(str(tok_path)).get_vocab_size()
    cfg = load_config("tiny")
    lang2id = {"de": 0, "en": 1, "fr": 2}
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, vocab_size=vocab_size, n_langs=len(lang2id), pad_id=1, use_lang_emb=use_lang_emb))
    torch.manual_seed(seed)
    model = XLMModel(cfg.model)
    vocab = {"lang2id": lang2id, "specials": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 4},
             "languages": sorted(lang2id), "pairs": ["en-de", "en-fr"], "vocab_size": vocab_size, "data_dir": None}
    run_dir = tmp / "run"
    save_model_run(run_dir, model, cfg, vocab, tok_path)
    return run_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return _make_run(tmp_path_factory.mktemp("plainrun"), dictionary=False)


@pytest.fixture(scope="module")
def dictionary_run(tmp_path_factory) -> Path:
    return _make_run(tmp_path_factory.mktemp("dictrun"), dictionary=True)


@pytest.fixture(scope="module")
def parallel_dir(tmp_path_factory) -> Path:
    """en-fr, en-de, en-es line-aligned test files (generated grammar) in the generic layout."""
    from xlmkit.data.synthetic import write_corpus

    d = tmp_path_factory.mktemp("bitext")
    write_corpus(d, n_mono=0, n_para=120, seed=3, langs=(), pairs=("en-fr", "en-de", "en-es"))
    return d


# ----------------------------------------------------------------------------------------------
# Embedding


SENTENCES = [
    "The cat sees the tree.",
    "The big old red happy green quiet new dog follows the small child again and again today.",
    "Dog.",
    "The teacher paints the house slowly.",
    "The woman waits for the man often in the garden of the city by the river.",
    "",
    "A cat.",
]


def test_embed_command_shape_order_and_padding_invariance(tiny_run, tmp_path):
    inp = tmp_path / "sents.txt"
    inp.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    outs = []
    for bs in (1, 3, 64):
        out = tmp_path / f"emb{bs}.npy"
        assert main(["embed", "--model", str(tiny_run), "--input", str(inp), "--lang", "eng", "--out", str(out),
                     "--batch-size", str(bs), "--device", "cpu"]) == 0
        emb = np.load(out)
        assert emb.shape == (len(SENTENCES), 64) and emb.dtype == np.float32
        outs.append(emb)
    # batch_size 1 = every sentence alone, no padding: the same vectors in the same (input) order
    np.testing.assert_allclose(outs[0], outs[1], atol=2e-5, rtol=0)
    np.testing.assert_allclose(outs[0], outs[2], atol=2e-5, rtol=0)
    assert not np.allclose(outs[0][0], outs[0][1])
    # a file with the lines in another order gives the rows in that order
    perm = [3, 0, 6, 5, 1, 4, 2]
    inp2 = tmp_path / "perm.txt"
    inp2.write_text("\n".join(SENTENCES[i] for i in perm) + "\n", encoding="utf-8")
    assert main(["embed", "--model", str(tiny_run), "--input", str(inp2), "--lang", "en", "--out",
                 str(tmp_path / "perm.npy"), "--device", "cpu"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "perm.npy"), outs[0][perm], atol=2e-5, rtol=0)


def test_embedding_does_not_depend_on_batch_neighbours(tiny_run):
    enc, _ = load_encoder(tiny_run, device="cpu", layer=1)
    fmt = enc.fmt
    seqs = encode_sentences(enc.tokenizer, ["The cat sees the tree.", SENTENCES[1] * 3], fmt)
    assert seqs[0][0] == seqs[0][-1] == 2  # </s> … </s> (XLM)
    alone = embed_ids(enc.model, seqs[:1], fmt.pad_id, lang_id=1, layer=1)
    with_long = embed_ids(enc.model, seqs, fmt.pad_id, lang_id=1, layer=1)
    np.testing.assert_allclose(alone[0], with_long[0], atol=2e-5, rtol=0)
    # and the language embedding is used: another language id changes the vector
    other = embed_ids(enc.model, seqs[:1], fmt.pad_id, lang_id=0, layer=1)
    assert not np.allclose(alone[0], other[0], atol=1e-4)


def test_encode_truncates_to_max_len(tiny_run):
    enc, _ = load_encoder(tiny_run, device="cpu")
    fmt = SentenceFormat(first_id=0, last_id=2, pad_id=1, max_len=5)
    (ids,) = encode_sentences(enc.tokenizer, [SENTENCES[1]], fmt)
    assert len(ids) == 5 and ids[0] == 0 and ids[-1] == 2


def test_embed_unknown_language_needs_a_fallback(tiny_run, tmp_path, capsys):
    inp = tmp_path / "s.txt"
    inp.write_text("El gato ve el árbol.\n", encoding="utf-8")
    out = tmp_path / "e.npy"
    assert main(["embed", "--model", str(tiny_run), "--input", str(inp), "--lang", "spa", "--out", str(out),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no language embedding for 'es'" in err and "--unknown-lang-id" in err
    assert main(["embed", "--model", str(tiny_run), "--input", str(inp), "--lang", "spa", "--out", str(out),
                 "--device", "cpu", "--unknown-lang-id", "fr"]) == 0
    assert np.load(out).shape == (1, 64)
    assert main(["embed", "--model", str(tiny_run), "--input", str(inp), "--lang", "es", "--out", str(out),
                 "--device", "cpu", "--layer", "7"]) == 2
    assert "--layer must be in [-3, 2]" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Retrieval


def test_find_bitexts_layouts(tmp_path):
    for name in ("tatoeba.deu-eng.deu", "tatoeba.deu-eng.eng", "en-fr.fr", "en-fr.en", "multi30k.en-cs.cs",
                 "multi30k.en-cs.en", "tatoeba.xyz-eng.xyz", "tatoeba.xyz-eng.eng", "fr.txt",
                 "en-nl.nl"):  # en-nl lacks its .en side: no pair
        (tmp_path / name).write_text("a\n", encoding="utf-8")
    found = find_bitexts(tmp_path)
    assert sorted(found) == ["cs", "de", "fr", "xyz"]
    assert found["de"].code == "deu" and found["de"].tgt_path.name == "tatoeba.deu-eng.eng"
    assert found["fr"].src_path.name == "en-fr.fr" and found["fr"].tgt_path.name == "en-fr.en"


def test_find_bitexts_on_real_tatoeba(shared_data):
    found = find_bitexts(shared_data / "tatoeba")
    assert {"de", "fr", "nl", "it", "cs"} <= set(found)
    assert found["de"].src_path.name == "tatoeba.deu-eng.deu"


def test_retrieve_end_to_end(dictionary_run, parallel_dir, tmp_path, capsys):
    out = tmp_path / "ret"
    # default languages: the model's (de, fr; en is the pivot) found in the data; es is not the model's
    assert main(["retrieve", "--model", str(dictionary_run), "--data", str(parallel_dir), "--layer", "0",
                 "--out", str(out), "--both-directions", "--device", "cpu", "--center"]) == 0
    table = json.loads((out / "retrieval.json").read_text())
    assert table["meta"]["centered"] is True
    assert [r["lang"] for r in table["rows"]] == ["de", "fr"]
    assert table["columns"] == ["lang", "data", "n", "acc_xx_en", "acc_en_xx"]
    for r in table["rows"]:
        assert r["n"] == 120
        # translations are (nearly) the same bag of ids under the dictionary tokenizer
        assert r["acc_xx_en"] >= 90.0 and r["acc_en_xx"] >= 90.0
    avg = table["average"]["acc_xx_en"]
    assert avg == pytest.approx(np.mean([r["acc_xx_en"] for r in table["rows"]]))
    md = (out / "retrieval.md").read_text()
    assert f"{table['rows'][0]['acc_xx_en']:.2f}" in md and f"{avg:.2f}" in md
    assert "| de |" in md
    assert "acc_xx_en" in capsys.readouterr().out
    # without centering, the per-language offset of the (random) language embeddings swamps the
    # sentence content: the same bags of ids are retrieved much worse
    assert main(["retrieve", "--model", str(dictionary_run), "--data", str(parallel_dir), "--layer", "0",
                 "--out", str(tmp_path / "raw"), "--device", "cpu"]) == 0
    raw = json.loads((tmp_path / "raw" / "retrieval.json").read_text())
    assert raw["average"]["acc_xx_en"] < avg - 30


def test_retrieve_unknown_language_skipped_or_mapped(dictionary_run, parallel_dir, tmp_path):
    out = tmp_path / "ret"
    assert main(["retrieve", "--model", str(dictionary_run), "--data", str(parallel_dir), "--langs", "spa,deu",
                 "--out", str(out), "--device", "cpu", "--max-sentences", "30"]) == 0
    table = json.loads((out / "retrieval.json").read_text())
    assert [r["lang"] for r in table["rows"]] == ["de"] and table["rows"][0]["n"] == 30
    assert any(n.startswith("es (es): skipped") for n in table["notes"])
    assert "skipped" in (out / "retrieval.md").read_text()
    assert main(["retrieve", "--model", str(dictionary_run), "--data", str(parallel_dir), "--langs", "es",
                 "--out", str(out), "--device", "cpu", "--unknown-lang-id", "en", "--max-sentences", "30"]) == 0
    table = json.loads((out / "retrieval.json").read_text())
    assert [r["lang"] for r in table["rows"]] == ["es"]


def test_retrieve_random_init_and_defaults(tiny_run, parallel_dir, tmp_path):
    assert main(["retrieve", "--model", str(tiny_run), "--data", str(parallel_dir), "--random-init",
                 "--device", "cpu", "--max-sentences", "40"]) == 0
    out = tiny_run / "eval" / f"retrieve-{parallel_dir.name}-random-init"
    table = json.loads((out / "retrieval.json").read_text())
    assert table["meta"]["random_init"] is True and "random-init" in table["title"]
    assert {r["lang"] for r in table["rows"]} == {"de", "fr"}
    assert all(0.0 <= r["acc_xx_en"] <= 100.0 for r in table["rows"])


def test_retrieve_model_without_lang_embeddings_takes_every_language(tmp_path, parallel_dir):
    run = _make_run(tmp_path, dictionary=True, use_lang_emb=False)
    out = tmp_path / "ret"
    assert main(["retrieve", "--model", str(run), "--data", str(parallel_dir), "--langs", "es,fr",
                 "--out", str(out), "--device", "cpu", "--max-sentences", "30", "--layer", "0"]) == 0
    table = json.loads((out / "retrieval.json").read_text())
    assert [r["lang"] for r in table["rows"]] == ["es", "fr"] and "notes" not in table
    assert table["meta"]["lang_embeddings"] is False
    # no language offset: raw cosine retrieves the translations
    assert all(r["acc_xx_en"] >= 90.0 for r in table["rows"])


def test_retrieve_errors(tiny_run, parallel_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["retrieve", "--model", str(tiny_run), "--data", str(empty), "--device", "cpu"]) == 2
    assert "no parallel test files" in capsys.readouterr().err
    assert main(["retrieve", "--model", str(tiny_run), "--data", str(parallel_dir), "--langs", "ita",
                 "--device", "cpu"]) == 2
    assert "no test files for it" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "en-fr.fr").write_text("a\nb\n", encoding="utf-8")
    (bad / "en-fr.en").write_text("a\n", encoding="utf-8")
    assert main(["retrieve", "--model", str(tiny_run), "--data", str(bad), "--device", "cpu"]) == 2
    assert "line-aligned" in capsys.readouterr().err


def test_embed_and_retrieve_from_python(dictionary_run, parallel_dir, tmp_path):
    """`embed_file` and `retrieve` are typed functions: the commands without argparse."""
    from xlmkit.core.errors import XlmkitError
    from xlmkit.tasks.retrieval import embed_file, retrieve

    emb = embed_file(dictionary_run, parallel_dir / "en-de.de", "deu", tmp_path / "de.npy", device="cpu", layer=0)
    assert np.array_equal(np.load(tmp_path / "de.npy"), emb) and emb.dtype == np.float32
    res = retrieve(dictionary_run, parallel_dir, tmp_path / "ret", langs=["deu", "es"], centered=True,
                   max_sentences=30, device="cpu", layer=0)
    assert [r["lang"] for r in res["rows"]] == ["de"] and res["rows"][0]["n"] == 30
    assert any(n.startswith("es (es): skipped") for n in res["notes"])
    assert json.loads(res["json"].read_text())["rows"] == res["rows"]
    with pytest.raises(XlmkitError, match="must end in .npy"):
        embed_file(dictionary_run, parallel_dir / "en-de.de", "de", tmp_path / "de.txt")
