import dataclasses
import json

import pytest

from xlmkit.core.config import (
    PRESETS,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
    save_config,
)


def test_presets_load_and_are_frozen():
    for name in PRESETS:
        cfg = load_config(name)
        assert cfg.preset == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.train.lr = 1.0  # type: ignore[misc]
    assert load_config("tiny").model.dim < load_config("small").model.dim < load_config("base").model.dim


def test_dotted_overrides_are_typed():
    cfg = load_config("tiny", ["train.lr=3e-4", "model.use_lang_emb=false", "train.mlm_steps=en,fr",
                               "model.n_layers=3", "prepare.tokenizer=bpe"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.use_lang_emb is False
    assert cfg.train.mlm_steps == ("en", "fr")
    assert cfg.model.n_layers == 3 and isinstance(cfg.model.n_layers, int)
    assert cfg.prepare.tokenizer == "bpe"


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown setting train.lrr"),
    ("trian.lr=1", "unknown section 'trian'"),
    ("train.lr", "must look like section.key=value"),
    ("model.n_layers=2.5", "model.n_layers: expected an integer"),
    ("model.use_lang_emb=maybe", "expected true or false"),
    ("model.n_heads=5", "must be divisible by model.n_heads"),
    ("train.schedule=cosine", "train.schedule must be"),
    ("prepare.tokenizer=wordpiece", "prepare.tokenizer must be"),
])
def test_bad_overrides_have_clear_messages(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_toml_and_yaml_files(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "tiny"\n[train]\nlr = 0.002\nmlm_steps = ["en", "de"]\n[model]\ndim = 96\n')
    cfg = load_config(str(toml), ["train.max_steps=7"])
    assert (cfg.preset, cfg.train.lr, cfg.train.mlm_steps, cfg.model.dim, cfg.train.max_steps) == (
        "tiny", 0.002, ("en", "de"), 96, 7)
    yaml = tmp_path / "run.yaml"
    yaml.write_text("preset: small\nmodel:\n  n_layers: 2\n")
    cfg = load_config(str(yaml))
    assert cfg.preset == "small" and cfg.model.n_layers == 2 and cfg.model.dim == PRESETS["small"]["model"]["dim"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[optimizer]\nlr = 1\n")
    with pytest.raises(ConfigError, match="unknown section 'optimizer'"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("huge")


def test_resolved_config_round_trips_through_json(tmp_path):
    cfg = load_config("tiny", ["train.tlm_steps=en-fr"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=123, n_langs=3, pad_id=1))
    save_config(cfg, tmp_path / "config.json")
    back = config_from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert back == cfg and back.model.resolved
    assert config_to_dict(back) == config_to_dict(cfg)


def test_parse_overrides_groups_by_section():
    assert parse_overrides(["train.lr=1", "model.dim=8", "train.seed=3"]) == {
        "train": {"lr": "1", "seed": "3"}, "model": {"dim": "8"}}
