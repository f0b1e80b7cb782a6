"""The README's main job, `xlmkit demo`, on its built-in corpus (a few steps)."""

import json

import pytest

from xlmkit.cli.main import main

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_demo_prepares_pretrains_and_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "6", "--set", "train.eval_every=3"]) == 0
    printed = capsys.readouterr().out
    assert "validation perplexity, step 0 -> step 6" in printed
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["languages"] == ["de", "en", "fr"] and manifest["pairs"] == ["en-de", "en-fr"]
    valid = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()
             if '"valid"' in line]
    assert [v["step"] for v in valid] == [0, 3, 6]
    for lang in ("de", "en", "fr", "en-de", "en-fr"):
        assert valid[-1][f"ppl/{lang}"] < valid[0][f"ppl/{lang}"]  # it learns something in 6 steps
    assert (out / "run" / "checkpoints" / "best" / "model.safetensors").is_file()

    # running the main job again just works: data is up to date, the demo's run starts afresh
    assert main(["demo", "--out", str(out), "--steps", "2"]) == 0
    assert "replacing the earlier demo run" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2
