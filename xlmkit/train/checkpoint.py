"""Checkpoints: safetensors for every tensor, JSON for everything else. Loading never unpickles.

Layout inside a run directory:

    RUN/checkpoints/step_00000100/   model.safetensors      weights of the plain model (no DDP / compile prefixes)
                                     optimizer.safetensors  optimizer state tensors, "state.{param}.{name}"
                                     rng.safetensors        torch RNG states (uint8), "torch_cpu.rank{r}", "torch_cuda.rank{r}"
                                     state.json             step, optimizer structure (param groups, non-tensor
                                                            state), scheduler, sampler, python / numpy RNG,
                                                            resolved config, vocab, tokenizer reference, metrics,
                                                            and the size and sha256 of every other file ("files")
    RUN/checkpoints/best/            model.safetensors + state.json (lowest mean validation perplexity)

Every checkpoint is written into a temporary directory beside its final place (`.tmp-…`), each file
fsynced, then renamed into place, so a process killed while writing leaves the previous checkpoint
intact; leftovers are ignored by every reader and removed by `clean_checkpoints`. state.json, written
last, records each file's size and sha256 (xlmkit.core.integrity); loading verifies them, and `--resume`
walks back from the newest step checkpoint to the newest one that verifies (`resumable_checkpoint`),
moving the damaged ones aside to `.damaged-step_…`. Replacing an existing
directory (best/) renames the old one to `.old-…` first; if a crash falls between the two renames,
`clean_checkpoints` (and `load_model`) put the old one back.

    save_checkpoint(ckpt_dir, model=…, cfg=…, step=…, optimizer=…, scheduler=…, sampler_state=…)
    state = load_checkpoint(ckpt_dir, model, optimizer, scheduler)     # resume: restores RNG too
    latest_checkpoint(run_dir) -> Path | None
    load_model(path, which="best"|"latest", device="cpu") -> LoadedModel
    save_model_run(run_dir, model, cfg, vocab, tokenizer_path)         # a run with one weights checkpoint

Under torchrun every rank calls save_checkpoint and load_checkpoint. The files always hold full,
unsharded tensors named and numbered as a one-process run names them, written by rank 0: DDP ranks
hold the whole model anyway; FSDP shards are gathered (torch.distributed.checkpoint.state_dict,
full_state_dict + cpu_offload) and, on load, rank 0 reads the files and sends every rank its shards.
So a run resumes on any number of processes, sharded or not.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from xlmkit.core.config import Config, config_from_dict, config_to_dict
from xlmkit.core.errors import XlmkitError, reading
from xlmkit.core.integrity import check_file, check_safetensors, checkpoint_problem, file_record
from xlmkit.core.runtime import DistInfo, all_gather_tensor, is_sharded, unwrap_model
from xlmkit.data.contract import VOCAB_FILE, write_vocab
from xlmkit.model.int8 import dequantize_state_dict, is_quantized_state_dict

FORMAT = "xlmkit-checkpoint"
FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
BEST = "best"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
DAMAGED_PREFIX = ".damaged-"
_STEP_RE = re.compile(r"^step_(\d+)$")


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def best_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS / BEST


# ----------------------------------------------------------------------------------------------
# Durable, atomic writing


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    _fsync_file(path)


def write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path),
              metadata={"format": "pt"})
    _fsync_file(path)


def atomic_write_dir(final: Path, write_files) -> Path:
    """Call write_files(tmp_dir) (which writes with `write_tensors` / `write_json`, each fsynced), then
    move tmp_dir to `final`, replacing it if present. A crash at any point leaves `final` as it was."""
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_files(tmp)
        _fsync_dir(tmp)
        if final.exists():
            old = parent / f"{OLD_PREFIX}{final.name}"
            if old.exists():
                shutil.rmtree(old)
            os.rename(final, old)
            os.rename(tmp, final)
            _fsync_dir(parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
            _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final



def clean_checkpoints(run_dir: str | Path) -> None:
    """Remove what an interrupted write left (`.tmp-*`), and undo a half-done replacement (`.old-X`
    without X). Only rank 0 calls this."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(OLD_PREFIX):
            target = root / p.name[len(OLD_PREFIX):]
            if target.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.rename(p, target)


# ----------------------------------------------------------------------------------------------
# Optimizer and RNG state as tensors + JSON


