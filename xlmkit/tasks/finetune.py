"""`xlmkit finetune`: train a task head (and the encoder) from a pretrained xlmkit checkpoint.

    xlmkit finetune --model RUN_DIR --train en.jsonl --dev en.dev.jsonl --task classification --out FT_DIR

Tasks: `classification` (one text -> one label), `pair` (two texts -> one label, XNLI / PAWS-X style),
`token` (one label per word: POS, NER). Data formats: see xlmkit.tasks.io.

Input layout. The layout the encoder saw in pretraining (xlmkit.train.objectives), from vocab.json:
- XLM models (the default, vocab "sentence_wrap" absent or "xlm"): a text is `</s> a </s>`; a pair is
  the TLM layout `</s> a </s> </s> b </s>`, positions restarting at 0 for b, every token carrying the
  language id of its side (Lample & Conneau 2019, figure 1).
- XLM-R style imports ("sentence_wrap": "roberta"): `<s> a </s>` and `<s> a </s> </s> b </s>`.
Language ids come from each example's `lang` through vocab.json's lang2id; a language the model has
no embedding for is an error, unless the model has no language embeddings at all (then none is given).

Pooling (classification and pair): `mean` (default) averages the last hidden states of the real tokens
(separators included); `first` takes the first token's state, as XLM's XNLI head does. Mean pooling is
the default because briefly pretrained models never train their first token to summarise the input
(no next-sentence objective), and it transfers better zero-shot in our runs; `--pooling first` gives
the XLM behaviour. Token task: the head reads every position; a word's label sits on its first
subword, the other pieces and the separators get -100 (ignored by the loss, never scored). A first
piece that is only the word-boundary marker "▁" (SentencePiece splits it off before punctuation and
before characters of scripts the vocabulary hardly knows) carries no content: the label then sits on
the word's next piece. Otherwise every Cyrillic or Chinese word of a Latin-trained vocabulary would be
read from a bare "▁", which in English training data precedes only punctuation.

Truncation: sequences are cut to min(finetune.max_len, model.max_positions) ids, separators included
(pairs: the longer side loses its end first). Truncated examples are counted and reported; in the token
task the words whose first piece falls beyond the cut lose their labels: they are counted, not
trained on and not scored.

Optimisation: AdamW, encoder at finetune.lr, head at finetune.head_lr, linear warmup over
finetune.warmup_ratio of the steps then linear decay to 0; no weight decay on biases and LayerNorms.
finetune.freeze_layers=k freezes the embeddings and the first k Transformer layers. After every epoch
the dev set (if any) is scored (accuracy; token task: token accuracy, span F1 for BIO tags); the best
weights are kept and training stops after finetune.patience epochs without improvement (0 = never).

Output directory (the layout of a pretraining run, so `checkpoint.load_model(FT_DIR)` loads the
fine-tuned encoder):

    FT_DIR/config.json, vocab.json, tokenizer.json   as a pretraining run
    FT_DIR/task.json          task, labels (index order of the head), pooling, use_langs, max_len, base model
    FT_DIR/metrics.jsonl      {"epoch", "step", "split": "train"|"dev", ...} per epoch
    FT_DIR/checkpoints/best/  model.safetensors (encoder) + head.safetensors + state.json
    FT_DIR/checkpoints/step_N/  the same for the final weights
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlmkit.core.config import Config, ConfigError, FinetuneConfig, config_from_dict, config_to_dict, load_config, parse_overrides
from xlmkit.core.integrity import open_tokenizer
from xlmkit.core.errors import DataError, XlmkitError
from xlmkit.data.contract import RunContract, pad_batch
from xlmkit.train.engine import OptimConfig, row_bounds
from xlmkit.train.engine import build_optimizer as engine_build_optimizer
from xlmkit.tasks.io import TASKS, Example, check_labels, group_by_lang, label_list, read_task_files

IGNORE = -100
TASK_FILE = "task.json"
HEAD_FILE = "head.safetensors"
POOLINGS = ("mean", "first")


# ----------------------------------------------------------------------------------------------
# What the fine-tuned model is


@dataclass(frozen=True)
class TaskSpec:
    """Everything besides weights that a fine-tuned model needs to be used again (FT_DIR/task.json)."""

    task: str  # "classification" | "pair" | "token"
    labels: tuple[str, ...]  # head output i = labels[i]
    pooling: str = "mean"  # "mean" | "first" (classification, pair)
    use_langs: bool = True  # False: no language embedding is given (langid)
    max_len: int = 128  # ids per sequence, separators included
    base_model: str = ""
    unknown_lang_id: int | None = None  # language-embedding id for languages the model lacks (None: error)

    def to_json(self) -> dict:
        return spec_to_json(self)

    @classmethod
    def from_json(cls, d: dict) -> TaskSpec:
        return spec_from_json(cls, d)


def spec_to_json(spec) -> dict:
    """A task's frozen spec dataclass -> task.json (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()}


