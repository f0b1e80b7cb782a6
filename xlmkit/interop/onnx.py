"""`xlmkit export-onnx`: an encoder (and a fine-tuned run's task head) as an ONNX graph; embedding on
onnxruntime (`xlmkit embed --onnx model.onnx`).

    xlmkit export-onnx RUN --out model.onnx [--int8] [--opset 17]
    xlmkit embed --model RUN --onnx model.onnx --input sents.txt --lang de --out sents.npy

Needs the `onnx` extra: `pip install 'xlmkit[onnx]'` (onnx, onnxruntime).

Graph inputs, all int64 with dynamic batch and length axes (B, T): `input_ids`, `attention_mask` (1 =
real token), `positions` (0..T-1 for one sentence; a pair restarts at its second sentence, as the
fine-tuning layout), and `langs` for models with language embeddings. Outputs: `last_hidden_state`
(B, T, D), `sentence_embedding` (B, D; the mean over real tokens of the last layer, as `xlmkit embed`
with --layer -1) and, for a fine-tuned run, `logits` ((B, K) classification / pair, (B, T, K) token).
The graph is traced from the fp32 model in eval mode on a padded batch, so it always takes the
padded path (masking) and is correct for any padding. Beside the graph, `model.onnx.json` records
the inputs, outputs, opset, dim and the run it came from. `--int8` quantizes the graph with
onnxruntime's dynamic quantization (int8 weights of MatMul / Gather, activations quantized per
batch). Parity with torch (fp32 graph: max abs diff < 1e-4) is checked after export and printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from xlmkit.core.errors import XlmkitError
from xlmkit.model.onnx_session import FORMAT, META_SUFFIX, _require, embed_ids_onnx, read_meta, session  # noqa: F401

class ExportWrapper(nn.Module):
    """encoder (+ head) with the graph's inputs and outputs."""

    def __init__(self, encoder: nn.Module, task_model: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.task_model = task_model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, positions: Tensor, langs: Tensor | None = None):
        mask = attention_mask != 0  # (B, T)
        h = self.encoder(input_ids, langs=langs, positions=positions, attention_mask=mask)  # (B, T, D)
        m = mask[:, :, None].to(h.dtype)  # (B, T, 1)
        emb = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)
        if self.task_model is None:
            return h, emb
        tm = self.task_model
        if tm.task == "token":
            logits = tm.head(h)  # (B, T, K)
        else:
            pooled = h[:, 0] if tm.pooling == "first" else emb  # (B, D)
            logits = tm.head(pooled)  # (B, K)
        return h, emb, logits


def _load(run: str | Path, which: str):
    """(encoder, TaskModel or None, vocab, run kind)."""
    from xlmkit.tasks.finetune import is_finetuned_dir, load_finetuned

    if is_finetuned_dir(run):
        ftm = load_finetuned(run, which=which)
        return ftm.model.encoder, ftm.model, ftm.vocab, ftm.spec
    from xlmkit.train.checkpoint import load_model

    loaded = load_model(run, which=which)
    return loaded.model, None, loaded.vocab, None


def example_inputs(encoder: nn.Module, batch: int = 2, length: int = 7, seed: int = 0) -> dict[str, Tensor]:
    """A padded int64 batch (row 1 shorter) for tracing and parity checks."""
    g = torch.Generator().manual_seed(seed)
    cfg = encoder.cfg
    ids = torch.randint(5, cfg.vocab_size, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1:, length - 2:] = 0
    ids = ids.masked_fill(mask == 0, cfg.pad_id)
    positions = torch.arange(length).expand(batch, length).contiguous()
    out = {"input_ids": ids, "attention_mask": mask, "positions": positions}
    if getattr(encoder, "lang_embeddings", None) is not None:
        out["langs"] = torch.randint(0, encoder.lang_embeddings.num_embeddings, (batch, length), generator=g)
    return out


def export_onnx(run: str | Path, out: str | Path, which: str = "best", opset: int = 17, int8: bool = False) -> dict:
    """Export `run` to `out` (.onnx) + `out`.json; returns the metadata (with the parity check)."""
    _require("onnx")
    run, out = Path(run), Path(out)
    encoder, task_model, vocab, spec = _load(run, which)
    encoder.float().eval()
    wrapper = ExportWrapper(encoder, task_model).eval()
    inputs = example_inputs(encoder)
    names = list(inputs)
    outputs = ["last_hidden_state", "sentence_embedding"] + (["logits"] if task_model is not None else [])
    axes = {n: {0: "batch", 1: "length"} for n in names}
    axes.update({"last_hidden_state": {0: "batch", 1: "length"}, "sentence_embedding": {0: "batch"}})
    if task_model is not None:
        axes["logits"] = {0: "batch", 1: "length"} if spec.task == "token" else {0: "batch"}
    out.parent.mkdir(parents=True, exist_ok=True)
    fp32_path = out if not int8 else out.with_name(out.stem + ".fp32.onnx")
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: the python branches are meant to be fixed
        torch.onnx.export(wrapper, tuple(inputs.values()), str(fp32_path), input_names=names, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    if int8:
        _require("onnxruntime")
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32_path), str(out), weight_type=QuantType.QInt8)
        fp32_path.unlink()
    meta = {"format": FORMAT, "run": str(run.resolve()), "which": which, "inputs": names, "outputs": outputs,
            "opset": opset, "dim": encoder.cfg.dim, "int8": bool(int8), "task": spec.to_json() if spec else None,
            "lang_embeddings": "langs" in names}
    try:
        meta["parity_max_abs_diff"] = parity(run, out, which)
    except XlmkitError as e:  # onnxruntime missing: the graph is still written
        meta["parity_max_abs_diff"] = None
        meta["parity_note"] = str(e)
    Path(str(out) + META_SUFFIX).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    meta["bytes"] = out.stat().st_size
    return meta


def _feed(sess, inputs: dict[str, Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    wanted = {i.name for i in sess.get_inputs()}
    return {k: (v.numpy() if torch.is_tensor(v) else v).astype(np.int64) for k, v in inputs.items() if k in wanted}


def parity(run: str | Path, onnx_path: str | Path, which: str = "best", lengths: Sequence[int] = (5, 11),
           batches: Sequence[int] = (1, 3)) -> float:
    """Max abs difference of every output between torch (fp32) and onnxruntime over a few batch sizes
    and lengths other than the traced ones."""
    sess = session(onnx_path)
    encoder, task_model, _, _ = _load(run, which)
    wrapper = ExportWrapper(encoder.float().eval(), task_model).eval()
    worst = 0.0
    for b in batches:
        for t in lengths:
            inputs = example_inputs(encoder, batch=max(b, 2), length=t, seed=b * 100 + t)
            inputs = {k: v[:b] for k, v in inputs.items()}
            with torch.no_grad():
                ref = wrapper(**inputs)
            got = sess.run(None, _feed(sess, inputs))
            for r, g in zip(ref, got):
                worst = max(worst, float(np.abs(r.numpy() - g).max()))
    return worst


