"""Hugging Face interop (`xlmkit export` / `xlmkit import`): numerical parity with transformers' own
forward, exact weight round trips, tokenizer agreement, and clear refusals. Tiny random models only."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from xlmkit.interop import hf  # noqa: E402
from xlmkit.train.checkpoint import load_model, save_model_run  # noqa: E402
from xlmkit.cli.main import main as cli_main  # noqa: E402
from xlmkit.core.config import ModelConfig, load_config  # noqa: E402
from xlmkit.core.errors import XlmkitError  # noqa: E402
from xlmkit.model.encoder import XLMModel  # noqa: E402

TOL = 1e-4
SENTENCES = {
    "en": ["The cat sleeps on the warm windowsill.", "I would like a cup of coffee, please.",
           "Where is the nearest train station?"],
    "fr": ["Le chat dort sur le rebord de la fenêtre.", "Je voudrais une tasse de café, s'il vous plaît.",
           "Où est la gare la plus proche ?"],
    "de": ["Die Katze schläft auf der warmen Fensterbank.", "Ich hätte gern eine Tasse Kaffee, bitte.",
           "Wo ist der nächste Bahnhof?"],
    "ru": ["Кошка спит на тёплом подоконнике.", "Я хотел бы чашку кофе, пожалуйста.", "Где ближайший вокзал?"],
    "zh": ["猫在温暖的窗台上睡觉。", "请给我一杯咖啡。", "最近的火车站在哪里？"],
    "ar": ["القطة تنام على حافة النافذة الدافئة.", "أريد فنجان قهوة من فضلك.", "أين أقرب محطة قطار؟"],
}
LANGS = sorted(SENTENCES)
IDS = dict(bos=0, pad=1, eos=2, unk=3, mask=4)


# ----------------------------------------------------------------------------------------------
# Helpers


def train_tokenizer(path: Path, specials: list[str], kind: str = "unigram", trailing: list[str] = ()):
    """A small multilingual `tokenizers` tokenizer: `specials` first (in order), then the subwords, then
    `trailing` special tokens (XLM-R puts <mask> last)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "unigram":
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token="<unk>")
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials)
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator([s for v in SENTENCES.values() for s in v] * 10, trainer)
    if trailing:
        tok.add_special_tokens(list(trailing))
    tok.save(str(path))
    return tok


def randomize_(module: torch.nn.Module, seed: int, skip: tuple[str, ...] = ()) -> None:
    """Random values everywhere (LayerNorm weights around 1), so a wrong mapping of any tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(s in name for s in skip):
                continue
            noise = torch.randn(p.shape, generator=g) * 0.2
            is_ln = ("norm" in name.lower()) and name.endswith("weight")
            p.copy_(1.0 + noise if is_ln else noise)


def make_run(root: Path, tok_path: Path, name: str, seed: int = 0, wrap: str | None = None,
             **model_overrides) -> Path:
    """An xlmkit run with a random tiny model and the xlmkit-order tokenizer."""
    from tokenizers import Tokenizer

    vocab_size = Tokenizer.from_file(str(tok_path)).get_vocab_size()
    cfg = load_config("tiny")
    m = dict(dim=32, n_layers=2, n_heads=4, ffn_dim=128, max_positions=64, dropout=0.1, attention_dropout=0.1,
             vocab_size=vocab_size, n_langs=len(LANGS), pad_id=IDS["pad"])
    m.update(model_overrides)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **m))
    model = XLMModel(cfg.model)
    randomize_(model, seed)
    lang2id = {lang: i for i, lang in enumerate(LANGS)}
    vocab = {"lang2id": lang2id, "specials": IDS, "languages": LANGS, "pairs": [], "vocab_size": vocab_size,
             "data_dir": None, "lang_tokens": {lang: 5 + i for i, lang in enumerate(LANGS)}}
    if wrap is not None:
        vocab["sentence_wrap"] = wrap
    run = root / name
    save_model_run(run, model, cfg, vocab, tok_path)
    return run


def make_batch(tok, specials: dict[str, int], lang2id: dict[str, int] | None, n: int = 4):
    """<s> sentence </s>, some tokens replaced by <mask>, right-padded: (ids, attention_mask, langs)."""
    rows, langs = [], []
    for k, lang in enumerate(LANGS[:n]):
        ids = [specials["bos"]] + tok.encode(SENTENCES[lang][k % 3]).ids + [specials["eos"]]
        ids = ids[: 8 + 5 * k]  # different lengths: padding in the batch
        ids[2] = specials["mask"]
        rows.append(ids)
        langs.append(lang2id[lang] if lang2id else 0)
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), specials["pad"], dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
    mask = input_ids != specials["pad"]
    lang_ids = torch.tensor(langs)[:, None].expand(-1, T).contiguous()
    return input_ids, mask, lang_ids


def xlmkit_forward(model, input_ids, mask, langs=None):
    with torch.no_grad():
        h, hs = model(input_ids, langs=langs, attention_mask=mask, output_hidden_states=True)
        return hs, model.clm_logits(h)


def hf_forward(hf_model, input_ids, mask, langs=None):
    kwargs = {"langs": langs} if langs is not None else {}
    with torch.no_grad():
        out = hf_model(input_ids=input_ids, attention_mask=mask.long(), output_hidden_states=True, **kwargs)
    return list(out.hidden_states), out.logits


def max_diff_real(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Max |a - b| over real (non-padding) positions."""
    return (a[mask] - b[mask]).abs().max().item()


