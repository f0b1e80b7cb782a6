"""Machine translation on the training engine (Lample & Conneau 2019, section 5; Lample et al. 2018).

    result = train_translation(cfg, data_dir, out_dir, init="PRETRAINED_RUN")     # xlmkit train-mt
    lines = translate(load_translator("MT_RUN"), ["Ein Hund läuft."], "de", "en")   # xlmkit translate
    scores = score_translations(hypotheses, references)                          # sacreBLEU + chrF

The model is an encoder-decoder (xlmkit.model.decoder): with `init`, both halves start from a
pretrained xlmkit run (the decoder's cross-attention starts random), embeddings shared by encoder,
decoder and output layer; the target language is selected by the language embedding where the model
has them. Each optimizer step takes one batch per active objective (mt.*_steps), each from a
direction or language drawn with the pretraining's p(lang) ∝ n^train.lang_alpha:

- `mt` on a direction "de-en": the parallel pair de -> en, teacher forcing;
- `ae` on a language: C(x) -> x with XLM's noise (word shuffle k=3, dropout 0.1, blank 0.1);
- `bt` on "en-fr": monolingual en is translated to fr by the current model (greedy, no gradients),
  then fr -> en is trained on the pair (online back-translation).

Each objective's loss is weighted by its lambda (XLM's schedule syntax, "0:1,100000:0.1"). Validation:
teacher-forced perplexity and sacreBLEU / chrF of the decoded valid pairs for every trained direction
(and every direction of a pair the model back-translates); best/ is chosen by the mean BLEU.

Checkpoints hold the encoder in model.safetensors under its pretraining names (so every encoder
command reads an MT run) and the decoder in decoder.safetensors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from xlmkit.core.config import Config, ConfigError, TranslateConfig, config_from_dict
from xlmkit.core.errors import DataError, XlmkitError
from xlmkit.tasks.seq2seq import NoiseConfig, Seq2SeqBatch, add_noise, collate_pairs, seq2seq_loss_sum

DECODER_FILE = "decoder.safetensors"
WEIGHT_FILES = {"encoder.": ("model.safetensors", ""), "decoder.": (DECODER_FILE, "decoder.")}
OBJECTIVES = ("mt", "ae", "bt")


# ----------------------------------------------------------------------------------------------
# Step mix


def scheduled(spec: str, step: int) -> float:
    """XLM's lambda schedule at `step`: "1" is constant; "0:1,1000:0.1,2000:0" is linear between the
    points and constant after the last."""
    if ":" not in spec:
        return float(spec)
    points = [tuple(float(x) for x in part.split(":")) for part in spec.split(",")]
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if s0 <= step < s1:
            return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return points[-1][1]


@dataclass(frozen=True)
class Direction:
    src: str
    tgt: str
    pair: str  # the data's pair holding both sides ("en-fr" for fr-en too)

    @property
    def name(self) -> str:
        return f"{self.src}-{self.tgt}"


def oriented(sides: tuple, d: Direction) -> tuple:
    """The (source, target) shards of a data pair's two sides for direction `d` (fr-en reads en-fr turned round)."""
    return sides if d.pair.split("-")[0] == d.src else (sides[1], sides[0])


def _direction(entry: str, pairs: Sequence[str], what: str, need_pair: bool = True) -> Direction:
    parts = entry.split("-")
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ConfigError(f"mt.{what}: {entry!r} is not a direction like de-en")
    src, tgt = parts
    pair = next((p for p in pairs if set(p.split("-")) == {src, tgt}), None)
    if pair is None and need_pair:
        raise ConfigError(f"mt.{what}: the data has no parallel text for {entry} (pairs: {', '.join(pairs) or 'none'})")
    return Direction(src, tgt, pair or f"{src}-{tgt}")


