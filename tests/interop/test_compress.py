"""int8 quantization, vocabulary trimming and ONNX export (xlmkit.interop.compress, xlmkit.interop.onnx)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _tiny_model import write_cls_jsonl
from xlmkit.train.checkpoint import load_model, save_model_run
from xlmkit.cli.main import main
from xlmkit.interop.compress import dequantize_rows, quantize_rows, quantize_run, trim_run
from xlmkit.core.errors import XlmkitError
from xlmkit.tasks.finetune import TaskEncoder, load_finetuned, predict
from xlmkit.tasks.io import read_task_file

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

# int8 tolerance (stated in the README): sentence embeddings keep a cosine >= 0.999 with fp32, hidden
# states differ by at most 5% of their largest magnitude, and a fine-tuned classifier's predictions
# agree on >= 95% of examples.
MIN_COSINE = 0.999
MAX_REL_DIFF = 0.05
MIN_AGREEMENT = 0.95


def _sentences(n: int, lang: str = "en", seed: int = 1) -> list[str]:
    from xlmkit.data.synthetic import sentence

    rng = np.random.default_rng(seed)
    return [sentence(rng)[lang] for _ in range(n)]


def _batch(tokenizer, lines, pad_id=1, eos=2):
    seqs = [[eos, *e.ids, eos] for e in tokenizer.encode_batch(lines, add_special_tokens=False)]
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    return ids


@pytest.fixture(scope="module")
def finetuned(tiny_random_run, tmp_path_factory) -> tuple[Path, Path]:
    """(fine-tuned classification dir, dev file) from the tiny random run, trained a few steps."""
    tmp = tmp_path_factory.mktemp("ft")
    train = write_cls_jsonl(tmp / "en.train.jsonl", 64, "en", seed=1)
    dev = write_cls_jsonl(tmp / "en.dev.jsonl", 48, "en", seed=2)
    out = tmp / "ft"
    assert main(["finetune", "--model", str(tiny_random_run), "--train", str(train), "--task", "classification",
                 "--out", str(out), "--set", "finetune.epochs=2", "--set", "finetune.precision=fp32",
                 "--set", "finetune.device=cpu"]) == 0
    return out, dev


@pytest.fixture(scope="module")
def int8_run(tiny_random_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "int8"
    quantize_run(tiny_random_run, out)
    return out


@pytest.fixture(scope="module")
def unigram_run(tiny_prepared, tmp_path_factory) -> Path:
    """A random tiny model on the prepared synthetic data (Unigram tokenizer; vocab.json data_dir)."""
    from xlmkit.core.config import load_config
    from xlmkit.data.format import PreparedData
    from xlmkit.model.encoder import XLMModel
    from xlmkit.train.pretrain import resolve_config, vocab_info

    data = PreparedData(tiny_prepared)
    cfg = resolve_config(load_config("tiny"), data)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.0, attention_dropout=0.0))
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("uni") / "run"
    save_model_run(out, XLMModel(cfg.model), cfg, vocab_info(data), Path(tiny_prepared) / "tokenizer.json")
    return out


# ----------------------------------------------------------------------------------------------
# int8


def test_row_quantization_round_trip():
    w = torch.randn(7, 33) * torch.linspace(0.01, 3, 7)[:, None]
    w[3] = 0
    q, s = quantize_rows(w)
    assert q.dtype == torch.int8 and s.shape == (7,) and int(q.abs().max()) == 127
    err = (dequantize_rows(q, s) - w).abs()
    assert torch.all(err <= s[:, None] / 2 + 1e-7)  # rounding: at most half a step per row
    assert torch.equal(dequantize_rows(q, s)[3], torch.zeros(33))


def test_int8_run_is_smaller_and_close_to_fp32(tiny_random_run, int8_run):
    files = load_file(str(int8_run / "checkpoints/best/model.safetensors"))
    assert files["token_embeddings.weight.int8"].dtype == torch.int8
    assert "token_embeddings.weight" not in files and "layers.0.ffn.lin1.weight.int8" in files
    state = json.loads((int8_run / "checkpoints/best/state.json").read_text())
    assert "token_embeddings.weight" in state["compression"]["int8"]
    from xlmkit.interop.compress import model_bytes

    assert model_bytes(int8_run) < 0.4 * model_bytes(tiny_random_run)

    fp32, int8 = load_model(tiny_random_run).model, load_model(int8_run).model
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_random_run / "tokenizer.json"))
    ids = _batch(tok, _sentences(16))
    with torch.no_grad():
        a, b = fp32(ids), int8(ids)
        ea, eb = fp32.sentence_embedding(ids), int8.sentence_embedding(ids)
    assert (a - b).abs().max() <= MAX_REL_DIFF * a.abs().max()
    assert torch.nn.functional.cosine_similarity(ea, eb).min() >= MIN_COSINE
    # int8 kernels (torch dynamic quantization, per channel) on the dequantized weights: same tolerance
    from xlmkit.interop.compress import int8_kernels

    fast = int8_kernels(load_model(int8_run).model)
    with torch.no_grad():
        ec = fast.sentence_embedding(ids)
    assert torch.nn.functional.cosine_similarity(ea, ec).min() >= MIN_COSINE


def test_quantized_finetuned_run_predicts_like_fp32_and_loads_in_evaluate(finetuned, tmp_path, capsys):
    ft_dir, dev = finetuned
    out = tmp_path / "ft8"
    assert main(["quantize", str(ft_dir), "--out", str(out), "--dev", str(dev)]) == 0
    printed = capsys.readouterr().out
    assert "fp32" in printed and "int8" in printed and "points" in printed
    exs = read_task_file(dev, "classification")
    preds = []
    for d in (ft_dir, out):
        ftm = load_finetuned(d)
        data, _ = TaskEncoder(ftm.tokenizer, ftm.vocab, ftm.spec, ftm.model.encoder).encode(exs)
        preds.append(predict(ftm.model, data, 1, 16, torch.device("cpu"), "fp32"))
    assert np.mean(np.array(preds[0]) == np.array(preds[1])) >= MIN_AGREEMENT
    test = tmp_path / "en.jsonl"  # unsplit: what evaluate tests a fine-tuned model on
    test.write_text(dev.read_text())
    assert main(["evaluate", "--model", str(out), "--data", str(test), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["languages"]["en"]["accuracy"] is not None


def test_training_from_an_int8_run_is_a_one_line_error(int8_run, tiny_prepared, tmp_path, capsys):
    cases = [
        ["pretrain", "--data", str(tiny_prepared), "--out", str(tmp_path / "p"), "--init", str(int8_run),
         "--config", "tiny", "--set", "train.max_steps=1"],
        ["pretrain", "--data", str(tiny_prepared), "--out", str(int8_run), "--resume", "--config", "tiny"],
        ["finetune", "--model", str(int8_run), "--train", str(write_cls_jsonl(tmp_path / "t.jsonl", 8, "en")),
         "--task", "classification", "--out", str(tmp_path / "f")],
        ["quantize", str(int8_run), "--out", str(tmp_path / "again")],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[")]  # notes aside
        assert len(err) == 1 and "error:" in err[0] and "int8-quantized run" in err[0], err
    from xlmkit.tasks.finetune import finetune
    from xlmkit.tasks.io import read_task_file as read

    with pytest.raises(XlmkitError, match="int8-quantized"):
        finetune(load_model(int8_run), load_model(int8_run).config.finetune, read(tmp_path / "t.jsonl", "classification"))


# ----------------------------------------------------------------------------------------------
# Vocabulary trimming


def _check_trim_identical(src: Path, out: Path, lines: list[str]):
    """Same pieces (renumbered), identical hidden states, logits = old logits at the kept ids."""
    from tokenizers import Tokenizer

    kept = json.loads((out / "checkpoints/best/state.json").read_text())["kept_ids"]
    new_of = {old: new for new, old in enumerate(kept)}
    old_tok, new_tok = Tokenizer.from_file(str(src / "tokenizer.json")), Tokenizer.from_file(str(out / "tokenizer.json"))
    for a, b in zip(old_tok.encode_batch(lines, add_special_tokens=False),
                    new_tok.encode_batch(lines, add_special_tokens=False)):
        assert b.ids == [new_of[i] for i in a.ids] and a.tokens == b.tokens
    old, new = load_model(src), load_model(out)
    assert new.config.model.vocab_size == len(kept) < old.config.model.vocab_size
    pad_old, pad_new = old.config.model.pad_id, new.config.model.pad_id
    assert new_of[pad_old] == pad_new
    ids_old = _batch(old_tok, lines, pad_old, old.vocab["specials"]["eos"])
    ids_new = ids_old.clone().apply_(lambda i: new_of[i])
    langs = torch.zeros_like(ids_old)
    with torch.no_grad():
        h_old, h_new = old.model(ids_old, langs=langs), new.model(ids_new, langs=langs)
        assert torch.equal(h_old, h_new)
        assert torch.equal(old.model.clm_logits(h_old)[..., kept], new.model.clm_logits(h_new))
        assert torch.equal(old.model.sentence_embedding(ids_old, langs), new.model.sentence_embedding(ids_new, langs))


def test_trim_bpe_run_to_text_keeps_outputs_identical(tiny_random_run, tmp_path, capsys):
    text = tmp_path / "en.txt"
    lines = _sentences(60)
    text.write_text("\n".join(lines) + "\n")
    out = tmp_path / "trim"
    assert main(["trim-vocab", str(tiny_random_run), "--text", str(text), "--out", str(out)]) == 0
    assert "vocabulary" in capsys.readouterr().out
    _check_trim_identical(tiny_random_run, out, lines)
    # trimmed, then int8: loads and embeds
    q = tmp_path / "trim8"
    assert main(["quantize", str(out), "--out", str(q)]) == 0
    state = json.loads((q / "checkpoints/best/state.json").read_text())
    assert set(state["compression"]) >= {"trim", "int8"}
    for run in (out, q):
        assert main(["embed", "--model", str(run), "--input", str(text), "--lang", "en",
                     "--out", str(tmp_path / f"{run.name}.npy")]) == 0
    a, b = np.load(tmp_path / "trim.npy"), np.load(tmp_path / "trim8.npy")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= MIN_COSINE


def test_trim_unigram_run_to_languages_of_its_data(unigram_run, tiny_prepared, tmp_path):
    out = tmp_path / "trim-en"
    info = trim_run(unigram_run, out, langs=["en"])
    assert info["new_vocab"] < info["old_vocab"]
    from xlmkit.data.format import PreparedData

    data = PreparedData(tiny_prepared)
    valid = data.mono("en", "valid")
    lines = [data.tokenizer.decode(valid.sentence(i).tolist()) for i in range(min(len(valid), 30))]
    _check_trim_identical(unigram_run, out, lines)
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["data_dir"] is None and vocab["vocab_size"] == info["new_vocab"]
    with pytest.raises(XlmkitError, match="either"):
        trim_run(unigram_run, tmp_path / "x")


def test_trimmed_finetuned_run_evaluates_the_same(finetuned, tmp_path):
    ft_dir, dev = finetuned
    exs = read_task_file(dev, "classification")
    text = tmp_path / "dev.txt"
    text.write_text("\n".join(ex.text for ex in exs) + "\n")
    out = tmp_path / "ft-trim"
    trim_run(ft_dir, out, text_files=[text])
    preds = []
    for d in (ft_dir, out):
        ftm = load_finetuned(d)
        data, _ = TaskEncoder(ftm.tokenizer, ftm.vocab, ftm.spec, ftm.model.encoder).encode(exs)
        preds.append(predict(ftm.model, data, 1, 16, torch.device("cpu"), "fp32"))
    assert preds[0] == preds[1]
    test = tmp_path / "en.jsonl"
    test.write_text(dev.read_text())
    assert main(["evaluate", "--model", str(out), "--data", str(test), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["languages"]["en"]["accuracy"] is not None


# ----------------------------------------------------------------------------------------------
# ONNX


def test_onnx_export_parity_and_embed(tiny_random_run, int8_run, finetuned, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from xlmkit.interop.onnx import parity

    text = tmp_path / "de.txt"
    text.write_text("\n".join(_sentences(40, "de")) + "\n")
    for name, run in (("enc", tiny_random_run), ("int8", int8_run), ("ft", finetuned[0])):
        path = tmp_path / f"{name}.onnx"
        assert main(["export-onnx", str(run), "--out", str(path)]) == 0
        meta = json.loads(Path(str(path) + ".json").read_text())
        assert meta["parity_max_abs_diff"] < 1e-4
        assert parity(run, path, lengths=(3, 17), batches=(1, 5)) < 1e-4
        assert ("logits" in meta["outputs"]) == (name == "ft")
        if name == "ft":
            continue
        assert main(["embed", "--model", str(run), "--input", str(text), "--lang", "de", "--precision", "fp32",
                     "--out", str(tmp_path / f"{name}.torch.npy")]) == 0
        assert main(["embed", "--model", str(run), "--onnx", str(path), "--input", str(text), "--lang", "de",
                     "--batch-size", "7", "--out", str(tmp_path / f"{name}.ort.npy")]) == 0
        a, b = np.load(tmp_path / f"{name}.torch.npy"), np.load(tmp_path / f"{name}.ort.npy")
        assert np.abs(a - b).max() < 1e-4
    capsys.readouterr()
    assert main(["embed", "--model", str(tiny_random_run), "--onnx", str(tmp_path / "enc.onnx"), "--layer", "1",
                 "--input", str(text), "--lang", "de", "--out", str(tmp_path / "x.npy")]) == 2
    assert "last layer" in capsys.readouterr().err


def test_onnx_int8_graph_is_smaller_and_close(tiny_random_run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from xlmkit.interop.onnx import export_onnx

    fp32 = export_onnx(tiny_random_run, tmp_path / "m.onnx")
    int8 = export_onnx(tiny_random_run, tmp_path / "m8.onnx", int8=True)
    assert int8["bytes"] < 0.5 * fp32["bytes"]
    assert int8["parity_max_abs_diff"] < 0.1  # quantized activations: close, not equal


def test_missing_onnx_extra_is_a_one_line_error(tiny_random_run, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export-onnx", str(tiny_random_run), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'xlmkit[onnx]'" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("a b\n")
    assert main(["embed", "--model", str(tiny_random_run), "--onnx", str(tmp_path / "m.onnx"), "--input",
                 str(tmp_path / "x.txt"), "--lang", "en", "--out", str(tmp_path / "x.npy")]) == 2
    assert "xlmkit[onnx]" in capsys.readouterr().err


def test_compressed_runs_load_in_retrieve(tiny_random_run, int8_run, tmp_path):
    """retrieve on the int8 run, a trimmed run and (onnxruntime) an ONNX graph: each gives a table; the
    trimmed run (kept pieces = the test text) and the ONNX graph score as the fp32 run does."""
    from xlmkit.data.synthetic import sentence

    rng = np.random.default_rng(3)
    rows = [sentence(rng) for _ in range(40)]
    data = tmp_path / "bitext"
    data.mkdir()
    (data / "tatoeba.deu-eng.deu").write_text("\n".join(r["de"] for r in rows) + "\n")
    (data / "tatoeba.deu-eng.eng").write_text("\n".join(r["en"] for r in rows) + "\n")
    trimmed = tmp_path / "trim"
    trim_run(tiny_random_run, trimmed, text_files=[data / "tatoeba.deu-eng.deu", data / "tatoeba.deu-eng.eng"])
    runs = {"fp32": [str(tiny_random_run)], "int8": [str(int8_run)], "trim": [str(trimmed)]}
    try:
        import onnxruntime  # noqa: F401

        from xlmkit.interop.onnx import export_onnx

        export_onnx(tiny_random_run, tmp_path / "m.onnx")
        runs["onnx"] = [str(tiny_random_run), "--onnx", str(tmp_path / "m.onnx")]
    except ImportError:
        pass
    acc = {}
    for name, model in runs.items():
        out = tmp_path / f"ret-{name}"
        assert main(["retrieve", "--model", *model, "--data", str(data), "--langs", "de", "--precision", "fp32",
                     "--out", str(out)]) == 0
        acc[name] = json.loads((out / "retrieval.json").read_text())["rows"][0]["acc_xx_en"]
    assert acc["trim"] == acc["fp32"] and acc.get("onnx", acc["fp32"]) == acc["fp32"]


def test_embed_on_an_int8_run_takes_the_int8_kernels_under_auto(int8_run, tmp_path):
    """precision auto on the CPU: PyTorch's int8 kernels, close to the dequantized fp32 embeddings;
    an explicit fp32 keeps the exact fp32 arithmetic."""
    from xlmkit.tasks.retrieval import load_encoder

    auto, info = load_encoder(int8_run, device="cpu")
    exact, info32 = load_encoder(int8_run, device="cpu", precision="fp32")
    assert info["engine"] == "torch int8 kernels" and info["precision"] == "fp32" and info32["engine"] == "torch"
    lines = _sentences(20, "de")
    a, b = auto.embed(lines, "de"), exact.embed(lines, "de")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.99
