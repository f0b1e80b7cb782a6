"""Pretraining batches: which language / pair each step trains on, which text, and how it is masked.

    sampler = PretrainSampler(PreparedData(data_dir), cfg.train, seed=cfg.train.seed, rank=r, world_size=W)
    for step in range(cfg.train.max_steps):
        for batch in sampler.next_batches():          # one Batch per active objective (mlm, tlm, clm)
            for micro in split into grad_accum row slices with batch.split_rows(start, stop): ...
    state = sampler.state_dict()                      # JSON; load_state_dict(state) resumes exactly

Global batches and ranks: `next_batches` plans the *global* batch of `cfg.batch_size` rows, the batch
one process would build, and every rank makes the same plan (same generator state, same task, same
chunks, same masking). Rank r keeps rows [r * B / W, (r + 1) * B / W) of it. Masking chooses its
positions over the whole global batch (exactly round(word_pred * maskable) of them), so every rank
builds the global ids in numpy (B x T ints, cheap) and masks them all with a per-step seed before
slicing; only its own rows become tensors. Hence W processes together see exactly the batch that one
process sees, and a sampler's state (the same on every rank) resumes under any world size.

Data layout (Lample & Conneau 2019): MLM and CLM read a language's train stream (sentences each
followed by </s>) cut into chunks of `bptt` tokens, no padding (`objectives.stream_layout`); TLM reads
sentence pairs laid out as `</s> x1 </s> </s> x2 </s>`, padded to the longest pair of the batch and at
most `tlm_max_len` tokens. Chunks and pairs are visited in a seeded random order that changes every
epoch, with an epoch counter per (objective, task). Each step's task is drawn with
p ∝ n_train_sentences^lang_alpha (section 3.1).
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from xlmkit.core.config import ConfigError, TrainConfig
from xlmkit.data.contract import pad_batch
from xlmkit.data.format import SPECIAL_TOKENS, PreparedData
from xlmkit.core.errors import DataError
from xlmkit.core.langs import canonical_lang, canonical_pair
from xlmkit.data.sampling import language_probs
from xlmkit.train.objectives import (
    clm_targets,
    mask_tokens,
    maskable_positions,
    sample_weights,
    stream_chunks,
    stream_layout,
    tlm_pair_layout,
    token_frequencies,
)

OBJECTIVES = ("mlm", "tlm", "clm")
STATE_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Batch


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch of one objective. All tensors (B, T) except targets (N,); batch-first, long / bool.

    input_ids is already corrupted for mlm / tlm. pred_mask is True where a token is predicted;
    targets holds what is predicted there, in row-major order: the original ids for mlm / tlm, the
    next token for clm. So `loss = cross_entropy(logits_at(h[pred_mask]), targets)`."""

    objective: str  # "mlm" | "tlm" | "clm"
    task: str  # a language ("en") for mlm / clm, a pair ("en-fr") for tlm
    input_ids: torch.Tensor  # (B, T) long
    langs: torch.Tensor  # (B, T) long, language-embedding ids (manifest lang2id)
    positions: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) bool, True = real token
    pred_mask: torch.Tensor  # (B, T) bool, True = predicted position
    targets: torch.Tensor  # (N,) long, N = pred_mask.sum()

    @property
    def causal(self) -> bool:
        return self.objective == "clm"

    @property
    def name(self) -> str:
        """What the engine logs this batch's loss as: loss_mlm_en, loss_tlm_en-fr."""
        return f"{self.objective}_{self.task}"

    def inputs(self) -> dict:
        """Keyword arguments of PretrainingLoss.forward."""
        return dict(input_ids=self.input_ids, langs=self.langs, positions=self.positions,
                    attention_mask=self.attention_mask, pred_mask=self.pred_mask, targets=self.targets,
                    causal=self.causal)

    @property
    def n_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.attention_mask.sum())

    @property
    def n_pred(self) -> int:
        return int(self.targets.numel())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return dataclasses.replace(self, **{
            name: getattr(self, name).to(device, non_blocking=non_blocking)
            for name in ("input_ids", "langs", "positions", "attention_mask", "pred_mask", "targets")
        })

    def split_rows(self, start: int, stop: int) -> Batch:
        """Rows [start, stop), with the targets of exactly those rows (for gradient accumulation and
        ranks). The sequence length T is kept, so slices of a padded batch keep their padding."""
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"split_rows({start}, {stop}) out of range for a batch of {self.n_rows} rows")
        per_row = self.pred_mask.sum(dim=1)
        first = int(per_row[:start].sum())
        count = int(per_row[start:stop].sum())
        return dataclasses.replace(
            self,
            input_ids=self.input_ids[start:stop],
            langs=self.langs[start:stop],
            positions=self.positions[start:stop],
            attention_mask=self.attention_mask[start:stop],
            pred_mask=self.pred_mask[start:stop],
            targets=self.targets[first : first + count],
        )


