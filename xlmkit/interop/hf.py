"""Hugging Face `transformers` interop: `xlmkit export` and `xlmkit import`.

    xlmkit export RUN_DIR OUT_DIR [--format xlm|xlmr]   # AutoModelForMaskedLM / AutoTokenizer load OUT_DIR
    xlmkit import HF_DIR RUN_DIR                         # a local XLM / XLM-R checkpoint -> an xlmkit run

xlmkit's encoder computes exactly what `transformers`' XLM does (post-LN, erf GELU, hidden states zeroed at
padding), so weights convert by renaming only, with two exceptions for XLM-R (Conneau et al. 2019):

- positions: XLM-R numbers real tokens from pad_id + 1 (fairseq's `make_positions`), so xlmkit's
  position p is row p + pad_id + 1 of the XLM-R table; rows 0 .. pad_id are unused (row pad_id is the
  padding row). `max_position_embeddings = max_positions + pad_id + 1`. XLM-R skips padding when it
  numbers positions, xlmkit counts 0..T-1: the two agree for right-padded batches (xlmkit's layout).
- segments: XLM-R adds `token_type_embeddings[0]` to every token; xlmkit has no segment embeddings, so
  import folds that row into the position table (same sum, one add less) and export writes a single
  zero row (`type_vocab_size = 1`).

Formats. `xlm` writes `XLMWithLMHeadModel` (language embeddings, `langs` input, XLM's tied linear output
layer); `xlmr` writes `XLMRobertaForMaskedLM` (no language embeddings, XLM-R's dense+GELU+LN head).
The default is the one that can represent the model: `xlmr` for models with XLM-R's head
(`model.head_transform=True`), `xlm` otherwise. xlmkit options with no `transformers` equivalent are
refused with an error naming the option (see `export_problems`).

Tokenizer. The run's `tokenizer.json` is written as is, loaded by `PreTrainedTokenizerFast`
(`TokenizersBackend` in transformers 5), so `AutoTokenizer` gives exactly xlmkit's ids; the model-specific
classes would rebuild their own normalizer / pre-tokenizer (XLM's is Moses-based and slow-only, XLM-R's
assumes a SentencePiece Unigram model) and could tokenize differently. xlmkit's tokenizer has no
post-processor (xlmkit frames sentences itself); export adds the framing the model saw, from vocab.json
`sentence_wrap` (as xlmkit.tasks.finetune / xlmkit.tasks.retrieval read it): "xlm" (default) `</s> A </s>`, pair
`</s> A </s> </s> B </s>`, the separators of XLM's pretraining streams; "roberta" `<s> A </s>`, pair
`<s> A </s> </s> B </s>`. Import does the reverse: `sentence_wrap` is read from the checkpoint tokenizer's
post-processor (default: "xlm" for XLM, "roberta" for XLM-R), and the run's `tokenizer.json` has no
post-processor, padding or truncation, so `encode(text)` gives bare subword ids, as for a tokenizer made
by `xlmkit prepare`.

Special ids. A run made by `xlmkit prepare` has the fixed ids of `xlmkit.data.format.SPECIAL_TOKENS`. An imported
run keeps those of its checkpoint (HF XLM: <s>=0 </s>=1 <pad>=2 <unk>=3, <mask> = `mask_index`; XLM-R:
<mask> is the last id): `vocab.json` holds `specials` {bos, pad, eos, unk, mask}, `special_ids` (every id
that is not a subword: the five, XLM's <specialN>, language tags), `special_tokens` (their strings) and
`sentence_wrap`, and the model config holds pad_id. Code that consumes a run must read them from there,
never assume 0..4.

Languages. XLM imports keep the checkpoint's `lang2id` (codes canonicalised with `xlmkit.core.langs` where
possible). XLM-R has no language embeddings: the run has n_langs = 1 and `lang2id = {"xx": 0}`, or every
language given with `--languages en,fr,...` mapped to id 0 (the id is never used: the model has no
language embedding). An XLM-R directory written by `xlmkit export` carries its run's `lang2id` in
config.json (an extra key transformers keeps and ignores), which import restores.

`transformers` is an optional dependency (`pip install 'xlmkit[hf]'`), imported only inside functions.
Import reads only local files (`local_files_only`, no remote code); `.bin` weights are read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from xlmkit.core.integrity import open_tokenizer
from xlmkit.core.errors import XlmkitError
from xlmkit.data.contract import RunContract, canonical_lang2id
from xlmkit.data.format import SpecialIds

FORMATS = ("xlm", "xlmr")
MODEL_TYPES = {"xlm": "xlm", "xlm-roberta": "xlmr"}  # transformers model_type -> format
WRAPS = ("xlm", "roberta")  # vocab.json sentence_wrap: `</s> a </s>` or `<s> a </s>` (xlmkit.tasks.finetune)
ROLES = ("bos", "pad", "eos", "unk", "mask")
# Default strings of the five specials (as in xlmkit.data.format.SPECIAL_TOKENS and in transformers).
DEFAULT_SPECIAL_TOKENS = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"}


def _transformers():
    try:
        import transformers
    except ImportError:
        raise XlmkitError("Hugging Face interop needs transformers: pip install 'xlmkit[hf]'") from None
    return transformers


# ----------------------------------------------------------------------------------------------
# Parameter names: (xlmkit, transformers) templates; {i} = layer index, {p} = weight | bias.

XLM_NAMES = [
    ("token_embeddings.weight", "transformer.embeddings.weight"),
    ("position_embeddings.weight", "transformer.position_embeddings.weight"),
    ("lang_embeddings.weight", "transformer.lang_embeddings.weight"),
    ("layer_norm_emb.{p}", "transformer.layer_norm_emb.{p}"),
    ("layers.{i}.attention.q_lin.{p}", "transformer.attentions.{i}.q_lin.{p}"),
    ("layers.{i}.attention.k_lin.{p}", "transformer.attentions.{i}.k_lin.{p}"),
    ("layers.{i}.attention.v_lin.{p}", "transformer.attentions.{i}.v_lin.{p}"),
    ("layers.{i}.attention.out_lin.{p}", "transformer.attentions.{i}.out_lin.{p}"),
    ("layers.{i}.layer_norm1.{p}", "transformer.layer_norm1.{i}.{p}"),
    ("layers.{i}.ffn.lin1.{p}", "transformer.ffns.{i}.lin1.{p}"),
    ("layers.{i}.ffn.lin2.{p}", "transformer.ffns.{i}.lin2.{p}"),
    ("layers.{i}.layer_norm2.{p}", "transformer.layer_norm2.{i}.{p}"),
    ("mlm_head.bias", "pred_layer.proj.bias"),
]
XLMR_NAMES = [
    ("token_embeddings.weight", "roberta.embeddings.word_embeddings.weight"),
    ("position_embeddings.weight", "roberta.embeddings.position_embeddings.weight"),  # shifted, see module doc
    ("layer_norm_emb.{p}", "roberta.embeddings.LayerNorm.{p}"),
    ("layers.{i}.attention.q_lin.{p}", "roberta.encoder.layer.{i}.attention.self.query.{p}"),
    ("layers.{i}.attention.k_lin.{p}", "roberta.encoder.layer.{i}.attention.self.key.{p}"),
    ("layers.{i}.attention.v_lin.{p}", "roberta.encoder.layer.{i}.attention.self.value.{p}"),
    ("layers.{i}.attention.out_lin.{p}", "roberta.encoder.layer.{i}.attention.output.dense.{p}"),
    ("layers.{i}.layer_norm1.{p}", "roberta.encoder.layer.{i}.attention.output.LayerNorm.{p}"),
    ("layers.{i}.ffn.lin1.{p}", "roberta.encoder.layer.{i}.intermediate.dense.{p}"),
    ("layers.{i}.ffn.lin2.{p}", "roberta.encoder.layer.{i}.output.dense.{p}"),
    ("layers.{i}.layer_norm2.{p}", "roberta.encoder.layer.{i}.output.LayerNorm.{p}"),
    ("mlm_head.dense.{p}", "lm_head.dense.{p}"),
    ("mlm_head.layer_norm.{p}", "lm_head.layer_norm.{p}"),
    ("mlm_head.bias", "lm_head.bias"),
]
XLMR_TOKEN_TYPE = "roberta.embeddings.token_type_embeddings.weight"
# transformers keys that hold nothing of their own: tied copies and index buffers.
XLM_TIED = {"pred_layer.proj.weight": "transformer.embeddings.weight"}
XLMR_TIED = {"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
             "lm_head.decoder.bias": "lm_head.bias"}
_IGNORED = re.compile(r"(^|\.)(position_ids|token_type_ids)$")


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(f"^{pattern}$")


def rename(name: str, table: list[tuple[str, str]], to_hf: bool) -> str | None:
    """One parameter name in the other library's naming, None if the table has no entry for it."""
    for ours, theirs in table:
        src, dst = (ours, theirs) if to_hf else (theirs, ours)
        m = _template_regex(src).match(name)
        if m:
            return dst.format(**m.groupdict())
    return None


