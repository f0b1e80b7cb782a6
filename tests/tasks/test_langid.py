"""`xlmkit langid`: deterministic per-language splits, language choice, the report."""

import json

import numpy as np
import pytest

from xlmkit.cli.main import main
from xlmkit.core.errors import DataError
from xlmkit.tasks.langid import read_langid_dir, split_language


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def langid_dir(tmp_path_factory):
    from xlmkit.data.synthetic import sentence

    d = tmp_path_factory.mktemp("langid")
    rng = np.random.default_rng(0)
    rows = [sentence(rng) for _ in range(40)]
    for lang in ("en", "fr", "de", "es"):
        (d / f"{lang}.txt").write_text("\n".join(r[lang] for r in rows) + "\n\n", encoding="utf-8")
    (d / "README.txt").write_text("not a language\n")
    return d


def test_read_dir_skips_non_language_files(langid_dir):
    data = read_langid_dir(langid_dir)
    assert sorted(data) == ["de", "en", "es", "fr"]
    path, lines = data["en"]
    assert path.name == "en.txt" and len([x for x in lines if x]) == 40


def test_split_is_deterministic_disjoint_and_complete(langid_dir):
    path, lines = read_langid_dir(langid_dir)["fr"]
    tr, dv, te = split_language(path, lines, "fr", 0.25, 0.1, 0, seed=0)
    assert (len(tr), len(dv), len(te)) == (26, 4, 10)
    srcs = [e.source for e in tr + dv + te]
    assert len(set(srcs)) == 40
    assert all(e.label == "fr" and e.lang == "fr" for e in tr)
    again = split_language(path, lines, "fr", 0.25, 0.1, 0, seed=0)
    assert [e.source for e in again[2]] == [e.source for e in te]
    other = split_language(path, lines, "fr", 0.25, 0.1, 0, seed=1)
    assert [e.source for e in other[2]] != [e.source for e in te]
    tr, dv, te = split_language(path, lines, "fr", 0.25, 0.1, 20, seed=0)
    assert len(tr) + len(dv) + len(te) == 20
    with pytest.raises(DataError, match=r"fr\.txt: 3 sentences give an empty dev split"):
        split_language(path, lines, "fr", 0.5, 0.1, 3, seed=0)


def test_langid_command_on_model_languages(tiny_random_run, langid_dir, tmp_path):
    out = tmp_path / "lid"
    rc = main(["langid", "--model", str(tiny_random_run), "--data", str(langid_dir), "--out", str(out),
               "--test-fraction", "0.25", "--set", "finetune.epochs=2", "--set", "finetune.precision=fp32"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["languages"] == ["de", "en", "fr"]  # the model's languages; es has a file but is not one
    per = res["scores"]["per_class"]
    assert set(per) == {"de", "en", "fr"} and all(per[x]["support"] == 10 for x in per)
    f1 = [per[x]["f1"] for x in per]
    assert res["scores"]["macro_f1"] == pytest.approx(sum(f1) / 3)
    cm = np.array(res["confusion_matrix"]["rows_true_cols_pred"])
    assert cm.shape == (3, 3) and cm.sum() == 30
    md = (out / "results.md").read_text()
    assert "| **macro** |" in md and "no language embedding at input" in md
    assert json.loads((out / "model" / "task.json").read_text())["use_langs"] is False


def test_langid_all_langs_and_errors(tiny_random_run, langid_dir, tmp_path, capsys):
    out = tmp_path / "lid"
    rc = main(["langid", "--model", str(tiny_random_run), "--data", str(langid_dir), "--out", str(out), "--all-langs",
               "--max-per-lang", "20", "--set", "finetune.max_steps=2", "--set", "finetune.precision=fp32"])
    assert rc == 0
    assert json.loads((out / "results.json").read_text())["languages"] == ["de", "en", "es", "fr"]
    rc = main(["langid", "--model", str(tiny_random_run), "--data", str(langid_dir), "--out", str(tmp_path / "x"),
               "--langs", "en,sw"])
    assert rc == 2 and "no file for language(s) sw" in capsys.readouterr().err
    only_es = tmp_path / "es_only"
    only_es.mkdir()
    (only_es / "es.txt").write_text("hola\n")
    rc = main(["langid", "--model", str(tiny_random_run), "--data", str(only_es), "--out", str(tmp_path / "y")])
    assert rc == 2 and "need at least 2" in capsys.readouterr().err


def test_langid_from_python(tiny_random_run, langid_dir, tmp_path):
    """`langid` is a typed function: the command without argparse, its results returned."""
    from xlmkit.tasks.langid import langid

    out = tmp_path / "lid"
    res = langid(tiny_random_run, langid_dir, out, langs=["eng", "es"], test_fraction=0.25, max_per_lang=20,
                 overrides=["finetune.epochs=1", "finetune.precision=fp32"])
    assert res == json.loads((out / "results.json").read_text())
    assert res["languages"] == ["en", "es"] and res["split"]["max_per_lang"] == 20
    assert sum(res["confusion_matrix"]["rows_true_cols_pred"][0]) == 5
    with pytest.raises(DataError, match="no file for language"):
        langid(tiny_random_run, langid_dir, tmp_path / "x", langs=["it"])
