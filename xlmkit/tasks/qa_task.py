"""Extractive question answering as a fine-tuning task: a span head on the pretrained encoder, trained
on the one training engine, n-best span decoding over every window of an example, and the XQuAD
zero-shot protocol (`xlmkit qa`).

    result = finetune_qa(loaded, ft, train_examples, out_dir="runs/qa")          # -> QAFinetuneResult
    answers = predict_answers(result.model, examples, result.spec, contract)    # {qid: answer text}
    res = zero_shot_qa("runs/small", "../shared/data/qa/xquad", "runs/small/eval/xquad",
                       unknown_lang_id="en")                                     # xlmkit qa

Input layout (xlmkit.tasks.qa.qa_features, the contract's pair framing): the question first, then one
window of the context, `first q </s> </s> c </s>` with `first` = RunContract.first_id (`</s>` for XLM
runs, `<s>` for XLM-R imports). Positions are those of RunContract.pair: restarting at 0 for the
context side for XLM runs (the TLM layout the encoder saw in pretraining, Lample & Conneau 2019), one
run for XLM-R style runs; every token carries the example's language id (question and context share
a language), none for a model without language embeddings.

Long contexts are cut into windows of at most max_len ids (question and separators included) that
overlap by `stride` context tokens (BERT's doc_stride). A window that does not hold the first gold
answer whole targets its first token for both start and end (BERT's SQuAD convention, Devlin et al.
2019): such windows are kept, so the model learns to score "not here" low against a window that has
the answer; they are never decoded, since decoding looks at context tokens only.

Model and loss: `SpanModel` = encoder -> nn.Linear(D, 2) on the last hidden states (start and end
logits per token), exactly transformers' `*ForQuestionAnswering` heads (no dropout before the head, so
export is a renaming); padding positions get -inf. Loss per window = (CE(start) + CE(end)) / 2, the
mean over windows: the engine divides the summed loss by `n_pred` = 2 targets per window.

Prediction: every window's start / end logits over its context tokens, the n_best starts x n_best ends
of each window with end >= start and at most max_answer_tokens tokens, the best-scoring span over all
windows of the example (start + end logit, as BERT), mapped back to the original characters through
the tokenizer's offsets (xlmkit.tasks.qa.decode_answer). Exact match and F1 (qa_scores) with MLQA's
normalisation of the example's language.

Optimisation, schedule, checkpoints and exact resume are the engine's (`finetune.*` settings:
lr, head_lr, batch_size, epochs, warmup_ratio, ...; `finetune.max_len` is not used, max_len is a QA
setting of its own). Without dev examples the final weights are kept as best/ (the zero-shot protocol
has no dev set: nothing is selected on test languages).

Output directory (a fine-tuning run's layout; `checkpoint.load_model(QA_DIR)` loads the encoder):

    QA_DIR/config.json, vocab.json, tokenizer.json, metrics.jsonl
    QA_DIR/task.json          {"task": "qa", max_len, stride, max_question_tokens, max_answer_tokens, n_best, ...}
    QA_DIR/checkpoints/best/  model.safetensors (encoder) + head.safetensors (head.weight (2, D), head.bias) + state.json
    QA_DIR/checkpoints/step_N/  the same with the optimizer, resumable
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlmkit.core.config import Config, FinetuneConfig
from xlmkit.core.errors import DataError, XlmkitError
from xlmkit.core.integrity import open_tokenizer
from xlmkit.data.contract import RunContract
from xlmkit.tasks.finetune import (HEAD_FILE, TASK_FILE, Encoded, EpochSampler, epoch_loop, open_task_dir,
                                   optim_config, param_groups, report_changed_settings, write_task_run_files,
                                   spec_from_json, spec_to_json)
from xlmkit.tasks.qa import QAExample, QAFeature, decode_answer, qa_features, qa_scores, read_squad

QA_TASK = "qa"
WEIGHT_FILES = {"encoder.": ("model.safetensors", ""), "head.": (HEAD_FILE, "head.")}
DEFAULT_MAX_LEN = 384


# ----------------------------------------------------------------------------------------------
# What the fine-tuned model is


@dataclass(frozen=True)
class QASpec:
    """Everything besides weights that a QA model needs to be used again (QA_DIR/task.json)."""

    max_len: int = DEFAULT_MAX_LEN  # ids per window, question and separators included
    stride: int = 128  # context tokens shared by consecutive windows
    max_question_tokens: int = 64
    max_answer_tokens: int = 30
    n_best: int = 20
    use_langs: bool = True
    base_model: str = ""
    unknown_lang_id: int | None = None
    task: str = QA_TASK
    labels: tuple[str, ...] = ("start", "end")  # the head's two outputs (task.json readers expect labels)

    def to_json(self) -> dict:
        return spec_to_json(self)

    @classmethod
    def from_json(cls, d: dict) -> QASpec:
        return spec_from_json(cls, d)


# ----------------------------------------------------------------------------------------------
# Examples -> model inputs


def contract_for(vocab: dict | RunContract, tokenizer, model: nn.Module) -> RunContract:
    c = vocab if isinstance(vocab, RunContract) else RunContract.from_vocab(vocab, tokenizer)
    return c.with_wrap().for_model(model)


def window_inputs(feature: QAFeature, contract: RunContract, lang_id: int | None) -> Encoded:
    """One window as model input: the pair layout's positions and language ids (module docstring);
    target (start, end) positions in ids."""
    ids = feature.ids
    n1 = feature.context_start - 1  # `first q </s>`: the question side of the pair
    if contract.wrap() == "xlm":
        positions = np.concatenate([np.arange(n1, dtype=np.int64), np.arange(len(ids) - n1, dtype=np.int64)])
    else:
        positions = np.arange(len(ids), dtype=np.int64)
    langs = None if lang_id is None else np.full(len(ids), lang_id, dtype=np.int64)
    return Encoded(ids, langs, positions, np.array(feature.target, dtype=np.int64))


@dataclass
class QAData:
    """Examples with their windows: features[k] is inputs[k]; offsets[i] are example i's context tokens'
    character offsets."""

    examples: list[QAExample]
    features: list[QAFeature]
    inputs: list[Encoded]
    offsets: list[list[tuple[int, int]]]

    def describe(self, what: str) -> str:
        n_ex = len(self.examples)
        holding = sum(f.target != (0, 0) for f in self.features)
        return (f"{what}: {n_ex} questions, {len(self.features)} windows "
                f"({len(self.features) / max(n_ex, 1):.2f} per question, {holding} holding the answer)")


def encode_qa(tokenizer, examples: Sequence[QAExample], spec: QASpec, contract: RunContract) -> QAData:
    """Examples -> their windows as model inputs. A language the model has no embedding for takes
    spec.unknown_lang_id, else it is an error naming the question."""
    examples = list(examples)
    features, offsets = qa_features(tokenizer, examples, contract.first_id, contract.eos_id, spec.max_len,
                                    spec.stride, spec.max_question_tokens)
    lang_ids: dict[str, int | None] = {}
    inputs = []
    for f in features:
        ex = examples[f.example]
        if ex.lang not in lang_ids:
            lang_ids[ex.lang] = (contract.lang_id(ex.lang, unknown=spec.unknown_lang_id, where=f"question {ex.qid}")
                                 if spec.use_langs else None)
        inputs.append(window_inputs(f, contract, lang_ids[ex.lang]))
    return QAData(examples, features, inputs, offsets)


# ----------------------------------------------------------------------------------------------
# The model: pretrained encoder + span head, and its loss


class SpanModel(nn.Module):
    """encoder (XLMModel) -> linear (D -> 2) on every position: (B, T, 2) start / end logits, the head
    of transformers' XLMForQuestionAnsweringSimple / XLMRobertaForQuestionAnswering."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        encoder.mlm_head.requires_grad_(False)  # not used here (DDP must expect no gradient for it)
        self.head = nn.Linear(encoder.cfg.dim, 2)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: Tensor, langs: Tensor | None, positions: Tensor, attention_mask: Tensor) -> Tensor:
        h = self.encoder(input_ids, langs=langs, positions=positions, attention_mask=attention_mask)  # (B, T, D)
        return self.head(h)  # (B, T, 2)


