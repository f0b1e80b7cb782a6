"""Pretraining objectives: masking, language sampling, TLM layout, CLM targets, streams."""

from __future__ import annotations

import numpy as np
import pytest

from xlmkit.train.objectives import (
    clm_targets,
    language_probs,
    mask_tokens,
    maskable_positions,
    n_predictions,
    sample_weights,
    stream_chunks,
    stream_layout,
    tlm_pair_layout,
    token_frequencies,
)

# Specials as in xlmkit.data.format: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4, then 3 language tags (5, 6, 7).
BOS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 4
FIRST = 8
V = 500


def _batch(rng: np.random.Generator, shape=(64, 256)) -> np.ndarray:
    """Mostly normal tokens, with every special and language tag sprinkled in."""
    ids = rng.integers(FIRST, V, size=shape)
    specials = rng.random(shape) < 0.1
    ids[specials] = rng.integers(0, FIRST, size=int(specials.sum()))
    return ids


def _mask(ids, seed=0, **kw):
    kw.setdefault("maskable", maskable_positions(ids, FIRST, UNK))
    return mask_tokens(ids, np.random.default_rng(seed), mask_id=MASK, n_vocab=V, first_normal_id=FIRST, **kw)


# ----------------------------------------------------------------------------------------------
# language_probs


def test_language_probs_alpha_0_is_uniform_and_1_is_proportional():
    counts = {"en": 1000, "fr": 100, "sw": 10}
    assert language_probs(counts, 0.0) == pytest.approx({"en": 1 / 3, "fr": 1 / 3, "sw": 1 / 3})
    assert language_probs(counts, 1.0) == pytest.approx({"en": 1000 / 1110, "fr": 100 / 1110, "sw": 10 / 1110})


def test_language_probs_alpha_07_known_numbers():
    # 1000^0.7 = 125.89, 100^0.7 = 25.12, 10^0.7 = 5.01 -> sum 156.03
    p = language_probs({"en": 1000, "fr": 100, "sw": 10}, 0.7)
    assert p["en"] == pytest.approx(0.80687, abs=1e-4)
    assert p["fr"] == pytest.approx(0.16099, abs=1e-4)
    assert p["sw"] == pytest.approx(0.03212, abs=1e-4)
    assert sum(p.values()) == pytest.approx(1.0)
    # alpha < 1 up-samples the small language relative to its share of the data (section 3.1)
    assert p["sw"] > 10 / 1110


def test_language_probs_zero_count_gets_nothing_and_bad_input_raises():
    assert language_probs({"en": 10, "fr": 0}, 0.0) == {"en": 1.0, "fr": 0.0}
    with pytest.raises(ValueError, match="zero"):
        language_probs({"en": 0}, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        language_probs({"en": 1}, -1)


# ----------------------------------------------------------------------------------------------
# Masking


def test_maskable_positions_excludes_specials_and_language_tags():
    ids = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, V - 1]])
    assert maskable_positions(ids, FIRST, UNK).tolist() == [[False, False, False, True, False, False, False,
                                                             False, True, True, True]]
    assert maskable_positions(ids, FIRST, None).tolist()[0][3] is False  # unk not predicted when unk_id is None


def test_mask_tokens_ratios_on_a_large_batch():
    rng = np.random.default_rng(0)
    ids = _batch(rng)
    maskable = maskable_positions(ids, FIRST, UNK)
    corrupted, pred = _mask(ids, seed=1)
    n_maskable = int(maskable.sum())
    assert pred.sum() == round(0.15 * n_maskable)  # exact count
    assert not (pred & ~maskable).any()  # never a special or a language tag
    assert pred.dtype == bool and corrupted.shape == ids.shape and corrupted.dtype == ids.dtype
    assert (corrupted[~pred] == ids[~pred]).all()  # only chosen positions change

    chosen_new, chosen_old = corrupted[pred], ids[pred]
    n = len(chosen_new)
    masked = chosen_new == MASK
    changed = ~masked & (chosen_new != chosen_old)
    # a random replacement equals the original with probability ~1/(V - FIRST): count it as "kept"
    assert masked.mean() == pytest.approx(0.8, abs=0.02)
    assert changed.mean() == pytest.approx(0.1 * (1 - 1 / (V - FIRST)), abs=0.015)
    assert (1 - masked.mean() - changed.mean()) == pytest.approx(0.1, abs=0.015)
    assert n > 2000
    # random replacements are never specials or language tags
    replaced = chosen_new[changed]
    assert (replaced >= FIRST).all() and (replaced < V).all()


def test_mask_tokens_custom_probabilities():
    ids = _batch(np.random.default_rng(0))
    corrupted, pred = _mask(ids, mask_prob=0.0, random_prob=1.0)
    assert not (corrupted[pred] == MASK).any()
    assert (corrupted[pred] >= FIRST).all()
    corrupted, pred = _mask(ids, mask_prob=1.0, random_prob=0.0, word_pred=0.5)
    assert (corrupted[pred] == MASK).all()
    assert pred.sum() == round(0.5 * maskable_positions(ids, FIRST, UNK).sum())


def test_mask_tokens_deterministic_given_the_seed():
    ids = _batch(np.random.default_rng(0), (8, 32))
    a, pa = _mask(ids, seed=7)
    b, pb = _mask(ids, seed=7)
    c, pc = _mask(ids, seed=8)
    assert (a == b).all() and (pa == pb).all()
    assert not (pa == pc).all()
    assert (ids == _batch(np.random.default_rng(0), (8, 32))).all()  # input untouched


