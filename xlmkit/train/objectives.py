"""Pretraining objectives as pure data transforms: numpy in, numpy out, explicit `np.random.Generator`.

The three XLM objectives (Lample & Conneau 2019):

- MLM, masked language modeling (Devlin et al. 2019) over *streams* of text: a language's sentences,
  each followed by </s>, concatenated and cut into chunks of `bptt` tokens (no padding at all).
- TLM, translation language modeling: a sentence and its translation concatenated,
  `</s> x1 </s> </s> x2 </s>`, positions restarting at the second sentence, one language id per token,
  masked as in MLM so that the model can attend to the translation to predict a masked word.
- CLM, causal language modeling: next-token prediction over the same streams as MLM.

Which tokens are predicted (decided once, here): subword tokens and <unk>. Never predicted: <s>,
<pad>, </s>, <mask> and the language tags. XLM predicts <unk> too (it only excludes padding), and an
input position holding <unk> is still a real word whose context carries signal, so we keep it
(`maskable_positions(ids, first_normal_id, unk_id=None)` turns that off). </s> separators are not
predicted: they are structure, not words (XLM does predict them in its streams; the difference is
negligible).
"""

from __future__ import annotations

import numpy as np

from xlmkit.data.contract import pair_layout, tlm_truncate  # noqa: F401  (tlm_truncate re-exported)
from xlmkit.data.sampling import language_probs  # noqa: F401  (re-exported: objectives' public API)

# ----------------------------------------------------------------------------------------------
# Masking (MLM and TLM)


def maskable_positions(ids: np.ndarray, first_normal_id: int, unk_id: int | None,
                       special_ids: np.ndarray | None = None) -> np.ndarray:
    """Positions that may be chosen for prediction: subword tokens (id >= first_normal_id, i.e. past the
    five specials and the language tags) and, when `unk_id` is given, <unk> (see the module docstring).

    `special_ids` (sorted ids, e.g. the manifest's `special_ids`) excludes specials that sit among the
    subwords, as in a reused tokenizer (XLM-R's <mask> is its last id); None keeps the fast path."""
    ids = np.asarray(ids)
    maskable = ids >= first_normal_id
    if special_ids is not None and len(special_ids):
        maskable &= ~np.isin(ids, special_ids)
    if unk_id is not None:
        maskable |= ids == unk_id
    return maskable


def token_frequencies(streams, n_vocab: int, chunk_tokens: int = 1 << 24) -> np.ndarray:
    """Occurrences of each vocabulary id over some id arrays (e.g. the memory-mapped train shards),
    read `chunk_tokens` at a time so that a corpus is never loaded into memory at once. (n_vocab,) int64."""
    counts = np.zeros(n_vocab, dtype=np.int64)
    for ids in streams:
        for start in range(0, len(ids), chunk_tokens):
            part = np.asarray(ids[start : start + chunk_tokens], dtype=np.int64)
            if len(part) and (part.min() < 0 or part.max() >= n_vocab):
                raise ValueError(f"token_frequencies: ids out of range [0, {n_vocab})")
            counts += np.bincount(part, minlength=n_vocab)
    return counts


def sample_weights(counts: np.ndarray, alpha: float) -> np.ndarray:
    """XLM's frequency-weighted masking (`sample_alpha`): a position is chosen for prediction with weight
    freq(token)^-alpha, so rare tokens are predicted more often than uniform masking would. Counts below
    1 (tokens never seen) are clipped to 1 as in XLM. alpha = 0 gives uniform weights. (V,) float64."""
    if alpha < 0:
        raise ValueError(f"sample_weights: alpha must be >= 0, got {alpha}")
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    return counts ** -alpha


def n_predictions(n_maskable: int, word_pred: float) -> int:
    """round(word_pred * n_maskable) (Python's round), and at least 1 when anything is maskable."""
    if n_maskable <= 0:
        return 0
    return min(n_maskable, max(1, round(word_pred * n_maskable)))


