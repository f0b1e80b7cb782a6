"""`xlmkit finetune` and `xlmkit evaluate` on a tiny random-init model and synthetic task data."""

import json

import numpy as np
import pytest
import torch
from _tiny_model import make_tiny_run, write_cls_jsonl, write_pos_jsonl
from tokenizers import Tokenizer

from xlmkit.train.checkpoint import load_model
from xlmkit.cli.main import main
from xlmkit.core.config import ConfigError, load_config
from xlmkit.core.errors import DataError
from xlmkit.tasks.finetune import (
    IGNORE,
    TaskEncoder,
    TaskSpec,
    build_optimizer,
    finetune,
    freeze_layers,
    load_finetuned,
    predict,
)
from xlmkit.tasks.io import Example, read_task_file


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def loaded_tok(tiny_random_run):
    loaded = load_model(tiny_random_run)
    return loaded, Tokenizer.from_file(str(loaded.tokenizer_path))


def _ft(**kw):
    base = dict(batch_size=16, epochs=1, lr=1e-3, head_lr=1e-3, max_len=64, precision="fp32", device="cpu")
    return load_config("tiny", [f"finetune.{k}={v}" for k, v in (base | kw).items()]).finetune


# ----------------------------------------------------------------------------------------------
# Encoding


def test_classification_and_pair_layouts(loaded_tok):
    loaded, tok = loaded_tok
    spec = TaskSpec("classification", ("a", "b"))
    enc = TaskEncoder(tok, loaded.vocab, spec, loaded.model)
    (e,), stats = enc.encode([Example(lang="fr", label="b", text="Le chat voit.")])
    body = tok.encode("Le chat voit.", add_special_tokens=False).ids
    assert e.ids.tolist() == [2, *body, 2]  # </s> text </s>, as in pretraining
    assert e.langs.tolist() == [loaded.vocab["lang2id"]["fr"]] * len(e.ids)
    assert e.target == 1 and stats.truncated == 0
    spec = TaskSpec("pair", ("0", "1"))
    enc = TaskEncoder(tok, loaded.vocab, spec, loaded.model)
    (e,), _ = enc.encode([Example(lang="de", label="1", text="Der Hund.", text_b="Das Haus.")])
    a = tok.encode("Der Hund.", add_special_tokens=False).ids
    b = tok.encode("Das Haus.", add_special_tokens=False).ids
    assert e.ids.tolist() == [2, *a, 2, 2, *b, 2]  # the TLM layout
    assert e.positions.tolist() == list(range(len(a) + 2)) + list(range(len(b) + 2))


def test_token_labels_on_first_content_piece_and_truncation(loaded_tok):
    loaded, tok = loaded_tok
    words = ["The", "Schmetterlingsgarten", "sees", "привет"]
    pieces = [tok.encode([w], is_pretokenized=True, add_special_tokens=False).tokens for w in words]
    assert pieces[1][0] == "▁" and len(pieces[1]) > 3  # a bare word-boundary piece, then the word
    assert pieces[3][0] == "▁" and pieces[3][1] == "<unk>"  # a script the vocabulary does not know
    labels = ["DET", "NOUN", "VERB", "X"]
    spec = TaskSpec("token", ("DET", "NOUN", "VERB", "X"))
    enc = TaskEncoder(tok, loaded.vocab, spec, loaded.model)
    (e,), stats = enc.encode([Example(lang="en", label=labels, tokens=words)])
    starts = np.cumsum([1] + [len(p) for p in pieces])[:-1]  # position of each word's first piece
    content = [int(st) + (1 if p[0] == "▁" and len(p) > 1 else 0) for st, p in zip(starts, pieces)]
    expected = np.full(len(e.ids), IGNORE)
    expected[content] = [0, 1, 2, 3]
    assert e.target.tolist() == expected.tolist()  # one label per word, on its first content piece
    assert e.word_positions.tolist() == content
    assert e.ids[0] == 2 and e.ids[-1] == 2 and stats.truncated == 0
    # cut to 8 ids (6 between the separators): the third and fourth words lose their labels
    enc = TaskEncoder(tok, loaded.vocab, TaskSpec("token", spec.labels, max_len=8), loaded.model)
    (e,), stats = enc.encode([Example(lang="en", label=labels, tokens=words)])
    assert len(e.ids) == 8 and e.word_positions.tolist() == content[:2]
    assert stats.truncated == 1 and stats.dropped_labels == 2 and e.dropped_words == 2


