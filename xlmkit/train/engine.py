"""The one training engine: pretraining, distillation and every fine-tuning task run this loop.

    result = train(job, loop, optim, out_dir, resume=False)

A task brings a `TrainJob`: the module to train (`trained`, what checkpoints hold), the module the
loop calls (`loss_model`, whose forward takes a batch's inputs and returns (summed loss, number
correct)), a sampler of batches with an exact-resume state, and an evaluation. The engine brings
everything else, the same for all: the optimizer and schedule rule, precision (core.runtime),
gradient accumulation, clipping, DDP / FSDP under torchrun, atomic checkpoints with exact resume,
best-checkpoint selection and early stopping, metrics logging and the progress bar.

One optimizer step: the sampler gives one global batch per objective (this rank's rows of it); each
is split into `grad_accum` micro-batches whose gradients add up; then clipping, AdamW, the schedule.
Each batch's loss is its summed loss divided by its number of loss terms over the whole global batch
(all ranks), so accumulation and the number of processes do not change the gradient.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor, nn

from xlmkit.core.errors import Interrupted, XlmkitError


# ----------------------------------------------------------------------------------------------
# What a task supplies


class TrainBatch(Protocol):
    """One objective's global batch (this rank's rows)."""

    name: str  # what the loss is logged as: "mlm_en", "tlm_en-fr", "classification"
    n_rows: int
    n_tokens: int  # real tokens, for tokens/s
    n_pred: int  # loss terms (predicted tokens, labelled examples): the loss is their mean

    def split_rows(self, start: int, stop: int) -> TrainBatch: ...
    def to(self, device: torch.device, non_blocking: bool = False) -> TrainBatch: ...
    def inputs(self) -> dict[str, Any]: ...  # keyword arguments of loss_model.forward


class Sampler(Protocol):
    def next_batches(self) -> list[TrainBatch]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainJob:
    trained: nn.Module  # what is optimised and checkpointed
    loss_model: nn.Module  # forward(**batch.inputs()) -> (loss_sum, n_correct); holds `trained`
    sampler: Sampler
    evaluate: Callable[[nn.Module], dict[str, float]]  # validation metrics of the (wrapped) loss_model
    param_groups: Callable[[nn.Module], list[tuple[str, list[tuple[str, nn.Parameter]], float]]] | None = None
    # (group name, [(name, parameter)], learning rate) of `trained`; None: one group at OptimConfig.lr
    weight_files: dict[str, tuple[str, str]] | None = None
    # parameter-name prefix -> (file, prefix in it) in a checkpoint (train.checkpoint.split_weights);
    # None: all in model.safetensors
    state_extra: dict = field(default_factory=dict)  # written into every checkpoint's state.json
    cfg: Any = None  # the resolved Config written into checkpoints
    vocab: dict | None = None
    layer_types: tuple[type, ...] = ()  # FSDP shards each module of these types


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "linear"  # "linear" | "inverse_sqrt" | "constant"
    max_steps: int = 1


@dataclass(frozen=True)
class LoopConfig:
    max_steps: int
    precision: str = "fp32"  # resolved (core.runtime.choose_precision)
    grad_accum: int = 1
    clip_norm: float = 1.0  # 0 = no clipping
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 500
    keep_last: int = 2
    seed: int = 0
    parallel: str = "none"
    compile: bool = False
    profile: bool = False
    select: tuple[str, str] = ("mean_ppl", "min")  # (metric, "min" | "max") choosing best/
    patience: int = 0  # stop after this many evaluations without improvement; 0 = never
    eval_at_start: bool = True  # a step-0 evaluation, where the curves start
    eval_split: str = "valid"
    name: str = "pretrain"  # progress bar and messages
    epoch_steps: int = 0  # >0: records carry "epoch" (fine-tuning)


@dataclass
class TrainResult:
    step: int
    history: list[dict]  # every record logged by this process
    last_train: dict[str, float]
    last_eval: dict[str, float]
    best: dict  # {"step", metric: value} of best/ (empty without evaluations)
    elapsed_s: float
    stopped_early: bool = False


# ----------------------------------------------------------------------------------------------
# The optimizer and schedule rule


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Multiplier of the learning rate at optimizer step `step` (0-based). Linear warmup over
    warmup_steps (the first step already has lr / warmup_steps), then: "linear" decay to 0 at
    max_steps (BERT, Devlin et al. 2019), "inverse_sqrt" sqrt(warmup / step) (Vaswani et al. 2017;
    XLM), or "constant"."""
    w = cfg.warmup_steps
    if step < w:
        return (step + 1) / w
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "linear":
        return max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - w))
    return math.sqrt(max(w, 1) / max(step, 1))  # inverse_sqrt: 1 at the end of warmup