def assert_parity(ours, theirs, mask, what: str) -> float:
    (hs_a, logits_a), (hs_b, logits_b) = ours, theirs
    assert len(hs_a) == len(hs_b), what
    worst = 0.0
    for i, (a, b) in enumerate(zip(hs_a, hs_b)):
        d = max_diff_real(a, b, mask)
        assert d < TOL, f"{what}: hidden state {i} differs by {d}"
        worst = max(worst, d)
    d = max_diff_real(logits_a, logits_b, mask)
    assert d < TOL, f"{what}: MLM logits differ by {d}"
    return max(worst, d)


def load_hf(out_dir: Path):
    model, info = transformers.AutoModelForMaskedLM.from_pretrained(
        str(out_dir), local_files_only=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf")


def train_xlmkit_tokenizer(path: Path, kind: str) -> Path:
    """The tokenizer `xlmkit prepare` makes (fixed specials, language tags, xlmkit's normaliser)."""
    from xlmkit.data.tokenizer import train_tokenizer as xlmkit_train_tokenizer

    tok = xlmkit_train_tokenizer([s for v in SENTENCES.values() for s in v] * 10, LANGS, kind=kind, vocab_size=180)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def xlmkit_tokenizer(work) -> Path:
    return train_xlmkit_tokenizer(work / "xlmkit_tokenizer.json", "unigram")


def save_hf_xlm(root: Path, name: str, seed: int, **config_overrides) -> Path:
    """A random transformers XLM with XLM's own special order (<s>=0 </s>=1 <pad>=2 <unk>=3, <mask> =
    <special1> = 5), a tokenizer.json that frames sentences, and a tokenizer_config naming the mask."""
    d = root / name
    d.mkdir()
    specials = ["<s>", "</s>", "<pad>", "<unk>"] + [f"<special{i}>" for i in range(10)]
    tok = train_tokenizer(d / "tokenizer.json", specials)
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(single="</s> $A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>", "mask_token": "<special1>", "model_input_names": ["input_ids", "attention_mask"]}))
    lang2id = {lang: i for i, lang in enumerate(LANGS[:3])}
    kw = dict(vocab_size=tok.get_vocab_size(), emb_dim=32, n_layers=2, n_heads=4, n_langs=3, lang2id=lang2id,
              id2lang={i: lang for lang, i in lang2id.items()}, max_position_embeddings=48, layer_norm_eps=1e-6)
    kw.update(config_overrides)
    model = transformers.XLMWithLMHeadModel(transformers.XLMConfig(**kw))
    randomize_(model, seed, skip=("position_embeddings",) if kw.get("sinusoidal_embeddings") else ())
    model.save_pretrained(str(d))
    return d