def spec_from_json(cls, d: dict):
    """task.json -> the spec dataclass `cls` (unknown keys ignored, lists back to tuples)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})


# ----------------------------------------------------------------------------------------------
# Text -> ids


@dataclass
class Encoded:
    """One example as model input. ids, langs, positions (L,) int64; target: class index (classification,
    pair) or (L,) int64 with IGNORE off the labelled first pieces (token)."""

    ids: np.ndarray
    langs: np.ndarray | None
    positions: np.ndarray
    target: int | np.ndarray
    word_positions: np.ndarray | None = None  # token task: position of each kept word's first piece
    truncated: bool = False
    dropped_words: int = 0  # token task: words cut off by truncation


@dataclass
class EncodeStats:
    examples: int = 0
    truncated: int = 0
    dropped_labels: int = 0  # token task

    def describe(self, what: str) -> str:
        s = f"{what}: {self.examples} examples, {self.truncated} truncated"
        if self.dropped_labels:
            s += f" ({self.dropped_labels} word labels beyond the cut dropped)"
        return s


class TaskEncoder:
    """Examples -> `Encoded` for one model (its tokenizer, specials, lang2id, max positions)."""

    def __init__(self, tokenizer, vocab: dict | RunContract, spec: TaskSpec, model: nn.Module):
        self.tokenizer = tokenizer
        self.spec = spec
        c = vocab if isinstance(vocab, RunContract) else RunContract.from_vocab(vocab, tokenizer)
        # the sentence framing the encoder saw in pretraining, as embed / retrieve frame sentences
        self.contract = c = c.with_wrap().for_model(model)
        self.unk_id = c.specials.unk
        self.max_len = min(spec.max_len, int(model.cfg.max_positions))
        self.wrap = c.wrap()
        self.first_id, self.eos_id, self.pad_id = c.first_id, c.eos_id, c.pad_id
        # pieces that are only the word-boundary marker (SentencePiece's "▁"): a word that starts with a
        # character the vocabulary cannot join to "▁" (punctuation, rare scripts) begins with one
        self.bare_ids = {i for tok, i in tokenizer.get_vocab().items() if tok and not tok.strip("▁ ")}
        self.lang2id = dict(c.lang2id)
        self.has_lang_emb = c.has_lang_emb
        self.label_index = {lab: i for i, lab in enumerate(spec.labels)}

    def lang_id(self, lang: str, where: str) -> int | None:
        if not self.spec.use_langs:
            return None
        return self.contract.lang_id(lang, unknown=self.spec.unknown_lang_id, where=where)

    def _target(self, ex: Example) -> int:
        return self.label_index[ex.label]

    def _langs(self, lid: int | None, n: int) -> np.ndarray | None:
        return None if lid is None else np.full(n, lid, dtype=np.int64)

    def encode(self, examples: Sequence[Example], allow_unknown: bool = False) -> tuple[list[Encoded], EncodeStats]:
        """Examples -> model inputs. A label not in spec.labels is an error naming file, line and label;
        with allow_unknown (token task) such tokens get target IGNORE instead."""
        if not allow_unknown or self.spec.task != "token":
            check_labels(examples, self.spec.labels, "the training labels")
        task = self.spec.task
        stats = EncodeStats(examples=len(examples))
        out: list[Encoded] = []
        if task == "classification":
            encs = self.tokenizer.encode_batch([ex.text for ex in examples], add_special_tokens=False)
            keep = self.max_len - 2
            for ex, enc in zip(examples, encs):
                ids = np.array(self.contract.frame(enc.ids, self.max_len), dtype=np.int64)
                cut = len(enc.ids) > keep
                stats.truncated += cut
                out.append(Encoded(ids, self._langs(self.lang_id(ex.lang, ex.where()), len(ids)),
                                   np.arange(len(ids), dtype=np.int64), self._target(ex), truncated=cut))
        elif task == "pair":
            enc_a = self.tokenizer.encode_batch([ex.text for ex in examples], add_special_tokens=False)
            enc_b = self.tokenizer.encode_batch([ex.text_b for ex in examples], add_special_tokens=False)
            for ex, ea, eb in zip(examples, enc_a, enc_b):
                ids, langs, positions, cut = self.contract.pair(ea.ids, eb.ids, self.max_len,
                                                                self.lang_id(ex.lang, ex.where()))
                stats.truncated += cut
                out.append(Encoded(ids, langs, positions, self._target(ex), truncated=cut))
        elif task == "token":
            encs = self.tokenizer.encode_batch([ex.tokens for ex in examples], is_pretokenized=True,
                                               add_special_tokens=False)
            keep = self.max_len - 2
            for ex, enc in zip(examples, encs):
                pieces: list[list[int]] = [[] for _ in ex.tokens]
                for tid, w in zip(enc.ids, enc.word_ids):
                    if w is not None:
                        pieces[w].append(tid)
                body: list[int] = []
                targets: list[int] = []
                word_pos: list[int] = []
                dropped = 0
                for w, p in enumerate(pieces):
                    if not p:
                        p = [self.unk_id]  # a word the normaliser erased still gets a position
                    if len(body) >= keep:
                        dropped += 1
                        continue
                    p = p[: keep - len(body)]
                    j = next((k for k, tid in enumerate(p) if tid not in self.bare_ids), 0)
                    word_pos.append(1 + len(body) + j)
                    targets.extend([IGNORE] * j + [self.label_index.get(ex.label[w], IGNORE)]
                                   + [IGNORE] * (len(p) - j - 1))
                    body.extend(p)
                cut = len(body) < sum(max(1, len(p)) for p in pieces)
                stats.truncated += cut
                stats.dropped_labels += dropped
                ids = np.array(self.contract.frame(body), dtype=np.int64)
                target = np.array([IGNORE, *targets, IGNORE], dtype=np.int64)
                out.append(Encoded(ids, self._langs(self.lang_id(ex.lang, ex.where()), len(ids)),
                                   np.arange(len(ids), dtype=np.int64), target, np.array(word_pos, dtype=np.int64),
                                   truncated=cut, dropped_words=dropped))
        else:
            raise ConfigError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        return out, stats


def training_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                     group_by_length: bool = True, pool: int = 50) -> list[np.ndarray]:
    """One epoch's batches of example indices. Grouped by length (the HF Trainer's group_by_length,
    fairseq's length-ordered batches): the shuffled examples are cut into pools of `pool` batches,
    each pool is sorted by length and cut into batches, and the batches are shuffled, so a batch
    pads to about its own sentences' length; on real sentences of mixed length that halves the padded
    tokens. Without grouping: consecutive slices of one permutation."""
    order = rng.permutation(len(lengths))
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    lengths = np.asarray(lengths)
    batches = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = order[start:start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, Tensor]:
    """Pad to the longest item: input_ids, langs (or None), positions, attention_mask (B, T); target
    (B,) or (B, T)."""
    ids, mask = pad_batch([it.ids for it in items], pad_id)  # (B, T)
    positions = pad_batch([it.positions for it in items], 0)[0]
    langs = None
    if items[0].langs is not None:  # padding carries the row's language
        langs = np.where(mask, pad_batch([it.langs for it in items], 0)[0], np.array([[it.langs[0]] for it in items]))
    if isinstance(items[0].target, np.ndarray):  # token task
        target = pad_batch([it.target for it in items], IGNORE)[0]
    else:
        target = np.array([it.target for it in items], dtype=np.int64)
    return {"input_ids": torch.from_numpy(ids), "langs": None if langs is None else torch.from_numpy(langs),
            "positions": torch.from_numpy(positions), "attention_mask": torch.from_numpy(mask),
            "target": torch.from_numpy(target)}


# ----------------------------------------------------------------------------------------------
# The model: pretrained encoder + task head


class TaskModel(nn.Module):
    """encoder (XLMModel) -> dropout -> linear head. Classification / pair: pooled (B, K) logits;
    token: (B, T, K) logits."""

    def __init__(self, encoder: nn.Module, n_labels: int, task: str, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.encoder = encoder
        self.task = task
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        # the pretraining output layer's own parameters (its bias, XLM-R's transform) are not used
        # here: frozen, so that DDP expects no gradient for them
        encoder.mlm_head.requires_grad_(False)
        self.head = nn.Linear(encoder.cfg.dim, n_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def features(self, input_ids: Tensor, langs: Tensor | None, positions: Tensor, attention_mask: Tensor) -> Tensor:
        """What the head reads: the pooled (B, D) vector, or (token task) the (B, T, D) hidden states."""
        h = self.encoder(input_ids, langs=langs, positions=positions, attention_mask=attention_mask)  # (B, T, D)
        if self.task == "token":
            return h
        if self.pooling == "first":
            return h[:, 0]  # (B, D)
        m = attention_mask[:, :, None].to(h.dtype)  # (B, T, 1)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)

    def forward(self, input_ids: Tensor, langs: Tensor | None, positions: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(input_ids, langs, positions, attention_mask)))  # (B, K) | (B, T, K)


def freeze_layers(encoder: nn.Module, k: int) -> None:
    """Freeze the embeddings and the first k Transformer layers (k = 0: nothing)."""
    n = len(encoder.layers)
    if k > n:
        raise ConfigError(f"finetune.freeze_layers={k} but the model has only {n} layers")
    if k == 0:
        return
    for name in ("token_embeddings", "position_embeddings", "lang_embeddings", "layer_norm_emb"):
        module = getattr(encoder, name, None)
        if module is not None:
            module.requires_grad_(False)
    for layer in encoder.layers[:k]:
        layer.requires_grad_(False)


def param_groups(model: TaskModel, ft: FinetuneConfig):
    """The engine's parameter groups: the encoder at finetune.lr, the new head at finetune.head_lr
    (a freshly initialised layer learns at a higher rate than the pretrained ones). The engine's one
    weight-decay rule applies to both (xlmkit.train.engine.decays)."""
    encoder = [(n, p) for n, p in model.named_parameters() if not n.startswith("head.")]
    head = [(n, p) for n, p in model.named_parameters() if n.startswith("head.")]
    return [("encoder", encoder, ft.lr), ("head", head, ft.head_lr)]


def optim_config(ft: FinetuneConfig, total: int) -> OptimConfig:
    """AdamW as BERT fine-tunes (betas 0.9 / 0.999, eps 1e-8), linear warmup over
    finetune.warmup_ratio of the steps, then linear decay to 0."""
    return OptimConfig(lr=ft.lr, weight_decay=ft.weight_decay, betas=(0.9, 0.999), eps=1e-8,
                       warmup_steps=int(round(ft.warmup_ratio * total)), schedule="linear", max_steps=total)


def build_optimizer(model: TaskModel, ft: FinetuneConfig, device: torch.device, total: int = 1) -> torch.optim.AdamW:
    return engine_build_optimizer(param_groups(model, ft), optim_config(ft, total), device)


# ----------------------------------------------------------------------------------------------
# What the engine trains on: batches, the loss, the sampler


@dataclass(frozen=True, eq=False)
class TaskBatch:
    """One global batch of labelled examples (the engine's TrainBatch). (B, T) tensors; target (B,)
    or (B, T) with IGNORE where nothing is scored."""

    name: str
    input_ids: Tensor
    langs: Tensor | None
    positions: Tensor
    attention_mask: Tensor
    target: Tensor

    @property
    def n_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def n_pred(self) -> int:
        return int((self.target != IGNORE).sum())

    def split_rows(self, start: int, stop: int) -> TaskBatch:
        return TaskBatch(self.name, self.input_ids[start:stop], None if self.langs is None else self.langs[start:stop],
                         self.positions[start:stop], self.attention_mask[start:stop], self.target[start:stop])

    def to(self, device, non_blocking: bool = False) -> TaskBatch:
        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return TaskBatch(self.name, move(self.input_ids), move(self.langs), move(self.positions),
                         move(self.attention_mask), move(self.target))

    def inputs(self) -> dict:
        return dict(input_ids=self.input_ids, langs=self.langs, positions=self.positions,
                    attention_mask=self.attention_mask, target=self.target)


class TaskLoss(nn.Module):
    """TaskModel + cross-entropy as one module (what DDP wraps): (summed loss over the labelled
    targets, number correct)."""

    def __init__(self, model: TaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, langs: Tensor | None, positions: Tensor, attention_mask: Tensor,
                target: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(input_ids, langs, positions, attention_mask).float()
        logits, target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
        loss_sum = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")
        return loss_sum, (logits.argmax(-1) == target).sum()


class EpochSampler:
    """Epochs of length-grouped batches (training_batches) over the encoded examples; each call gives
    one global batch, this rank's rows of it. Its state (epoch, position, the generator's state at the
    epoch's start) resumes exactly."""

    def __init__(self, data: Sequence[Encoded], batch_size: int, pad_id: int, seed: int, group_by_length: bool,
                 name: str, rank: int = 0, world_size: int = 1) -> None:
        self.data, self.batch_size, self.pad_id, self.name = data, batch_size, pad_id, name
        self.group_by_length, self.rank, self.world_size = group_by_length, rank, world_size
        self.lengths = [len(x.ids) for x in data]
        self.rng = np.random.default_rng(seed)
        self.epoch, self.pos = 0, 0
        self._start_epoch()

    def _start_epoch(self) -> None:
        self.epoch_rng_state = self.rng.bit_generator.state
        self.batches = training_batches(self.lengths, self.batch_size, self.rng, self.group_by_length)
        self.pos = 0

    def next_batches(self) -> list[TaskBatch]:
        if self.pos >= len(self.batches):
            self.epoch += 1
            self._start_epoch()
        idx = self.batches[self.pos]
        self.pos += 1
        b = collate([self.data[i] for i in idx], self.pad_id)
        batch = TaskBatch(self.name, b["input_ids"], b["langs"], b["positions"], b["attention_mask"], b["target"])
        mine = row_bounds(batch.n_rows, self.world_size)
        # a rank without rows of a batch smaller than the world runs an empty slice (DDP's backward is collective)
        start, stop = mine[self.rank] if self.rank < len(mine) else (0, 0)
        return [batch.split_rows(start, stop) if self.world_size > 1 else batch]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "rng": self.epoch_rng_state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._start_epoch()
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def open_task_dir(out_dir: str | Path | None, resume: bool, dist, name: str, write_files: Callable[[Path], None],
                  check_resume: Callable[[Path, dict], None]) -> tuple[Path | None, Path | None]:
    """(OUT, the checkpoint to resume from) of a fine-tuning task (engine.open_run_dir); without an
    OUT nothing is written and there is nothing to resume."""
    from xlmkit.train.engine import open_run_dir

    if out_dir is None:
        if resume:
            raise XlmkitError(f"{name}: resume needs the output directory of the run to continue")
        return None, None
    out = Path(out_dir)
    return out, open_run_dir(out, resume, dist, name, lambda: write_files(out), check_resume)


def epoch_loop(ft: FinetuneConfig, total: int, steps_per_epoch: int, name: str, select: str, has_dev: bool):
    """The engine's loop for a fine-tuning task: an evaluation on the dev set after every epoch,
    best/ by its `select` metric (higher is better), early stopping by finetune.patience epochs,
    a resumable checkpoint every epoch (or finetune.save_every steps)."""
    from xlmkit.train.engine import LoopConfig

    return LoopConfig(max_steps=total, precision=ft.precision, grad_accum=ft.grad_accum, clip_norm=ft.clip_norm,
                      log_every=ft.log_every or steps_per_epoch, eval_every=steps_per_epoch,
                      save_every=ft.save_every or steps_per_epoch, keep_last=ft.keep_last, seed=ft.seed,
                      parallel=ft.parallel, select=(select, "max"), patience=ft.patience if has_dev else 0,
                      eval_at_start=False, eval_split="dev", name=name, epoch_steps=steps_per_epoch)


def selection_metric(task: str, labels: Sequence[str]) -> str:
    """What best/ and early stopping look at (dev_metric's choice, known before any evaluation)."""
    from xlmkit.tasks import scores as M

    if task == "token":
        return "span_f1" if M.is_bio_tagset(list(labels)) else "token_accuracy"
    return "accuracy"


# ----------------------------------------------------------------------------------------------
# Prediction and scoring


@torch.no_grad()
def forward_by_length(model: nn.Module, call: Callable, data: Sequence[Encoded], pad_id: int, batch_size: int,
                      device: torch.device, precision: str = "auto"):
    """Yields (indices, call(**inputs)) over `data` in batches formed by length (so a batch pads to
    about its own examples' length), `model` in eval mode and without gradients meanwhile. The one
    inference loop of every classification-style task (predict, QA's window logits)."""
    from xlmkit.core.runtime import autocast

    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(data)), key=lambda i: len(data[i].ids))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate([data[i] for i in idx], pad_id)
            inputs = {k: (v.to(device) if v is not None else None) for k, v in batch.items() if k != "target"}
            with autocast(device, precision):
                yield idx, call(**inputs)
    finally:
        model.train(was_training)


