"""Per-language mean centering in `xlmkit evaluate --center` (Libovický et al. 2020): the features'
mean, the shift before the head, and the evaluation's scores against a hand computation."""

import json

import pytest
import torch
from _tiny_model import write_cls_jsonl, write_pos_jsonl

from xlmkit.cli.main import main
from xlmkit.tasks.finetune import load_finetuned, mean_features, predict, score
from xlmkit.tasks.evaluate import read_split_data, _test_pool

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cls_eval(tiny_random_run, tmp_path_factory):
    """A classification model fine-tuned on en, evaluated on en / fr / de with --center."""
    tmp = tmp_path_factory.mktemp("center")
    d = tmp / "cls"
    write_cls_jsonl(d / "en.train.jsonl", 48, "en", seed=0)
    for lang in ("en", "fr", "de"):
        write_cls_jsonl(d / f"{lang}.test.jsonl", 20, lang, seed=1)
    out = tmp / "eval"
    rc = main(["evaluate", "--model", str(tiny_random_run), "--task", "classification", "--data", str(d),
               "--out", str(out), "--center", "--set", "finetune.epochs=2", "--set", "finetune.precision=fp32"])
    assert rc == 0
    return d, out


def _features(model, data, pad_id):
    """Every example's features, one at a time (no padding at all)."""
    from xlmkit.tasks.finetune import collate

    rows = []
    model.eval()
    with torch.no_grad():
        for enc in data:
            batch = {k: v for k, v in collate([enc], pad_id).items() if k != "target"}
            rows.append(model.features(**batch)[0])
    return rows


def test_mean_features_ignores_padding(cls_eval, tiny_random_run, tmp_path):
    d, out = cls_eval
    ftm = load_finetuned(out / "model")
    from xlmkit.tasks.finetune import TaskEncoder

    enc = TaskEncoder(ftm.tokenizer, ftm.vocab, ftm.spec, ftm.model.encoder)
    data, _ = enc.encode(_test_pool(read_split_data(d, "classification"), "fr"))
    assert len({len(e.ids) for e in data}) > 1  # batches pad
    want = torch.stack(_features(ftm.model, data, enc.pad_id)).mean(0)
    got = mean_features(ftm.model, data, enc.pad_id, 8, CPU, "fp32")
    assert torch.allclose(got, want, atol=1e-5)

    # token task: the mean over every real token of every sentence, pads excluded
    pos = write_pos_jsonl(tmp_path / "pos", 12, seed=0)
    rc = main(["finetune", "--model", str(tiny_random_run), "--task", "token", "--train", str(pos / "en.jsonl"),
               "--out", str(tmp_path / "ft"), "--set", "finetune.epochs=1", "--set", "finetune.precision=fp32"])
    assert rc == 0
    tm = load_finetuned(tmp_path / "ft")
    tenc = TaskEncoder(tm.tokenizer, tm.vocab, tm.spec, tm.model.encoder)
    from xlmkit.tasks.io import read_task_file

    tdata, _ = tenc.encode(read_task_file(pos / "de.jsonl", "token"))
    states = torch.cat(_features(tm.model, tdata, tenc.pad_id))  # (all tokens, D)
    assert states.shape[0] == sum(len(e.ids) for e in tdata)
    assert torch.allclose(mean_features(tm.model, tdata, tenc.pad_id, 5, CPU, "fp32"), states.mean(0), atol=1e-5)


def test_shift_moves_the_features_before_the_head(cls_eval):
    d, out = cls_eval
    ftm = load_finetuned(out / "model")
    from xlmkit.tasks.finetune import TaskEncoder

    enc = TaskEncoder(ftm.tokenizer, ftm.vocab, ftm.spec, ftm.model.encoder)
    data, _ = enc.encode(_test_pool(read_split_data(d, "classification"), "de"))
    plain = predict(ftm.model, data, enc.pad_id, 8, CPU, "fp32")
    dim = ftm.model.head.in_features
    assert predict(ftm.model, data, enc.pad_id, 8, CPU, "fp32", shift=torch.zeros(dim)) == plain
    # subtracting -c * w_k adds c * |w_k|^2 to class k's logit: every example goes to class k
    for k in range(len(ftm.spec.labels)):
        w = ftm.model.head.weight[k].detach()
        assert set(predict(ftm.model, data, enc.pad_id, 8, CPU, "fp32", shift=-1e3 * w / w.norm())) == {k}


def test_center_scores_equal_a_hand_computation(cls_eval, tmp_path):
    d, out = cls_eval
    from xlmkit.tasks.evaluate import evaluate_language
    from xlmkit.tasks.finetune import TaskEncoder

    ftm = load_finetuned(out / "model")
    model, labels, ft = ftm.model, list(ftm.spec.labels), ftm.config.finetune
    enc = TaskEncoder(ftm.tokenizer, ftm.vocab, ftm.spec, model.encoder)
    split = read_split_data(d, "classification")
    feats, data = {}, {}
    for lang in ("en", "fr", "de"):
        data[lang], _ = enc.encode(_test_pool(split, lang))
        feats[lang] = torch.stack(_features(model, data[lang], enc.pad_id))
    # a head that splits the English test set in half along a random direction (the tiny fine-tuned
    # model predicts one class everywhere, with or without centering)
    w = torch.randn(feats["en"].shape[1], generator=torch.Generator().manual_seed(0))
    b = -(feats["en"] @ w).median()
    with torch.no_grad():
        model.head.weight.copy_(torch.stack([w, -w]))
        model.head.bias.copy_(torch.stack([b, -b]))
    reference = mean_features(model, data["en"], enc.pad_id, 8, CPU, "fp32")
    for lang in ("fr", "de"):
        moved = feats[lang] - feats[lang].mean(0) + feats["en"].mean(0)
        with torch.no_grad():
            pred, unmoved = model.head(moved).argmax(-1).tolist(), model.head(feats[lang]).argmax(-1).tolist()
        assert pred != unmoved  # else this test could not tell centering from none
        exs = _test_pool(split, lang)
        want, plain = score(exs, pred, labels), score(exs, unmoved, labels)
        row = evaluate_language(model, enc, exs, labels, labels[0], ft, CPU, False, "error", reference)
        assert row["accuracy"] == pytest.approx(want["accuracy"]) and row["macro_f1"] == pytest.approx(want["macro_f1"])
        row = evaluate_language(model, enc, exs, labels, labels[0], ft, CPU, False, "error", None)
        assert row["accuracy"] == pytest.approx(plain["accuracy"])


def test_center_is_recorded_and_leaves_the_training_language(cls_eval, tmp_path):
    d, out = cls_eval
    res = json.loads((out / "results.json").read_text())
    assert res["centering"] == "en" and "centering: every language moved to the mean features of en" in (
        out / "results.md").read_text()
    again = tmp_path / "plain"
    assert main(["evaluate", "--model", str(out / "model"), "--data", str(d), "--out", str(again),
                 "--set", "finetune.precision=fp32"]) == 0
    plain = json.loads((again / "results.json").read_text())
    assert plain["centering"] is None
    assert plain["languages"]["en"]["accuracy"] == res["languages"]["en"]["accuracy"]


def test_center_needs_the_training_language_among_the_tested(cls_eval, tmp_path, capsys):
    d, out = cls_eval
    rc = main(["evaluate", "--model", str(out / "model"), "--data", str(d / "fr.test.jsonl"), "--out",
               str(tmp_path / "e"), "--center", "--set", "finetune.precision=fp32"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--center moves every language to the mean of 'en', which has no test data here" in err
    assert "languages tested: fr" in err
