"""Fine-tuning on the shared training engine: exact resume, torchrun equality, the one optimizer rule."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_model import write_cls_jsonl, write_pos_jsonl
from safetensors.torch import load_file

from xlmkit.cli.main import main
from xlmkit.train.checkpoint import list_step_checkpoints
from xlmkit.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


class Killed(Exception):
    pass


def finetune_args(model: Path, train: Path, dev: Path, out: Path, task: str, *overrides: str) -> list[str]:
    args = ["finetune", "--model", str(model), "--train", str(train), "--dev", str(dev), "--task", task,
            "--out", str(out)]
    for o in ("finetune.precision=fp32", "finetune.device=cpu", *overrides):
        args += ["--set", o]
    return args


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    step, ckpt = list_step_checkpoints(run)[-1]
    return {**load_file(str(ckpt / "model.safetensors")), **load_file(str(ckpt / "head.safetensors"))}


@pytest.mark.parametrize("task", ["classification", "token"])
def test_finetune_resume_is_exact(tiny_random_run, tmp_path, monkeypatch, task):
    """16 steps straight == 8 steps, a crash, then `finetune --resume` (fp32 CPU, dropout on): every
    logged train loss, every dev score and every final weight identical."""
    import xlmkit.train.metrics

    if task == "classification":
        train = write_cls_jsonl(tmp_path / "en.train.jsonl", 64, "en", seed=1)
        dev = write_cls_jsonl(tmp_path / "en.dev.jsonl", 16, "en", seed=2)
    else:
        data = write_pos_jsonl(tmp_path / "pos", 80, seed=0, langs=("en",))
        lines = (data / "en.jsonl").read_text().splitlines()
        train, dev = tmp_path / "en.train.jsonl", tmp_path / "en.dev.jsonl"
        train.write_text("\n".join(lines[:64]) + "\n")
        dev.write_text("\n".join(lines[64:]) + "\n")
    overrides = ("finetune.batch_size=8", "finetune.epochs=2", "finetune.save_every=4", "finetune.log_every=1",
                 "finetune.dropout=0.1", "model.dropout=0.1", "model.attention_dropout=0.1", "finetune.lr=1e-3")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(finetune_args(tiny_random_run, train, dev, straight, task, *overrides)) == 0

    real_log = xlmkit.train.metrics.MetricsLogger.log

    def log_then_die(self, record):
        if record["step"] == 10 and record["split"] == "train":
            raise Killed  # after the step-8 checkpoint, with step 9 logged: it is trained again
        real_log(self, record)

    monkeypatch.setattr(xlmkit.train.metrics.MetricsLogger, "log", log_then_die)
    with pytest.raises(Killed):
        main(finetune_args(tiny_random_run, train, dev, resumed, task, *overrides))
    monkeypatch.undo()
    assert [r["step"] for r in read_metrics(resumed / "metrics.jsonl", "train")] == list(range(1, 10))
    with pytest.raises(SystemExit):  # a fresh run into it is refused
        raise SystemExit(main(finetune_args(tiny_random_run, train, dev, resumed, task, *overrides)))
    assert main(finetune_args(tiny_random_run, train, dev, resumed, task, *overrides) + ["--resume"]) == 0

    a = read_metrics(straight / "metrics.jsonl")
    b = read_metrics(resumed / "metrics.jsonl")
    strip = [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")} for r in a]
    assert strip == [{k: v for k, v in r.items() if k not in ("elapsed_s", "tokens_per_s")} for r in b]
    assert len([r for r in a if r["split"] == "train"]) == 16 and len([r for r in a if r["split"] == "dev"]) == 2
    wa, wb = final_weights(straight), final_weights(resumed)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    best_a = json.loads((straight / "checkpoints/best/state.json").read_text())
    best_b = json.loads((resumed / "checkpoints/best/state.json").read_text())
    assert best_a["step"] == best_b["step"] and best_a["task"] == best_b["task"]


def test_finetune_resume_refuses_another_task(tiny_random_run, tmp_path, capsys):
    train = write_cls_jsonl(tmp_path / "en.train.jsonl", 32, "en", seed=1)
    dev = write_cls_jsonl(tmp_path / "en.dev.jsonl", 8, "en", seed=2)
    out = tmp_path / "ft"
    assert main(finetune_args(tiny_random_run, train, dev, out, "classification", "finetune.batch_size=8")) == 0
    capsys.readouterr()
    relabelled = tmp_path / "relabelled.jsonl"
    relabelled.write_text(train.read_text().replace('"animal"', '"beast"'))
    relabelled_dev = tmp_path / "relabelled.dev.jsonl"
    relabelled_dev.write_text(dev.read_text().replace('"animal"', '"beast"'))
    assert main(finetune_args(tiny_random_run, relabelled, relabelled_dev, out, "classification", "finetune.batch_size=8")
                + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "labels" in err and len(err.strip().splitlines()) == 1


def test_finetune_run_layout_is_a_pretraining_run_layout(tiny_random_run, tmp_path):
    """Step checkpoints hold the optimizer (resumable), best/ the weights only, both the task."""
    train = write_cls_jsonl(tmp_path / "en.train.jsonl", 32, "en", seed=1)
    dev = write_cls_jsonl(tmp_path / "en.dev.jsonl", 8, "en", seed=2)
    out = tmp_path / "ft"
    assert main(finetune_args(tiny_random_run, train, dev, out, "classification", "finetune.batch_size=8",
                              "finetune.epochs=3", "finetune.keep_last=2")) == 0
    steps = [s for s, _ in list_step_checkpoints(out)]
    assert steps == [8, 12]  # one per epoch of 4 steps, the last 2 kept
    last = out / "checkpoints" / f"step_{12:08d}"
    assert (last / "optimizer.safetensors").is_file() and (last / "head.safetensors").is_file()
    state = json.loads((last / "state.json").read_text())
    assert state["task"]["task"] == "classification" and set(state["files"]) >= {"model.safetensors",
                                                                                 "head.safetensors"}
    assert not (out / "checkpoints/best/optimizer.safetensors").exists()


def test_one_weight_decay_rule_for_pretraining_and_finetuning(tiny_random_run):
    """Matrices (linear weights and embeddings) decay, vectors (biases, LayerNorm) do not, whichever task."""
    from xlmkit.core.config import load_config
    from xlmkit.tasks.finetune import TaskModel, build_optimizer as ft_optimizer
    from xlmkit.train.checkpoint import load_model
    from xlmkit.train.pretrain import build_optimizer as pt_optimizer

    loaded = load_model(tiny_random_run)
    cfg = load_config("tiny")
    for opt, model in ((pt_optimizer(loaded.model, cfg.train, torch.device("cpu")), loaded.model),
                       (ft_optimizer(TaskModel(loaded.model, 3, "classification"), cfg.finetune, torch.device("cpu")),
                        None)):
        for g in opt.param_groups:
            assert all(p.ndim >= 2 for p in g["params"]) == (g["weight_decay"] > 0)
        decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
        assert id(loaded.model.token_embeddings.weight) in decayed


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_finetune_under_torchrun_equals_one_process(tiny_random_run, tmp_path):
    """2 gloo processes, each taking its rows of every batch, give the losses, dev scores and weights
    of one process (fp32, dropout off) to float rounding; only rank 0 writes and reports."""
    train = write_cls_jsonl(tmp_path / "en.train.jsonl", 60, "en", seed=1)  # the last batch of each epoch: 4 rows
    dev = write_cls_jsonl(tmp_path / "en.dev.jsonl", 16, "en", seed=2)
    overrides = ("finetune.batch_size=8", "finetune.epochs=2", "finetune.dropout=0.0", "model.dropout=0.0",
                 "model.attention_dropout=0.0", "finetune.log_every=1", "finetune.lr=1e-3", "finetune.grad_accum=2")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(finetune_args(tiny_random_run, train, dev, one, "classification", *overrides)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={free_port()}", "-m", "xlmkit",
           *finetune_args(tiny_random_run, train, dev, two, "classification", *overrides)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("[finetune] done in") == 1
    a, b = read_metrics(one / "metrics.jsonl", "train"), read_metrics(two / "metrics.jsonl", "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 17))
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], abs=1e-5)
    da, db = read_metrics(one / "metrics.jsonl", "dev"), read_metrics(two / "metrics.jsonl", "dev")
    assert [r["accuracy"] for r in da] == [r["accuracy"] for r in db]
    wa, wb = final_weights(one), final_weights(two)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-5, rtol=1e-4)