def test_max_len_is_capped_by_model_positions(tiny_random_run, loaded_tok):
    loaded, tok = loaded_tok
    spec = TaskSpec("classification", ("a", "b"), max_len=1000)
    enc = TaskEncoder(tok, loaded.vocab, spec, loaded.model)
    assert enc.max_len == loaded.model.cfg.max_positions == 64
    (e,), stats = enc.encode([Example(lang="en", label="a", text="The cat sees the dog. " * 40)])
    assert len(e.ids) == 64 and e.ids[-1] == 2 and stats.truncated == 1


def test_unknown_language_and_label_errors(loaded_tok):
    loaded, tok = loaded_tok
    enc = TaskEncoder(tok, loaded.vocab, TaskSpec("classification", ("a", "b")), loaded.model)
    with pytest.raises(DataError, match=r"x\.jsonl:3: language 'ru' has no language embedding"):
        enc.encode([Example(lang="ru", label="a", text="привет", source="x.jsonl:3")])
    with pytest.raises(DataError, match=r"x\.jsonl:5: label 'c' does not occur in the training labels"):
        enc.encode([Example(lang="en", label="c", text="hi", source="x.jsonl:5")])
    # langid-style: no language embedding given, any language is fine
    enc = TaskEncoder(tok, loaded.vocab, TaskSpec("classification", ("a", "b"), use_langs=False), loaded.model)
    (e,), _ = enc.encode([Example(lang="ru", label="a", text="привет")])
    assert e.langs is None


def test_model_without_language_embeddings_takes_any_language(tmp_path):
    run = make_tiny_run(tmp_path / "xlmr", use_lang_emb=False)
    loaded = load_model(run)
    assert loaded.model.lang_embeddings is None
    tok = Tokenizer.from_file(str(loaded.tokenizer_path))
    enc = TaskEncoder(tok, loaded.vocab, TaskSpec("classification", ("a", "b")), loaded.model)
    (e,), _ = enc.encode([Example(lang="sw", label="a", text="habari")])
    assert e.langs is None


# ----------------------------------------------------------------------------------------------
# Training


def test_freeze_layers_and_two_learning_rates(tiny_random_run):
    from xlmkit.tasks.finetune import TaskModel

    loaded = load_model(tiny_random_run)
    model = TaskModel(loaded.model, 3, "classification")
    freeze_layers(model.encoder, 1)
    assert not model.encoder.token_embeddings.weight.requires_grad
    assert not any(p.requires_grad for p in model.encoder.layers[0].parameters())
    assert all(p.requires_grad for p in model.encoder.layers[1].parameters())
    opt = build_optimizer(model, _ft(lr=1e-5, head_lr=1e-2), torch.device("cpu"))
    head = {id(p) for p in model.head.parameters()}
    for g in opt.param_groups:
        is_head = {id(p) for p in g["params"]} <= head
        assert g["lr"] == (1e-2 if is_head else 1e-5)
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.encoder.layers[0].ffn.lin1.weight) not in trained
    with pytest.raises(ConfigError, match="only 2 layers"):
        freeze_layers(model.encoder, 3)


