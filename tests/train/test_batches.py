"""Pretraining batches: step mix, streams, TLM pairs, language sampling, exact resume, ranks, eval."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xlmkit.train.batches import Batch, PretrainSampler, VocabSpec, eval_batches
from xlmkit.core.config import ConfigError, TrainConfig
from xlmkit.data.format import FORMAT, FORMAT_VERSION, SPECIAL_TOKENS, SPLITS, PreparedData
from xlmkit.core.errors import DataError
from xlmkit.train.objectives import maskable_positions, n_predictions, stream_chunks, stream_layout, tlm_pair_layout

V = 300
PAD, EOS, UNK, MASK = 1, 2, 3, 4


def write_prepared(root: Path, mono: dict, para: dict, vocab_size: int = V, dtype: str = "uint16") -> Path:
    """Write the xlmkit.data.format format directly from lists of token-id lists.

    mono: {lang: {split: [[ids], ...]}}; para: {"a-b": {split: ([[ids of a]], [[ids of b]])}}."""
    languages = sorted(set(mono) | {lang for pair in para for lang in pair.split("-")})
    (root / "mono").mkdir(parents=True, exist_ok=True)
    (root / "para").mkdir(parents=True, exist_ok=True)

    def write(stem: Path, sentences) -> dict:
        ids, offsets = [], [0]
        for s in sentences:
            ids.extend(s)
            ids.append(EOS)
            offsets.append(len(ids))
        np.asarray(ids, dtype=dtype).tofile(f"{stem}.ids.bin")
        np.asarray(offsets, dtype=np.int64).tofile(f"{stem}.offsets.bin")
        return {"sentences": len(sentences), "tokens": sum(map(len, sentences)),
                "unk": sum(int(np.sum(np.asarray(s) == UNK)) for s in sentences)}

    mono_info, para_info = {}, {}
    for lang, splits in mono.items():
        mono_info[lang] = {split: write(root / "mono" / f"{lang}.{split}", splits.get(split, [])) for split in SPLITS}
    for pair, splits in para.items():
        a, b = pair.split("-")
        para_info[pair] = {}
        for split in SPLITS:
            side_a, side_b = splits.get(split, ([], []))
            ia = write(root / "para" / f"{pair}.{split}.{a}", side_a)
            ib = write(root / "para" / f"{pair}.{split}.{b}", side_b)
            para_info[pair][split] = {"sentences": ia["sentences"], "tokens": {a: ia["tokens"], b: ib["tokens"]},
                                      "unk": {a: ia["unk"], b: ib["unk"]}}
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "languages": languages, "pairs": sorted(para),
        "lang2id": {lang: i for i, lang in enumerate(languages)}, "vocab_size": vocab_size, "dtype": dtype,
        "specials": dict(zip(("bos", "pad", "eos", "unk", "mask"), range(len(SPECIAL_TOKENS)))),
        "lang_tokens": {lang: len(SPECIAL_TOKENS) + i for i, lang in enumerate(languages)},
        "mono": mono_info, "para": para_info, "sources": {}, "config": {}, "tokenizer": {},
    }
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


def _sentences(rng: np.random.Generator, n: int, first: int, with_unk: bool = True) -> list[list[int]]:
    out = []
    for _ in range(n):
        s = rng.integers(first, V, size=int(rng.integers(3, 13))).tolist()
        if with_unk and rng.random() < 0.1:
            s[0] = UNK
        out.append(s)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> PreparedData:
    """en (900 train sentences) and fr (100) monolingual, en-fr parallel (50 train pairs)."""
    rng = np.random.default_rng(0)
    first = len(SPECIAL_TOKENS) + 2  # two language tags
    mono = {
        "en": {"train": _sentences(rng, 900, first), "valid": _sentences(rng, 60, first), "test": []},
        "fr": {"train": _sentences(rng, 100, first), "valid": _sentences(rng, 30, first)},
    }
    para = {"en-fr": {"train": (_sentences(rng, 50, first), _sentences(rng, 50, first)),
                      "valid": (_sentences(rng, 10, first), _sentences(rng, 10, first))}}
    return PreparedData(write_prepared(tmp_path_factory.mktemp("prepared"), mono, para))


def _cfg(**kw) -> TrainConfig:
    kw = {"bptt": 8, "batch_size": 4, "tlm_max_len": 24, **kw}
    return TrainConfig(**kw)


def _originals(b: Batch) -> torch.Tensor:
    """Uncorrupted ids of an mlm / tlm batch: the inputs with the targets put back."""
    ids = b.input_ids.clone()
    ids[b.pred_mask] = b.targets
    return ids


def _chunk_set(data: PreparedData, lang: str, bptt: int, split: str = "train") -> set[tuple[int, ...]]:
    stream = data.mono(lang, split).ids
    n, _ = stream_layout(len(stream), bptt)
    return {tuple(r) for r in stream_chunks(stream, np.arange(n), bptt).tolist()}


def _same(a: Batch, b: Batch) -> bool:
    return (a.objective, a.task) == (b.objective, b.task) and all(
        torch.equal(getattr(a, f), getattr(b, f))
        for f in ("input_ids", "langs", "positions", "attention_mask", "pred_mask", "targets"))


# ----------------------------------------------------------------------------------------------
# Step mix


def test_vocab_spec_comes_from_the_manifest(data):
    v = VocabSpec.from_data(data)
    assert (v.n_vocab, v.first_normal_id, v.pad_id, v.eos_id, v.unk_id, v.mask_id) == (V, 7, 1, 2, 3, 4)
    assert v.lang2id == {"en": 0, "fr": 1}


def test_default_step_mix(data):
    s = PretrainSampler(data, _cfg(), seed=0)
    assert s.objectives == ["mlm", "tlm"]  # clm is off by default
    assert [t.name for t in s.tasks["mlm"]] == ["en", "fr"] and [t.name for t in s.tasks["tlm"]] == ["en-fr"]
    batches = s.next_batches()
    assert [b.objective for b in batches] == ["mlm", "tlm"]
    assert batches[0].task in ("en", "fr") and batches[1].task == "en-fr"
    assert not batches[0].causal

    s = PretrainSampler(data, _cfg(mlm_steps=("eng",), tlm_steps=("none",), clm_steps=()), seed=0)
    assert s.objectives == ["mlm", "clm"]
    assert [t.name for t in s.tasks["mlm"]] == ["en"] and [t.name for t in s.tasks["clm"]] == ["en", "fr"]


@pytest.mark.parametrize("overrides, message", [
    (dict(mlm_steps=("de",)), "train.mlm_steps: no monolingual data for language 'de'.*have: en, fr"),
    (dict(mlm_steps=("en-fr",)), "train.mlm_steps: 'en-fr' is a language pair"),
    (dict(mlm_steps=("e1",)), "train.mlm_steps: not a language code"),
    (dict(tlm_steps=("en-de",)), "train.tlm_steps: no parallel data for pair 'en-de'.*have: en-fr"),
    (dict(tlm_steps=("en",)), "train.tlm_steps: not a language pair.*mlm_steps"),
    (dict(clm_steps=("none", "en")), "train.clm_steps: 'none' disables the objective and cannot be combined"),
    (dict(clm_steps=("xx",)), "train.clm_steps: no monolingual data for language 'xx'"),
    (dict(mlm_steps=("none",), tlm_steps=("none",)), "no pretraining objective is active"),
])
def test_bad_step_names_give_clear_errors(data, overrides, message):
    with pytest.raises(DataError, match=message):
        PretrainSampler(data, _cfg(**overrides), seed=0)


def test_batch_size_must_split_over_ranks(data):
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        PretrainSampler(data, _cfg(batch_size=6), seed=0, rank=0, world_size=4)


# ----------------------------------------------------------------------------------------------
# Batch contents


def test_mlm_batch_is_a_masked_padding_free_stream_chunk(data):
    cfg = _cfg(tlm_steps=("none",), batch_size=8)
    s = PretrainSampler(data, cfg, seed=1)
    for _ in range(5):
        (b,) = s.next_batches()
        assert b.objective == "mlm" and b.input_ids.shape == (8, 8)
        assert b.input_ids.dtype == b.langs.dtype == b.positions.dtype == b.targets.dtype == torch.long
        assert b.attention_mask.dtype == b.pred_mask.dtype == torch.bool
        assert b.attention_mask.all() and b.n_tokens == 64  # no padding at all
        assert (b.langs == data.lang2id[b.task]).all()
        assert (b.positions == torch.arange(8)).all()
        original = _originals(b)
        assert not (original == PAD).any()
        chunks = _chunk_set(data, b.task, 8)
        assert all(tuple(r) in chunks for r in original.tolist())  # each row is a chunk of the stream
        maskable = maskable_positions(original.numpy(), 7, UNK)
        assert b.n_pred == n_predictions(int(maskable.sum()), 0.15)
        assert not (b.pred_mask & ~torch.from_numpy(maskable)).any()
        assert (b.targets >= 7).logical_or(b.targets == UNK).all()  # never a special or a language tag


def test_tlm_batch_layout(data):
    cfg = _cfg(mlm_steps=("none",), batch_size=8, tlm_max_len=16)
    s = PretrainSampler(data, cfg, seed=2)
    side_en, side_fr = data.para("en-fr", "train")
    layouts = [tlm_pair_layout(side_en.sentence(i), side_fr.sentence(i), 0, 1, EOS, 16)[0].tolist()
               for i in range(len(side_en))]
    for _ in range(4):
        (b,) = s.next_batches()
        assert b.objective == "tlm" and b.task == "en-fr"
        lengths = b.attention_mask.sum(dim=1)
        assert b.input_ids.shape[1] == int(lengths.max()) <= 16  # padded to the longest, at most tlm_max_len
        assert (b.input_ids[~b.attention_mask] == PAD).all()
        assert not (b.pred_mask & ~b.attention_mask).any()
        original = _originals(b)
        for r in range(8):
            n = int(lengths[r])
            row = original[r, :n].tolist()
            assert row in layouts
            eos_at = [i for i, t in enumerate(row) if t == EOS]
            assert eos_at[0] == 0 and eos_at[-1] == n - 1
            second = next(i for i in eos_at[1:] if row[i + 1] == EOS) + 1  # "</s> </s>" boundary
            assert b.langs[r, :second].eq(0).all() and b.langs[r, second:n].eq(1).all()
            assert b.positions[r, :n].tolist() == list(range(second)) + list(range(n - second))


def test_tlm_reverse_pair_order(data):
    (b,) = PretrainSampler(data, _cfg(mlm_steps=("none",), tlm_steps=("fr-en",)), seed=0).next_batches()
    assert b.task == "fr-en"
    assert b.langs[0, 0] == data.lang2id["fr"] and b.langs[0, int(b.attention_mask[0].sum()) - 1] == data.lang2id["en"]


def test_clm_batch_predicts_the_next_token(data):
    (b,) = PretrainSampler(data, _cfg(mlm_steps=("none",), tlm_steps=("none",), clm_steps=("fr",)),
                           seed=0).next_batches()
    assert b.objective == "clm" and b.causal and b.task == "fr"
    assert b.pred_mask[:, :-1].all() and not b.pred_mask[:, -1].any()
    assert torch.equal(b.targets, b.input_ids[:, 1:].reshape(-1))
    assert all(tuple(r) in _chunk_set(data, "fr", 8) for r in b.input_ids.tolist())  # not corrupted


def test_stream_epoch_visits_every_chunk_once(data):
    cfg = _cfg(mlm_steps=("none",), tlm_steps=("none",), clm_steps=("fr",), batch_size=4)
    s = PretrainSampler(data, cfg, seed=3)
    n_chunks = s.tasks["clm"][0].n_items
    rows = []
    while len(rows) < 2 * n_chunks:
        rows += [tuple(r) for r in s.next_batches()[0].input_ids.tolist()]
    epoch1, epoch2 = rows[:n_chunks], rows[n_chunks : 2 * n_chunks]
    assert sorted(epoch1) == sorted(_chunk_set(data, "fr", 8)) == sorted(epoch2)
    assert epoch1 != epoch2  # a new order every epoch


# ----------------------------------------------------------------------------------------------
# Language sampling, resume, ranks


def test_sampler_language_frequencies_follow_alpha(data):
    cfg = _cfg(tlm_steps=("none",), lang_alpha=0.5, batch_size=1, bptt=4)
    s = PretrainSampler(data, cfg, seed=0)
    # 900^0.5 = 30 vs 100^0.5 = 10
    assert s.task_probs["mlm"] == pytest.approx({"en": 0.75, "fr": 0.25})
    n = 2000
    en = sum(s.next_batches()[0].task == "en" for _ in range(n))
    assert en / n == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize("sample_alpha", [0.0, 0.5])
def test_exact_resume_from_state_dict(data, sample_alpha):
    cfg = _cfg(clm_steps=(), sample_alpha=sample_alpha)
    a = PretrainSampler(data, cfg, seed=5)
    for _ in range(17):  # past an epoch of en-fr (50 pairs / 4 per step)
        a.next_batches()
    state = json.loads(json.dumps(a.state_dict()))
    assert state["cursors"]["tlm:en-fr"]["epoch"] == 1
    expected = [a.next_batches() for _ in range(15)]
    b = PretrainSampler(data, cfg, seed=123)  # the saved seed wins
    b.load_state_dict(state)
    got = [b.next_batches() for _ in range(15)]
    assert all(_same(x, y) for xs, ys in zip(expected, got) for x, y in zip(xs, ys))


def test_resume_rejects_changed_data(data):
    s = PretrainSampler(data, _cfg(), seed=0)
    state = s.state_dict()
    state["cursors"]["mlm:en"]["n_items"] += 1
    with pytest.raises(DataError, match="train data changed"):
        PretrainSampler(data, _cfg(), seed=0).load_state_dict(state)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_together_reproduce_one_process(data, world_size):
    cfg = _cfg(clm_steps=(), batch_size=8, sample_alpha=0.3)
    single = PretrainSampler(data, cfg, seed=9)
    ranks = [PretrainSampler(data, cfg, seed=9, rank=r, world_size=world_size) for r in range(world_size)]
    for _ in range(6):
        whole = single.next_batches()
        parts = [r.next_batches() for r in ranks]
        for k, batch in enumerate(whole):
            pieces = [p[k] for p in parts]
            assert all(p.n_rows == 8 // world_size for p in pieces)
            for f in ("input_ids", "langs", "positions", "attention_mask", "pred_mask", "targets"):
                assert torch.equal(torch.cat([getattr(p, f) for p in pieces]), getattr(batch, f)), f
            per = 8 // world_size
            assert all(_same(batch.split_rows(r * per, (r + 1) * per), pieces[r]) for r in range(world_size))


def test_split_rows_for_gradient_accumulation(data):
    (mlm, tlm, clm) = PretrainSampler(data, _cfg(clm_steps=(), batch_size=8), seed=4).next_batches()
    for b in (mlm, tlm, clm):
        pieces = [b.split_rows(0, 3), b.split_rows(3, 3), b.split_rows(3, 8)]
        assert pieces[1].n_rows == 0 and pieces[1].n_pred == 0
        assert torch.equal(torch.cat([p.targets for p in pieces]), b.targets)
        assert sum(p.n_tokens for p in pieces) == b.n_tokens
        for p in pieces:
            assert p.n_pred == int(p.pred_mask.sum())
        with pytest.raises(IndexError):
            b.split_rows(2, 9)
    moved = mlm.to("cpu")
    assert _same(moved, mlm) and moved.objective == "mlm"


# ----------------------------------------------------------------------------------------------
# Evaluation batches


def test_mlm_eval_batches_are_deterministic_and_cover_the_split_from_the_start(data):
    cfg = _cfg(batch_size=4)
    first = eval_batches(data, "en", "valid", cfg, n_batches=3)
    again = eval_batches(data, "en", "valid", cfg, n_batches=3)
    assert len(first) == 3 and all(_same(x, y) for x, y in zip(first, again))
    stream = data.mono("en", "valid").ids
    expected = stream_chunks(stream, np.arange(12), 8)
    assert torch.equal(torch.cat([_originals(b) for b in first]), torch.from_numpy(expected))
    assert all(b.objective == "mlm" and b.task == "en" and b.n_pred > 0 for b in first)

    n_chunks, _ = stream_layout(len(stream), 8)
    whole = eval_batches(data, "en", "valid", cfg, n_batches=0)
    assert sum(b.n_rows for b in whole) == n_chunks
    assert eval_batches(data, "en", "test", cfg, n_batches=2) == []  # empty split
    other_seed = eval_batches(data, "en", "valid", cfg, n_batches=3, seed=1)
    assert not all(torch.equal(x.pred_mask, y.pred_mask) for x, y in zip(first, other_seed))


def test_tlm_and_clm_eval_batches(data):
    cfg = _cfg(batch_size=4, tlm_max_len=64)
    batches = eval_batches(data, "en-fr", "valid", cfg, n_batches=5)
    assert [b.n_rows for b in batches] == [4, 4, 2]  # 10 valid pairs, in order
    side_en, side_fr = data.para("en-fr", "valid")
    row0 = _originals(batches[0])[0]
    assert row0[: int(batches[0].attention_mask[0].sum())].tolist() == \
        tlm_pair_layout(side_en.sentence(0), side_fr.sentence(0), 0, 1, EOS, 64)[0].tolist()
    assert all(b.objective == "tlm" and b.task == "en-fr" for b in batches)

    (clm,) = eval_batches(data, "fr", "valid", cfg, n_batches=1, objective="clm")
    assert clm.causal and torch.equal(clm.targets, clm.input_ids[:, 1:].reshape(-1))

    with pytest.raises(DataError, match="no monolingual data for language 'de'"):
        eval_batches(data, "de", "valid", cfg, n_batches=1)
    with pytest.raises(DataError, match="no parallel data for pair 'de-en'"):
        eval_batches(data, "de-en", "valid", cfg, n_batches=1)
    with pytest.raises(DataError, match="TLM needs a language pair"):
        eval_batches(data, "en", "valid", cfg, n_batches=1, objective="tlm")


def test_sampler_works_on_prepare_data_output(tmp_path, synthetic_corpus):
    """End to end with the real pipeline, when xlmkit.data.prepare exists."""
    prepare = pytest.importorskip("xlmkit.data.prepare")
    from xlmkit.core.config import load_config

    cfg = load_config("tiny")
    out = tmp_path / "prepared"
    prepare.prepare_data(dataclasses.replace(cfg.prepare, max_lines=300, vocab_size=150), out, data_dir=synthetic_corpus)
    data = PreparedData(out)
    s = PretrainSampler(data, cfg.train, seed=0)
    for b in s.next_batches():
        assert b.n_rows == cfg.train.batch_size
        assert b.input_ids.max() < data.vocab_size
        assert b.n_pred == int(b.pred_mask.sum()) > 0