def resolve_steps(mt: TranslateConfig, data) -> dict[str, list]:
    """{"mt": [Direction], "ae": [lang], "bt": [Direction]} that the data has text for."""
    pairs = list(data.pairs)
    out: dict[str, list] = {}
    if tuple(mt.mt_steps) != ("none",):
        entries = mt.mt_steps or tuple(d for p in pairs if data.count("para", p, "train") > 0
                                       for d in (p, "-".join(reversed(p.split("-")))))
        out["mt"] = [_direction(e, pairs, "mt_steps") for e in entries]
    if tuple(mt.ae_steps) != ("none",):
        langs = mt.ae_steps or tuple(lang for lang in data.mono_languages if data.count("mono", lang, "train") > 0)
        for lang in langs:
            if data.count("mono", lang, "train") == 0:
                raise ConfigError(f"mt.ae_steps: the data has no monolingual {lang} text "
                                  f"(languages: {', '.join(data.mono_languages) or 'none'})")
        out["ae"] = list(langs)
    if tuple(mt.bt_steps) != ("none",):
        bt = [_direction(e, pairs, "bt_steps", need_pair=False) for e in mt.bt_steps]
        for d in bt:
            if data.count("mono", d.src, "train") == 0:
                raise ConfigError(f"mt.bt_steps: {d.name} back-translates monolingual {d.src} text, which the data lacks")
        out["bt"] = bt
    out = {k: v for k, v in out.items() if v}
    if not out:
        raise ConfigError("no translation objective is active: mt.mt_steps, mt.ae_steps and mt.bt_steps are all off")
    return out


def trained_directions(steps: dict[str, list]) -> list[str]:
    """Every direction the model learns to translate: mt's, and bt's reverse (the trained one) and
    forward (the one it generates with)."""
    names = [d.name for d in steps.get("mt", [])]
    for d in steps.get("bt", []):
        names += [f"{d.tgt}-{d.src}", d.name]
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------------------------
# Batches and loss (what the engine trains on)


@dataclass(frozen=True, eq=False)
class TranslationBatch:
    """One objective's global batch (this rank's rows), the engine's TrainBatch."""

    name: str  # "mt_de-en", "ae_en", "bt_en-fr"
    batch: Seq2SeqBatch
    weight: float  # the objective's lambda at this step

    @property
    def n_rows(self) -> int:
        return int(self.batch.src_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.batch.src_mask.sum() + self.batch.target_mask.sum())

    @property
    def n_pred(self) -> int:
        return self.batch.n_targets

    def split_rows(self, start: int, stop: int) -> TranslationBatch:
        b = self.batch
        return TranslationBatch(self.name, Seq2SeqBatch(*(t[start:stop] for t in (
            b.src_ids, b.src_langs, b.src_mask, b.tgt_ids, b.tgt_langs, b.targets, b.target_mask))), self.weight)

    def to(self, device, non_blocking: bool = False) -> TranslationBatch:
        return TranslationBatch(self.name, self.batch.to(device), self.weight)

    def inputs(self) -> dict:
        return {"batch": self.batch, "weight": self.weight}


class TranslationLoss(nn.Module):
    """The encoder-decoder and its loss as one module (what DDP wraps): (lambda x summed target
    cross-entropy, 0)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Seq2SeqBatch, weight: float = 1.0) -> tuple[Tensor, Tensor]:
        loss_sum = seq2seq_loss_sum(self.model, batch)
        return loss_sum * weight, loss_sum.new_zeros(())


@dataclass(frozen=True)
class Framing:
    """How a sentence is framed for the encoder and the decoder, from the run's vocabulary."""

    bos_id: int
    eos_id: int
    pad_id: int
    mask_id: int
    max_len: int
    lang2id: dict

    def frame(self, ids: np.ndarray) -> np.ndarray:
        """`bos x eos`, x cut so that the whole fits in max_len."""
        return np.concatenate([[self.bos_id], np.asarray(ids[: self.max_len - 2], dtype=np.int64), [self.eos_id]])

    def lang_id(self, lang: str) -> int:
        return int(self.lang2id.get(lang, 0))


def framing_of(vocab: dict, tokenizer, max_len: int) -> Framing:
    """The run contract's sentence frame (`</s> x </s>` for XLM, `<s> x </s>` for XLM-R imports): the
    decoder starts from the frame's first id and stops at its last."""
    from xlmkit.data.contract import RunContract

    c = RunContract.from_vocab(vocab, tokenizer)
    return Framing(c.first_id, c.eos_id, c.pad_id, int(c.specials.mask), max_len, dict(c.lang2id))


