"""Checkpoints: safetensors + JSON only, atomic writes, keep-last pruning, best/, load_model."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from xlmkit.train.checkpoint import (
    BEST,
    CHECKPOINTS,
    best_dir,
    best_metric,
    clean_checkpoints,
    config_differences,
    latest_checkpoint,
    list_step_checkpoints,
    load_checkpoint,
    load_model,
    prune_checkpoints,
    read_state,
    save_checkpoint,
    save_model_run,
    step_dir,
)
from xlmkit.core.config import load_config
from xlmkit.core.errors import XlmkitError
from xlmkit.model.encoder import XLMModel
from xlmkit.train.pretrain import build_optimizer, build_scheduler

VOCAB = {"lang2id": {"en": 0, "fr": 1}, "specials": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 4},
         "languages": ["en", "fr"], "pairs": ["en-fr"], "vocab_size": 40, "data_dir": "/nowhere"}


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def tiny_config(**model):
    cfg = load_config("tiny")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=40, n_langs=2, pad_id=1, **model))


def trained_objects(cfg, steps: int = 2):
    """A model, optimizer and scheduler that have taken a few steps (so the optimizer has state)."""
    torch.manual_seed(0)
    model = XLMModel(cfg.model)
    opt = build_optimizer(model, cfg.train, torch.device("cpu"))
    sched = build_scheduler(opt, cfg.train)
    for _ in range(steps):
        ids = torch.randint(5, 40, (2, 8))
        h = model(ids, langs=torch.zeros_like(ids))
        model.mlm_logits(h.reshape(-1, h.shape[-1])).logsumexp(-1).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def save_step(run, step, model, opt, sched, cfg, **kw):
    return save_checkpoint(step_dir(run, step), model=model, cfg=cfg, step=step, optimizer=opt, scheduler=sched,
                           sampler_state={"step": step, "big": 2**100}, vocab=VOCAB, **kw)


@pytest.fixture
def cfg():
    return tiny_config()


def test_roundtrip_restores_weights_optimizer_scheduler_and_rng(tmp_path, cfg):
    model, opt, sched = trained_objects(cfg)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt = save_step(tmp_path, 2, model, opt, sched, cfg, metrics={"mean_ppl": 12.5})
    expected_draws = (random.random(), np.random.rand(), torch.rand(3))

    model2, opt2, sched2 = trained_objects(cfg, steps=1)  # different weights and optimizer state
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state = load_checkpoint(ckpt, model2, opt2, sched2)

    assert state["step"] == 2 and state["sampler"] == {"step": 2, "big": 2**100}
    assert state["metrics"]["mean_ppl"] == 12.5
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid in s1["state"]:
        for k, v in s1["state"][pid].items():
            assert torch.equal(v, s2["state"][pid][k]), (pid, k)
    assert sched2.last_epoch == sched.last_epoch and sched2.get_last_lr() == sched.get_last_lr()
    assert (random.random(), np.random.rand()) == expected_draws[:2]
    assert torch.equal(torch.rand(3), expected_draws[2])


def test_checkpoint_files_are_safetensors_and_json_only_and_never_unpickled(tmp_path, cfg, monkeypatch):
    model, opt, sched = trained_objects(cfg)
    ckpt = save_step(tmp_path, 2, model, opt, sched, cfg)
    save_checkpoint(best_dir(tmp_path), model=model, cfg=cfg, step=2, vocab=VOCAB)
    for f in list(ckpt.iterdir()) + list(best_dir(tmp_path).iterdir()):
        assert f.suffix in (".safetensors", ".json"), f
        head = f.read_bytes()[:2]
        assert head != b"\x80\x04" and head[:1] != b"\x80", f"{f} looks like a pickle"
        if f.suffix == ".json":
            json.loads(f.read_text())

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load / pickle must not be used to read checkpoints")

    monkeypatch.setattr(torch, "load", no_unpickling)
    import pickle

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    model2, opt2, sched2 = trained_objects(cfg, steps=1)
    load_checkpoint(ckpt, model2, opt2, sched2)
    loaded = load_model(tmp_path, which="best")
    assert torch.equal(loaded.model.token_embeddings.weight, model.token_embeddings.weight)


def test_failed_write_leaves_previous_checkpoint_and_no_temp(tmp_path, cfg, monkeypatch):
    import xlmkit.train.checkpoint as ck

    model, opt, sched = trained_objects(cfg)
    save_step(tmp_path, 1, model, opt, sched, cfg)
    real_write = ck.write_tensors
    calls = []

    def failing_write(tensors, path):
        calls.append(path.name)
        if len(calls) == 2:  # model.safetensors written, then the disk "fills up"
            raise OSError("No space left on device")
        real_write(tensors, path)

    monkeypatch.setattr(ck, "write_tensors", failing_write)
    with pytest.raises(OSError):
        save_step(tmp_path, 2, model, opt, sched, cfg)
    monkeypatch.undo()
    assert calls[0] == "model.safetensors"
    assert [s for s, _ in list_step_checkpoints(tmp_path)] == [1]
    assert [p.name for p in (tmp_path / CHECKPOINTS).iterdir()] == ["step_00000001"]
    assert latest_checkpoint(tmp_path) == step_dir(tmp_path, 1)
    load_checkpoint(latest_checkpoint(tmp_path), model, opt, sched)


def test_process_killed_mid_write_leaves_previous_checkpoint_loadable(tmp_path, cfg):
    """A real kill (os._exit: no except / finally runs) after part of the files: the temporary directory
    stays behind, readers ignore it, the previous checkpoint loads, and cleaning removes the leftover."""
    model, opt, sched = trained_objects(cfg)
    save_step(tmp_path, 1, model, opt, sched, cfg)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
        import xlmkit.train.checkpoint as ck
        from test_checkpoint import tiny_config, trained_objects, save_step
        real = ck.write_tensors
        def killed(tensors, path):
            real(tensors, path)
            if path.name == "optimizer.safetensors":
                os._exit(17)  # killed after two of the four files
        ck.write_tensors = killed
        cfg = tiny_config()
        model, opt, sched = trained_objects(cfg, steps=0)  # no backward: quick to start
        save_step({str(tmp_path)!r}, 2, model, opt, sched, cfg)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 17, proc.stderr
    leftovers = [p for p in (tmp_path / CHECKPOINTS).iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").is_file()
    assert latest_checkpoint(tmp_path) == step_dir(tmp_path, 1)
    loaded = load_model(tmp_path, which="latest")
    assert torch.equal(loaded.model.token_embeddings.weight, model.token_embeddings.weight)
    clean_checkpoints(tmp_path)
    assert [p.name for p in (tmp_path / CHECKPOINTS).iterdir()] == ["step_00000001"]


def test_crash_between_the_renames_of_a_replace_is_recovered(tmp_path, cfg):
    model, _, _ = trained_objects(cfg)
    save_checkpoint(best_dir(tmp_path), model=model, cfg=cfg, step=5, metrics={"mean_ppl": 3.0}, vocab=VOCAB)
    os.rename(best_dir(tmp_path), tmp_path / CHECKPOINTS / f".old-{BEST}")  # as a crash leaves it
    assert load_model(tmp_path, which="best").path.name == f".old-{BEST}"
    clean_checkpoints(tmp_path)
    assert best_metric(tmp_path) == 3.0 and read_state(best_dir(tmp_path))["step"] == 5


def test_replacing_best_and_keep_last_pruning(tmp_path, cfg):
    model, opt, sched = trained_objects(cfg)
    for step in range(1, 6):
        save_step(tmp_path, step, model, opt, sched, cfg)
    save_checkpoint(best_dir(tmp_path), model=model, cfg=cfg, step=3, metrics={"mean_ppl": 7.0}, vocab=VOCAB)
    save_checkpoint(best_dir(tmp_path), model=model, cfg=cfg, step=4, metrics={"mean_ppl": 5.0}, vocab=VOCAB)
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in removed] == ["step_00000001", "step_00000002", "step_00000003"]
    assert [s for s, _ in list_step_checkpoints(tmp_path)] == [4, 5]
    assert best_metric(tmp_path) == 5.0 and read_state(best_dir(tmp_path))["step"] == 4
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == ["best", "step_00000004", "step_00000005"]


def test_load_model_from_run_or_checkpoint_dir(tmp_path, cfg):
    model, opt, sched = trained_objects(cfg)
    run = tmp_path / "run"
    (run).mkdir()
    (run / "tokenizer.json").write_text("{}")
    save_step(run, 2, model, opt, sched, cfg)
    other, _, _ = trained_objects(cfg, steps=1)
    save_checkpoint(best_dir(run), model=other, cfg=cfg, step=1, metrics={"mean_ppl": 4.0}, vocab=VOCAB)

    best = load_model(run)  # which="best" by default
    latest = load_model(run, which="latest")
    direct = load_model(step_dir(run, 2))
    assert best.path == best_dir(run) and latest.path == step_dir(run, 2) == direct.path
    assert torch.equal(best.model.token_embeddings.weight, other.token_embeddings.weight)
    assert torch.equal(latest.model.token_embeddings.weight, model.token_embeddings.weight)
    assert not latest.model.training
    assert latest.config.model == cfg.model and latest.vocab == VOCAB
    assert latest.tokenizer_path == (run / "tokenizer.json").resolve()
    with pytest.raises(XlmkitError, match="which must be"):
        load_model(run, which="newest")
    with pytest.raises(XlmkitError, match="neither a run directory"):
        load_model(tmp_path / "nothing")


def test_save_model_run_writes_a_loadable_run(tmp_path, cfg):
    model, _, _ = trained_objects(cfg)
    tok = tmp_path / "tok.json"
    tok.write_text('{"model": {}}')
    run = tmp_path / "imported"
    ckpt = save_model_run(run, model, cfg, VOCAB, tok)
    assert ckpt == best_dir(run)
    assert json.loads((run / "vocab.json").read_text()) == VOCAB
    assert json.loads((run / "config.json").read_text())["model"]["vocab_size"] == 40
    assert (run / "tokenizer.json").read_text() == tok.read_text()
    for which in ("best", "latest"):  # a weights-only run answers both
        loaded = load_model(run, which=which)
        assert torch.equal(loaded.model.token_embeddings.weight, model.token_embeddings.weight)
        assert loaded.tokenizer_path == (run / "tokenizer.json").resolve()
    with pytest.raises(XlmkitError, match="already holds checkpoints"):
        save_model_run(run, model, cfg, VOCAB, tok)
    with pytest.raises(XlmkitError, match="holds weights only"):
        _, opt, sched = trained_objects(cfg, steps=1)
        load_checkpoint(ckpt, model, opt, sched)


def test_weights_that_do_not_fit_are_refused_clearly(tmp_path, cfg):
    model, _, _ = trained_objects(cfg)
    save_checkpoint(best_dir(tmp_path), model=model, cfg=cfg, step=1, vocab=VOCAB)
    bigger = XLMModel(dataclasses.replace(cfg.model, n_layers=3))
    with pytest.raises(XlmkitError, match="do not fit the model"):
        load_checkpoint(best_dir(tmp_path), bigger)


def test_config_differences_name_the_fields():
    a, b = tiny_config(), tiny_config(dim=32)
    assert config_differences(a, a) == []
    diffs = config_differences(a, b)
    assert diffs == ["model.dim: 64 (checkpoint) != 32 (now)"]