def _jsonable(x: Any) -> Any:
    """Plain JSON types from numpy scalars / arrays and tuples (sampler and scheduler states)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if torch.is_tensor(x):
        if x.numel() == 1:
            return x.item()
        raise XlmkitError("state to save as JSON holds a tensor; put tensors in safetensors")
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise XlmkitError(f"cannot save a {type(x).__name__} in a checkpoint's state.json")


def optimizer_state_to_tensors(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """optimizer.state_dict() -> ({"state.{param}.{name}": tensor}, JSON structure)."""
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        entry: dict[str, Any] = {"tensors": [], "values": {}}
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value
                entry["tensors"].append(name)
            else:
                entry["values"][name] = _jsonable(value)
        state_meta[str(pid)] = entry
    return tensors, {"state": state_meta, "param_groups": _jsonable(sd["param_groups"])}


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], structure: dict) -> dict:
    state = {}
    for pid, entry in structure["state"].items():
        st: dict[str, Any] = dict(entry["values"])
        for name in entry["tensors"]:
            st[name] = tensors[f"state.{pid}.{name}"]
        state[int(pid)] = st
    groups = []
    for g in structure["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _rng_state(dist: DistInfo) -> tuple[dict[str, torch.Tensor], dict]:
    """Every rank's torch RNG states (tensors; collective under torchrun) + this rank's python and
    numpy states (JSON; nothing in the loop draws from them per rank)."""
    tensors = {}
    for r, t in enumerate(all_gather_tensor(torch.get_rng_state(), dist)):
        tensors[f"torch_cpu.rank{r}"] = t
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for r, t in enumerate(all_gather_tensor(torch.cuda.get_rng_state(), dist)):
            tensors[f"torch_cuda.rank{r}"] = t
    np_state = np.random.get_state()
    meta = {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *[_jsonable(v) for v in np_state[2:]]],
        "world_size": dist.world_size,
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict, dist: DistInfo) -> None:
    if meta.get("world_size", 1) != dist.world_size and dist.is_main:
        print(f"[xlmkit] note: checkpoint written by {meta.get('world_size')} processes, resuming with "
              f"{dist.world_size}: RNG streams are not those of an uninterrupted run")
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    cpu = tensors.get(f"torch_cpu.rank{dist.rank}", tensors.get("torch_cpu.rank0"))
    if cpu is not None:
        torch.set_rng_state(cpu)
    cuda = tensors.get(f"torch_cuda.rank{dist.rank}", tensors.get("torch_cuda.rank0"))
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


# ----------------------------------------------------------------------------------------------
# FSDP: full state dicts gathered to rank 0, scattered back from it


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The parameter names of each optimizer group, in the optimizer's order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]


def _gather_sharded(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """(weights, optimizer.state_dict()-style dict numbered as one process numbers it) of an FSDP
    model, whole, on rank 0's CPU (other ranks get empty dicts). Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    model = unwrap_model(model)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    if optimizer is None:
        return weights, None
    by_name = get_optimizer_state_dict(model, optimizer, options=options)  # {"state": {name: …}, …}
    if not by_name:
        return weights, {}
    index = {name: i for i, name in enumerate(n for group in _param_names(model, optimizer) for n in group)}
    groups = [dict(g, params=[index[n] for n in g["params"]]) for g in by_name["param_groups"]]
    return weights, {"state": {index[n]: st for n, st in by_name["state"].items()}, "param_groups": groups}


def _load_sharded_weights(model: nn.Module, path: Path, weight_files) -> tuple[list[str], list[str]]:
    """Rank 0 reads the full weights and sends each rank its shards. Collective."""
    import torch.distributed as tdist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    weights = read_weights(path, weight_files) if tdist.get_rank() == 0 else {}
    expected = set(model.state_dict())
    result = set_model_state_dict(model, weights, options=StateDictOptions(
        full_state_dict=True, broadcast_from_rank0=True, strict=False))
    if tdist.get_rank() == 0:
        return sorted(expected - set(weights)), sorted(set(weights) - expected)
    return list(result.missing_keys), list(result.unexpected_keys)


