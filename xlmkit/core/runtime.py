"""Device, dtype and distributed decisions: the one module that makes them.

The model knows nothing of parallelism and the training loop never calls `torch.distributed` itself:

    dist = init_distributed(cfg.train.dist_timeout_s, cfg.train.device)  # DistInfo; no-op for one process
    device = pick_device(cfg.train.device, dist)                           # cuda:LOCAL_RANK under torchrun
    model = wrap_model(model, dist, cfg.train.parallel, device)            # on device; DDP / FSDP2 under torchrun
    optimizer = ...                                                        # after wrap_model (FSDP swaps params)
    precision, note = choose_precision(cfg.train.precision, device)         # "auto" -> bf16 where native
    with autocast(device, precision): ...                                   # bf16 autocast or nothing
    loss = all_reduce_mean(loss, dist)
    grad_norm = clip_grad_norm(model.parameters(), max_norm)               # a float, sharded or not

Multi-process runs are started by `torchrun`, which sets RANK, WORLD_SIZE and LOCAL_RANK (gloo on CPU,
nccl on GPU). Every collective gives up after `train.dist_timeout_s`; `distributed_errors` turns the
resulting failure into one clear XlmkitError, and torchrun stops the other workers when one fails.

Parallelism ("train.parallel"): "none" / "ddp" -> DistributedDataParallel (every rank holds the whole
model, gradients all-reduced); "fsdp" -> FSDP2 (`fully_shard` on every TransformerLayer, then on the
root): parameters, gradients and optimizer state sharded over the ranks. Both average gradients over
ranks, so the loop scales each rank's loss by world_size (see xlmkit.train.pretrain.train_on_batch).
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

from xlmkit.core.errors import XlmkitError


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


# Which precision runs fast where. bf16 autocast halves memory traffic and, where the hardware has
# bf16 dot products, doubles (AVX512_BF16) or more (AMX, tensor cores) the matmul rate. Elsewhere
# bf16 is emulated: on an AVX2-only CPU a 2048^3 bf16 matmul runs ~400x slower than fp32.
PRECISIONS = ("auto", "bf16", "fp32")
# oneDNN ISA levels (ONEDNN_MAX_CPU_ISA) that still include bf16 dot products.
_ONEDNN_BF16_ISAS = ("ALL", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                     "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")


@dataclass(frozen=True)
class Hardware:
    """What decides the precision: the device type, and for a CPU the kernel level torch dispatches to
    (`torch.backends.cpu.get_cpu_capability()`: "AVX2", "AVX512", "DEFAULT", ...) and its bf16 units."""

    device_type: str = "cpu"
    cpu_capability: str = "DEFAULT"
    avx512_bf16: bool = False  # AVX512_BF16 dot products (Cooper Lake, Zen 4 and later)
    amx: bool = False  # AMX tiles (Sapphire Rapids and later)
    cuda_bf16: bool = False  # torch.cuda.is_bf16_supported() (Ampere and later)

    def describe(self) -> str:
        if self.device_type == "cuda":
            return "CUDA " + ("with" if self.cuda_bf16 else "without") + " bf16"
        units = [name for name, has in (("AMX", self.amx), ("AVX512_BF16", self.avx512_bf16)) if has]
        return self.cpu_capability + (" + " + " + ".join(units) if units else "")


def detect_hardware(device: torch.device | str) -> Hardware:
    """The Hardware of `device` on this machine. The kernel level respects ATEN_CPU_CAPABILITY and
    ONEDNN_MAX_CPU_ISA, so a CPU limited to AVX2 by them counts as an AVX2 CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return Hardware(device_type="cuda", cuda_bf16=bool(torch.cuda.is_bf16_supported()))
    capability = torch.backends.cpu.get_cpu_capability()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    allowed = isa in _ONEDNN_BF16_ISAS
    return Hardware(device_type=device.type, cpu_capability=capability,
                    avx512_bf16=allowed and bool(torch.cpu._is_avx512_bf16_supported()),
                    amx=allowed and bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()))


def has_native_bf16(hw: Hardware) -> bool:
    """True where bf16 matmuls run in hardware: CUDA with bf16 support; an x86 CPU whose kernels are
    AVX-512 and that has AVX512_BF16 or AMX. Everything else emulates bf16 (slowly)."""
    if hw.device_type == "cuda":
        return hw.cuda_bf16
    return hw.cpu_capability.upper().startswith("AVX512") and (hw.avx512_bf16 or hw.amx)


def resolve_precision(requested: str, hw: Hardware) -> tuple[str, str]:
    """("bf16" | "fp32", a one-line explanation) for the requested precision on `hw`. "auto" takes bf16
    where it is native and fp32 otherwise; an explicit "bf16" is kept even where it is emulated, and
    its line is then a warning."""
    if requested not in PRECISIONS:
        raise XlmkitError(f"unknown precision {requested!r}; use {', '.join(PRECISIONS)}")
    native = has_native_bf16(hw)
    where = f"this {'GPU' if hw.device_type == 'cuda' else 'CPU'}"
    if requested == "auto":
        if native:
            return "bf16", f"precision auto -> bf16: {where} computes bf16 natively ({hw.describe()})"
        return "fp32", f"precision auto -> fp32: {where} has no native bf16 ({hw.describe()})"
    if requested == "bf16" and not native:
        return "bf16", (f"warning: precision bf16 on {where} without native bf16 ({hw.describe()}) is emulated "
                        f"and slow; use auto or fp32")
    return requested, f"precision {requested} ({hw.describe()})"