# ----------------------------------------------------------------------------------------------
# Export: checks, config, weights, tokenizer


def _has_lang_embeddings(m) -> bool:
    return m.use_lang_emb and m.n_langs > 1


def default_format(model_cfg) -> str:
    """The format that can represent the model: XLM-R's head only exists in XLM-R."""
    return "xlmr" if model_cfg.head_transform else "xlm"


def export_problems(model_cfg, fmt: str) -> list[str]:
    """Why `model_cfg` cannot be written in format `fmt` (empty when it can): one line per option."""
    from xlmkit.core.config import ModelConfig

    known = {"dim", "n_layers", "n_heads", "ffn_dim", "dropout", "attention_dropout", "max_positions",
             "use_lang_emb", "sinusoidal_embeddings", "pre_ln", "head_transform", "layer_norm_eps",
             "vocab_size", "n_langs", "pad_id"}
    defaults = ModelConfig()
    problems = [f"model.{f.name}={getattr(model_cfg, f.name)!r}: xlmkit's exporter does not know this option"
                for f in dataclasses.fields(model_cfg)
                if f.name not in known and getattr(model_cfg, f.name) != getattr(defaults, f.name)]
    m = model_cfg
    if m.pre_ln:
        problems.append("model.pre_ln=True: transformers' XLM and XLM-R are post-LN only (LayerNorm after "
                        "each residual sum); a pre-LN model cannot be exported")
    if fmt == "xlm":
        if m.head_transform:
            problems.append("model.head_transform=True: XLM's output layer is a tied linear only, it has no "
                            "dense+GELU+LayerNorm transform (use --format xlmr)")
        if m.ffn_dim != 4 * m.dim:
            problems.append(f"model.ffn_dim={m.ffn_dim}: transformers' XLM fixes the FFN width at 4 * model.dim "
                            f"= {4 * m.dim} (use --format xlmr, whose intermediate_size is free)")
    elif fmt == "xlmr":
        if _has_lang_embeddings(m):
            problems.append(f"model.use_lang_emb=True with {m.n_langs} languages: XLM-R has no language "
                            "embeddings (use --format xlm)")
        if m.sinusoidal_embeddings:
            problems.append("model.sinusoidal_embeddings=True: XLM-R needs learned position embeddings "
                            "(use --format xlm)")
        if not m.head_transform:
            problems.append("model.head_transform=False: XLM-R's MLM head always has the dense+GELU+LayerNorm "
                            "transform (use --format xlm)")
    else:
        problems.append(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return problems


def check_exportable(model_cfg, fmt: str) -> None:
    problems = export_problems(model_cfg, fmt)
    if problems:
        raise XlmkitError(f"cannot export to format {fmt!r}: " + "; ".join(problems))


def _specials(vocab: dict | RunContract) -> dict[str, int]:
    c = vocab if isinstance(vocab, RunContract) else RunContract.from_vocab(vocab)
    return {r: int(getattr(c.specials, r)) for r in ROLES}


def hf_config(model_cfg, fmt: str, vocab: dict):
    """The transformers config object (XLMConfig / XLMRobertaConfig) of an xlmkit model."""
    tf = _transformers()
    m = model_cfg
    contract = vocab if isinstance(vocab, RunContract) else RunContract.from_vocab(vocab)
    ids = _specials(contract)
    common = dict(vocab_size=m.vocab_size, layer_norm_eps=m.layer_norm_eps, pad_token_id=ids["pad"],
                  bos_token_id=ids["bos"], eos_token_id=ids["eos"], tie_word_embeddings=True)
    if fmt == "xlm":
        lang2id = dict(contract.lang2id)
        cfg = tf.XLMConfig(
            emb_dim=m.dim, n_layers=m.n_layers, n_heads=m.n_heads, dropout=m.dropout,
            attention_dropout=m.attention_dropout, gelu_activation=True,
            sinusoidal_embeddings=m.sinusoidal_embeddings, causal=False, asm=False, n_langs=m.n_langs,
            use_lang_emb=m.use_lang_emb, max_position_embeddings=m.max_positions, embed_init_std=m.dim ** -0.5,
            unk_index=ids["unk"], mask_index=ids["mask"], mask_token_id=ids["mask"], lang_id=0, is_encoder=True,
            lang2id=lang2id, id2lang={v: k for k, v in sorted(lang2id.items(), key=lambda kv: kv[1])},
            **common)
        cfg.architectures = ["XLMWithLMHeadModel"]
    else:
        cfg = tf.XLMRobertaConfig(
            hidden_size=m.dim, num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads,
            intermediate_size=m.ffn_dim, hidden_act="gelu", hidden_dropout_prob=m.dropout,
            attention_probs_dropout_prob=m.attention_dropout,
            max_position_embeddings=m.max_positions + ids["pad"] + 1, type_vocab_size=1, is_decoder=False,
            **common)
        if contract.lang2id:  # not a transformers field: kept so that import restores the languages
            cfg.lang2id = dict(contract.lang2id)
        cfg.architectures = ["XLMRobertaForMaskedLM"]
    return cfg


def hf_state_dict(model, fmt: str) -> dict:
    """xlmkit XLMModel -> transformers state dict (tied copies left out, as save_pretrained does)."""
    import torch

    m = model.cfg
    sd = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
    if m.sinusoidal_embeddings:  # a non-persistent buffer in xlmkit, a parameter in transformers' XLM
        sd["position_embeddings.weight"] = model.position_table.detach().to("cpu", torch.float32).clone()
    table = XLM_NAMES if fmt == "xlm" else XLMR_NAMES
    out = {}
    for name, t in sd.items():
        hf_name = rename(name, table, to_hf=True)
        if hf_name is None:
            raise XlmkitError(f"model parameter {name!r} has no equivalent in transformers' "
                              f"{'XLM' if fmt == 'xlm' else 'XLM-R'}")
        out[hf_name] = t
    if fmt == "xlmr":
        pad = m.pad_id
        pos = out["roberta.embeddings.position_embeddings.weight"]  # (P, D)
        shifted = torch.zeros(m.max_positions + pad + 1, m.dim)
        shifted[pad + 1:] = pos  # xlmkit position p is XLM-R row p + pad + 1
        out["roberta.embeddings.position_embeddings.weight"] = shifted
        out[XLMR_TOKEN_TYPE] = torch.zeros(1, m.dim)
    return out


def _load_tokenizer_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _special_token_strings(tok, ids: dict[str, int]) -> dict[str, str]:
    out = {}
    for role in ROLES:
        s = tok.id_to_token(ids[role])
        if s is None:
            raise XlmkitError(f"the tokenizer has no token with id {ids[role]} (the {role} id of vocab.json)")
        out[role] = s
    return out


def _mark_special(tok, strings) -> None:
    """Make sure each string is a special added token, matched whole in raw text and never split."""
    from tokenizers import AddedToken

    existing = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    missing = [s for s in strings if s not in existing]
    if missing:
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in missing])


