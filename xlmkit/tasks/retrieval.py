"""Sentence embeddings (`xlmkit embed`) and bitext retrieval (`xlmkit retrieve`).

    xlmkit embed --model runs/small --input sents.de.txt --lang de --out sents.de.npy [--layer L]
    xlmkit retrieve --model runs/small --data ../shared/data/tatoeba --langs deu,fra --out runs/small/eval/tatoeba

A sentence embedding is the mean of one layer's hidden states over the sentence's real tokens (no
fine-tuning), as in the XTREME retrieval baselines (Hu et al. 2020). Each line is tokenized with the
run's tokenizer.json and wrapped as the model saw sentences in pretraining: `</s> … </s>` for XLM
(Lample & Conneau 2019; every sentence of a stream is followed by </s>), `<s> … </s>` for XLM-R style
runs whose vocab.json says `"sentence_wrap": "roberta"` (`--wrap` overrides). Special ids come from
vocab.json "specials", language ids from its "lang2id". Batches are sorted by length (little padding)
and the original order is restored; the model zeroes padding after every block, so a sentence's
embedding does not depend on what it is batched with.

Retrieval follows the Tatoeba protocol of XTREME / LASER (Artetxe & Schwenk 2019): for each
non-English sentence, the English sentence of the same file with the highest cosine similarity; top-1
accuracy is the share whose nearest neighbour is its own translation (line i <-> line i). Files:
`tatoeba.XXX-eng.XXX` + `tatoeba.XXX-eng.eng`, or any `[prefix.]{a}-{b}.{a}` + `[prefix.]{a}-{b}.{b}`
where one side is English (`--pivot` changes that). Codes are mapped with `xlmkit.core.langs.canonical_lang`.

Languages the model has no language embedding for (a model with language embeddings, a language
absent from its lang2id): skipped by default and listed as such, because any choice of embedding
would be a guess. `--unknown-lang-id ID|LANG` embeds them with that id instead (e.g. `en`, or the id
of a related language). A model without language embeddings (XLM-R style) needs no id: every
language is embedded.

`--center` subtracts each language's mean embedding before the cosine (Libovický et al. 2020): XLM's
language embeddings add one offset per language to every sentence vector, which can swamp the
sentence's content in the cosine. It is an option, off by default, since XTREME does not center.

`--random-init` evaluates a randomly initialised model of the run's exact shape (same config,
tokenizer and vocabulary; weights from `--seed`): the baseline that retrieval accuracy must clear.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from xlmkit.core.integrity import open_tokenizer
from xlmkit.core.errors import DataError, XlmkitError, reading
from xlmkit.core.langs import canonical_lang
from xlmkit.data.contract import RunContract, frame_ids, pad_batch

# ----------------------------------------------------------------------------------------------
# Retrieval metrics (pure numpy)


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def cosine_top1(src_emb: np.ndarray, tgt_emb: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """For each row of src_emb (N, D), the index of the most cosine-similar row of tgt_emb (M, D)
    -> (N,) int64. Ties go to the lowest index. Computed in chunks of src rows (memory N*M/chunk)."""
    src, tgt = np.asarray(src_emb), np.asarray(tgt_emb)
    if src.ndim != 2 or tgt.ndim != 2 or src.shape[1] != tgt.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) embeddings, got {src.shape} and {tgt.shape}")
    if len(tgt) == 0:
        raise ValueError("no target embeddings to retrieve from")
    src, tgt = normalize_rows(src), normalize_rows(tgt)
    out = np.empty(len(src), dtype=np.int64)
    for i in range(0, len(src), chunk):
        out[i : i + chunk] = np.argmax(src[i : i + chunk] @ tgt.T, axis=1)  # (n, M) -> (n,)
    return out


def center(emb: np.ndarray) -> np.ndarray:
    """Subtract the mean embedding (of one language's sentences). Removes the language-specific offset
    that XLM's language embeddings (and language identity in general) add to every sentence vector,
    which otherwise dominates cosine similarity (Libovický et al. 2020, "On the language neutrality
    of pre-trained multilingual representations")."""
    emb = np.asarray(emb, dtype=np.float32)
    return emb - emb.mean(axis=0, keepdims=True)


def cosine_top1_accuracy(src_emb: np.ndarray, tgt_emb: np.ndarray) -> float:
    """Share of src rows i whose most cosine-similar tgt row is row i (src and tgt line-aligned,
    same length) -> float in [0, 1]."""
    src, tgt = np.asarray(src_emb), np.asarray(tgt_emb)
    if len(src) != len(tgt):
        raise ValueError(f"src and tgt must be aligned (same number of rows), got {len(src)} and {len(tgt)}")
    if len(src) == 0:
        raise ValueError("no sentences to evaluate")
    return float(np.mean(cosine_top1(src, tgt) == np.arange(len(src))))


# ----------------------------------------------------------------------------------------------
# Tokenizing and wrapping sentences


@dataclass(frozen=True)
class SentenceFormat:
    """How a sentence becomes model input: first_id + subword ids + last_id, at most max_len ids."""

    first_id: int
    last_id: int
    pad_id: int
    max_len: int


def sentence_format(vocab: dict | RunContract, tokenizer, max_len: int, wrap: str = "auto") -> SentenceFormat:
    """`</s> … </s>` (XLM) or `<s> … </s>` (XLM-R, wrap "roberta"), ids from the run contract."""
    c = vocab if isinstance(vocab, RunContract) else RunContract.from_vocab(vocab, tokenizer)
    c = c.with_wrap(wrap)
    if max_len < 3:
        raise XlmkitError(f"--max-len must be >= 3, got {max_len}")
    return SentenceFormat(first_id=c.first_id, last_id=c.eos_id, pad_id=c.pad_id, max_len=max_len)


def encode_sentences(tokenizer, lines: Sequence[str], fmt: SentenceFormat) -> list[list[int]]:
    """Lines -> wrapped id lists (subwords truncated so that the whole fits in fmt.max_len). The
    tokenizer's own post-processor is not applied: wrapping is ours, as in pretraining."""
    encodings = tokenizer.encode_batch([line.strip() for line in lines], add_special_tokens=False)
    return [frame_ids(enc.ids, fmt.first_id, fmt.last_id, fmt.max_len) for enc in encodings]


def read_lines(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    with reading(path):
        raw = path.read_bytes()
    return decode_lines(raw, str(path))


def decode_lines(raw: bytes, where: str) -> list[str]:
    """UTF-8 bytes -> lines (no line ends); invalid UTF-8 is an error naming `where` and the line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{where}:{line}: invalid UTF-8 ({e.reason}, byte {e.start} of the file)") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


# ----------------------------------------------------------------------------------------------
# Embedding


def model_has_lang_embeddings(model) -> bool:
    return getattr(model, "lang_embeddings", None) is not None


def resolve_lang_id(lang: str, vocab: dict | RunContract, model, unknown_lang_id: str | None = None) -> int | None:
    """The language-embedding id for `lang` (any code form), None when the model has no language
    embeddings. A language missing from lang2id gets `unknown_lang_id` (an integer id or a language
    of lang2id); without one it raises XlmkitError."""
    c = (vocab if isinstance(vocab, RunContract) else RunContract.from_vocab(vocab)).for_model(model)
    if not c.has_lang_emb:
        return None
    if canonical_lang(lang) in c.lang2id:
        return c.lang_id(lang)
    return c.lang_id(lang, unknown=c.resolve_unknown(unknown_lang_id))


def embed_ids(model, seqs: Sequence[Sequence[int]], pad_id: int, lang_id: int | None = None, layer: int = -1,
              batch_size: int = 64, device=None, precision: str = "auto") -> np.ndarray:
    """Mean-pooled hidden states (layer `layer`) of id sequences -> (N, D) float32, in input order.
    Batches are formed in order of decreasing length, so they hold little padding."""
    import torch

    from xlmkit.core.runtime import autocast

    if batch_size < 1:
        raise XlmkitError(f"--batch-size must be >= 1, got {batch_size}")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    dim = model.cfg.dim
    out = np.zeros((len(seqs), dim), dtype=np.float32)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                ids, mask = pad_batch([seqs[i] for i in idx], pad_id)  # (B, T) int64, (B, T) True = real token
                ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
                langs = torch.full_like(ids, lang_id) if lang_id is not None else None  # (B, T)
                with autocast(device, precision):
                    emb = model.sentence_embedding(ids, langs=langs, attention_mask=mask, layer=layer)  # (B, D)
                out[idx] = emb.float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


@dataclass
class Encoder:
    """A loaded model + tokenizer + sentence format: lines of one language -> embeddings."""

    model: object
    tokenizer: object
    contract: RunContract  # the run's vocab.json, for this model
    fmt: SentenceFormat
    layer: int = -1
    batch_size: int = 64
    precision: str = "auto"
    unknown_lang_id: str | None = None
    onnx_session: object | None = None  # an onnxruntime session (xlmkit.interop.onnx): embed on it instead

    def lang_id(self, lang: str) -> int | None:
        return resolve_lang_id(lang, self.contract, self.model, self.unknown_lang_id)

    def embed(self, lines: Sequence[str], lang: str) -> np.ndarray:
        seqs = encode_sentences(self.tokenizer, lines, self.fmt)
        if self.onnx_session is not None:
            from xlmkit.model.onnx_session import embed_ids_onnx

            return embed_ids_onnx(self.onnx_session, seqs, self.fmt.pad_id, self.lang_id(lang), self.batch_size,
                                  self.model.cfg.dim)
        return embed_ids(self.model, seqs, self.fmt.pad_id, self.lang_id(lang), self.layer, self.batch_size,
                         precision=self.precision)


def load_encoder(model_path: str | Path, which: str = "best", device: str = "auto", layer: int = -1,
                 batch_size: int = 64, max_len: int | None = None, precision: str = "auto",
                 wrap: str = "auto", unknown_lang_id: str | None = None, random_init: bool = False,
                 seed: int = 0, onnx: str | Path | None = None) -> tuple[Encoder, dict]:
    """Load a run (or checkpoint) for embedding -> (Encoder, info for reports). With random_init the
    weights are replaced by a fresh initialisation (seeded) of the same model. With `onnx` (a graph of
    `xlmkit export-onnx`) the embeddings are computed by onnxruntime (last layer only); the run still
    gives the tokenizer, vocabulary and sentence format."""
    import torch

    from xlmkit.train.checkpoint import load_model, read_state
    from xlmkit.core.runtime import choose_precision, pick_device

    dev = pick_device(device)
    requested = precision
    precision, precision_note = choose_precision(precision, dev)
    loaded = load_model(model_path, which=which, device="cpu")
    model = loaded.model
    if random_init:
        torch.manual_seed(seed)
        model.reset_parameters()
    model.to(dev).eval()
    engine = "torch"
    if dev.type == "cpu" and requested == "auto" and not random_init and onnx is None:
        from xlmkit.model.int8 import int8_kernels
        from xlmkit.train.checkpoint import compression_of

        if compression_of(loaded.path).get("int8"):
            # an int8 run on the CPU, precision auto: PyTorch's int8 kernels (dynamically quantized
            # activations), ~2x its dequantized fp32 and faster than bf16 too (bench/compress.py); they
            # re-quantize to the run's own int8 values. An explicit fp32 keeps exact fp32 arithmetic.
            model, precision, engine = int8_kernels(model), "fp32", "torch int8 kernels"
    if not loaded.tokenizer_path.is_file():
        raise XlmkitError(f"{model_path}: tokenizer not found (looked for {loaded.tokenizer_path})")
    tokenizer = open_tokenizer(loaded.tokenizer_path)
    n_hidden = loaded.config.model.n_layers + 1
    if not -n_hidden <= layer < n_hidden:
        raise XlmkitError(f"--layer must be in [{-n_hidden}, {n_hidden - 1}] (0 = embeddings, "
                          f"{n_hidden - 1} or -1 = last layer) for this {n_hidden - 1}-layer model, got {layer}")
    max_positions = loaded.config.model.max_positions
    max_len = min(max_len or max_positions, max_positions)
    contract = RunContract.from_vocab(loaded.vocab, tokenizer).for_model(model)
    fmt = sentence_format(contract, tokenizer, max_len, wrap)
    try:
        step = read_state(loaded.path).get("step")
    except XlmkitError:
        step = None
    info = {"model": str(model_path), "checkpoint": str(loaded.path), "step": step,
            "random_init": bool(random_init), "seed": seed if random_init else None,
            "layer": layer, "n_layers": loaded.config.model.n_layers, "dim": loaded.config.model.dim,
            "lang_embeddings": model_has_lang_embeddings(model), "max_len": max_len,
            "wrap": "xlm" if fmt.first_id == fmt.last_id else "roberta", "precision": precision, "engine": engine}
    onnx_session = None
    if onnx is not None:
        from xlmkit.model.onnx_session import read_meta, session

        if random_init:
            raise XlmkitError("--onnx and --random-init cannot be combined")
        if layer not in (-1, n_hidden - 1):
            raise XlmkitError(f"--onnx computes the last layer's embedding only; got --layer {layer}")
        meta = read_meta(onnx)
        if meta and meta.get("dim") != loaded.config.model.dim:
            raise XlmkitError(f"{onnx} was exported from a model of dim {meta.get('dim')}, not this run's "
                              f"{loaded.config.model.dim}")
        onnx_session = session(onnx)
        info.update(engine="onnxruntime", onnx=str(onnx))
    enc = Encoder(model, tokenizer, contract, fmt, layer, batch_size, precision, unknown_lang_id, onnx_session)
    if precision_note.startswith("warning"):  # an explicit bf16 where it is emulated
        print(f"[embed] {precision_note}", file=sys.stderr)
    return enc, info


# ----------------------------------------------------------------------------------------------
# Parallel test files


@dataclass(frozen=True)
class Bitext:
    lang: str  # canonical code of the non-pivot side, e.g. "de"
    code: str  # as written in the file names, e.g. "deu"
    name: str  # file stem without the side suffix, e.g. "tatoeba.deu-eng"
    src_path: Path  # the lang side
    tgt_path: Path  # the pivot (English) side


_PAIR_FILE = re.compile(r"^(?:(?P<prefix>.+)\.)?(?P<a>[A-Za-z_]{2,8})-(?P<b>[A-Za-z_]{2,8})\.(?P<side>[A-Za-z_]{2,8})$")


def _canon(code: str) -> str | None:
    try:
        return canonical_lang(code)
    except ValueError:
        return None


def find_bitexts(data_dir: str | Path, pivot: str = "en") -> dict[str, Bitext]:
    """Line-aligned test files of `data_dir` with one side in the pivot language -> {lang: Bitext}."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"no such data directory: {data_dir}")
    pivot = canonical_lang(pivot)
    found: dict[str, Bitext] = {}
    for path in sorted(data_dir.iterdir()):
        m = _PAIR_FILE.match(path.name)
        if not m or not path.is_file():
            continue
        a, b, side = m.group("a"), m.group("b"), m.group("side")
        ca, cb, cside = _canon(a), _canon(b), _canon(side)
        if None in (ca, cb, cside) or ca == cb or pivot not in (ca, cb) or cside == pivot or side not in (a, b):
            continue
        other_code = side
        pivot_code = b if ca == cside else a
        stem = path.name[: -len(side) - 1]
        tgt = path.with_name(f"{stem}.{pivot_code}")
        if not tgt.is_file():
            continue
        bt = Bitext(lang=cside, code=other_code, name=stem, src_path=path, tgt_path=tgt)
        if cside in found:
            raise DataError(f"{data_dir}: two test sets for {cside!r}: {found[cside].src_path.name} and "
                            f"{path.name}; point --data at a directory with one")
        found[cside] = bt
    return found


def read_bitext(bt: Bitext, max_sentences: int = 0) -> tuple[list[str], list[str]]:
    src, tgt = read_lines(bt.src_path), read_lines(bt.tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"{bt.src_path} has {len(src)} lines but {bt.tgt_path} has {len(tgt)}; "
                        "parallel files must be line-aligned")
    if max_sentences > 0:
        src, tgt = src[:max_sentences], tgt[:max_sentences]
    if not src:
        raise DataError(f"{bt.src_path}: empty")
    return src, tgt


# ----------------------------------------------------------------------------------------------
# Retrieval over a directory


def retrieval_table(enc: Encoder, bitexts: dict[str, Bitext], langs: Sequence[str], pivot: str = "en",
                    both_directions: bool = False, max_sentences: int = 0, centered: bool = False,
                    log=print) -> tuple[list[dict], list[str]]:
    """Per-language top-1 accuracy (%) -> (rows, notes about skipped languages). centered: subtract
    each side's mean embedding first (`center`)."""
    rows, notes = [], []
    key, back = f"acc_xx_{pivot}", f"acc_{pivot}_xx"
    for lang in langs:
        bt = bitexts[lang]
        try:
            enc.lang_id(lang)
            enc.lang_id(pivot)
        except XlmkitError as e:
            notes.append(f"{lang} ({bt.code}): skipped, {e}")
            log(f"[retrieve] {lang}: skipped ({e})")
            continue
        t0 = time.perf_counter()
        src_lines, tgt_lines = read_bitext(bt, max_sentences)
        src = enc.embed(src_lines, lang)
        tgt = enc.embed(tgt_lines, pivot)
        if centered:
            src, tgt = center(src), center(tgt)
        row = {"lang": lang, "data": bt.code, "n": len(src_lines),
               key: round(100.0 * cosine_top1_accuracy(src, tgt), 2)}
        if both_directions:
            row[back] = round(100.0 * cosine_top1_accuracy(tgt, src), 2)
        rows.append(row)
        log(f"[retrieve] {lang} ({bt.name}): {key} {row[key]:.2f}"
            + (f", {back} {row[back]:.2f}" if both_directions else "") + f"  [{time.perf_counter() - t0:.1f}s]")
    return rows, notes


def _default_out(model_path: Path, data_dir: Path, random_init: bool, centered: bool) -> Path:
    base = model_path if (model_path / "checkpoints").is_dir() else model_path.parent.parent
    name = (f"retrieve-{data_dir.resolve().name}" + ("-centered" if centered else "")
            + ("-random-init" if random_init else ""))
    return base / "eval" / name


def _parse_langs(langs: str | Sequence[str] | None) -> list[str] | None:
    if langs is None:
        return None
    if isinstance(langs, str):  # "deu,fra" as the command line gives it
        langs = langs.split(",")
    out = []
    for part in langs:
        if part.strip():
            try:
                out.append(canonical_lang(part))
            except ValueError as e:
                raise XlmkitError(f"--langs: {e}") from None
    return out


# ----------------------------------------------------------------------------------------------
# Commands


def embed_file(model: str | Path, input_file: str | Path, lang: str, out: str | Path, *, which: str = "best",
               layer: int = -1, batch_size: int = 64, max_len: int | None = None, device: str = "auto",
               precision: str = "auto", wrap: str = "auto", unknown_lang_id: str | None = None,
               random_init: bool = False, seed: int = 0, onnx: str | Path | None = None) -> np.ndarray:
    """`xlmkit embed`: the sentence embeddings of the lines of `input_file` (language `lang`) by the run `model`,
    saved to `out` (.npy, float32 (lines, dim)) and returned. The keyword options are `load_encoder`'s."""
    out = Path(out)
    if out.suffix != ".npy":
        raise XlmkitError(f"--out must end in .npy, got {out}")
    lines = read_lines(input_file)
    enc, info = load_encoder(model, which=which, device=device, layer=layer, batch_size=batch_size,
                             max_len=max_len, precision=precision, wrap=wrap, unknown_lang_id=unknown_lang_id,
                             random_init=random_init, seed=seed, onnx=onnx)
    t0 = time.perf_counter()
    emb = enc.embed(lines, lang)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb.astype(np.float32, copy=False))
    print(f"[embed] {len(lines)} sentences -> {out} {tuple(emb.shape)} float32 "
          f"(layer {info['layer']}, {time.perf_counter() - t0:.1f}s)")
    return emb


def retrieve(model: str | Path, data: str | Path, out: str | Path | None = None,
             langs: str | Sequence[str] | None = None, pivot: str = "en", both_directions: bool = False,
             centered: bool = False, max_sentences: int = 0, *,
             which: str = "best", layer: int = -1, batch_size: int = 64, max_len: int | None = None,
             device: str = "auto", precision: str = "auto", wrap: str = "auto", unknown_lang_id: str | None = None,
             random_init: bool = False, seed: int = 0, onnx: str | Path | None = None) -> dict:
    """`xlmkit retrieve`: bitext retrieval accuracy of the run `model` on the parallel test files of `data`
    (the module doc), for `langs` (any code form; default: the model's languages present in the data).
    `centered` subtracts each language's mean embedding first. Writes OUT/retrieval.json and .md (OUT
    default: RUN/eval/retrieve-<data dir name>[-centered][-random-init]) -> {"rows", "columns",
    "average", "notes", "json", "markdown"}; no rows when no language could be evaluated. The keyword
    options are `load_encoder`'s."""
    from xlmkit.core.tables import average_of, table_markdown, write_table

    if max_sentences < 0:
        raise XlmkitError("--max-sentences must be >= 0")
    pivot = canonical_lang(pivot)
    data_dir = Path(data)
    bitexts = find_bitexts(data_dir, pivot)
    if not bitexts:
        raise DataError(f"{data_dir}: no parallel test files with a {pivot!r} side (expected "
                        f"tatoeba.XXX-eng.XXX + tatoeba.XXX-eng.eng, or {{a}}-{{b}}.{{a}} + {{a}}-{{b}}.{{b}})")
    enc, info = load_encoder(model, which=which, device=device, layer=layer, batch_size=batch_size,
                             max_len=max_len, precision=precision, wrap=wrap, unknown_lang_id=unknown_lang_id,
                             random_init=random_init, seed=seed, onnx=onnx)
    langs = _parse_langs(langs)
    if langs is None:
        known = list(enc.contract.lang2id)
        langs = sorted(lang for lang in bitexts if lang in known) if known else sorted(bitexts)
        if not langs:
            raise DataError(f"{data_dir}: none of the model's languages ({', '.join(sorted(known))}) has a "
                            "test file here; choose some with --langs")
    missing = [lang for lang in langs if lang not in bitexts]
    if missing:
        raise DataError(f"{data_dir}: no test files for {', '.join(missing)} "
                        f"(have {len(bitexts)}: {', '.join(sorted(bitexts)[:30])}"
                        f"{', …' if len(bitexts) > 30 else ''})")
    langs = [lang for lang in dict.fromkeys(langs) if lang != pivot]

    rows, notes = retrieval_table(enc, bitexts, langs, pivot, both_directions, max_sentences, centered=centered)
    columns = ["lang", "data", "n", f"acc_xx_{pivot}"] + ([f"acc_{pivot}_xx"] if both_directions else [])
    average = average_of(rows, columns[3:])
    which_weights = "random-init" if random_init else f"step {info['step']}"
    title = (f"Bitext retrieval ({data_dir.resolve().name}), top-1 accuracy % ({which_weights}, layer {layer}"
             f"{', centered' if centered else ''})")
    meta = {**info, "data": str(data_dir), "pivot": pivot, "centered": bool(centered),
            "protocol": f"xx->{pivot} top-1 by cosine similarity" + (" of centered embeddings" if centered else "")}
    out = Path(out) if out else _default_out(Path(model), data_dir, random_init, centered)
    json_path, md_path = write_table(out / "retrieval", rows, columns, title, average, meta, notes)
    print()
    print(table_markdown(rows, columns, title, average, notes))
    print(f"[retrieve] wrote {json_path} and {md_path}")
    return {"rows": rows, "columns": columns, "average": average, "notes": notes, "json": json_path,
            "markdown": md_path}