def choose_precision(requested: str, device: torch.device | str) -> tuple[str, str]:
    """resolve_precision for this machine's `device`: (precision, the line to show). Commands resolve
    once, show the line once their run has started (an error before that stays a single line), and
    write the resolved precision into the run's config."""
    return resolve_precision(requested, detect_hardware(device))


def autocast(device: torch.device | str, precision: str):
    """Context for the forward pass: bf16 autocast (CPU and GPU; weights and optimizer stay fp32) or,
    for "fp32", nothing at all."""
    device = torch.device(device)
    if precision == "auto":  # callers resolve once (choose_precision); this keeps a direct call right
        precision = resolve_precision("auto", detect_hardware(device))[0]
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise XlmkitError(f"unknown precision {precision!r}; use auto, bf16 or fp32")


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


def wrap_model(model: nn.Module, dist: DistInfo, parallel: str = "none",
               device: torch.device | str | None = None, units: tuple[type[nn.Module], ...] = ()) -> nn.Module:
    """The model the loop calls, on `device` (None: where it is). One process: the model itself
    (whatever `parallel` says). Several: DistributedDataParallel (parallel "none" or "ddp"), or the
    model sharded in place with FSDP2 (parallel "fsdp"; see `shard_model`; `units`: the module classes
    sharded one unit each, e.g. the model's layer class: runtime knows no model). Build the optimizer
    *after* this: FSDP replaces the parameters by sharded ones."""
    if parallel not in ("none", "ddp", "fsdp"):
        raise XlmkitError(f"unknown train.parallel {parallel!r}; use none, ddp or fsdp")
    if dist.enabled and parallel == "fsdp":
        return shard_model(model, dist, device, units)
    if device is not None:
        model = model.to(device)
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_model(model: nn.Module, dist: DistInfo, device: torch.device | str | None = None,
                units: tuple[type[nn.Module], ...] = ()) -> nn.Module:
    """FSDP2 (torch.distributed.fsdp.fully_shard) over all ranks, in place: each module of a class in
    `units` (the caller's layer class, e.g. model.encoder.TransformerLayer) is one unit (its
    parameters are all-gathered just before it runs and freed after), then the root holds the rest: embeddings, the output layer's bias, final LayerNorms. The token embedding is
    also the output layer's weight (tied, Press & Wolf 2017): one Parameter, owned by the root unit,
    so it stays tied; the root is the module whose forward computes the loss, so its parameters are
    gathered for the whole forward, the output layer included. Gradients are reduce-scattered as
    means over ranks, as DDP's; parameters and optimizer state stay fp32 (bf16 comes from autocast).
    A model still on the CPU moves to `device` one unit at a time as it is sharded, so the whole
    unsharded model never has to fit on one GPU."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not units:
        raise XlmkitError("FSDP needs the module classes to shard one unit each (units=(TransformerLayer,))")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.world_size,))  # cuda: this process's GPU (set_device)
    layers = [m for m in model.modules() if isinstance(m, tuple(units))]
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    """True when the model's parameters are FSDP shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model under DDP and torch.compile wrappers (for heads, saving, evaluation). FSDP2
    shards in place: its model is its own plain model (with sharded parameters)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def grad_sync(model: nn.Module, sync: bool):
    """Context for one backward pass: with sync=False (not the last micro-batch of a step), DDP skips
    its gradient all-reduce, so accumulation costs one all-reduce per step. FSDP (no `no_sync`)
    reduce-scatters every micro-batch into its sharded gradients: keeping full unsharded gradients
    between micro-batches would cost the memory that sharding saves."""
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


def broadcast_object(obj, dist: DistInfo, src: int = 0):
    """Rank `src`'s picklable value on every rank (e.g. a decision that only rank 0 can make from its
    files, so that every rank then calls the same collectives)."""
    if not dist.enabled:
        return obj
    import torch.distributed as tdist

    box = [obj]
    tdist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def clip_grad_norm(parameters, max_norm: float) -> float:
    """Clip the gradients' global L2 norm to max_norm (inf: measure only); returns the norm before
    clipping, the same on every rank. Works for FSDP shards: their norm is a DTensor, made whole here."""
    from torch.distributed.tensor import DTensor

    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    total = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()  # (sum over ranks of squared shard norms) ** 0.5
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


# Messages of failed collectives: gloo raises plain RuntimeErrors, nccl DistBackendErrors.
_COLLECTIVE_FAILURES = ("Timed out waiting", "timed out", "Connection closed by peer", "Connection reset by peer",
                        "gloo/transport", "NCCL", "Broken pipe")


@contextlib.contextmanager
def distributed_errors(timeout_s: int):
    """Around a whole multi-process command: a collective that fails because another process died or
    hangs (after `timeout_s`, train.dist_timeout_s) becomes one clear XlmkitError naming this rank,
    instead of a backend traceback. One process: nothing changes."""
    dist = dist_info_from_env()
    try:
        yield
    except Exception as e:
        if not dist.enabled or isinstance(e, XlmkitError) or not _is_collective_failure(e):
            raise
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise XlmkitError(
            f"rank {dist.rank} of {dist.world_size}: a collective operation failed ({first_line}); another "
            f"process probably died or stopped responding (train.dist_timeout_s={timeout_s}); see the "
            f"other ranks' errors above") from e


def _is_collective_failure(e: BaseException) -> bool:
    import torch.distributed as tdist

    if isinstance(e, getattr(tdist, "DistError", ())):
        return True
    return isinstance(e, RuntimeError) and any(s in str(e) for s in _COLLECTIVE_FAILURES)