# ----------------------------------------------------------------------------------------------
# What the batches need from the data manifest


@dataclass(frozen=True)
class VocabSpec:
    """Ids that batch building needs, all read from the prepared data's manifest."""

    n_vocab: int
    first_normal_id: int  # first subword id: after the 5 specials and the language tags
    bos_id: int
    pad_id: int
    eos_id: int
    unk_id: int
    mask_id: int
    lang2id: dict[str, int]
    # Special ids at or above first_normal_id (a reused tokenizer's, e.g. XLM-R's last-id <mask>): never
    # predicted, never drawn as a random replacement. Empty for xlmkit's own vocabularies (fast path).
    special_ids: tuple[int, ...] = ()

    @classmethod
    def from_data(cls, data: PreparedData) -> VocabSpec:
        s = data.specials
        listed = data.manifest.get("special_ids")
        if listed is None:  # xlmkit's layout: specials, then language tags, then subwords
            tags = list(data.lang_token_ids.values())
            first = max([len(SPECIAL_TOKENS) + len(data.languages)] + [t + 1 for t in tags])
            above: tuple[int, ...] = ()
        else:
            specials = {int(i) for i in listed} | set(s.all) | {int(t) for t in data.lang_token_ids.values()}
            first = next(i for i in range(data.vocab_size + 1) if i not in specials)
            above = tuple(sorted(i for i in specials if first <= i < data.vocab_size))
        if first >= data.vocab_size or data.vocab_size - first - len(above) <= 0:
            raise DataError(f"{data.root}: vocabulary of {data.vocab_size} ids has no subword tokens "
                            f"(specials and language tags take ids 0..{first - 1})")
        return cls(n_vocab=data.vocab_size, first_normal_id=first, bos_id=s.bos, pad_id=s.pad, eos_id=s.eos,
                   unk_id=s.unk, mask_id=s.mask, lang2id=dict(data.lang2id), special_ids=above)

    @cached_property
    def replacement_ids(self) -> np.ndarray | None:
        """Ids a random replacement may draw when some specials sit among the subwords; None otherwise."""
        if not self.special_ids:
            return None
        ids = np.arange(self.first_normal_id, self.n_vocab, dtype=np.int64)
        return ids[~np.isin(ids, self.special_ids)]