def mean_features(model: TaskModel, data: Sequence[Encoded], pad_id: int, batch_size: int, device: torch.device,
                  precision: str = "auto") -> Tensor:
    """The (D,) float32 mean of what the head reads over `data`: of the pooled vectors, or (token task)
    of the hidden states of every real token."""
    total, count = None, 0

    def call(**inputs):
        f = model.features(**inputs).float()
        if model.task == "token":
            m = inputs["attention_mask"][:, :, None].float()  # (B, T, 1)
            return (f * m).sum((0, 1)), int(m.sum())
        return f.sum(0), f.shape[0]

    for _, (s, n) in forward_by_length(model, call, data, pad_id, batch_size, device, precision):
        total, count = (s if total is None else total + s), count + n
    if total is None:
        raise ValueError("mean_features of no data")
    return total / max(count, 1)


def sentence_features(model: TaskModel, data: Sequence[Encoded], pad_id: int, batch_size: int, device: torch.device,
                      precision: str = "auto") -> Tensor:
    """(N, D) float32, in input order: each example's pooled vector, or (token task) the mean of its
    real tokens' hidden states."""
    out: list = [None] * len(data)

    def call(**inputs):
        f = model.features(**inputs).float()
        if model.task == "token":
            m = inputs["attention_mask"][:, :, None].float()  # (B, T, 1)
            return (f * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)
        return f

    for idx, rows in forward_by_length(model, call, data, pad_id, batch_size, device, precision):
        for row, i in enumerate(idx):
            out[i] = rows[row].cpu()
    if not out:
        raise ValueError("sentence_features of no data")
    return torch.stack(out)


