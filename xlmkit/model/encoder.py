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

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlmkit.core.config import ModelConfig


# ----------------------------------------------------------------------------------------------
# Dropout


# The bit pattern of 1.0 in each float dtype, as the signed integer type of the same width
_ONE_BITS = {torch.float32: (torch.int32, 0x3F800000), torch.bfloat16: (torch.int16, 0x3F80),
             torch.float16: (torch.int16, 0x3C00)}


def keep_mask(shape: tuple[int, ...], p: float, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Dropout's keep mask as numbers of `dtype`: 1.0 (keep) with probability 1 - p, rounded to
    1/32768, else 0.0. Drawn as 16 random bits per element from torch's default generator (so
    `torch.manual_seed` and saved RNG states reproduce it) and turned into 1.0 / 0.0 with integer
    arithmetic on the bits: on the CPU, bernoulli_ draws a double per element and anything that goes
    through a bool tensor (a comparison, torch.where) runs ~6x slower than a multiplication."""
    n = math.prod(shape)
    threshold = round((1.0 - p) * 32768) - 16384  # P(word >> 1 < threshold) = 1 - p
    if threshold > 16383:  # p < 2^-16: keep everything
        return torch.ones(shape, dtype=dtype, device=device)
    # random_(-2**63, None) draws all 64 bits; plain random_() on int64 gives [0, 2^63), whose top
    # 16-bit word would never be negative
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)
    words = bits.view(torch.int16)[:n].view(shape)  # (*shape) uniform over [-2^15, 2^15)
    # (word >> 1) - threshold lies in [-2^15, 2^15): no overflow, negative exactly when kept, so an
    # arithmetic shift by 15 gives -1 (all bits set) for keep and 0 for drop
    sign = words.bitwise_right_shift(1).sub_(threshold).bitwise_right_shift_(15)  # (*shape) int16: -1 | 0
    if dtype not in _ONE_BITS:
        return sign.neg_().to(dtype)
    int_dtype, one_bits = _ONE_BITS[dtype]
    return sign.to(int_dtype).bitwise_and_(one_bits).view(dtype)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """`F.dropout` (zero with probability p, scale the rest by 1 / (1 - p)). On the CPU the mask comes
    from `keep_mask` and is applied by multiplication: bernoulli_ and a bool mask were ~20% of a CPU
    MLM training step. On GPUs F.dropout is fused."""
    if not training or p == 0.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    # (x * keep) * scale rounds kept values exactly as F.dropout's x * scale does
    return x * keep_mask(x.shape, p, x.device, x.dtype) * (1.0 / (1.0 - p))


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


def attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool,
                           p: float) -> Tensor:
    """`F.scaled_dot_product_attention(q, k, v, attn_mask, p, is_causal)` for training on the CPU,
    where SDPA has no fused kernel once dropout_p > 0. In fp32 this is SDPA's math path step for step
    (bit-identical without dropout, tested): softmax(q k^T / sqrt(hd)), dropout, @ v, with the dropout
    mask from `keep_mask` instead of bernoulli_ on (B, H, T, T). In bf16 (under autocast) SDPA's math
    path upcasts q, k, v to fp32; this keeps the two matrix products in bf16, as an eager bf16
    attention does (HF's, for one), and the softmax too, whose CPU kernel computes in fp32 inside
    (the same probabilities as softmax in fp32 rounded to bf16, 4x cheaper with its backward): ~3x
    cheaper products and no (B, H, T, hd) or (B, H, T, T) casts. One difference from SDPA: a query
    with no key to attend to (only in an all-padding sequence, whose outputs the model zeroes)
    averages all keys instead of giving 0."""
    # q, k, v (B, H, T, hd), one dtype; attn_mask None or bool (B, 1, 1|T, T), True = may attend
    T = q.shape[-2]
    with torch.autocast(q.device.type, enabled=False):  # dtypes are chosen here, not by autocast
        scale = q.shape[-1] ** -0.25  # split between q and k, as SDPA does
        scores = (q * scale) @ (k * scale).transpose(-2, -1)  # (B, H, T, T)
        if is_causal:
            attn_mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()  # (T, T)
        if attn_mask is not None:
            # the most negative float rather than -inf: a row with no key left stays finite instead
            # of NaN (which would reach the gradients); any other row is exactly as with -inf
            scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
        probs = scores.softmax(-1)  # (B, H, T, T); the CPU kernel accumulates bf16 in fp32
        return dropout(probs, p, training=True) @ v  # (B, H, T, hd)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the blocks exchange activations in: autocast's (bf16) where autocast is on for x's
    device, else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def layer_norm(ln: nn.LayerNorm, x: Tensor, dtype: torch.dtype) -> Tensor:
    """ln(x) with fp32 statistics, returned in `dtype`. Autocast runs LayerNorm in fp32 and returns
    fp32, which every linear layer reading it casts back to bf16 (q, k and v: three times), in the
    forward and again in the backward; returning the compute dtype once saves those casts, ~10% of a
    CPU training step. The CPU kernel reads bf16 input with fp32 weights directly (mixed type)."""
    if x.dtype == dtype and dtype != torch.float32 and x.device.type == "cpu":
        with torch.autocast("cpu", enabled=False):
            return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)  # fp32 statistics inside
    return ln(x).to(dtype)


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
        if p > 0.0 and x.device.type == "cpu":
            y = attention_with_dropout(q, k, v, attn_mask, is_causal, p)  # (B, H, T, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                               dropout_p=p)  # (B, H, T, hd)
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