def test_finetune_cli_writes_a_loadable_model(tiny_random_run, tmp_path, capsys):
    train = write_cls_jsonl(tmp_path / "en.train.jsonl", 64, "en", seed=1)
    dev = write_cls_jsonl(tmp_path / "en.dev.jsonl", 32, "en", seed=2)
    out = tmp_path / "ft"
    rc = main(["finetune", "--model", str(tiny_random_run), "--train", str(train), "--dev", str(dev), "--task",
               "classification", "--out", str(out), "--set", "finetune.epochs=2", "--set", "finetune.freeze_layers=1",
               "--set", "finetune.precision=fp32", "--set", "finetune.device=cpu"])
    assert rc == 0
    for f in ("config.json", "vocab.json", "tokenizer.json", "task.json", "metrics.jsonl",
              "checkpoints/best/model.safetensors", "checkpoints/best/head.safetensors", "checkpoints/best/state.json"):
        assert (out / f).is_file(), f
    task = json.loads((out / "task.json").read_text())
    assert task["task"] == "classification" and task["labels"] == ["animal", "other"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["finetune"]["freeze_layers"] == 1 and cfg["finetune"]["epochs"] == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records] == ["train", "dev", "train", "dev"]
    # frozen layer 0 kept its pretrained weights; the encoder reloads with checkpoint.load_model
    base, tuned = load_model(tiny_random_run), load_model(out)
    assert torch.equal(base.model.layers[0].ffn.lin1.weight, tuned.model.layers[0].ffn.lin1.weight)
    assert not torch.equal(base.model.layers[1].ffn.lin1.weight, tuned.model.layers[1].ffn.lin1.weight)
    # the fine-tuned model predicts the same after reloading
    ftm = load_finetuned(out)
    exs = read_task_file(dev, "classification")
    data, _ = TaskEncoder(ftm.tokenizer, ftm.vocab, ftm.spec, ftm.model.encoder).encode(exs)
    preds = predict(ftm.model, data, 1, 16, torch.device("cpu"), "fp32")
    again = predict(load_finetuned(out).model, data, 1, 7, torch.device("cpu"), "fp32")
    assert preds == again and set(preds) <= {0, 1}


def test_finetune_learns_and_stops_early(tiny_random_run, tmp_path):
    """Synthetic POS tagging: the tagger beats the majority tag on its own language; with patience 1 and
    learning rates that do nothing, training stops after the second epoch."""
    from xlmkit.tasks import scores as M
    from xlmkit.tasks.finetune import score

    data = write_pos_jsonl(tmp_path / "pos", 160, seed=0, langs=("en",))
    exs = read_task_file(data / "en.jsonl", "token")
    train, dev = exs[:128], exs[128:]
    loaded = load_model(tiny_random_run)
    res = finetune(loaded, _ft(task="token", epochs=3, lr=3e-3, head_lr=3e-3, warmup_ratio=0.0), train, dev,
                   log=lambda s: None)
    preds = predict(res.model, res.encoder.encode(dev)[0], 1, 32, torch.device("cpu"), "fp32")
    s = score(dev, preds, res.spec.labels)
    gold = [t for ex in dev for t in ex.label]
    majority = M.accuracy(gold, [M.majority_label(gold)] * len(gold))
    assert s["token_accuracy"] > majority + 0.2
    loaded = load_model(tiny_random_run)
    res = finetune(loaded, _ft(task="token", epochs=10, lr=1e-12, head_lr=1e-12, patience=1), train[:32], dev,
                   log=lambda s: None)
    assert max(r["epoch"] for r in res.history) == 2 and res.best["epoch"] == 1


def test_empty_and_single_label_training_sets(tiny_random_run):
    loaded = load_model(tiny_random_run)
    with pytest.raises(DataError, match="no training examples"):
        finetune(loaded, _ft(), [], None, log=lambda s: None)
    with pytest.raises(DataError, match="single label"):
        finetune(loaded, _ft(), [Example(lang="en", label="a", text="x")], None, log=lambda s: None)


def test_only_finetune_settings_can_be_overridden(tiny_random_run, tmp_path, capsys):
    train = write_cls_jsonl(tmp_path / "en.jsonl", 8, "en")
    rc = main(["finetune", "--model", str(tiny_random_run), "--train", str(train), "--out", str(tmp_path / "o"),
               "--set", "model.dim=32"])
    assert rc == 2
    assert "only finetune.* settings" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Zero-shot evaluation


