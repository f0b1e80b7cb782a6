"""Pretraining: metrics, checkpoints of a real (tiny) run, exact resume, schedules, accumulation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from xlmkit.train.checkpoint import CHECKPOINTS, best_metric, list_step_checkpoints, load_model, read_state
from xlmkit.cli.main import main
from xlmkit.core.config import TrainConfig, load_config
from xlmkit.core.errors import XlmkitError
from xlmkit.train.metrics import read_metrics
from xlmkit.train.pretrain import lr_factor, output_loss_sum, pretrain


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="session")
def prepared(tiny_prepared) -> Path:
    return tiny_prepared


def config(*overrides: str):
    return load_config("tiny", list(overrides))


@pytest.fixture(scope="module")
def tiny_run(prepared, tmp_path_factory):
    """A short bf16 run with MLM + TLM on every language / pair (the tiny preset's defaults)."""
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = config("train.max_steps=20", "train.eval_every=10", "train.save_every=5", "train.keep_last=2",
                 "train.log_every=5", "train.eval_batches=2")
    final = pretrain(cfg, prepared, run)
    return run, final


def weights(run: Path, which: str = "latest") -> dict[str, torch.Tensor]:
    return load_model(run, which=which).model.state_dict()


# ----------------------------------------------------------------------------------------------
# A real run


def test_run_writes_resolved_config_vocab_tokenizer_and_checkpoints(tiny_run, prepared):
    run, final = tiny_run
    saved = json.loads((run / "config.json").read_text())
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert saved["model"]["vocab_size"] == manifest["vocab_size"] > 0
    assert saved["model"]["n_langs"] == len(manifest["lang2id"]) and saved["model"]["pad_id"] == 1
    vocab = json.loads((run / "vocab.json").read_text())
    assert vocab["lang2id"] == manifest["lang2id"] and vocab["pairs"] == manifest["pairs"]
    assert (run / "tokenizer.json").read_bytes() == (prepared / "tokenizer.json").read_bytes()
    assert [s for s, _ in list_step_checkpoints(run)] == [15, 20]  # keep_last=2 of 5, 10, 15, 20
    assert (run / CHECKPOINTS / "best" / "model.safetensors").is_file()
    for f in (run / CHECKPOINTS).rglob("*"):
        assert f.is_dir() or f.suffix in (".safetensors", ".json"), f
    assert final["step"] == 20 and read_state(run / CHECKPOINTS / "step_00000020")["step"] == 20


def test_metrics_jsonl_has_train_and_valid_lines_per_language(tiny_run, prepared):
    run, final = tiny_run
    manifest = json.loads((prepared / "manifest.json").read_text())
    train = read_metrics(run, "train")
    valid = read_metrics(run, "valid")
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    assert [r["step"] for r in valid] == [0, 10, 20]
    for r in train:
        for key in ("loss", "lr", "tokens_per_s", "grad_norm", "elapsed_s"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), key
        objectives = [k for k in r if k.startswith("loss_")]
        assert objectives and all(k.split("_")[1] in ("mlm", "tlm") for k in objectives)
    seen_tasks = {k.split("_", 2)[2] for r in train for k in r if k.startswith("loss_")}
    assert seen_tasks <= set(manifest["mono"]) | set(manifest["pairs"])
    names = sorted(manifest["mono"]) + sorted(manifest["pairs"])
    for r in valid:
        for name in names:
            assert r[f"ppl/{name}"] > 1.0 and 0.0 <= r[f"acc/{name}"] <= 1.0
        ppls = [r[f"ppl/{n}"] for n in names]
        assert r["mean_ppl"] == pytest.approx(sum(ppls) / len(ppls))
    assert final["mean_ppl"] == valid[-1]["mean_ppl"]
    assert (run / "tb").is_dir() and any((run / "tb").iterdir())


def test_validation_perplexity_falls_on_the_learnable_corpus(tiny_run):
    run, _ = tiny_run
    valid = read_metrics(run, "valid")
    first, last = valid[0], valid[-1]
    assert last["mean_ppl"] < 0.5 * first["mean_ppl"]
    for key in first:
        if key.startswith("ppl/"):
            assert last[key] < first[key], key


def test_best_checkpoint_tracks_lowest_mean_validation_perplexity(tiny_run):
    run, _ = tiny_run
    valid = [r for r in read_metrics(run, "valid") if r["step"] > 0]
    best = min(valid, key=lambda r: r["mean_ppl"])
    assert best_metric(run) == pytest.approx(best["mean_ppl"])
    assert read_state(run / CHECKPOINTS / "best")["step"] == best["step"]
    loaded = load_model(run)  # best
    assert loaded.path.name == "best" and loaded.config.model.vocab_size > 0


def test_mlm_only_run_chooses_best_on_the_languages_alone(prepared, tmp_path):
    """Without TLM steps the pairs' perplexity is still measured, but best/ is chosen on the mean over
    the languages: an MLM-only run's TLM perplexity may rise while its MLM perplexity falls."""
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["pairs"]
    run = tmp_path / "mlm"
    pretrain(config("train.max_steps=10", "train.eval_every=5", "train.eval_batches=2", "train.tlm_steps=none"),
             prepared, run)
    valid = read_metrics(run, "valid")
    for r in valid:
        assert all(r[f"ppl/{p}"] > 1.0 for p in manifest["pairs"])
        mono = [r[f"ppl/{lang}"] for lang in sorted(manifest["mono"])]
        assert r["mean_ppl"] == pytest.approx(sum(mono) / len(mono))
    best = min((r for r in valid if r["step"] > 0), key=lambda r: r["mean_ppl"])
    assert read_state(run / CHECKPOINTS / "best")["step"] == best["step"]


# ----------------------------------------------------------------------------------------------
# Resume


class Killed(Exception):
    pass


def test_resume_is_exact(prepared, tmp_path, monkeypatch):
    """8 steps straight == 4 steps, a crash, then --resume (fp32, dropout on): every logged train loss
    and every final weight identical."""
    import xlmkit.train.metrics

    overrides = ("train.max_steps=8", "train.save_every=4", "train.log_every=1", "train.eval_every=100",
                 "train.eval_batches=1", "train.precision=fp32", "train.batch_size=8", "model.dropout=0.1",
                 "model.attention_dropout=0.1")
    cfg = config(*overrides)
    pretrain(cfg, prepared, tmp_path / "straight")

    real_log = xlmkit.train.metrics.MetricsLogger.log

    def log_then_die(self, record):
        if record["step"] == 6 and record["split"] == "train":
            raise Killed  # after the step-4 checkpoint, with step 5 logged: it is trained again
        real_log(self, record)

    monkeypatch.setattr(xlmkit.train.metrics.MetricsLogger, "log", log_then_die)
    with pytest.raises(Killed):
        pretrain(cfg, prepared, tmp_path / "resumed")
    monkeypatch.undo()
    assert [r["step"] for r in read_metrics(tmp_path / "resumed", "train")] == list(range(1, 6))
    pretrain(cfg, prepared, tmp_path / "resumed", resume=True)

    straight = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "straight", "train")]
    resumed = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "resumed", "train")]
    assert straight == resumed and len(straight) == 8
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_refuses_a_different_model_and_says_what_differs(tiny_run, prepared):
    run, _ = tiny_run
    with pytest.raises(XlmkitError, match=r"model\.dim: 64 \(checkpoint\) != 32 \(now\)"):
        pretrain(config("train.max_steps=40", "model.dim=32"), prepared, run, resume=True)


