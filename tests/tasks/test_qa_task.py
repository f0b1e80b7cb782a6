"""Extractive QA on the training engine (xlmkit.tasks.qa_task, `xlmkit qa`): the window layout, exact
resume, the zero-shot protocol end to end on tiny XQuAD-like files, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xlmkit.cli.main import main
from xlmkit.tasks.qa import QAExample, read_squad

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

FT = ("finetune.precision=fp32", "finetune.device=cpu", "finetune.batch_size=8")


def write_tiny_xquad(d: Path, langs=("en", "de", "fr"), n_articles: int = 3, paragraphs: int = 2,
                     questions: int = 3, sentences: int = 5, seed: int = 0, misaligned: str | None = None) -> Path:
    """xquad.<lang>.json files in SQuAD v1.1 format, the same questions (ids) in every language: each
    context is `sentences` synthetic sentences (xlmkit.data.synthetic, translated word for word); a
    question is the end of one sentence (from its verb), the answer its third word (the subject noun,
    or in French its adjective). `misaligned`: that question id's en answer_start is off by 3."""
    from xlmkit.data.synthetic import sentence

    rng = np.random.default_rng(seed)
    arts = [[[sentence(rng) for _ in range(sentences)] for _ in range(paragraphs)] for _ in range(n_articles)]
    d.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        data = []
        for a, paras in enumerate(arts):
            ps = []
            for p, sents in enumerate(paras):
                texts = [s[lang] for s in sents]
                context = " ".join(texts)
                qas = []
                for q in range(questions):
                    k = (q * 2 + a + p) % sentences
                    words = texts[k].rstrip(".").split()
                    answer = words[2]  # DET ADJ NOUN ... (fr: DET NOUN ADJ): a content word, never an article
                    start = context.index(texts[k]) + len(" ".join(words[:2])) + 1
                    qid = f"a{a}p{p}q{q}"
                    if misaligned == qid and lang == "en":
                        start += 3
                    qas.append({"id": qid, "question": " ".join(words[3:]) + " ?",
                                "answers": [{"text": answer, "answer_start": start}]})
                ps.append({"context": context, "qas": qas})
            data.append({"title": f"article_{a}", "paragraphs": ps})
        (d / f"xquad.{lang}.json").write_text(json.dumps({"version": "1.1", "data": data}, ensure_ascii=False),
                                              encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def tiny_xquad(tmp_path_factory) -> Path:
    return write_tiny_xquad(tmp_path_factory.mktemp("xquad") / "xquad")


def test_tiny_xquad_is_valid_squad(tiny_xquad):
    exs, skipped = read_squad(tiny_xquad / "xquad.de.json", "de")
    assert skipped == 0 and len(exs) == 18 and {e.article for e in exs} == {0, 1, 2}
    for e in exs:
        text, start = e.answers[0]
        assert e.context[start:start + len(text)] == text


def test_windows_use_the_pair_layout_and_hold_the_answer(tiny_random_run, tiny_xquad):
    """`</s> q </s> </s> c </s>`, positions restarting at the context side, the example's language id,
    and a target that decodes back to the gold answer."""
    from xlmkit.train.checkpoint import load_model
    from xlmkit.core.integrity import open_tokenizer
    from xlmkit.tasks.qa_task import QASpec, contract_for, decode_all, encode_qa

    loaded = load_model(tiny_random_run)
    tok = open_tokenizer(loaded.tokenizer_path)
    c = contract_for(loaded.vocab, tok, loaded.model)
    exs, _ = read_squad(tiny_xquad / "xquad.fr.json", "fr")
    spec = QASpec(max_len=40, stride=12)
    data = encode_qa(tok, exs, spec, c)
    assert len(data.inputs) > len(exs)  # long contexts: several windows
    eos = c.eos_id
    for f, x in zip(data.features, data.inputs):
        cs = f.context_start
        assert len(x.ids) <= 40 and x.ids[0] == eos and x.ids[cs - 2] == eos and x.ids[cs - 1] == eos
        assert x.ids[-1] == eos
        assert list(x.positions[:cs - 1]) == list(range(cs - 1))  # `</s> q </s>`
        assert list(x.positions[cs - 1:]) == list(range(len(x.ids) - cs + 1))  # `</s> c </s>`, from 0 again
        assert set(x.langs) == {c.lang2id["fr"]}
        assert tuple(x.target) == f.target
    # logits peaked at each window's target decode to the gold answers
    logits = []
    for f, x in zip(data.features, data.inputs):
        s, e = np.zeros(len(x.ids)), np.zeros(len(x.ids))
        if f.target != (0, 0):
            s[f.target[0]], e[f.target[1]] = 10.0, 10.0
        logits.append((s, e))
    answers = decode_all(data, logits, spec)
    assert answers == {ex.qid: ex.answers[0][0] for ex in exs}


class Killed(Exception):
    pass


def test_qa_resume_is_exact(tiny_random_run, tiny_xquad, tmp_path, monkeypatch):
    """N steps straight == N/2 steps, a crash, then resume (fp32, dropout on): every logged loss and dev
    score, and every final weight, identical."""
    import xlmkit.train.metrics
    from xlmkit.tasks.finetune import load_pretrained
    from xlmkit.tasks.qa_task import QASpec, finetune_qa
    from xlmkit.train.checkpoint import list_step_checkpoints
    from xlmkit.train.metrics import read_metrics

    exs, _ = read_squad(tiny_xquad / "xquad.en.json", "en")
    train, dev = [e for e in exs if e.article < 2], [e for e in exs if e.article == 2]
    overrides = [*FT, "finetune.epochs=2", "finetune.save_every=3", "finetune.log_every=1", "model.dropout=0.1",
                 "model.attention_dropout=0.1", "finetune.lr=1e-3"]
    spec = QASpec(max_len=40, stride=12)

    def run(out: Path, resume: bool = False):
        loaded, ft = load_pretrained(tiny_random_run, overrides=overrides, command="qa")
        return finetune_qa(loaded, ft, train, dev, spec=spec, out_dir=out, resume=resume, log=lambda s: None)

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    res = run(straight)
    n_steps = res.history[-1]["step"]
    assert n_steps >= 8 and n_steps % 2 == 0
    half = n_steps // 2
    real_log = xlmkit.train.metrics.MetricsLogger.log

    def log_then_die(self, record):
        if record["step"] == half + 1 and record["split"] == "train":
            raise Killed
        real_log(self, record)

    monkeypatch.setattr(xlmkit.train.metrics.MetricsLogger, "log", log_then_die)
    with pytest.raises(Killed):
        run(resumed)
    monkeypatch.undo()
    assert max(s for s, _ in list_step_checkpoints(resumed)) <= half
    run(resumed, resume=True)

    def strip(rs):
        return [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")} for r in rs]

    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(resumed / "metrics.jsonl")
    assert strip(a) == strip(b)
    assert len([r for r in a if r["split"] == "train"]) == n_steps and any(r["split"] == "dev" for r in a)
    assert all("f1" in r and "exact_match" in r for r in a if r["split"] == "dev")
    for run_dir in (straight, resumed):
        assert json.loads((run_dir / "task.json").read_text())["task"] == "qa"
    (_, ca), (_, cb) = list_step_checkpoints(straight)[-1], list_step_checkpoints(resumed)[-1]
    for name in ("model.safetensors", "head.safetensors"):
        wa, wb = load_file(str(ca / name)), load_file(str(cb / name))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), k
    head = load_file(str(straight / "checkpoints/best/head.safetensors"))
    assert head["head.weight"].shape == (2, 64) and head["head.bias"].shape == (2,)
    assert (straight / "checkpoints/best/model.safetensors").is_file()


def test_span_loss_is_the_mean_of_start_and_end_cross_entropy():
    from xlmkit.tasks.qa_task import SpanLoss

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, input_ids, langs, positions, attention_mask):
            return self.logits

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 2, generator=g)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 4:] = False  # padding is never a target: -inf there
    target = torch.tensor([[1, 2], [0, 0], [3, 3]])
    loss_sum, correct = SpanLoss(Fixed(logits))(None, None, None, mask, target)
    masked = logits.masked_fill(~mask[:, :, None], float("-inf"))
    want = sum(torch.nn.functional.cross_entropy(masked[i, :, j][None], target[i, j][None]) for i in range(3)
               for j in range(2))
    torch.testing.assert_close(loss_sum / 6, want / 6)  # engine: / n_pred = 2 per window
    assert int(correct) == sum(int(masked[i, :, 0].argmax() == target[i, 0] and masked[i, :, 1].argmax() == target[i, 1])
                               for i in range(3))


