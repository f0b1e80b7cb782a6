"""`xlmkit pretrain`: pretrain an XLM encoder with MLM / TLM / CLM (Lample & Conneau 2019) on prepared data.

    xlmkit pretrain --config tiny --data DATA --out RUN [--resume] [--set train.max_steps=600 ...]
    torchrun --nproc-per-node 4 -m xlmkit pretrain ...          # DDP, one process per GPU

    metrics = pretrain(cfg, data_dir, out_dir, resume=False)

One optimizer step: the sampler gives one global batch per active objective (this rank's rows of it);
each is split into `grad_accum` micro-batches whose gradients add up; then gradient clipping, AdamW,
the learning-rate schedule. The sum over objectives is what is minimised: XLM alternates objectives
with one optimizer step each, and adding their gradients is the one-step analogue. Every objective's
loss is the mean cross-entropy over its predicted tokens of the whole global batch, so accumulation
and the number of processes do not change the gradient.

Writes (rank 0 only): RUN/config.json (resolved), RUN/vocab.json, RUN/tokenizer.json, RUN/metrics.jsonl,
RUN/tb/, RUN/checkpoints/ (see xlmkit.train.checkpoint), RUN/profile/ (train.profile).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlmkit.core.config import Config, ConfigError, TrainConfig, add_config_arguments, config_from_args, config_from_dict
from xlmkit.core.errors import XlmkitError
from xlmkit.data.contract import VOCAB_FILE, RunContract
from xlmkit.model.ops import output_loss_sum


# ----------------------------------------------------------------------------------------------
# Small helpers


def resolve_config(cfg: Config, data, model=None) -> Config:
    """Fill in the model's data-derived values from the prepared data's manifest (or take `model`, a
    resolved ModelConfig, as it is: --init)."""
    if model is None:
        model = dataclasses.replace(cfg.model, vocab_size=data.vocab_size, n_langs=len(data.lang2id),
                                    pad_id=data.specials.pad)
    if cfg.train.bptt > model.max_positions:
        raise ConfigError(f"train.bptt ({cfg.train.bptt}) exceeds model.max_positions ({model.max_positions})")
    if cfg.train.tlm_max_len > model.max_positions:
        raise ConfigError(f"train.tlm_max_len ({cfg.train.tlm_max_len}) exceeds model.max_positions "
                          f"({model.max_positions})")
    return dataclasses.replace(cfg, model=model)


def vocab_info(data) -> dict:
    """RUN/vocab.json: what a user of the model needs to know of the data's vocabulary (the run contract)."""
    return RunContract.from_data(data).to_vocab()