def test_fresh_run_into_an_existing_run_and_resume_of_nothing_are_refused(tiny_run, prepared, tmp_path):
    run, _ = tiny_run
    with pytest.raises(XlmkitError, match="already holds a run; pass --resume"):
        pretrain(config(), prepared, run)
    with pytest.raises(XlmkitError, match="no checkpoint to resume from"):
        pretrain(config(), prepared, tmp_path / "empty", resume=True)


# ----------------------------------------------------------------------------------------------
# Optimisation details


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("n_rows", [0, 1, 37])
def test_fused_output_layer_loss_is_linear_then_cross_entropy(precision, n_rows):
    # on the CPU the output layer and loss are fused, a block of 2**20 // V = 16 rows at a time (37
    # rows: three blocks, the last one short); loss and the gradients of h, W and b must be those of
    # F.linear + F.cross_entropy on fp32 logits (fp32 exactly to rounding; bf16 autocast to bf16 rounding)
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    N, D, V = n_rows, 32, 65536
    h = torch.randn(N, D, generator=g).requires_grad_()
    weight = (torch.randn(V, D, generator=g) * 0.5).requires_grad_()
    bias = torch.randn(V, generator=g).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g)
    results = []
    for fused in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = (output_loss_sum(h, weight, bias, targets) if fused else
                    F.cross_entropy(F.linear(h, weight, bias).float(), targets, reduction="sum"))
        loss.backward(torch.tensor(0.5))  # a scale, as the trainer's 1 / n_pred
        results.append((loss.detach(), h.grad, weight.grad, bias.grad))
        h.grad = weight.grad = bias.grad = None
    (loss, *grads), (ref_loss, *ref_grads) = results
    assert loss.dtype == torch.float32 and [x.dtype for x in grads] == [torch.float32] * 3
    if precision == "fp32":
        torch.testing.assert_close(loss, ref_loss, atol=1e-3, rtol=1e-6)
        for x, ref in zip(grads, ref_grads):
            torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)
    else:  # the reference rounds logits + bias to bf16; the fused loss adds the bias in fp32
        torch.testing.assert_close(loss, ref_loss, atol=0.05 * max(N, 1), rtol=1e-2)
        for x, ref in zip(grads, ref_grads):
            torch.testing.assert_close(x, ref, atol=2e-2, rtol=5e-2)
            if N:
                assert F.cosine_similarity(x.flatten(), ref.flatten(), dim=0) > 0.999