def predict(model: TaskModel, data: Sequence[Encoded], pad_id: int, batch_size: int, device: torch.device,
            precision: str = "auto", shift: Tensor | None = None,
            affine: tuple[Tensor, Tensor] | None = None) -> list:
    """Predicted label indices: one int per example, or (token task) one array per example holding a
    prediction for each kept word. Batches are formed by length, results returned in input order.
    `shift` (D,) is subtracted from the features before the head (xlmkit.tasks.evaluate's centering);
    `affine` (W (D, D), b (D,)) maps them to features @ W + b instead (its alignment)."""
    out: list = [None] * len(data)
    call = model
    if affine is not None:
        weight, bias = (t.to(device=device, dtype=torch.float32) for t in affine)
        call = lambda **a: model.head(model.features(**a).float() @ weight + bias)  # noqa: E731
    elif shift is not None:
        call = lambda **a: model.head(model.features(**a).float() - shift.to(a["input_ids"].device))  # noqa: E731
    for idx, logits in forward_by_length(model, call, data, pad_id, batch_size, device, precision):
        pred = logits.float().argmax(-1).cpu().numpy()
        for row, i in enumerate(idx):
            out[i] = pred[row, data[i].word_positions] if model.task == "token" else int(pred[row])
    return out


def score(examples: Sequence[Example], preds: Sequence, labels: Sequence[str], per_class: bool = False) -> dict[str, Any]:
    """Metrics of predictions against the examples' gold labels (token task: words dropped by truncation
    are left out and counted in `dropped_words`)."""
    from xlmkit.tasks import scores as M

    labels = list(labels)
    if examples and isinstance(examples[0].label, list):
        known = set(labels)
        gold_seqs, pred_seqs, dropped, unknown = [], [], 0, 0
        for ex, p in zip(examples, preds):
            kept = len(p)
            pairs = [(g, labels[j]) for g, j in zip(ex.label[:kept], p)]
            unknown += sum(g not in known for g, _ in pairs)
            gold_seqs.append([g for g, _ in pairs if g in known])
            pred_seqs.append([q for g, q in pairs if g in known])
            dropped += len(ex.label) - kept
        out = M.token_scores(gold_seqs, pred_seqs, per_class=per_class,
                             spans=M.is_bio_tagset(labels))
        out["dropped_words"] = dropped
        if unknown:
            out["unknown_label_words"] = unknown
        return out
    gold = [ex.label for ex in examples]
    pred = [labels[j] for j in preds]
    return M.classification_scores(gold, pred, per_class=per_class)


