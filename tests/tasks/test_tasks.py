"""Task data readers: JSONL, TSV, CoNLL-U, CoNLL; languages and splits from file names; id splits."""

import json

import pytest

from xlmkit.core.errors import DataError
from xlmkit.tasks.io import (
    build_pud_genre,
    check_labels,
    group_by_lang,
    label_list,
    lang_from_filename,
    read_task_file,
    read_task_files,
    select_uids,
    split_from_filename,
    split_uids,
)

CONLLU = """# newdoc id = n01001
# sent_id = n01001011
# text = Je vais au marché.
1	Je	il	PRON	_	_	2	nsubj	_	_
2	vais	aller	VERB	_	_	0	root	_	_
3-4	au	_	_	_	_	_	_	_	_
3	à	à	ADP	_	_	5	case	_	_
4	le	le	DET	_	_	5	det	_	_
4.1	x	x	X	_	_	_	_	_	_
5	marché	marché	NOUN	_	_	2	obl	_	SpaceAfter=No
6	.	.	PUNCT	_	_	2	punct	_	_

# sent_id = w01002003
# text = Bonjour !
1	Bonjour	bonjour	INTJ	_	_	0	root	_	_
2	!	!	PUNCT	_	_	1	punct	_	_
"""


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_language_and_split_from_file_names():
    assert lang_from_filename("en_pud-ud-test.conllu") == "en"
    assert lang_from_filename("xnli.fra.dev.jsonl") == "fr"
    assert lang_from_filename("de.train.tsv") == "de"
    assert lang_from_filename("train.jsonl") is None
    assert lang_from_filename("dev.jsonl") is None
    assert split_from_filename("en_pud-ud-test.conllu") == "test"
    assert split_from_filename("xnli.fra.dev.jsonl") == "dev"
    assert split_from_filename("en.valid.jsonl") == "dev"
    assert split_from_filename("en.jsonl") is None


def test_jsonl_classification_pair_and_token(tmp_path):
    p = _write_jsonl(tmp_path / "en.jsonl", [{"text": "a b", "label": 1}, {"sentence": "c", "label": "x", "lang": "fra"}])
    exs = read_task_file(p, "classification")
    assert [(e.lang, e.label, e.text) for e in exs] == [("en", "1", "a b"), ("fr", "x", "c")]
    assert exs[0].source == f"{p}:1" and exs[1].uid == "1"
    p = _write_jsonl(tmp_path / "pairs.jsonl", [{"premise": "a", "hypothesis": "b", "gold_label": "entailment",
                                                "lang": "de", "id": "q7"}])
    (ex,) = read_task_file(p, "pair")
    assert (ex.text, ex.text_b, ex.label, ex.lang, ex.uid) == ("a", "b", "entailment", "de", "q7")
    p = _write_jsonl(tmp_path / "ner.jsonl", [{"tokens": ["Paris", "is"], "ner_tags": ["B-LOC", "O"], "lang": "en"}])
    (ex,) = read_task_file(p, "token")
    assert ex.tokens == ["Paris", "is"] and ex.label == ["B-LOC", "O"]


def test_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "en.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n{not json}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"en\.jsonl:2: invalid JSON"):
        read_task_file(p, "classification")
    p = _write_jsonl(tmp_path / "data.jsonl", [{"text": "a", "label": "x"}])
    with pytest.raises(DataError, match=r"data\.jsonl:1: no language"):
        read_task_file(p, "classification")
    p = _write_jsonl(tmp_path / "t2.en.jsonl", [{"tokens": ["a", "b"], "labels": ["X"]}])
    with pytest.raises(DataError, match=r"t2\.en\.jsonl:1: 2 tokens but 1 labels"):
        read_task_file(p, "token")
    p = _write_jsonl(tmp_path / "t3.en.jsonl", [{"text": "a"}])
    with pytest.raises(DataError, match=r"t3\.en\.jsonl:1: missing 'label'"):
        read_task_file(p, "classification")
    with pytest.raises(DataError, match="data file not found"):
        read_task_file(tmp_path / "nope.jsonl", "classification")


