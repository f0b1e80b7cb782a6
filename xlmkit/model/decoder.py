"""The XLM decoder and the encoder-decoder for generation (Lample & Conneau 2019, section 5).

    model = EncoderDecoder.from_encoder(pretrained_xlm)        # both halves from one pretrained XLMModel
    memory, memory_mask = model.encode(src_ids, src_langs)    # (B, S, D), (B, S)
    logits = model(src_ids, src_langs, tgt_ids, tgt_langs)    # (B, T, V) teacher-forced
    cache = model.new_cache()
    logits = model.decode_step(tgt_ids[:, t:t+1], tgt_langs[:, t:t+1], t, memory, memory_mask, cache)  # (B, V)

As XLM's `TransformerModel(is_decoder=True)`, each decoder block is
    post-LN:  x = LN1(x + drop(self_attn(x)));  x = LN15(x + drop(cross_attn(x, memory)));  x = LN2(x + drop(ffn(x)))
    pre-LN:   x = x + drop(self_attn(LN1(x)));  x = x + drop(cross_attn(LN15(x), memory));  x = x + drop(ffn(LN2(x)))
with causal self-attention. Both halves start from the pretrained encoder: the decoder's embeddings,
self-attention, FFN and LayerNorms are copies of the encoder's, its cross-attention starts random
(XLM's `encoder_attn`), and the target language is selected by the language embedding. The token
embeddings are one matrix for the encoder's input, the decoder's input and the output layer (tied,
Press & Wolf 2017), held once by the encoder and passed to the decoder at call time, so the state
dict stores it once.

Parameter names of the decoder (`decoder.` in EncoderDecoder), in order:

    position_embeddings.weight, lang_embeddings.weight, layer_norm_emb.{weight,bias}   as the encoder's
    layers.{i}.self_attention.{q_lin,k_lin,v_lin,out_lin}.{weight,bias}
    layers.{i}.layer_norm1.{weight,bias}
    layers.{i}.cross_attention.{q_lin,k_lin,v_lin,out_lin}.{weight,bias}
    layers.{i}.layer_norm15.{weight,bias}
    layers.{i}.ffn.{lin1,lin2}.{weight,bias}, layers.{i}.layer_norm2.{weight,bias}
    layer_norm_final.{weight,bias}          pre-LN only
    head.bias (+ head.dense, head.layer_norm with head_transform)   the output layer, tied weight

The KV cache (`new_cache()`) holds, per layer, the self-attention keys and values of the positions
decoded so far and the cross-attention keys and values of the memory (computed at the first step);
`reorder_cache` follows the beams of a beam search.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlmkit.core.config import ModelConfig
from xlmkit.model.encoder import (FeedForward, MLMHead, SelfAttention, XLMModel, add_input_embeddings,
                                  add_positions_and_langs, init_xlm_weights)
from xlmkit.model.ops import attention, compute_dtype, dropout, layer_norm

Cache = list[dict[str, Tensor]]  # one dict per layer: "k", "v" (self), "mem_k", "mem_v" (cross)


# ----------------------------------------------------------------------------------------------
# Blocks


class Attention(SelfAttention):
    """The encoder's multi-head attention (same q, k, v, out projections, so weights copy over), with
    queries from x and keys / values from x itself (causal, cached) or from the memory."""

    def heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
        # q (B, H, T, hd), k, v (B, H, S, hd), attn_mask None or bool (B, 1, 1|T, S), True = may attend
        p = self.attention_dropout if self.training else 0.0
        y = attention(q, k, v, attn_mask, is_causal, p, single_query_plain=True)  # (B, H, T, hd)
        B, H, T, hd = y.shape
        return self.out_lin(y.transpose(1, 2).reshape(B, T, H * hd))  # (B, T, D)

    def self_attention(self, x: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        """Causal self-attention over x (B, T, D); with a cache, x holds the new positions only and
        attends to every cached one too (the cache grows by T)."""
        q, k, v = self.heads(self.q_lin(x)), self.heads(self.k_lin(x)), self.heads(self.v_lin(x))
        if cache is None:
            return self.attend(q, k, v, None, is_causal=x.shape[1] > 1)
        if "k" in cache:
            k = torch.cat([cache["k"], k], dim=2)  # (B, H, t + T, hd)
            v = torch.cat([cache["v"], v], dim=2)
        cache["k"], cache["v"] = k, v
        T, S = q.shape[2], k.shape[2]
        mask = None
        if T > 1:  # several new positions: each sees the cache and the new ones up to itself
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)  # (T, S)
        return self.attend(q, k, v, mask, is_causal=False)

    def cross_attention(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None,
                        cache: dict[str, Tensor] | None) -> Tensor:
        """x (B, T, D) attends to memory (B, S, D) at the positions where memory_mask (B, S) is True;
        the memory's keys and values are computed once per cache."""
        q = self.heads(self.q_lin(x))
        if cache is not None and "mem_k" in cache:
            k, v = cache["mem_k"], cache["mem_v"]
        else:
            k, v = self.heads(self.k_lin(memory)), self.heads(self.v_lin(memory))  # (B, H, S, hd)
            if cache is not None:
                cache["mem_k"], cache["mem_v"] = k, v
        mask = None if memory_mask is None else memory_mask[:, None, None, :]  # (B, 1, 1, S)
        return self.attend(q, k, v, mask, is_causal=False)