class TranslationSampler:
    """One batch per active objective per step (the engine's Sampler). Sentence orders are seeded
    cursors (as pretraining's); the direction / language choice and the noise come from per-step
    generators, so every rank draws the same and a resumed run draws what the straight one did."""

    def __init__(self, data, steps: dict[str, list], mt: TranslateConfig, batch_size: int, lang_alpha: float,
                 framing: Framing, model: nn.Module, seed: int, rank: int = 0, world_size: int = 1,
                 precision: str = "fp32") -> None:
        from xlmkit.train.batches import Cursor
        from xlmkit.data.sampling import language_probs

        self.data, self.steps, self.mt, self.batch_size = data, steps, mt, batch_size
        self.framing, self.model, self.seed = framing, model, seed
        self.rank, self.world_size, self.precision = rank, world_size, precision
        self.noise = NoiseConfig(mt.word_shuffle, mt.word_dropout, mt.word_blank)
        self.step = 0
        self._sources: dict[str, object] = {}
        self._cursors: dict[str, Cursor] = {}
        self._probs: dict[str, np.ndarray] = {}
        for objective, entries in steps.items():
            counts = {}
            for e in entries:
                key = self._key(objective, e)
                n = self._n_items(objective, e)
                counts[key] = n
                self._cursors[key] = Cursor(key, n, seed)
            probs = language_probs(counts, lang_alpha)
            self._probs[objective] = np.array([probs[self._key(objective, e)] for e in entries])

    @staticmethod
    def _key(objective: str, entry) -> str:
        return f"{objective}:{entry.name if isinstance(entry, Direction) else entry}"

    def _n_items(self, objective: str, entry) -> int:
        if objective == "mt":
            return self.data.count("para", entry.pair, "train")
        lang = entry if objective == "ae" else entry.src
        return self.data.count("mono", lang, "train")

    def _mono(self, lang: str):
        if lang not in self._sources:
            self._sources[lang] = self.data.mono(lang, "train")
        return self._sources[lang]

    def _para(self, d: Direction):
        if d.pair not in self._sources:
            self._sources[d.pair] = self.data.para(d.pair, "train")
        return oriented(self._sources[d.pair], d)

    def _rows(self, n: int) -> tuple[int, int]:
        from xlmkit.train.engine import row_bounds

        mine = row_bounds(n, self.world_size)
        return mine[self.rank] if self.rank < len(mine) else (0, 0)

    def next_batches(self) -> list[TranslationBatch]:
        f = self.framing
        batches = []
        for k, objective in enumerate(OBJECTIVES):
            if objective not in self.steps:
                continue
            weight = scheduled(getattr(self.mt, f"lambda_{objective}"), self.step)
            rng = np.random.default_rng([self.seed, 7, self.step, k])  # the same on every rank
            entries = self.steps[objective]
            entry = entries[int(rng.choice(len(entries), p=self._probs[objective]))]
            items = self._cursors[self._key(objective, entry)].take(self.batch_size)
            if weight == 0:  # XLM skips an objective whose lambda is 0 (the cursor still moves)
                continue
            lo, hi = self._rows(len(items))
            if objective == "mt":
                src_side, tgt_side = self._para(entry)
                src = [f.frame(src_side.sentence(int(i))) for i in items]
                tgt = [f.frame(tgt_side.sentence(int(i))) for i in items]
                b = collate_pairs(src[lo:hi] or src[:1], tgt[lo:hi] or tgt[:1], f.lang_id(entry.src),
                                  f.lang_id(entry.tgt), f.pad_id)
                name = f"mt_{entry.name}"
            elif objective == "ae":
                mono = self._mono(entry)
                seqs = [f.frame(mono.sentence(int(i))) for i in items]
                noisy = [add_noise(s, self.noise, f.mask_id, rng) for s in seqs]  # all rows: same draws everywhere
                lid = f.lang_id(entry)
                b = collate_pairs(noisy[lo:hi] or noisy[:1], seqs[lo:hi] or seqs[:1], lid, lid, f.pad_id)
                name = f"ae_{entry}"
            else:
                mono = self._mono(entry.src)
                seqs = [f.frame(mono.sentence(int(i))) for i in items][lo:hi] or [f.frame(mono.sentence(int(items[0])))]
                b = self._back_translate(seqs, entry)
                name = f"bt_{entry.name}"
            if hi == lo:  # a rank without rows of a short batch: one row, weight 0 (DDP's backward is collective)
                b = Seq2SeqBatch(b.src_ids[:1], b.src_langs[:1], b.src_mask[:1], b.tgt_ids[:1], b.tgt_langs[:1],
                                 b.targets[:1], b.target_mask[:1] & False)
            batches.append(TranslationBatch(name, b, weight))
        self.step += 1
        return batches

    def _back_translate(self, seqs: list[np.ndarray], d: Direction) -> Seq2SeqBatch:
        """x in d.src -> y = model(x) in d.tgt, greedy, without gradients; train y -> x."""
        from xlmkit.core.runtime import autocast
        from xlmkit.tasks.seq2seq import back_translation_pairs

        f = self.framing
        device = self.model.token_weight.device
        with autocast(device, self.precision):
            return back_translation_pairs(self.model, seqs, f.lang_id(d.src), f.lang_id(d.tgt), f.pad_id, f.bos_id,
                                          f.eos_id)

    def state_dict(self) -> dict:
        return {"step": self.step, "cursors": {k: {"epoch": c.epoch, "pos": c.pos, "n_items": c.n_items}
                                               for k, c in self._cursors.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for key, saved in state["cursors"].items():
            cursor = self._cursors.get(key)
            if cursor is not None:
                if int(saved["n_items"]) != cursor.n_items:
                    raise DataError(f"the train data changed since this state was saved: {key} had "
                                    f"{saved['n_items']} items, now {cursor.n_items}")
                cursor.epoch, cursor.pos = int(saved["epoch"]), int(saved["pos"])


# ----------------------------------------------------------------------------------------------
# Decoding and scoring


def score_translations(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """sacreBLEU (default signature: 13a tokenisation, mixed case) and chrF of detokenized output."""
    try:
        import sacrebleu
    except ImportError:
        raise XlmkitError("BLEU needs sacrebleu: pip install 'xlmkit[mt]'") from None
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} translations for {len(references)} references")
    bleu = sacrebleu.corpus_bleu(list(hypotheses), [list(references)])
    chrf = sacrebleu.corpus_chrf(list(hypotheses), [list(references)])
    return {"bleu": float(bleu.score), "chrf": float(chrf.score)}


def translate_ids(model, sources: Sequence[np.ndarray], src_lang: int | None, tgt_lang: int | None, framing: Framing,
                  gen_cfg, batch_size: int, device, precision: str = "fp32",
                  progress: Callable[[int], None] | None = None) -> list[list[int]]:
    """Framed source id arrays -> target ids (no frame), in input order. Batches are formed by source
    length, so a batch pads to about its own sentences' length."""
    from xlmkit.core.runtime import autocast
    from xlmkit.model.generate import generate
    from xlmkit.data.contract import pad_batch

    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: list[list[int]] = [[] for _ in sources]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad_batch([sources[i] for i in idx], framing.pad_id)
        src = torch.from_numpy(ids).to(device)
        langs = None if src_lang is None else torch.full_like(src, src_lang)
        with autocast(device, precision):
            hyps = generate(model, src, langs, tgt_lang, gen_cfg, framing.bos_id, framing.eos_id,
                            src_mask=torch.from_numpy(mask).to(device))
        for i, h in zip(idx, hyps):
            out[i] = list(h)
        if progress is not None:
            progress(len(idx))
    return out


def evaluate_directions(model, data, directions: Sequence[Direction], framing: Framing, tokenizer, mt: TranslateConfig,
                        device, precision: str, split: str = "valid") -> dict[str, float]:
    """Per direction, on the first mt.eval_sentences pairs of `split` (200 when it is 0): teacher-forced
    perplexity, and BLEU / chrF of their decoding (none when it is 0); `mean_bleu` over the directions."""
    from xlmkit.core.runtime import autocast
    from xlmkit.model.generate import GenerationConfig
    from xlmkit.train.metrics import perplexity

    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    gen_cfg = GenerationConfig(beam_size=mt.beam_size, length_penalty=mt.length_penalty)
    try:
        for d in directions:
            n = min(data.count("para", d.pair, split), mt.eval_sentences or 200)
            if n == 0:
                continue
            src_side, tgt_side = oriented(data.para(d.pair, split), d)
            src = [framing.frame(src_side.sentence(i)) for i in range(n)]
            tgt = [framing.frame(tgt_side.sentence(i)) for i in range(n)]
            loss, count = 0.0, 0
            with torch.no_grad():
                for s in range(0, n, 64):
                    b = collate_pairs(src[s:s + 64], tgt[s:s + 64], framing.lang_id(d.src), framing.lang_id(d.tgt),
                                      framing.pad_id).to(device)
                    with autocast(device, precision):
                        loss += float(seq2seq_loss_sum(model, b))
                    count += b.n_targets
            out[f"ppl/{d.name}"] = perplexity(loss / max(count, 1))
            k = min(mt.eval_sentences, n)
            if k > 0:
                hyps = translate_ids(model, src[:k], framing.lang_id(d.src), framing.lang_id(d.tgt), framing, gen_cfg,
                                     64, device, precision)
                refs = [tokenizer.decode(t[1:-1].tolist()) for t in tgt[:k]]
                scores = score_translations([tokenizer.decode(h) for h in hyps], refs)
                out[f"bleu/{d.name}"], out[f"chrf/{d.name}"] = scores["bleu"], scores["chrf"]
    finally:
        model.train(was_training)
    bleus = [v for k, v in out.items() if k.startswith("bleu/")]
    if bleus:
        out["mean_bleu"] = sum(bleus) / len(bleus)
    return out


# ----------------------------------------------------------------------------------------------
# Training


def build_model(cfg: Config, init_ckpt: Path | None):
    """An encoder-decoder of cfg.model: random, or both halves from a pretrained encoder (XLM's MT init)."""
    from xlmkit.model.decoder import EncoderDecoder
    from xlmkit.model.encoder import XLMModel
    from xlmkit.train.checkpoint import load_weights

    if init_ckpt is None:
        return EncoderDecoder(cfg.model)
    encoder = XLMModel(cfg.model)
    load_weights(encoder, init_ckpt)
    return EncoderDecoder.from_encoder(encoder)


def train_translation(cfg: Config, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
                      init: str | Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Train an encoder-decoder on the prepared data in `data_dir` with the step mix of cfg.mt, writing
    the run to `out_dir` (the engine's run layout; decoder in decoder.safetensors). `init`: a
    pretrained run whose encoder initialises both halves (its model config replaces cfg.model; the
    data must be prepared with its tokenizer). Returns the final metrics ("bleu/de-en", ...)."""
    from xlmkit.core.integrity import open_tokenizer
    from xlmkit.core.runtime import barrier, seed_everything, shutdown_distributed
    from xlmkit.model.decoder import DecoderLayer
    from xlmkit.model.encoder import TransformerLayer
    from xlmkit.train.checkpoint import write_run_files
    from xlmkit.train.engine import TrainJob, open_run_dir, train
    from xlmkit.train.pretrain import check_resume, loop_config, optim_config, start_run

    out_dir = Path(out_dir)
    start = start_run(cfg, data_dir, init)
    cfg, data, vocab, init_ckpt, dist, device = start.cfg, start.data, start.vocab, start.init, start.dist, start.device
    precision, precision_note = cfg.train.precision, start.precision_note
    if cfg.mt.max_len > cfg.model.max_positions:
        raise ConfigError(f"mt.max_len ({cfg.mt.max_len}) exceeds model.max_positions ({cfg.model.max_positions})")
    steps = resolve_steps(cfg.mt, data)
    directions = trained_directions(steps)
    task = {"task": "translation", "directions": directions}
    resume_from = open_run_dir(
        out_dir, resume, dist, "train-mt",
        write_files=lambda: write_run_files(out_dir, cfg, vocab, Path(data.root) / "tokenizer.json"),
        check_resume=lambda ckpt, state: check_resume(ckpt, state, cfg, vocab, out_dir, dist))
    tokenizer = open_tokenizer(Path(data.root) / "tokenizer.json")
    framing = framing_of(vocab, tokenizer, cfg.mt.max_len)

    seed_everything(cfg.train.seed)
    model = build_model(cfg, init_ckpt if resume_from is None else None)
    model.to(device)
    loss_model = TranslationLoss(model)
    sampler = TranslationSampler(data, steps, cfg.mt, cfg.train.batch_size, cfg.train.lang_alpha, framing, model,
                                 cfg.train.seed, dist.rank, dist.world_size, precision)
    pairs = {d: _direction(d, list(data.pairs), "directions", need_pair=False) for d in directions}
    eval_dirs = [d for d in pairs.values() if d.pair in data.pairs]

    def evaluate(_wrapped) -> dict[str, float]:
        return evaluate_directions(model, data, eval_dirs, framing, tokenizer, cfg.mt, device, precision)

    job = TrainJob(trained=model, loss_model=loss_model, sampler=sampler, evaluate=evaluate,
                   weight_files=WEIGHT_FILES, state_extra={"task": task}, cfg=cfg, vocab=vocab,
                   layer_types=(TransformerLayer, DecoderLayer))
    loop = dataclasses.replace(loop_config(cfg.train), select=("mean_bleu", "max"), name="train-mt")
    if dist.is_main:
        log(f"[train-mt] {precision_note}")
        n_params = sum(p.numel() for p in model.parameters())
        log(f"[train-mt] {n_params / 1e6:.2f}M parameters on {device}; steps "
            + "; ".join(f"{k} {', '.join(e.name if isinstance(e, Direction) else e for e in v)}"
                        for k, v in steps.items())
            + (f"; from {init}" if init is not None else "; random init") + f"; run dir {out_dir}")
    result = train(job, loop, optim_config(cfg.train), out_dir, dist, device, resume_from=resume_from, log=log)
    barrier(dist)
    shutdown_distributed()
    return {"step": result.step, **({"loss": result.last_train["loss"]} if "loss" in result.last_train else {}),
            **result.last_eval, "best_mean_bleu": result.best.get("mean_bleu"), "elapsed_s": result.elapsed_s}


# ----------------------------------------------------------------------------------------------
# Using a trained model


@dataclass
class Translator:
    model: nn.Module
    framing: Framing
    tokenizer: object
    directions: tuple[str, ...]
    lang2id: dict
    use_langs: bool
    device: torch.device
    precision: str
    path: Path


def load_translator(run: str | Path, which: str = "best", device: str = "auto", precision: str = "auto",
                    max_len: int | None = None) -> Translator:
    """A trained translation run (xlmkit train-mt), ready to translate."""
    from xlmkit.core.integrity import open_tokenizer
    from xlmkit.core.runtime import choose_precision, pick_device
    from xlmkit.model.decoder import EncoderDecoder
    from xlmkit.train.checkpoint import load_weights, read_state, resolve_checkpoint

    ckpt = resolve_checkpoint(Path(run), which)
    if not (ckpt / DECODER_FILE).is_file():
        raise XlmkitError(f"{run}: not a translation run (no {DECODER_FILE} in {ckpt.name}); train one with "
                          f"`xlmkit train-mt`")
    state = read_state(ckpt)
    cfg = config_from_dict(state["config"])
    vocab = state.get("vocab")
    dev = pick_device(device)
    precision, _ = choose_precision(precision, dev)
    model = EncoderDecoder(cfg.model)
    load_weights(model, ckpt, "cpu", WEIGHT_FILES)
    model.to(dev).eval()
    tok_path = (ckpt / state.get("tokenizer", "../../tokenizer.json")).resolve()
    tokenizer = open_tokenizer(tok_path)
    framing = framing_of(vocab, tokenizer, min(max_len or cfg.mt.max_len, cfg.model.max_positions))
    directions = tuple((state.get("task") or {}).get("directions") or ())
    return Translator(model, framing, tokenizer, directions, framing.lang2id,
                      model.encoder.lang_embeddings is not None, dev, precision, ckpt)


def translator_from_pretrained(run: str | Path, device: str = "cpu", precision: str = "fp32",
                               max_len: int = 100) -> Translator:
    """The encoder-decoder that `train-mt --init RUN` starts from, untrained for translation (its
    cross-attention is random): what a translation looks like before any mt step."""
    from xlmkit.core.integrity import open_tokenizer
    from xlmkit.core.runtime import pick_device
    from xlmkit.model.decoder import EncoderDecoder
    from xlmkit.train.checkpoint import load_model

    loaded = load_model(run, device="cpu")
    model = EncoderDecoder.from_encoder(loaded.model)
    dev = pick_device(device)
    model.to(dev).eval()
    tokenizer = open_tokenizer(loaded.tokenizer_path)
    framing = framing_of(loaded.vocab, tokenizer, min(max_len, loaded.config.model.max_positions))
    directions = tuple(f"{a}-{b}" for a in framing.lang2id for b in framing.lang2id if a != b)
    return Translator(model, framing, tokenizer, directions, framing.lang2id,
                      model.encoder.lang_embeddings is not None, dev, precision, loaded.path)


def check_direction(tr: Translator, src: str, tgt: str) -> None:
    from xlmkit.core.langs import canonical_lang

    for lang in (src, tgt):
        if canonical_lang(lang) not in {canonical_lang(k) for k in tr.lang2id}:
            raise XlmkitError(f"unknown language {lang!r}: the model knows {', '.join(sorted(tr.lang2id))}")
    if f"{src}-{tgt}" not in tr.directions:
        raise XlmkitError(f"the model was not trained to translate {src}-{tgt} (its directions: "
                          f"{', '.join(tr.directions) or 'none'})")


@dataclass
class TranslationOutput:
    lines: list[str]
    truncated: int  # inputs longer than the model's positions, cut


def translate(tr: Translator, lines: Sequence[str], src: str, tgt: str, beam_size: int = 5, batch_size: int = 32,
              length_penalty: float = 1.0, progress: Callable[[int], None] | None = None) -> TranslationOutput:
    """One output line per input line; an empty (or blank) line stays empty."""
    from xlmkit.model.generate import GenerationConfig

    check_direction(tr, src, tgt)
    keep = [i for i, line in enumerate(lines) if line.strip()]
    encodings = tr.tokenizer.encode_batch([lines[i].strip() for i in keep], add_special_tokens=False)
    truncated = sum(len(e.ids) > tr.framing.max_len - 2 for e in encodings)
    sources = [tr.framing.frame(np.array(e.ids, dtype=np.int64)) for e in encodings]
    src_id = tr.framing.lang_id(src) if tr.use_langs else None
    tgt_id = tr.framing.lang_id(tgt) if tr.use_langs else None
    gen_cfg = GenerationConfig(beam_size=beam_size, length_penalty=length_penalty)
    hyps = translate_ids(tr.model, sources, src_id, tgt_id, tr.framing, gen_cfg, batch_size, tr.device, tr.precision,
                         progress)
    out = [""] * len(lines)
    for i, h in zip(keep, hyps):
        out[i] = tr.tokenizer.decode(h).replace("\n", " ").strip()
    return TranslationOutput(out, truncated)


# ----------------------------------------------------------------------------------------------
# Text generation from a CLM-trained run


def generate_texts(run: str | Path, prompts: Sequence[str], lang: str, max_new_tokens: int = 40,
                   sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   seed: int = 0, which: str = "best", device: str = "auto", precision: str = "auto") -> list[str]:
    """`xlmkit generate`: each prompt continued by the run's encoder used as a causal LM (a run
    pretrained with CLM steps, train.clm_steps), greedy or sampled with a seeded generator; one output
    line per prompt (the prompt's continuation only)."""
    from xlmkit.core.integrity import open_tokenizer
    from xlmkit.core.langs import canonical_lang
    from xlmkit.core.runtime import autocast, choose_precision, pick_device
    from xlmkit.data.contract import RunContract
    from xlmkit.model.generate import GenerationConfig, continue_text
    from xlmkit.train.checkpoint import load_model

    loaded = load_model(run, which=which, device="cpu")
    if tuple(loaded.config.train.clm_steps) == ("none",):
        print(f"[generate] note: {run} was not trained with CLM steps (train.clm_steps=none); its continuations "
              f"come from a model that never predicted the next token")
    dev = pick_device(device)
    precision, _ = choose_precision(precision, dev)
    encoder = loaded.model.to(dev).eval()
    tokenizer = open_tokenizer(loaded.tokenizer_path)
    contract = RunContract.from_vocab(loaded.vocab, tokenizer).for_model(encoder)
    if contract.lang2id and canonical_lang(lang) not in contract.lang2id:
        raise XlmkitError(f"unknown language {lang!r}: the model knows {', '.join(sorted(contract.lang2id))}")
    lang_id = contract.lang_id(lang)
    cfg = GenerationConfig(sample=sample, temperature=temperature, top_k=top_k, top_p=top_p)
    generator = torch.Generator(device=dev).manual_seed(seed)
    out = []
    for prompt in prompts:
        ids = [contract.first_id, *tokenizer.encode(prompt.strip(), add_special_tokens=False).ids]
        ids = ids[-(encoder.cfg.max_positions - 1):]
        with autocast(dev, precision):
            new = continue_text(encoder, ids, lang_id, cfg, max_new_tokens, contract.eos_id, generator)
        out.append(tokenizer.decode(new).replace("\n", " ").strip())
    return out
