"""Distillation (xlmkit.train.distill): the student starts from the teacher, and training on the teacher's
data brings the student's predictions closer to the teacher's on held-out text."""

import json

import torch
import torch.nn.functional as F

from xlmkit.train.checkpoint import load_model
from xlmkit.cli.main import main
from xlmkit.core.config import load_config
from xlmkit.train.distill import init_student, teacher_layers
from xlmkit.model.encoder import XLMModel

COMMON = ["train.eval_batches=2", "train.device=cpu", "train.precision=fp32", "model.dropout=0",
          "model.attention_dropout=0"]


def test_teacher_layers_spread_over_the_depth():
    assert teacher_layers(6, 3) == [0, 2, 5]  # round half to even: 2.5 -> 2
    assert teacher_layers(4, 2) == [0, 3] and teacher_layers(2, 2) == [0, 1] and teacher_layers(4, 1) == [3]


def held_out_kl(student, teacher, data) -> float:
    """Mean KL(teacher || student) per predicted token over the validation MLM batches of every language."""
    from xlmkit.train.batches import eval_batches

    cfg = load_config("tiny", COMMON).train
    total, n = 0.0, 0
    with torch.no_grad():
        for lang in data.mono_languages:
            for b in eval_batches(data, lang, "valid", cfg, 2, seed=0):
                kw = dict(langs=b.langs, positions=b.positions, attention_mask=b.attention_mask, output_mask=b.pred_mask)
                s = F.log_softmax(student.mlm_logits(student(b.input_ids, **kw)).float(), -1)
                t = F.log_softmax(teacher.mlm_logits(teacher(b.input_ids, **kw)).float(), -1)
                total += float(F.kl_div(s, t, log_target=True, reduction="sum"))
                n += int(b.pred_mask.sum())
    return total / n


def test_distillation_brings_the_student_closer_to_the_teacher(tiny_prepared, tmp_path):
    from xlmkit.data.format import PreparedData

    teacher_run = tmp_path / "teacher"
    assert main(["pretrain", "--data", str(tiny_prepared), "--out", str(teacher_run),
                 *sum((["--set", o] for o in [*COMMON, "train.max_steps=40"]), [])]) == 0
    student_run = tmp_path / "student"
    assert main(["distill", "--teacher", str(teacher_run), "--data", str(tiny_prepared), "--out", str(student_run),
                 *sum((["--set", o] for o in [*COMMON, "model.n_layers=1", "train.max_steps=40",
                                              "train.warmup_steps=5"]), [])]) == 0
    teacher = load_model(teacher_run, which="latest").model.eval()
    student = load_model(student_run, which="latest").model.eval()
    assert student.cfg.n_layers == 1 and teacher.cfg.n_layers == 2
    assert json.loads((student_run / "config.json").read_text())["model"]["n_layers"] == 1

    start = XLMModel(student.cfg).eval()  # the student at step 0
    copied = init_student(start, teacher)
    assert "token_embeddings.weight" in copied and "layers.0.ffn.lin1.weight" in copied
    assert torch.equal(start.layers[0].ffn.lin1.weight, teacher.layers[1].ffn.lin1.weight)  # the last layer
    data = PreparedData(tiny_prepared)
    before, after = held_out_kl(start, teacher, data), held_out_kl(student, teacher, data)
    print(f"held-out KL: {before:.3f} -> {after:.3f}")
    assert after < 0.8 * before, (before, after)
