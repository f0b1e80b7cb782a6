"""CPU/GPU kernels: every place that picks a kernel by device lives here, so the model code
(encoder, decoder) reads as plain math.

    y = dropout(x, p, training)                             # CPU: an integer-bit keep mask; GPU: F.dropout
    y = attention(q, k, v, attn_mask, is_causal, p)         # CPU with dropout: attention_with_dropout; else SDPA
    y = layer_norm(ln, x, dtype)                            # fp32 statistics, output in the compute dtype
    loss_sum = output_loss_sum(h, weight, bias, targets)   # the output layer and its cross-entropy, fused on CPU
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn



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


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool, p: float,
              single_query_plain: bool = False) -> Tensor:
    """Scaled dot-product attention with dropout p: `attention_with_dropout` on the CPU when p > 0
    (SDPA has no fused CPU kernel with dropout), else `F.scaled_dot_product_attention`. With
    `single_query_plain` (the decoder's steps), one bf16 query per row on the CPU takes the plain
    product, which the CPU runs ~3.5x faster than SDPA's kernel does for a single bf16 query (in fp32
    they are even: SDPA)."""
    # q (B, H, T, hd), k, v (B, H, S, hd); attn_mask None or bool (B, 1, 1|T, S), True = may attend
    if p > 0.0 and q.device.type == "cpu":
        return attention_with_dropout(q, k, v, attn_mask, is_causal, p)  # (B, H, T, hd)
    if (single_query_plain and q.shape[2] == 1 and q.device.type == "cpu" and q.dtype == torch.bfloat16
            and not is_causal):
        scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (B, H, 1, S)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
        return scores.softmax(-1) @ v  # (B, H, 1, hd)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=p)


# ----------------------------------------------------------------------------------------------
# The fused output layer + cross-entropy


class _Workspace:
    """Reusable buffers for the fused output layer's (N, V) logits. Tensors of this size (~80 MB at
    N=600, V=32k) are above glibc's mmap threshold, so a fresh one is mapped, page-faulted and zeroed
    by the kernel on every step: ~5% of a CPU training step, for memory that the next step needs again.
    A buffer is taken in the forward and given back at the end of the backward; a forward whose
    backward never runs (a freed graph) simply leaves its buffer to the garbage collector."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.free: list[Tensor] = []

    def take(self, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """(a (rows, cols) view, its buffer): a free buffer of the right kind that is large enough, or a
        new one with room for 1/8 more rows (the number of predicted tokens varies from step to step)."""
        need = rows * cols
        for i, buf in enumerate(self.free):
            if buf.dtype == dtype and buf.device == device and need <= buf.numel():
                buf = self.free.pop(i)
                return buf[:need].view(rows, cols), buf
        buf = torch.empty((rows + rows // 8 + 1) * cols, dtype=dtype, device=device)
        return buf[:need].view(rows, cols), buf

    def give(self, buf: Tensor) -> None:
        self.free.append(buf)
        self.free = sorted(self.free, key=Tensor.numel, reverse=True)[: self.keep]


_OUTPUT_WORKSPACE = _Workspace()


class _OutputLayerCrossEntropy(torch.autograd.Function):
    """sum_i -log softmax(h_i W^T + b)[targets_i], with the (N, V) logits in `dtype` and the softmax in
    fp32 a block of rows at a time. The gradient of the logits, softmax - one_hot, is made in the same
    pass and kept (in fp32, in place of the logits themselves); the backward only multiplies it into
    the two small ends, h (N, D) and W (V, D), and scales those: no pass over an (N, V) tensor in the
    backward at all. The (N, V) buffers come from _OUTPUT_WORKSPACE."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, targets: Tensor, dtype: torch.dtype,
                block: int) -> Tensor:
        # h (N, D), weight (V, D), bias (V,), targets (N,)
        with torch.autocast(h.device.type, enabled=False):
            h_c, w_c = h.to(dtype), weight.to(dtype)
            n, v = h_c.shape[0], w_c.shape[0]
            logits, logits_buf = _OUTPUT_WORKSPACE.take(n, v, dtype, h.device)
            torch.mm(h_c, w_c.t(), out=logits)  # (N, V); the bias is added in fp32 below
            if dtype == torch.float32:  # each fp32 block becomes its own gradient, in place
                grad_logits, buffers = logits, (logits_buf,)
            else:
                grad_logits, grad_buf = _OUTPUT_WORKSPACE.take(n, v, dtype, h.device)
                buffers = (logits_buf, grad_buf)
            bias32 = bias.float()
            grad_bias = torch.zeros_like(bias32)  # (V,) fp32: summed from the fp32 blocks while in cache
            loss = torch.zeros((), dtype=torch.float32, device=h.device)
            for start in range(0, n, block):
                stop = min(start + block, n)
                rows, t = torch.arange(stop - start, device=h.device), targets[start:stop]
                x = logits[start:stop].float().add_(bias32)  # (n, V) fp32, in cache (fp32: the logits' own rows)
                target_logit = x[rows, t]  # (n,)
                peak = x.amax(-1, keepdim=True)  # (n, 1)
                total = x.sub_(peak).exp_().sum(-1, keepdim=True)  # (n, 1); x = exp(logit - peak)
                loss += (total.log()[:, 0] + peak[:, 0] - target_logit).sum()
                x.div_(total)  # softmax
                x[rows, t] -= 1.0  # softmax - one_hot
                grad_bias += x.sum(0)
                if grad_logits is not logits:
                    grad_logits[start:stop] = x
            if grad_logits is not logits:
                _OUTPUT_WORKSPACE.give(logits_buf)  # the bf16 logits are no longer needed
                buffers = (grad_buf,)
        ctx.save_for_backward(h_c, w_c, grad_logits, grad_bias)
        ctx.dtypes = (h.dtype, weight.dtype, bias.dtype)
        ctx.buffers = buffers
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        h_c, w_c, grad_logits, grad_bias = ctx.saved_tensors
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        grad_h = grad_w = grad_b = None
        with torch.autocast(h_c.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_h = (grad_logits @ w_c).float().mul_(grad).to(h_dtype)  # (N, D)
            if ctx.needs_input_grad[1]:
                grad_w = (grad_logits.t() @ (h_c.float() * grad).to(h_c.dtype)).to(w_dtype)  # (V, D)
            if ctx.needs_input_grad[2]:
                grad_b = (grad_bias * grad).to(b_dtype)  # (V,)
        for buf in ctx.buffers:
            _OUTPUT_WORKSPACE.give(buf)
        ctx.buffers = ()
        return grad_h, grad_w, grad_b, None, None, None


def output_loss_sum(h: Tensor, weight: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
    """F.cross_entropy(F.linear(h, weight, bias).float(), targets, reduction="sum"): the output
    layer and the summed loss, h (N, D), weight (V, D), bias (V,), targets (N,) -> fp32 scalar.

    On the CPU, when gradients are wanted, it is fused as the "linear cross-entropy" of Liger Kernel
    and of Wijmans et al. 2024 (Cut Your Losses): no fp32 copy of the (N, V) logits, no (N, V)
    log-softmax, no (N, V) pass in the backward, no bias broadcast into the output. With V=32k those
    passes were ~20% of a CPU MLM training step. On GPUs, without gradients, and under torch.compile
    (`train.compile`: the reused workspace buffers are side effects its tracing refuses, and inductor
    fuses the composition itself), the plain composition is used."""
    if h.device.type == "cpu" and torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad) \
            and not torch.compiler.is_compiling():
        return _OutputLayerCrossEntropy.apply(h, weight, bias, targets, compute_dtype(h),
                                              max(1, 2**20 // max(1, weight.shape[0])))
    return F.cross_entropy(F.linear(h, weight, bias).float(), targets, reduction="sum")