def save_hf_xlmr(root: Path, name: str, seed: int, base_only: bool = False, **config_overrides) -> Path:
    """A random transformers XLM-R (fairseq specials, <mask> last; two token types, the first non-zero)."""
    d = root / name
    d.mkdir()
    tok = train_tokenizer(d / "tokenizer.json", ["<s>", "<pad>", "</s>", "<unk>"], trailing=["<mask>"])
    from tokenizers import processors

    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.save(str(d / "tokenizer.json"))
    kw = dict(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=80, max_position_embeddings=50, type_vocab_size=2, layer_norm_eps=1e-5)
    kw.update(config_overrides)
    cfg = transformers.XLMRobertaConfig(**kw)
    model = transformers.XLMRobertaModel(cfg) if base_only else transformers.XLMRobertaForMaskedLM(cfg)
    randomize_(model, seed)
    model.save_pretrained(str(d))
    return d


# ----------------------------------------------------------------------------------------------
# Import: xlmkit computes what transformers computes


@pytest.mark.parametrize("variant", ["lang_emb", "no_lang_emb", "sinusoidal"])
def test_import_xlm_matches_transformers(work, variant):
    over = {"lang_emb": {}, "no_lang_emb": {"use_lang_emb": False},
            "sinusoidal": {"sinusoidal_embeddings": True}}[variant]
    hf_dir = save_hf_xlm(work, f"hf_xlm_{variant}", seed=1, **over)
    run = work / f"run_from_xlm_{variant}"
    hf.import_checkpoint(hf_dir, run)

    loaded = load_model(run)
    vocab = json.loads((run / "vocab.json").read_text())
    # special ids come from the checkpoint, not from xlmkit's fixed order
    assert vocab["specials"] == dict(bos=0, pad=2, eos=1, unk=3, mask=5)
    assert loaded.config.model.pad_id == 2
    assert set(range(14)) <= set(vocab["special_ids"])
    assert vocab["lang2id"] == {"ar": 0, "de": 1, "en": 2}
    assert loaded.config.model.sinusoidal_embeddings == (variant == "sinusoidal")
    assert loaded.config.model.ffn_dim == 4 * 32 and not loaded.config.model.head_transform
    assert vocab["sentence_wrap"] == "xlm"  # from the tokenizer's post-processor

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(loaded.tokenizer_path))
    assert tok.post_processor is None  # xlmkit frames sentences itself
    hf_model = transformers.XLMWithLMHeadModel.from_pretrained(str(hf_dir), local_files_only=True).eval()
    ids, mask, langs = make_batch(tok, vocab["specials"], {"ar": 0, "de": 1, "en": 2, "fr": 0}, n=4)
    langs = langs if variant != "no_lang_emb" else None
    d = assert_parity(xlmkit_forward(loaded.model, ids, mask, langs), hf_forward(hf_model, ids, mask, langs), mask,
                      f"import xlm {variant}")
    print(f"max |diff| import xlm {variant}: {d:.2e}")
    if variant == "lang_emb":  # the language embedding matters, and agrees
        other = (langs + 1) % 3
        d2 = assert_parity(xlmkit_forward(loaded.model, ids, mask, other), hf_forward(hf_model, ids, mask, other),
                           mask, "import xlm other langs")
        assert (xlmkit_forward(loaded.model, ids, mask, other)[1] - xlmkit_forward(loaded.model, ids, mask, langs)[1]
                ).abs().max() > 1e-2
        print(f"max |diff| import xlm other langs: {d2:.2e}")
    # XLM zeroes padding after every block: the full hidden states agree too
    assert (loaded.model(ids, langs=langs, attention_mask=mask).detach()
            - hf_forward(hf_model, ids, mask, langs)[0][-1]).abs().max() < TOL