def _load_sharded_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, f: Path, structure: dict) -> None:
    """Rank 0 reads the full optimizer state (numbered as one process numbers it), names it, and sends
    each rank its shards. Collective."""
    import torch.distributed as tdist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    by_name: dict = {}
    if tdist.get_rank() == 0:
        sd = optimizer_state_from_tensors(load_file(str(f), device="cpu"), structure)
        names = _param_names(model, optimizer)
        if [len(g["params"]) for g in sd["param_groups"]] != [len(g) for g in names]:
            raise XlmkitError(f"{f}: the optimizer state does not fit the model's parameter groups")
        name_of = {i: n for g, group_names in zip(sd["param_groups"], names) for i, n in zip(g["params"], group_names)}
        by_name = {"state": {name_of[i]: st for i, st in sd["state"].items()},
                   "param_groups": [dict(g, params=group_names) for g, group_names in zip(sd["param_groups"], names)]}
    set_optimizer_state_dict(model, optimizer, by_name,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


# ----------------------------------------------------------------------------------------------
# Saving and loading for training


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    cfg: Config,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    sampler_state: dict | None = None,
    metrics: dict | None = None,
    vocab: dict | None = None,
    tokenizer: str = "../../tokenizer.json",
    dist: DistInfo | None = None,
    weight_files: dict[str, tuple[str, str]] | None = None,
    extra_state: dict | None = None,
) -> Path:
    """Write a checkpoint at `path` atomically. With an optimizer (a step checkpoint, for resume) it
    also holds optimizer, scheduler, sampler and RNG states; without one, only weights (best/).
    Under torchrun call it on every rank (RNG states are gathered); only rank 0 writes.
    `tokenizer` is the tokenizer's path relative to the checkpoint directory. `weight_files` splits
    the weights into files by parameter-name prefix (see `split_weights`; default: all in
    model.safetensors); `extra_state` is merged into state.json (a task's description)."""
    dist = dist or DistInfo()
    path = Path(path)
    rng_tensors, rng_meta = _rng_state(dist) if optimizer is not None else ({}, None)
    sharded = _gather_sharded(model, optimizer) if is_sharded(model) else None  # collective
    if not dist.is_main:
        return path
    weights = sharded[0] if sharded else unwrap_model(model).state_dict()
    state: dict[str, Any] = {
        "format": FORMAT, "version": FORMAT_VERSION, "step": int(step),
        "config": config_to_dict(cfg), "vocab": vocab, "tokenizer": tokenizer,
        "metrics": _jsonable(metrics or {}), **_jsonable(extra_state or {}),
    }
    opt_tensors: dict[str, torch.Tensor] = {}
    if optimizer is not None:
        opt_sd = sharded[1] if sharded else optimizer.state_dict()
        opt_tensors, state["optimizer"] = optimizer_state_to_tensors(opt_sd)
        state["scheduler"] = _jsonable(
            {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}) if scheduler is not None else None
        state["sampler"] = _jsonable(sampler_state) if sampler_state is not None else None
        state["rng"] = rng_meta

    def write_files(tmp: Path) -> None:
        written = [(part, name) for name, part in split_weights(weights, weight_files).items()]
        if optimizer is not None:
            written += [(opt_tensors, OPTIMIZER_FILE), (rng_tensors, RNG_FILE)]
        for tensors, name in written:
            write_tensors(tensors, tmp / name)
        # size + sha256 of each file, read back from the disk: what loading will compare against
        state["files"] = {name: file_record(tmp / name) for _, name in written}
        write_json(state, tmp / STATE_FILE)  # last: a directory with state.json is complete

    return atomic_write_dir(path, write_files)


