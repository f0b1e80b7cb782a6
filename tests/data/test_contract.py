"""The run contract (data/contract.py) and the results-table writer / reader (core/tables.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xlmkit.core.errors import DataError, XlmkitError
from xlmkit.core.tables import read_table, read_tables, table_markdown, write_table
from xlmkit.data.contract import RunContract, pad_batch, pair_layout, tlm_truncate

VOCAB = {"lang2id": {"en": 0, "fr": 1}, "specials": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 4},
         "languages": ["en", "fr"], "pairs": ["en-fr"], "vocab_size": 100, "lang_tokens": {"en": 5, "fr": 6},
         "data_dir": "/data"}


class _LangModel:
    class lang_embeddings:  # noqa: N801  (stands in for nn.Embedding)
        num_embeddings = 2


def contract(**vocab) -> RunContract:
    return RunContract.from_vocab({**VOCAB, **vocab}).for_model(_LangModel())


def test_framing_for_both_wraps():
    xlm = contract()
    assert xlm.wrap() == "xlm" and xlm.first_id == 2
    assert xlm.frame([10, 11, 12]) == [2, 10, 11, 12, 2]
    assert xlm.frame([10, 11, 12], max_len=4) == [2, 10, 11, 2]
    roberta = contract(sentence_wrap="roberta")
    assert roberta.first_id == 0 and roberta.frame([10, 11]) == [0, 10, 11, 2]
    assert xlm.with_wrap("roberta").frame([10]) == [0, 10, 2]
    with pytest.raises(XlmkitError, match="unknown sentence wrap 'bert'"):
        xlm.with_wrap("bert")


def test_specials_come_from_the_tokenizer_when_vocab_json_has_none():
    class Tok:
        def token_to_id(self, t):
            return {"<s>": 7, "</s>": 8}.get(t)

    c = RunContract.from_vocab({}, Tok())
    assert (c.specials.bos, c.specials.eos, c.specials.pad) == (7, 8, 1)
    assert "specials" not in c.to_vocab()


def test_pair_layout_xlm_restarts_positions_and_gives_each_side_its_language():
    ids, langs, positions, cut = contract().pair([10, 11], [20, 21, 22], max_len=64, lang1=0, lang2=1)
    assert ids.tolist() == [2, 10, 11, 2, 2, 20, 21, 22, 2]
    assert positions.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4]
    assert langs.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert not cut


def test_pair_layout_roberta_and_truncation():
    ids, langs, positions, cut = contract(sentence_wrap="roberta").pair(list(range(10, 20)), [30], max_len=8)
    assert ids.tolist() == [0, 10, 11, 12, 2, 2, 30, 2]
    assert positions.tolist() == list(range(8)) and langs is None and cut
    assert tlm_truncate(10, 1, 4) == (3, 1)
    ids, langs, _ = pair_layout([1, 2], [3], 2, 2, 64, lang1=5)
    assert langs.tolist() == [5] * len(ids)


def test_language_ids_and_their_errors():
    c = contract()
    assert c.lang_id("eng") == 0 and c.lang_id("fr") == 1
    assert c.lang_id("de", unknown=c.resolve_unknown("en")) == 0
    assert c.resolve_unknown("1") == 1 and c.resolve_unknown(None) is None
    with pytest.raises(XlmkitError, match=r"--unknown-lang-id 2 out of range: the model has 2 language ids"):
        c.resolve_unknown("2")
    with pytest.raises(XlmkitError, match=r"--unknown-lang-id 'xx' is not a language of the model \(en, fr\)"):
        c.resolve_unknown("xx")
    with pytest.raises(XlmkitError, match=r"no language embedding for 'de' \(knows: en, fr\); pass --unknown-lang-id"):
        c.lang_id("de")
    with pytest.raises(DataError, match=r"x\.jsonl:3: language 'de' has no language embedding in this model"):
        c.lang_id("de", where="x.jsonl:3")
    assert c.missing_langs(["en", "de", "fr"]) == ["de"]
    # a script subtag the model lacks takes its language's embedding, not the unknown id
    assert c.lang_id("fr-latn", unknown=0) == 1 and c.lang_id("fra_Latn") == 1
    assert c.missing_langs(["fr-latn", "de-latn"]) == ["de-latn"]
    no_emb = RunContract.from_vocab(VOCAB)  # a model without language embeddings: no ids at all
    assert no_emb.lang_id("de") is None and no_emb.resolve_unknown("99") is None


def test_vocab_json_round_trip(tmp_path):
    vocab = {**VOCAB, "special_ids": [0, 1, 2, 3, 4, 5, 6], "sentence_wrap": "roberta", "init": "/ckpt"}
    c = RunContract.from_vocab(vocab)
    assert c.to_vocab() == vocab
    assert list(c.to_vocab())[:8] == ["lang2id", "specials", "languages", "pairs", "vocab_size", "lang_tokens",
                                      "data_dir", "special_ids"]
    c.write(tmp_path / "vocab.json")
    assert RunContract.read(tmp_path / "vocab.json") == c
    assert c.reserved_ids() == {0, 1, 2, 3, 4, 5, 6}


def test_pad_batch():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]] and ids.dtype == np.int64
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    ids, mask = pad_batch([], pad_id=1)
    assert ids.shape == (0, 0)


def test_table_writer_and_reader_round_trip(tmp_path):
    rows = [{"lang": "de", "n": 1000, "acc": 93.4}, {"lang": "fi", "n": 10, "acc": 0.8125}]
    json_path, md_path = write_table(tmp_path / "sub" / "retrieval", rows, ["lang", "n", "acc"], "Retrieval",
                                     average={"acc": 47.10625}, meta={"model": "m"}, notes=["sw: skipped"])
    t = read_table(json_path)
    assert t["title"] == "Retrieval" and t["columns"] == ["lang", "n", "acc"] and t["rows"] == rows
    assert t["average"] == {"acc": 47.10625} and t["notes"] == ["sw: skipped"] and t["meta"] == {"model": "m"}
    md = md_path.read_text()
    assert md == table_markdown(rows, ["lang", "n", "acc"], "Retrieval", {"acc": 47.10625}, ["sw: skipped"])
    assert "| de | 1000 | 93.40 |" in md and "| fi | 10 | 0.8125 |" in md and "| **average** |  | **47.11** |" in md
    assert "|---|---:|---:|" in md
    assert "| **avg** |" in table_markdown(rows, ["lang", "acc"], average={"acc": 1.0}, average_label="avg")
    (tmp_path / "flat.json").write_text(json.dumps({"de": {"acc": 1.0}, "fr": {"acc": 2.0}}))
    assert [r["lang"] for r in read_tables(tmp_path / "flat.json")[0]["rows"]] == ["de", "fr"]


def test_no_raw_vocab_reads_outside_the_contract():
    """The run's vocab.json dict is read in one place, data/contract.py: no `vocab[...]` or
    `vocab.get(...)` anywhere else in the package."""
    import ast
    from pathlib import Path

    import xlmkit

    root = Path(xlmkit.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix() == "data/contract.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            target = None
            if isinstance(node, ast.Subscript):
                target = node.value
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
                target = node.func.value
            name = target.id if isinstance(target, ast.Name) else target.attr if isinstance(target, ast.Attribute) \
                else None
            if name in ("vocab", "init_vocab", "saved_vocab", "run_vocab"):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert not found, "raw vocab.json reads outside xlmkit/data/contract.py: " + ", ".join(found)