def qa_args(model, data, out, *extra):
    args = ["qa", "--model", str(model), "--data", str(data), "--out", str(out), "--train-articles", "2",
            "--test-articles", "1", "--max-len", "40", "--stride", "12", *extra]
    for o in (*FT, "finetune.epochs=1"):
        args += ["--set", o]
    return args


def test_zero_shot_qa_end_to_end(tiny_random_run, tiny_xquad, tmp_path, capsys):
    from xlmkit.core.tables import read_tables
    from xlmkit.tasks.qa_task import is_qa_dir

    out = tmp_path / "eval"
    assert main(qa_args(tiny_random_run, tiny_xquad, out)) == 0
    table = json.loads((out / "xquad.json").read_text())
    assert [r["lang"] for r in table["rows"]] == ["de", "en", "fr"]
    assert all(r["n"] == 6 and 0 <= r["f1"] <= 100 and 0 <= r["exact_match"] <= r["f1"] + 1e-9 for r in table["rows"])
    zs = [r for r in table["rows"] if r["lang"] != "en"]
    assert table["average"]["f1"] == pytest.approx(sum(r["f1"] for r in zs) / 2)
    assert table["meta"]["train_questions"] == 12 and table["meta"]["qa"]["max_len"] == 40
    assert "| de |" in (out / "xquad.md").read_text()
    assert read_tables(out / "xquad.json")[0]["rows"] == table["rows"]
    model_dir = out / "model"
    assert is_qa_dir(model_dir)
    for f in ("config.json", "vocab.json", "tokenizer.json", "task.json", "checkpoints/best/model.safetensors",
              "checkpoints/best/head.safetensors"):
        assert (model_dir / f).is_file(), f
    # the QA model directory is tested again without training: the same scores
    again = tmp_path / "again"
    assert main(qa_args(model_dir, tiny_xquad, again)) == 0
    rows = json.loads((again / "xquad.json").read_text())["rows"]
    assert [(r["lang"], r["f1"], r["exact_match"]) for r in rows] == \
        [(r["lang"], r["f1"], r["exact_match"]) for r in table["rows"]]