def test_import_xlmr_matches_transformers(work):
    hf_dir = save_hf_xlmr(work, "hf_xlmr", seed=2)
    run = work / "run_from_xlmr"
    assert cli_main(["import", str(hf_dir), str(run), "--languages", "en,fra,de"]) == 0

    loaded = load_model(run)
    vocab = json.loads((run / "vocab.json").read_text())
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(loaded.tokenizer_path))
    mask_id = tok.get_vocab_size() - 1
    assert vocab["specials"] == dict(bos=0, pad=1, eos=2, unk=3, mask=mask_id)
    assert vocab["lang2id"] == {"de": 0, "en": 0, "fr": 0} and loaded.config.model.n_langs == 1
    assert vocab["sentence_wrap"] == "roberta"  # RobertaProcessing, as XLM-R's tokenizer.json
    m = loaded.config.model
    assert (m.head_transform, m.use_lang_emb, m.max_positions, m.ffn_dim) == (True, False, 50 - 1 - 1, 80)

    hf_model = transformers.XLMRobertaForMaskedLM.from_pretrained(str(hf_dir), local_files_only=True).eval()
    ids, mask, _ = make_batch(tok, vocab["specials"], None, n=4)
    d = assert_parity(xlmkit_forward(loaded.model, ids, mask), hf_forward(hf_model, ids, mask), mask, "import xlmr")
    print(f"max |diff| import xlmr: {d:.2e}")


def test_import_xlmr_encoder_only_checkpoint(work, capsys):
    """A bare XLMRobertaModel (pooler, no MLM head): the encoder agrees, the head is initialised fresh."""
    hf_dir = save_hf_xlmr(work, "hf_xlmr_base", seed=3, base_only=True)
    run = work / "run_from_xlmr_base"
    hf.import_checkpoint(hf_dir, run)
    out = capsys.readouterr().out
    assert "pooler" in out and "no MLM head" in out
    loaded = load_model(run)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(loaded.tokenizer_path))
    vocab = json.loads((run / "vocab.json").read_text())
    hf_model = transformers.XLMRobertaModel.from_pretrained(str(hf_dir), local_files_only=True).eval()
    ids, mask, _ = make_batch(tok, vocab["specials"], None)
    with torch.no_grad():
        ours = loaded.model(ids, attention_mask=mask)
        theirs = hf_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert max_diff_real(ours, theirs, mask) < TOL


def test_import_pytorch_bin_weights(work):
    """pytorch_model.bin (read with weights_only) gives the same run as model.safetensors."""
    from safetensors.torch import load_file

    src = save_hf_xlmr(work, "hf_xlmr_bin", seed=4)
    torch.save(load_file(str(src / "model.safetensors")), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    hf.import_checkpoint(src, work / "run_from_bin")
    ref = save_hf_xlmr(work, "hf_xlmr_st", seed=4)
    hf.import_checkpoint(ref, work / "run_from_st")
    a = load_model(work / "run_from_bin").model.state_dict()
    b = load_model(work / "run_from_st").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# Export: transformers computes what xlmkit computes


EXPORT_CASES = {
    "xlm": dict(fmt="xlm", model={}),
    "xlm_no_lang_emb": dict(fmt="xlm", model={"use_lang_emb": False}),
    "xlm_sinusoidal": dict(fmt="xlm", model={"sinusoidal_embeddings": True}),
    "xlmr": dict(fmt="xlmr", wrap="roberta", model={"use_lang_emb": False, "head_transform": True, "ffn_dim": 96,
                                                    "layer_norm_eps": 1e-5}),
    "bpe": dict(fmt="xlm", tokenizer="bpe", model={}),
}


@pytest.fixture(scope="module")
def exported(work, xlmkit_tokenizer):
    """{case: (run_dir, out_dir)}, each exported once with the CLI (default format)."""
    out = {}
    for i, (case, spec) in enumerate(EXPORT_CASES.items()):
        tok_path = xlmkit_tokenizer
        if spec.get("tokenizer") == "bpe":
            tok_path = train_xlmkit_tokenizer(work / "xlmkit_tokenizer_bpe.json", "bpe")
        run = make_run(work, tok_path, f"run_{case}", seed=10 + i, wrap=spec.get("wrap"), **spec["model"])
        out_dir = work / f"export_{case}"
        assert cli_main(["export", str(run), str(out_dir)]) == 0  # default format
        out[case] = (run, out_dir)
    return out


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_export_matches_transformers(exported, case):
    run, out_dir = exported[case]
    fmt = EXPORT_CASES[case]["fmt"]
    hf_model = load_hf(out_dir)
    expected = "XLMWithLMHeadModel" if fmt == "xlm" else "XLMRobertaForMaskedLM"
    assert type(hf_model).__name__ == expected
    loaded = load_model(run)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(loaded.tokenizer_path))
    lang2id = loaded.vocab["lang2id"]
    ids, mask, langs = make_batch(tok, IDS, lang2id, n=4)
    if fmt == "xlm":
        assert hf_model.config.lang2id == lang2id and hf_model.config.n_langs == len(LANGS)
        assert hf_model.config.pad_token_id == IDS["pad"] and hf_model.config.mask_index == IDS["mask"]
    use_langs = langs if (fmt == "xlm" and case != "xlm_no_lang_emb") else None
    d = assert_parity(xlmkit_forward(loaded.model, ids, mask, use_langs), hf_forward(hf_model, ids, mask, use_langs),
                      mask, f"export {case}")
    print(f"max |diff| export {case}: {d:.2e}")
    if case == "xlm":  # language embeddings agree: same rows, and changing langs changes both the same way
        torch.testing.assert_close(hf_model.transformer.lang_embeddings.weight, loaded.model.lang_embeddings.weight,
                                   rtol=0, atol=0)
        other = (langs + 2) % len(LANGS)
        assert_parity(xlmkit_forward(loaded.model, ids, mask, other), hf_forward(hf_model, ids, mask, other), mask,
                      "export xlm other langs")


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_round_trip_export_import_identical_weights(work, exported, case):
    run, out_dir = exported[case]
    back = work / f"roundtrip_{case}"
    hf.import_checkpoint(out_dir, back)
    a, b = load_model(run), load_model(back)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    fields = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("dropout", "attention_dropout")]
    assert {f: getattr(a.config.model, f) for f in fields} == {f: getattr(b.config.model, f) for f in fields}
    assert b.vocab["specials"] == IDS
    assert b.vocab["sentence_wrap"] == a.vocab.get("sentence_wrap", "xlm")
    if EXPORT_CASES[case]["fmt"] == "xlm":
        assert b.vocab["lang2id"] == a.vocab["lang2id"]


