"""Typed, frozen configuration.

A run is described by one `Config`: a preset (`tiny`, `small`, `base`), optionally a TOML or YAML
file that overrides some of its fields, then dotted command-line overrides (`--set train.lr=3e-4`).
Values that depend on the data (vocabulary size, number of languages, special ids) are not user
settings: they are computed once from the prepared data's manifest and passed explicitly
(`ModelConfig` carries them once resolved, with `dataclasses.replace`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class PrepareConfig:
    """Raw text -> cleaned text -> shared tokenizer -> token shards."""

    vocab_size: int = 8000
    tokenizer: str = "unigram"  # "unigram" (SentencePiece-style, XLM-R) or "bpe" (XLM)
    alpha: float = 0.3  # language-balanced tokenizer sample: p(lang) ∝ n_lang^alpha (Conneau et al. 2019)
    tokenizer_sample_sentences: int = 300_000  # total sentences in the tokenizer's training sample
    lowercase: bool = False
    strip_accents: bool = False
    dedup: bool = True
    min_chars: int = 1  # lines shorter than this (after cleaning) are dropped
    max_chars: int = 2000  # lines longer than this are dropped
    max_lines: int = 0  # read at most this many lines of each input file (0 = all)
    valid_sentences: int = 1000  # per language / pair; capped at 10% of its sentences
    test_sentences: int = 1000
    seed: int = 0
    workers: int = 2
    skip_bad_lines: bool = False  # skip lines with invalid UTF-8 instead of failing
    chunk_lines: int = 20_000  # lines per unit of streaming work
    # Share of the sample's characters the vocabulary must cover (SentencePiece's; 0.9995 as XLM-R): the
    # rarest become <unk> (or bytes). Lowered by itself when those characters would not fit the vocabulary.
    character_coverage: float = 0.9995
    byte_fallback: bool = False  # unigram only: characters outside the vocabulary become <0xXX> byte pieces
    # Codes accepted as languages although not ISO 639-1 / 639-3 (private or new codes), e.g. "xx,pcm-ng".
    extra_langs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 16, f"prepare.vocab_size must be >= 16, got {self.vocab_size}")
        _check(self.tokenizer in ("unigram", "bpe"),
               f"prepare.tokenizer must be 'unigram' or 'bpe', got {self.tokenizer!r}")
        _check(0.0 <= self.alpha <= 1.0, f"prepare.alpha must be in [0, 1], got {self.alpha}")
        _check(self.min_chars >= 1, "prepare.min_chars must be >= 1")
        _check(self.max_chars >= self.min_chars, "prepare.max_chars must be >= prepare.min_chars")
        _check(self.max_lines >= 0, "prepare.max_lines must be >= 0")
        _check(self.valid_sentences >= 0 and self.test_sentences >= 0,
               "prepare.valid_sentences and prepare.test_sentences must be >= 0")
        _check(self.workers >= 1, "prepare.workers must be >= 1")
        _check(self.chunk_lines >= 1, "prepare.chunk_lines must be >= 1")
        _check(self.tokenizer_sample_sentences >= 1, "prepare.tokenizer_sample_sentences must be >= 1")
        _check(self.seed >= 0, f"prepare.seed must be >= 0, got {self.seed}")
        _check(0.0 < self.character_coverage <= 1.0,
               f"prepare.character_coverage must be in (0, 1], got {self.character_coverage}")
        _check(not self.byte_fallback or self.tokenizer == "unigram",
               "prepare.byte_fallback needs prepare.tokenizer=unigram")


@dataclass(frozen=True)
class ModelConfig:
    """The XLM Transformer encoder (Lample & Conneau 2019); XLM-R style with use_lang_emb=False."""

    dim: int = 512
    n_layers: int = 6
    n_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.1
    max_positions: int = 512
    use_lang_emb: bool = True  # XLM: language embeddings; XLM-R: none
    sinusoidal_embeddings: bool = False
    pre_ln: bool = False  # XLM is post-LN; pre-LN trains more stably at depth
    head_transform: bool = False  # MLM head: False = XLM's tied linear; True = XLM-R's dense+GELU+LN, then tied
    layer_norm_eps: float = 1e-12
    # Derived from the data (manifest), filled in by `resolve_model_config`; 0 / -1 = not yet known.
    vocab_size: int = 0
    n_langs: int = 0
    pad_id: int = -1

    def __post_init__(self) -> None:
        _check(self.dim > 0 and self.n_layers > 0 and self.n_heads > 0 and self.ffn_dim > 0,
               "model.dim, model.n_layers, model.n_heads and model.ffn_dim must be > 0")
        _check(self.dim % self.n_heads == 0,
               f"model.dim ({self.dim}) must be divisible by model.n_heads ({self.n_heads})")
        _check(0.0 <= self.dropout < 1.0 and 0.0 <= self.attention_dropout < 1.0,
               "model.dropout and model.attention_dropout must be in [0, 1)")
        _check(self.max_positions > 0, "model.max_positions must be > 0")
        _check(self.layer_norm_eps > 0, f"model.layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @property
    def resolved(self) -> bool:
        return self.vocab_size > 0 and self.n_langs > 0 and self.pad_id >= 0


@dataclass(frozen=True)
class TrainConfig:
    """Pretraining: objectives, optimisation, evaluation, checkpoints."""

    # Step mix (XLM): languages for MLM / CLM ("en", "fr"), pairs for TLM ("en-fr").
    # mlm_steps = () means every language of the data; tlm_steps = () means every pair of the data.
    mlm_steps: tuple[str, ...] = ()
    tlm_steps: tuple[str, ...] = ()
    clm_steps: tuple[str, ...] = ("none",)  # "none" disables CLM
    lang_alpha: float = 0.7  # p(lang) ∝ n_lang^alpha (Lample & Conneau 2019, section 3.1)
    bptt: int = 256  # tokens per MLM / CLM stream sequence
    tlm_max_len: int = 256  # max tokens of a concatenated TLM pair
    batch_size: int = 32  # sequences per optimizer step, global (all processes, before accumulation split)
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    adam_eps: float = 1e-6
    warmup_steps: int = 100
    schedule: str = "linear"  # "linear" | "inverse_sqrt" | "constant"
    clip_norm: float = 1.0  # 0 = no clipping
    precision: str = "auto"  # "auto" (bf16 where the hardware has it, else fp32; xlmkit.core.runtime) | "bf16" | "fp32"
    compile: bool = False
    word_pred: float = 0.15  # fraction of tokens predicted (Devlin et al. 2019)
    mask_prob: float = 0.8  # of predicted tokens: replaced by <mask>
    random_prob: float = 0.1  # replaced by a random token; the rest are kept
    sample_alpha: float = 0.0  # >0: choose targets ∝ freq^-alpha (XLM's frequency-weighted masking)
    eval_every: int = 200
    eval_batches: int = 20
    save_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    parallel: str = "none"  # "none" (one process; DDP is used automatically under torchrun) | "ddp" | "fsdp"
    dist_timeout_s: int = 300
    profile: bool = False
    # Distillation (`xlmkit distill`; Sanh et al. 2019, DistilBERT's weights and temperature)
    distill_temperature: float = 2.0
    distill_alpha_kl: float = 5.0  # soft targets: KL(teacher / T || student / T) * T^2
    distill_alpha_mlm: float = 2.0  # the MLM loss on the true tokens
    distill_alpha_cos: float = 1.0  # 1 - cos(student hidden, teacher hidden); only where the widths agree

    def __post_init__(self) -> None:
        _check(self.bptt >= 4, "train.bptt must be >= 4")
        _check(self.batch_size >= 1 and self.grad_accum >= 1, "train.batch_size and train.grad_accum must be >= 1")
        _check(self.batch_size % self.grad_accum == 0,
               f"train.batch_size ({self.batch_size}) must be divisible by train.grad_accum ({self.grad_accum})")
        _check(self.max_steps >= 1, "train.max_steps must be >= 1")
        _check(self.lr > 0, "train.lr must be > 0")
        _check(self.schedule in ("linear", "inverse_sqrt", "constant"),
               f"train.schedule must be linear, inverse_sqrt or constant, got {self.schedule!r}")
        _check(self.precision in ("auto", "bf16", "fp32"),
               f"train.precision must be auto, bf16 or fp32, got {self.precision!r}")
        _check(0.0 < self.word_pred < 1.0, "train.word_pred must be in (0, 1)")
        _check(self.mask_prob >= 0 and self.random_prob >= 0 and self.mask_prob + self.random_prob <= 1.0,
               "train.mask_prob + train.random_prob must be <= 1")
        _check(self.parallel in ("none", "ddp", "fsdp"), f"train.parallel must be none, ddp or fsdp, got {self.parallel!r}")
        _check(self.lang_alpha >= 0, "train.lang_alpha must be >= 0")
        _check(self.eval_every >= 1 and self.save_every >= 1 and self.log_every >= 1,
               "train.eval_every, train.save_every and train.log_every must be >= 1")
        _check(self.keep_last >= 1, "train.keep_last must be >= 1")
        _check(self.distill_temperature > 0, "train.distill_temperature must be > 0")
        _check(min(self.distill_alpha_kl, self.distill_alpha_mlm, self.distill_alpha_cos) >= 0,
               "train.distill_alpha_kl, distill_alpha_mlm and distill_alpha_cos must be >= 0")
        _check(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.tlm_max_len >= 4, f"train.tlm_max_len must be >= 4, got {self.tlm_max_len}")
        _check(self.eval_batches >= 1, f"train.eval_batches must be >= 1, got {self.eval_batches}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0, "train.beta1 and train.beta2 must be in [0, 1)")
        _check(self.adam_eps > 0, f"train.adam_eps must be > 0, got {self.adam_eps}")
        _check(self.clip_norm >= 0, f"train.clip_norm must be >= 0 (0 = no clipping), got {self.clip_norm}")
        _check(self.sample_alpha >= 0, f"train.sample_alpha must be >= 0, got {self.sample_alpha}")
        _check(self.seed >= 0, f"train.seed must be >= 0, got {self.seed}")
        _check(self.dist_timeout_s >= 1, f"train.dist_timeout_s must be >= 1, got {self.dist_timeout_s}")


@dataclass(frozen=True)
class FinetuneConfig:
    """Downstream fine-tuning (classification, pair classification, token classification)."""

    task: str = "classification"  # "classification" | "pair" | "token"
    train_lang: str = "en"
    max_len: int = 128
    batch_size: int = 32
    epochs: int = 3
    max_steps: int = 0  # 0 = epochs decide
    lr: float = 2e-5  # encoder
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    freeze_layers: int = 0
    dropout: float = 0.1
    patience: int = 0  # early stopping on the dev language; 0 = off
    precision: str = "auto"  # as train.precision
    group_by_length: bool = True  # batches of similar lengths (xlmkit.tasks.finetune.training_batches)
    grad_accum: int = 1
    clip_norm: float = 1.0  # 0 = no clipping
    save_every: int = 0  # steps between resumable checkpoints; 0 = every epoch
    log_every: int = 0  # steps between train records in metrics.jsonl; 0 = every epoch
    keep_last: int = 2
    parallel: str = "none"  # as train.parallel (DDP is used automatically under torchrun)
    dist_timeout_s: int = 300
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        _check(self.task in ("classification", "pair", "token"),
               f"finetune.task must be classification, pair or token, got {self.task!r}")
        _check(self.max_len >= 4 and self.batch_size >= 1, "finetune.max_len must be >= 4 and batch_size >= 1")
        _check(self.precision in ("auto", "bf16", "fp32"),
               f"finetune.precision must be auto, bf16 or fp32, got {self.precision!r}")
        _check(self.freeze_layers >= 0, "finetune.freeze_layers must be >= 0")
        _check(self.epochs >= 1, f"finetune.epochs must be >= 1, got {self.epochs}")
        _check(self.max_steps >= 0, f"finetune.max_steps must be >= 0 (0 = epochs decide), got {self.max_steps}")
        _check(self.lr > 0 and self.head_lr > 0, "finetune.lr and finetune.head_lr must be > 0")
        _check(self.weight_decay >= 0, f"finetune.weight_decay must be >= 0, got {self.weight_decay}")
        _check(0.0 <= self.warmup_ratio < 1.0, f"finetune.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(0.0 <= self.dropout < 1.0, f"finetune.dropout must be in [0, 1), got {self.dropout}")
        _check(self.patience >= 0, f"finetune.patience must be >= 0 (0 = off), got {self.patience}")
        _check(self.seed >= 0, f"finetune.seed must be >= 0, got {self.seed}")
        _check(self.grad_accum >= 1, f"finetune.grad_accum must be >= 1, got {self.grad_accum}")
        _check(self.clip_norm >= 0, f"finetune.clip_norm must be >= 0 (0 = no clipping), got {self.clip_norm}")
        _check(self.save_every >= 0, f"finetune.save_every must be >= 0 (0 = every epoch), got {self.save_every}")
        _check(self.keep_last >= 1, f"finetune.keep_last must be >= 1, got {self.keep_last}")
        _check(self.log_every >= 0, f"finetune.log_every must be >= 0 (0 = every epoch), got {self.log_every}")
        _check(self.parallel in ("none", "ddp", "fsdp"),
               f"finetune.parallel must be none, ddp or fsdp, got {self.parallel!r}")
        _check(self.dist_timeout_s >= 1, f"finetune.dist_timeout_s must be >= 1, got {self.dist_timeout_s}")


def _lambda_ok(spec: str) -> bool:
    """XLM's lambda schedule: a constant ("1", "0.1") or "step:value,step:value,..." (linear between)."""
    try:
        if ":" not in spec:
            return float(spec) >= 0
        points = [tuple(float(x) for x in part.split(":")) for part in spec.split(",")]
        steps = [p[0] for p in points]
        return all(len(p) == 2 and p[1] >= 0 for p in points) and steps == sorted(steps) and steps[0] == 0
    except ValueError:
        return False


