"""Smaller models to deploy: int8 weights (`xlmkit quantize`) and vocabulary trimming (`xlmkit trim-vocab`).

    xlmkit quantize RUN --out RUN_INT8 [--text FILE] [--dev FILE]
    xlmkit trim-vocab RUN --text FILE... --out RUN_TRIM          # or --langs en,fr (the run's prepared shards)

int8 (weight-only, symmetric, one fp32 scale per row): every Linear weight of the encoder (per output
channel) and the token embedding table (per row, i.e. per piece; the tied output layer is the same
table). XLM-R base holds ~70% of its parameters in its embeddings, so quantizing only the Linear
layers (PyTorch's `quantize_dynamic`) would barely shrink a multilingual model. Biases, LayerNorms,
position / language embeddings and task heads stay fp32 (a few KB). Saved as a run like any other
(config.json, vocab.json, tokenizer.json, [task.json], checkpoints/best/): model.safetensors holds
`NAME.int8` (int8, (rows, cols)) and `NAME.scale` (fp32, (rows,)) in place of each quantized `NAME`,
and state.json says `"compression": {"int8": [...]}`. Nothing is pickled. Every loader
(`checkpoint.load_model`, so embed / retrieve / evaluate on a fine-tuned dir) dequantizes on load:
w = int8 * scale, exact to the stored int8. `int8_kernels(model)` instead swaps the Linear layers for
PyTorch's dynamically quantized int8 kernels (per-channel, the same int8 values); bench/compress.py
measures both. Training from an int8 run (pretrain --init / --resume, finetune, evaluate from a
pretrained run, langid) is refused with one line: its weights are rounded and it has no optimizer
state; train the fp32 run, then quantize.

Vocabulary trimming (Abdaoui et al. 2020, "Load What You Need"): keep the special tokens and the
pieces that occur in the given text (or in the given languages' prepared shards), drop the rest,
renumber the kept ids in their old order, and rewrite tokenizer.json (Unigram: the kept pieces with
their scores; BPE: the kept pieces closed under the merges that build them, and those merges), the
token embeddings, the output bias, model.vocab_size / pad_id and vocab.json's special ids. On text
made only of kept pieces the tokenizer gives the same pieces, so hidden states are identical and the
logits are the old ones restricted to the kept ids (tested). Pieces outside the kept set become
<unk> (Unigram) or break into smaller kept pieces (BPE).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from xlmkit.core.errors import DataError, XlmkitError
from xlmkit.data.contract import RunContract
from xlmkit.data.format import SpecialIds

from xlmkit.model.int8 import (INT8_SUFFIX, SCALE_SUFFIX, SCHEME, dequantize_rows, dequantize_state_dict,  # noqa: F401
                               int8_kernels, int8_tensor_names, is_quantized_state_dict, quantize_rows,
                               quantize_state_dict)
from xlmkit.train.checkpoint import compression_of, refuse_int8  # noqa: F401


# ----------------------------------------------------------------------------------------------
# Writing compressed runs


def model_bytes(path: str | Path, which: str = "best") -> int:
    """Bytes of a run's weights files (model.safetensors + head.safetensors) of its checkpoint."""
    from xlmkit.train.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(Path(path), which)
    return sum(f.stat().st_size for f in (ckpt / "model.safetensors", ckpt / "head.safetensors") if f.is_file())


def _load_any(path: Path, which: str):
    """(encoder, head state dict or None, LoadedModel) of a pretrained or fine-tuned run."""
    from safetensors.torch import load_file

    from xlmkit.train.checkpoint import load_model

    loaded = load_model(path, which=which, device="cpu")
    head_file = loaded.path / "head.safetensors"
    head = load_file(str(head_file)) if head_file.is_file() else None
    return loaded, head