def test_tsv_with_header(tmp_path):
    p = tmp_path / "paws.de.tsv"
    p.write_text("id\tsentence1\tsentence2\tlabel\n1\tEin Hund.\tEin \"Hund\".\t1\n\n2\tx\ty\t0\n", encoding="utf-8")
    exs = read_task_file(p, "pair")
    assert [(e.uid, e.text, e.text_b, e.label, e.lang) for e in exs] == [
        ("1", "Ein Hund.", 'Ein "Hund".', "1", "de"), ("2", "x", "y", "0", "de")]
    bad = tmp_path / "en.tsv"
    bad.write_text("text\tlabel\na\tb\tc\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"en\.tsv:2: 3 columns but the header has 2"):
        read_task_file(bad, "classification")


def test_conllu_skips_ranges_and_empty_nodes(tmp_path):
    p = tmp_path / "fr_pud-ud-test.conllu"
    p.write_text(CONLLU, encoding="utf-8")
    a, b = read_task_file(p, "token")
    assert a.tokens == ["Je", "vais", "à", "le", "marché", "."]
    assert a.label == ["PRON", "VERB", "ADP", "DET", "NOUN", "PUNCT"]
    assert (a.lang, a.uid, a.source) == ("fr", "n01001011", f"{p}:4")
    assert a.where(4) == f"{p}:10"  # line of the token 'marché'
    assert b.tokens == ["Bonjour", "!"] and b.uid == "w01002003"
    with pytest.raises(DataError, match="token-task data"):
        read_task_file(p, "classification")
    p2 = tmp_path / "en.conllu"
    p2.write_text("1\tHi\thi\t_\t_\t_\t0\troot\t_\t_\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"en\.conllu:1: token 'Hi' has no UPOS tag"):
        read_task_file(p2, "token")


def test_conll_ner(tmp_path):
    p = tmp_path / "de.train.conll"
    p.write_text("-DOCSTART- -X- O O\n\nBerlin NNP B-LOC\nist VBZ O\n\nAnna B-PER\n", encoding="utf-8")
    a, b = read_task_file(p, "token")
    assert a.tokens == ["Berlin", "ist"] and a.label == ["B-LOC", "O"] and a.lang == "de"
    assert b.tokens == ["Anna"] and b.label == ["B-PER"]


def test_directory_reading_grouping_and_labels(tmp_path):
    _write_jsonl(tmp_path / "en.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    _write_jsonl(tmp_path / "fr.jsonl", [{"text": "c", "label": "z"}])
    (tmp_path / "README.md").write_text("not data")
    exs = read_task_files(tmp_path, "classification")
    groups = group_by_lang(exs)
    assert list(groups) == ["en", "fr"] and len(groups["en"]) == 2
    assert label_list(groups["en"]) == ["x", "y"]
    with pytest.raises(DataError, match=r"fr\.jsonl:1: label 'z' does not occur in the training data"):
        check_labels(groups["fr"], label_list(groups["en"]))
    assert len(read_task_files(f"{tmp_path / 'en.jsonl'},{tmp_path / 'fr.jsonl'}", "classification")) == 3


def test_split_uids_is_a_deterministic_partition():
    uids = [f"s{i}" for i in range(100)]
    a = split_uids(uids, (0.7, 0.1, 0.2), seed=3)
    assert [len(p) for p in a] == [70, 10, 20]
    assert sorted(sum(a, [])) == sorted(uids)
    assert a == split_uids(list(reversed(uids)), (0.7, 0.1, 0.2), seed=3)  # order of input does not matter
    assert a != split_uids(uids, (0.7, 0.1, 0.2), seed=4)


def test_pud_genre_task(tmp_path):
    ud = tmp_path / "ud"
    ud.mkdir()
    (ud / "fr_pud-ud-test.conllu").write_text(CONLLU, encoding="utf-8")
    (path,) = build_pud_genre(ud, tmp_path / "genre")
    exs = read_task_file(path, "classification")
    assert [(e.text, e.label, e.uid, e.lang) for e in exs] == [
        ("Je vais au marché.", "news", "n01001011", "fr"), ("Bonjour !", "wikipedia", "w01002003", "fr")]


def test_real_ud_pud_is_parallel(shared_data):
    files = sorted((shared_data / "ud-pud").glob("*.conllu"))
    if not files:
        pytest.skip("no ud-pud data")
    per_lang = {}
    for f in files:
        exs = read_task_file(f, "token")
        per_lang[exs[0].lang] = exs
        assert all(len(e.tokens) == len(e.label) > 0 for e in exs)
    uids = {lang: [e.uid for e in exs] for lang, exs in per_lang.items()}
    first = next(iter(uids.values()))
    assert all(u == first for u in uids.values())  # same sentence ids, same order
    held = split_uids(first, (0.8, 0.2), seed=0)[1]
    assert all(len(select_uids(exs, held)) == len(held) for exs in per_lang.values())