@dataclass(frozen=True)
class TranslateConfig:
    """Machine translation (`xlmkit train-mt`; Lample & Conneau 2019, section 5): the step mix of
    supervised (mt), denoising (ae) and back-translation (bt) steps. Optimisation, batch size,
    evaluation and checkpoints come from the train section, as in pretraining."""

    # mt: directions "de-en" trained on the parallel text; () = both directions of every pair; "none" = off
    mt_steps: tuple[str, ...] = ()
    # ae: languages denoised (C(x) -> x); () = every language with monolingual text; "none" = off
    ae_steps: tuple[str, ...] = ("none",)
    # bt: directions "en-fr": monolingual en is translated to fr by the model, fr -> en is trained
    bt_steps: tuple[str, ...] = ("none",)
    lambda_mt: str = "1"  # weight of each objective's loss, XLM's schedule syntax "0:1,100000:0.1"
    lambda_ae: str = "1"
    lambda_bt: str = "1"
    word_shuffle: float = 3.0  # ae noise (Lample et al. 2018; XLM's defaults)
    word_dropout: float = 0.1
    word_blank: float = 0.1
    max_len: int = 100  # ids per side, framing included; longer sentences are cut
    eval_sentences: int = 200  # BLEU / chrF on the first N valid pairs of each direction
    beam_size: int = 1  # of the evaluation decoding
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lambda_mt", "lambda_ae", "lambda_bt"):
            _check(_lambda_ok(getattr(self, name)),
                   f"mt.{name} must be a number >= 0 or 'step:value,...' from step 0, got {getattr(self, name)!r}")
        _check(self.word_shuffle >= 0 and 0 <= self.word_dropout < 1 and 0 <= self.word_blank < 1,
               "mt.word_shuffle must be >= 0, mt.word_dropout and mt.word_blank in [0, 1)")
        _check(self.max_len >= 4, f"mt.max_len must be >= 4, got {self.max_len}")
        _check(self.eval_sentences >= 0, f"mt.eval_sentences must be >= 0, got {self.eval_sentences}")
        _check(self.beam_size >= 1, f"mt.beam_size must be >= 1, got {self.beam_size}")