def _mask(ids: np.ndarray, attention_mask: np.ndarray, rng: np.random.Generator, cfg: TrainConfig,
          vocab: VocabSpec, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    special = np.asarray(vocab.special_ids, dtype=np.int64) if vocab.special_ids else None
    maskable = maskable_positions(ids, vocab.first_normal_id, vocab.unk_id, special) & attention_mask
    return mask_tokens(ids, rng, word_pred=cfg.word_pred, mask_prob=cfg.mask_prob, random_prob=cfg.random_prob,
                       mask_id=vocab.mask_id, n_vocab=vocab.n_vocab, first_normal_id=vocab.first_normal_id,
                       maskable=maskable, sample_weights=weights, replacement_ids=vocab.replacement_ids)


# ----------------------------------------------------------------------------------------------
# Global batch arrays (numpy), then one rank's rows as a Batch


@dataclass
class _Arrays:
    ids: np.ndarray  # (B, T) int64, original (uncorrupted)
    langs: np.ndarray
    positions: np.ndarray
    attention_mask: np.ndarray  # bool


def _stream_arrays(stream: np.ndarray, chunk_ids: np.ndarray, bptt: int, lang_id: int) -> _Arrays:
    ids = stream_chunks(stream, chunk_ids, bptt)  # (B, T), no padding
    b, t = ids.shape
    return _Arrays(ids=ids, langs=np.full((b, t), lang_id, dtype=np.int64),
                   positions=np.broadcast_to(np.arange(t, dtype=np.int64), (b, t)).copy(),
                   attention_mask=np.ones((b, t), dtype=bool))


def _pair_arrays(side1, side2, pair_ids: np.ndarray, lang1_id: int, lang2_id: int, vocab: VocabSpec,
                 max_len: int) -> _Arrays:
    rows = [tlm_pair_layout(side1.sentence(int(i)), side2.sentence(int(i)), lang1_id, lang2_id, vocab.eos_id, max_len)
            for i in pair_ids]
    ids, mask = pad_batch([r[0] for r in rows], vocab.pad_id)  # padded to the longest pair of the batch
    return _Arrays(ids=ids, langs=pad_batch([r[1] for r in rows], lang2_id)[0],
                   positions=pad_batch([r[2] for r in rows], 0)[0], attention_mask=mask)


def _tensor(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype)


def _make_batch(objective: str, task: str, arrays: _Arrays, corrupted: np.ndarray | None,
                pred_mask: np.ndarray | None, lo: int, hi: int) -> Batch:
    """Rows [lo, hi) of a global batch. corrupted / pred_mask are None for clm (targets from the rows)."""
    ids = arrays.ids[lo:hi]
    attn = arrays.attention_mask[lo:hi]
    if objective == "clm":
        pred, targets = clm_targets(ids, attn)
        inputs = ids
    else:
        pred = pred_mask[lo:hi]
        targets = ids[pred]
        inputs = corrupted[lo:hi]
    return Batch(objective=objective, task=task, input_ids=_tensor(inputs, torch.long),
                 langs=_tensor(arrays.langs[lo:hi], torch.long), positions=_tensor(arrays.positions[lo:hi], torch.long),
                 attention_mask=_tensor(attn, torch.bool), pred_mask=_tensor(pred, torch.bool),
                 targets=_tensor(targets, torch.long))


# ----------------------------------------------------------------------------------------------
# Step mix: cfg.mlm_steps / tlm_steps / clm_steps resolved against the data


@dataclass(frozen=True)
class _Task:
    objective: str
    name: str  # "en" or "en-fr" (as requested; may be the reverse of the data's pair)
    n_sentences: int  # train sentences, for p ∝ n^alpha
    n_items: int  # chunks (streams) or sentence pairs: what one epoch visits
    lang: str = ""  # mlm / clm
    data_pair: str = ""  # tlm: the pair as stored in the data
    reverse: bool = False  # tlm: the requested first language is the data pair's second side

    @property
    def key(self) -> str:
        return f"{self.objective}:{self.name}"


def steps_entries(cfg: TrainConfig, objective: str) -> tuple[str, ...] | None:
    """Entries of train.{objective}_steps; None when the objective is disabled with ("none",)."""
    field = f"{objective}_steps"
    entries = tuple(e.strip() for e in getattr(cfg, field))
    if any(e.lower() == "none" for e in entries):
        if len(entries) > 1:
            raise DataError(f"train.{field}: 'none' disables the objective and cannot be combined with "
                            f"other entries (got {', '.join(entries)})")
        return None
    return entries


def _resolve_stream_tasks(data: PreparedData, cfg: TrainConfig, objective: str) -> list[_Task]:
    field = f"train.{objective}_steps"
    entries = steps_entries(cfg, objective)
    if entries is None:
        return []
    have = data.mono_languages
    explicit = bool(entries)
    if not explicit:  # every language with monolingual train data
        entries = tuple(lang for lang in have if data.count("mono", lang, "train") > 0)
    tasks, seen = [], set()
    for entry in entries:
        try:
            lang = canonical_lang(entry)
        except ValueError as e:
            lang, error = None, e
        if lang not in have and _as_pair(entry) is not None:
            raise DataError(f"{field}: {entry!r} is a language pair; {objective.upper()} trains on single "
                            f"languages (pairs go in train.tlm_steps)")
        if lang is None:
            raise DataError(f"{field}: {error}")
        if lang in seen:
            continue
        seen.add(lang)
        if lang not in have:
            raise DataError(f"{field}: no monolingual data for language {lang!r} in {data.root}; "
                            f"have: {', '.join(have) or 'none'}")
        n_sentences = data.count("mono", lang, "train")
        n_chunks, _ = stream_layout(len(data.mono(lang, "train").ids), cfg.bptt)
        if n_sentences <= 0 or n_chunks == 0:
            raise DataError(f"{field}: language {lang!r} has no train sentences in {data.root}")
        tasks.append(_Task(objective, lang, n_sentences, n_chunks, lang=lang))
    return tasks


def _resolve_pair_tasks(data: PreparedData, cfg: TrainConfig) -> list[_Task]:
    entries = steps_entries(cfg, "tlm")
    if entries is None:
        return []
    if not entries:  # every pair of the data
        entries = tuple(p for p in data.pairs if data.count("para", p, "train") > 0)
    tasks, seen = [], set()
    for entry in entries:
        try:
            pair = canonical_pair(entry)
        except ValueError as e:
            hint = " (single languages go in train.mlm_steps)" if "-" not in entry else ""
            raise DataError(f"train.tlm_steps: {e}{hint}") from None
        if pair in seen:
            continue
        seen.add(pair)
        a, b = pair.split("-")
        if pair in data.pairs:
            data_pair, reverse = pair, False
        elif f"{b}-{a}" in data.pairs:
            data_pair, reverse = f"{b}-{a}", True
        else:
            raise DataError(f"train.tlm_steps: no parallel data for pair {pair!r} in {data.root}; "
                            f"have: {', '.join(data.pairs) or 'none'}")
        side1, side2 = data.para(data_pair, "train")
        if len(side1) != len(side2):
            raise DataError(f"{data.root}: parallel data {data_pair} (train) has {len(side1)} and {len(side2)} "
                            f"sentences on its two sides")
        if len(side1) == 0:
            raise DataError(f"train.tlm_steps: pair {pair!r} has no train sentences in {data.root}")
        n_sentences = data.count("para", data_pair, "train")
        tasks.append(_Task("tlm", pair, n_sentences, len(side1), data_pair=data_pair, reverse=reverse))
    return tasks


def _as_pair(entry: str) -> str | None:
    try:
        return canonical_pair(entry)
    except ValueError:
        return None


def _seed_entropy(seed: int) -> int:
    return int(seed) % (1 << 64)  # SeedSequence wants a non-negative int


class Cursor:
    """Walks 0..n_items-1 in a seeded random order, a new order every epoch. State: (epoch, pos).
    The order of epoch e is a pure function of (seed, task key, e), so only (epoch, pos) is saved."""

    def __init__(self, key: str, n_items: int, seed: int):
        self.key, self.n_items, self.seed = key, n_items, seed
        self.epoch, self.pos = 0, 0
        self._perm: np.ndarray | None = None
        self._perm_epoch = -1

    def _order(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            rng = np.random.default_rng([_seed_entropy(self.seed), 2, zlib.crc32(self.key.encode()), self.epoch])
            self._perm, self._perm_epoch = rng.permutation(self.n_items), self.epoch
        return self._perm

    def take(self, n: int) -> np.ndarray:
        out = []
        while n > 0:
            if self.pos >= self.n_items:
                self.epoch, self.pos = self.epoch + 1, 0
            k = min(n, self.n_items - self.pos)
            out.append(self._order()[self.pos : self.pos + k])
            self.pos, n = self.pos + k, n - k
        return np.concatenate(out).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# The sampler


class PretrainSampler:
    """Plans and builds the pretraining batches of every step (see the module docstring).

    data: the prepared data (every id and count comes from its manifest); cfg: the train config
    (step mix, lang_alpha, bptt, tlm_max_len, batch_size, masking); seed: the run's seed; rank,
    world_size: this process's share of the global batch (cfg.batch_size must divide evenly)."""

    def __init__(self, data: PreparedData, cfg: TrainConfig, seed: int, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"PretrainSampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if cfg.batch_size % world_size:
            raise ConfigError(f"train.batch_size ({cfg.batch_size}) must be divisible by the number of "
                              f"processes ({world_size})")
        self.data, self.cfg, self.seed = data, cfg, int(seed)
        self.rank, self.world_size = rank, world_size
        self.vocab = VocabSpec.from_data(data)

        by_objective = {"mlm": _resolve_stream_tasks(data, cfg, "mlm"), "tlm": _resolve_pair_tasks(data, cfg),
                        "clm": _resolve_stream_tasks(data, cfg, "clm")}
        self.tasks: dict[str, list[_Task]] = {k: v for k, v in by_objective.items() if v}
        if not self.tasks:
            raise DataError(f"no pretraining objective is active for {data.root}: train.mlm_steps, train.tlm_steps "
                            f"and train.clm_steps are disabled or name nothing the data has "
                            f"(languages: {', '.join(data.mono_languages) or 'none'}; "
                            f"pairs: {', '.join(data.pairs) or 'none'})")
        # p(task) ∝ n_train_sentences^lang_alpha, per objective (Lample & Conneau 2019, section 3.1).
        self.task_probs: dict[str, dict[str, float]] = {
            k: language_probs({t.name: t.n_sentences for t in ts}, cfg.lang_alpha) for k, ts in self.tasks.items()}
        self._probs = {k: np.array([self.task_probs[k][t.name] for t in ts]) for k, ts in self.tasks.items()}
        self._cursors = {t.key: Cursor(t.key, t.n_items, self.seed) for ts in self.tasks.values() for t in ts}

        # Memory-mapped train shards, opened once.
        self._streams = {t.lang: data.mono(t.lang, "train").ids
                         for k in ("mlm", "clm") for t in self.tasks.get(k, [])}
        self._pairs = {t.data_pair: data.para(t.data_pair, "train") for t in self.tasks.get("tlm", [])}

        self.weights: np.ndarray | None = None
        if cfg.sample_alpha > 0 and ({"mlm", "tlm"} & set(self.tasks)):
            self.weights = sample_weights(token_frequencies(self._train_id_arrays(), self.vocab.n_vocab),
                                          cfg.sample_alpha)
        self.step = 0  # calls to next_batches so far
        self._rng = np.random.default_rng([_seed_entropy(self.seed), 1])

    @property
    def objectives(self) -> list[str]:
        """Active objective kinds, in the order next_batches returns them."""
        return [k for k in OBJECTIVES if k in self.tasks]

    @property
    def rows(self) -> tuple[int, int]:
        """This rank's rows [lo, hi) of every global batch."""
        per_rank = self.cfg.batch_size // self.world_size
        return self.rank * per_rank, (self.rank + 1) * per_rank

    def _train_id_arrays(self):
        """Train ids of every language / pair side that MLM or TLM reads (for token frequencies)."""
        for lang in sorted({t.lang for t in self.tasks.get("mlm", [])}):
            yield self._streams[lang]
        for side1, side2 in self._pairs.values():
            yield side1.ids
            yield side2.ids

    def _global_arrays(self, task: _Task, items: np.ndarray) -> _Arrays:
        lang2id = self.vocab.lang2id
        if task.objective in ("mlm", "clm"):
            return _stream_arrays(self._streams[task.lang], items, self.cfg.bptt, lang2id[task.lang])
        side1, side2 = self._pairs[task.data_pair]
        if task.reverse:
            side1, side2 = side2, side1
        a, b = task.name.split("-")
        return _pair_arrays(side1, side2, items, lang2id[a], lang2id[b], self.vocab, self.cfg.tlm_max_len)

    def next_batches(self) -> list[Batch]:
        """One batch per active objective (this rank's rows of the global batch), in `objectives` order."""
        lo, hi = self.rows
        batches = []
        for k, objective in enumerate(self.objectives):
            tasks = self.tasks[objective]
            task = tasks[int(self._rng.choice(len(tasks), p=self._probs[objective]))]
            items = self._cursors[task.key].take(self.cfg.batch_size)
            arrays = self._global_arrays(task, items)
            corrupted = pred_mask = None
            if objective != "clm":
                # Per-(step, objective) seed: the same masking on every rank and after a resume.
                mask_rng = np.random.default_rng([_seed_entropy(self.seed), 3, self.step, k])
                corrupted, pred_mask = _mask(arrays.ids, arrays.attention_mask, mask_rng, self.cfg, self.vocab,
                                             self.weights)
            batches.append(_make_batch(objective, task.name, arrays, corrupted, pred_mask, lo, hi))
        self.step += 1
        return batches

    # -- checkpointing ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """JSON-serialisable state; identical on every rank."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "step": self.step,
            "rng": self._rng.bit_generator.state,
            "cursors": {key: {"epoch": c.epoch, "pos": c.pos, "n_items": c.n_items}
                        for key, c in self._cursors.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume exactly where `state_dict()` was taken (same data and step mix). Tasks that the state
        does not know (a step mix changed on resume) start at their beginning."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"sampler state version {state.get('version')!r} is not {STATE_VERSION}")
        for key, saved in state["cursors"].items():
            cursor = self._cursors.get(key)
            if cursor is None:
                continue
            if int(saved["n_items"]) != cursor.n_items:
                raise DataError(f"the train data changed since this state was saved: {key} had {saved['n_items']} "
                                f"items, now {cursor.n_items}")
            cursor.epoch, cursor.pos = int(saved["epoch"]), int(saved["pos"])
        self.seed = int(state["seed"])  # the orders and the masking derive from the saved seed
        for cursor in self._cursors.values():
            cursor.seed, cursor._perm_epoch = self.seed, -1
        self.step = int(state["step"])
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]

    def epochs(self) -> dict[str, float]:
        """Progress per task, in epochs (e.g. {"mlm:en": 1.25}), for logging."""
        return {key: c.epoch + c.pos / c.n_items for key, c in self._cursors.items()}


# ----------------------------------------------------------------------------------------------
# Evaluation batches


def eval_batches(data: PreparedData, lang_or_pair: str, split: str, cfg: TrainConfig, n_batches: int,
                 seed: int = 0, objective: str | None = None) -> list[Batch]:
    """Deterministic evaluation batches of `cfg.batch_size` rows (the last may be shorter).

    A language ("en"): MLM (or CLM with objective="clm") over the split's stream, chunks taken in order
    from the start: the first n_batches * batch_size chunks. A pair ("en-fr", or "fr-en" for the
    other order): TLM over the split's first n_batches * batch_size sentence pairs, in order.
    n_batches = 0 means the whole split. Masking is uniform (never frequency-weighted, so that
    validation perplexities compare across sample_alpha) and seeded by (seed, batch index): every call
    returns the same batches. An empty split gives []."""
    vocab = VocabSpec.from_data(data)
    if objective is not None and objective not in OBJECTIVES:
        raise ValueError(f"eval_batches: objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if n_batches < 0:
        raise ValueError(f"eval_batches: n_batches must be >= 0, got {n_batches}")
    try:
        lang = canonical_lang(lang_or_pair)
    except ValueError:
        lang = None
    pair = _as_pair(lang_or_pair)
    is_pair = pair is not None and lang not in data.mono_languages
    objective = objective or ("tlm" if is_pair else "mlm")
    if (objective == "tlm") != is_pair:
        raise DataError(f"eval_batches: {objective.upper()} needs a "
                        f"{'language pair' if objective == 'tlm' else 'language'}, got {lang_or_pair!r}")
    if is_pair:
        name = pair
        a, b = name.split("-")
        reverse = name not in data.pairs and f"{b}-{a}" in data.pairs
        side1, side2 = data.para(f"{b}-{a}" if reverse else name, split)  # DataError when absent
        if reverse:
            side1, side2 = side2, side1
        n_items = min(len(side1), len(side2))
    else:
        if lang is None:
            raise DataError(f"eval_batches: not a language or language pair: {lang_or_pair!r}")
        name = lang
        stream = data.mono(name, split).ids  # DataError when absent
        n_items, _ = stream_layout(len(stream), cfg.bptt)
    if n_batches:
        n_items = min(n_items, n_batches * cfg.batch_size)

    batches = []
    for i, start in enumerate(range(0, n_items, cfg.batch_size)):
        items = np.arange(start, min(start + cfg.batch_size, n_items), dtype=np.int64)
        if is_pair:
            arrays = _pair_arrays(side1, side2, items, vocab.lang2id[a], vocab.lang2id[b], vocab, cfg.tlm_max_len)
        else:
            arrays = _stream_arrays(stream, items, cfg.bptt, vocab.lang2id[name])
        corrupted = pred_mask = None
        if objective != "clm":
            rng = np.random.default_rng([_seed_entropy(seed), 4, i])
            corrupted, pred_mask = _mask(arrays.ids, arrays.attention_mask, rng, cfg, vocab, None)
        batches.append(_make_batch(objective, name, arrays, corrupted, pred_mask, 0, len(items)))
    return batches
