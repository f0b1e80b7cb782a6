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

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlmkit.core.config import Config, ConfigError, TrainConfig, config_from_dict
from xlmkit.core.errors import XlmkitError
from xlmkit.data.contract import VOCAB_FILE, RunContract
from xlmkit.model.ops import output_loss_sum
from xlmkit.train.engine import LoopConfig, OptimConfig, TrainJob, open_run_dir, row_bounds
from xlmkit.train.engine import build_optimizer as engine_build_optimizer, build_scheduler as engine_build_scheduler
from xlmkit.train.engine import lr_factor as engine_lr_factor
from xlmkit.train.batches import steps_entries


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


def optim_config(cfg: TrainConfig) -> OptimConfig:
    """The engine's optimizer and schedule settings from train.*."""
    return OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                       warmup_steps=cfg.warmup_steps, schedule=cfg.schedule, max_steps=cfg.max_steps)


def loop_config(cfg: TrainConfig) -> LoopConfig:
    return LoopConfig(max_steps=cfg.max_steps, precision=cfg.precision, grad_accum=cfg.grad_accum,
                      clip_norm=cfg.clip_norm, log_every=cfg.log_every, eval_every=cfg.eval_every,
                      save_every=cfg.save_every, keep_last=cfg.keep_last, seed=cfg.seed, parallel=cfg.parallel,
                      compile=cfg.compile, profile=cfg.profile, select=("mean_ppl", "min"), eval_at_start=True,
                      eval_split="valid", name="pretrain")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The engine's schedule (xlmkit.train.engine.lr_factor) under train.*."""
    return engine_lr_factor(step, optim_config(cfg))


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """The engine's AdamW rule (xlmkit.train.engine.build_optimizer) over all of `model`."""
    return engine_build_optimizer([("all", list(model.named_parameters()), cfg.lr)], optim_config(cfg), device)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return engine_build_scheduler(optimizer, optim_config(cfg))


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


@torch.no_grad()
def evaluate(loss_model: nn.Module, eval_sets: dict[str, list], cfg: TrainConfig, device: torch.device,
             dist) -> dict[str, float]:
    """Validation perplexity and accuracy of the masked tokens, per language (MLM) and pair (TLM), and
    their mean (`mean_ppl`, what best/ is chosen by) over the sets of the objectives this run trains:
    without TLM steps the pairs are still measured but left out of the mean, since an MLM-only run's TLM
    perplexity rises while its MLM perplexity falls, and best/ would stay at the start. Each rank takes
    its share of the rows."""
    from xlmkit.train.metrics import perplexity
    from xlmkit.core.runtime import all_reduce_sum, autocast

    was_training = loss_model.training
    loss_model.eval()
    out: dict[str, float] = {}
    trained = {obj for obj in ("mlm", "tlm", "clm") if steps_entries(cfg, obj) is not None}
    if "clm" in trained:  # the mono sets are scored with MLM; a CLM run learns those languages too
        trained.add("mlm")
    in_mean = [name for name, batches in eval_sets.items() if batches and batches[0].objective in trained]
    for name, batches in eval_sets.items():
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, predicted tokens, correct
        for batch in batches:
            mine = row_bounds(batch.n_rows, dist.world_size)[dist.rank:dist.rank + 1]
            # FSDP's forward is collective: a rank without rows of a short batch runs one row, uncounted
            part = batch.split_rows(*(mine[0] if mine else (0, 1))).to(device)
            with autocast(device, cfg.precision):
                loss_sum, n_correct = loss_model(**part.inputs())
            if mine:
                totals += torch.tensor([float(loss_sum), part.n_pred, float(n_correct)], dtype=torch.float64)
        loss, n, correct = all_reduce_sum(totals, dist).tolist()
        if n > 0:
            out[f"ppl/{name}"] = perplexity(loss / n)
            out[f"acc/{name}"] = correct / n
    ppls = [out[f"ppl/{name}"] for name in (in_mean or eval_sets) if f"ppl/{name}" in out]
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


def check_resume(ckpt: Path, state: dict, cfg: Config, vocab: dict, out_dir: Path, dist) -> None:
    """A checkpoint resumes this run only with the same model config and the same data ids."""
    from xlmkit.train.checkpoint import config_differences

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


