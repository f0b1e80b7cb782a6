"""`xlmkit train-mt` / `translate` / `evaluate-mt`: the translation task on the training engine."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xlmkit.cli.main import main
from xlmkit.core.config import ConfigError, load_config
from xlmkit.tasks.translation import resolve_steps, scheduled, trained_directions, train_translation
from xlmkit.train.checkpoint import list_step_checkpoints, load_model
from xlmkit.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

FAST = ("train.precision=fp32", "train.device=cpu", "train.batch_size=8", "mt.eval_sentences=8", "mt.max_len=32",
        "train.log_every=1", "train.warmup_steps=2")


def config(*overrides):
    return load_config("tiny", [*FAST, *overrides])


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def pretrained(tiny_prepared, tmp_path_factory) -> Path:
    """A few steps of MLM + TLM on the same data: a run to initialise from, and one without a decoder."""
    from xlmkit.train.pretrain import pretrain

    run = tmp_path_factory.mktemp("pre") / "run"
    pretrain(load_config("tiny", ["train.max_steps=3", "train.eval_every=3", "train.eval_batches=1",
                                  "train.precision=fp32", "train.device=cpu"]), tiny_prepared, run)
    return run


@pytest.fixture(scope="module")
def mt_run(tiny_prepared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mt") / "run"
    train_translation(config("train.max_steps=4", "train.eval_every=4", "mt.mt_steps=en-fr,fr-en"), tiny_prepared,
                      out, log=lambda s: None)
    return out


def test_lambda_schedules_follow_xlm():
    assert scheduled("1", 5) == 1.0 and scheduled("0.5", 10**6) == 0.5
    spec = "0:1,100:0.1,200:0"
    assert [scheduled(spec, s) for s in (0, 50, 100, 150, 200, 10**6)] == pytest.approx([1, 0.55, 0.1, 0.05, 0, 0])
    with pytest.raises(ConfigError, match="lambda_ae"):
        load_config("tiny", ["mt.lambda_ae=5:1,0:2"])


def test_step_mix_resolves_against_the_data(tiny_prepared):
    from xlmkit.data.format import PreparedData

    data = PreparedData(tiny_prepared)
    steps = resolve_steps(config("mt.ae_steps=en", "mt.bt_steps=fr-de").mt, data)
    assert {d.name for d in steps["mt"]} == {"en-fr", "fr-en", "en-de", "de-en"}
    assert steps["ae"] == ["en"] and [d.name for d in steps["bt"]] == ["fr-de"]
    # bt fr-de trains de -> fr on the model's own fr -> de translations: both directions are learnt
    assert set(trained_directions(steps)) == {"en-fr", "fr-en", "en-de", "de-en", "fr-de", "de-fr"}
    with pytest.raises(ConfigError, match="no parallel text for fr-de"):
        resolve_steps(config("mt.mt_steps=fr-de").mt, data)
    with pytest.raises(ConfigError, match="not a direction"):
        resolve_steps(config("mt.mt_steps=en").mt, data)
    with pytest.raises(ConfigError, match="no translation objective"):
        resolve_steps(config("mt.mt_steps=none").mt, data)


def test_run_layout_encoder_loads_as_a_pretrained_model(mt_run):
    ckpt = mt_run / "checkpoints" / "best"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "decoder.safetensors").is_file()
    state = json.loads((ckpt / "state.json").read_text())
    assert state["task"] == {"task": "translation", "directions": ["en-fr", "fr-en"]}
    enc = load_model(mt_run)  # every encoder command reads an MT run
    assert enc.model.cfg.dim == 64
    dec = load_file(str(ckpt / "decoder.safetensors"))
    assert all(k.startswith("decoder.") for k in dec) and not any("token_embeddings" in k for k in dec)
    valid = read_metrics(mt_run / "metrics.jsonl", "valid")
    assert {"bleu/en-fr", "chrf/fr-en", "ppl/en-fr", "mean_bleu"} <= set(valid[-1])


def test_train_mt_resume_is_exact(tiny_prepared, tmp_path, monkeypatch):
    """8 steps straight == 4 steps, a crash, then --resume (fp32, dropout on, mt + ae + bt): every
    logged loss and every final weight identical."""
    import xlmkit.train.metrics

    cfg = config("train.max_steps=8", "train.save_every=4", "train.eval_every=100", "mt.mt_steps=en-fr",
                 "mt.ae_steps=en,fr", "mt.bt_steps=fr-en", "mt.eval_sentences=0", "mt.lambda_ae=0:1,6:0.5")
    train_translation(cfg, tiny_prepared, tmp_path / "straight", log=lambda s: None)
    real_log = xlmkit.train.metrics.MetricsLogger.log

    def log_then_die(self, record):
        if record["step"] == 6 and record["split"] == "train":
            raise Killed
        real_log(self, record)

    monkeypatch.setattr(xlmkit.train.metrics.MetricsLogger, "log", log_then_die)
    with pytest.raises(Killed):
        train_translation(cfg, tiny_prepared, tmp_path / "resumed", log=lambda s: None)
    monkeypatch.undo()
    train_translation(cfg, tiny_prepared, tmp_path / "resumed", resume=True, log=lambda s: None)
    a = [(r["step"], r["loss"], r.get("loss_bt_fr-en")) for r in read_metrics(tmp_path / "straight/metrics.jsonl", "train")]
    b = [(r["step"], r["loss"], r.get("loss_bt_fr-en")) for r in read_metrics(tmp_path / "resumed/metrics.jsonl", "train")]
    assert a == b and len(a) == 8 and any(x[2] is not None for x in a)
    (_, ca), (_, cb) = list_step_checkpoints(tmp_path / "straight")[-1], list_step_checkpoints(tmp_path / "resumed")[-1]
    for f in ("model.safetensors", "decoder.safetensors"):
        wa, wb = load_file(str(ca / f)), load_file(str(cb / f))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f


def test_init_from_a_pretrained_run_copies_both_halves(pretrained, tiny_prepared, tmp_path):
    """XLM's MT init: the encoder as pretrained, the decoder's self-attention and FFN copied from it."""
    from xlmkit.tasks.translation import build_model
    from xlmkit.train.checkpoint import resolve_checkpoint

    run = pretrained
    pre = load_model(run)
    model = build_model(load_config(str(run / "config.json")), resolve_checkpoint(run, "best"))
    assert torch.equal(model.encoder.layers[0].ffn.lin1.weight, pre.model.layers[0].ffn.lin1.weight)
    assert torch.equal(model.decoder.layers[1].ffn.lin1.weight, pre.model.layers[1].ffn.lin1.weight)
    out = train_translation(config("train.max_steps=2", "train.eval_every=2", "mt.mt_steps=en-fr"), tiny_prepared,
                            tmp_path / "mt", init=run, log=lambda s: None)
    assert out["step"] == 2 and "bleu/en-fr" in out


def test_translate_keeps_one_line_per_input_line(mt_run, tmp_path, capsys):
    src = tmp_path / "in.en"
    src.write_text("the cat sees the dog .\n\n   \nthe dog runs .\n", encoding="utf-8")
    out = tmp_path / "out.fr"
    assert main(["translate", "--model", str(mt_run), "--from", "en", "--to", "fr", "--input", str(src),
                 "--output", str(out), "--beam", "2", "--precision", "fp32"]) == 0
    lines = out.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 5 and lines[-1] == ""  # 4 lines, each ended
    assert lines[1] == "" and lines[2] == ""


def test_evaluate_mt_writes_a_table(mt_run, tmp_path, capsys):
    src, ref = tmp_path / "t.en", tmp_path / "t.fr"
    src.write_text("the cat sees the dog .\nthe dog runs .\n", encoding="utf-8")
    ref.write_text("le chat voit le chien .\nle chien court .\n", encoding="utf-8")
    assert main(["evaluate-mt", "--model", str(mt_run), "--from", "en", "--to", "fr", "--src", str(src),
                 "--ref", str(ref), "--beam", "1", "--precision", "fp32"]) == 0
    table = json.loads((mt_run / "eval" / "mt" / "en-fr.json").read_text())
    assert table["rows"][0]["direction"] == "en-fr" and "bleu" in table["rows"][0]
    assert "BLEU" in capsys.readouterr().out


def test_translation_bad_input_gets_one_line(mt_run, pretrained, tmp_path, capsys):
    good = tmp_path / "in.en"
    good.write_text("the cat .\n", encoding="utf-8")
    bad = tmp_path / "bad.en"
    bad.write_bytes(b"the cat .\nthe \xff dog .\n")
    long = tmp_path / "long.en"
    long.write_text(" ".join(["the cat sees the dog ."] * 40) + "\nthe dog .\n", encoding="utf-8")
    base = ["translate", "--model", str(mt_run), "--precision", "fp32", "--beam", "1"]
    cases = [
        (base + ["--from", "en", "--to", "xx", "--input", str(good)], "unknown language 'xx'"),
        (base + ["--from", "en", "--to", "de", "--input", str(good)], "not trained to translate en-de"),
        (base + ["--from", "en", "--to", "fr", "--input", str(bad)], f"{bad}:2: invalid UTF-8"),
        (["translate", "--model", str(pretrained), "--from", "en", "--to", "fr", "--input", str(good)],
         "not a translation run"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    out = tmp_path / "long.fr"
    assert main(base + ["--from", "en", "--to", "fr", "--input", str(long), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "1 of 2 lines" in err and "were cut" in err
    assert len(out.read_text().splitlines()) == 2


def test_a_run_without_a_decoder_is_refused_by_evaluate_mt(pretrained, tmp_path, capsys):
    f = tmp_path / "x"
    f.write_text("a\n")
    assert main(["evaluate-mt", "--model", str(pretrained), "--from", "en", "--to", "fr", "--src", str(f),
                 "--ref", str(f)]) == 2
    assert "not a translation run" in capsys.readouterr().err


def test_copied_run_dirs_stay_loadable(mt_run, tmp_path):
    """A translation run moved elsewhere translates the same (tokenizer path relative to the run)."""
    from xlmkit.tasks.translation import load_translator, translate

    moved = tmp_path / "moved"
    shutil.copytree(mt_run, moved)
    a = translate(load_translator(mt_run, precision="fp32"), ["the cat ."], "en", "fr", beam_size=1).lines
    b = translate(load_translator(moved, precision="fp32"), ["the cat ."], "en", "fr", beam_size=1).lines
    assert a == b


def test_export_of_a_translation_run_translates_the_same(tiny_prepared, tmp_path, capsys):
    """`xlmkit export MT_RUN`: an XLM-R-style translation model (no language embeddings) becomes
    transformers' EncoderDecoderModel with the same greedy tokens; an XLM one is refused, naming why."""
    pytest.importorskip("transformers")
    from transformers import EncoderDecoderModel

    from xlmkit.model.generate import GenerationConfig
    from xlmkit.tasks.translation import load_translator, translate_ids

    run = tmp_path / "mt"
    train_translation(config("train.max_steps=3", "train.eval_every=3", "mt.mt_steps=en-fr", "mt.eval_sentences=0",
                             "model.use_lang_emb=false", "model.head_transform=true"), tiny_prepared, run,
                      log=lambda s: None)
    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    hf = EncoderDecoderModel.from_pretrained(tmp_path / "hf").eval()
    tr = load_translator(run, precision="fp32")
    sents = [tr.framing.frame(tr.tokenizer.encode(s, add_special_tokens=False).ids)
             for s in ("the cat sees the dog .", "the dog runs .")]
    n = 6
    ours = translate_ids(tr.model, sents, None, None, tr.framing, GenerationConfig(max_len_a=0, max_len_b=n + 1), 8,
                         torch.device("cpu"))
    for src, mine in zip(sents, ours):
        ids = torch.tensor([src.tolist()])
        row = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n + 1, num_beams=1,
                          do_sample=False)[0].tolist()[1:]
        eos = tr.framing.eos_id
        row = row[: row.index(eos)] if eos in row else row
        assert mine == row[:n] and (len(mine) == n or len(row) == len(mine))
    assert main(["export", str(tmp_path / "mt_xlm_missing"), str(tmp_path / "x")]) == 2  # no such run
    capsys.readouterr()