@dataclass(frozen=True)
class Config:
    preset: str = "base"
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    mt: TranslateConfig = field(default_factory=TranslateConfig)


SECTIONS = ("prepare", "model", "train", "finetune", "mt")

# Presets: `tiny` runs every command on CPU in seconds (tests use it), `small` trains something
# meaningful on CPU in minutes, `base` is XLM-base-like (Lample & Conneau 2019 used D=1024 for XLM-15).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "prepare": dict(vocab_size=1000, tokenizer_sample_sentences=20_000, valid_sentences=200,
                        test_sentences=200),
        "model": dict(dim=64, n_layers=2, n_heads=4, ffn_dim=256, dropout=0.1, attention_dropout=0.1,
                      max_positions=256),
        "train": dict(bptt=64, tlm_max_len=128, batch_size=16, max_steps=50, lr=1e-3, warmup_steps=10,
                      eval_every=25, eval_batches=4, save_every=25, log_every=5),
        "finetune": dict(max_len=64, batch_size=16, epochs=2, lr=1e-3, head_lr=1e-3),
    },
    "small": {
        "prepare": dict(vocab_size=8000, tokenizer_sample_sentences=100_000, valid_sentences=500,
                        test_sentences=500),
        "model": dict(dim=256, n_layers=4, n_heads=4, ffn_dim=1024, dropout=0.1, attention_dropout=0.1,
                      max_positions=256),
        # lr 1e-3 with a short warmup: at 5e-4 / 2000 steps MLM sat on its unigram plateau (ppl ~350) to
        # the end; at 1e-3 / 4000 steps, MLM + TLM leaves it after ~1500 steps (README, results).
        "train": dict(bptt=128, tlm_max_len=128, batch_size=32, max_steps=4000, lr=1e-3, warmup_steps=100,
                      eval_every=250, eval_batches=10, save_every=500, log_every=20),
        "finetune": dict(max_len=128, batch_size=32, epochs=3, lr=1e-4, head_lr=1e-3),
    },
    "base": {
        "prepare": dict(vocab_size=32000),
        "model": dict(dim=768, n_layers=12, n_heads=12, ffn_dim=3072, max_positions=512),
        "train": dict(bptt=256, batch_size=64, max_steps=100_000, lr=1e-4, warmup_steps=4000),
        "finetune": dict(),
    },
}


