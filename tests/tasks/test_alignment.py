"""`xlmkit evaluate --align DIR` (Libovický et al. 2020's learned projection): parallel sentences read
as prepare finds them, the least-squares affine map, and the evaluation's scores against a hand
computation with that map."""

import json

import numpy as np
import pytest
import torch
from _tiny_model import write_cls_jsonl

from xlmkit.cli.main import main
from xlmkit.data.synthetic import sentence
from xlmkit.tasks.evaluate import MIN_ALIGN_PAIRS, _test_pool, fit_affine, parallel_sentences, read_split_data
from xlmkit.tasks.finetune import TaskEncoder, load_finetuned, predict, score, sentence_features

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
CPU = torch.device("cpu")


def write_parallel(folder, name, a, b, n, seed):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [sentence(rng) for _ in range(n)]
    (folder / f"{name}.{a}-{b}.{a}").write_text("".join(r[a] + "\n" for r in rows), encoding="utf-8")
    (folder / f"{name}.{a}-{b}.{b}").write_text("".join(r[b] + "\n" for r in rows), encoding="utf-8")
    return rows


def test_fit_affine_recovers_a_known_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g)
    w, c = torch.randn(16, 16, generator=g), torch.randn(16, generator=g)
    weight, bias = fit_affine(x, x @ w + c, ridge=1e-8)
    assert torch.allclose(weight, w, atol=1e-3) and torch.allclose(bias, c, atol=1e-3)
    # the ridge shrinks the map towards 0 (and the bias towards y's mean): never a blow-up on few pairs
    weight, bias = fit_affine(x[:8], (x @ w + c)[:8])
    assert torch.isfinite(weight).all() and weight.norm() < w.norm()


def test_parallel_sentences_both_directions_every_corpus_evenly(tmp_path):
    a = write_parallel(tmp_path / "d1", "news", "en", "fr", 30, seed=0)
    b = write_parallel(tmp_path / "d2", "web", "fr", "en", 20, seed=1)  # the other way round
    (tmp_path / "d2" / "web.fr-en.fr").write_text(
        "".join(("" if i == 3 else r["fr"]) + "\n" for i, r in enumerate(b)), encoding="utf-8")  # an empty side
    pairs = parallel_sentences([tmp_path / "d1", tmp_path / "d2"], "en", "fr", 1000)
    want = [(r["en"], r["fr"]) for r in a] + [(r["en"], r["fr"]) for i, r in enumerate(b) if i != 3]
    assert pairs == want
    assert parallel_sentences([tmp_path / "d1", tmp_path / "d2"], "en", "fr", 5) == [want[i] for i in (0, 12, 24, 36, 48)]
    assert parallel_sentences([tmp_path / "d1"], "en", "de", 1000) == []


