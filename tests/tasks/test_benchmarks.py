"""Readers for benchmark folders with one sub-folder per language (xlmkit.tasks.benchmarks) and the
zero-shot protocol on them."""

import json

import numpy as np
import pytest

from xlmkit.tasks.benchmarks import folder_language, is_language_folders, read_language_folders
from xlmkit.cli.main import main
from xlmkit.core.errors import DataError


def test_folder_names_map_to_language_ids():
    assert folder_language("eng_Latn") == "en"
    assert folder_language("zho_Hans") == "zh"
    assert folder_language("zho_Hant") == "zh-hant"  # not the usual script: kept
    assert folder_language("rus_Cyrl") == "ru"
    # FLORES names a macrolanguage's standard member: it is the macrolanguage (parallel text `en-ar`,
    # the model's `ar`); other members stay themselves
    assert folder_language("arb_Arab") == "ar" and folder_language("swh_Latn") == "sw"
    assert folder_language("arz_Arab") == "arz" and folder_language("prs_Arab") == "prs"
    assert folder_language("mya_Mymr") == "my"  # a 639-3 code outside the corpora table: still its 639-1
    assert folder_language("german") == "de" and folder_language("Portuguese") == "pt"
    with pytest.raises(DataError, match="language code"):
        folder_language("misc stuff")


def write_sib_like(root, langs=("eng_Latn", "deu_Latn", "fra_Latn"), n_train=40, n_dev=12, seed=0):
    """SIB-200's layout with the synthetic grammar: is the subject an animal?"""
    from xlmkit.data.synthetic import sentence

    code = {"eng_Latn": "en", "deu_Latn": "de", "fra_Latn": "fr"}
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train + n_dev):
        s = sentence(rng)
        subject = s["en"].rstrip(".").lower().split()[2]
        rows.append((i, "animal" if subject in ("cat", "dog", "bird") else "other", s))
    for lang in langs:
        d = root / lang
        d.mkdir(parents=True)
        for split, part in (("train", rows[:n_train]), ("dev", rows[n_train:])):
            lines = ["index_id\tcategory\ttext"] + [f"{i}\t{label}\t{s[code[lang]]}" for i, label, s in part]
            (d / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_tsv_language_folders(tmp_path):
    root = write_sib_like(tmp_path / "sib")
    assert is_language_folders(root) and not is_language_folders(tmp_path / "nothing")
    data = read_language_folders(root)
    assert sorted(data) == ["dev", "train"] and sorted(data["train"]) == ["de", "en", "fr"]
    assert len(data["train"]["en"]) == 40 and len(data["dev"]["fr"]) == 12
    ex = data["dev"]["de"][0]
    assert ex.lang == "de" and ex.label in ("animal", "other") and ex.uid == "40" and ex.source.endswith("dev.tsv:2")
    assert data["dev"]["de"][0].uid == data["dev"]["en"][0].uid  # the same sentence in every language


def test_text_and_label_files_side_by_side(tmp_path):
    d = tmp_path / "sentiment" / "english"
    d.mkdir(parents=True)
    (d / "train_text.txt").write_text("good day\nbad day\nmeh\n", encoding="utf-8")
    (d / "train_labels.txt").write_text("2\n0\n1\n", encoding="utf-8")
    (d / "val_text.txt").write_text("fine\n", encoding="utf-8")
    (d / "val_labels.txt").write_text("2\n", encoding="utf-8")
    data = read_language_folders(tmp_path / "sentiment")
    assert [(e.text, e.label) for e in data["train"]["en"]] == [("good day", "2"), ("bad day", "0"), ("meh", "1")]
    assert [e.text for e in data["dev"]["en"]] == ["fine"]
    (d / "val_labels.txt").write_text("2\n1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"val_text.txt has 1 lines but .*val_labels.txt has 2"):
        read_language_folders(tmp_path / "sentiment")
    (d / "val_labels.txt").unlink()
    with pytest.raises(DataError, match=r"val_text.txt: no label file beside it \(expected val_labels.txt\)"):
        read_language_folders(tmp_path / "sentiment")


def test_two_folders_of_one_language_are_an_error(tmp_path):
    for name in ("english", "eng_Latn"):
        (tmp_path / "x" / name).mkdir(parents=True)
        (tmp_path / "x" / name / "train.tsv").write_text("text\tlabel\na\tb\n", encoding="utf-8")
    with pytest.raises(DataError, match="are both language 'en'"):
        read_language_folders(tmp_path / "x")


def test_zero_shot_on_language_folders_tests_every_language_on_dev(tiny_random_run, tmp_path):
    root = write_sib_like(tmp_path / "sib")
    out = tmp_path / "eval"
    rc = main(["evaluate", "--model", str(tiny_random_run), "--task", "classification", "--data", str(root),
               "--test-split", "dev", "--out", str(out), "--set", "finetune.epochs=1"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert {lang: r["n"] for lang, r in res["languages"].items()} == {"en": 12, "de": 12, "fr": 12}
    assert res["finetune"]["train_examples"] == 40 and res["finetune"]["dev_examples"] == 12


def test_the_shared_benchmarks_read_as_published(shared_data):
    sib, senti = shared_data / "classification" / "sib-200", shared_data / "classification" / "sentiment"
    if not sib.is_dir() or not senti.is_dir():
        pytest.skip("no classification sets in shared data")
    data = read_language_folders(sib)
    assert len(data["train"]) == 24 and {len(v) for v in data["train"].values()} == {701}
    assert {len(v) for v in data["dev"].values()} == {99} and {"zh", "zh-hant", "ru", "en", "ar"} <= set(data["dev"])
    assert len({e.label for e in data["train"]["en"]}) == 7
    data = read_language_folders(senti)
    assert sorted(data["train"]) == ["ar", "de", "en", "es", "fr", "hi", "it", "pt"]
    assert {len(v) for v in data["train"].values()} == {1839} and {len(v) for v in data["dev"].values()} == {324}
    assert {e.label for e in data["train"]["de"]} == {"0", "1", "2"}


def test_xnli_style_protocol_trains_on_english_dev(tiny_random_run, tmp_path):
    """Train on en.dev; test en and de on their test files, zh (dev only) on its dev file."""
    from xlmkit.data.synthetic import sentence

    rng = np.random.default_rng(0)
    d = tmp_path / "xnli"
    d.mkdir()
    for name, lang, n in (("en.dev", "en", 40), ("en.test", "en", 10), ("de.test", "de", 8), ("zh.dev", "zh", 6)):
        lines = ["genre\tlabel\tpremise\thypothesis"]
        for i in range(n):
            a, b = sentence(rng), sentence(rng)
            src = "en" if lang == "zh" else lang  # the grammar has no Chinese: any text will do
            lines.append(f"g\t{'entailment' if i % 2 else 'neutral'}\t{a[src]}\t{b[src]}")
        (d / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "eval"
    rc = main(["evaluate", "--model", str(tiny_random_run), "--task", "pair", "--data", str(d), "--train-split", "dev",
               "--unknown-lang-id", "en", "--out", str(out), "--set", "finetune.epochs=1"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert {lang: r["n"] for lang, r in res["languages"].items()} == {"en": 10, "de": 8, "zh": 6}
    assert res["finetune"]["train_examples"] + res["finetune"]["dev_examples"] == 40