def read_state(path: str | Path) -> dict:
    """A checkpoint's state.json."""
    f = Path(path) / STATE_FILE
    if not f.is_file():
        raise XlmkitError(f"{path}: not a checkpoint (no {STATE_FILE})")
    try:
        with reading(f):
            state = json.loads(f.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise XlmkitError(f"{f}: damaged checkpoint state (not valid JSON: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise XlmkitError(f"{f}: not an {FORMAT} state file")
    if state.get("version", 0) > FORMAT_VERSION:
        raise XlmkitError(f"{f}: checkpoint format v{state['version']} is newer than this xlmkit (v{FORMAT_VERSION})")
    return state


def verify_checkpoint(path: str | Path, need_optimizer: bool = False) -> None:
    """Raise XlmkitError naming the checkpoint and what is wrong unless every file verifies."""
    why = checkpoint_problem(path, full=True, need_optimizer=need_optimizer)
    if why is not None:
        raise XlmkitError(f"{path}: damaged checkpoint: {why}" if "weights only" not in why else f"{path}: {why}")


def read_tensors(f: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """load_file with a one-line error naming the file when it is not readable safetensors."""
    try:
        return load_file(str(f), device=device)
    except OSError:
        raise
    except Exception as e:  # SafetensorError and friends: a damaged file
        raise XlmkitError(f"{f}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def split_weights(weights: dict[str, torch.Tensor],
                  weight_files: dict[str, tuple[str, str]] | None) -> dict[str, dict[str, torch.Tensor]]:
    """{file: tensors}: each weight goes to the file of the longest parameter-name prefix of
    `weight_files` ({prefix: (file, prefix in the file)}) that it starts with. A fine-tuned model
    keeps its encoder under the pretraining names in model.safetensors (so `load_model` reads it)
    and its head in head.safetensors: {"encoder.": ("model.safetensors", ""), "head.":
    ("head.safetensors", "head.")}."""
    weight_files = weight_files or {"": (MODEL_FILE, "")}
    prefixes = sorted(weight_files, key=len, reverse=True)
    out: dict[str, dict[str, torch.Tensor]] = {file: {} for file, _ in weight_files.values()}
    for key, value in weights.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            raise XlmkitError(f"weight {key!r} matches no checkpoint file ({', '.join(map(repr, prefixes))})")
        file, file_prefix = weight_files[prefix]
        out[file][file_prefix + key[len(prefix):]] = value
    return out


def read_weights(path: Path, weight_files: dict[str, tuple[str, str]] | None, device: str = "cpu") -> dict:
    """The inverse of split_weights: the model's state dict from a checkpoint's files."""
    weights: dict[str, torch.Tensor] = {}
    for prefix, (file, file_prefix) in (weight_files or {"": (MODEL_FILE, "")}).items():
        f = path / file
        if not f.is_file():
            raise XlmkitError(f"{path}: no {file}")
        part = read_tensors(f, device)
        if is_quantized_state_dict(part):  # an int8 run (xlmkit quantize): dequantize on load
            part = dequantize_state_dict(part)
        weights.update({prefix + k[len(file_prefix):]: v for k, v in part.items()})
    return weights


def load_weights(model: nn.Module, path: str | Path, device: str | torch.device = "cpu",
                 weight_files: dict[str, tuple[str, str]] | None = None) -> None:
    path = Path(path)
    target = unwrap_model(model)
    if is_sharded(target):
        missing, unexpected = _load_sharded_weights(target, path, weight_files)
    else:
        missing, unexpected = target.load_state_dict(read_weights(path, weight_files, str(device)), strict=False)
    if missing or unexpected:
        raise XlmkitError(f"{path / MODEL_FILE}: weights do not fit the model: missing {sorted(missing)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]}")


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    device: str | torch.device = "cpu",
    dist: DistInfo | None = None,
    restore_rng: bool = True,
    verify: bool = True,
    weight_files: dict[str, tuple[str, str]] | None = None,
) -> dict:
    """Restore weights (and optimizer, scheduler, RNG states when given / asked) from a step
    checkpoint; returns its state.json (step, sampler, metrics, config, …). With `verify`, every
    file is first checked against the sizes and hashes in state.json (XlmkitError if one differs)."""
    dist = dist or DistInfo()
    path = Path(path)
    state = read_state(path)
    if verify:
        verify_checkpoint(path, need_optimizer=optimizer is not None)
    load_weights(model, path, device, weight_files)
    if optimizer is not None:
        if "optimizer" not in state:
            raise XlmkitError(f"{path}: holds weights only; cannot resume training from it")
        if is_sharded(unwrap_model(model)):
            _load_sharded_optimizer(unwrap_model(model), optimizer, path / OPTIMIZER_FILE, state["optimizer"])
        else:
            tensors = read_tensors(path / OPTIMIZER_FILE)
            optimizer.load_state_dict(optimizer_state_from_tensors(tensors, state["optimizer"]))
    if scheduler is not None and state.get("scheduler") is not None:
        # LambdaLR saves its plain-function lambdas as None; the functions come from the config
        sched_state = dict(state["scheduler"], lr_lambdas=[None] * len(getattr(scheduler, "lr_lambdas", [])))
        scheduler.load_state_dict(sched_state)
    if restore_rng and state.get("rng") is not None:
        _set_rng_state(read_tensors(path / RNG_FILE), state["rng"], dist)
    return state


def list_step_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints (with state.json), oldest first; temporary leftovers ignored."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and (p / STATE_FILE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def step_checkpoint_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Every step_N directory, complete or not (a damaged copy may lack state.json), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir())


def resumable_checkpoint(run_dir: str | Path, log=print) -> Path | None:
    """The newest step checkpoint that verifies (every file's size and hash), walking back from the
    newest; each damaged one on the way is reported through `log` and moved aside to
    `.damaged-step_N` (kept for inspection, out of the way of pruning and of `latest`). None when the
    run has no step checkpoint; XlmkitError when it has some and none verifies. Rank 0 only."""
    candidates = step_checkpoint_dirs(run_dir)
    damaged = []
    for _step, p in reversed(candidates):
        why = checkpoint_problem(p, full=True, need_optimizer=True) if (p / STATE_FILE).is_file() \
            else f"no {STATE_FILE} (an incomplete copy?)"
        if why is None:
            for q, reason in damaged:
                aside = q.parent / f"{DAMAGED_PREFIX}{q.name}"
                if aside.exists():
                    shutil.rmtree(aside)
                os.rename(q, aside)
                log(f"[pretrain] skipping damaged checkpoint {q.name} ({reason}); moved to {aside.name}; "
                    f"resuming from {p.name}")
            return p
        damaged.append((p, why))
    if damaged:
        raise XlmkitError(f"{Path(run_dir) / CHECKPOINTS}: no checkpoint verifies, cannot resume: "
                          + "; ".join(f"{q.name}: {why}" for q, why in damaged))
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    steps = list_step_checkpoints(run_dir)
    return steps[-1][1] if steps else None


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` step checkpoints (best/ is never pruned)."""
    removed = []
    for _step, p in list_step_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def best_metric(run_dir: str | Path, key: str = "mean_ppl") -> float | None:
    """The score of the current best/ checkpoint, None if there is none."""
    p = best_dir(run_dir)
    if not (p / STATE_FILE).is_file():
        return None
    value = read_state(p).get("metrics", {}).get(key)
    return float(value) if value is not None else None


def config_differences(saved: Config, current: Config, sections: tuple[str, ...] = ("model",)) -> list[str]:
    """["model.dim: 64 (checkpoint) != 128 (now)", ...] for the fields of `sections` that differ."""
    a, b = config_to_dict(saved), config_to_dict(current)
    out = []
    for section in sections:
        for key in sorted(set(a[section]) | set(b[section])):
            if a[section].get(key) != b[section].get(key):
                out.append(f"{section}.{key}: {a[section].get(key)!r} (checkpoint) != {b[section].get(key)!r} (now)")
    return out


# ----------------------------------------------------------------------------------------------
# Loading a trained model for use


@dataclass
class LoadedModel:
    model: nn.Module  # XLMModel, in eval mode, on the requested device
    config: Config  # the resolved config it was trained with
    vocab: dict  # {"lang2id", "specials", "languages", "pairs", "vocab_size", "data_dir"}
    tokenizer_path: Path
    path: Path  # the checkpoint directory the weights came from
    compression: dict | None = None  # state.json "compression" (int8 / trim, xlmkit.interop.compress); None: plain


def resolve_checkpoint(path: Path, which: str) -> Path:
    if which not in ("best", "latest"):
        raise XlmkitError(f"which must be 'best' or 'latest', got {which!r}")
    if (path / STATE_FILE).is_file():
        return path  # a checkpoint directory
    if not (path / CHECKPOINTS).is_dir():
        raise XlmkitError(f"{path}: neither a run directory (no {CHECKPOINTS}/) nor a checkpoint directory")
    candidates = _candidates(path, which)
    if not candidates:
        raise XlmkitError(f"{path}: the run has no checkpoint yet")
    return candidates[0]


def _candidates(path: Path, which: str) -> list[Path]:
    """A run's checkpoints to load weights from, in order of preference (`which` first)."""
    best = best_dir(path)
    if not (best / STATE_FILE).is_file() and (best.parent / f"{OLD_PREFIX}{BEST}" / STATE_FILE).is_file():
        best = best.parent / f"{OLD_PREFIX}{BEST}"  # a crash fell between the two renames of a replace
    latest = latest_checkpoint(path)
    order = [best, latest] if which == "best" else [latest, best]
    return [p for p in order if p is not None and (p / STATE_FILE).is_file()]


def weights_problem(ckpt: Path) -> str | None:
    """None when the checkpoint's state.json and model.safetensors verify (size and sha256 recorded at
    writing; structure only for checkpoints written before hashes), else why not."""
    why = checkpoint_problem(ckpt, full=False)  # state.json readable and of the right format
    if why is not None and why.startswith(STATE_FILE):
        return why  # the optimizer's files do not matter here
    state = json.loads((ckpt / STATE_FILE).read_bytes().decode("utf-8"))
    record = (state.get("files") or {}).get(MODEL_FILE)
    why = check_file(ckpt / MODEL_FILE, record, full=True)
    if why is None and record is None:
        why = check_safetensors(ckpt / MODEL_FILE)
    return None if why is None else f"{MODEL_FILE}: {why}"


def _find_tokenizer(ckpt: Path, state: dict) -> Path:
    candidates = [ckpt / state.get("tokenizer", "tokenizer.json"), ckpt / "tokenizer.json",
                  ckpt.parent.parent / "tokenizer.json"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    return candidates[0]


def load_model(path: str | Path, which: str = "best", device: str | torch.device = "cpu") -> LoadedModel:
    """A trained model from a run directory (its best/ checkpoint, or its latest step one; each falls
    back to the other when absent) or from a checkpoint directory."""
    from xlmkit.model.encoder import XLMModel

    import sys

    path = Path(path)
    ckpt = resolve_checkpoint(path, which)
    why = weights_problem(ckpt)
    if why is not None and ckpt != path:  # a run directory: fall back to its other checkpoint
        for other in _candidates(path, which)[1:]:
            if weights_problem(other) is None:
                print(f"[xlmkit] note: {ckpt} is damaged ({why}); using {other}", file=sys.stderr)
                ckpt, why = other, None
                break
    if why is not None:
        raise XlmkitError(f"{ckpt}: damaged checkpoint: {why}")
    state = read_state(ckpt)
    cfg = config_from_dict(state["config"])
    model = XLMModel(cfg.model)
    load_weights(model, ckpt, "cpu")
    model.to(device).eval()
    vocab = state.get("vocab")
    run_vocab = ckpt.parent.parent / VOCAB_FILE
    if vocab is None and run_vocab.is_file():
        try:
            with reading(run_vocab):
                vocab = json.loads(run_vocab.read_bytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise XlmkitError(f"{run_vocab}: not valid JSON ({e})") from None
    return LoadedModel(model=model, config=cfg, vocab=vocab or {}, tokenizer_path=_find_tokenizer(ckpt, state),
                       path=ckpt, compression=state.get("compression"))


def write_run_files(run_dir: Path, cfg: Config, vocab: dict, tokenizer_path: str | Path | None) -> None:
    """RUN/config.json, RUN/vocab.json and RUN/tokenizer.json (a copy)."""
    from xlmkit.core.config import save_config

    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.json")
    write_vocab(run_dir / VOCAB_FILE, vocab)
    if tokenizer_path is not None:
        src, dst = Path(tokenizer_path), run_dir / "tokenizer.json"
        if not src.is_file():
            raise XlmkitError(f"tokenizer file not found: {src}")
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)


def save_model_run(run_dir: str | Path, model: nn.Module, cfg: Config, vocab: dict,
                   tokenizer_path: str | Path | None, overwrite: bool = False) -> Path:
    """Write a run directory holding one weights-only checkpoint (checkpoints/best/), e.g. for a model
    imported from another library. `cfg.model` must be resolved. Returns the checkpoint directory."""
    run_dir = Path(run_dir)
    if not cfg.model.resolved:
        raise XlmkitError("save_model_run needs a resolved model config (vocab_size, n_langs, pad_id)")
    if (run_dir / CHECKPOINTS).exists() and not overwrite:
        raise XlmkitError(f"{run_dir} already holds checkpoints; choose a new directory")
    write_run_files(run_dir, cfg, vocab, tokenizer_path)
    return save_checkpoint(best_dir(run_dir), model=model, cfg=cfg, step=0, vocab=vocab)


def compression_of(path: str | Path, which: str = "best") -> dict:
    """The `compression` entry of a run's (or checkpoint's) state.json; {} for a plain run."""
    try:
        return read_state(resolve_checkpoint(Path(path), which)).get("compression") or {}
    except XlmkitError:
        return {}


def refuse_int8(path: str | Path, what: str, which: str = "best") -> None:
    """One-line error when `what` (training) is asked of an int8 run."""
    if compression_of(path, which).get("int8"):
        raise XlmkitError(f"{path} is an int8-quantized run (xlmkit quantize): it cannot be used for {what}; "
                          "its weights are rounded and it has no optimizer state. Use the fp32 run it was "
                          "made from, then quantize the result")