def test_evaluate_parallel_held_out_split(tiny_random_run, tmp_path, capsys):
    data = write_pos_jsonl(tmp_path / "pos", 60, seed=0)
    out = tmp_path / "eval"
    rc = main(["evaluate", "--model", str(tiny_random_run), "--task", "token", "--data", str(data), "--out", str(out),
               "--train-lang", "en", "--train-fraction", "0.75", "--per-class",
               "--set", "finetune.epochs=1", "--set", "finetune.precision=fp32"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["languages"]) == ["en", "de", "fr"]
    n_test = {lang: r["n_sequences"] for lang, r in res["languages"].items()}
    assert n_test == {"en": 15, "de": 15, "fr": 15}  # the same 25% of the ids in every language
    assert res["finetune"]["train_examples"] + res["finetune"]["dev_examples"] == 45
    for r in res["languages"].values():
        for key in ("token_accuracy", "macro_precision", "macro_recall", "macro_f1", "majority_accuracy",
                    "majority_macro_f1", "per_class"):
            assert key in r
    assert set(res["average_zero_shot"]) >= {"token_accuracy", "macro_f1"}
    avg = (res["languages"]["de"]["macro_f1"] + res["languages"]["fr"]["macro_f1"]) / 2
    assert res["average_zero_shot"]["macro_f1"] == pytest.approx(avg)
    md = (out / "results.md").read_text()
    assert "| en (train) |" in md and "| **avg** |" in md and "## de: per class" in md
    assert (out / "model" / "task.json").is_file()
    # the fine-tuned model can be evaluated again without training
    rc = main(["evaluate", "--model", str(out / "model"), "--data", str(data / "de.jsonl"), "--out",
               str(tmp_path / "eval2"), "--set", "finetune.precision=fp32"])
    assert rc == 0
    res2 = json.loads((tmp_path / "eval2" / "results.json").read_text())
    assert res2["languages"]["de"]["n_sequences"] == 60


def test_evaluate_unknown_test_label_is_an_error(tiny_random_run, tmp_path, capsys):
    d = tmp_path / "cls"
    write_cls_jsonl(d / "en.train.jsonl", 32, "en")
    write_cls_jsonl(d / "fr.test.jsonl", 8, "fr")
    with open(d / "fr.test.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "Le chat.", "label": "vegetable", "lang": "fr"}) + "\n")
    args = ["evaluate", "--model", str(tiny_random_run), "--task", "classification", "--data", str(d),
            "--out", str(tmp_path / "e"), "--set", "finetune.epochs=1", "--set", "finetune.precision=fp32"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "fr.test.jsonl:9: label 'vegetable' does not occur in the training labels" in err
    assert main(args[:-4] + ["--out", str(tmp_path / "e2"), "--unknown-labels", "ignore", "--set",
                             "finetune.epochs=1"]) == 0
    res = json.loads((tmp_path / "e2" / "results.json").read_text())
    assert res["languages"]["fr"]["n"] == 8 and "vegetable" in res["languages"]["fr"]["notes"][0]


def test_evaluate_errors_on_missing_training_language(tiny_random_run, tmp_path, capsys):
    data = write_pos_jsonl(tmp_path / "pos", 10, langs=("fr", "de"))
    rc = main(["evaluate", "--model", str(tiny_random_run), "--task", "token", "--data", str(data), "--out",
               str(tmp_path / "e")])
    assert rc == 2
    assert "no data for the training language 'en'" in capsys.readouterr().err


def test_evaluate_non_parallel_data_needs_test_all(tiny_random_run, tmp_path, capsys):
    data = write_pos_jsonl(tmp_path / "pos", 20, parallel_ids=False)
    # ids are line indices: held-out indices exist in every file, so this runs
    (data / "de.jsonl").write_text((data / "de.jsonl").read_text().replace('"tokens"', '"id": "other", "tokens"', 1))
    lines = (data / "de.jsonl").read_text().splitlines()
    (data / "de.jsonl").write_text("\n".join(
        json.dumps(json.loads(line) | {"id": f"d{i}"}) for i, line in enumerate(lines)) + "\n")
    base = ["evaluate", "--model", str(tiny_random_run), "--task", "token", "--data", str(data),
            "--set", "finetune.epochs=1", "--set", "finetune.precision=fp32"]
    assert main(base + ["--out", str(tmp_path / "e1")]) == 2
    assert "the data is not parallel (use --test-all)" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "e2"), "--test-all"]) == 0
    res = json.loads((tmp_path / "e2" / "results.json").read_text())
    assert res["languages"]["de"]["n_sequences"] == 20 and res["languages"]["en"]["n_sequences"] == 4