def init_from(init: str | Path, cfg: Config, data, vocab: dict) -> tuple[Config, dict, Path]:
    """`--init RUN_OR_CHECKPOINT`: the model config of that run (not the preset's) and its checkpoint
    (best/, else the latest) to load the weights from. The data must have been prepared with the
    run's tokenizer and ids (`xlmkit prepare --tokenizer RUN`). Returns (config, vocab.json, checkpoint)."""
    from xlmkit.train.checkpoint import read_state, refuse_int8, resolve_checkpoint

    refuse_int8(init, "pretrain --init")
    ckpt = resolve_checkpoint(Path(init), "best")
    state = read_state(ckpt)
    model = config_from_dict(state["config"]).model
    run_vocab = ckpt.parent.parent / VOCAB_FILE
    if state.get("vocab"):
        run = RunContract.from_vocab(state["vocab"])
    else:
        run = RunContract.read(run_vocab) if run_vocab.is_file() else RunContract(has_specials=False)
    mine = RunContract.from_vocab(vocab)
    hint = f"; prepare the data with `xlmkit prepare --tokenizer {init}`"
    if data.vocab_size != model.vocab_size or data.vocab_size != (run.vocab_size or model.vocab_size):
        raise XlmkitError(f"--init {init}: the data's vocab_size {data.vocab_size} differs from the model's "
                          f"{model.vocab_size}{hint}")
    if run.has_specials and mine.specials != run.specials:
        raise XlmkitError(f"--init {init}: the data's special ids {dataclasses.asdict(mine.specials)} differ from "
                          f"the run's {dataclasses.asdict(run.specials)}{hint}")
    same = {k: v for k, v in mine.lang2id.items() if k in run.lang2id}
    new = sorted(set(mine.lang2id) - set(run.lang2id))
    if same != {k: v for k, v in run.lang2id.items() if k in same} or (new and model.use_lang_emb):
        raise XlmkitError(f"--init {init}: the data's lang2id {dict(mine.lang2id)} differs from the run's "
                          f"{dict(run.lang2id)}{hint}")
    out = mine.replace(sentence_wrap=run.sentence_wrap, special_tokens=run.special_tokens or mine.special_tokens,
                       extra={**mine.extra, "init": str(ckpt.resolve())})
    return resolve_config(dataclasses.replace(cfg, model=model), data, model), out.to_vocab(), ckpt


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based). Linear warmup over warmup_steps (the first
    step already has lr / warmup_steps), then: "linear" decay to 0 at max_steps, "inverse_sqrt"
    sqrt(warmup / step) (Vaswani et al. 2017; XLM), or "constant"."""
    w = cfg.warmup_steps
    if step < w:
        return (step + 1) / w
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "linear":
        return max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - w))
    return math.sqrt(max(w, 1) / max(step, 1))  # inverse_sqrt: 1 at the end of warmup


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay (Loshchilov & Hutter 2019) on matrices (linear weights and
    embeddings, as BERT), none on vectors (biases, LayerNorm gains), which only shifts or scales."""
    from xlmkit.core.runtime import fused_optimizer_kwargs

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                             **fused_optimizer_kwargs(device))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


