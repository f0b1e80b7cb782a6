"""The XLM Transformer encoder (Lample & Conneau 2019) and its XLM-R variant (Conneau et al. 2019).

    model = XLMModel(cfg.model)                       # resolved ModelConfig
    h = model(input_ids, langs, positions, attention_mask, causal=False)   # (B, T, D)
    logits = model.mlm_logits(h[pred_mask])           # (N, V)  tied output layer, predicted positions only
    logits = model.clm_logits(h)                      # (B, T, V)
    emb = model.sentence_embedding(input_ids, langs, attention_mask, layer=-1)   # (B, D)

The computation is the one of Hugging Face `XLMModel` / `XLMWithLMHeadModel` (post-LN, exact erf GELU,
dropout after attention and after the FFN, hidden states zeroed at padding after every block), so
weights convert with a name mapping only. Parameter names, in order:

    token_embeddings.weight                 (V, D)   tied with the output layer
    position_embeddings.weight              (P, D)   absent with sinusoidal_embeddings (a buffer then)
    lang_embeddings.weight                  (L, D)   only with use_lang_emb and n_langs > 1 (as XLM)
    layer_norm_emb.{weight,bias}
    layers.{i}.attention.{q_lin,k_lin,v_lin,out_lin}.{weight,bias}
    layers.{i}.layer_norm1.{weight,bias}    post-LN: after attention; pre-LN: before it
    layers.{i}.ffn.{lin1,lin2}.{weight,bias}
    layers.{i}.layer_norm2.{weight,bias}
    layer_norm_final.{weight,bias}          pre-LN only
    mlm_head.bias                           (V,)
    mlm_head.dense.{weight,bias}, mlm_head.layer_norm.{weight,bias}   head_transform only (XLM-R)

The model is free of objectives: masking, losses and step mixing live in the training code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlmkit.core.config import ModelConfig
from xlmkit.model.ops import (attention, attention_with_dropout, compute_dtype, dropout, keep_mask,  # noqa: F401
                              layer_norm)


# ----------------------------------------------------------------------------------------------
# Small blocks


def create_sinusoidal_embeddings(n_pos: int, dim: int) -> Tensor:
    """Fixed position table of Vaswani et al. 2017, laid out exactly as XLM's (sin on even, cos on odd
    columns, computed in float64 then rounded to float32)."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]  # (P, 1)
    j = torch.arange(dim, dtype=torch.float64)[None, :]  # (1, D)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (P, D)
    out = torch.empty(n_pos, dim, dtype=torch.float64)
    out[:, 0::2] = torch.sin(angle[:, 0::2])
    out[:, 1::2] = torch.cos(angle[:, 1::2])
    return out.float()


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q, k, v, out projections (the layout of HF XLM's
    `MultiHeadAttention`), computed by `scaled_dot_product_attention`."""

    def __init__(self, dim: int, n_heads: int, attention_dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.attention_dropout = attention_dropout
        self.q_lin = nn.Linear(dim, dim)
        self.k_lin = nn.Linear(dim, dim)
        self.v_lin = nn.Linear(dim, dim)
        self.out_lin = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None, is_causal: bool, out_rows: Tensor | None = None) -> Tensor:
        # x (B, T, D); attn_mask None or bool (B, 1, 1|T, T), True = may attend; out_rows None or bool
        # (B, T): project the output only at those positions -> (N, D)
        B, T, D = x.shape
        q = self.q_lin(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_lin(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        v = self.v_lin(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        p = self.attention_dropout if self.training else 0.0
        y = attention(q, k, v, attn_mask, is_causal, p)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        if out_rows is not None:
            y = y[out_rows]  # (N, D)
        return self.out_lin(y)


class FeedForward(nn.Module):
    """lin1 -> exact (erf) GELU -> lin2, as HF XLM's `TransformerFFN` with gelu_activation."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, ffn_dim)
        self.lin2 = nn.Linear(ffn_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.gelu(self.lin1(x)))  # (B, T, D)


class TransformerLayer(nn.Module):
    """One encoder block. Post-LN (XLM, Vaswani et al. 2017):
        x = LN1(x + drop(attn(x)));  x = LN2(x + drop(ffn(x)))
    Pre-LN (Xiong et al. 2020), more stable at depth:
        x = x + drop(attn(LN1(x)));  x = x + drop(ffn(LN2(x)))"""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_ln = cfg.pre_ln
        self.dropout = cfg.dropout
        self.attention = SelfAttention(cfg.dim, cfg.n_heads, cfg.attention_dropout)
        self.layer_norm1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg.dim, cfg.ffn_dim)
        self.layer_norm2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, attn_mask: Tensor | None, is_causal: bool, out_rows: Tensor | None = None) -> Tensor:
        # x (B, T, D); out_rows None or bool (B, T): the block's output only at those positions -> (N, D)
        # (every position still serves as a key and value). Under autocast the LayerNorms hand on bf16
        # (see layer_norm); pre-LN keeps its residual sum in x's dtype (fp32), since it accumulates over
        # every layer, while post-LN renormalises it in every block.
        p = self.dropout if self.training else 0.0
        dtype = compute_dtype(x)
        residual = x if out_rows is None else x[out_rows]  # (B, T, D) or (N, D)
        if self.pre_ln:
            y = self.attention(layer_norm(self.layer_norm1, x, dtype), attn_mask, is_causal, out_rows)
            x = residual + dropout(y, p, self.training)
            x = x + dropout(self.ffn(layer_norm(self.layer_norm2, x, dtype)), p, self.training)
        else:
            y = self.attention(x, attn_mask, is_causal, out_rows)
            x = layer_norm(self.layer_norm1, residual + dropout(y, p, self.training), dtype)
            x = layer_norm(self.layer_norm2, x + dropout(self.ffn(x), p, self.training), dtype)
        return x  # (B, T, D) or (N, D)