@pytest.mark.parametrize("case", ["xlm", "xlmr", "bpe"])
def test_tokenizer_ids_agree(work, exported, case):
    from tokenizers import Tokenizer

    run, out_dir = exported[case]
    ours = Tokenizer.from_file(str(run / "tokenizer.json"))
    first = IDS["bos"] if EXPORT_CASES[case].get("wrap") == "roberta" else IDS["eos"]  # default wrap: xlm
    theirs = transformers.AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    assert theirs.is_fast
    assert {r: getattr(theirs, f"{r}_token_id") for r in ("bos", "pad", "eos", "unk", "mask")} == IDS
    # imported back: the run's tokenizer gives xlmkit's ids again
    back = work / f"roundtrip_{case}"
    if not back.exists():
        hf.import_checkpoint(out_dir, back)
    again = Tokenizer.from_file(str(load_model(back).tokenizer_path))
    texts = [s for lang in LANGS for s in SENTENCES[lang]]
    texts += ["Le chat <mask> sur la fenêtre.", "<lang:fr> Кошка <mask> 猫 <unk> </s>", "<s> mixed <pad> text </s>"]
    for text in texts:
        ids = ours.encode(text).ids
        assert theirs(text, add_special_tokens=False)["input_ids"] == ids, text
        assert theirs(text)["input_ids"] == [first] + ids + [IDS["eos"]], text
        assert again.encode(text).ids == ids, text
    assert ours.token_to_id("<mask>") in theirs("a <mask> b", add_special_tokens=False)["input_ids"]
    assert ours.token_to_id("<lang:fr>") in theirs("<lang:fr> chat", add_special_tokens=False)["input_ids"]
    pair = theirs("Le chat.", "The cat.")["input_ids"]
    a, b = ours.encode("Le chat.").ids, ours.encode("The cat.").ids
    assert pair == [first] + a + [IDS["eos"], IDS["eos"]] + b + [IDS["eos"]]
    assert "token_type_ids" not in theirs("x")  # transformers' XLM would add embeddings for them


