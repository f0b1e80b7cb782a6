"""Multi-process pretraining under torchrun on CPU (gloo): DDP and FSDP2 give the losses of one process
with the same global batch, checkpoints resume on another number of processes, and a process that
dies or hangs ends the whole run with a clear error instead of a hang.

Each run is `python -m torch.distributed.run --nproc-per-node 2 ... -m xlmkit pretrain` in a subprocess,
as a user would start it. fp32 and no dropout, so that one process and two compute the same thing
(dropout draws from a per-rank stream)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xlmkit.train.checkpoint import list_step_checkpoints, read_state, step_dir
from xlmkit.core.config import load_config
from xlmkit.train.metrics import read_metrics
from xlmkit.train.pretrain import pretrain

WORKER = Path(__file__).parents[1] / "dist_worker.py"
STEPS = 20
OVERRIDES = (f"train.max_steps={STEPS}", "train.batch_size=8", "train.log_every=1", "train.eval_every=10",
             "train.save_every=10", "train.keep_last=3", "train.eval_batches=1", "train.precision=fp32",
             "model.dropout=0", "model.attention_dropout=0", "train.device=cpu", "train.dist_timeout_s=60")
TORCHRUN_TIMEOUT_S = 300  # a hang fails the test instead of blocking the suite


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="session")
def prepared(tiny_prepared) -> Path:
    return tiny_prepared


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2, module: bool = True) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node nproc [-m] args...` on this machine; returns the finished process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", *(["-m"] if module else []), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S, env=env)


def pretrain_args(data: Path, out: Path, *overrides: str, resume: bool = False) -> list[str]:
    args = ["pretrain", "--config", "tiny", "--data", str(data), "--out", str(out)]
    for o in (*OVERRIDES, *overrides):
        args += ["--set", o]
    return args + (["--resume"] if resume else [])


def run_two_processes(data: Path, out: Path, *overrides: str, resume: bool = False) -> Path:
    proc = torchrun(["xlmkit", *pretrain_args(data, out, *overrides, resume=resume)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (out / "torchrun.stdout").write_text(proc.stdout)
    return out


def train_losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run, "train")]


def assert_same_losses(a: Path, b: Path, atol: float = 1e-5) -> None:
    la, lb = train_losses(a), train_losses(b)
    assert [s for s, _ in la] == [s for s, _ in lb] == list(range(1, STEPS + 1))
    for (step, x), (_, y) in zip(la, lb):
        assert x == pytest.approx(y, abs=atol), f"step {step}: {x} != {y}"


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    wa, wb = (load_file(str(step_dir(r, STEPS) / "model.safetensors")) for r in (a, b))
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=atol, rtol=1e-4, msg=name)


@pytest.fixture(scope="module")
def one_process(prepared, tmp_path_factory) -> Path:
    """The reference: one process, the same global batch (train.batch_size is global)."""
    run = tmp_path_factory.mktemp("one") / "run"
    pretrain(load_config("tiny", list(OVERRIDES)), prepared, run)
    return run


@pytest.fixture(scope="module")
def fsdp_run(prepared, tmp_path_factory) -> Path:
    return run_two_processes(prepared, tmp_path_factory.mktemp("fsdp") / "run", "train.parallel=fsdp")


# ----------------------------------------------------------------------------------------------
# Two processes == one process


def test_ddp_two_processes_match_one_process(prepared, one_process, tmp_path):
    """DDP with 2 gradient-accumulation micro-batches per rank: each rank's loss is its sum over
    predicted tokens / the global batch's count, times world_size against DDP's averaging, so the
    ranks' different token counts do not bias the mean."""
    run = run_two_processes(prepared, tmp_path / "ddp", "train.grad_accum=2")
    assert_same_losses(one_process, run)
    assert_same_weights(one_process, run)
    v1, v2 = read_metrics(one_process, "valid"), read_metrics(run, "valid")
    assert [r["step"] for r in v2] == [0, 10, 20]
    assert v2[-1]["mean_ppl"] == pytest.approx(v1[-1]["mean_ppl"], rel=1e-5)