class MLMHead(nn.Module):
    """Output layer over the vocabulary; its weight is the token embedding matrix (tied, Press & Wolf
    2017), passed in at call time so the state dict holds it once. head_transform=False: XLM's
    prediction layer (tied linear + bias). True: XLM-R's (dense D->D, GELU, LayerNorm, tied linear +
    bias), as HF `XLMRobertaLMHead`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.head_transform:
            self.dense = nn.Linear(cfg.dim, cfg.dim)
            self.layer_norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        else:
            self.dense = None
            self.layer_norm = None
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def transform(self, h: Tensor) -> Tensor:
        """What the tied linear layer reads: h itself (XLM), or XLM-R's dense -> GELU -> LayerNorm."""
        if self.dense is None:
            return h
        return self.layer_norm(F.gelu(self.dense(h)))  # (..., D)

    def forward(self, h: Tensor, weight: Tensor) -> Tensor:
        # h (..., D), weight (V, D)
        return F.linear(self.transform(h), weight, self.bias)  # (..., V)


# ----------------------------------------------------------------------------------------------
# Embeddings and initialisation, shared by the encoder and the decoder (xlmkit.model.decoder)


def add_input_embeddings(module: nn.Module, cfg: ModelConfig) -> None:
    """Give `module` XLM's position embeddings (learned, or the fixed sinusoidal table as a buffer that
    is not saved), language embeddings (as XLM: none for a single language, where they would only shift
    every input) and the embedding LayerNorm, registered in that order."""
    if cfg.sinusoidal_embeddings:
        module.position_embeddings = None
        module.register_buffer("position_table", create_sinusoidal_embeddings(cfg.max_positions, cfg.dim),
                               persistent=False)
    else:
        module.position_embeddings = nn.Embedding(cfg.max_positions, cfg.dim)
        module.position_table = None
    use_lang = cfg.use_lang_emb and cfg.n_langs > 1
    module.lang_embeddings = nn.Embedding(cfg.n_langs, cfg.dim) if use_lang else None
    module.layer_norm_emb = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)


def add_positions_and_langs(module: nn.Module, x: Tensor, positions: Tensor, langs: Tensor | None) -> Tensor:
    """x (B, T, D) token embeddings + the position and (where the module has them) language embeddings
    of `module` (see add_input_embeddings)."""
    if module.position_embeddings is not None:
        x = x + module.position_embeddings(positions)  # (B, T, D)
    else:
        x = x + F.embedding(positions, module.position_table)  # (B, T, D)
    if langs is not None and module.lang_embeddings is not None:
        x = x + module.lang_embeddings(langs)  # (B, T, D)
    return x


def init_xlm_weights(module: nn.Module, dim: int) -> None:
    """XLM's init for every submodule of `module`: embeddings N(0, D^-0.5) with a zero padding row;
    Linear N(0, 0.02) (as HF's init_std), zero biases; LayerNorm 1, 0."""
    std = dim ** -0.5
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------
# The encoder


class XLMModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not cfg.resolved:
            raise ValueError(
                "XLMModel needs a resolved ModelConfig (vocab_size, n_langs and pad_id come from the "
                f"prepared data's manifest); got vocab_size={cfg.vocab_size}, n_langs={cfg.n_langs}, "
                f"pad_id={cfg.pad_id}")
        if cfg.pad_id >= cfg.vocab_size:
            raise ValueError(f"pad_id ({cfg.pad_id}) must be < vocab_size ({cfg.vocab_size})")
        self.cfg = cfg
        self.pad_id = cfg.pad_id
        self.dropout = cfg.dropout

        self.token_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_id)
        add_input_embeddings(self, cfg)  # positions, languages, their LayerNorm
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.n_layers))
        self.layer_norm_final = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps) if cfg.pre_ln else None
        self.mlm_head = MLMHead(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """XLM's init (init_xlm_weights) and a zero output bias."""
        init_xlm_weights(self, self.cfg.dim)
        nn.init.zeros_(self.mlm_head.bias)

    @property
    def output_weight(self) -> Tensor:
        """The output layer's weight: the token embedding matrix itself (same storage)."""
        return self.token_embeddings.weight

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: Tensor,
        langs: Tensor | None = None,
        positions: Tensor | None = None,
        attention_mask: Tensor | None = None,
        causal: bool = False,
        output_hidden_states: bool = False,
        output_mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """input_ids (B, T) long; langs (B, T) long or None (no language embedding added);
        positions (B, T) long, default 0..T-1; attention_mask (B, T) bool, True = real token, default
        input_ids != pad_id; causal: each position attends only to itself and earlier ones (CLM).
        Returns h (B, T, D), exactly 0 at padding, or (h, [embeddings_out, layer_1_out, ...]) whose
        last entry is h.

        output_mask (B, T) bool: return h[output_mask] (N, D) only. The last block then runs its
        attention output projection, FFN and LayerNorms at those positions only: in MLM training
        (15% predicted) that is ~2/3 of the last block's cost saved, as the dense_seq_output
        option of NVIDIA's MLPerf BERT."""
        if output_mask is not None and output_hidden_states:
            raise ValueError("output_mask and output_hidden_states cannot be combined")
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = input_ids != self.pad_id  # (B, T)
        elif attention_mask.dtype != torch.bool:
            attention_mask = attention_mask != 0
        # The common pretraining batch (a stream of text) has no padding: skip every mask then, so SDPA
        # can take its fused paths and nothing is multiplied by ones.
        padded = not bool(attention_mask.all())

        # embeddings
        if positions is None:
            if T > self.cfg.max_positions:
                raise ValueError(f"sequence length {T} exceeds model.max_positions={self.cfg.max_positions}")
            positions = torch.arange(T, device=input_ids.device)[None, :]  # (1, T)
        x = add_positions_and_langs(self, self.token_embeddings(input_ids), positions, langs)  # (B, T, D)
        # the stream between blocks: bf16 under autocast (post-LN), the residual's fp32 for pre-LN
        x = layer_norm(self.layer_norm_emb, x, x.dtype if self.cfg.pre_ln else compute_dtype(x))
        x = dropout(x, self.dropout, self.training)

        # attention mask: True = may attend
        if not padded:
            attn_mask, is_causal = None, causal
        else:
            pad_out = ~attention_mask[:, :, None]  # (B, T, 1)
            x = x.masked_fill(pad_out, 0.0)
            attn_mask = attention_mask[:, None, None, :]  # (B, 1, 1, T): keys that are real tokens
            if causal:
                lower = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()  # (T, T)
                attn_mask = attn_mask & lower  # (B, 1, T, T)
            is_causal = False

        hidden_states = [x] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            out_rows = output_mask if last else None
            x = layer(x, attn_mask, is_causal, out_rows)  # (B, T, D); the last one (N, D) with output_mask
            if self.layer_norm_final is not None and last:
                x = layer_norm(self.layer_norm_final, x, compute_dtype(x))
            if padded:
                # as XLM: padded positions are exactly 0 after every block, so what a real token sees
                # never depends on how much padding its batch has (masked_fill, not a product, so a
                # fully masked row can never leak NaN)
                x = x.masked_fill(pad_out if out_rows is None else pad_out[out_rows], 0.0)
            if output_hidden_states:
                hidden_states.append(x)
        if output_hidden_states:
            return x, hidden_states
        return x

    # ------------------------------------------------------------------------------------------
    # Heads (tied to the input embeddings)

    def mlm_logits(self, h_pred: Tensor) -> Tensor:
        """h_pred (N, D): hidden states at the predicted positions only (h[pred_mask]) -> (N, V).
        Computing the V-sized output only where a loss is taken is most of the cost saved in MLM."""
        return self.mlm_head(h_pred, self.token_embeddings.weight)  # (N, V)

    def clm_logits(self, h: Tensor) -> Tensor:
        """h (..., D) -> (..., V), the same tied head at every position."""
        return self.mlm_head(h, self.token_embeddings.weight)  # (..., V)

    # ------------------------------------------------------------------------------------------

    def sentence_embedding(
        self,
        input_ids: Tensor,
        langs: Tensor | None = None,
        attention_mask: Tensor | None = None,
        layer: int = -1,
    ) -> Tensor:
        """Mean of the hidden states of the real tokens at hidden-state index `layer` (0 = embeddings,
        n_layers or -1 = last) -> (B, D). Uses the current mode: call model.eval() for retrieval."""
        n = len(self.layers) + 1
        if not -n <= layer < n:
            raise ValueError(f"layer must be in [{-n}, {n - 1}] for a {n - 1}-layer model, got {layer}")
        if attention_mask is None:
            attention_mask = input_ids != self.pad_id
        elif attention_mask.dtype != torch.bool:
            attention_mask = attention_mask != 0
        if layer in (-1, n - 1):
            h = self(input_ids, langs=langs, attention_mask=attention_mask)  # (B, T, D)
        else:
            _, hidden_states = self(input_ids, langs=langs, attention_mask=attention_mask,
                                    output_hidden_states=True)
            h = hidden_states[layer]  # (B, T, D)
        m = attention_mask[:, :, None].to(h.dtype)  # (B, T, 1)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)