@pytest.mark.slow
def test_pos_zero_shot_on_real_ud_pud(tiny_random_run, shared_data, tmp_path):
    """Real UD PUD through the whole pipeline (untrained tiny model: only checks that it runs)."""
    rc = main(["evaluate", "--model", str(tiny_random_run), "--task", "token", "--data", str(shared_data / "ud-pud"),
               "--out", str(tmp_path / "pud"), "--set", "finetune.max_steps=5", "--train-fraction", "0.2",
               "--unknown-lang-id", "en"])
    assert rc == 0
    res = json.loads((tmp_path / "pud" / "results.json").read_text())
    assert set(res["languages"]) == {"en", "de", "fr", "ru", "zh"}
    assert all(r["n_sequences"] == 800 for r in res["languages"].values())
    assert "language id 1" in res["languages"]["ru"]["notes"][0]


def test_scores_ignore_words_cut_by_truncation():
    from xlmkit.tasks.finetune import score

    ex = Example(lang="en", label=["A", "B", "A"], tokens=["x", "y", "z"])
    s = score([ex], [np.array([0, 0])], ["A", "B"])
    assert s["n_tokens"] == 2 and s["dropped_words"] == 1 and s["token_accuracy"] == 0.5


def test_pair_task_trains_and_saves(tiny_random_run, tmp_path):
    """Sentence pairs (PAWS-X style): is b the translation of a? Two steps, first-token pooling."""
    from xlmkit.data.synthetic import sentence

    rng = np.random.default_rng(0)
    rows = [sentence(rng) for _ in range(24)]
    exs = [Example(lang="fr", label=str(i % 2), text=r["fr"], text_b=(r["fr"] if i % 2 else rows[i - 1]["fr"]),
                   source=f"pairs:{i + 1}") for i, r in enumerate(rows)]
    loaded = load_model(tiny_random_run)
    res = finetune(loaded, _ft(task="pair", max_steps=2), exs[:16], exs[16:], pooling="first",
                   out_dir=tmp_path / "pair", log=lambda s: None)
    assert res.spec.task == "pair" and res.spec.labels == ("0", "1") and res.spec.pooling == "first"
    ftm = load_finetuned(tmp_path / "pair")
    assert ftm.spec == res.spec
    data, _ = TaskEncoder(ftm.tokenizer, ftm.vocab, ftm.spec, ftm.model.encoder).encode(exs[16:])
    assert predict(ftm.model, data, 1, 8, torch.device("cpu"), "fp32") == \
        predict(res.model, data, 1, 8, torch.device("cpu"), "fp32")


def test_finetune_and_zero_shot_evaluate_from_python(tiny_random_run, tmp_path):
    """The commands' typed functions: no argparse, results returned as well as written."""
    from xlmkit.tasks.evaluate import evaluate
    from xlmkit.tasks.finetune import finetune_run

    data = write_pos_jsonl(tmp_path / "pos", 40, seed=1)
    settings = ["finetune.epochs=1", "finetune.precision=fp32"]
    result = finetune_run(tiny_random_run, [data / "en.jsonl"], tmp_path / "ft", task="token", overrides=settings)
    assert result.spec.task == "token" and (tmp_path / "ft" / "task.json").is_file()
    res = evaluate(tiny_random_run, data, tmp_path / "eval", task="token", train_lang="eng", langs=["de"],
                   train_fraction=0.75, overrides=settings)
    assert res == json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(res["languages"]) == ["en", "de"] and res["train_lang"] == "en"
    with pytest.raises(ConfigError, match="only finetune"):
        finetune_run(tiny_random_run, data / "en.jsonl", tmp_path / "x", overrides=["model.dim=32"])