# ----------------------------------------------------------------------------------------------
# Refusals


def test_export_refusals_name_the_option():
    base = ModelConfig(dim=32, n_layers=1, n_heads=4, ffn_dim=128, vocab_size=100, n_langs=3, pad_id=1)
    cases = [
        (dict(pre_ln=True), "xlm", "model.pre_ln"),
        (dict(pre_ln=True, use_lang_emb=False, head_transform=True), "xlmr", "model.pre_ln"),
        (dict(head_transform=True), "xlm", "model.head_transform"),
        (dict(ffn_dim=100), "xlm", "model.ffn_dim"),
        (dict(head_transform=True), "xlmr", "model.use_lang_emb"),
        (dict(use_lang_emb=False, head_transform=True, sinusoidal_embeddings=True), "xlmr",
         "model.sinusoidal_embeddings"),
        (dict(use_lang_emb=False), "xlmr", "model.head_transform"),
    ]
    for over, fmt, option in cases:
        cfg = dataclasses.replace(base, **over)
        with pytest.raises(XlmkitError, match=option.replace(".", r"\.")):
            hf.check_exportable(cfg, fmt)
    # what is fine: one language with use_lang_emb (no embedding exists), XLM-R's free FFN width
    hf.check_exportable(dataclasses.replace(base, n_langs=1, head_transform=True, ffn_dim=100), "xlmr")
    hf.check_exportable(dataclasses.replace(base, use_lang_emb=False), "xlm")
    assert hf.default_format(base) == "xlm"
    assert hf.default_format(dataclasses.replace(base, use_lang_emb=False, head_transform=True)) == "xlmr"