def test_fsdp_two_processes_match_one_process(one_process, fsdp_run):
    """FSDP2 shards parameters, gradients and optimizer state; the tied output layer stays tied (its
    checkpoint has the one-process names, one token embedding), and evaluation between steps (forward
    only) leaves the shards consistent."""
    assert_same_losses(one_process, fsdp_run)
    assert_same_weights(one_process, fsdp_run)
    grad_norms = [(r["grad_norm"], s["grad_norm"]) for r, s in
                  zip(read_metrics(one_process, "train"), read_metrics(fsdp_run, "train"))]
    assert all(a == pytest.approx(b, rel=1e-4) for a, b in grad_norms)
    v1, v2 = read_metrics(one_process, "valid")[-1], read_metrics(fsdp_run, "valid")[-1]
    assert v2["mean_ppl"] == pytest.approx(v1["mean_ppl"], rel=1e-5)
    assert read_state(step_dir(fsdp_run, STEPS))["optimizer"] == read_state(step_dir(one_process, STEPS))["optimizer"]


def test_only_rank_zero_reports(fsdp_run):
    """One metrics line per step and one final report, not one per process."""
    assert (fsdp_run / "torchrun.stdout").read_text().count("[pretrain] done in") == 1
    assert [r["step"] for r in read_metrics(fsdp_run, "train")] == list(range(1, STEPS + 1))
    assert [s for s, _ in list_step_checkpoints(fsdp_run)] == [10, 20]


# ----------------------------------------------------------------------------------------------
# Resume on another number of processes


def test_fsdp_checkpoint_resumes_in_one_process(prepared, one_process, fsdp_run, tmp_path):
    """Stop the 2-process FSDP run at its step-10 checkpoint, continue in one plain process: steps
    11-20 give the losses and final weights of the one-process straight run."""
    run = tmp_path / "resumed"
    shutil.copytree(fsdp_run, run)
    shutil.rmtree(step_dir(run, STEPS))
    pretrain(load_config("tiny", list(OVERRIDES)), prepared, run, resume=True)
    assert_same_losses(one_process, run)
    assert_same_weights(one_process, run)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_in_two_fsdp_processes(prepared, one_process, tmp_path):
    """The other way: a one-process checkpoint scattered into FSDP shards (weights and AdamW state)."""
    run = tmp_path / "resumed"
    shutil.copytree(one_process, run)
    shutil.rmtree(step_dir(run, STEPS))
    run_two_processes(prepared, run, "train.parallel=fsdp", resume=True)
    assert_same_losses(one_process, run)
    assert_same_weights(one_process, run)


# ----------------------------------------------------------------------------------------------
# A process that dies or hangs


def test_a_dead_process_ends_the_run_with_an_error_naming_it(prepared, tmp_path):
    """Rank 1 raises at step 3: torchrun stops rank 0 and fails, naming rank 1 (subprocess's timeout
    turns a hang into a failure)."""
    proc = torchrun([str(WORKER), "crash:1:3", *pretrain_args(prepared, tmp_path / "run")], module=False)
    assert proc.returncode != 0
    assert "simulated crash of rank 1 at step 3" in proc.stderr
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", proc.stderr), proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(tmp_path / "run", "train")] == [1, 2, 3]


@pytest.mark.slow
def test_a_hung_process_times_out_with_a_clear_error(prepared, tmp_path):
    """Rank 1 stops responding at step 3 (alive, so torchrun sees nothing): rank 0's next collective
    gives up after train.dist_timeout_s and says so; torchrun then stops rank 1."""
    proc = torchrun([str(WORKER), "hang:1:3", *pretrain_args(prepared, tmp_path / "run", "train.dist_timeout_s=10")],
                    module=False)
    assert proc.returncode != 0
    assert "xlmkit pretrain: error: rank 0 of 2: a collective operation failed" in proc.stderr, proc.stderr[-3000:]
    assert "train.dist_timeout_s=10" in proc.stderr
    assert re.search(r"rank\s*:\s*0 \(local_rank: 0\)", proc.stderr)