class PretrainSamplerChecked:
    """The pretraining sampler, each batch checked against the vocabulary (a damaged shard or
    manifest gives one line, not an IndexError deep in the embedding)."""

    def __init__(self, sampler, data, vocab_size: int) -> None:
        self.sampler, self.data, self.vocab_size = sampler, data, vocab_size

    def next_batches(self) -> list:
        batches = self.sampler.next_batches()
        for batch in batches:
            check_ids(batch, self.data, self.vocab_size)
        return batches

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


@dataclasses.dataclass(frozen=True)
class RunStart:
    cfg: Config  # resolved: precision, and the model's data-derived values (or --init's model)
    data: Any  # PreparedData
    vocab: dict  # RUN/vocab.json
    init: Path | None  # the checkpoint --init starts from
    dist: Any  # DistInfo
    device: torch.device
    precision_note: str


def start_run(cfg: Config, data_dir: str | Path, init: str | Path | None) -> RunStart:
    """What every run on prepared data starts with (pretraining, translation): the process group
    under torchrun, the device, the precision the hardware gives, the data, and the config resolved
    against them (or against --init's run)."""
    from xlmkit.core.runtime import choose_precision, init_distributed, pick_device
    from xlmkit.data.format import PreparedData

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
    return RunStart(cfg, data, vocab, init_ckpt, dist, device, precision_note)


# ----------------------------------------------------------------------------------------------
# Pretraining: the MLM / TLM / CLM task on the engine


def pretrain(cfg: Config, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
             init: str | Path | None = None, teacher: str | Path | None = None) -> dict:
    """Pretrain on the prepared data in `data_dir`, writing the run to `out_dir`; with resume=True,
    continue from the run's latest checkpoint exactly where it stopped. With `init` (a run or checkpoint
    directory), start from its weights and model config: a fresh run (step 0, new optimizer and
    schedule) continuing that model's pretraining. With `teacher` (a run), distil it into the model of
    cfg (xlmkit.train.distill: the loss is DistilBERT's, the student starts from the teacher where shapes
    agree). Returns the final metrics:
    {"step", "loss", "ppl/<lang>", "acc/<lang>", ..., "mean_ppl", "best_mean_ppl", "elapsed_s"}."""
    from xlmkit.core.runtime import barrier, seed_everything, shutdown_distributed
    from xlmkit.model.encoder import TransformerLayer, XLMModel
    from xlmkit.train.batches import PretrainSampler
    from xlmkit.train.checkpoint import load_weights, write_run_files
    from xlmkit.train.engine import train

    out_dir = Path(out_dir)
    start = start_run(cfg, data_dir, init)
    cfg, data, vocab, init_ckpt, dist, device = start.cfg, start.data, start.vocab, start.init, start.dist, start.device
    precision_note = start.precision_note
    tcfg = cfg.train
    resume_from = open_run_dir(
        out_dir, resume, dist, "pretrain",
        write_files=lambda: write_run_files(out_dir, cfg, vocab, Path(data.root) / "tokenizer.json"),
        check_resume=lambda ckpt, state: check_resume(ckpt, state, cfg, vocab, out_dir, dist))

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
    sampler = PretrainSampler(data, tcfg, seed=tcfg.seed, rank=dist.rank, world_size=dist.world_size)
    eval_sets = build_eval_sets(data, tcfg)
    for batch in (b for batches in eval_sets.values() for b in batches):
        check_ids(batch, data, cfg.model.vocab_size)
    job = TrainJob(trained=encoder, loss_model=loss_model,
                   sampler=PretrainSamplerChecked(sampler, data, cfg.model.vocab_size),
                   evaluate=lambda model: evaluate(loss_model, eval_sets, tcfg, device, dist),
                   cfg=cfg, vocab=vocab, layer_types=(TransformerLayer,))
    if dist.is_main:
        print(f"[pretrain] {precision_note}")  # once the run has started: a refused run says only why
        n_params = sum(p.numel() for p in encoder.parameters())
        print(f"[pretrain] {n_params / 1e6:.2f}M parameters on {device} ({tcfg.precision}); objectives "
              f"{', '.join(sampler.objectives)}; {dist.world_size} process(es); run dir {out_dir}")
    result = train(job, loop_config(tcfg), optim_config(tcfg), out_dir, dist, device, resume_from=resume_from)
    barrier(dist)
    shutdown_distributed()
    return {"step": result.step, **({"loss": result.last_train["loss"]} if "loss" in result.last_train else {}),
            **{k: v for k, v in result.last_eval.items() if k != "elapsed_s"},
            "best_mean_ppl": result.best.get("mean_ppl"), "elapsed_s": result.elapsed_s}