def export_tokenizer(tokenizer_path: Path, out_dir: Path, ids: dict[str, int], wrap: str,
                     model_max_length: int) -> dict[str, str]:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json. Returns the special strings.

    A tokenizer without post-processor gets the framing the model saw in xlmkit (vocab.json
    `sentence_wrap`): "xlm" `</s> A </s>` (pair `</s> A </s> </s> B </s>`), as in XLM's pretraining
    streams, or "roberta" `<s> A </s>` (pair `<s> A </s> </s> B </s>`)."""
    from tokenizers import processors

    if wrap not in WRAPS:
        raise XlmkitError(f"unknown sentence_wrap {wrap!r} in vocab.json (expected xlm or roberta)")
    tok = open_tokenizer(tokenizer_path)
    strings = _special_token_strings(tok, ids)
    _mark_special(tok, list(strings.values()))
    first_role = "eos" if wrap == "xlm" else "bos"
    first, eos = strings[first_role], strings["eos"]
    if tok.post_processor is None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{first} $A {eos}", pair=f"{first} $A {eos} {eos} $B:1 {eos}:1",
            special_tokens=sorted({(first, ids[first_role]), (eos, ids["eos"])}, key=lambda t: t[1]))
    tok.save(str(out_dir / "tokenizer.json"))
    special_map = {"bos_token": strings["bos"], "eos_token": strings["eos"], "unk_token": strings["unk"],
                   "sep_token": strings["eos"], "pad_token": strings["pad"], "cls_token": first,
                   "mask_token": strings["mask"]}
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "padding_side": "right",  # xlmkit numbers positions 0..T-1: real tokens must come first
        # no token_type_ids: transformers' XLM would add the embedding of token id 0 for them
        "model_input_names": ["input_ids", "attention_mask"],
    }
    extra = [t.content for _, t in sorted(tok.get_added_tokens_decoder().items())
             if t.special and t.content not in strings.values()]
    if extra:  # language tags and any other special token of the run's tokenizer
        tok_config["additional_special_tokens"] = extra
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n",
                                                   encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, ensure_ascii=False) + "\n",
                                                     encoding="utf-8")
    return strings


def export_run(run_dir: str | Path, out_dir: str | Path, fmt: str | None = None, which: str = "best",
               overwrite: bool = False) -> Path:
    """Write an xlmkit run (or checkpoint directory) as a transformers model directory."""
    from safetensors.torch import save_file

    from xlmkit.train.checkpoint import load_model

    _transformers()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise XlmkitError(f"{out_dir} exists and is not empty (pass --overwrite to replace its files)")
    if is_translation_run(run_dir, which):
        return export_translation_run(run_dir, out_dir, which)
    loaded = load_model(run_dir, which=which)
    model, cfg, contract = loaded.model, loaded.config, RunContract.from_vocab(loaded.vocab)
    fmt = fmt or default_format(cfg.model)
    check_exportable(cfg.model, fmt)
    if not loaded.tokenizer_path.is_file():
        raise XlmkitError(f"{run_dir}: tokenizer not found at {loaded.tokenizer_path}")
    ids = _specials(contract)
    if ids["pad"] != cfg.model.pad_id:
        raise XlmkitError(f"{run_dir}: vocab.json pad id {ids['pad']} != model.pad_id {cfg.model.pad_id}")

    out_dir.mkdir(parents=True, exist_ok=True)
    export_tokenizer(loaded.tokenizer_path, out_dir, ids, contract.wrap(),
                     cfg.model.max_positions)
    hf_cfg = hf_config(cfg.model, fmt, contract)
    hf_cfg.save_pretrained(str(out_dir))
    save_file(hf_state_dict(model, fmt), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


def is_translation_run(run_dir: str | Path, which: str = "best") -> bool:
    from xlmkit.tasks.translation import DECODER_FILE
    from xlmkit.train.checkpoint import resolve_checkpoint

    return (resolve_checkpoint(Path(run_dir), which) / DECODER_FILE).is_file()


def export_translation_run(run_dir: str | Path, out_dir: Path, which: str = "best") -> Path:
    """A `train-mt` run as transformers' EncoderDecoderModel (XLM-R halves, xlmkit.interop.hf_seq2seq)
    with its tokenizer: the same greedy translations (tested). A model whose language embeddings
    select the target language has no equivalent there and is refused, naming the option."""
    from xlmkit.interop.hf_seq2seq import export_encoder_decoder, export_problems
    from xlmkit.tasks.translation import load_translator
    from xlmkit.train.checkpoint import read_state

    tr = load_translator(run_dir, which, device="cpu", precision="fp32")
    problems = export_problems(tr.model.cfg)
    if problems:
        raise XlmkitError(f"{run_dir}: cannot export this translation model to transformers: " + "; ".join(problems))
    state = read_state(tr.path)
    contract = RunContract.from_vocab(state.get("vocab"), tr.tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_path = (tr.path / state.get("tokenizer", "../../tokenizer.json")).resolve()
    export_tokenizer(tok_path, out_dir, _specials(contract), contract.wrap(), tr.model.cfg.max_positions)
    return export_encoder_decoder(tr.model, contract, out_dir)


# ----------------------------------------------------------------------------------------------
# Import: config, weights, tokenizer


def _read_hf_config(hf_dir: Path) -> dict:
    f = hf_dir / "config.json"
    if not f.is_file():
        raise XlmkitError(f"{hf_dir}: no config.json; not a transformers model directory")
    try:
        data = json.loads(f.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise XlmkitError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise XlmkitError(f"{f}: not a JSON object")
    return data


def read_hf_weights(hf_dir: Path) -> dict:
    """All tensors of a local checkpoint: model.safetensors, pytorch_model.bin (weights_only, never
    arbitrary unpickling), or their sharded forms with an index.json."""
    import torch
    from safetensors.torch import load_file

    def load_one(f: Path) -> dict:
        if f.suffix == ".safetensors":
            from xlmkit.core.integrity import check_safetensors

            why = check_safetensors(f)  # a cut copy: one line, not the library's error
            if why is not None:
                raise XlmkitError(f"{f}: {why}")
            try:
                return load_file(str(f))
            except OSError:
                raise
            except Exception as e:
                raise XlmkitError(f"{f}: not a readable safetensors file ({type(e).__name__}: {e})") from None
        try:
            return torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle that needs more than tensors is refused, never executed
            raise XlmkitError(f"{f}: cannot read as plain tensors ({type(e).__name__}: {e}); "
                              "convert it to model.safetensors") from None

    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (hf_dir / single).is_file():
            return load_one(hf_dir / single)
        if (hf_dir / index).is_file():
            try:
                weight_map = json.loads((hf_dir / index).read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise XlmkitError(f"{hf_dir / index}: not a valid weights index ({type(e).__name__}: {e})") from None
            sd = {}
            for shard in sorted(set(weight_map.values())):
                sd.update(load_one(hf_dir / shard))
            return sd
    raise XlmkitError(f"{hf_dir}: no model.safetensors or pytorch_model.bin (or sharded index) found")


def _canonical_langs(lang2id: dict[str, int]) -> dict[str, int]:
    return canonical_lang2id(lang2id)


def model_config_from_hf(hf: dict, weights: dict, special_ids: dict[str, int]):
    """(ModelConfig, lang2id, fmt) from a transformers config.json dict. Raises for what xlmkit's
    encoder does not compute."""
    from xlmkit.core.config import ModelConfig

    model_type = hf.get("model_type")
    if model_type == "xlm":
        problems = []
        if hf.get("asm", False):
            problems.append("asm=true (adaptive softmax output layer)")
        if not hf.get("gelu_activation", True):
            problems.append("gelu_activation=false (ReLU FFN; xlmkit uses GELU)")
        if hf.get("causal", False):
            problems.append("causal=true (a causal-only encoder; xlmkit's encoder is bidirectional, causal "
                            "attention being a per-call choice)")
        if not hf.get("is_encoder", True):
            problems.append("is_encoder=false")
        if hf.get("tie_word_embeddings", True) is False:
            problems.append("tie_word_embeddings=false (xlmkit's output layer is tied)")
        if problems:
            raise XlmkitError("cannot import this XLM checkpoint: " + "; ".join(problems))
        dim = int(hf.get("emb_dim", 2048))
        n_langs = int(hf.get("n_langs", 1))
        lang2id = hf.get("lang2id")
        if not lang2id:
            if n_langs > 1:
                raise XlmkitError(f"config.json has n_langs={n_langs} but no lang2id; add lang2id to it")
            lang2id = {"xx": 0}
        lang2id = _canonical_langs(lang2id)
        if sorted(set(lang2id.values())) != list(range(n_langs)):
            raise XlmkitError(f"config.json: lang2id ids {sorted(lang2id.values())} do not cover 0..{n_langs - 1}")
        pos_key = "transformer.position_embeddings.weight"
        sinusoidal = bool(hf.get("sinusoidal_embeddings", False))
        max_positions = int(hf.get("max_position_embeddings", 512))
        if sinusoidal and pos_key in weights:
            from xlmkit.model.encoder import create_sinusoidal_embeddings

            table = create_sinusoidal_embeddings(max_positions, dim)
            if (weights[pos_key].float() - table).abs().max().item() > 1e-6:
                print("[xlmkit] note: the checkpoint says sinusoidal_embeddings but its position table is "
                      "not the sinusoidal one; importing it as learned position embeddings")
                sinusoidal = False
        cfg = ModelConfig(
            dim=dim, n_layers=int(hf.get("n_layers", 12)), n_heads=int(hf.get("n_heads", 16)), ffn_dim=4 * dim,
            dropout=float(hf.get("dropout", 0.1)), attention_dropout=float(hf.get("attention_dropout", 0.1)),
            max_positions=max_positions, use_lang_emb=bool(hf.get("use_lang_emb", True)),
            sinusoidal_embeddings=sinusoidal, pre_ln=False, head_transform=False,
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            vocab_size=int(hf.get("vocab_size", hf.get("n_words", 0))),
            n_langs=n_langs, pad_id=special_ids["pad"])
        return cfg, lang2id, "xlm"
    if model_type == "xlm-roberta":
        problems = []
        if hf.get("hidden_act", "gelu") != "gelu":
            problems.append(f"hidden_act={hf.get('hidden_act')!r} (xlmkit uses exact GELU, 'gelu')")
        if hf.get("is_decoder", False) or hf.get("add_cross_attention", False):
            problems.append("is_decoder / add_cross_attention (a decoder; xlmkit's encoder is bidirectional)")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            problems.append(f"position_embedding_type={hf.get('position_embedding_type')!r} (only absolute)")
        if hf.get("tie_word_embeddings", True) is False:
            problems.append("tie_word_embeddings=false (xlmkit's output layer is tied)")
        pad = special_ids["pad"]
        max_positions = int(hf.get("max_position_embeddings", 512)) - pad - 1
        if max_positions < 1:
            problems.append(f"max_position_embeddings={hf.get('max_position_embeddings')} leaves no position "
                            f"after the padding offset (pad_token_id + 1 = {pad + 1})")
        if problems:
            raise XlmkitError("cannot import this XLM-R checkpoint: " + "; ".join(problems))
        cfg = ModelConfig(
            dim=int(hf.get("hidden_size", 768)), n_layers=int(hf.get("num_hidden_layers", 12)),
            n_heads=int(hf.get("num_attention_heads", 12)), ffn_dim=int(hf.get("intermediate_size", 3072)),
            dropout=float(hf.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)), max_positions=max_positions,
            use_lang_emb=False, sinusoidal_embeddings=False, pre_ln=False, head_transform=True,
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)), vocab_size=int(hf.get("vocab_size", 0)),
            n_langs=1, pad_id=pad)
        # XLM-R has no languages; a model exported by xlmkit keeps its run's lang2id in config.json
        saved = hf.get("lang2id")
        lang2id = _canonical_langs(saved) if isinstance(saved, dict) and saved else {"xx": 0}
        cfg = dataclasses.replace(cfg, n_langs=max(lang2id.values()) + 1)
        return cfg, lang2id, "xlmr"
    raise XlmkitError(_unknown_model_type(hf))


def _unknown_model_type(hf: dict) -> str:
    return (f"xlmkit import reads XLM ('xlm') and XLM-R ('xlm-roberta') checkpoints; config.json has "
            f"model_type={hf.get('model_type')!r}")


def _normalise_hf_names(sd: dict, fmt: str) -> dict:
    """Old LayerNorm names (gamma / beta) and checkpoints of the bare encoder (no 'transformer.' /
    'roberta.' prefix) to the names of XLMWithLMHeadModel / XLMRobertaForMaskedLM."""
    prefix, head = ("transformer.", ("pred_layer.",)) if fmt == "xlm" else ("roberta.", ("lm_head.",))
    has_prefix = any(k.startswith(prefix) for k in sd)
    out = {}
    for k, v in sd.items():
        k = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))
        if not has_prefix and not k.startswith(head):
            k = prefix + k
        out[k] = v
    return out


def xlmkit_state_dict(sd: dict, fmt: str, cfg) -> tuple[dict, list[str]]:
    """transformers state dict -> xlmkit names (float32). Returns (state dict, notes)."""
    import torch

    sd = _normalise_hf_names(sd, fmt)
    table, tied = (XLM_NAMES, XLM_TIED) if fmt == "xlm" else (XLMR_NAMES, XLMR_TIED)
    out, notes, unknown = {}, [], []
    for name, t in sd.items():
        if _IGNORED.search(name):
            continue
        if name in tied:
            src = sd.get(tied[name])
            if src is not None and not torch.equal(src, t):
                raise XlmkitError(f"{name} differs from {tied[name]}: an untied output layer cannot be imported "
                                  "(xlmkit's output layer is the token embedding matrix)")
            continue
        if fmt == "xlmr" and (name.startswith("roberta.pooler.") or name == XLMR_TOKEN_TYPE):
            continue
        ours = rename(name, table, to_hf=False)
        if ours is None:
            unknown.append(name)
            continue
        out[ours] = t.detach().to(torch.float32)
    if unknown:
        raise XlmkitError(f"checkpoint tensors with no xlmkit equivalent: {', '.join(sorted(unknown)[:8])}"
                          + (" …" if len(unknown) > 8 else ""))
    if any(k.startswith("roberta.pooler.") for k in sd):
        notes.append("dropped the pooler (roberta.pooler.*): XLMRobertaForMaskedLM does not use it")
    if fmt == "xlmr":
        pad = cfg.pad_id
        pos = out.get("position_embeddings.weight")
        if pos is not None:
            pos = pos[pad + 1:].clone()  # XLM-R row p + pad + 1 is xlmkit position p
            if XLMR_TOKEN_TYPE in sd:
                tt = sd[XLMR_TOKEN_TYPE].detach().to(torch.float32)
                if tt.shape[0] > 1:
                    notes.append(f"token_type_embeddings has {tt.shape[0]} rows; row 0 (the one MLM uses) is "
                                 "folded into the positions, the others are dropped")
                pos = pos + tt[0]  # added to every token: the same sum as a position offset
            out["position_embeddings.weight"] = pos
    if cfg.sinusoidal_embeddings:
        out.pop("position_embeddings.weight", None)  # recomputed from the config (checked equal)
    return out, notes


SLOW_TOKENIZER_FILES = ("sentencepiece.bpe.model", "spiece.model", "tokenizer.model", "vocab.json", "vocab.txt")


def _tokenizer_from_hf_dir(hf_dir: Path):
    """The checkpoint's tokenizer as a `tokenizers.Tokenizer`: tokenizer.json when present, else the
    transformers fast tokenizer converted from its slow files (local files only)."""
    from tokenizers import Tokenizer

    if (hf_dir / "tokenizer.json").is_file():
        return open_tokenizer(hf_dir / "tokenizer.json")
    slow_files = [f for f in SLOW_TOKENIZER_FILES if (hf_dir / f).is_file()]
    if not slow_files:
        # transformers would build a placeholder tokenizer of five specials without complaint
        raise XlmkitError(f"{hf_dir}: no tokenizer (neither tokenizer.json nor any of "
                          f"{', '.join(SLOW_TOKENIZER_FILES)}); copy the model's tokenizer files there")
    if any(f.endswith(".model") for f in slow_files):
        try:
            import sentencepiece  # noqa: F401  (transformers' converter reads the .model file with it)
        except ImportError:
            raise XlmkitError(f"{hf_dir}: no tokenizer.json; converting {slow_files[0]} needs the sentencepiece "
                              "package (pip install sentencepiece), or add the model's tokenizer.json") from None
    tf = _transformers()
    try:
        hf_tok = tf.AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise XlmkitError(f"{hf_dir}: no tokenizer.json, and transformers could not load its tokenizer offline "
                          f"({type(e).__name__}: {first_line}); add a tokenizer.json") from None
    backend = getattr(hf_tok, "backend_tokenizer", None)
    if backend is None:
        raise XlmkitError(
            f"{hf_dir}: no tokenizer.json, and its tokenizer ({type(hf_tok).__name__}) has no `tokenizers` "
            "equivalent (XLM's Moses + BPE tokenizer is slow-only); convert it to a tokenizer.json first")
    return Tokenizer.from_str(backend.to_str())


def _hf_special_strings(hf_dir: Path) -> dict[str, str]:
    """Special token strings declared by tokenizer_config.json / special_tokens_map.json, if any."""
    out: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = hf_dir / name
        if not f.is_file():
            continue
        data = json.loads(f.read_text(encoding="utf-8"))
        for role in ROLES:
            v = data.get(f"{role}_token")
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str) and role not in out:
                out[role] = v
    return out


def special_ids_from_hf(hf: dict, tok, hf_dir: Path) -> dict[str, int]:
    """The five special ids: from config.json where it has them, else the tokenizer's; checked against
    the tokenizer files so that a disagreement is an error, never a silent off-by-one."""
    declared = _hf_special_strings(hf_dir)
    from_config: dict[str, int | None] = {
        "bos": hf.get("bos_token_id", hf.get("bos_index")),
        "eos": hf.get("eos_token_id", hf.get("eos_index")),
        "pad": hf.get("pad_token_id", hf.get("pad_index")),
        "unk": hf.get("unk_index") if hf.get("model_type") == "xlm" else None,
        "mask": hf.get("mask_index") if hf.get("model_type") == "xlm" else None,
    }
    ids = {}
    for role in ROLES:
        cid = from_config[role]
        if isinstance(cid, list):
            cid = cid[0]
        s = declared.get(role, DEFAULT_SPECIAL_TOKENS[role] if cid is None else None)
        tid = tok.token_to_id(s) if s is not None else None
        if cid is None and tid is None:
            raise XlmkitError(f"{hf_dir}: cannot find the {role} token ({s!r}) in the tokenizer")
        if cid is not None and tid is not None and int(cid) != tid:
            raise XlmkitError(f"{hf_dir}: config.json gives {role} id {cid} but the tokenizer maps {s!r} to {tid}")
        ids[role] = int(cid if cid is not None else tid)
        if tok.id_to_token(ids[role]) is None:
            raise XlmkitError(f"{hf_dir}: the {role} id {ids[role]} is not in the tokenizer")
    return ids


def sentence_wrap_of(tok, ids: dict[str, int], model_type: str) -> str:
    """How the checkpoint's tokenizer frames a sentence: "xlm" (`</s> a </s>`) or "roberta"
    (`<s> a </s>`), from its post-processor; without one, the convention of the model type (original
    XLM models were pretrained on `</s>`-separated streams)."""
    pp = json.loads(tok.to_str()).get("post_processor")
    first = None
    todo = [pp] if pp else []
    while todo and first is None:
        p = todo.pop(0)
        if p.get("type") == "Sequence":
            todo.extend(p.get("processors") or [])
        elif p.get("type") == "TemplateProcessing":
            piece = (p.get("single") or [{}])[0]
            if "SpecialToken" in piece:
                first = piece["SpecialToken"]["id"]
        elif p.get("type") in ("RobertaProcessing", "BertProcessing") and p.get("cls"):
            first = p["cls"][0]
    if first is not None:
        first_id = tok.token_to_id(first)
        if first_id == ids["eos"]:
            return "xlm"
        if first_id == ids["bos"]:
            return "roberta"
    return "xlm" if model_type == "xlm" else "roberta"


def _xlmkit_tokenizer(tok, ids: dict[str, int]):
    """Strip what transformers adds around sentences (xlmkit frames them itself) and make sure every
    special is a special added token. Returns (tokenizer, special_ids, special_tokens)."""
    tok.post_processor = None
    tok.no_padding()
    tok.no_truncation()
    strings = {r: tok.id_to_token(ids[r]) for r in ROLES}
    _mark_special(tok, list(strings.values()))
    special_ids = sorted({t_id for t_id, t in tok.get_added_tokens_decoder().items() if t.special} | set(ids.values()))
    return tok, special_ids, strings


def import_checkpoint(hf_dir: str | Path, run_dir: str | Path, languages: list[str] | None = None,
                      config: str = "base", overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Read a local transformers XLM / XLM-R directory into an xlmkit run (one weights checkpoint)."""
    from xlmkit.train.checkpoint import CHECKPOINTS, save_model_run
    from xlmkit.core.config import ConfigError, load_config
    from xlmkit.core.langs import canonical_lang
    from xlmkit.model.encoder import XLMModel

    _transformers()
    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    if not hf_dir.is_dir():
        raise XlmkitError(f"{hf_dir}: not a directory (xlmkit import reads local checkpoints only, it never "
                          "downloads; use huggingface-cli download first)")
    if (run_dir / CHECKPOINTS).exists():
        raise XlmkitError(f"{run_dir} already holds checkpoints; choose a new directory")
    if any(o.strip().startswith("model.") for o in overrides):
        raise ConfigError("xlmkit import: model settings come from the checkpoint; --set model.* is not allowed")
    hf = _read_hf_config(hf_dir)
    fmt = MODEL_TYPES.get(hf.get("model_type"))
    if fmt is None:
        raise XlmkitError(_unknown_model_type(hf))
    tok = _tokenizer_from_hf_dir(hf_dir)
    ids = special_ids_from_hf(hf, tok, hf_dir)
    raw = _normalise_hf_names(read_hf_weights(hf_dir), fmt)
    model_cfg, lang2id, fmt = model_config_from_hf(hf, raw, ids)

    emb_key = "transformer.embeddings.weight" if fmt == "xlm" else "roberta.embeddings.word_embeddings.weight"
    if emb_key not in raw:
        raise XlmkitError(f"{hf_dir}: no {emb_key} in the weights")
    if raw[emb_key].shape != (model_cfg.vocab_size, model_cfg.dim):
        raise XlmkitError(f"{hf_dir}: {emb_key} has shape {tuple(raw[emb_key].shape)}, config.json says "
                          f"({model_cfg.vocab_size}, {model_cfg.dim})")
    if tok.get_vocab_size(with_added_tokens=True) < model_cfg.vocab_size // 2:
        raise XlmkitError(f"{hf_dir}: the tokenizer has {tok.get_vocab_size(with_added_tokens=True)} tokens for a "
                          f"model of vocab_size {model_cfg.vocab_size}; it is not this model's tokenizer")
    if tok.get_vocab_size(with_added_tokens=True) > model_cfg.vocab_size:
        raise XlmkitError(f"{hf_dir}: the tokenizer has {tok.get_vocab_size(with_added_tokens=True)} tokens, more "
                          f"than the model's vocab_size {model_cfg.vocab_size}")

    if languages and fmt != "xlmr":
        raise XlmkitError("--languages is for XLM-R checkpoints; an XLM checkpoint's languages come from its "
                          "config.json lang2id")
    if fmt == "xlmr" and languages:
        try:
            langs = sorted({canonical_lang(x) for x in languages})
        except ValueError as e:
            raise XlmkitError(str(e)) from None
        lang2id = {lang: 0 for lang in langs}
        model_cfg = dataclasses.replace(model_cfg, n_langs=1)

    weights, notes = xlmkit_state_dict(raw, fmt, model_cfg)
    model = XLMModel(model_cfg)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    fresh_ok = {"mlm_head.bias"} if fmt == "xlm" else {"mlm_head.bias", "mlm_head.dense.weight", "mlm_head.dense.bias",
                                                       "mlm_head.layer_norm.weight", "mlm_head.layer_norm.bias"}
    if unexpected or set(missing) - fresh_ok:
        raise XlmkitError(f"{hf_dir}: weights do not fit the model: missing {sorted(set(missing) - fresh_ok)[:6]}, "
                          f"unexpected {sorted(unexpected)[:6]}")
    if missing:
        notes.append(f"the checkpoint has no MLM head ({', '.join(sorted(missing))}): initialised fresh")
    model.eval()

    wrap = sentence_wrap_of(tok, ids, hf["model_type"])
    tok, special_ids, special_tokens = _xlmkit_tokenizer(tok, ids)
    run_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(run_dir / "tokenizer.json"))
    cfg = load_config(config, overrides)
    kind = "unigram" if json.loads(tok.to_str())["model"]["type"] == "Unigram" else "bpe"
    prepare = dataclasses.replace(cfg.prepare, vocab_size=max(16, tok.get_vocab_size(with_added_tokens=True)),
                                  tokenizer=kind)
    cfg = dataclasses.replace(cfg, prepare=prepare, model=model_cfg)
    languages_list = sorted(lang2id, key=lambda k: (lang2id[k], k))
    vocab = RunContract(
        specials=SpecialIds(**{r: int(ids[r]) for r in ROLES}), lang2id=lang2id, sentence_wrap=wrap,
        vocab_size=model_cfg.vocab_size, languages=tuple(languages_list), special_ids=tuple(special_ids),
        special_tokens=special_tokens,
        extra={"source": {"format": "transformers", "model_type": hf["model_type"], "path": str(hf_dir.resolve())}},
    ).to_vocab()
    save_model_run(run_dir, model, cfg, vocab, run_dir / "tokenizer.json")
    for note in notes:
        print(f"[xlmkit] note: {note}")
    return run_dir