def _write_run(out: Path, src: Path, loaded, weights: dict, head: dict | None, cfg, vocab: dict,
               tokenizer_json: str | None, extra_state: dict) -> Path:
    from xlmkit.train import checkpoint as C
    from xlmkit.core.config import config_to_dict

    if (out / C.CHECKPOINTS).exists():
        raise XlmkitError(f"{out} already holds checkpoints; choose a new --out directory")
    C.write_run_files(out, cfg, vocab, None)
    if tokenizer_json is not None:
        (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    else:
        shutil.copyfile(loaded.tokenizer_path, out / "tokenizer.json")
    task = src / "task.json"
    if task.is_file():
        shutil.copyfile(task, out / "task.json")
    old_state = C.read_state(loaded.path)
    state = {"format": C.FORMAT, "version": C.FORMAT_VERSION, "step": int(old_state.get("step", 0)),
             "config": config_to_dict(cfg), "vocab": vocab, "tokenizer": "../../tokenizer.json",
             "metrics": old_state.get("metrics", {}), **extra_state}
    if "task" in old_state:
        state["task"] = old_state["task"]

    def write_files(tmp: Path) -> None:
        C.write_tensors(weights, tmp / C.MODEL_FILE)
        if head is not None:
            C.write_tensors(head, tmp / "head.safetensors")
        C.write_json(state, tmp / C.STATE_FILE)

    return C.atomic_write_dir(C.best_dir(out), write_files)


def quantize_run(src: str | Path, out: str | Path, which: str = "best") -> dict:
    """Write an int8 copy of a pretrained or fine-tuned run to `out` -> {"fp32_bytes", "int8_bytes", ...}."""
    src, out = Path(src), Path(out)
    refuse_int8(src, "quantizing again", which)
    loaded, head = _load_any(src, which)
    names = int8_tensor_names(loaded.model)
    weights = quantize_state_dict(loaded.model.state_dict(), names)
    prev = compression_of(src, which)
    compression = {**prev, "int8": names, "scheme": SCHEME}
    _write_run(out, src, loaded, weights, head, loaded.config, loaded.vocab, None,
               {"compression": compression, "source": str(src.resolve())})
    return {"fp32_bytes": model_bytes(src, which), "int8_bytes": model_bytes(out), "tensors": len(names)}


# ----------------------------------------------------------------------------------------------
# Comparing a compressed run with its source


def embedding_agreement(a_path: str | Path, b_path: str | Path, lines: Sequence[str], lang: str) -> dict:
    """Mean / min cosine of the sentence embeddings (last layer, fp32) of two runs on `lines`."""
    from xlmkit.tasks.retrieval import load_encoder

    a, _ = load_encoder(a_path, device="cpu", precision="fp32", unknown_lang_id="0")
    b, _ = load_encoder(b_path, device="cpu", precision="fp32", unknown_lang_id="0")
    ea, eb = a.embed(lines, lang), b.embed(lines, lang)
    cos = (ea * eb).sum(1) / np.maximum(np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1), 1e-12)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(ea - eb).max())}


def task_accuracy(path: str | Path, examples) -> float:
    """The fine-tuned run's main dev metric (accuracy / token accuracy / span F1) on examples, fp32."""
    from xlmkit.tasks.finetune import TaskEncoder, dev_metric, load_finetuned, predict, score

    ftm = load_finetuned(path)
    enc = TaskEncoder(ftm.tokenizer, ftm.vocab, ftm.spec, ftm.model.encoder)
    data, _ = enc.encode(examples, allow_unknown=True)
    preds = predict(ftm.model, data, enc.pad_id, 64, torch.device("cpu"), "fp32")
    return dev_metric(score(examples, preds, list(ftm.spec.labels)))[1]


def quantize(src: str | Path, out: str | Path, which: str = "best", text: str | Path | None = None,
             lang: str = "en", dev: str | Path | None = None) -> dict:
    """`xlmkit quantize`: `quantize_run`, then compare the int8 copy with its source: with `text` (one
    sentence a line, language `lang`) their sentence embeddings -> "embeddings" (`embedding_agreement`);
    with `dev` (task files; a fine-tuned run) their main dev metric -> "dev": {"fp32", "int8"}."""
    info = quantize_run(src, out, which)
    if text:
        from xlmkit.tasks.retrieval import read_lines

        info["embeddings"] = embedding_agreement(src, out, read_lines(text), lang)
    if dev:
        from xlmkit.tasks.finetune import is_finetuned_dir
        from xlmkit.tasks.io import read_task_files

        if not is_finetuned_dir(src):
            raise XlmkitError(f"--dev needs a fine-tuned run; {src} has no task.json")
        task = json.loads((Path(src) / "task.json").read_text(encoding="utf-8"))["task"]
        examples = read_task_files(dev, task)
        info["dev"] = {"fp32": task_accuracy(src, examples), "int8": task_accuracy(out, examples)}
    return info


# ----------------------------------------------------------------------------------------------
# Vocabulary trimming