def dev_metric(scores: dict[str, Any]) -> tuple[str, float]:
    """The number early stopping and best-checkpoint selection look at."""
    for key in ("span_f1", "token_accuracy", "accuracy"):
        if key in scores:
            return key, float(scores[key])
    raise KeyError("no dev metric")


# ----------------------------------------------------------------------------------------------
# Saving and loading fine-tuned models


def save_finetuned(path: Path, model: TaskModel, cfg: Config, vocab: dict, spec: TaskSpec, step: int,
                   metrics: dict | None = None) -> Path:
    """A checkpoint directory: encoder weights under their pretraining names (model.safetensors, so
    checkpoint.load_model reads it), the head (head.safetensors), state.json."""
    from xlmkit.train import checkpoint as C

    state = {"format": C.FORMAT, "version": C.FORMAT_VERSION, "step": int(step), "config": config_to_dict(cfg),
             "vocab": vocab, "tokenizer": "../../tokenizer.json", "metrics": metrics or {}, "task": spec.to_json()}
    encoder_weights = model.encoder.state_dict()
    head_weights = {f"head.{k}": v for k, v in model.head.state_dict().items()}

    def write_files(tmp: Path) -> None:
        C.write_tensors(encoder_weights, tmp / C.MODEL_FILE)
        C.write_tensors(head_weights, tmp / HEAD_FILE)
        C.write_json(state, tmp / C.STATE_FILE)

    return C.atomic_write_dir(path, write_files)