# ----------------------------------------------------------------------------------------------
# Building a Config from presets, files and overrides


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a value from TOML/YAML/JSON/command line to the field's declared type."""
    if isinstance(tp, str):
        tp = eval(tp, {"tuple": tuple, "str": str, "int": int, "float": float, "bool": bool})  # noqa: S307
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not math.isfinite(f) or f != int(f):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            if isinstance(value, bool):
                raise TypeError
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(f):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return f
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _apply(section_obj: Any, section: str, updates: dict[str, Any]) -> Any:
    cls = type(section_obj)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    converted = {}
    for key, value in updates.items():
        if key not in fields:
            raise ConfigError(f"unknown setting {section}.{key}; known: {', '.join(sorted(fields))}")
        converted[key] = _coerce(value, fields[key].type, f"{section}.{key}")
    try:
        return dataclasses.replace(section_obj, **converted)
    except (TypeError, OverflowError) as e:  # a value of the right type that the checks cannot compare
        raise ConfigError(f"{section}: {e}") from None


def _merge(cfg: Config, data: dict[str, Any], source: str) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a table/mapping")
    if "preset" in data and not isinstance(data["preset"], str):
        raise ConfigError(f"{source}: preset must be a string, got {data['preset']!r}")
    for key in data:
        if key != "preset" and key not in SECTIONS:
            raise ConfigError(f"{source}: unknown section {key!r}; known: {', '.join(SECTIONS)}")
    changes = {}
    for section in SECTIONS:
        if section in data:
            if not isinstance(data[section], dict):
                raise ConfigError(f"{source}: section {section!r} must be a table/mapping")
            try:
                changes[section] = _apply(getattr(cfg, section), section, data[section])
            except ConfigError as e:  # name the file the value came from
                raise ConfigError(f"{source}: {e}" if Path(source).suffix else str(e)) from None
    return dataclasses.replace(cfg, **changes)


