"""Damaged data, damaged checkpoints and bad settings: a verified fallback or one clear line.

A sweep of commands x classes of bad input (damaged shard, manifest, checkpoint, config, user file,
unreadable file), each asserting exit code 2, a single line on stderr that names the file, and no
traceback; and the fallback resume: a damaged newest checkpoint is skipped and the run continues
bit-exactly from the one before.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from xlmkit.train.checkpoint import CHECKPOINTS, list_step_checkpoints, load_checkpoint, load_model, step_dir
from xlmkit.cli.main import main
from xlmkit.core.config import load_config
from xlmkit.data.format import PreparedData
from xlmkit.core.errors import DataError, XlmkitError
from xlmkit.train.metrics import read_metrics
from xlmkit.train.pretrain import pretrain

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

RESUME = ("train.max_steps=8", "train.save_every=2", "train.keep_last=3", "train.log_every=1",
          "train.eval_every=100", "train.eval_batches=1", "train.precision=fp32", "train.batch_size=8")


class Killed(Exception):
    pass


def run_until_killed(cfg, prepared, out, monkeypatch, kill_at: int) -> None:
    """Train `cfg` into `out` and stop it (an exception, as a crash) when step `kill_at` is logged."""
    import xlmkit.train.metrics

    real_log = xlmkit.train.metrics.MetricsLogger.log

    def log_then_die(self, record):
        if record["step"] == kill_at and record["split"] == "train":
            raise Killed
        real_log(self, record)

    monkeypatch.setattr(xlmkit.train.metrics.MetricsLogger, "log", log_then_die)
    with pytest.raises(Killed):
        pretrain(cfg, prepared, out)
    monkeypatch.undo()


@pytest.fixture(scope="module")
def straight(tiny_prepared, tmp_path_factory) -> Path:
    """8 fp32 steps without interruption: what every resume must reproduce."""
    out = tmp_path_factory.mktemp("straight") / "run"
    pretrain(load_config("tiny", list(RESUME)), tiny_prepared, out)
    return out


@pytest.fixture(scope="module")
def crashed(tiny_prepared, tmp_path_factory) -> Path:
    """The same run, crashed after its step-6 checkpoint (checkpoints 2, 4, 6); copied by each test."""
    out = tmp_path_factory.mktemp("crashed") / "run"
    mp = pytest.MonkeyPatch()
    try:
        run_until_killed(load_config("tiny", list(RESUME)), tiny_prepared, out, mp, kill_at=7)
    finally:
        mp.undo()
    assert [s for s, _ in list_step_checkpoints(out)] == [2, 4, 6]
    return out


def copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def flip_byte(path: Path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def cut(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def assert_same_run(a: Path, b: Path) -> None:
    la = [(r["step"], r["loss"]) for r in read_metrics(a, "train")]
    lb = [(r["step"], r["loss"]) for r in read_metrics(b, "train")]
    assert la == lb and len(la) == 8
    wa, wb = (load_model(p, which="latest").model.state_dict() for p in (a, b))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


# ----------------------------------------------------------------------------------------------
# Checkpoints: hashes, fallback resume, info


def test_state_json_records_size_and_hash_of_every_file(crashed):
    state = json.loads((step_dir(crashed, 6) / "state.json").read_text())
    assert sorted(state["files"]) == ["model.safetensors", "optimizer.safetensors", "rng.safetensors"]
    for name, rec in state["files"].items():
        assert rec["bytes"] == (step_dir(crashed, 6) / name).stat().st_size and len(rec["sha256"]) == 64


def test_resume_falls_back_to_the_newest_checkpoint_that_verifies_bit_exactly(
        crashed, straight, tiny_prepared, tmp_path, capsys):
    run = copy_run(crashed, tmp_path)
    flip_byte(step_dir(run, 6) / "model.safetensors")  # same size: only the hash sees it
    assert main(["info", str(run)]) == 0 and "step_00000006: ok" in capsys.readouterr().out  # sizes only
    assert main(["info", "--verify", str(run)]) == 0
    assert "step_00000006: damaged: model.safetensors: content hash differs" in capsys.readouterr().out
    with pytest.raises(XlmkitError, match="damaged checkpoint: model.safetensors: content hash"):
        load_checkpoint(step_dir(run, 6), load_model(crashed, which="latest").model)
    capsys.readouterr()
    pretrain(load_config("tiny", list(RESUME)), tiny_prepared, run, resume=True)
    out = capsys.readouterr().out
    assert "skipping damaged checkpoint step_00000006 (model.safetensors: content hash" in out
    assert "resuming from step_00000004" in out
    assert (run / CHECKPOINTS / ".damaged-step_00000006").is_dir()
    assert_same_run(straight, run)


def test_resume_skips_a_cut_optimizer_and_a_truncated_state_json(crashed, straight, tiny_prepared, tmp_path, capsys):
    run = copy_run(crashed, tmp_path)
    cut(step_dir(run, 6) / "optimizer.safetensors")
    cut(step_dir(run, 4) / "state.json")
    assert main(["info", str(run)]) == 0
    info = capsys.readouterr().out
    assert "step_00000006: damaged: optimizer.safetensors: cut short" in info
    assert "step_00000004: damaged: state.json: not valid JSON" in info
    assert "step_00000002: ok" in info
    pretrain(load_config("tiny", list(RESUME)), tiny_prepared, run, resume=True)
    out = capsys.readouterr().out
    assert "step_00000006" in out and "step_00000004" in out and "resuming from step_00000002" in out
    assert_same_run(straight, run)


def test_resume_refuses_in_one_line_when_no_checkpoint_verifies(crashed, tiny_prepared, tmp_path, capsys):
    run = copy_run(crashed, tmp_path)
    for step in (2, 4, 6):
        cut(step_dir(run, step) / "model.safetensors", keep=1000)
    rc = main(["pretrain", "--data", str(tiny_prepared), "--out", str(run), "--resume", *sum(
        (["--set", o] for o in RESUME), [])])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "no checkpoint verifies, cannot resume" in err and "step_00000002: model.safetensors: cut short" in err


def test_checkpoints_written_before_hashes_get_structural_checks(crashed, tmp_path):
    from xlmkit.core.integrity import checkpoint_problem

    run = copy_run(crashed, tmp_path)
    for step in (4, 6):
        state_file = step_dir(run, step) / "state.json"
        state = json.loads(state_file.read_text())
        del state["files"]
        state_file.write_text(json.dumps(state))
    cut(step_dir(run, 6) / "optimizer.safetensors")
    assert checkpoint_problem(step_dir(run, 4)) is None
    assert checkpoint_problem(step_dir(run, 6)).startswith("optimizer.safetensors: cut short or damaged")
    load_checkpoint(step_dir(run, 4), load_model(run, which="latest").model)  # still loads


def test_load_model_falls_back_from_a_damaged_best(crashed, tmp_path, capsys):
    run = copy_run(crashed, tmp_path)
    shutil.copytree(step_dir(run, 4), run / CHECKPOINTS / "best")
    cut(run / CHECKPOINTS / "best" / "model.safetensors")
    loaded = load_model(run, which="best")
    assert loaded.path == step_dir(run, 6) and "damaged" in capsys.readouterr().err
    with pytest.raises(XlmkitError, match="damaged checkpoint: model.safetensors: cut short"):
        load_model(run / CHECKPOINTS / "best")


# ----------------------------------------------------------------------------------------------
# Prepared data


@pytest.fixture
def data(tiny_prepared, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(tiny_prepared, dst)
    return dst


def edit_manifest(root: Path, edit) -> None:
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_manifest_records_a_hash_of_every_shard(tiny_prepared):
    m = json.loads((tiny_prepared / "manifest.json").read_text())
    files = sorted(p.relative_to(tiny_prepared).as_posix() for p in tiny_prepared.rglob("*.bin"))
    assert sorted(m["shards"]) == files and all(len(r["sha256"]) == 64 for r in m["shards"].values())


def test_manifest_without_hashes_still_loads(data):
    edit_manifest(data, lambda m: m.pop("shards"))
    d = PreparedData(data)
    assert len(d.mono("en")) == d.count("mono", "en")
    assert all(status == "ok" for _, status in d.verify())


@pytest.mark.parametrize("damage, message", [
    ("cut_odd", "is not a whole number of uint16 values"),
    ("cut_even", "cut short"),
    ("cut_even_unhashed", "offsets end at"),
    ("count", "sentences but the manifest"),
    ("tokens", "tokens but the manifest"),
    ("vocab", ">= vocab_size 40"),
])
def test_damaged_shards_are_refused_when_opened(data, damage, message):
    ids = data / "mono" / "en.train.ids.bin"
    if damage == "cut_odd":
        cut(ids, keep=ids.stat().st_size - 1)
        edit_manifest(data, lambda m: m.pop("shards"))  # with hashes, the recorded size says it first
    elif damage in ("cut_even", "cut_even_unhashed"):
        cut(ids, keep=ids.stat().st_size - 20)
        if damage == "cut_even_unhashed":
            edit_manifest(data, lambda m: m.pop("shards"))
    elif damage == "count":
        edit_manifest(data, lambda m: m["mono"]["en"]["train"].update(sentences=m["mono"]["en"]["train"]["sentences"] - 3))
    elif damage == "tokens":
        edit_manifest(data, lambda m: m["mono"]["en"]["train"].update(tokens=m["mono"]["en"]["train"]["tokens"] + 1))
    elif damage == "vocab":
        edit_manifest(data, lambda m: (m.update(vocab_size=40), m["tokenizer"].update(vocab_size=40)))
    with pytest.raises(DataError, match=message) as e:
        PreparedData(data).mono("en")
    assert str(data) in str(e.value)


def test_training_stops_in_one_line_on_an_id_the_sample_missed(data, tmp_path, monkeypatch):
    edit_manifest(data, lambda m: (m.update(vocab_size=40), m["tokenizer"].update(vocab_size=40)))
    monkeypatch.setattr(PreparedData, "_check_shard", lambda *a, **k: None)  # as if the sample missed it
    with pytest.raises(XlmkitError, match=r"token id \d+ >= vocab_size 40; the data is damaged"):
        pretrain(load_config("tiny", ["train.max_steps=2"]), data, tmp_path / "r")


def test_info_verify_finds_a_damaged_byte(data, capsys):
    flip_byte(data / "para" / "en-fr.train.fr.ids.bin", at=10)
    assert main(["info", str(data)]) == 0  # the cheap checks do not read the whole shard
    capsys.readouterr()
    assert main(["info", "--verify", str(data)]) == 2
    out, err = capsys.readouterr()
    assert "mono/en.train.ids.bin: ok" in out and "content hash differs" in out
    assert err.count("\n") == 1 and "en-fr.train.fr.ids.bin" in err


# ----------------------------------------------------------------------------------------------
# The sweep: command x bad input -> exit 2, one line on stderr naming the file, no traceback


def _eio_file(tmp_path: Path, name: str) -> Path:
    """A path whose reads fail with EIO: a link to /proc/self/mem (reading its offset 0 is an I/O error)."""
    p = tmp_path / name
    os.symlink("/proc/self/mem", p)
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError:
        return p
    pytest.skip("/proc/self/mem reads do not fail here")


def _hf_dir(tiny_random_run, tmp_path: Path) -> Path:
    pytest.importorskip("transformers")
    out = tmp_path / "hf"
    assert main(["export", str(tiny_random_run), str(out)]) == 0
    return out


CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


@case
def shard_cut_odd(ctx):
    ids = ctx["data"] / "mono" / "fr.train.ids.bin"
    cut(ids, keep=ids.stat().st_size - 1)
    return ["pretrain", "--data", str(ctx["data"]), "--out", str(ctx["tmp"] / "r")], ids


@case
def shard_cut_even(ctx):
    ids = ctx["data"] / "para" / "en-de.train.de.ids.bin"
    cut(ids, keep=ids.stat().st_size - 40)
    return ["pretrain", "--data", str(ctx["data"]), "--out", str(ctx["tmp"] / "r")], ids


@case
def manifest_counts(ctx):
    edit_manifest(ctx["data"], lambda m: m["para"]["en-fr"]["train"].update(sentences=5))
    return ["pretrain", "--data", str(ctx["data"]), "--out", str(ctx["tmp"] / "r")], "en-fr.train.en.offsets.bin"


@case
def manifest_vocab(ctx):
    edit_manifest(ctx["data"], lambda m: m.update(vocab_size=30))
    return ["pretrain", "--data", str(ctx["data"]), "--out", str(ctx["tmp"] / "r")], ctx["data"] / "manifest.json"


@case
def manifest_not_json(ctx):
    (ctx["data"] / "manifest.json").write_text('{"format": "xlmkit-data", ')
    return ["pretrain", "--data", str(ctx["data"]), "--out", str(ctx["tmp"] / "r")], ctx["data"] / "manifest.json"


@case
def manifest_missing_key_info(ctx):
    edit_manifest(ctx["data"], lambda m: m.pop("vocab_size"))
    return ["info", str(ctx["data"])], ctx["data"] / "manifest.json"


@case
def manifest_not_json_info(ctx):
    (ctx["data"] / "manifest.json").write_bytes(b"\xff\xfe garbage")
    return ["info", str(ctx["data"])], ctx["data"] / "manifest.json"


@case
def manifest_wrong_type_info(ctx):
    edit_manifest(ctx["data"], lambda m: m.update(sources=[{"kind": "mono"}]))
    return ["info", str(ctx["data"])], ctx["data"] / "manifest.json"


@case
def config_json_invalid(ctx):
    f = ctx["tmp"] / "cfg.json"
    f.write_text('{"train": {"lr": 1e-3,}}')
    return ["pretrain", "--data", str(ctx["data"]), "--out", str(ctx["tmp"] / "r"), "--config", str(f)], f


@case
def config_toml_nan(ctx):
    f = ctx["tmp"] / "cfg.toml"
    f.write_text('preset = "tiny"\n[train]\nlr = nan\n')
    return ["pretrain", "--data", str(ctx["data"]), "--out", str(ctx["tmp"] / "r"), "--config", str(f)], f


@case
def config_yaml_wrong_type(ctx):
    pytest.importorskip("yaml")
    f = ctx["tmp"] / "cfg.yaml"
    f.write_text("preset: tiny\ntrain:\n  max_steps: [1, 2]\n")
    return ["pretrain", "--data", str(ctx["data"]), "--out", str(ctx["tmp"] / "r"), "--config", str(f)], f


@case
def config_not_utf8(ctx):
    f = ctx["tmp"] / "cfg.toml"
    f.write_bytes(b'preset = "tiny"\n# caf\xe9\n')
    return ["pretrain", "--data", str(ctx["data"]), "--out", str(ctx["tmp"] / "r"), "--config", str(f)], f"{f}:2"


@case
def checkpoint_state_cut(ctx):
    run = ctx["run"]
    for _, p in list_step_checkpoints(run):
        cut(p / "state.json")
    return (["pretrain", "--data", str(ctx["prepared"]), "--out", str(run), "--resume"]
            + sum((["--set", o] for o in RESUME), [])), run / CHECKPOINTS


@case
def checkpoint_header_damaged(ctx):
    run = ctx["run"]
    f = step_dir(run, 6) / "model.safetensors"
    f.write_bytes(b"\xff" * 8 + f.read_bytes()[8:])  # "header too large"
    for step in (2, 4):
        shutil.rmtree(step_dir(run, step))
    return ["embed", "--model", str(run), "--input", str(ctx["text"]), "--lang", "en",
            "--out", str(ctx["tmp"] / "e.npy")], f.parent


@case
def finetune_jsonl_not_utf8(ctx):
    f = ctx["tmp"] / "en.train.jsonl"
    f.write_bytes(b'{"text": "a cat", "label": "x"}\n{"text": "caf\xe9", "label": "y"}\n')
    return ["finetune", "--model", str(ctx["random_run"]), "--train", str(f), "--out", str(ctx["tmp"] / "ft")], f"{f}:2"


@case
def finetune_tsv_not_utf8(ctx):
    f = ctx["tmp"] / "en.train.tsv"
    f.write_bytes(b"text\tlabel\na cat\tx\ncaf\xe9\ty\n")
    return ["finetune", "--model", str(ctx["random_run"]), "--train", str(f), "--out", str(ctx["tmp"] / "ft")], f"{f}:3"


@case
def finetune_empty_train(ctx):
    f = ctx["tmp"] / "en.train.jsonl"
    f.write_text("")
    return ["finetune", "--model", str(ctx["random_run"]), "--train", str(f), "--out", str(ctx["tmp"] / "ft")], f


@case
def finetune_unreadable(ctx):
    f = _eio_file(ctx["tmp"], "en.train.jsonl")
    return ["finetune", "--model", str(ctx["random_run"]), "--train", str(f), "--out", str(ctx["tmp"] / "ft")], f


@case
def embed_not_utf8(ctx):
    f = ctx["tmp"] / "s.txt"
    f.write_bytes(b"a cat\nthe dog\ncaf\xe9\n")
    return ["embed", "--model", str(ctx["random_run"]), "--input", str(f), "--lang", "en",
            "--out", str(ctx["tmp"] / "e.npy")], f"{f}:3"


@case
def embed_unreadable(ctx):
    f = _eio_file(ctx["tmp"], "s.txt")
    return ["embed", "--model", str(ctx["random_run"]), "--input", str(f), "--lang", "en",
            "--out", str(ctx["tmp"] / "e.npy")], f


@case
def prepare_unreadable(ctx):
    f = _eio_file(ctx["tmp"], "en.txt")
    return ["prepare", "--mono", f"en={f}", "--out", str(ctx["tmp"] / "p")], f


@case
def langid_not_utf8(ctx):
    d = ctx["tmp"] / "langid"
    d.mkdir()
    for lang in ("de", "en", "fr"):
        (d / f"{lang}.txt").write_text("a cat\n" * 20)
    (d / "fr.txt").write_bytes(b"le chat\n" * 5 + b"caf\xe9\n")
    return ["langid", "--model", str(ctx["random_run"]), "--data", str(d), "--out", str(ctx["tmp"] / "l")], \
        f"{d / 'fr.txt'}:6"


@case
def import_broken_config(ctx):
    hf = _hf_dir(ctx["random_run"], ctx["tmp"])
    (hf / "config.json").write_text('{"model_type": "xlm", ')
    return ["import", str(hf), str(ctx["tmp"] / "imported")], hf / "config.json"


@case
def import_truncated_weights(ctx):
    hf = _hf_dir(ctx["random_run"], ctx["tmp"])
    cut(hf / "model.safetensors")
    return ["import", str(hf), str(ctx["tmp"] / "imported")], hf / "model.safetensors"


@case
def evaluate_conllu_not_utf8(ctx):
    d = ctx["tmp"] / "ud"
    d.mkdir()
    f = d / "en_pud-ud-test.conllu"
    f.write_bytes(b"# sent_id = 1\n1\tcat\t_\tNOUN\t_\t_\t0\troot\t_\t_\n2\tcaf\xe9\t_\tNOUN\t_\t_\t0\troot\t_\t_\n\n")
    return ["evaluate", "--model", str(ctx["random_run"]), "--task", "token", "--data", str(d), "--train-lang", "en",
            "--out", str(ctx["tmp"] / "ev")], f"{f}:3"


@case
def retrieve_not_utf8(ctx):
    d = ctx["tmp"] / "tatoeba"
    d.mkdir()
    (d / "tatoeba.fra-eng.eng").write_text("a cat\nthe dog\n")
    f = d / "tatoeba.fra-eng.fra"
    f.write_bytes(b"un chat\ncaf\xe9\n")
    return ["retrieve", "--model", str(ctx["random_run"]), "--data", str(d), "--out", str(ctx["tmp"] / "rt")], f"{f}:2"


@case
def train_tokenizer_unreadable(ctx):
    f = _eio_file(ctx["tmp"], "fr.txt")
    return ["train-tokenizer", "--mono", f"fr={f}", "--out", str(ctx["tmp"] / "tk")], f


@case
def export_cut_checkpoint(ctx):
    run = ctx["run"]
    cut(step_dir(run, 6) / "model.safetensors")
    for step in (2, 4):
        shutil.rmtree(step_dir(run, step))
    return ["export", str(run), str(ctx["tmp"] / "hf")], step_dir(run, 6)


@case
def info_run_config_not_json(ctx):
    run = ctx["run"]
    (run / "config.json").write_text('{"preset": ')
    return ["info", str(run)], run / "config.json"


@case
def run_tokenizer_damaged(ctx):
    run = ctx["tmp"] / "model"
    shutil.copytree(ctx["random_run"], run)
    (run / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    return ["embed", "--model", str(run), "--input", str(ctx["text"]), "--lang", "en",
            "--out", str(ctx["tmp"] / "e.npy")], run / "tokenizer.json"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_naming_the_file(name, tiny_prepared, crashed, tiny_random_run, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_prepared, data)
    text = tmp_path / "sents.txt"
    text.write_text("a cat\nthe dog\n")
    ctx = {"data": data, "prepared": tiny_prepared, "tmp": tmp_path, "random_run": tiny_random_run,
           "run": copy_run(crashed, tmp_path) if name.startswith(("checkpoint", "export", "info_run")) else None, "text": text}
    argv, names = CASES[name](ctx)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.rsplit("\r", 1)[-1].strip("\n").split("\n")  # after a progress bar that cleared itself
    assert len(lines) == 1 and lines[0].startswith(f"xlmkit {argv[0]}: error: "), err
    assert str(names) in lines[0], lines[0]


@pytest.mark.parametrize("setting", ["train.max_steps=nan", "train.max_steps=inf", "train.lr=nan", "train.lr=-inf",
                                     "train.warmup_steps=-5", "train.batch_size=-1", "train.keep_last=0",
                                     "train.max_steps=abc", "train.compile=maybe", "finetune.epochs=0",
                                     "model.dropout=nan", "train.seed=-1"])
def test_bad_settings_are_one_line(setting, tmp_path, capsys):
    rc = main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--set", setting])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1
    assert setting.split("=")[0] in err, err