def test_export_refusal_on_the_command_line(work, xlmkit_tokenizer, capsys):
    run = make_run(work, xlmkit_tokenizer, "run_pre_ln", pre_ln=True)
    assert cli_main(["export", str(run), str(work / "never")]) == 2
    err = capsys.readouterr().err
    assert "xlmkit export: error:" in err and "model.pre_ln=True" in err and "post-LN" in err
    assert not (work / "never" / "model.safetensors").exists()
    run = make_run(work, xlmkit_tokenizer, "run_lang_emb")
    assert cli_main(["export", str(run), str(work / "never2"), "--format", "xlmr"]) == 2
    err = capsys.readouterr().err
    assert "model.use_lang_emb=True" in err and "model.head_transform=False" in err


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_import_refusals(work, capsys):
    src = save_hf_xlm(work, "hf_xlm_refuse", seed=5)
    cases = [
        (dict(asm=True), "asm=true"),
        (dict(gelu_activation=False), "gelu_activation=false"),
        (dict(causal=True), "causal=true"),
        (dict(model_type="bert"), "model_type='bert'"),
        (dict(n_langs=3, lang2id=None), "no lang2id"),
        (dict(mask_index=7), "mask id 7 but the tokenizer maps '<special1>' to 5"),
    ]
    for changes, message in cases:
        bad = work / f"hf_bad_{'_'.join(changes)}"
        bad.mkdir()
        for f in src.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        _edit_config(bad, **changes)
        with pytest.raises(XlmkitError, match=message.replace("(", r"\(").replace("[", r"\[")):
            hf.import_checkpoint(bad, work / f"never_{bad.name}")
        assert not (work / f"never_{bad.name}" / "checkpoints").exists()

    xlmr = save_hf_xlmr(work, "hf_xlmr_refuse", seed=6)
    _edit_config(xlmr, hidden_act="gelu_new")
    with pytest.raises(XlmkitError, match="hidden_act='gelu_new'"):
        hf.import_checkpoint(xlmr, work / "never_xlmr")

    # no tokenizer.json and nothing transformers can convert offline: a clear error, not a download
    notok = save_hf_xlmr(work, "hf_xlmr_notok", seed=7)
    (notok / "tokenizer.json").unlink()
    assert cli_main(["import", str(notok), str(work / "never_notok")]) == 2
    err = capsys.readouterr().err
    assert "xlmkit import: error:" in err and "tokenizer" in err

    (notok / "sentencepiece.bpe.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(XlmkitError, match="tokenizer"):  # needs sentencepiece, or cannot be read
        hf.import_checkpoint(notok, work / "never_notok")

    with pytest.raises(XlmkitError, match="never downloads"):
        hf.import_checkpoint("FacebookAI/xlm-roberta-base", work / "never_hub")
    ok = save_hf_xlmr(work, "hf_xlmr_twice", seed=8)
    hf.import_checkpoint(ok, work / "run_twice")
    with pytest.raises(XlmkitError, match="already holds checkpoints"):
        hf.import_checkpoint(ok, work / "run_twice")


def test_missing_transformers_is_a_clear_error(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(XlmkitError, match=r"pip install 'xlmkit\[hf\]'"):
        hf.import_checkpoint(tmp_path, tmp_path / "run")
    with pytest.raises(XlmkitError, match=r"pip install 'xlmkit\[hf\]'"):
        hf.export_run(tmp_path, tmp_path / "out")


# ----------------------------------------------------------------------------------------------
# Slow: a real pretrained model


@pytest.mark.slow
def test_small_model_same_top1_predictions_in_transformers(tmp_path):
    """XLMKIT_SMALL_RUN=RUN_DIR (a pretrained `small` run whose vocab.json names its data_dir): the
    exported model, loaded by transformers, predicts the same top-1 token at masked validation positions."""
    import numpy as np

    from xlmkit.data.format import PreparedData

    run = os.environ.get("XLMKIT_SMALL_RUN")
    if not run:
        pytest.skip("set XLMKIT_SMALL_RUN to a pretrained run directory")
    loaded = load_model(run)
    if not loaded.vocab.get("data_dir") or not Path(loaded.vocab["data_dir"]).is_dir():
        pytest.skip("the run's vocab.json has no data_dir to read the validation split from")
    out = hf.export_run(run, tmp_path / "export")
    hf_model = load_hf(out)
    fmt = "xlm" if type(hf_model).__name__ == "XLMWithLMHeadModel" else "xlmr"
    data = PreparedData(loaded.vocab["data_dir"])
    specials = loaded.vocab["specials"]
    never = set(loaded.vocab.get("special_ids", [])) | set(specials.values()) | set(data.lang_token_ids.values())
    rng = np.random.default_rng(0)
    T_max = loaded.config.model.max_positions
    agree = total = ties = 0
    worst = 0.0
    for lang in data.mono_languages:
        shard = data.mono(lang, "valid")
        for start in range(0, min(len(shard), 256), 32):
            rows = [list(shard.sentence(i)[: T_max - 2]) for i in range(start, min(start + 32, len(shard)))]
            rows = [[specials["bos"]] + r + [specials["eos"]] for r in rows if len(r) > 0]
            T = max(len(r) for r in rows)
            ids = torch.full((len(rows), T), specials["pad"], dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            maskable = ~torch.isin(ids, torch.tensor(sorted(never)))
            pred = maskable & torch.from_numpy(rng.random(ids.shape) < 0.15)
            inputs = ids.masked_fill(pred, specials["mask"])
            attn = ids != specials["pad"]
            langs = torch.full_like(ids, loaded.vocab["lang2id"].get(lang, 0)) if fmt == "xlm" else None
            with torch.no_grad():
                ours = loaded.model.mlm_logits(loaded.model(inputs, langs=langs, attention_mask=attn)[pred])
                kw = {"langs": langs} if langs is not None else {}
                theirs = hf_model(input_ids=inputs, attention_mask=attn.long(), **kw).logits[pred]
            worst = max(worst, (ours - theirs).abs().max().item())
            top2 = ours.topk(2, dim=-1).values
            near_tie = (top2[:, 0] - top2[:, 1]) < 1e-4
            same = ours.argmax(-1) == theirs.argmax(-1)
            assert bool((same | near_tie).all()), f"{lang}: top-1 predictions differ"
            agree += int(same.sum())
            ties += int(near_tie.sum())
            total += len(same)
    assert total > 0
    print(f"top-1 agreement {agree}/{total} (near ties {ties}); max |logit diff| {worst:.2e}")
    assert worst < 1e-3
