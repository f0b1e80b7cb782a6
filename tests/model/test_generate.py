"""The decoder, its KV cache and decoding (xlmkit.model.decoder, xlmkit.model.generate) on a tiny random model."""

import itertools

import pytest
import torch

from xlmkit.core.config import ModelConfig
from xlmkit.model.decoder import EncoderDecoder
from xlmkit.model.generate import GenerationConfig, filter_logits, generate, max_lengths, sentence_logprob
from xlmkit.model.encoder import XLMModel

BOS = EOS = 2
PAD = 1


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(dim=32, n_layers=2, n_heads=4, ffn_dim=64, dropout=0.1, attention_dropout=0.1,
                max_positions=64, vocab_size=12, n_langs=2, pad_id=PAD)
    return ModelConfig(**{**base, **kw})


def tiny_model(seed: int = 0, **kw) -> EncoderDecoder:
    torch.manual_seed(seed)
    model = EncoderDecoder.from_encoder(XLMModel(tiny_cfg(**kw)))
    with torch.no_grad():  # a random model whose output distributions are far from uniform
        model.decoder.head.bias.copy_(torch.randn(model.cfg.vocab_size) * 2)
    return model.eval()


def sources(B: int = 3, S: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 12, (B, S), generator=g)
    ids[1, 4:] = PAD  # a shorter source
    langs = torch.zeros_like(ids)
    return ids, langs


@pytest.mark.parametrize("pre_ln", [False, True])
def test_cached_decoding_equals_the_teacher_forced_forward(pre_ln):
    model = tiny_model(pre_ln=pre_ln)
    src, src_langs = sources()
    tgt = torch.cat([torch.full((3, 1), BOS), torch.randint(5, 12, (3, 7))], dim=1)  # (B, T)
    tgt_langs = torch.ones_like(tgt)
    with torch.no_grad():
        full = model(src, src_langs, tgt, tgt_langs)  # (B, T, V)
        memory, mask = model.encode(src, src_langs)
        cache = model.new_cache()
        steps = [model.decode_step(tgt[:, t:t + 1], tgt_langs[:, t:t + 1], t, memory, mask, cache)
                 for t in range(tgt.shape[1])]
        # several new positions at once after a cached prefix, too
        cache2 = model.new_cache()
        model.decode_step(tgt[:, :3], tgt_langs[:, :3], 0, memory, mask, cache2)
        tail = model.decoder(model.token_weight, tgt[:, 3:], tgt_langs[:, 3:], memory, mask, 3, cache2)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.decoder.logits(tail, model.token_weight), full[:, 3:], atol=1e-5, rtol=1e-5)


def test_both_halves_start_from_the_pretrained_encoder(tmp_path):
    torch.manual_seed(0)
    enc = XLMModel(tiny_cfg())
    model = EncoderDecoder.from_encoder(enc)
    for k, v in enc.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v)
    for i, layer in enumerate(enc.layers):
        dec = model.decoder.layers[i]
        assert torch.equal(dec.self_attention.q_lin.weight, layer.attention.q_lin.weight)
        assert torch.equal(dec.ffn.lin2.weight, layer.ffn.lin2.weight)
        assert not torch.equal(dec.cross_attention.q_lin.weight, layer.attention.q_lin.weight)
    assert torch.equal(model.decoder.lang_embeddings.weight, enc.lang_embeddings.weight)
    # one token matrix: encoder input, decoder input and output layer; stored once
    names = list(model.state_dict())
    assert sum("token_embeddings" in n for n in names) == 1
    from safetensors.torch import load_file, save_file

    save_file(model.state_dict(), tmp_path / "model.safetensors")
    restored = EncoderDecoder(model.cfg)
    restored.load_state_dict(load_file(tmp_path / "model.safetensors"))
    src, langs = sources()
    tgt = torch.full((3, 1), BOS)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(src, langs, tgt, None), model.eval()(src, langs, tgt, None))


def naive_greedy(model, src, src_langs, tgt_lang, limits) -> list[list[int]]:
    """Greedy decoding without the cache: the whole prefix through the decoder at every step."""
    out = []
    for b in range(src.shape[0]):
        tgt = [BOS]
        while len(tgt) - 1 < int(limits[b]):
            t = torch.tensor([tgt])
            with torch.no_grad():
                logits = model(src[b:b + 1], src_langs[b:b + 1], t, torch.full_like(t, tgt_lang))[0, -1]
            tok = EOS if len(tgt) >= int(limits[b]) else int(logits.argmax())
            if tok == EOS:
                break
            tgt.append(tok)
        out.append(tgt[1:])
    return out