class DecoderLayer(nn.Module):
    """One decoder block: causal self-attention, cross-attention to the encoder, FFN (see the module
    docstring for the two LayerNorm orders)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_ln = cfg.pre_ln
        self.dropout = cfg.dropout
        self.self_attention = Attention(cfg.dim, cfg.n_heads, cfg.attention_dropout)
        self.layer_norm1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.cross_attention = Attention(cfg.dim, cfg.n_heads, cfg.attention_dropout)
        self.layer_norm15 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg.dim, cfg.ffn_dim)
        self.layer_norm2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None,
                cache: dict[str, Tensor] | None = None) -> Tensor:
        # x (B, T, D), memory (B, S, D), memory_mask (B, S) bool or None
        p = self.dropout if self.training else 0.0
        dtype = compute_dtype(x)
        if self.pre_ln:
            x = x + dropout(self.self_attention.self_attention(layer_norm(self.layer_norm1, x, dtype), cache),
                            p, self.training)
            y = self.cross_attention.cross_attention(layer_norm(self.layer_norm15, x, dtype), memory, memory_mask,
                                                     cache)
            x = x + dropout(y, p, self.training)
            return x + dropout(self.ffn(layer_norm(self.layer_norm2, x, dtype)), p, self.training)
        x = layer_norm(self.layer_norm1, x + dropout(self.self_attention.self_attention(x, cache), p, self.training),
                       dtype)
        y = self.cross_attention.cross_attention(x, memory, memory_mask, cache)
        x = layer_norm(self.layer_norm15, x + dropout(y, p, self.training), dtype)
        return layer_norm(self.layer_norm2, x + dropout(self.ffn(x), p, self.training), dtype)  # (B, T, D)


# ----------------------------------------------------------------------------------------------
# The decoder


class XLMDecoder(nn.Module):
    """Embeddings (the token matrix passed in at call time), decoder blocks, the tied output layer."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dropout = cfg.dropout
        add_input_embeddings(self, cfg)  # as the encoder's: positions, languages, their LayerNorm
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.layer_norm_final = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps) if cfg.pre_ln else None
        self.head = MLMHead(cfg)

    def forward(self, token_weight: Tensor, tgt_ids: Tensor, tgt_langs: Tensor | None, memory: Tensor,
                memory_mask: Tensor | None, start: int = 0, cache: Cache | None = None) -> Tensor:
        """tgt_ids (B, T) at positions start..start+T-1 -> h (B, T, D). Without a cache, teacher-forced
        and causal; with one, the new positions after the cached ones."""
        B, T = tgt_ids.shape
        if start + T > self.cfg.max_positions:
            raise ValueError(f"target length {start + T} exceeds model.max_positions={self.cfg.max_positions}")
        positions = torch.arange(start, start + T, device=tgt_ids.device)[None, :]  # (1, T)
        x = add_positions_and_langs(self, F.embedding(tgt_ids, token_weight, padding_idx=self.cfg.pad_id),
                                    positions, tgt_langs)  # (B, T, D)
        x = layer_norm(self.layer_norm_emb, x, x.dtype if self.cfg.pre_ln else compute_dtype(x))
        x = dropout(x, self.dropout, self.training)
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, memory_mask, None if cache is None else cache[i])
        if self.layer_norm_final is not None:
            x = layer_norm(self.layer_norm_final, x, compute_dtype(x))
        return x  # (B, T, D)

    def logits(self, h: Tensor, token_weight: Tensor) -> Tensor:
        return self.head(h, token_weight)  # (..., V)