def decays(name: str, p: Tensor) -> bool:
    """Weight decay on matrices (linear weights and embeddings), none on vectors (biases, LayerNorm
    gains), which only shift or scale: decoupled weight decay (Loshchilov & Hutter 2019) as in
    BERT's AdamWeightDecay, which excludes exactly "bias" and "LayerNorm" (Devlin et al. 2019). The
    same rule for pretraining and fine-tuning."""
    return p.ndim >= 2


def build_optimizer(groups: Sequence[tuple[str, Sequence[tuple[str, nn.Parameter]], float]], cfg: OptimConfig,
                    device: torch.device) -> torch.optim.AdamW:
    """AdamW over (name, [(param name, param)], peak learning rate) groups, each split by `decays`.
    Frozen parameters (requires_grad False) are left out."""
    from xlmkit.core.runtime import fused_optimizer_kwargs

    param_groups = []
    for _group, named, lr in groups:
        named = [(n, p) for n, p in named if p.requires_grad]
        for decay in (True, False):
            ps = [p for n, p in named if decays(n, p) == decay]
            if ps:
                param_groups.append({"params": ps, "lr": lr,
                                     "weight_decay": cfg.weight_decay if decay else 0.0})
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fused_optimizer_kwargs(device))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


# ----------------------------------------------------------------------------------------------
# Small helpers of the loop


def row_bounds(n_rows: int, n_parts: int) -> list[tuple[int, int]]:
    """[start, stop) of n_parts near-equal slices of n_rows rows (empty slices dropped)."""
    cuts = [n_rows * i // n_parts for i in range(n_parts + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def train_on_batch(model: nn.Module, batch: TrainBatch, grad_accum: int, precision: str, device: torch.device,
                   dist, sync: bool) -> float:
    """Forward and backward of one global batch (this rank's rows) in grad_accum micro-batches.
    Returns the batch's mean loss over all its loss terms (all ranks)."""
    from xlmkit.core.runtime import all_reduce_sum, autocast, grad_sync

    n_pred = float(all_reduce_sum(torch.tensor(float(batch.n_pred)), dist))  # the global batch's
    loss_sum = torch.zeros((), device=device)
    parts = row_bounds(batch.n_rows, grad_accum) or [(0, 0)]  # a rank without rows still joins DDP's backward
    for k, (start, stop) in enumerate(parts):
        micro = batch.split_rows(start, stop).to(device, non_blocking=True)
        with grad_sync(model, sync and k == len(parts) - 1), autocast(device, precision):
            micro_sum, _ = model(**micro.inputs())
            # DDP averages gradients over ranks: scale by world_size so the result is sum / n_pred
            (micro_sum * (dist.world_size / max(n_pred, 1.0))).backward()
        loss_sum += micro_sum.detach()
    return float(all_reduce_sum(loss_sum, dist)) / max(n_pred, 1.0)


def named_groups(job: TrainJob, optim: OptimConfig) -> list[tuple[str, list[tuple[str, nn.Parameter]], float]]:
    if job.param_groups is not None:
        return job.param_groups(job.trained)
    return [("all", list(job.trained.named_parameters()), optim.lr)]


def improved(value: float | None, best: float | None, mode: str) -> bool:
    if value is None or not math.isfinite(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def start_profiler(out_dir: Path, device: torch.device):
    """torch.profiler over a few steps (skip 1, warm up 1, record 3); the trace goes to RUN/profile/."""
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=3, repeat=1),
                   on_trace_ready=tensorboard_trace_handler(str(out_dir / "profile")), record_shapes=True)
    prof.start()
    return prof


def window_means(window: dict[str, list[float]]) -> dict[str, float]:
    return {k: sum(v) / len(v) for k, v in window.items() if v}


def open_run_dir(out_dir: Path, resume: bool, dist, name: str, write_files: Callable[[], None],
                 check_resume: Callable[[Path, dict], None]) -> Path | None:
    """Check the run directory against `resume` and write its run files (rank 0). Returns the
    checkpoint to resume from (the newest that verifies; damaged newer ones are reported and moved
    aside), or None for a fresh run. `check_resume(checkpoint, state)` raises when the checkpoint
    does not belong to this run's settings."""
    from xlmkit.core.runtime import barrier, broadcast_object
    from xlmkit.train.checkpoint import clean_checkpoints, latest_checkpoint, read_state, resumable_checkpoint
    from xlmkit.train.metrics import METRICS_FILE, truncate_metrics

    if dist.is_main:
        clean_checkpoints(out_dir)
    barrier(dist)
    if resume:
        found = (None, None)  # (checkpoint, error), as rank 0 finds them
        if dist.is_main:
            try:
                p = resumable_checkpoint(out_dir)
                found = (str(p) if p is not None else None, None)
            except XlmkitError as e:
                found = (None, str(e))
        found = broadcast_object(found, dist)
        if found[1] is not None:
            raise XlmkitError(found[1])
        ckpt = Path(found[0]) if found[0] is not None else None
        if (out_dir / "checkpoints").is_dir():
            from xlmkit.train.checkpoint import refuse_int8

            refuse_int8(out_dir, f"{name} --resume")
        if ckpt is None:
            raise XlmkitError(f"{out_dir}: no checkpoint to resume from; run without --resume to start")
        check_resume(ckpt, read_state(ckpt))
    else:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is not None or (out_dir / METRICS_FILE).is_file():
            raise XlmkitError(f"{out_dir} already holds a run; pass --resume to continue it or choose a new --out")
    if dist.is_main:
        write_files()
        if resume:
            truncate_metrics(out_dir, read_state(ckpt)["step"])  # steps after it are trained again
    barrier(dist)
    return ckpt if resume else None