@dataclass
class LoadedTaskModel:
    model: TaskModel
    spec: TaskSpec
    config: Config
    vocab: dict
    tokenizer: Any
    path: Path


def is_finetuned_dir(path: str | Path) -> bool:
    return (Path(path) / TASK_FILE).is_file()


def load_finetuned(path: str | Path, which: str = "best", device: str | torch.device = "cpu") -> LoadedTaskModel:
    from safetensors.torch import load_file

    from xlmkit.train.checkpoint import load_model

    path = Path(path)
    if not is_finetuned_dir(path):
        raise XlmkitError(f"{path}: not a fine-tuned model directory (no {TASK_FILE})")
    spec = TaskSpec.from_json(json.loads((path / TASK_FILE).read_text(encoding="utf-8")))
    if spec.task not in TASKS:  # e.g. a QA model (xlmkit qa): its head is a span head, not a classifier
        raise XlmkitError(f"{path} is a fine-tuned {spec.task!r} model, not a classification / pair / token one; "
                          f"use the command that made it (e.g. `xlmkit qa --model {path}`)")
    loaded = load_model(path, which=which, device="cpu")
    head_file = loaded.path / HEAD_FILE
    if not head_file.is_file():
        raise XlmkitError(f"{loaded.path}: no {HEAD_FILE}")
    model = TaskModel(loaded.model, len(spec.labels), spec.task, spec.pooling, loaded.config.finetune.dropout)
    head = {k[len("head."):]: v for k, v in load_file(str(head_file)).items()}
    model.head.load_state_dict(head)
    model.to(device).eval()
    return LoadedTaskModel(model, spec, loaded.config, loaded.vocab, open_tokenizer(loaded.tokenizer_path),
                           loaded.path)


# ----------------------------------------------------------------------------------------------
# The training loop


@dataclass
class FinetuneResult:
    model: TaskModel
    encoder: TaskEncoder
    spec: TaskSpec
    config: Config
    history: list[dict]
    best: dict  # {"epoch", "step", metric: value} of the kept weights
    train_stats: EncodeStats
    dev_stats: EncodeStats | None
    seconds: float