class EncoderDecoder(nn.Module):
    """An XLM encoder and decoder sharing one token embedding matrix (input of both, output layer)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = XLMModel(cfg)
        self.decoder = XLMDecoder(cfg)
        self.reset_decoder_parameters()

    def reset_decoder_parameters(self) -> None:
        """The encoder's init (xlmkit.model.encoder.init_xlm_weights) for every decoder parameter."""
        init_xlm_weights(self.decoder, self.cfg.dim)
        nn.init.zeros_(self.decoder.head.bias)

    @classmethod
    def from_encoder(cls, encoder: XLMModel) -> EncoderDecoder:
        """Both halves from one pretrained encoder (XLM's MT initialisation): the encoder as it is, the
        decoder's embeddings, self-attention, FFN, LayerNorms and output layer copied from it, its
        cross-attention random."""
        model = cls(encoder.cfg)
        model.encoder.load_state_dict(encoder.state_dict())
        dec = model.decoder
        with torch.no_grad():
            for name in ("position_embeddings", "lang_embeddings", "layer_norm_emb", "layer_norm_final"):
                src, dst = getattr(encoder, name, None), getattr(dec, name, None)
                if src is not None and dst is not None:
                    dst.load_state_dict(src.state_dict())
            dec.head.load_state_dict(encoder.mlm_head.state_dict())
            for enc_layer, dec_layer in zip(encoder.layers, dec.layers):
                dec_layer.self_attention.load_state_dict(enc_layer.attention.state_dict())
                for name in ("layer_norm1", "ffn", "layer_norm2"):
                    getattr(dec_layer, name).load_state_dict(getattr(enc_layer, name).state_dict())
        return model

    @property
    def token_weight(self) -> Tensor:
        return self.encoder.token_embeddings.weight

    def encode(self, src_ids: Tensor, src_langs: Tensor | None = None,
               src_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """-> memory (B, S, D), memory_mask (B, S) bool (True = real token)."""
        if src_mask is None:
            src_mask = src_ids != self.cfg.pad_id
        return self.encoder(src_ids, langs=src_langs, attention_mask=src_mask), src_mask

    def forward(self, src_ids: Tensor, src_langs: Tensor | None, tgt_ids: Tensor, tgt_langs: Tensor | None,
                src_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, T, V): position t predicts tgt_ids[:, t + 1]."""
        memory, memory_mask = self.encode(src_ids, src_langs, src_mask)
        h = self.decoder(self.token_weight, tgt_ids, tgt_langs, memory, memory_mask)
        return self.decoder.logits(h, self.token_weight)

    def new_cache(self) -> Cache:
        return [{} for _ in self.decoder.layers]

    def decode_step(self, tgt_ids: Tensor, tgt_langs: Tensor | None, start: int, memory: Tensor,
                    memory_mask: Tensor | None, cache: Cache, token_weight: Tensor | None = None) -> Tensor:
        """The next-token logits (B, V) after tgt_ids (B, T), the positions from `start` on (the cache
        holds the ones before). token_weight: the token matrix already in the compute dtype (generate
        casts it once: autocast would cast the (V, D) matrix again at every step)."""
        w = self.token_weight if token_weight is None else token_weight
        h = self.decoder(w, tgt_ids, tgt_langs, memory, memory_mask, start, cache)
        return self.decoder.logits(h[:, -1], w)  # (B, V)


def reorder_cache(cache: Cache, index: Tensor, same_memory: bool = True) -> Cache:
    """The cache of the rows `index` (beam search: each new beam continues an old one). With
    same_memory (every new row continues a row of the same source, as in beam search) the memory's
    keys and values, identical across those rows, stay where they are."""
    skip = ("mem_k", "mem_v") if same_memory else ()
    return [{k: v if k in skip else v.index_select(0, index) for k, v in layer.items()} for layer in cache]

