"""Sequence-to-sequence objectives for translation (Lample & Conneau 2019, section 5; Lample et al. 2018):
the pieces that the training engine combines into `mt`, `ae` and `bt` steps.

- `mt`, supervised translation: a parallel pair (x in language a, y in b) -> the loss of y given x.
- `ae`, denoising auto-encoding: C(x) -> x in the same language, C the noise of Lample et al. 2018 as
  XLM implements it (`add_noise`): local word shuffle (each token moves by less than k = 3 places),
  word dropout (p = 0.1), word blanking to <mask> (p = 0.1), in that order.
- `bt`, online back-translation: a monolingual x in a is translated to b by the current model without
  gradients (`back_translation_pairs`), and the pair (translation in b -> x in a) is trained.

Data transforms are pure functions with an explicit `np.random.Generator`. A sequence is framed as the
encoder's sentences are, `</s> x </s>` (XLM): `bos_id` first and `eos_id` last; noise never touches
the frame.

    batch = collate_pairs(src_seqs, tgt_seqs, src_lang, tgt_lang, pad_id)          # Seq2SeqBatch
    loss_sum = seq2seq_loss_sum(model, batch)                                        # summed over targets
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from xlmkit.data.contract import pad_batch

# ----------------------------------------------------------------------------------------------
# Noise (denoising auto-encoding)


@dataclass(frozen=True)
class NoiseConfig:
    """XLM's defaults (`--word_shuffle 3 --word_dropout 0.1 --word_blank 0.1`)."""

    shuffle: float = 3.0  # k: a token moves by less than k places; 0 = off
    dropout: float = 0.1
    blank: float = 0.1

    def __post_init__(self) -> None:
        if self.shuffle < 0 or not 0 <= self.dropout < 1 or not 0 <= self.blank < 1:
            raise ValueError("noise: shuffle must be >= 0, dropout and blank in [0, 1)")


def word_shuffle(words: np.ndarray, k: float, rng: np.random.Generator) -> np.ndarray:
    """A permutation of words (n,) where each one moves by less than k places: sort the positions
    i + u_i with u_i ~ U(0, k) (Lample et al. 2018, section 2.3)."""
    if k == 0 or len(words) < 2:
        return words.copy()
    keys = np.arange(len(words)) + rng.uniform(0, k, size=len(words))
    return words[np.argsort(keys, kind="stable")]


