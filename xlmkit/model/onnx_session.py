"""Running an exported encoder graph (`xlmkit export-onnx`, interop/onnx.py) on onnxruntime: the
session, the graph's metadata file and mean-pooled sentence embeddings. Needs the `onnx` extra."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from xlmkit.core.errors import XlmkitError
from xlmkit.data.contract import pad_batch

META_SUFFIX = ".json"
FORMAT = "xlmkit-onnx"


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise XlmkitError(f"{module} is not installed; it comes with the onnx extra: "
                          "pip install 'xlmkit[onnx]'") from None


def session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU InferenceSession of `path`."""
    ort = _require("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise XlmkitError(f"no such ONNX file: {path}")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def embed_ids_onnx(sess, seqs: Sequence[Sequence[int]], pad_id: int, lang_id: int | None, batch_size: int = 64,
                   dim: int | None = None) -> np.ndarray:
    """`tasks.retrieval.embed_ids` (last layer) on onnxruntime -> (N, D) float32 in input order."""
    names = {i.name for i in sess.get_inputs()}
    if "langs" in names and lang_id is None:
        lang_id = 0
    out: np.ndarray | None = None
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id)  # (B, T) int64, bool
        T, mask = ids.shape[1], mask.astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": mask,
                "positions": np.broadcast_to(np.arange(T, dtype=np.int64), (len(idx), T)).copy()}
        if "langs" in names:
            feed["langs"] = np.full_like(ids, lang_id)
        emb = sess.run(["sentence_embedding"], feed)[0]
        if out is None:
            out = np.zeros((len(seqs), emb.shape[1]), dtype=np.float32)
        out[idx] = emb
    return out if out is not None else np.zeros((0, dim or 0), dtype=np.float32)


def read_meta(onnx_path: str | Path) -> dict:
    f = Path(str(onnx_path) + META_SUFFIX)
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