def finetune(
    loaded,  # checkpoint.LoadedModel of the pretrained encoder
    ft: FinetuneConfig,
    train_examples: Sequence[Example],
    dev_examples: Sequence[Example] | None = None,
    labels: Sequence[str] | None = None,
    pooling: str = "mean",
    use_langs: bool = True,
    unknown_lang_id: int | None = None,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
) -> FinetuneResult:
    """Fine-tune `loaded.model` with a new head on the examples through the training engine; keep the
    best dev weights. Writes the fine-tuned model directory when out_dir is given; with resume, continue
    the run in out_dir from its newest checkpoint exactly where it stopped. Under torchrun every
    process takes its rows of each batch (DDP, or FSDP with finetune.parallel=fsdp)."""
    from xlmkit.core.runtime import choose_precision, init_distributed, pick_device, seed_everything
    from xlmkit.model.encoder import TransformerLayer
    from xlmkit.train.checkpoint import best_dir, load_weights, save_checkpoint
    from xlmkit.train.engine import TrainJob, train

    t0 = time.time()
    if (getattr(loaded, "compression", None) or {}).get("int8"):
        raise XlmkitError(f"{loaded.path} is an int8-quantized run (xlmkit quantize): it cannot be fine-tuned; "
                          "fine-tune the fp32 run, then quantize the result")
    if not train_examples:
        raise DataError("no training examples (empty training split)")
    if dev_examples is not None and len(dev_examples) == 0:
        raise DataError("the dev split is empty")
    labels = tuple(labels if labels is not None else label_list(train_examples))
    if len(labels) < 2:
        raise DataError(f"the training data has a single label ({', '.join(labels)}); nothing to learn")
    dist = init_distributed(ft.dist_timeout_s, ft.device)
    device = pick_device(ft.device, dist)
    precision, precision_note = choose_precision(ft.precision, device)
    ft = dataclasses.replace(ft, precision=precision)  # resolved, saved with the model
    log = log if dist.is_main else (lambda s: None)  # only rank 0 reports
    seed_everything(ft.seed)
    encoder_model = loaded.model
    if ft.max_len > encoder_model.cfg.max_positions:
        log(f"[finetune] note: finetune.max_len={ft.max_len} > model.max_positions="
            f"{encoder_model.cfg.max_positions}; sequences are cut to {encoder_model.cfg.max_positions}")
    spec = TaskSpec(task=ft.task, labels=labels, pooling=pooling, use_langs=use_langs,
                    max_len=min(ft.max_len, encoder_model.cfg.max_positions), base_model=str(loaded.path),
                    unknown_lang_id=unknown_lang_id)
    tokenizer = open_tokenizer(loaded.tokenizer_path)
    enc = TaskEncoder(tokenizer, loaded.vocab, spec, encoder_model)
    train_data, train_stats = enc.encode(train_examples)
    log(f"[finetune] {train_stats.describe('train')}")
    dev_data, dev_stats = (None, None)
    if dev_examples is not None:
        dev_data, dev_stats = enc.encode(dev_examples)
        log(f"[finetune] {dev_stats.describe('dev')}")

    model = TaskModel(encoder_model, len(labels), ft.task, pooling, ft.dropout)
    freeze_layers(model.encoder, ft.freeze_layers)
    steps_per_epoch = math.ceil(len(train_data) / ft.batch_size)
    total = ft.max_steps if ft.max_steps > 0 else ft.epochs * steps_per_epoch
    cfg = dataclasses.replace(loaded.config, finetune=ft)
    key = selection_metric(ft.task, labels)
    out, resume_from = open_task_dir(out_dir, resume, dist, "finetune",
                                     write_files=lambda out: write_task_run_files(out, cfg, loaded, spec),
                                     check_resume=lambda ckpt, state: _check_resume(ckpt, state, spec, cfg))

    def evaluate(_wrapped: nn.Module) -> dict[str, float]:
        if dev_data is None:
            return {}
        preds = predict(model, dev_data, enc.pad_id, max(ft.batch_size, 64), device, ft.precision)
        return score(dev_examples, preds, labels)

    job = TrainJob(trained=model, loss_model=TaskLoss(model),
                   sampler=EpochSampler(train_data, ft.batch_size, enc.pad_id, ft.seed, ft.group_by_length,
                                        ft.task, dist.rank, dist.world_size),
                   evaluate=evaluate, param_groups=lambda m: param_groups(m, ft), weight_files=WEIGHT_FILES,
                   state_extra={"task": spec.to_json()}, cfg=cfg, vocab=loaded.vocab,
                   layer_types=(TransformerLayer,))
    loop = epoch_loop(ft, total, steps_per_epoch, "finetune", key, has_dev=dev_data is not None)
    log(f"[finetune] {precision_note}")
    log(f"[finetune] task={ft.task} labels={len(labels)} train={len(train_data)} dev={len(dev_data or [])} "
        f"steps={total} ({steps_per_epoch}/epoch) device={device} lr={ft.lr} head_lr={ft.head_lr} "
        f"freeze_layers={ft.freeze_layers} pooling={pooling if ft.task != 'token' else '-'}"
        + (f" processes={dist.world_size}" if dist.world_size > 1 else ""))
    result = train(job, loop, optim_config(ft, total), out, dist, device, resume_from=resume_from,
                   log=log)
    best = dict(result.best)
    if best:
        best = {"epoch": math.ceil(best["step"] / steps_per_epoch), **best}
        if out is not None:
            load_weights(model, best_dir(out), "cpu", WEIGHT_FILES)  # the kept weights
    else:  # no dev set: the final weights are the best
        best = {"epoch": math.ceil(result.step / steps_per_epoch), "step": result.step}
        if out is not None:
            save_checkpoint(best_dir(out), model=model, cfg=cfg, step=result.step, vocab=loaded.vocab,
                            metrics={"epoch": best["epoch"]}, dist=dist, weight_files=WEIGHT_FILES,
                            extra_state={"task": spec.to_json()})
    model.to(device).eval()
    return FinetuneResult(model, enc, spec, cfg, result.history, best, train_stats, dev_stats, time.time() - t0)


WEIGHT_FILES = {"encoder.": ("model.safetensors", ""), "head.": (HEAD_FILE, "head.")}


def write_task_run_files(out: Path, cfg: Config, loaded, spec) -> None:
    """A fine-tuning task's run files: config.json, vocab.json, tokenizer.json, task.json (its spec)."""
    from xlmkit.train.checkpoint import write_run_files

    write_run_files(out, cfg, loaded.vocab, loaded.tokenizer_path)
    (out / TASK_FILE).write_text(json.dumps(spec.to_json(), indent=2) + "\n", encoding="utf-8")


def report_changed_settings(state: dict, cfg: Config, name: str) -> None:
    """On resume, say which finetune.* settings differ from the checkpoint's (they apply from now on)."""
    saved_ft = config_from_dict(state["config"]).finetune
    changed = [f"finetune.{f.name}: {getattr(saved_ft, f.name)!r} -> {getattr(cfg.finetune, f.name)!r}"
               for f in dataclasses.fields(saved_ft) if getattr(saved_ft, f.name) != getattr(cfg.finetune, f.name)]
    if changed:
        print(f"[{name}] resuming with changed settings: " + "; ".join(changed))