def preset_config(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return _merge(Config(preset=name), PRESETS[name], f"preset {name}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError("YAML configs need PyYAML: pip install 'xlmkit[yaml]'") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        return data
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be an object")
        return data
    raise ConfigError(f"{path}: config files must end in .toml, .yaml, .yml or .json")


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """["train.lr=3e-4", "model.dim=128"] -> {"train": {"lr": "3e-4"}, "model": {"dim": "128"}}"""
    out: dict[str, dict[str, Any]] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        if key.count(".") != 1:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        section, name = key.strip().split(".")
        if section not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {section!r}; known: {', '.join(SECTIONS)}")
        out.setdefault(section, {})[name] = value.strip()
    return out


def load_config(config: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """`config` is a preset name or a TOML/YAML/JSON file (which may name its own `preset`)."""
    if config in PRESETS:
        cfg = preset_config(config)
    elif not Path(config).suffix and not Path(config).exists():
        raise ConfigError(f"unknown preset {config!r}; known: {', '.join(PRESETS)} (or give a .toml/.yaml file)")
    else:
        data = read_config_file(config)
        cfg = preset_config(data.get("preset", "base"))
        cfg = _merge(cfg, data, str(config))
    return _merge(cfg, parse_overrides(overrides), "--set")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(data: dict[str, Any]) -> Config:
    """Inverse of `config_to_dict` (for resolved configs saved in runs and checkpoints)."""
    cfg = Config(preset=data.get("preset", "base"))
    return _merge(cfg, {k: v for k, v in data.items() if k in SECTIONS}, "saved config")


def save_config(cfg: Config, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)

