"""CPU/GPU kernels used by the training code, apart from the model (the model knows nothing of them).

    loss_sum = output_loss_sum(h, weight, bias, targets)   # the output layer and its cross-entropy, fused on CPU
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xlmkit.model.encoder import compute_dtype


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
    passes were ~20% of a CPU MLM training step. On GPUs, and without gradients, the plain
    composition is used."""
    if h.device.type == "cpu" and torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _OutputLayerCrossEntropy.apply(h, weight, bias, targets, compute_dtype(h),
                                              max(1, 2**20 // max(1, weight.shape[0])))
    return F.cross_entropy(F.linear(h, weight, bias).float(), targets, reduction="sum")