def test_predictions_are_spans_of_the_context(tiny_random_run, tiny_xquad):
    from xlmkit.tasks.finetune import load_pretrained
    from xlmkit.tasks.qa_task import QASpec, SpanModel, contract_for, encode_qa, predict_answers
    from xlmkit.core.integrity import open_tokenizer

    loaded, _ = load_pretrained(tiny_random_run)
    tok = open_tokenizer(loaded.tokenizer_path)
    c = contract_for(loaded.vocab, tok, loaded.model)
    exs, _ = read_squad(tiny_xquad / "xquad.de.json", "de")
    spec = QASpec(max_len=40, stride=12, max_answer_tokens=4)
    data = encode_qa(tok, exs, spec, c)
    answers = predict_answers(SpanModel(loaded.model), data, spec, c.pad_id)
    assert set(answers) == {e.qid for e in exs}
    for e in exs:
        a = answers[e.qid]
        assert a and a in e.context and a == a.strip()
        assert len(tok.encode(a, add_special_tokens=False).ids) <= 4 + 1


def test_misaligned_answer_is_one_line_naming_the_question_or_skipped(tiny_random_run, tmp_path, capsys):
    data = write_tiny_xquad(tmp_path / "bad", misaligned="a1p0q2")
    out = tmp_path / "eval"
    assert main(qa_args(tiny_random_run, data, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("xlmkit qa: error:")
    assert "question a1p0q2" in err and "answer_start" in err and "xquad.en.json" in err
    assert not (out / "model").exists()  # refused before any training
    assert main(qa_args(tiny_random_run, data, out, "--skip-misaligned")) == 0
    table = json.loads((out / "xquad.json").read_text())
    assert {r["lang"]: r["skipped"] for r in table["rows"]} == {"de": 0, "en": 1, "fr": 0}
    assert any("misaligned answers skipped" in n and "en 1" in n for n in table["notes"])
    assert table["meta"]["train_questions"] == 11  # the question lost its only answer


def test_unknown_language_is_refused_before_training(tiny_random_run, tmp_path, capsys):
    data = write_tiny_xquad(tmp_path / "es", langs=("en", "es"))
    out = tmp_path / "eval"
    assert main(qa_args(tiny_random_run, data, out)) == 2
    err = capsys.readouterr().err
    assert "es" in err and "--unknown-lang-id" in err and not (out / "model").exists()
    assert main(qa_args(tiny_random_run, data, out, "--unknown-lang-id", "en")) == 0
    notes = json.loads((out / "xquad.json").read_text())["notes"]
    assert any(n.startswith("es: no language embedding") for n in notes)


def test_protocol_needs_enough_articles(tiny_random_run, tiny_xquad, tmp_path, capsys):
    args = qa_args(tiny_random_run, tiny_xquad, tmp_path / "e")
    args[args.index("--train-articles") + 1] = "3"
    assert main(args) == 2
    assert "3 articles, fewer than the 3 training + 1 test articles" in capsys.readouterr().err


def test_xquad_protocol_split_on_the_real_data(shared_data):
    from xlmkit.tasks.qa_task import split_articles, xquad_files

    d = shared_data / "qa" / "xquad"
    if not d.is_dir():
        pytest.skip("no XQuAD in shared data")
    files = xquad_files(d)
    assert set(files) == {"ar", "de", "en", "es", "hi", "ru", "vi", "zh"}
    en, _ = read_squad(files["en"], "en")
    train, test = split_articles(en, 32, 16, "en")
    assert len(train) + len(test) == 1190 and not {e.qid for e in train} & {e.qid for e in test}
    de, _ = read_squad(files["de"], "de")
    assert {e.qid for e in split_articles(de, 32, 16, "de")[1]} == {e.qid for e in test}


def test_the_span_head_learns_its_training_questions(tiny_random_run, tmp_path):
    """From random init, some epochs on a few questions: the decoded answers match most of them (the
    loss, the targets and the decoding agree on positions)."""
    from xlmkit.tasks.finetune import load_pretrained
    from xlmkit.tasks.qa import qa_scores
    from xlmkit.tasks.qa_task import QASpec, encode_qa, finetune_qa, predict_answers

    xq = write_tiny_xquad(tmp_path / "xq", langs=("en",), n_articles=2, paragraphs=3, questions=4, seed=1)
    exs, _ = read_squad(xq / "xquad.en.json", "en")
    loaded, ft = load_pretrained(tiny_random_run, overrides=[*FT, "finetune.batch_size=16", "finetune.epochs=40",
                                                             "finetune.lr=1e-3", "finetune.head_lr=1e-3"])
    res = finetune_qa(loaded, ft, exs, spec=QASpec(max_len=48, stride=16), log=lambda s: None)
    first = [r["loss"] for r in res.history if r["split"] == "train"][0]
    last = [r["loss"] for r in res.history if r["split"] == "train"][-1]
    assert last < first / 2
    data = encode_qa(res.tokenizer, exs, res.spec, res.contract)
    scores = qa_scores(predict_answers(res.model, data, res.spec, res.contract.pad_id), exs)
    assert scores["f1"] > 35, scores


def test_windows_longer_than_the_model_are_refused(tiny_random_run, tiny_xquad, tmp_path, capsys):
    args = qa_args(tiny_random_run, tiny_xquad, tmp_path / "e")
    args[args.index("--max-len") + 1] = "100"
    assert main(args) == 2
    assert "max_len 100 > model.max_positions 64" in capsys.readouterr().err