def test_greedy_equals_decoding_without_the_cache_and_respects_max_length():
    model = tiny_model()
    src, langs = sources()
    cfg = GenerationConfig(max_len_a=1.0, max_len_b=2)
    limits = max_lengths(src != PAD, cfg, model.cfg.max_positions)
    assert limits.tolist() == [8, 6, 8]
    out = generate(model, src, langs, 1, cfg, BOS, EOS)
    assert out == naive_greedy(model, src, langs, 1, limits)
    assert all(len(o) < lim for o, lim in zip(out, limits.tolist()))  # eos is the last allowed token


def test_beam_search_with_a_wide_beam_finds_the_most_probable_sequence():
    """length_penalty 0 and early_stopping off: beam search with more beams than there are
    sequences is exhaustive, so it must return the argmax of sum log p over all of them."""
    model = tiny_model(seed=3, vocab_size=6)
    src = torch.tensor([[5, 3, 4]])
    langs = torch.zeros_like(src)
    cfg = GenerationConfig(beam_size=40, length_penalty=0.0, early_stopping=False, max_len_a=0.0, max_len_b=3)
    best = generate(model, src, langs, 1, cfg, BOS, EOS)[0]
    words = [0, 1, 3, 4, 5]  # every id but eos (2)
    candidates = [list(c) for n in range(3) for c in itertools.product(words, repeat=n)]
    with torch.no_grad():
        scores = [float(sentence_logprob(model, src, langs, torch.tensor([[BOS, *c, EOS]]),
                                         torch.ones(1, len(c) + 2, dtype=torch.long))) for c in candidates]
    assert best == candidates[max(range(len(scores)), key=scores.__getitem__)]


def test_beam_search_scores_at_least_greedy_and_beam_one_is_greedy():
    model = tiny_model(seed=4)
    src, langs = sources(B=4, seed=5)
    greedy = generate(model, src, langs, 1, GenerationConfig(), BOS, EOS)
    assert generate(model, src, langs, 1, GenerationConfig(beam_size=1), BOS, EOS) == greedy
    beam = generate(model, src, langs, 1, GenerationConfig(beam_size=4, length_penalty=0.0), BOS, EOS)
    for b in range(src.shape[0]):
        def logprob(ids):
            with torch.no_grad():
                return float(sentence_logprob(model, src[b:b + 1], langs[b:b + 1], torch.tensor([[BOS, *ids, EOS]]),
                                              torch.ones(1, len(ids) + 2, dtype=torch.long)))
        assert logprob(beam[b]) >= logprob(greedy[b]) - 1e-5


def test_sampling_is_reproducible_and_top_k_1_is_greedy():
    model = tiny_model(seed=6)
    src, langs = sources()
    greedy = generate(model, src, langs, 1, GenerationConfig(), BOS, EOS)
    assert generate(model, src, langs, 1, GenerationConfig(sample=True, top_k=1), BOS, EOS,
                    generator=torch.Generator().manual_seed(0)) == greedy
    cfg = GenerationConfig(sample=True, temperature=1.5, top_p=0.9)
    a = generate(model, src, langs, 1, cfg, BOS, EOS, generator=torch.Generator().manual_seed(7))
    b = generate(model, src, langs, 1, cfg, BOS, EOS, generator=torch.Generator().manual_seed(7))
    assert a == b


def test_filter_logits_keeps_the_top_k_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 0, 0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, 0, 0.81)).tolist() == [[False, False, False, True]]
    assert torch.isinf(filter_logits(logits, 0, 0.1)).tolist() == [[False, True, True, True]]
    with pytest.raises(ValueError, match="sampling"):
        GenerationConfig(sample=True, beam_size=2)


def test_min_len_holds_eos_back():
    model = tiny_model(seed=8)
    src, langs = sources()
    for beam in (1, 3):
        out = generate(model, src, langs, 1, GenerationConfig(beam_size=beam, min_len=5, max_len_a=0, max_len_b=9),
                       BOS, EOS)
        assert all(5 <= len(o) <= 8 for o in out)


def test_cached_decoding_under_bf16_follows_the_full_forward():
    """Decoding steps in bf16 take their own single-query attention path: the same logits as the
    teacher-forced forward (SDPA) up to bf16 rounding, the same argmax nearly everywhere."""
    model = tiny_model(seed=9)
    src, src_langs = sources()
    tgt = torch.cat([torch.full((3, 1), BOS), torch.randint(5, 12, (3, 7))], dim=1)
    tgt_langs = torch.ones_like(tgt)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(src, src_langs, tgt, tgt_langs).float()
        memory, mask = model.encode(src, src_langs)
        cache = model.new_cache()
        w = model.token_weight.bfloat16()
        steps = torch.stack([model.decode_step(tgt[:, t:t + 1], tgt_langs[:, t:t + 1], t, memory, mask, cache, w)
                             for t in range(tgt.shape[1])], 1).float()
    torch.testing.assert_close(steps, full, atol=0.15, rtol=0.05)
    assert (steps.argmax(-1) == full.argmax(-1)).float().mean() >= 0.9
