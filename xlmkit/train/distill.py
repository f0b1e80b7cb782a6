"""`xlmkit distill`: knowledge distillation of a pretrained run into a smaller student (Sanh et al. 2019,
DistilBERT), through the pretraining loop on the teacher's prepared data.

    xlmkit distill --teacher runs/small --data runs/data --out runs/small-l2 --set model.n_layers=2

The student's model config is the teacher's (its `config.json` is the default --config) with the
given overrides (fewer layers, a smaller width). Where the shapes agree, the student starts from the
teacher: its embeddings, output layer and final LayerNorms, and teacher layers spread evenly over the
depth (DistilBERT takes every other one; here layers round(linspace(0, L_teacher - 1, L_student))).
The loss at each predicted token (MLM / TLM / CLM steps, as pretraining) is

    alpha_kl * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + alpha_mlm * CE(student, token)
    + alpha_cos * (1 - cos(student hidden, teacher hidden))        (the last only where widths agree)

with DistilBERT's T = 2, alpha_kl = 5, alpha_mlm = 2, alpha_cos = 1 (train.distill_*). Validation is
the student's own perplexity and accuracy, as in pretraining. The result is an ordinary run: every
command loads it. `--resume` continues a distillation (give the same --teacher).

    from xlmkit.train.distill import distill
    final = distill("runs/small", "runs/data", "runs/small-l2", overrides=["model.n_layers=2"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlmkit.core.errors import XlmkitError


def teacher_layers(n_teacher: int, n_student: int) -> list[int]:
    """Which teacher layer initialises each student layer: spread evenly, first and last included."""
    if n_student == 1:
        return [n_teacher - 1]
    return [int(round(x)) for x in np.linspace(0, n_teacher - 1, n_student)]


def init_student(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Copy into the student every teacher parameter whose shape matches (layers as teacher_layers
    says); returns the names copied."""
    t_state = teacher.state_dict()
    picks = teacher_layers(len(teacher.layers), len(student.layers))
    copied = []
    with torch.no_grad():
        for name, p in student.state_dict().items():
            src = name
            if name.startswith("layers."):
                i, rest = name.split(".", 2)[1:]
                src = f"layers.{picks[int(i)]}.{rest}"
            if src in t_state and t_state[src].shape == p.shape:
                p.copy_(t_state[src])
                copied.append(name)
    return copied


class DistillationLoss(nn.Module):
    """Student and frozen teacher as one module with PretrainingLoss's interface: forward(batch inputs)
    -> (summed loss over the predicted tokens, number correct). In eval mode, the student's own MLM
    loss and accuracy (validation)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float, alpha_kl: float,
                 alpha_mlm: float, alpha_cos: float) -> None:
        super().__init__()
        self.encoder = student  # the name the loop and checkpoints use
        self.teacher = teacher.requires_grad_(False).eval()
        self.temperature, self.alpha_kl, self.alpha_mlm = temperature, alpha_kl, alpha_mlm
        self.alpha_cos = alpha_cos if student.cfg.dim == teacher.cfg.dim else 0.0

    def train(self, mode: bool = True) -> DistillationLoss:
        super().train(mode)
        self.teacher.eval()  # the teacher never drops out
        return self

    def forward(self, input_ids: Tensor, langs: Tensor, positions: Tensor, attention_mask: Tensor,
                pred_mask: Tensor, targets: Tensor, causal: bool = False) -> tuple[Tensor, Tensor]:
        kw = dict(langs=langs, positions=positions, attention_mask=attention_mask, causal=causal,
                  output_mask=pred_mask)
        h = self.encoder(input_ids, **kw)  # (N, D) at the predicted tokens
        logits = self.encoder.mlm_logits(h).float()  # (N, V)
        ce = F.cross_entropy(logits, targets, reduction="sum")
        if not self.training:
            return ce, (logits.argmax(-1) == targets).sum()
        with torch.no_grad():
            h_t = self.teacher(input_ids, **kw)  # (N, D_teacher)
            logits_t = self.teacher.mlm_logits(h_t).float()  # (N, V)
        T = self.temperature
        kl = F.kl_div(F.log_softmax(logits / T, -1), F.log_softmax(logits_t / T, -1), log_target=True,
                      reduction="sum") * (T * T)
        loss = self.alpha_kl * kl + self.alpha_mlm * ce
        if self.alpha_cos > 0:
            loss = loss + self.alpha_cos * (1.0 - F.cosine_similarity(h.float(), h_t.float(), dim=-1)).sum()
        return loss, loss.new_zeros(())


def load_teacher(teacher: str | Path, data, device) -> nn.Module:
    from xlmkit.train.checkpoint import load_model

    loaded = load_model(teacher)
    model = loaded.model
    if model.cfg.vocab_size != data.vocab_size:
        raise XlmkitError(f"--teacher {teacher}: its vocab_size {model.cfg.vocab_size} differs from the data's "
                          f"{data.vocab_size}; distil on the data the teacher was trained on")
    return model.to(device)


def distill(teacher: str | Path, data_dir: str | Path, out_dir: str | Path, config: str | Path | None = None,
            overrides: Sequence[str] = (), resume: bool = False) -> dict:
    """Distil the run `teacher` into the student of `config` (default: the teacher's own config.json) with
    `overrides` (e.g. "model.n_layers=2"), on the teacher's prepared data; writes the run to `out_dir` and
    returns pretraining's final metrics (xlmkit.train.pretrain.pretrain)."""
    from xlmkit.core.config import load_config
    from xlmkit.train.pretrain import pretrain

    given = bool(config)
    config = str(config) if given else str(Path(teacher) / "config.json")
    if not given and not Path(config).is_file():
        raise XlmkitError(f"--teacher {teacher}: no config.json (give --config)")
    cfg = load_config(config, list(overrides))
    return pretrain(cfg, data_dir, out_dir, resume=resume, teacher=teacher)