# ----------------------------------------------------------------------------------------------
# The loop


class StopSignals:
    """SIGTERM and SIGINT, while a run trains, ask it to stop at the end of the current optimizer step
    (after a checkpoint) instead of killing it mid-step: clusters send SIGTERM before preempting a job
    (SLURM, Kubernetes), and a Ctrl-C should not lose the steps since the last save. A second signal
    of the same kind acts as it would without this (the default handler is back after the first).
    Installed only in the main thread (where Python delivers signals); elsewhere it never fires."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def requested(self, dist, device: torch.device) -> int:
        """The signal number if this process (or, under torchrun, any process: they stop at the same
        step, since saving is collective) was signalled, else 0."""
        from xlmkit.core.runtime import all_reduce_sum

        if not dist.enabled:
            return self.signum
        got = all_reduce_sum(torch.tensor([float(self.signum)], device=device), dist)
        return int(self.signum or (signal.SIGTERM if float(got) > 0 else 0))


def train(job: TrainJob, loop: LoopConfig, optim: OptimConfig, out_dir: str | Path | None, dist, device: torch.device,
          resume_from: Path | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Train `job` for loop.max_steps optimizer steps (from `resume_from`'s step when given, with its
    optimizer, schedule, sampler and RNG states: the continuation is the uninterrupted run). With
    out_dir None nothing is written and best/ is kept in memory."""
    from tqdm.auto import tqdm

    from xlmkit.core.runtime import broadcast_object, clip_grad_norm, seed_everything, wrap_model
    from xlmkit.train.checkpoint import (best_dir, best_metric, load_checkpoint, prune_checkpoints,
                                         save_checkpoint, step_dir)
    from xlmkit.train.metrics import MetricsLogger

    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    writes = out is not None
    key, mode = loop.select
    model = wrap_model(job.loss_model, dist, loop.parallel, device, job.layer_types)  # before the optimizer (FSDP)
    optimizer = build_optimizer(named_groups(job, optim), optim, device)
    scheduler = build_scheduler(optimizer, optim)
    trained_params = [p for g in optimizer.param_groups for p in g["params"]]
    step, elapsed_before, last_eval, bad_evals = 0, 0.0, {}, 0
    if resume_from is not None:
        state = load_checkpoint(resume_from, job.trained, optimizer, scheduler, device=device, dist=dist,
                                verify=False, weight_files=job.weight_files)  # verified by open_run_dir
        job.sampler.load_state_dict(state["sampler"])
        step = int(state["step"])
        elapsed_before = float(state["metrics"].get("elapsed_s", 0.0))
        last_eval = {k: v for k, v in state["metrics"].items() if k != "elapsed_s"}
        bad_evals = int((state.get("loop") or {}).get("bad_evals", 0))
    else:
        seed_everything(loop.seed + dist.rank)  # a different dropout stream per process
    if loop.compile:
        model = torch.compile(model)
    best = broadcast_object(best_metric(out, key) if writes and dist.is_main else None, dist)
    best_record: dict = {"step": step, key: best} if best is not None else {}
    best_in_memory: dict[str, Tensor] | None = None
    logger = MetricsLogger(out or ".", enabled=writes and dist.is_main, purge_step=step + 1 if resume_from else None)
    profiler = start_profiler(out, device) if loop.profile and writes and dist.is_main else None
    history: list[dict] = []

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t0

    def record(r: dict) -> None:
        if loop.epoch_steps > 0:
            r = {"epoch": math.ceil(r["step"] / loop.epoch_steps), **r}
        history.append(r)
        logger.log(r)

    def save(path: Path, with_state: bool) -> None:
        save_checkpoint(path, model=job.trained, cfg=job.cfg, step=step, vocab=job.vocab,
                        optimizer=optimizer if with_state else None, scheduler=scheduler if with_state else None,
                        sampler_state=job.sampler.state_dict() if with_state else None,
                        metrics={**last_eval, "elapsed_s": elapsed()}, dist=dist, weight_files=job.weight_files,
                        extra_state={**job.state_extra, "loop": {"bad_evals": bad_evals}})

    if step == 0 and loop.eval_at_start:
        last_eval = job.evaluate(model)
        record({"step": 0, "split": loop.eval_split, **last_eval})

    window: dict[str, list[float]] = defaultdict(list)
    window_tokens, window_start = 0, time.perf_counter()
    last_train: dict[str, float] = {}
    stopped_early = False
    bar = tqdm(total=loop.max_steps, initial=step, disable=not dist.is_main, dynamic_ncols=True, desc=loop.name)
    model.train()
    stop = StopSignals().__enter__()
    try:
        while step < loop.max_steps:
            # -- one optimizer step: every objective's batch, in micro-batches ----------------------
            batches = job.sampler.next_batches()
            step_loss = 0.0
            for i, batch in enumerate(batches):
                loss = train_on_batch(model, batch, loop.grad_accum, loop.precision, device, dist,
                                      sync=i == len(batches) - 1)
                if not math.isfinite(loss):
                    raise XlmkitError(f"the {batch.name} loss is {loss} at step {step + 1}; try a lower learning "
                                      f"rate, more warmup steps or precision fp32")
                window[f"loss_{batch.name}"].append(loss)
                window_tokens += batch.n_tokens * dist.world_size
                step_loss += loss
            grad_norm = clip_grad_norm(trained_params, loop.clip_norm if loop.clip_norm > 0 else float("inf"))
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window["loss"].append(step_loss)
            window["grad_norm"].append(float(grad_norm))
            if profiler is not None:
                profiler.step()

            # -- logging, evaluation, checkpoints ---------------------------------------------------
            if step % loop.log_every == 0 or step == loop.max_steps:
                now = time.perf_counter()
                last_train = window_means(window)
                record({"step": step, "split": "train", **last_train, "lr": lr,
                        "tokens_per_s": window_tokens / max(now - window_start, 1e-9), "elapsed_s": elapsed()})
                bar.set_postfix(loss=f"{last_train['loss']:.3f}", tok_s=f"{history[-1]['tokens_per_s']:.0f}")
                window.clear()
                window_tokens, window_start = 0, now
            bar.update(1)
            pause_start = time.perf_counter()  # evaluation and checkpoints do not count in tokens_per_s
            if step % loop.eval_every == 0 or step == loop.max_steps:
                last_eval = job.evaluate(model)
                record({"step": step, "split": loop.eval_split, **last_eval})
                is_best = improved(last_eval.get(key), best, mode)
                if key in last_eval and dist.is_main:
                    (bar.write if log is print else log)(f"[{loop.name}] step {step}: {loop.eval_split} {key} {last_eval[key]:.4f}"
                              + (" (best)" if is_best else ""))
                if is_best:  # every rank: saving is collective
                    best, bad_evals = last_eval[key], 0
                    best_record = {"step": step, key: best}
                    if writes:
                        save(best_dir(out), with_state=False)
                    else:
                        best_in_memory = {k: v.detach().to("cpu", copy=True)
                                          for k, v in job.trained.state_dict().items()}
                elif key in last_eval:
                    bad_evals += 1
                stopped_early = loop.patience > 0 and bad_evals >= loop.patience
            saved = writes and (step % loop.save_every == 0 or step == loop.max_steps or stopped_early)
            if saved:
                save(step_dir(out, step), with_state=True)
                if dist.is_main:
                    prune_checkpoints(out, loop.keep_last)
            signum = stop.requested(dist, device)
            if signum and step < loop.max_steps:
                if writes and not saved:
                    save(step_dir(out, step), with_state=True)
                    if dist.is_main:
                        prune_checkpoints(out, loop.keep_last)
                name = signal.Signals(signum).name
                raise Interrupted(f"{name} at step {step} of {loop.max_steps}: stopped after saving "
                                  f"{step_dir(out, step)} (what --resume continues from)" if writes else
                                  f"{name} at step {step} of {loop.max_steps}: stopped (no run directory: nothing "
                                  f"saved)", signum)
            window_start += time.perf_counter() - pause_start
            if stopped_early:
                log(f"[{loop.name}] early stop: no improvement of {key} in {loop.patience} evaluation(s); "
                    f"best at step {best_record.get('step')}")
                break
    finally:
        stop.__exit__()
        bar.close()
        if profiler is not None:
            profiler.stop()
        logger.close()
    if best_in_memory is not None:
        job.trained.load_state_dict(best_in_memory)
    return TrainResult(step=step, history=history, last_train=last_train, last_eval=last_eval, best=best_record,
                       elapsed_s=elapsed(), stopped_early=stopped_early)