@pytest.fixture(scope="module")
def aligned_eval(tiny_random_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("align")
    d = tmp / "cls"
    write_cls_jsonl(d / "en.train.jsonl", 48, "en", seed=0)
    for lang in ("en", "fr", "de"):
        write_cls_jsonl(d / f"{lang}.test.jsonl", 20, lang, seed=1)
    para = tmp / "para"
    write_parallel(para, "corpus", "en", "fr", 150, seed=2)  # fr: aligned; de: no parallel text, centered
    out = tmp / "eval"
    rc = main(["evaluate", "--model", str(tiny_random_run), "--task", "classification", "--data", str(d),
               "--out", str(out), "--align", str(para), "--align-sentences", "120", "--center",
               "--set", "finetune.epochs=2", "--set", "finetune.precision=fp32"])
    assert rc == 0
    return d, para, out


def test_align_is_recorded(aligned_eval):
    d, para, out = aligned_eval
    res = json.loads((out / "results.json").read_text())
    assert res["alignment"] == {"dirs": [str(para)], "pairs": {"fr": 120, "de": 0}}
    assert [res["languages"][lang].get("aligned_pairs") for lang in ("en", "fr", "de")] == [None, 120, 0]
    md = (out / "results.md").read_text()
    assert "alignment: affine maps onto en's features" in md and "fr 120 pairs" in md
    assert "no (or too little) parallel text: de" in md and "unless aligned" in md


def test_align_scores_equal_a_hand_computation(aligned_eval):
    d, para, out = aligned_eval
    from xlmkit.tasks.evaluate import evaluate_language
    from xlmkit.tasks.io import Example

    ftm = load_finetuned(out / "model")
    model, labels, ft = ftm.model, list(ftm.spec.labels), ftm.config.finetune
    enc = TaskEncoder(ftm.tokenizer, ftm.vocab, ftm.spec, model.encoder)
    pairs = parallel_sentences([para], "en", "fr", 120)
    feats = {}
    for lang, texts in (("en", [a for a, _ in pairs]), ("fr", [b for _, b in pairs])):
        data, _ = enc.encode([Example(lang=lang, label=labels[0], text=t) for t in texts])
        feats[lang] = sentence_features(model, data, enc.pad_id, 7, CPU, "fp32")
    weight, bias = fit_affine(feats["fr"], feats["en"])
    # a head that splits the aligned French features in half along a random direction
    exs = _test_pool(read_split_data(d, "classification"), "fr")
    data, _ = enc.encode(exs)
    test_feats = sentence_features(model, data, enc.pad_id, 7, CPU, "fp32")
    w = torch.randn(test_feats.shape[1], generator=torch.Generator().manual_seed(0))
    b = -((test_feats @ weight + bias) @ w).median()
    with torch.no_grad():
        model.head.weight.copy_(torch.stack([w, -w]))
        model.head.bias.copy_(torch.stack([b, -b]))
        want = model.head(test_feats @ weight + bias).argmax(-1).tolist()
        plain = model.head(test_feats).argmax(-1).tolist()
    assert want != plain  # else this test could not tell the map from none
    assert predict(model, data, enc.pad_id, 8, CPU, "fp32", affine=(weight, bias)) == want
    row = evaluate_language(model, enc, exs, labels, labels[0], ft, CPU, False, "error", None, (weight, bias))
    assert row["accuracy"] == pytest.approx(score(exs, want, labels)["accuracy"])


def test_align_refuses_the_pair_task_and_too_few_sentences(aligned_eval, tmp_path, capsys):
    from types import SimpleNamespace

    from xlmkit.core.errors import XlmkitError
    from xlmkit.tasks.evaluate import fit_alignments

    d, para, out = aligned_eval
    rc = main(["evaluate", "--model", str(out / "model"), "--data", str(d), "--out", str(tmp_path / "e"),
               "--align", str(para), "--align-sentences", str(MIN_ALIGN_PAIRS - 1), "--set", "finetune.precision=fp32"])
    assert rc == 2 and f"--align-sentences must be >= {MIN_ALIGN_PAIRS}" in capsys.readouterr().err
    pair_encoder = SimpleNamespace(spec=SimpleNamespace(task="pair"))
    with pytest.raises(XlmkitError, match="the pair task is not supported"):
        fit_alignments(None, pair_encoder, [para], "en", ["fr"], ["a"], None, CPU, 200)


def test_sentence_features_of_a_token_model_are_each_sentences_mean_state(tiny_random_run, tmp_path):
    from _tiny_model import write_pos_jsonl

    from xlmkit.tasks.finetune import collate
    from xlmkit.tasks.io import read_task_file

    pos = write_pos_jsonl(tmp_path / "pos", 12, seed=0)
    assert main(["finetune", "--model", str(tiny_random_run), "--task", "token", "--train", str(pos / "en.jsonl"),
                 "--out", str(tmp_path / "ft"), "--set", "finetune.epochs=1", "--set", "finetune.precision=fp32"]) == 0
    tm = load_finetuned(tmp_path / "ft")
    enc = TaskEncoder(tm.tokenizer, tm.vocab, tm.spec, tm.model.encoder)
    data, _ = enc.encode(read_task_file(pos / "de.jsonl", "token"))
    assert len({len(e.ids) for e in data}) > 1  # batches pad
    got = sentence_features(tm.model, data, enc.pad_id, 5, CPU, "fp32")
    tm.model.eval()
    with torch.no_grad():
        want = torch.stack([tm.model.features(**{k: v for k, v in collate([e], enc.pad_id).items() if k != "target"})[0]
                            .mean(0) for e in data])
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