def word_dropout(words: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Each word dropped with probability p; one of them is kept if all would go."""
    if p == 0 or len(words) == 0:
        return words.copy()
    keep = rng.random(len(words)) >= p
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return words[keep]


def word_blank(words: np.ndarray, p: float, blank_id: int, rng: np.random.Generator) -> np.ndarray:
    """Each word replaced by blank_id (<mask>) with probability p."""
    out = words.copy()
    if p > 0 and len(words):
        out[rng.random(len(words)) < p] = blank_id
    return out


def add_noise(seq: np.ndarray, cfg: NoiseConfig, blank_id: int, rng: np.random.Generator) -> np.ndarray:
    """C(x) for a framed sequence `bos x eos` (XLM's order: shuffle, dropout, blank; the frame stays)."""
    inner = seq[1:-1]
    inner = word_shuffle(inner, cfg.shuffle, rng)
    inner = word_dropout(inner, cfg.dropout, rng)
    inner = word_blank(inner, cfg.blank, blank_id, rng)
    return np.concatenate([seq[:1], inner, seq[-1:]])


# ----------------------------------------------------------------------------------------------
# Batches


@dataclass
class Seq2SeqBatch:
    """src_ids (B, S), src_langs (B, S), src_mask (B, S) bool; tgt_ids (B, T) the decoder input
    (framed target without its last token), tgt_langs (B, T), targets (B, T) the next tokens, with
    target_mask (B, T) bool where a loss is taken."""

    src_ids: Tensor
    src_langs: Tensor
    src_mask: Tensor
    tgt_ids: Tensor
    tgt_langs: Tensor
    targets: Tensor
    target_mask: Tensor

    @property
    def n_targets(self) -> int:
        return int(self.target_mask.sum())

    def to(self, device) -> Seq2SeqBatch:
        return Seq2SeqBatch(*(t.to(device) for t in (self.src_ids, self.src_langs, self.src_mask, self.tgt_ids,
                                                        self.tgt_langs, self.targets, self.target_mask)))


def collate_pairs(src: Sequence[np.ndarray], tgt: Sequence[np.ndarray], src_lang: int, tgt_lang: int,
                  pad_id: int) -> Seq2SeqBatch:
    """Framed source and target sequences (each `bos ... eos`) -> one padded batch: the decoder reads
    tgt[:-1] and predicts tgt[1:] (teacher forcing)."""
    if len(src) != len(tgt) or not src:
        raise ValueError(f"collate_pairs: {len(src)} sources and {len(tgt)} targets")
    src_ids, src_mask = pad_batch(src, pad_id)
    full, full_mask = pad_batch(tgt, pad_id)
    tgt_ids, targets = full[:, :-1], full[:, 1:]
    target_mask = full_mask[:, 1:]
    as_long = torch.from_numpy
    return Seq2SeqBatch(
        src_ids=as_long(src_ids), src_langs=torch.full(src_ids.shape, src_lang, dtype=torch.long),
        src_mask=torch.from_numpy(src_mask), tgt_ids=as_long(np.ascontiguousarray(tgt_ids)),
        tgt_langs=torch.full(tgt_ids.shape, tgt_lang, dtype=torch.long),
        targets=as_long(np.ascontiguousarray(targets)), target_mask=torch.from_numpy(np.ascontiguousarray(target_mask)))


def denoising_batch(seqs: Sequence[np.ndarray], lang: int, cfg: NoiseConfig, blank_id: int, pad_id: int,
                    rng: np.random.Generator) -> Seq2SeqBatch:
    """`ae`: C(x) -> x in one language."""
    return collate_pairs([add_noise(s, cfg, blank_id, rng) for s in seqs], seqs, lang, lang, pad_id)


# ----------------------------------------------------------------------------------------------
# Loss and back-translation


def seq2seq_loss_sum(model, batch: Seq2SeqBatch) -> Tensor:
    """Summed cross-entropy of the targets (fp32 scalar). The output layer runs at the target rows
    only, through the fused output-layer loss of pretraining (xlmkit.model.ops.output_loss_sum)."""
    from xlmkit.model.ops import output_loss_sum

    memory, memory_mask = model.encode(batch.src_ids, batch.src_langs, batch.src_mask)
    h = model.decoder(model.token_weight, batch.tgt_ids, batch.tgt_langs, memory, memory_mask)  # (B, T, D)
    head = model.decoder.head
    h_rows = head.transform(h[batch.target_mask])  # (N, D)
    return output_loss_sum(h_rows, model.token_weight, head.bias, batch.targets[batch.target_mask])


def back_translation_pairs(model, seqs: Sequence[np.ndarray], lang: int, other_lang: int, pad_id: int,
                           bos_id: int, eos_id: int, gen_cfg=None) -> Seq2SeqBatch:
    """`bt`: translate the framed sentences `seqs` (language `lang`) to `other_lang` with the current
    model, without gradients, and return the reverse pairs (translation -> original) to train on."""
    from xlmkit.model.generate import GenerationConfig, generate

    gen_cfg = gen_cfg or GenerationConfig()
    src_ids, src_mask = pad_batch(seqs, pad_id)
    device = model.token_weight.device
    src = torch.from_numpy(src_ids).to(device)
    out = generate(model, src, torch.full_like(src, lang), other_lang, gen_cfg, bos_id, eos_id,
                   src_mask=torch.from_numpy(src_mask).to(device))
    translations = [np.array([bos_id, *ids, eos_id], dtype=np.int64) for ids in out]
    return collate_pairs(translations, seqs, other_lang, lang, pad_id)
