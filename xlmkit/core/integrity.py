"""Is a file what it claims to be? Content hashes and cheap structural checks, without torch.

Checkpoints (xlmkit.train.checkpoint) record `{"files": {name: {"bytes": n, "sha256": hex}}}` in their
state.json, which is written last; prepared data (xlmkit.data.format) records the same for its shards in
manifest.json under "shards". A check returns None when the file is fine, else a short reason ("cut
short: 1,204 of 5,310 bytes"), which callers put after the file's name in a one-line error.

Disks fill up and copies get cut: a truncated file is caught by its size (cheap, always checked), a
file damaged in place by its hash (reads the file; checked when loading a checkpoint and by
`xlmkit info --verify`).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

SAFETENSORS_MAX_HEADER = 100_000_000  # as the safetensors library: a larger header is damage


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | Path) -> dict:
    """{"bytes", "sha256"} of a file, as stored in state.json / manifest.json."""
    path = Path(path)
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def check_file(path: Path, record: dict | None, full: bool = True) -> str | None:
    """None when `path` matches `record` (size; and sha256 when `full`), else why not."""
    if not path.is_file():
        return "missing"
    if not isinstance(record, dict):
        return None
    size = path.stat().st_size
    expected = record.get("bytes")
    if isinstance(expected, int) and size != expected:
        how = "cut short" if size < expected else "longer than written"
        return f"{how}: {size:,} of {expected:,} bytes"
    try:
        if full and isinstance(record.get("sha256"), str) and file_sha256(path) != record["sha256"]:
            return "content hash differs from the one recorded when it was written (damaged)"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return None


def check_safetensors(path: Path) -> str | None:
    """Cheap structural check of a safetensors file: a readable JSON header whose tensors end exactly
    at the end of the file (what a cut copy breaks). Reads the header only."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"not a safetensors file ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > SAFETENSORS_MAX_HEADER or 8 + n > size:
                return f"not a safetensors file or cut short (header of {n:,} bytes in a {size:,}-byte file)"
            header = json.loads(f.read(n))
    except FileNotFoundError:
        return "missing"
    except (ValueError, UnicodeDecodeError):
        return "not a safetensors file (unreadable header)"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if not isinstance(header, dict):
        return "not a safetensors file (unreadable header)"
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"not a safetensors file (bad entry {name!r})"
        end = max(end, offsets[1])
    if 8 + n + end != size:
        return f"cut short or damaged: the tensors need {8 + n + end:,} bytes, the file has {size:,}"
    return None


def read_json_file(path: Path) -> tuple[dict | None, str | None]:
    """(object, None) or (None, why it is unreadable)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"
    except UnicodeDecodeError:
        return None, "not valid UTF-8"
    except ValueError as e:
        return None, f"not valid JSON ({e})"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, None


# ----------------------------------------------------------------------------------------------
# Checkpoints


CHECKPOINT_FORMAT = "xlmkit-checkpoint"
STATE_FILE = "state.json"
TENSOR_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")


def checkpoint_problem(path: str | Path, full: bool = True, need_optimizer: bool = False) -> str | None:
    """None when the checkpoint directory `path` verifies, else why not ("model.safetensors: cut
    short: …"). `full` hashes every file (else sizes and safetensors headers only); checkpoints
    written before hashes were recorded get the structural checks. `need_optimizer`: it must be a
    step checkpoint that training can resume from."""
    path = Path(path)
    state, why = read_json_file(path / STATE_FILE)
    if why is not None:
        return f"{STATE_FILE}: {why}"
    if state.get("format") != CHECKPOINT_FORMAT:
        return f"{STATE_FILE}: not an {CHECKPOINT_FORMAT} state file"
    if need_optimizer and "optimizer" not in state:
        return "holds weights only; cannot resume training from it"
    records = state.get("files")
    names = ["model.safetensors"] + (["optimizer.safetensors", "rng.safetensors"] if "optimizer" in state else [])
    if isinstance(records, dict):
        names = sorted(set(names) | set(records))
    for name in names:
        record = records.get(name) if isinstance(records, dict) else None
        why = check_file(path / name, record, full=full)
        if why is None and name.endswith(".safetensors") and (record is None or not full):
            why = check_safetensors(path / name)
        if why is not None:
            return f"{name}: {why}"
    return None


def open_tokenizer(path: str | Path):
    """tokenizers.Tokenizer.from_file with a one-line error naming the file when it is damaged."""
    from tokenizers import Tokenizer

    from xlmkit.core.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: tokenizer file not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for a damaged file
        raise DataError(f"{path}: not a readable tokenizer file ({' '.join(str(e).split())})") from None