def _check_resume(ckpt: Path, state: dict, spec: TaskSpec, cfg: Config) -> None:
    saved = TaskSpec.from_json(state.get("task") or {"task": "?", "labels": []})
    if saved.task != spec.task or saved.labels != spec.labels:
        raise XlmkitError(f"cannot resume from {ckpt}: it fine-tunes {saved.task} with labels {list(saved.labels)}, "
                          f"this run {spec.task} with {list(spec.labels)}")
    report_changed_settings(state, cfg, "finetune")


# ----------------------------------------------------------------------------------------------
# The pretrained model and its fine-tuning settings (shared with evaluate and langid)


_MODEL_OVERRIDABLE = ("dropout", "attention_dropout")


def finetune_config(base: Config, config: str | Path | None = None,
                    overrides: Sequence[str] = ()) -> tuple[FinetuneConfig, Config]:
    """(finetune section, model config) from the run's config `base`, a preset or config file `config`
    whose finetune section replaces the run's, and `overrides` ("finetune.lr=1e-4"). Only finetune.* and
    model dropouts may change: the rest of the model is fixed by its weights."""
    overrides = list(overrides)
    parsed = parse_overrides(overrides)
    for section, values in parsed.items():
        if section == "model" and set(values) <= set(_MODEL_OVERRIDABLE):
            continue
        if section != "finetune":
            raise ConfigError(f"only finetune.* settings (and model.dropout, model.attention_dropout) apply to "
                              f"fine-tuning; got {section}.{next(iter(values))}")
    if config is not None:
        ft = load_config(str(config), [o for o in overrides if o.strip().startswith("finetune.")]).finetune
    else:
        d = config_to_dict(base)
        d["finetune"].update(parsed.get("finetune", {}))
        ft = config_from_dict(d).finetune
    d = config_to_dict(base)
    d["model"].update(parsed.get("model", {}))
    return ft, config_from_dict(d)


def load_pretrained(model: str | Path, which: str = "best", config: str | Path | None = None,
                    overrides: Sequence[str] = (), command: str = "finetune"):
    """The pretrained model of the run `model` with model.dropout overrides applied, and the fine-tuning
    settings (`finetune_config`) -> (LoadedModel, FinetuneConfig). `command` names the caller in the
    refusal of an int8 run."""
    from xlmkit.train.checkpoint import load_model, refuse_int8

    refuse_int8(model, f"{command} (training)", which)
    loaded = load_model(model, which=which, device="cpu")
    ft, cfg = finetune_config(loaded.config, config, overrides)
    if cfg.model != loaded.config.model:
        for layer in loaded.model.layers:
            layer.dropout = cfg.model.dropout
            layer.attention.attention_dropout = cfg.model.attention_dropout
        loaded.model.dropout = cfg.model.dropout
        loaded.config = cfg
    return loaded, ft


def resolve_unknown_lang_id(value: str | None, vocab: dict | RunContract, model: nn.Module) -> int | None:
    """--unknown-lang-id: a language of the model's lang2id or an integer id; None stays None."""
    c = vocab if isinstance(vocab, RunContract) else RunContract.from_vocab(vocab)
    return c.for_model(model).resolve_unknown(value)


# ----------------------------------------------------------------------------------------------
# The command


def finetune_run(model: str | Path, train: str | Path | Sequence[str | Path], out: str | Path,
                 dev: str | Path | Sequence[str | Path] | None = None, task: str | None = None,
                 which: str = "best", config: str | Path | None = None, overrides: Sequence[str] = (),
                 pooling: str = "mean", unknown_lang_id: str | None = None, resume: bool = False) -> FinetuneResult:
    """`xlmkit finetune`: fine-tune the pretrained run `model` on the task files `train` (a file, comma-
    separated files or a directory; `dev` the same) and write the fine-tuned model to `out`. `task`
    overrides finetune.task; `config` / `overrides` as `finetune_config`; `unknown_lang_id` (a language
    of the model or an integer id, as a string) as `resolve_unknown_lang_id`; `resume` continues the run
    in `out` from its newest checkpoint. Under torchrun only rank 0 reports."""
    overrides = list(overrides)
    if task is not None:
        overrides = [*overrides, f"finetune.task={task}"]
    loaded, ft = load_pretrained(model, which, config, overrides, command="finetune")
    train_examples = read_task_files(train, ft.task)
    if not train_examples:
        raise DataError(f"{train}: no training examples (empty file?)")
    dev_examples = read_task_files(dev, ft.task) if dev else None
    if dev_examples is not None and not dev_examples:
        raise DataError(f"{dev}: no dev examples (empty file?)")
    for lang, exs in group_by_lang(train_examples).items():
        print(f"[finetune] train {lang}: {len(exs)} examples")
    unknown = resolve_unknown_lang_id(unknown_lang_id, loaded.vocab, loaded.model)
    from xlmkit.core.runtime import dist_info_from_env, distributed_errors

    with distributed_errors(ft.dist_timeout_s):  # another process died or hangs: one clear error
        result = finetune(loaded, ft, train_examples, dev_examples, pooling=pooling, unknown_lang_id=unknown,
                          out_dir=out, resume=resume)
    if dist_info_from_env().is_main:
        print(f"[finetune] done in {result.seconds:.1f}s; best {result.best}; model in {out}")
    return result
