"""Translation objectives (xlmkit.tasks.seq2seq): noise, batches, the loss, back-translation, and a tiny
encoder-decoder that learns to copy."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xlmkit.core.config import ModelConfig
from xlmkit.model.decoder import EncoderDecoder
from xlmkit.model.generate import GenerationConfig, generate
from xlmkit.model.encoder import XLMModel
from xlmkit.tasks.seq2seq import (NoiseConfig, add_noise, back_translation_pairs, collate_pairs, denoising_batch,
                            seq2seq_loss_sum, word_blank, word_dropout, word_shuffle)

BOS = EOS = 2
PAD, MASK = 1, 4


def test_word_shuffle_moves_each_word_less_than_k_places():
    rng = np.random.default_rng(0)
    words = np.arange(40)
    moved = 0
    for _ in range(200):
        out = word_shuffle(words, 3.0, rng)
        assert sorted(out.tolist()) == words.tolist()
        displacement = np.abs(np.argsort(out) - words)  # new position of each word - old one
        assert displacement.max() < 3
        moved += int((displacement > 0).sum())
    assert moved > 0
    assert word_shuffle(words, 0.0, rng).tolist() == words.tolist()


def test_word_dropout_and_blank_rates_and_the_frame_is_kept():
    rng = np.random.default_rng(1)
    words = np.arange(5, 20005)
    kept = word_dropout(words, 0.1, rng)
    assert abs(len(kept) / len(words) - 0.9) < 0.01 and np.all(np.diff(kept) > 0)  # order kept
    assert len(word_dropout(np.array([7]), 0.99, rng)) == 1  # never empty
    blanked = word_blank(words, 0.1, MASK, rng)
    assert abs((blanked == MASK).mean() - 0.1) < 0.01
    seq = np.array([BOS, 5, 6, 7, 8, 9, 10, EOS])
    for seed in range(20):
        noisy = add_noise(seq, NoiseConfig(), MASK, np.random.default_rng(seed))
        assert noisy[0] == BOS and noisy[-1] == EOS and set(noisy[1:-1]) <= set(seq[1:-1]) | {MASK}
    a = add_noise(seq, NoiseConfig(), MASK, np.random.default_rng(5))
    assert a.tolist() == add_noise(seq, NoiseConfig(), MASK, np.random.default_rng(5)).tolist()


def test_collate_pairs_teacher_forcing_layout():
    src = [np.array([BOS, 5, 6, EOS]), np.array([BOS, 7, EOS])]
    tgt = [np.array([BOS, 8, EOS]), np.array([BOS, 9, 10, 11, EOS])]
    b = collate_pairs(src, tgt, 0, 1, PAD)
    assert b.src_ids.tolist() == [[BOS, 5, 6, EOS], [BOS, 7, EOS, PAD]]
    assert b.src_mask.tolist() == [[True] * 4, [True, True, True, False]]
    assert b.tgt_ids.tolist() == [[BOS, 8, EOS, PAD], [BOS, 9, 10, 11]]
    assert b.targets.tolist() == [[8, EOS, PAD, PAD], [9, 10, 11, EOS]]
    assert b.target_mask.tolist() == [[True, True, False, False], [True] * 4]
    assert b.n_targets == 6 and (b.src_langs == 0).all() and (b.tgt_langs == 1).all()
    ae = denoising_batch(tgt, 1, NoiseConfig(), MASK, PAD, np.random.default_rng(0))
    assert (ae.src_langs == 1).all() and ae.targets.tolist() == b.targets.tolist()


def tiny(seed=0, **kw) -> EncoderDecoder:
    torch.manual_seed(seed)
    cfg = dict(dim=32, n_layers=2, n_heads=4, ffn_dim=64, dropout=0.0, attention_dropout=0.0, max_positions=64,
               vocab_size=16, n_langs=2, pad_id=PAD)
    return EncoderDecoder.from_encoder(XLMModel(ModelConfig(**{**cfg, **kw})))


@pytest.mark.parametrize("grad", [False, True])
def test_loss_equals_cross_entropy_of_the_teacher_forced_logits(grad):
    model = tiny()
    src = [np.array([BOS, 5, 6, EOS]), np.array([BOS, 7, EOS])]
    tgt = [np.array([BOS, 8, EOS]), np.array([BOS, 9, 10, 11, EOS])]
    b = collate_pairs(src, tgt, 0, 1, PAD)
    with torch.set_grad_enabled(grad):
        loss = seq2seq_loss_sum(model, b)  # with gradients: the fused CPU output layer
        logits = model(b.src_ids, b.src_langs, b.tgt_ids, b.tgt_langs, b.src_mask)
        ref = F.cross_entropy(logits[b.target_mask].float(), b.targets[b.target_mask], reduction="sum")
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)


def test_back_translation_gives_the_reverse_pair_of_the_models_translation():
    model = tiny(seed=2)
    mono = [np.array([BOS, 5, 6, 7, EOS]), np.array([BOS, 9, EOS])]
    b = back_translation_pairs(model, mono, 0, 1, PAD, BOS, EOS, GenerationConfig(max_len_a=1, max_len_b=2))
    assert model.training  # left as it was
    src = torch.tensor([[BOS, 5, 6, 7, EOS], [BOS, 9, EOS, PAD, PAD]])
    out = generate(model, src, torch.zeros_like(src), 1, GenerationConfig(max_len_a=1, max_len_b=2), BOS, EOS)
    for i, ids in enumerate(out):
        assert b.src_ids[i][b.src_mask[i]].tolist() == [BOS, *ids, EOS]  # the translation, in language 1
        assert b.tgt_ids[i][: len(mono[i]) - 1].tolist() == mono[i][:-1].tolist()  # back to the original
    assert (b.src_langs == 1).all() and (b.tgt_langs == 0).all()


def test_a_tiny_model_learns_to_reverse_sequences():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = tiny()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))

    def sample(n):
        seqs = [rng.integers(5, 16, size=rng.integers(2, 7)) for _ in range(n)]
        return ([np.array([BOS, *s, EOS]) for s in seqs], [np.array([BOS, *s[::-1], EOS]) for s in seqs])

    for step in range(400):
        src, tgt = sample(32)
        b = collate_pairs(src, tgt, 0, 1, PAD)
        loss = seq2seq_loss_sum(model, b) / b.n_targets
        opt.zero_grad()
        loss.backward()
        opt.step()
        warmup.step()
    src, tgt = sample(64)
    ids = torch.full((64, 8), PAD)
    for i, s in enumerate(src):
        ids[i, :len(s)] = torch.tensor(s)
    out = generate(model, ids, torch.zeros_like(ids), 1, GenerationConfig(beam_size=2), BOS, EOS)
    exact = np.mean([o == t[1:-1].tolist() for o, t in zip(out, tgt)])
    assert exact == 1.0, f"exact match {exact:.2%} after training (loss {loss.item():.3f})"