def special_ids(vocab: dict | RunContract, tok_json: dict) -> set[int]:
    """Every id that must survive trimming: the tokenizer's added tokens, vocab.json's specials,
    special_ids and language tags."""
    c = vocab if isinstance(vocab, RunContract) else RunContract.from_vocab(vocab)
    return {int(t["id"]) for t in tok_json.get("added_tokens", [])} | c.reserved_ids()


def ids_in_text(tokenizer, lines: Iterable[str]) -> set[int]:
    out: set[int] = set()
    batch: list[str] = []
    for line in lines:
        batch.append(line.strip())
        if len(batch) == 4096:
            out.update(i for e in tokenizer.encode_batch(batch, add_special_tokens=False) for i in e.ids)
            batch = []
    if batch:
        out.update(i for e in tokenizer.encode_batch(batch, add_special_tokens=False) for i in e.ids)
    return out


def ids_in_prepared(vocab: dict | RunContract, langs: Sequence[str]) -> set[int]:
    """Ids occurring in the run's prepared shards (vocab.json data_dir) of `langs`: every split of their
    monolingual shards and their sides of the parallel ones."""
    from xlmkit.data.format import PreparedData
    from xlmkit.core.langs import canonical_lang

    data_dir = (vocab if isinstance(vocab, RunContract) else RunContract.from_vocab(vocab)).data_dir
    if not data_dir or not Path(data_dir).is_dir():
        raise DataError(f"--langs needs the run's prepared data (vocab.json data_dir: {data_dir!r} not found); "
                        "pass --text FILE instead")
    data = PreparedData(data_dir)
    langs = [canonical_lang(x) for x in langs]
    unknown = [x for x in langs if x not in data.languages]
    if unknown:
        raise DataError(f"{data_dir}: no data for {', '.join(unknown)} (has {', '.join(data.languages)})")
    root = Path(data_dir)
    out: set[int] = set()
    files = [f for lang in langs for f in root.glob(f"mono/{lang}.*.ids.bin")]
    files += [f for lang in langs for f in root.glob(f"para/*.{lang}.ids.bin")]
    dtype = np.dtype(data.manifest.get("dtype", "uint16"))
    for f in files:
        if f.stat().st_size:
            out.update(int(i) for i in np.unique(np.memmap(f, dtype=dtype, mode="r")))
    if not out:
        raise DataError(f"{data_dir}: no token shards for {', '.join(langs)}")
    return out


def _bpe_closure(model: dict, keep_pieces: set[str]) -> tuple[set[str], list]:
    """Kept pieces closed under the merges that build them, and the merges among kept pieces."""
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges", [])]
    made_by: dict[str, list[tuple[str, str]]] = {}
    for a, b in merges:
        made_by.setdefault(a + b, []).append((a, b))
    keep = set(keep_pieces)
    todo = list(keep)
    while todo:
        piece = todo.pop()
        for a, b in made_by.get(piece, []):
            for part in (a, b):
                if part not in keep:
                    keep.add(part)
                    todo.append(part)
    kept_merges = [m for m, (a, b) in zip(model.get("merges", []), merges) if a in keep and b in keep and a + b in keep]
    return keep, kept_merges


def trim_tokenizer_json(tok_json: dict, keep_ids: set[int]) -> tuple[dict, list[int]]:
    """A tokenizer.json keeping `keep_ids` (for BPE, closed under merges) -> (new json, kept old ids in
    order; new id i is old id kept[i])."""
    tok_json = json.loads(json.dumps(tok_json))
    model = tok_json["model"]
    kind = model.get("type")
    if kind == "Unigram":
        scored = model["vocab"]  # [[piece, score], ...] in id order (the tokenizer's, not the run's vocab.json)
        kept = sorted(i for i in keep_ids if 0 <= i < len(scored))
        model["vocab"] = [scored[i] for i in kept]
        if model.get("byte_fallback"):
            raise XlmkitError("trimming a byte-fallback Unigram tokenizer is not supported")
    elif kind == "BPE":
        id_to_piece = {int(i): p for p, i in model["vocab"].items()}
        pieces, merges = _bpe_closure(model, {id_to_piece[i] for i in keep_ids if i in id_to_piece})
        kept = sorted(i for i, p in id_to_piece.items() if p in pieces)
        model["vocab"] = {id_to_piece[old]: new for new, old in enumerate(kept)}
        model["merges"] = merges
    else:
        raise XlmkitError(f"trimming a {kind} tokenizer is not supported (Unigram and BPE are)")
    new_of = {old: new for new, old in enumerate(kept)}
    if model.get("unk_id") is not None:
        model["unk_id"] = new_of[int(model["unk_id"])]
    for t in tok_json.get("added_tokens", []):
        if int(t["id"]) not in new_of:
            raise XlmkitError(f"added token {t['content']!r} (id {t['id']}) would be dropped")
        t["id"] = new_of[int(t["id"])]

    def remap_post(pp):
        if isinstance(pp, dict):
            for st in (pp.get("special_tokens") or {}).values():
                if isinstance(st, dict) and "ids" in st:
                    st["ids"] = [new_of[int(i)] for i in st["ids"]]
            for key in ("sep", "cls"):
                if isinstance(pp.get(key), list) and len(pp[key]) == 2:
                    pp[key][1] = new_of[int(pp[key][1])]
            for sub in pp.get("processors") or []:
                remap_post(sub)

    remap_post(tok_json.get("post_processor"))
    return tok_json, kept