def test_export_refuses_a_translation_run_with_language_embeddings(mt_run, tmp_path, capsys):
    assert main(["export", str(mt_run), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "cannot export this translation model" in err and "use_lang_emb" in err


@pytest.fixture(scope="module")
def clm_run(tiny_prepared, tmp_path_factory) -> Path:
    from xlmkit.train.pretrain import pretrain

    run = tmp_path_factory.mktemp("clm") / "run"
    pretrain(load_config("tiny", ["train.max_steps=30", "train.eval_every=30", "train.eval_batches=1",
                                  "train.precision=fp32", "train.device=cpu", "train.mlm_steps=none",
                                  "train.tlm_steps=none", "train.clm_steps=en", "train.lr=3e-3"]), tiny_prepared, run)
    return run


def test_generate_continues_prompts_greedy_and_sampled(clm_run, capsys):
    from xlmkit.tasks.translation import generate_texts

    greedy = generate_texts(clm_run, ["the cat", "the dog sees"], "en", max_new_tokens=8, precision="fp32")
    assert len(greedy) == 2 and greedy == generate_texts(clm_run, ["the cat", "the dog sees"], "en",
                                                         max_new_tokens=8, precision="fp32")
    # top-k 1 sampling is greedy; a seed makes sampling reproducible
    assert generate_texts(clm_run, ["the cat"], "en", 8, sample=True, top_k=1, precision="fp32") == greedy[:1]
    a = generate_texts(clm_run, ["the cat"] * 3, "en", 8, sample=True, seed=1, precision="fp32")
    assert len(set(a)) > 1 and any(a)  # three draws of one generator differ
    assert a == generate_texts(clm_run, ["the cat"] * 3, "en", 8, sample=True, seed=1, precision="fp32")
    assert main(["generate", "--model", str(clm_run), "--lang", "en", "--prompt", "the cat", "--prompt", "a bird",
                 "--max-new-tokens", "5", "--precision", "fp32"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # one line per prompt, empty or not
    assert main(["generate", "--model", str(clm_run), "--lang", "xx", "--prompt", "the cat"]) == 2
    assert "xx" in capsys.readouterr().err