def span_logits(model: SpanModel, input_ids: Tensor, langs: Tensor | None, positions: Tensor,
                attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(start, end) logits (B, T) in fp32, -inf at padding."""
    logits = model(input_ids, langs, positions, attention_mask).float()  # (B, T, 2)
    logits = logits.masked_fill(~attention_mask[:, :, None], float("-inf"))
    return logits[..., 0], logits[..., 1]


class SpanLoss(nn.Module):
    """SpanModel + cross-entropy of the start and of the end position as one module (what DDP wraps):
    (summed CE(start) + CE(end) over the windows, windows with both right). The engine divides by the
    batch's n_pred, 2 per window: the loss is the mean over windows of (CE(start) + CE(end)) / 2."""

    def __init__(self, model: SpanModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, langs: Tensor | None, positions: Tensor, attention_mask: Tensor,
                target: Tensor) -> tuple[Tensor, Tensor]:
        start, end = span_logits(self.model, input_ids, langs, positions, attention_mask)  # (B, T) each
        loss_sum = F.cross_entropy(start, target[:, 0], reduction="sum") + F.cross_entropy(end, target[:, 1],
                                                                                            reduction="sum")
        correct = ((start.argmax(-1) == target[:, 0]) & (end.argmax(-1) == target[:, 1])).sum()
        return loss_sum, correct


# ----------------------------------------------------------------------------------------------
# Prediction


@torch.no_grad()
def window_logits(model: SpanModel, inputs: Sequence[Encoded], pad_id: int, batch_size: int, device: torch.device,
                  precision: str = "fp32") -> list[tuple[np.ndarray, np.ndarray]]:
    """(start, end) logits (L,) of every window, in input order (batches formed by length)."""
    from xlmkit.tasks.finetune import forward_by_length

    out: list = [None] * len(inputs)
    for idx, (start, end) in forward_by_length(model, lambda **a: span_logits(model, **a), inputs, pad_id,
                                               batch_size, device, precision):
        start, end = start.float().cpu().numpy(), end.float().cpu().numpy()
        for row, i in enumerate(idx):
            n = len(inputs[i].ids)
            out[i] = (start[row, :n], end[row, :n])
    return out


def decode_all(data: QAData, logits: Sequence[tuple[np.ndarray, np.ndarray]], spec: QASpec) -> dict[str, str]:
    """{qid: answer text}: the best span over all of an example's windows (decode_answer), context
    tokens only."""
    windows: dict[int, list] = defaultdict(list)
    for f, (s, e) in zip(data.features, logits):
        n = f.window[1] - f.window[0]
        windows[f.example].append((f.window[0], s[f.context_start:f.context_start + n],
                                   e[f.context_start:f.context_start + n]))
    return {ex.qid: decode_answer(ex.context, data.offsets[i], windows.get(i, []), spec.n_best, spec.max_answer_tokens)
            for i, ex in enumerate(data.examples)}


def predict_answers(model: SpanModel, data: QAData, spec: QASpec, pad_id: int, batch_size: int = 64,
                    device: torch.device | str = "cpu", precision: str = "fp32") -> dict[str, str]:
    device = torch.device(device)
    return decode_all(data, window_logits(model, data.inputs, pad_id, batch_size, device, precision), spec)


# ----------------------------------------------------------------------------------------------
# Fine-tuning on the engine


@dataclass
class QAFinetuneResult:
    model: SpanModel
    spec: QASpec
    contract: RunContract
    tokenizer: Any
    config: Config
    history: list[dict]
    best: dict
    train_data: QAData
    seconds: float


def _check_resume(ckpt: Path, state: dict, spec: QASpec, cfg: Config) -> None:
    saved = state.get("task") or {}
    if saved.get("task") != QA_TASK:
        raise XlmkitError(f"cannot resume from {ckpt}: it fine-tunes {saved.get('task', '?')!r}, not question answering")
    saved_spec = QASpec.from_json(saved)
    fields = ("max_len", "stride", "max_question_tokens", "use_langs", "unknown_lang_id")
    changed = [f"{f}: {getattr(saved_spec, f)!r} -> {getattr(spec, f)!r}" for f in fields
               if getattr(saved_spec, f) != getattr(spec, f)]
    if changed:
        raise XlmkitError(f"cannot resume from {ckpt}: its windows differ from this run's ({'; '.join(changed)})")
    report_changed_settings(state, cfg, "qa")


def resolve_spec(model: nn.Module, max_len: int | None = None, **settings) -> QASpec:
    """A QASpec whose max_len fits the model's positions (default min(384, model.max_positions))."""
    limit = int(model.cfg.max_positions)
    max_len = min(DEFAULT_MAX_LEN, limit) if max_len is None else max_len
    if max_len > limit:
        raise XlmkitError(f"max_len {max_len} > model.max_positions {limit}")
    spec = QASpec(max_len=max_len, **settings)
    if not 0 <= spec.stride:
        raise XlmkitError(f"stride must be >= 0, got {spec.stride}")
    if spec.max_answer_tokens < 1 or spec.n_best < 1:
        raise XlmkitError("max_answer_tokens and n_best must be >= 1")
    return spec


def finetune_qa(
    loaded,  # checkpoint.LoadedModel of the pretrained encoder
    ft: FinetuneConfig,
    train_examples: Sequence[QAExample],
    dev_examples: Sequence[QAExample] | None = None,
    spec: QASpec | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> QAFinetuneResult:
    """Fine-tune `loaded.model` with a span head on the examples through the training engine. With dev
    examples, best/ is the checkpoint of the best dev F1 (evaluated every epoch); without, the final
    weights. Writes the QA model directory when out_dir is given; with resume, continue the run in
    out_dir from its newest checkpoint exactly where it stopped."""
    from xlmkit.core.runtime import choose_precision, init_distributed, pick_device, seed_everything
    from xlmkit.model.encoder import TransformerLayer
    from xlmkit.tasks.finetune import freeze_layers
    from xlmkit.train.checkpoint import best_dir, load_weights, save_checkpoint
    from xlmkit.train.engine import TrainJob, train

    t0 = time.time()
    if (getattr(loaded, "compression", None) or {}).get("int8"):
        raise XlmkitError(f"{loaded.path} is an int8-quantized run (xlmkit quantize): it cannot be fine-tuned")
    if not train_examples:
        raise DataError("no QA training examples")
    if dev_examples is not None and len(dev_examples) == 0:
        raise DataError("the QA dev set is empty")
    dist = init_distributed(ft.dist_timeout_s, ft.device)
    device = pick_device(ft.device, dist)
    precision, precision_note = choose_precision(ft.precision, device)
    ft = dataclasses.replace(ft, precision=precision)
    log = log if dist.is_main else (lambda s: None)
    seed_everything(ft.seed)
    encoder = loaded.model
    spec = spec or resolve_spec(encoder)
    if spec.max_len > encoder.cfg.max_positions:
        raise XlmkitError(f"QA max_len {spec.max_len} > model.max_positions {encoder.cfg.max_positions}")
    spec = dataclasses.replace(spec, base_model=str(loaded.path))
    tokenizer = open_tokenizer(loaded.tokenizer_path)
    contract = contract_for(loaded.vocab, tokenizer, encoder)
    train_data = encode_qa(tokenizer, train_examples, spec, contract)
    log(f"[qa] {train_data.describe('train')}")
    dev_data = encode_qa(tokenizer, dev_examples, spec, contract) if dev_examples is not None else None
    if dev_data is not None:
        log(f"[qa] {dev_data.describe('dev')}")

    model = SpanModel(encoder)
    freeze_layers(model.encoder, ft.freeze_layers)
    steps_per_epoch = math.ceil(len(train_data.inputs) / ft.batch_size)
    total = ft.max_steps if ft.max_steps > 0 else ft.epochs * steps_per_epoch
    cfg = dataclasses.replace(loaded.config, finetune=ft)
    out, resume_from = open_task_dir(out_dir, resume, dist, "qa",
                                     write_files=lambda out: write_task_run_files(out, cfg, loaded, spec),
                                     check_resume=lambda ckpt, state: _check_resume(ckpt, state, spec, cfg))

    def evaluate(_wrapped: nn.Module) -> dict[str, float]:
        if dev_data is None:
            return {}
        answers = predict_answers(model, dev_data, spec, contract.pad_id, max(ft.batch_size, 64), device,
                                  ft.precision)
        s = qa_scores(answers, dev_data.examples)
        return {"exact_match": s["exact_match"], "f1": s["f1"]}

    job = TrainJob(trained=model, loss_model=SpanLoss(model),
                   sampler=EpochSampler(train_data.inputs, ft.batch_size, contract.pad_id, ft.seed, ft.group_by_length,
                                        QA_TASK, dist.rank, dist.world_size),
                   evaluate=evaluate, param_groups=lambda m: param_groups(m, ft), weight_files=WEIGHT_FILES,
                   state_extra={"task": spec.to_json()}, cfg=cfg, vocab=loaded.vocab, layer_types=(TransformerLayer,))
    loop = epoch_loop(ft, total, steps_per_epoch, "qa", "f1", has_dev=dev_data is not None)
    log(f"[qa] {precision_note}")
    log(f"[qa] windows={len(train_data.inputs)} steps={total} ({steps_per_epoch}/epoch) device={device} lr={ft.lr} "
        f"head_lr={ft.head_lr} max_len={spec.max_len} stride={spec.stride}"
        + (f" processes={dist.world_size}" if dist.world_size > 1 else ""))
    result = train(job, loop, optim_config(ft, total), out, dist, device, resume_from=resume_from, log=log)
    best = dict(result.best)
    if best:
        best = {"epoch": math.ceil(best["step"] / steps_per_epoch), **best}
        if out is not None:
            load_weights(model, best_dir(out), "cpu", WEIGHT_FILES)
    else:  # no dev set: the final weights are the best
        best = {"epoch": math.ceil(result.step / steps_per_epoch), "step": result.step}
        if out is not None:
            save_checkpoint(best_dir(out), model=model, cfg=cfg, step=result.step, vocab=loaded.vocab,
                            metrics={"epoch": best["epoch"]}, dist=dist, weight_files=WEIGHT_FILES,
                            extra_state={"task": spec.to_json()})
    model.to(device).eval()
    return QAFinetuneResult(model, spec, contract, tokenizer, cfg, result.history, best, train_data, time.time() - t0)


# ----------------------------------------------------------------------------------------------
# Loading a fine-tuned QA model


@dataclass
class LoadedQAModel:
    model: SpanModel
    spec: QASpec
    config: Config
    vocab: dict
    tokenizer: Any
    contract: RunContract
    path: Path
    tokenizer_path: Path


def is_qa_dir(path: str | Path) -> bool:
    f = Path(path) / TASK_FILE
    if not f.is_file():
        return False
    try:
        return json.loads(f.read_text(encoding="utf-8")).get("task") == QA_TASK
    except (OSError, ValueError):
        return False


def load_qa_model(path: str | Path, which: str = "best", device: str | torch.device = "cpu") -> LoadedQAModel:
    from safetensors.torch import load_file

    from xlmkit.train.checkpoint import load_model

    path = Path(path)
    if not is_qa_dir(path):
        raise XlmkitError(f"{path}: not a fine-tuned QA model directory (no {TASK_FILE} with task 'qa')")
    spec = QASpec.from_json(json.loads((path / TASK_FILE).read_text(encoding="utf-8")))
    loaded = load_model(path, which=which, device="cpu")
    head_file = loaded.path / HEAD_FILE
    if not head_file.is_file():
        raise XlmkitError(f"{loaded.path}: no {HEAD_FILE}")
    model = SpanModel(loaded.model)
    model.head.load_state_dict({k[len("head."):]: v for k, v in load_file(str(head_file)).items()})
    model.to(device).eval()
    tokenizer = open_tokenizer(loaded.tokenizer_path)
    return LoadedQAModel(model, spec, loaded.config, loaded.vocab, tokenizer,
                         contract_for(loaded.vocab, tokenizer, loaded.model), loaded.path, loaded.tokenizer_path)


# ----------------------------------------------------------------------------------------------
# The XQuAD zero-shot protocol (../shared/data/README.md, qa/)


def xquad_files(xquad_dir: str | Path, langs: Sequence[str] | None = None) -> dict[str, Path]:
    """{lang: xquad.{lang}.json} of a directory, in the order given (default: sorted)."""
    d = Path(xquad_dir)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory (expected xquad.<lang>.json files)")
    found = {p.name[len("xquad."):-len(".json")]: p for p in sorted(d.glob("xquad.*.json"))}
    if not found:
        raise DataError(f"{d}: no xquad.<lang>.json files")
    if langs is None:
        return found
    missing = [lang for lang in langs if lang not in found]
    if missing:
        raise DataError(f"{d}: no xquad file for {', '.join(missing)} (has: {', '.join(found)})")
    return {lang: found[lang] for lang in langs}


def split_articles(examples: Sequence[QAExample], n_first: int, n_last: int, where: str
                   ) -> tuple[list[QAExample], list[QAExample]]:
    """(examples of the first n_first articles, examples of the last n_last articles) of one file."""
    n_articles = max((ex.article for ex in examples), default=-1) + 1
    if n_first + n_last > n_articles:
        raise DataError(f"{where}: {n_articles} articles, fewer than the {n_first} training + {n_last} test articles "
                        "the protocol needs")
    first = [ex for ex in examples if ex.article < n_first]
    last = [ex for ex in examples if ex.article >= n_articles - n_last]
    return first, last


def zero_shot_qa(
    model: str | Path,
    xquad_dir: str | Path,
    out: str | Path,
    train_lang: str = "en",
    langs: Sequence[str] | None = None,
    train_articles: int = 32,
    test_articles: int = 16,
    which: str = "best",
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    unknown_lang_id: str | None = None,
    skip_misaligned: bool = False,
    max_len: int | None = None,
    stride: int = 128,
    max_question_tokens: int = 64,
    max_answer_tokens: int = 30,
    n_best: int = 20,
    resume: bool = False,
) -> dict[str, Any]:
    """`xlmkit qa`: fine-tune the pretrained run `model` on the `train_lang` questions of the first
    `train_articles` articles of XQuAD, test on the last `test_articles` articles in every language
    (`langs`, default all files of xquad_dir); a QA model directory (this function's OUT/model) is only
    tested. Writes OUT/model (the QA model), OUT/xquad.json + .md (per-language EM / F1, the average
    over the zero-shot languages, i.e. all but train_lang) and returns the table's dict. An answer not
    at its answer_start is an error naming the question, or with skip_misaligned dropped and counted."""
    from xlmkit.core.langs import canonical_lang
    from xlmkit.core.tables import average_of, write_table
    from xlmkit.tasks.finetune import load_pretrained, resolve_unknown_lang_id

    t0 = time.time()
    out = Path(out)
    files = xquad_files(xquad_dir, langs)
    if train_lang not in files:
        raise DataError(f"{xquad_dir}: no xquad.{train_lang}.json for the training language")
    data: dict[str, tuple[list[QAExample], int]] = {}
    for lang, path in files.items():
        data[lang] = read_squad(path, canonical_lang(lang), skip_misaligned=skip_misaligned)
    tests = {}
    train_examples: list[QAExample] = []
    for lang, (exs, _skipped) in data.items():
        first, last = split_articles(exs, train_articles, test_articles, str(files[lang]))
        tests[lang] = last
        if lang == train_lang:
            train_examples = first
    notes: list[str] = []
    train_s = 0.0
    if is_qa_dir(model):
        qa = load_qa_model(model, which=which)
        qa_model, spec, contract, tokenizer, ft = qa.model, qa.spec, qa.contract, qa.tokenizer, qa.config.finetune
        if unknown_lang_id is not None:
            spec = dataclasses.replace(spec, unknown_lang_id=resolve_unknown_lang_id(unknown_lang_id, qa.vocab,
                                                                                      qa.model.encoder))
        model_dir = Path(model)
        notes.append(f"tested the QA model {model} (no training)")
    else:
        loaded, ft = load_pretrained(model, which, config, overrides, command="qa")
        unknown = resolve_unknown_lang_id(unknown_lang_id, loaded.vocab, loaded.model)
        spec = resolve_spec(loaded.model, max_len, stride=stride, max_question_tokens=max_question_tokens,
                            max_answer_tokens=max_answer_tokens, n_best=n_best, unknown_lang_id=unknown)
        c = RunContract.from_vocab(loaded.vocab).for_model(loaded.model)
        missing = c.missing_langs(list(files)) if c.has_lang_emb else []
        if missing and unknown is None:  # before training, not after
            raise XlmkitError(f"the model has no language embedding for {', '.join(missing)} (knows "
                              f"{', '.join(sorted(c.lang2id))}); pass --unknown-lang-id LANG|ID to give them another "
                              "language's id, or --langs to test fewer languages")
        print(f"[qa] train: {len(train_examples)} {train_lang} questions of the first {train_articles} articles")
        model_dir = out / "model"
        res = finetune_qa(loaded, ft, train_examples, spec=spec, out_dir=model_dir, resume=resume)
        qa_model, spec, contract, tokenizer, ft = res.model, res.spec, res.contract, res.tokenizer, res.config.finetune
        train_s = res.seconds
        notes.append(f"trained on {len(train_examples)} {train_lang} questions ({len(res.train_data.inputs)} windows) "
                     f"in {train_s:.0f}s")
    device = next(qa_model.parameters()).device
    rows = []
    for lang, exs in tests.items():
        t = time.time()
        qd = encode_qa(tokenizer, exs, spec, contract)
        answers = predict_answers(qa_model, qd, spec, contract.pad_id, max(ft.batch_size, 64), device, ft.precision)
        s = qa_scores(answers, qd.examples)
        row = {"lang": lang, "n": s["n"], "windows": len(qd.inputs), "exact_match": s["exact_match"], "f1": s["f1"]}
        if skip_misaligned:
            row["skipped"] = data[lang][1]
        rows.append(row)
        print(f"[qa] {lang}: EM {s['exact_match']:.2f} F1 {s['f1']:.2f} ({s['n']} questions, {time.time() - t:.1f}s)")
        missing = contract.missing_langs([lang]) if contract.has_lang_emb and spec.use_langs else []
        if missing:
            notes.append(f"{lang}: no language embedding, given id {spec.unknown_lang_id} (--unknown-lang-id)")
    zero_shot = [r for r in rows if r["lang"] != train_lang]
    average = average_of(zero_shot or rows, ["exact_match", "f1"])
    notes.insert(0, f"average: over the zero-shot languages ({', '.join(r['lang'] for r in zero_shot) or '-'}); "
                    f"{train_lang} is the training language")
    skipped = {lang: n for lang, (_, n) in data.items() if n}
    if skipped:
        notes.append("misaligned answers skipped (--skip-misaligned): "
                     + ", ".join(f"{lang} {n}" for lang, n in skipped.items()))
    columns = ["lang", "n", "windows", "exact_match", "f1"] + (["skipped"] if skip_misaligned else [])
    meta = {"model": str(model), "qa_model": str(model_dir), "data": str(xquad_dir), "train_lang": train_lang,
            "train_articles": train_articles, "test_articles": test_articles, "train_questions": len(train_examples),
            "qa": spec.to_json(), "train_seconds": round(train_s, 1), "seconds": round(time.time() - t0, 1)}
    json_path, md_path = write_table(out / "xquad", rows, columns, "XQuAD zero-shot (EM / F1)", average, meta, notes)
    print(f"[qa] average over zero-shot languages: EM {average.get('exact_match', float('nan')):.2f} "
          f"F1 {average.get('f1', float('nan')):.2f}; results in {md_path}")
    return json.loads(json_path.read_text(encoding="utf-8"))
