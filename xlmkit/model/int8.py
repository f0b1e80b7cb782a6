"""int8 weight storage (weight-only, symmetric, one fp32 scale per row): the format a quantized run's
model.safetensors holds (`NAME.int8` + `NAME.scale` in place of `NAME`), its dequantize-on-load, and
PyTorch's int8 Linear kernels. The commands that write such runs live in interop/compress.py."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from xlmkit.core.errors import XlmkitError

INT8_SUFFIX = ".int8"
SCALE_SUFFIX = ".scale"
SCHEME = "int8 symmetric per row (weight-only), fp32 scale per row"


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, C) float -> (int8 (R, C), fp32 scale (R,)) with w ~= q * scale[:, None]; |q| <= 127,
    each row's largest |w| maps to 127 (a zero row gets scale 1)."""
    w = w.detach().float()
    amax = w.abs().amax(dim=1)  # (R,)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))  # (R,)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # (R, C)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]  # (R, C)


def int8_tensor_names(model: nn.Module) -> list[str]:
    """The state-dict names quantized in an XLMModel: every Linear weight and the token embeddings."""
    names = ["token_embeddings.weight"]
    names += [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names


def quantize_state_dict(sd: dict[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k in names:
            q, s = quantize_rows(v)
            out[k + INT8_SUFFIX], out[k + SCALE_SUFFIX] = q, s
        else:
            out[k] = v
    return out


def is_quantized_state_dict(sd: dict) -> bool:
    return any(k.endswith(INT8_SUFFIX) for k in sd)


def dequantize_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fp32 state dict of a quantized one (`NAME.int8` + `NAME.scale` -> `NAME`)."""
    out = {}
    for k, v in sd.items():
        if k.endswith(INT8_SUFFIX):
            base = k[: -len(INT8_SUFFIX)]
            if base + SCALE_SUFFIX not in sd:
                raise XlmkitError(f"int8 tensor {k} has no {base + SCALE_SUFFIX}")
            out[base] = dequantize_rows(v, sd[base + SCALE_SUFFIX])
        elif k.endswith(SCALE_SUFFIX) and k[: -len(SCALE_SUFFIX)] + INT8_SUFFIX in sd:
            continue
        else:
            out[k] = v
    return out


def int8_kernels(model: nn.Module) -> nn.Module:
    """Replace the nn.Linear layers by PyTorch's dynamically quantized int8 ones (per-channel weights:
    re-quantizing an int8-run's dequantized weights gives back its int8 values). CPU only, fp32
    activations; returns the converted model (in place)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao (not a dependency)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