class PretrainingLoss(nn.Module):
    """The encoder, its tied output layer and the loss as one module, so that DDP and torch.compile see
    the whole computation. Returns (summed cross-entropy over predicted tokens, number correct); the
    count is only taken in eval mode (validation accuracy): in training nobody reads it, and an argmax
    over the (N, V) logits costs ~5% of a CPU step."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: Tensor, langs: Tensor, positions: Tensor, attention_mask: Tensor,
                pred_mask: Tensor, targets: Tensor, causal: bool = False) -> tuple[Tensor, Tensor]:
        # (N, D): hidden states, and the output layer, only where a loss is taken
        h_pred = self.encoder(input_ids, langs=langs, positions=positions, attention_mask=attention_mask,
                              causal=causal, output_mask=pred_mask)
        if self.training:
            head = self.encoder.mlm_head  # one tied output layer for MLM, TLM and CLM
            loss_sum = output_loss_sum(head.transform(h_pred), self.encoder.output_weight, head.bias, targets)
            return loss_sum, loss_sum.new_zeros(())
        logits = self.encoder.mlm_logits(h_pred)  # (N, V), the same layer as clm_logits
        loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
        return loss_sum, (logits.argmax(-1) == targets).sum()


def batch_inputs(batch) -> dict:
    return dict(input_ids=batch.input_ids, langs=batch.langs, positions=batch.positions,
                attention_mask=batch.attention_mask, pred_mask=batch.pred_mask, targets=batch.targets,
                causal=batch.causal)


def row_bounds(n_rows: int, n_parts: int) -> list[tuple[int, int]]:
    """[start, stop) of n_parts near-equal slices of n_rows rows (empty slices dropped)."""
    cuts = [n_rows * i // n_parts for i in range(n_parts + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def train_on_batch(model: nn.Module, batch, cfg: TrainConfig, device: torch.device, dist, sync: bool) -> float:
    """Forward and backward of one global batch (this rank's rows) in grad_accum micro-batches.
    Returns the batch's mean loss over all its predicted tokens (all ranks)."""
    from xlmkit.core.runtime import all_reduce_sum, autocast, grad_sync

    n_pred = float(all_reduce_sum(torch.tensor(float(batch.n_pred)), dist))  # the global batch's
    loss_sum = torch.zeros((), device=device)
    parts = row_bounds(batch.n_rows, cfg.grad_accum)
    for k, (start, stop) in enumerate(parts):
        micro = batch.split_rows(start, stop).to(device, non_blocking=True)
        with grad_sync(model, sync and k == len(parts) - 1), autocast(device, cfg.precision):
            micro_sum, _ = model(**batch_inputs(micro))
            # DDP averages gradients over ranks: scale by world_size so the result is sum / n_pred
            (micro_sum * (dist.world_size / max(n_pred, 1.0))).backward()
        loss_sum += micro_sum.detach()
    return float(all_reduce_sum(loss_sum, dist)) / max(n_pred, 1.0)


@torch.no_grad()
def evaluate(loss_model: nn.Module, eval_sets: dict[str, list], cfg: TrainConfig, device: torch.device,
             dist) -> dict[str, float]:
    """Validation perplexity and accuracy of the masked tokens, per language (MLM) and pair (TLM), and
    their mean over every language and pair (`mean_ppl`, what best/ is chosen by). Each rank takes its
    share of the rows."""
    from xlmkit.train.metrics import perplexity
    from xlmkit.core.runtime import all_reduce_sum, autocast

    was_training = loss_model.training
    loss_model.eval()
    out: dict[str, float] = {}
    for name, batches in eval_sets.items():
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, predicted tokens, correct
        for batch in batches:
            mine = row_bounds(batch.n_rows, dist.world_size)[dist.rank:dist.rank + 1]
            # FSDP's forward is collective: a rank without rows of a short batch runs one row, uncounted
            part = batch.split_rows(*(mine[0] if mine else (0, 1))).to(device)
            with autocast(device, cfg.precision):
                loss_sum, n_correct = loss_model(**batch_inputs(part))
            if mine:
                totals += torch.tensor([float(loss_sum), part.n_pred, float(n_correct)], dtype=torch.float64)
        loss, n, correct = all_reduce_sum(totals, dist).tolist()
        if n > 0:
            out[f"ppl/{name}"] = perplexity(loss / n)
            out[f"acc/{name}"] = correct / n
    ppls = [v for k, v in out.items() if k.startswith("ppl/")]
    if ppls:
        out["mean_ppl"] = sum(ppls) / len(ppls)
    loss_model.train(was_training)
    return out


def check_ids(batch, data, vocab_size: int) -> None:
    """A one-line error instead of an IndexError deep in the embedding when the data holds an id the
    sampled check of PreparedData missed (a damaged shard or manifest)."""
    if batch.input_ids.numel() and int(batch.input_ids.max()) >= vocab_size:
        raise XlmkitError(f"{data.manifest_path}: a {batch.task} batch holds token id {int(batch.input_ids.max())} "
                          f">= vocab_size {vocab_size}; the data is damaged (check it with "
                          f"`xlmkit info --verify {data.root}`)")


def build_eval_sets(data, cfg: TrainConfig) -> dict[str, list]:
    """Fixed validation batches (the same at every evaluation): MLM for every language with
    monolingual validation text, TLM for every pair with parallel validation text."""
    from xlmkit.train.batches import eval_batches

    sets = {}
    for lang in data.mono_languages:
        if data.count("mono", lang, "valid") > 0:
            sets[lang] = eval_batches(data, lang, "valid", cfg, cfg.eval_batches, seed=cfg.seed)
    for pair in data.pairs:
        if data.count("para", pair, "valid") > 0:
            sets[pair] = eval_batches(data, pair, "valid", cfg, cfg.eval_batches, seed=cfg.seed)
    return {k: v for k, v in sets.items() if v}


def prepare_run_dir(out_dir: Path, cfg: Config, data, vocab: dict, resume: bool, dist) -> Path | None:
    """Check the run directory against `resume`; write config.json, vocab.json, tokenizer.json (rank 0).
    Returns the checkpoint to resume from, or None for a fresh run."""
    from xlmkit.train.checkpoint import (clean_checkpoints, config_differences, latest_checkpoint, read_state,
                                   resumable_checkpoint, write_run_files)
    from xlmkit.train.metrics import METRICS_FILE, truncate_metrics
    from xlmkit.core.runtime import barrier, broadcast_object

    if dist.is_main:
        clean_checkpoints(out_dir)
    barrier(dist)
    if resume:  # the newest checkpoint that verifies; damaged newer ones are reported and moved aside
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
    else:
        ckpt = latest_checkpoint(out_dir)
    if resume:
        from xlmkit.train.checkpoint import refuse_int8

        if (out_dir / "checkpoints").is_dir():
            refuse_int8(out_dir, "pretrain --resume")
        if ckpt is None:
            raise XlmkitError(f"{out_dir}: no checkpoint to resume from; run without --resume to start")
        state = read_state(ckpt)
        saved = config_from_dict(state["config"])
        diffs = config_differences(saved, cfg, ("model",))
        if diffs:
            raise XlmkitError(f"cannot resume from {ckpt}: the model config differs: " + "; ".join(diffs)
                              + f" (pass the original settings, e.g. --config {out_dir / 'config.json'})")
        if state.get("vocab"):
            saved_c, data_c = RunContract.from_vocab(state["vocab"]), RunContract.from_vocab(vocab)
            for key, theirs, mine in (
                    ("lang2id", dict(saved_c.lang2id) or None, dict(data_c.lang2id)),
                    ("vocab_size", saved_c.vocab_size, data_c.vocab_size),
                    ("specials", dataclasses.asdict(saved_c.specials) if saved_c.has_specials else None,
                     dataclasses.asdict(data_c.specials))):
                if theirs is not None and theirs != mine:
                    raise XlmkitError(f"cannot resume from {ckpt}: the data's {key} differs from the checkpoint's "
                                      f"({theirs} != {mine}); was it prepared differently?")
        changed = config_differences(saved, cfg, ("train",))
        if changed and dist.is_main:
            print("[pretrain] resuming with changed train settings: " + "; ".join(changed))
    elif ckpt is not None or (out_dir / METRICS_FILE).is_file():
        raise XlmkitError(f"{out_dir} already holds a run; pass --resume to continue it or choose a new --out")
    if dist.is_main:
        write_run_files(out_dir, cfg, vocab, Path(data.root) / "tokenizer.json")
        if ckpt is not None:
            truncate_metrics(out_dir, read_state(ckpt)["step"])  # steps after it are trained again
    barrier(dist)
    return ckpt if resume else None


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


# ----------------------------------------------------------------------------------------------
# The loop


def pretrain(cfg: Config, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
             init: str | Path | None = None, teacher: str | Path | None = None) -> dict:
    """Pretrain on the prepared data in `data_dir`, writing the run to `out_dir`; with resume=True,
    continue from the run's latest checkpoint exactly where it stopped. With `init` (a run or checkpoint
    directory), start from its weights and model config: a fresh run (step 0, new optimizer and
    schedule) continuing that model's pretraining. With `teacher` (a run), distil it into the model of
    cfg (xlmkit.train.distill: the loss is DistilBERT's, the student starts from the teacher where shapes
    agree). Returns the final metrics:
    {"step", "loss", "ppl/<lang>", "acc/<lang>", ..., "mean_ppl", "best_mean_ppl", "elapsed_s"}."""
    from tqdm.auto import tqdm

    from xlmkit.train.batches import PretrainSampler
    from xlmkit.train.checkpoint import (best_dir, best_metric, load_checkpoint, load_weights, prune_checkpoints,
                                   save_checkpoint, step_dir)
    from xlmkit.data.format import PreparedData
    from xlmkit.train.metrics import MetricsLogger
    from xlmkit.model.encoder import TransformerLayer, XLMModel
    from xlmkit.core.runtime import (barrier, broadcast_object, choose_precision, clip_grad_norm, init_distributed,
                                pick_device, seed_everything, shutdown_distributed, wrap_model)

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    dist = init_distributed(cfg.train.dist_timeout_s, cfg.train.device)
    device = pick_device(cfg.train.device, dist)
    precision, precision_note = choose_precision(cfg.train.precision, device)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))  # resolved, in config.json
    data = PreparedData(data_dir)
    vocab = vocab_info(data)
    init_ckpt = None
    if init is not None:
        cfg, vocab, init_ckpt = init_from(init, cfg, data, vocab)
    else:
        cfg = resolve_config(cfg, data)
    tcfg = cfg.train
    resume_from = prepare_run_dir(out_dir, cfg, data, vocab, resume, dist)

    seed_everything(tcfg.seed)
    encoder = XLMModel(cfg.model)
    if init_ckpt is not None and resume_from is None:
        load_weights(encoder, init_ckpt)  # before wrap_model: FSDP shards what it is given
    if teacher is not None:
        from xlmkit.train.distill import DistillationLoss, init_student, load_teacher

        teacher_model = load_teacher(teacher, data, device)
        if resume_from is None:
            init_student(encoder, teacher_model)
        loss_model = DistillationLoss(encoder, teacher_model, tcfg.distill_temperature, tcfg.distill_alpha_kl,
                                      tcfg.distill_alpha_mlm, tcfg.distill_alpha_cos)
    else:
        loss_model = PretrainingLoss(encoder)
    model = wrap_model(loss_model, dist, tcfg.parallel, device, units=(TransformerLayer,))  # to device; before the optimizer (FSDP shards)
    optimizer = build_optimizer(encoder, tcfg, device)
    scheduler = build_scheduler(optimizer, tcfg)
    sampler = PretrainSampler(data, tcfg, seed=tcfg.seed, rank=dist.rank, world_size=dist.world_size)
    eval_sets = build_eval_sets(data, tcfg)
    for batch in (b for batches in eval_sets.values() for b in batches):
        check_ids(batch, data, cfg.model.vocab_size)
    step, elapsed_before, last_valid = 0, 0.0, {}
    if resume_from is not None:
        state = load_checkpoint(resume_from, encoder, optimizer, scheduler, device=device, dist=dist,
                                verify=False)  # verified by prepare_run_dir
        sampler.load_state_dict(state["sampler"])
        step = int(state["step"])
        elapsed_before = float(state["metrics"].get("elapsed_s", 0.0))
        last_valid = {k: v for k, v in state["metrics"].items() if k not in ("elapsed_s",)}
    else:
        seed_everything(tcfg.seed + dist.rank)  # a different dropout stream per process
    if tcfg.compile:
        model = torch.compile(model)
    best = broadcast_object(best_metric(out_dir) if dist.is_main else None, dist)
    logger = MetricsLogger(out_dir, enabled=dist.is_main, purge_step=step + 1 if resume_from else None)
    profiler = start_profiler(out_dir, device) if tcfg.profile and dist.is_main else None
    if dist.is_main:
        print(f"[pretrain] {precision_note}")  # once the run has started: a refused run says only why
        n_params = sum(p.numel() for p in encoder.parameters())
        print(f"[pretrain] {n_params / 1e6:.2f}M parameters on {device} ({tcfg.precision}); objectives "
              f"{', '.join(sampler.objectives)}; {dist.world_size} process(es); run dir {out_dir}")

    if step == 0:  # where validation starts from, for the curves
        last_valid = evaluate(loss_model, eval_sets, cfg.train, device, dist)
        logger.log({"step": 0, "split": "valid", **last_valid})

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t0

    window: dict[str, list[float]] = defaultdict(list)
    window_tokens, window_start = 0, time.perf_counter()
    last_train: dict[str, float] = {}
    bar = tqdm(total=tcfg.max_steps, initial=step, disable=not dist.is_main, dynamic_ncols=True, desc="pretrain")
    model.train()
    try:
        while step < tcfg.max_steps:
            # -- one optimizer step: every objective's batch, in micro-batches ----------------------
            batches = sampler.next_batches()
            step_loss = 0.0
            for i, batch in enumerate(batches):
                check_ids(batch, data, cfg.model.vocab_size)
                loss = train_on_batch(model, batch, tcfg, device, dist, sync=i == len(batches) - 1)
                if not math.isfinite(loss):
                    raise XlmkitError(f"the {batch.objective} loss on {batch.task} is {loss} at step {step + 1}; "
                                      f"try a lower train.lr, more train.warmup_steps or train.precision=fp32")
                window[f"loss_{batch.objective}_{batch.task}"].append(loss)
                window_tokens += batch.n_tokens * dist.world_size
                step_loss += loss
            grad_norm = clip_grad_norm(encoder.parameters(), tcfg.clip_norm if tcfg.clip_norm > 0 else float("inf"))
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
            if step % tcfg.log_every == 0 or step == tcfg.max_steps:
                now = time.perf_counter()
                last_train = window_means(window)
                record = {"step": step, "split": "train", **last_train, "lr": lr,
                          "tokens_per_s": window_tokens / max(now - window_start, 1e-9), "elapsed_s": elapsed()}
                logger.log(record)
                bar.set_postfix(loss=f"{last_train['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                window.clear()
                window_tokens, window_start = 0, now
            bar.update(1)
            pause_start = time.perf_counter()  # evaluation and checkpoints do not count in tokens_per_s
            if step % tcfg.eval_every == 0 or step == tcfg.max_steps:
                last_valid = evaluate(loss_model, eval_sets, tcfg, device, dist)
                logger.log({"step": step, "split": "valid", **last_valid})
                mean_ppl = last_valid.get("mean_ppl")
                if mean_ppl is not None and (best is None or mean_ppl < best):  # every rank: collective
                    best = mean_ppl
                    save_checkpoint(best_dir(out_dir), model=encoder, cfg=cfg, step=step, vocab=vocab,
                                    metrics={**last_valid, "elapsed_s": elapsed()}, dist=dist)
            if step % tcfg.save_every == 0 or step == tcfg.max_steps:
                save_checkpoint(step_dir(out_dir, step), model=encoder, cfg=cfg, step=step, optimizer=optimizer,
                                scheduler=scheduler, sampler_state=sampler.state_dict(), vocab=vocab,
                                metrics={**last_valid, "elapsed_s": elapsed()}, dist=dist)
                if dist.is_main:
                    prune_checkpoints(out_dir, tcfg.keep_last)
            window_start += time.perf_counter() - pause_start
    finally:
        bar.close()
        if profiler is not None:
            profiler.stop()
        logger.close()
    barrier(dist)
    shutdown_distributed()
    return {"step": step, **({"loss": last_train["loss"]} if "loss" in last_train else {}),
            **{k: v for k, v in last_valid.items() if k != "elapsed_s"}, "best_mean_ppl": best,
            "elapsed_s": elapsed()}


# ----------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="prepared data directory (from `xlmkit prepare`)")
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its latest checkpoint (same config)")
    parser.add_argument("--init", metavar="RUN_OR_CHECKPOINT",
                        help="start a new run from this run's weights and model config (e.g. one made by "
                             "`xlmkit import`); prepare --data with `xlmkit prepare --tokenizer RUN`")
    add_config_arguments(parser, default="tiny")


def run(args: argparse.Namespace) -> int:
    from xlmkit.core.runtime import dist_info_from_env, distributed_errors

    cfg = config_from_args(args)
    with distributed_errors(cfg.train.dist_timeout_s):  # another process died or hangs: one clear error
        final = pretrain(cfg, args.data, args.out, resume=args.resume, init=args.init)
    if not dist_info_from_env().is_main:  # only rank 0 reports
        return 0
    langs = sorted(k[4:] for k in final if k.startswith("ppl/"))
    if langs:
        print(f"[pretrain] step {final['step']}: validation perplexity "
              + ", ".join(f"{lang} {final[f'ppl/{lang}']:.2f}" for lang in langs)
              + (f"; mean {final['mean_ppl']:.2f}" if "mean_ppl" in final else ""))
    print(f"[pretrain] done in {final['elapsed_s']:.1f}s: {args.out}")
    return 0
