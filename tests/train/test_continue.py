"""Continued pretraining: `xlmkit prepare --tokenizer RUN` reuses an (imported) run's tokenizer and ids,
masking respects special ids anywhere in the vocabulary, `xlmkit pretrain --init RUN` starts from the
run's weights. Tiny random transformers models only."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from test_hf import save_hf_xlm, save_hf_xlmr

from xlmkit.train.batches import PretrainSampler, VocabSpec
from xlmkit.cli.main import main as cli_main
from xlmkit.core.config import load_config
from xlmkit.data.format import PreparedData
from xlmkit.train.objectives import mask_tokens, maskable_positions

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
SMALL = ["--config", "tiny", "--set", "train.bptt=32", "--set", "train.tlm_max_len=40", "--set", "train.batch_size=8",
         "--set", "train.eval_batches=2"]


@pytest.fixture(scope="module")
def xlmr_continued(tmp_path_factory, synthetic_corpus):
    """An imported random XLM-R (<mask> is its last id), the synthetic corpus prepared with its tokenizer,
    and a 3-step run started from it."""
    root = tmp_path_factory.mktemp("continue")
    hf_dir = save_hf_xlmr(root, "hf_xlmr", seed=3)
    run = root / "imported"
    assert cli_main(["import", str(hf_dir), str(run), "--config", "tiny"]) == 0
    data = root / "data"
    assert cli_main(["prepare", "--data-dir", str(synthetic_corpus), "--out", str(data), "--tokenizer", str(run),
                     "--quiet", "--config", "tiny", "--set", "prepare.max_lines=400"]) == 0
    out = root / "continued"
    assert cli_main(["pretrain", "--data", str(data), "--out", str(out), "--init", str(run), *SMALL,
                     "--set", "train.max_steps=3", "--set", "train.log_every=1"]) == 0
    return run, data, out


def test_prepare_reuses_the_runs_tokenizer_and_ids(xlmr_continued):
    run, data_dir, _ = xlmr_continued
    vocab = json.loads((run / "vocab.json").read_text())
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["specials"] == vocab["specials"]
    assert manifest["vocab_size"] == vocab["vocab_size"]
    assert vocab["specials"]["mask"] == vocab["vocab_size"] - 1  # XLM-R: <mask> is the last id
    assert set(vocab["special_ids"]) <= set(manifest["special_ids"])
    assert vocab["specials"]["mask"] in manifest["special_ids"]
    # no lang embeddings in XLM-R: the new languages need not be known, and the run's own ids are kept
    assert manifest["lang2id"]["xx"] == vocab["lang2id"]["xx"]
    assert {"en", "fr", "de"} <= set(manifest["lang2id"])
    assert (data_dir / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()
    data = PreparedData(data_dir)
    ids = np.asarray(data.mono("en", "train").ids)
    offsets = np.asarray(data.mono("en", "train").offsets)
    assert (ids[offsets[1:] - 1] == vocab["specials"]["eos"]).all()  # every sentence ends with the run's </s>


def test_sampler_never_predicts_or_draws_special_ids(xlmr_continued):
    _, data_dir, _ = xlmr_continued
    data = PreparedData(data_dir)
    special = set(data.manifest["special_ids"])
    unk, mask = data.specials.unk, data.specials.mask
    cfg = load_config("tiny", ["train.bptt=32", "train.tlm_max_len=40", "train.random_prob=0.5",
                               "train.mask_prob=0.3", "train.word_pred=0.5"]).train
    vocab = VocabSpec.from_data(data)
    assert mask in vocab.special_ids and mask not in set(vocab.replacement_ids.tolist())
    sampler = PretrainSampler(data, cfg, seed=0)
    n_random = 0
    for _ in range(10):
        for batch in sampler.next_batches():
            if batch.objective == "clm":
                continue
            assert not (set(batch.targets.tolist()) & (special - {unk}))  # <unk> is predicted, as in XLM
            inputs = batch.input_ids[batch.pred_mask]
            replaced = inputs[(inputs != mask) & (inputs != batch.targets)]
            n_random += len(replaced)
            assert not (set(replaced.tolist()) & special)
    assert n_random > 50


def test_init_starts_from_the_imported_weights(xlmr_continued):
    from xlmkit.train.checkpoint import load_model
    from xlmkit.core.config import config_from_dict
    from xlmkit.core.runtime import DistInfo
    from xlmkit.train.pretrain import PretrainingLoss, build_eval_sets, evaluate

    run, data_dir, out = xlmr_continued
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in train)
    step0 = next(r for r in records if r["split"] == "valid" and r["step"] == 0)
    cfg = config_from_dict(json.loads((out / "config.json").read_text()))
    imported = load_model(run)
    assert cfg.model == imported.config.model  # the model config comes from the init run, not the preset
    expected = evaluate(PretrainingLoss(imported.model), build_eval_sets(PreparedData(data_dir), cfg.train),
                        cfg.train, torch.device("cpu"), DistInfo())
    assert step0["mean_ppl"] == pytest.approx(expected["mean_ppl"], rel=1e-5)
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["specials"] == imported.vocab["specials"] and vocab["sentence_wrap"] == imported.vocab["sentence_wrap"]
    trained = load_model(out, which="latest").model.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in imported.model.state_dict().items())


def test_init_refuses_data_of_another_vocabulary(xlmr_continued, tiny_prepared, tmp_path, capsys):
    run, _, _ = xlmr_continued
    code = cli_main(["pretrain", "--data", str(tiny_prepared), "--out", str(tmp_path / "r"), "--init", str(run),
                     *SMALL, "--set", "train.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "vocab_size" in err and "--tokenizer" in err


def test_unknown_language_with_language_embeddings_is_refused(tmp_path, synthetic_corpus, capsys):
    hf_dir = save_hf_xlm(tmp_path, "hf_xlm", seed=1)  # languages ar, de, en; the corpus has fr too
    run = tmp_path / "imported"
    assert cli_main(["import", str(hf_dir), str(run), "--config", "tiny"]) == 0
    code = cli_main(["prepare", "--data-dir", str(synthetic_corpus), "--out", str(tmp_path / "data"),
                     "--tokenizer", str(run / "tokenizer.json"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "fr" in err and "ar, de, en" in err and "language embeddings" in err
    assert not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------------------------
# Masking with special ids anywhere in the vocabulary (unit)


def test_maskable_positions_with_arbitrary_special_ids():
    # ids 0..3 specials, 20 and 29 specials among the subwords (e.g. XLM-R's last-id <mask>)
    ids = np.array([[0, 5, 20, 3, 29, 7, 1, 2]])
    special = np.array([20, 29])
    assert maskable_positions(ids, 4, 3, special).tolist() == [[False, True, False, True, False, True, False, False]]
    assert maskable_positions(ids, 4, None, special).tolist()[0][3] is False
    assert maskable_positions(ids, 4, 3).tolist() == maskable_positions(ids, 4, 3, None).tolist()


def test_random_replacements_never_draw_a_special_id():
    rng = np.random.default_rng(0)
    n_vocab, special = 30, np.array([20, 29])
    ids = rng.integers(4, n_vocab, size=(64, 32))
    pool = np.setdiff1d(np.arange(4, n_vocab), special)
    maskable = maskable_positions(ids, 4, 3, special)
    corrupted, pred = mask_tokens(ids, rng, word_pred=0.5, mask_prob=0.0, random_prob=1.0, mask_id=29,
                                  n_vocab=n_vocab, first_normal_id=4, maskable=maskable, replacement_ids=pool)
    assert not np.isin(ids[pred], special).any()
    drawn = corrupted[pred]
    assert len(drawn) > 500 and not np.isin(drawn, special).any() and drawn.min() >= 4