def mask_tokens(
    ids: np.ndarray,
    rng: np.random.Generator,
    *,
    word_pred: float = 0.15,
    mask_prob: float = 0.8,
    random_prob: float = 0.1,
    mask_id: int,
    n_vocab: int,
    first_normal_id: int,
    maskable: np.ndarray,
    sample_weights: np.ndarray | None = None,
    replacement_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT/XLM masking of a batch (Devlin et al. 2019; Lample & Conneau 2019).

    Chooses exactly `n_predictions(maskable.sum(), word_pred)` positions among the maskable ones, over
    the whole batch (not per row, as XLM). Uniformly, or, with `sample_weights` (a weight per vocabulary
    id, see `sample_weights()`), without replacement with probability proportional to the weight of the
    token at each position. Each chosen position is then independently replaced by `mask_id` with
    probability `mask_prob`, by a random id in [first_normal_id, n_vocab) (never a special or a language
    tag) with probability `random_prob`, and kept otherwise. With `replacement_ids` (every id that may
    be drawn, for vocabularies whose specials are not all below first_normal_id) the random id is drawn
    uniformly from those instead.

    ids: (B, T) ints; maskable: (B, T) bool. Returns (corrupted ids (B, T), same dtype as ids; pred_mask
    (B, T) bool, True where the original token must be predicted). `ids` is not modified.
    """
    ids = np.asarray(ids)
    maskable = np.asarray(maskable, dtype=bool)
    if ids.ndim != 2 or maskable.shape != ids.shape:
        raise ValueError(f"mask_tokens: ids must be (B, T) and maskable the same shape; "
                         f"got {ids.shape}, {maskable.shape}")
    if not 0.0 < word_pred < 1.0:
        raise ValueError(f"mask_tokens: word_pred must be in (0, 1), got {word_pred}")
    if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1.0:
        raise ValueError("mask_tokens: need mask_prob, random_prob >= 0 and mask_prob + random_prob <= 1")
    if not 0 <= first_normal_id < n_vocab:
        raise ValueError(f"mask_tokens: need 0 <= first_normal_id ({first_normal_id}) < n_vocab ({n_vocab})")

    candidates = np.flatnonzero(maskable)  # row-major flat positions
    k = n_predictions(len(candidates), word_pred)
    pred_flat = np.zeros(ids.size, dtype=bool)
    if k > 0:
        if sample_weights is None:
            chosen = rng.choice(candidates, size=k, replace=False)
        else:
            w = np.asarray(sample_weights, dtype=np.float64)[ids.reshape(-1)[candidates]]
            if not (w > 0).all() or not np.isfinite(w).all():
                raise ValueError("mask_tokens: sample_weights must be finite and > 0 for every maskable token")
            # Weighted sampling without replacement (Efraimidis & Spirakis 2006): the k smallest
            # Exp(1)/w keys are a draw of k positions without replacement, each step ∝ w.
            keys = rng.exponential(size=len(candidates)) / w
            chosen = candidates[np.argpartition(keys, k - 1)[:k]] if k < len(candidates) else candidates
        pred_flat[chosen] = True
    pred_mask = pred_flat.reshape(ids.shape)

    # 80/10/10 (by default) among the chosen positions, in row-major order.
    positions = np.flatnonzero(pred_flat)
    u = rng.random(len(positions))
    if replacement_ids is None:
        random_ids = rng.integers(first_normal_id, n_vocab, size=len(positions))
    else:
        random_ids = np.asarray(replacement_ids)[rng.integers(0, len(replacement_ids), size=len(positions))]
    corrupted = ids.copy()
    flat = corrupted.reshape(-1)
    to_mask = u < mask_prob
    to_random = (u >= mask_prob) & (u < mask_prob + random_prob)
    flat[positions[to_mask]] = mask_id
    flat[positions[to_random]] = random_ids[to_random]
    return corrupted, pred_mask


# ----------------------------------------------------------------------------------------------
# Streams (MLM, CLM)


def stream_layout(n_tokens: int, bptt: int) -> tuple[int, int]:
    """(n_chunks, chunk_len) of a stream of `n_tokens` ids cut into chunks of `bptt` tokens.

    Chunk i is stream[i * chunk_len : (i + 1) * chunk_len]: no padding and no overlap (XLM's streams).
    The tail of fewer than `bptt` tokens is not used. A stream shorter than `bptt` gives one chunk of
    the whole stream (chunk_len = n_tokens), so that tiny validation sets still evaluate."""
    if bptt < 1:
        raise ValueError(f"stream_layout: bptt must be >= 1, got {bptt}")
    if n_tokens <= 0:
        return 0, 0
    if n_tokens < bptt:
        return 1, n_tokens
    return n_tokens // bptt, bptt


def stream_chunks(stream: np.ndarray, chunk_ids: np.ndarray, bptt: int) -> np.ndarray:
    """Rows of chunks `chunk_ids` of a stream (see `stream_layout`). (len(chunk_ids), chunk_len) int64."""
    n_chunks, chunk_len = stream_layout(len(stream), bptt)
    chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
    if len(chunk_ids) and (chunk_ids.min() < 0 or chunk_ids.max() >= n_chunks):
        raise IndexError(f"stream_chunks: chunk id out of range [0, {n_chunks})")
    index = chunk_ids[:, None] * chunk_len + np.arange(chunk_len)[None, :]  # (B, T)
    return np.asarray(stream[index.reshape(-1)], dtype=np.int64).reshape(len(chunk_ids), chunk_len)


def clm_targets(ids: np.ndarray, attention_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Next-token prediction (CLM) over (B, T) inputs: position t predicts ids[t + 1].

    As in XLM's causal step the input is the whole chunk and the last position predicts nothing.
    With an attention_mask (True = real token), t predicts only when t and t + 1 are both real.
    Returns (pred_mask (B, T) bool, targets (N,) int64: ids[:, t + 1] at pred_mask, row-major), so that
    `loss = cross_entropy(model.clm_logits(h)[pred_mask], targets)`."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"clm_targets: ids must be (B, T), got {ids.shape}")
    real = np.ones(ids.shape, dtype=bool) if attention_mask is None else np.asarray(attention_mask, dtype=bool)
    pred_mask = np.zeros(ids.shape, dtype=bool)
    pred_mask[:, :-1] = real[:, :-1] & real[:, 1:]
    targets = ids[:, 1:][pred_mask[:, :-1]].astype(np.int64)
    return pred_mask, targets


# ----------------------------------------------------------------------------------------------
# TLM


def tlm_pair_layout(
    x1: np.ndarray, x2: np.ndarray, lang1_id: int, lang2_id: int, eos_id: int, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """XLM's TLM input for one sentence pair: `</s> x1 </s> </s> x2 </s>`.

    XLM wraps every sentence in </s> ... </s>; positions restart at 0 for the second sentence and every
    token (its separators included) carries the language id of its sentence (Lample & Conneau 2019,
    figure 1). When the pair is longer than `max_len`, the sentences (not the separators) are cut at
    their end, longer side first (`tlm_truncate`). Returns (ids, langs, positions), each (L,) int64 with
    L = len1' + len2' + 4 <= max_len."""
    if max_len < 4:
        raise ValueError(f"tlm_pair_layout: max_len must be >= 4 (four separators), got {max_len}")
    ids, langs, positions = pair_layout(x1, x2, eos_id, eos_id, max_len, lang1_id, lang2_id)
    return ids, langs, positions