def test_schedule_shapes():
    lin = TrainConfig(schedule="linear", warmup_steps=10, max_steps=50, lr=1.0)
    assert [lr_factor(s, lin) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert [lr_factor(s, lin) for s in (10, 30, 49, 50)] == [1.0, 0.5, 1 / 40, 0.0]
    isq = TrainConfig(schedule="inverse_sqrt", warmup_steps=10, max_steps=100, lr=1.0)
    assert [lr_factor(s, isq) for s in (0, 9, 10, 40, 90)] == pytest.approx([0.1, 1.0, 1.0, 0.5, 1 / 3])
    const = TrainConfig(schedule="constant", warmup_steps=4, max_steps=100, lr=1.0)
    assert [lr_factor(s, const) for s in (0, 3, 4, 99)] == [0.25, 1.0, 1.0, 1.0]
    no_warmup = TrainConfig(schedule="linear", warmup_steps=0, max_steps=10, lr=1.0)
    assert [lr_factor(s, no_warmup) for s in (0, 5, 9)] == [1.0, 0.5, 0.1]


def test_logged_learning_rate_follows_the_schedule(tiny_run):
    run, _ = tiny_run
    cfg = load_config(str(run / "config.json"))
    for r in read_metrics(run, "train"):  # lr of the record's last step (0-based step - 1)
        assert r["lr"] == pytest.approx(cfg.train.lr * lr_factor(r["step"] - 1, cfg.train))


def test_gradient_accumulation_matches_one_big_batch(prepared, tmp_path):
    common = ("train.max_steps=3", "train.batch_size=8", "train.log_every=1", "train.eval_every=100",
              "train.eval_batches=1", "train.precision=fp32", "model.dropout=0", "model.attention_dropout=0")
    pretrain(config(*common, "train.grad_accum=1"), prepared, tmp_path / "accum1")
    pretrain(config(*common, "train.grad_accum=2"), prepared, tmp_path / "accum2")
    one = read_metrics(tmp_path / "accum1", "train")
    two = read_metrics(tmp_path / "accum2", "train")
    assert len(one) == len(two) == 3
    for r1, r2 in zip(one, two):
        assert r1.keys() == r2.keys()
        for key in r1:
            if key.startswith("loss"):
                assert r1[key] == pytest.approx(r2[key], abs=1e-5), (r1["step"], key)
    a, b = weights(tmp_path / "accum1"), weights(tmp_path / "accum2")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Command line


def test_cli_pretrain_with_clm(prepared, tmp_path, capsys):
    run = tmp_path / "cli"
    args = ["pretrain", "--config", "tiny", "--data", str(prepared), "--out", str(run),
            "--set", "train.max_steps=4", "--set", "train.log_every=2", "--set", "train.eval_batches=1",
            "--set", "train.clm_steps=en", "--set", "train.tlm_steps=none", "--set", "train.batch_size=4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "validation perplexity" in out and "done in" in out
    objectives = {k.split("_")[1] for r in read_metrics(run, "train") for k in r if k.startswith("loss_")}
    assert objectives == {"mlm", "clm"}
    assert main(["pretrain", "--data", str(prepared), "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "xlmkit pretrain: error: " in capsys.readouterr().err


def test_profiler_writes_a_trace(prepared, tmp_path):
    run = tmp_path / "prof"
    pretrain(config("train.max_steps=5", "train.profile=true", "train.eval_batches=1", "train.batch_size=2",
                    "train.bptt=16", "train.tlm_steps=none"), prepared, run)
    assert any(f.name.endswith(".json") for f in (run / "profile").iterdir())


@pytest.mark.slow
def test_compiled_model_trains(prepared, tmp_path):
    final = pretrain(config("train.max_steps=4", "train.compile=true", "train.eval_batches=1"), prepared,
                     tmp_path / "compiled")
    assert math.isfinite(final["loss"])


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(prepared, tmp_path):
    """torchrun-style gloo run on CPU: the same losses as one process (fp32, no dropout)."""
    import subprocess
    import sys

    common = ["--config", "tiny", "--data", str(prepared), "--set", "train.max_steps=3", "--set",
              "train.batch_size=8", "--set", "train.log_every=1", "--set", "train.eval_batches=1", "--set",
              "train.precision=fp32", "--set", "model.dropout=0", "--set", "model.attention_dropout=0",
              "--set", "train.device=cpu"]
    assert main(["pretrain", *common, "--out", str(tmp_path / "one")]) == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29533", "-m", "xlmkit", "pretrain", *common,
                           "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = read_metrics(tmp_path / "one", "train")
    two = read_metrics(tmp_path / "two", "train")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for r1, r2 in zip(one, two):
        assert r1["loss"] == pytest.approx(r2["loss"], abs=1e-5)
    v1, v2 = read_metrics(tmp_path / "one", "valid")[-1], read_metrics(tmp_path / "two", "valid")[-1]
    assert v1["mean_ppl"] == pytest.approx(v2["mean_ppl"], rel=1e-4)


def test_sigterm_saves_a_checkpoint_and_resume_is_exact(prepared, tmp_path, monkeypatch, capsys):
    """SIGTERM (a scheduler's preemption) mid-run: the step in progress finishes, a checkpoint of it is
    saved (here between the regular ones), the command exits 143 with one line saying so; --resume
    then continues as if nothing had happened: every logged loss and final weight as in a straight run."""
    import os
    import signal

    import xlmkit.train.engine as engine

    overrides = ["train.max_steps=8", "train.save_every=100", "train.log_every=1", "train.eval_every=100",
                 "train.eval_batches=1", "train.precision=fp32", "train.batch_size=8", "model.dropout=0.1",
                 "model.attention_dropout=0.1"]
    cfg = config(*overrides)
    pretrain(cfg, prepared, tmp_path / "straight")

    real, calls = engine.train_on_batch, []

    def signalled_during_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # step 3's first batch (2 objectives a step: MLM and TLM)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_on_batch", signalled_during_step_3)
    args = ["pretrain", "--config", "tiny", "--data", str(prepared), "--out", str(tmp_path / "resumed")]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "SIGTERM at step 3 of 8: stopped after saving" in err and "step_00000003 (what --resume continues from)" in err
    assert [s for s, _ in list_step_checkpoints(tmp_path / "resumed")] == [3]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is gone with the run
    monkeypatch.undo()
    assert main(args + ["--resume"]) == 0
    straight = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "straight", "train")]
    resumed = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "resumed", "train")]
    assert straight == resumed and len(straight) == 8
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_stop_signals_take_the_first_signal_and_give_the_second_its_usual_effect():
    import os
    import signal

    from xlmkit.core.runtime import DistInfo
    from xlmkit.train.engine import StopSignals

    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        assert stop.requested(DistInfo(), torch.device("cpu")) == 0
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested(DistInfo(), torch.device("cpu")) == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C twice: stop now, as without xlmkit
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