def trim_run(src: str | Path, out: str | Path, text_files: Sequence[str | Path] = (),
             langs: Sequence[str] = (), which: str = "best") -> dict:
    """Write a copy of a (pretrained or fine-tuned, fp32) run whose vocabulary keeps only the specials and
    the pieces of `text_files` (or of the prepared shards of `langs`) -> {"old_vocab", "new_vocab", ...}."""
    import dataclasses

    from tokenizers import Tokenizer

    from xlmkit.tasks.retrieval import read_lines

    src, out = Path(src), Path(out)
    if bool(text_files) == bool(langs):
        raise XlmkitError("give either --text FILE... or --langs LANG,...")
    refuse_int8(src, "trimming (trim the fp32 run, then quantize)", which)
    loaded, head = _load_any(src, which)
    tok_json = json.loads(Path(loaded.tokenizer_path).read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(loaded.tokenizer_path))
    contract = RunContract.from_vocab(loaded.vocab)
    if text_files:
        found = set()
        for f in text_files:
            found |= ids_in_text(tokenizer, read_lines(f))
    else:
        found = ids_in_prepared(contract, langs)
    new_json, kept = trim_tokenizer_json(tok_json, found | special_ids(contract, tok_json))
    old_v = loaded.config.model.vocab_size
    if kept[-1] >= old_v:
        raise XlmkitError(f"{src}: the tokenizer has ids beyond the model's vocab_size {old_v}")
    new_of = {old: new for new, old in enumerate(kept)}
    index = torch.tensor(kept, dtype=torch.long)
    sd = loaded.model.state_dict()
    sd["token_embeddings.weight"] = sd["token_embeddings.weight"][index].clone()
    sd["mlm_head.bias"] = sd["mlm_head.bias"][index].clone()
    mcfg = dataclasses.replace(loaded.config.model, vocab_size=len(kept), pad_id=new_of[loaded.config.model.pad_id])
    cfg = dataclasses.replace(loaded.config, model=mcfg)
    c = contract
    extra = {**c.extra, **({"trimmed_data_dir": c.data_dir} if c.data_dir else {}),  # its shards use the old ids
             "trimmed_from": str(src.resolve())}
    vocab = c.replace(
        vocab_size=len(kept),
        specials=SpecialIds(**{k: new_of[v] for k, v in dataclasses.asdict(c.specials).items()}) if c.has_specials
        else c.specials,
        special_ids=tuple(new_of[i] for i in c.special_ids) if c.special_ids else c.special_ids,
        lang_tokens={k: new_of[v] for k, v in c.lang_tokens.items()}, data_dir=None, extra=extra).to_vocab()
    prev = compression_of(src, which)
    compression = {**prev, "trim": {"old_vocab_size": old_v, "new_vocab_size": len(kept)}}
    Tokenizer.from_str(json.dumps(new_json))  # fails here, not in a user's hands, if the rewrite is invalid
    _write_run(out, src, loaded, sd, head, cfg, vocab, json.dumps(new_json, ensure_ascii=False, indent=1),
               {"compression": compression, "source": str(src.resolve()), "kept_ids": kept})
    return {"old_vocab": old_v, "new_vocab": len(kept), "fp32_bytes": model_bytes(src, which),
            "trimmed_bytes": model_bytes(out)}