def test_mask_tokens_at_least_one_and_none_when_nothing_maskable():
    ids = np.array([[EOS, 20, 21, EOS, PAD, PAD]])
    assert n_predictions(2, 0.15) == 1
    corrupted, pred = _mask(ids)
    assert pred.sum() == 1 and pred[0, 1:3].any()
    only_specials = np.array([[EOS, PAD, BOS, 5, 6]])
    corrupted, pred = _mask(only_specials)
    assert not pred.any() and (corrupted == only_specials).all()


def test_sample_weights_shift_predictions_to_rare_tokens():
    rng = np.random.default_rng(0)
    # token 100 is frequent (90%), token 200 rare (10%)
    ids = np.where(rng.random((32, 128)) < 0.9, 100, 200)
    counts = token_frequencies([ids.reshape(-1)], V)
    assert counts[100] + counts[200] == ids.size and counts[100] > 8 * counts[200]
    w0 = sample_weights(counts, 0.0)
    assert (w0 == 1.0).all()
    _, pred_uniform = _mask(ids, sample_weights=w0)
    _, pred_weighted = _mask(ids, sample_weights=sample_weights(counts, 1.0))
    rare_share_uniform = (ids[pred_uniform] == 200).mean()
    rare_share_weighted = (ids[pred_weighted] == 200).mean()
    assert rare_share_uniform == pytest.approx(0.1, abs=0.03)
    # with alpha = 1 both tokens carry half the total weight: the first draw is rare with p = 0.5,
    # later draws less as the rare positions run out (~0.39 over 15% of the batch)
    assert rare_share_weighted > 0.3
    assert pred_weighted.sum() == pred_uniform.sum() == round(0.15 * ids.size)


def test_sample_weights_never_seen_tokens_clip_to_one():
    w = sample_weights(np.array([0, 1, 100]), 0.5)
    assert w.tolist() == pytest.approx([1.0, 1.0, 0.1])


# ----------------------------------------------------------------------------------------------
# TLM layout


def test_tlm_pair_layout():
    x1, x2 = np.array([10, 11, 12]), np.array([20, 21])
    ids, langs, positions = tlm_pair_layout(x1, x2, lang1_id=0, lang2_id=1, eos_id=EOS, max_len=64)
    assert ids.tolist() == [EOS, 10, 11, 12, EOS, EOS, 20, 21, EOS]
    assert langs.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert positions.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]  # restart at the second sentence
    assert ids.dtype == langs.dtype == positions.dtype == np.int64


def test_tlm_pair_layout_truncates_longer_side_first():
    long1, short2 = np.arange(100, 130), np.array([20, 21, 22])
    ids, langs, positions = tlm_pair_layout(long1, short2, 0, 1, EOS, max_len=16)
    assert len(ids) == 16
    assert ids.tolist() == [EOS, *range(100, 109), EOS, EOS, 20, 21, 22, EOS]  # short side kept whole
    assert positions.max() < 16 and (langs == 1).sum() == 5
    # both long: split evenly, each keeps its beginning
    ids, _, positions = tlm_pair_layout(np.arange(100, 130), np.arange(200, 230), 0, 1, EOS, max_len=14)
    assert ids.tolist() == [EOS, 100, 101, 102, 103, 104, EOS, EOS, 200, 201, 202, 203, 204, EOS]
    ids, _, _ = tlm_pair_layout(np.arange(100, 130), np.arange(200, 230), 0, 1, EOS, max_len=15)
    assert len(ids) == 15 and ids[1:7].tolist() == list(range(100, 106))
    with pytest.raises(ValueError, match="max_len"):
        tlm_pair_layout(long1, short2, 0, 1, EOS, max_len=3)


# ----------------------------------------------------------------------------------------------
# CLM and streams


def test_clm_targets_are_inputs_shifted_by_one():
    ids = np.arange(2 * 6).reshape(2, 6) + FIRST
    pred, targets = clm_targets(ids)
    assert pred[:, :-1].all() and not pred[:, -1].any()
    assert targets.tolist() == ids[:, 1:].reshape(-1).tolist()
    attn = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=bool)
    pred, targets = clm_targets(ids, attn)
    assert pred.sum(axis=1).tolist() == [3, 5]
    assert targets.tolist() == [ids[0, 1], ids[0, 2], ids[0, 3], *ids[1, 1:]]


def test_stream_chunks_have_no_padding_and_cover_the_stream():
    stream = np.arange(103, dtype=np.uint16) + FIRST
    n_chunks, t = stream_layout(len(stream), 10)
    assert (n_chunks, t) == (10, 10)
    rows = stream_chunks(stream, np.arange(n_chunks)[::-1], 10)
    assert rows.shape == (10, 10) and rows.dtype == np.int64
    assert sorted(rows.reshape(-1).tolist()) == stream[:100].tolist()  # all but the < bptt tail, once
    assert rows[0].tolist() == stream[90:100].tolist()
    assert not (rows == PAD).any()
    assert stream_layout(7, 10) == (1, 7)  # a stream shorter than bptt is one chunk
    assert stream_layout(0, 10) == (0, 0)
    with pytest.raises(IndexError):
        stream_chunks(stream, np.array([10]), 10)
