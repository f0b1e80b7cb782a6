"""The XLM encoder: shapes, padding invariance, tied head, causal masking, language and sinusoidal
embeddings, sentence embeddings, and numerical parity with Hugging Face's XLM."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from xlmkit.core.config import ModelConfig
from xlmkit.model.encoder import XLMModel, attention_with_dropout, create_sinusoidal_embeddings, dropout, keep_mask

PAD = 1
V = 53


def make_cfg(**kw) -> ModelConfig:
    base = dict(dim=32, n_layers=2, n_heads=4, ffn_dim=128, dropout=0.1, attention_dropout=0.1,
                max_positions=64, vocab_size=V, n_langs=3, pad_id=PAD)
    base.update(kw)
    return ModelConfig(**base)


def make_model(seed: int = 0, **kw) -> XLMModel:
    torch.manual_seed(seed)
    return XLMModel(make_cfg(**kw)).eval()


def random_ids(B: int, T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, V, (B, T), generator=g)


def right_padded(lengths: list[int], seed: int = 0) -> torch.Tensor:
    ids = random_ids(len(lengths), max(lengths), seed)
    for i, n in enumerate(lengths):
        ids[i, n:] = PAD
    return ids


# ----------------------------------------------------------------------------------------------


def test_unresolved_config_is_rejected():
    with pytest.raises(ValueError, match="resolved"):
        XLMModel(ModelConfig(dim=32, n_layers=1, n_heads=4, ffn_dim=64))


@pytest.mark.parametrize("pre_ln", [False, True])
def test_shapes(pre_ln):
    model = make_model(pre_ln=pre_ln)
    ids = right_padded([7, 5, 3])
    h = model(ids)
    assert h.shape == (3, 7, 32)
    h2, hidden = model(ids, output_hidden_states=True)
    assert len(hidden) == model.cfg.n_layers + 1
    assert all(t.shape == (3, 7, 32) for t in hidden)
    assert torch.equal(hidden[-1], h2) and torch.equal(h2, h)
    pred = ids != PAD
    assert model.mlm_logits(h[pred]).shape == (int(pred.sum()), V)
    assert model.clm_logits(h).shape == (3, 7, V)
    assert model.sentence_embedding(ids).shape == (3, 32)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    # padded positions are exactly zero
    assert torch.all(h[~pred] == 0)


def test_too_long_input_is_a_clear_error():
    model = make_model(max_positions=8)
    with pytest.raises(ValueError, match="max_positions"):
        model(random_ids(1, 9))


@pytest.mark.parametrize("pre_ln", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_invariance(pre_ln, causal):
    model = make_model(pre_ln=pre_ln)
    lengths = [9, 6, 3]
    ids = right_padded(lengths)
    langs = torch.tensor([[0], [1], [2]]).expand_as(ids)
    with torch.no_grad():
        batch = model(ids, langs=langs, causal=causal)
        # the same batch with three more padding columns
        extra = torch.cat([ids, torch.full((3, 3), PAD)], 1)
        extra_langs = torch.cat([langs, torch.zeros(3, 3, dtype=torch.long)], 1)
        more = model(extra, langs=extra_langs, causal=causal)
        for i, n in enumerate(lengths):
            alone = model(ids[i:i + 1, :n], langs=langs[i:i + 1, :n], causal=causal)[0]  # no padding at all
            torch.testing.assert_close(batch[i, :n], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(more[i, :n], alone, atol=1e-5, rtol=1e-5)
            assert torch.all(batch[i, n:] == 0) and torch.all(more[i, n:] == 0)
        # left padding: same hidden states once positions count real tokens (XLM gives positions
        # explicitly; the default is 0..T-1)
        T = ids.shape[1]
        left = torch.full_like(ids, PAD)
        left_langs = torch.zeros_like(langs)
        positions = torch.zeros_like(ids)
        for i, n in enumerate(lengths):
            left[i, T - n:] = ids[i, :n]
            left_langs[i, T - n:] = langs[i, :n]
            positions[i, T - n:] = torch.arange(n)
        if not causal:  # with causal=True a left-padded row's first queries see only padding
            h_left = model(left, langs=left_langs, positions=positions)
            for i, n in enumerate(lengths):
                torch.testing.assert_close(h_left[i, T - n:], batch[i, :n], atol=1e-5, rtol=1e-5)
                assert torch.all(h_left[i, :T - n] == 0)


def test_explicit_attention_mask_matches_pad_ids():
    model = make_model()
    ids = right_padded([6, 4])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(ids, attention_mask=ids != PAD), atol=0, rtol=0)
        torch.testing.assert_close(model(ids), model(ids, attention_mask=(ids != PAD).long()), atol=0, rtol=0)


def test_fully_padded_row_is_finite():
    model = make_model()
    ids = right_padded([5, 5])
    ids[1] = PAD
    for causal in (False, True):
        h = model(ids, causal=causal)
        assert torch.isfinite(h).all() and torch.all(h[1] == 0)


def test_tied_output_layer_shares_storage_and_gets_gradients():
    model = make_model().train()
    emb = model.token_embeddings.weight
    assert model.output_weight is emb
    # the state dict holds the matrix once (safetensors refuses shared tensors)
    assert [k for k in model.state_dict() if model.state_dict()[k].shape == emb.shape] == ["token_embeddings.weight"]
    ids = random_ids(2, 6)
    h = model(ids)
    logits = model.mlm_logits(h[:, 2])  # (2, V)
    torch.testing.assert_close(logits, h[:, 2] @ emb.T + model.mlm_head.bias)
    unused = sorted(set(range(5, V)) - set(ids.flatten().tolist()))[0]
    F.cross_entropy(logits, torch.tensor([unused, unused])).backward()
    # a token absent from the input only gets a gradient through the output layer
    assert emb.grad[unused].abs().sum() > 0
    assert model.mlm_head.bias.grad is not None
    # the padding row gets no gradient from the input side (padding_idx), only from the output layer
    emb.grad = None
    model(right_padded([6, 3])).sum().backward()
    assert torch.all(emb.grad[PAD] == 0)
    # in-place change of the embedding changes the output layer
    with torch.no_grad():
        emb[unused] += 1.0
    torch.testing.assert_close(model.mlm_logits(h[:, 2].detach()), h[:, 2].detach() @ emb.T + model.mlm_head.bias)


@pytest.mark.parametrize("head_transform", [False, True])
def test_mlm_logits_match_clm_logits(head_transform):
    model = make_model(head_transform=head_transform)
    ids = right_padded([8, 5])
    h = model(ids)
    pred = torch.zeros_like(ids, dtype=torch.bool)
    pred[0, [1, 4, 7]] = True
    pred[1, [0, 3]] = True
    torch.testing.assert_close(model.mlm_logits(h[pred]), model.clm_logits(h)[pred], atol=1e-6, rtol=1e-6)
    names = [n for n, _ in model.named_parameters()]
    assert ("mlm_head.dense.weight" in names) == head_transform
    assert ("mlm_head.layer_norm.weight" in names) == head_transform


@pytest.mark.parametrize("pre_ln", [False, True])
def test_causal_mask(pre_ln):
    model = make_model(pre_ln=pre_ln)
    ids = random_ids(2, 10)
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] - 5 + 1) % (V - 5) + 5
    with torch.no_grad():
        a, b = model(ids, causal=True), model(changed, causal=True)
        torch.testing.assert_close(a[:, :6], b[:, :6], atol=0, rtol=0)  # the past never sees the future
        assert (a[:, 6:] - b[:, 6:]).abs().amax() > 1e-3
        a, b = model(ids), model(changed)
        assert (a[:, :6] - b[:, :6]).abs().amax() > 1e-3  # bidirectional: everything sees it
        # causal with padding in the batch: same as without padding
        padded = torch.cat([ids, torch.full((2, 3), PAD)], 1)
        torch.testing.assert_close(model(padded, causal=True)[:, :10], model(ids, causal=True),
                                   atol=1e-5, rtol=1e-5)


def test_language_embeddings():
    model = make_model(use_lang_emb=True)
    ids = random_ids(2, 6)
    assert "lang_embeddings.weight" in dict(model.named_parameters())
    with torch.no_grad():
        a = model(ids, langs=torch.zeros_like(ids))
        b = model(ids, langs=torch.ones_like(ids))
        c = model(ids)  # langs=None: no language embedding added
    assert (a - b).abs().amax() > 1e-3 and (a - c).abs().amax() > 1e-3

    model = make_model(use_lang_emb=False)  # XLM-R style
    assert not any("lang" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(ids, langs=torch.zeros_like(ids)), model(ids, langs=torch.ones_like(ids)))
    # as XLM: one language has no language embedding
    assert not any("lang" in n for n, _ in make_model(n_langs=1).named_parameters())


def test_sinusoidal_positions_are_fixed():
    model = make_model(sinusoidal_embeddings=True).train()
    names = [n for n, _ in model.named_parameters()]
    assert "position_embeddings.weight" not in names
    table = model.position_table
    assert not table.requires_grad and "position_table" not in model.state_dict()
    # XLM's create_sinusoidal_embeddings
    P, D = table.shape
    for pos in (0, 1, 17, P - 1):
        for j in (0, 1, 2, 7, D - 1):
            angle = pos / math.pow(10000, 2 * (j // 2) / D)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert abs(table[pos, j].item() - expected) < 1e-6
    assert torch.equal(create_sinusoidal_embeddings(P, D), table)
    ids = random_ids(2, 6)
    model(ids).sum().backward()
    assert table.grad is None
    # positions matter
    with torch.no_grad():
        model.eval()
        shifted = model(ids, positions=torch.arange(1, 7).expand(2, 6))
        assert (shifted - model(ids)).abs().amax() > 1e-3


def test_dropout_only_in_training():
    model = make_model(dropout=0.3, attention_dropout=0.3)
    ids = right_padded([6, 4])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(ids), atol=0, rtol=0)
        model.train()
        assert (model(ids) - model(ids)).abs().amax() > 1e-3


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dropout_keep_rate_scale_gradient_and_seed(p, dtype):
    # the CPU dropout draws its mask from 16-bit words: check it is still dropout
    x = torch.randn(256, 1024).to(dtype).requires_grad_()
    torch.manual_seed(0)
    y = dropout(x, p, training=True)
    kept = y != 0
    n = kept.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)  # 5 sigma
    torch.testing.assert_close(y[kept], (x * (1 / (1 - p)))[kept], atol=0, rtol=0)  # as F.dropout rounds
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.to(dtype) * (1 / (1 - p)), atol=0, rtol=0)
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p, training=True), y)  # the seed decides the mask
    assert not torch.equal(dropout(x, p, training=True), y)
    assert dropout(x, p, training=False) is x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_keep_mask_is_ones_and_zeros_at_the_keep_rate_from_every_word(dtype):
    # the mask is built from the bits of 16-bit random words: it must be exactly 1.0 / 0.0 in the
    # asked dtype, and every word position of the 64-bit draws must be uniform (plain int64
    # random_() never sets the top bit)
    for p in (0.1, 0.5, 0.9):
        torch.manual_seed(0)
        keep = keep_mask((4096, 64), p, torch.device("cpu"), dtype)  # (4096, 64): 16 draws of 4 words per row
        assert keep.dtype == dtype
        assert ((keep == 0) | (keep == 1)).all()
        rate_per_word = keep.view(-1, 4).double().mean(0)  # (4,)
        assert (rate_per_word - (1 - p)).abs().max() < 0.01
    assert (keep_mask((3, 5), 1e-9, torch.device("cpu")) == 1).all()
    assert (keep_mask((3, 5), 1.0, torch.device("cpu")) == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masking", ["none", "padding", "causal"])
def test_attention_with_dropout_is_sdpa_without_dropout(dtype, masking):
    # the training path on the CPU computes attention itself (to draw a cheaper mask); with nothing
    # dropped it must be SDPA's math path exactly in fp32, and in bf16 (products in bf16, softmax in
    # fp32) SDPA's fp32 result to bf16 rounding
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8, generator=g).to(dtype) for _ in range(3))  # (B, H, T, hd)
    attn_mask, is_causal = None, masking == "causal"
    if masking == "padding":
        attn_mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])[:, None, None, :]  # (B, 1, 1, T)
    ours = attention_with_dropout(q, k, v, attn_mask, is_causal, p=0.0)
    assert ours.dtype == dtype
    with sdpa_kernel(SDPBackend.MATH):
        math_fp32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask,
                                                   is_causal=is_causal)
    if dtype == torch.float32:
        torch.testing.assert_close(ours, math_fp32, atol=0, rtol=0)
        default = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        torch.testing.assert_close(ours, default, atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(ours.float(), math_fp32, atol=3e-2, rtol=2e-2)
    # with dropout and v = identity the output is the attention probabilities themselves: each one is
    # either dropped (0) or kept and scaled by 1 / (1 - p)
    eye = torch.eye(9, dtype=dtype).expand(2, 4, 9, 9)  # (B, H, T, T)
    probs = attention_with_dropout(q, k, eye, attn_mask, is_causal, p=0.0)  # (B, H, T, T)
    torch.manual_seed(0)
    dropped = attention_with_dropout(q, k, eye, attn_mask, is_causal, p=0.5)  # (B, H, T, T)
    kept = dropped != 0
    assert 0.3 < kept[probs != 0].float().mean() < 0.7
    torch.testing.assert_close(dropped[kept], (probs * 2)[kept], atol=0, rtol=0)


@pytest.mark.parametrize("pre_ln", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_output_mask_gives_the_masked_rows_of_the_full_output(pre_ln, causal):
    # with output_mask the last block works on the selected rows only: the result must be those rows
    # of the full forward, padding included (0 there)
    model = make_model(pre_ln=pre_ln)
    ids = right_padded([9, 6, 3])
    langs = torch.tensor([[0], [1], [2]]).expand_as(ids)
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(ids.shape, generator=g) < 0.3
    mask[2, 5] = True  # a padding position
    with torch.no_grad():
        full = model(ids, langs=langs, causal=causal)  # (B, T, D)
        rows = model(ids, langs=langs, causal=causal, output_mask=mask)  # (N, D)
    assert rows.shape == (int(mask.sum()), full.shape[-1])
    torch.testing.assert_close(rows, full[mask], atol=1e-5, rtol=1e-5)
    assert (rows[-1] == 0).all()  # row of [2, 5], the last True in row-major order
    with pytest.raises(ValueError, match="output_mask"):
        model(ids, output_mask=mask, output_hidden_states=True)


def test_cpu_training_step_is_seeded_and_finite_with_padding():
    model = make_model(dropout=0.2, attention_dropout=0.2).train()
    ids = right_padded([8, 5, 1])
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        h = model(ids)
        h[ids != PAD].sum().backward()
        outs.append(h.detach())
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        model.zero_grad()
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("layer", [-1, 0, 1])
def test_sentence_embedding_ignores_padding(layer):
    model = make_model()
    lengths = [7, 4, 2]
    ids = right_padded(lengths)
    langs = torch.tensor([[0], [1], [2]]).expand_as(ids)
    with torch.no_grad():
        emb = model.sentence_embedding(ids, langs, layer=layer)
        _, hidden = model(ids, langs=langs, output_hidden_states=True)
        for i, n in enumerate(lengths):
            alone = model.sentence_embedding(ids[i:i + 1, :n], langs[i:i + 1, :n], layer=layer)[0]
            torch.testing.assert_close(emb[i], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(emb[i], hidden[layer][i, :n].mean(0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layer"):
        model.sentence_embedding(ids, layer=3)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_bf16_autocast_follows_fp32(pre_ln):
    # under autocast the blocks hand bf16 to each other (LayerNorm statistics in fp32, pre-LN's
    # residual sum in fp32): the loss and gradients must stay those of fp32 to bf16 rounding
    model = make_model(pre_ln=pre_ln).train()
    ids = right_padded([8, 5])
    langs = torch.zeros_like(ids)
    grads, losses = [], []
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)  # the same dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            h = model(ids, langs=langs)
            assert h.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
            loss = F.cross_entropy(model.mlm_logits(h[ids != PAD]).float(), ids[ids != PAD])
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        model.zero_grad(set_to_none=True)
    assert all(torch.isfinite(g).all() for g in grads)
    assert abs(losses[1] - losses[0]) < 1e-2 * abs(losses[0])
    assert F.cosine_similarity(grads[0], grads[1], dim=0) > 0.999


# ----------------------------------------------------------------------------------------------
# Parity with Hugging Face (the interop code maps weights by name only)


def xlmkit_to_hf_xlm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """xlmkit XLMModel state dict -> transformers XLMWithLMHeadModel state dict."""
    rules = [
        (r"token_embeddings\.weight", "transformer.embeddings.weight"),
        (r"(position_embeddings|lang_embeddings|layer_norm_emb)\.(\w+)", r"transformer.\1.\2"),
        (r"layers\.(\d+)\.attention\.(\w+)\.(\w+)", r"transformer.attentions.\1.\2.\3"),
        (r"layers\.(\d+)\.(layer_norm1|layer_norm2)\.(\w+)", r"transformer.\2.\1.\3"),
        (r"layers\.(\d+)\.ffn\.(\w+)\.(\w+)", r"transformer.ffns.\1.\2.\3"),
        (r"mlm_head\.bias", "pred_layer.proj.bias"),
    ]
    out = {}
    for name, tensor in state.items():
        for pattern, repl in rules:
            if re.fullmatch(pattern, name):
                out[re.sub(pattern, repl, name)] = tensor
                break
        else:
            raise KeyError(f"no HF XLM name for {name}")
    out["pred_layer.proj.weight"] = state["token_embeddings.weight"]  # tied
    return out


@pytest.mark.parametrize("sinusoidal,causal", [(False, False), (True, False), (False, True)])
def test_parity_with_hf_xlm(sinusoidal, causal):
    transformers = pytest.importorskip("transformers")
    cfg = make_cfg(dim=32, n_layers=2, n_heads=4, ffn_dim=128, sinusoidal_embeddings=sinusoidal)
    torch.manual_seed(0)
    model = XLMModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values
        for n, p in model.named_parameters():
            if "layer_norm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf_cfg = transformers.XLMConfig(
        vocab_size=V, emb_dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads, dropout=0.1,
        attention_dropout=0.1, gelu_activation=True, sinusoidal_embeddings=sinusoidal, causal=causal,
        n_langs=cfg.n_langs, use_lang_emb=True, max_position_embeddings=cfg.max_positions,
        layer_norm_eps=cfg.layer_norm_eps, pad_token_id=PAD, bos_token_id=0, eos_token_id=2)
    assert cfg.ffn_dim == 4 * cfg.dim  # HF XLM's FFN is always 4 * dim
    hf = transformers.XLMWithLMHeadModel(hf_cfg).eval()
    state = xlmkit_to_hf_xlm(model.state_dict())
    if sinusoidal:
        state["transformer.position_embeddings.weight"] = model.position_table
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if "position_ids" not in k]

    ids = right_padded([11, 8, 4], seed=1)
    langs = torch.tensor([[0], [2], [1]]).expand_as(ids)
    with torch.no_grad():
        h, hidden = model(ids, langs=langs, causal=causal, output_hidden_states=True)
        out = hf(input_ids=ids, attention_mask=(ids != PAD).long(), langs=langs, output_hidden_states=True)
    real = ids != PAD
    assert len(out.hidden_states) == len(hidden)
    for ours, theirs in zip(hidden, out.hidden_states):
        assert (ours - theirs).abs().max() < 1e-4  # padding included: 0 in both
    assert (model.clm_logits(h) - out.logits)[real].abs().max() < 1e-4


def test_head_transform_parity_with_hf_xlm_roberta_lm_head():
    transformers = pytest.importorskip("transformers")
    from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaLMHead

    cfg = make_cfg(head_transform=True, use_lang_emb=False, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    model = XLMModel(cfg).eval()
    with torch.no_grad():
        for p in model.mlm_head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    head = XLMRobertaLMHead(transformers.XLMRobertaConfig(
        vocab_size=V, hidden_size=cfg.dim, layer_norm_eps=cfg.layer_norm_eps)).eval()
    missing, unexpected = head.load_state_dict({
        "dense.weight": model.mlm_head.dense.weight, "dense.bias": model.mlm_head.dense.bias,
        "layer_norm.weight": model.mlm_head.layer_norm.weight, "layer_norm.bias": model.mlm_head.layer_norm.bias,
        "decoder.weight": model.token_embeddings.weight, "bias": model.mlm_head.bias,
        "decoder.bias": model.mlm_head.bias,  # HF ties decoder.bias to bias in XLMRobertaForMaskedLM
    }, strict=False)
    assert not unexpected and not missing
    with torch.no_grad():
        x = torch.randn(5, cfg.dim)
        assert (model.mlm_logits(x) - head(x)).abs().max() < 1e-4
