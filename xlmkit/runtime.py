"""Device, dtype and distributed decisions: the one module that makes them.

The model knows nothing of parallelism and the training loop never calls `torch.distributed` itself:

    dist = init_distributed(cfg.train.dist_timeout_s, cfg.train.device)  # DistInfo; no-op for one process
    device = pick_device(cfg.train.device, dist)                           # cuda:LOCAL_RANK under torchrun
    model = wrap_model(model, dist, cfg.train.parallel)                    # DDP when world_size > 1
    with autocast(device, cfg.train.precision): ...                        # bf16 autocast or nothing
    loss = all_reduce_mean(loss, dist)

Multi-process runs are started by `torchrun`, which sets RANK, WORLD_SIZE and LOCAL_RANK.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from xlmkit.errors import XlmkitError


# ----------------------------------------------------------------------------------------------
# Devices and precision


def pick_device(name: str = "auto", dist: DistInfo | None = None) -> torch.device:
    """"auto" -> cuda if available else cpu; "cpu", "cuda", "cuda:N" as given. Under torchrun, plain
    "cuda" / "auto" means this process's GPU, cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise XlmkitError(f"device {name!r} requested but CUDA is not available (use train.device=cpu)")
        if name == "cuda" and dist is not None and dist.world_size > 1:
            name = f"cuda:{dist.local_rank}"
    elif name != "cpu":
        raise XlmkitError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def autocast(device: torch.device | str, precision: str):
    """Context for the forward pass: bf16 autocast (CPU and GPU; weights and optimizer stay fp32) or,
    for "fp32", nothing at all."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise XlmkitError(f"unknown precision {precision!r}; use bf16 or fp32")


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def fused_optimizer_kwargs(device: torch.device) -> dict:
    """The fastest AdamW implementation this build has for `device`: fused, else foreach."""
    import inspect

    if "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in ("cuda", "cpu"):
        return {"fused": True}
    return {"foreach": True}


# ----------------------------------------------------------------------------------------------
# Distributed (torchrun)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only this process logs and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info_from_env() -> DistInfo:
    """RANK / WORLD_SIZE / LOCAL_RANK as set by torchrun; one process when absent."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as e:
        raise XlmkitError(f"bad torchrun environment (RANK / WORLD_SIZE / LOCAL_RANK): {e}") from None


def init_distributed(timeout_s: int = 300, device: str = "auto") -> DistInfo:
    """Join the process group when started by torchrun (gloo on CPU, nccl on GPU); a no-op for one
    process. Returns this process's DistInfo."""
    dist = dist_info_from_env()
    if not dist.enabled:
        return dist
    import torch.distributed as tdist

    if not tdist.is_initialized():
        on_gpu = pick_device(device, dist).type == "cuda"
        if on_gpu:
            torch.cuda.set_device(dist.local_rank)
        tdist.init_process_group(backend="nccl" if on_gpu else "gloo",
                                 timeout=datetime.timedelta(seconds=timeout_s))
    return dist


def shutdown_distributed() -> None:
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def wrap_model(model: nn.Module, dist: DistInfo, parallel: str = "none") -> nn.Module:
    """The model the loop calls. One process: the model itself. Several: DistributedDataParallel
    (parallel "none" or "ddp"). FSDP is not implemented yet."""
    if parallel == "fsdp":
        raise NotImplementedError("train.parallel=fsdp is not implemented yet; use ddp (or none)")
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model under DDP and torch.compile wrappers (for heads, saving, evaluation)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def grad_sync(model: nn.Module, sync: bool):
    """Context for one backward pass: with sync=False (not the last micro-batch of a step), DDP skips
    its gradient all-reduce, so accumulation costs one all-reduce per step."""
    if not sync and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def _comm_device() -> torch.device:
    """Where collectives need their tensors: the GPU for nccl, the CPU for gloo."""
    import torch.distributed as tdist

    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(x: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    if not dist.enabled:
        return x
    import torch.distributed as tdist

    y = x.detach().to(_comm_device(), copy=True)
    tdist.all_reduce(y, op=tdist.ReduceOp.SUM)
    return y.to(x.device)


def all_reduce_mean(x: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    if not dist.enabled:
        return x
    return all_reduce_sum(x, dist) / dist.world_size


def all_gather_tensor(x: torch.Tensor, dist: DistInfo) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor (e.g. RNG states); [x] for one process."""
    if not dist.enabled:
        return [x]
    import torch.distributed as tdist

    y = x.detach().to(_comm_device()).contiguous()
    out = [torch.empty_like(y) for _ in range(dist.world_size)]
    tdist.all_gather(out, y)
    return [t.to(x.device) for t in out]


def barrier(dist: DistInfo) -> None:
    if dist.enabled:
        import torch.distributed as tdist

        tdist.barrier()
