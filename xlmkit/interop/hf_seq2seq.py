"""An xlmkit EncoderDecoder as a transformers `EncoderDecoderModel` (XLM-R halves).

    hf_model = to_transformers(model, vocab)           # EncoderDecoderModel(XLMRobertaModel, XLMRobertaForCausalLM)
    export_encoder_decoder(model, vocab, "hf_mt/")      # save_pretrained: config.json + model.safetensors

transformers can hold an XLM-R-style model (no language embeddings, learned positions, post-LN, the
XLM-R output head): the encoder is an `XLMRobertaModel`, the decoder an `XLMRobertaForCausalLM` with
cross-attention (`is_decoder`, `add_cross_attention`), whose blocks are xlmkit's post-LN decoder blocks
(self-attention, add & LayerNorm, cross-attention, add & LayerNorm, FFN, add & LayerNorm). The token
matrix, one in xlmkit, is copied into the encoder's and the decoder's word embeddings (the decoder's
output layer stays tied to its own). Positions are shifted as in xlmkit.interop.hf: xlmkit position p is
XLM-R row p + pad_id + 1. Greedy decoding gives the same tokens (tested). A model with an option that
has no equivalent is refused with one line naming it.
"""

from __future__ import annotations

from pathlib import Path

from xlmkit.core.errors import XlmkitError
from xlmkit.data.contract import RunContract
from xlmkit.interop.hf import XLMR_NAMES, _transformers, hf_config, rename

# decoder block: xlmkit name -> transformers name under decoder.roberta.encoder.layer.{i}
_DECODER_BLOCK = [
    ("self_attention.q_lin.{p}", "attention.self.query.{p}"),
    ("self_attention.k_lin.{p}", "attention.self.key.{p}"),
    ("self_attention.v_lin.{p}", "attention.self.value.{p}"),
    ("self_attention.out_lin.{p}", "attention.output.dense.{p}"),
    ("layer_norm1.{p}", "attention.output.LayerNorm.{p}"),
    ("cross_attention.q_lin.{p}", "crossattention.self.query.{p}"),
    ("cross_attention.k_lin.{p}", "crossattention.self.key.{p}"),
    ("cross_attention.v_lin.{p}", "crossattention.self.value.{p}"),
    ("cross_attention.out_lin.{p}", "crossattention.output.dense.{p}"),
    ("layer_norm15.{p}", "crossattention.output.LayerNorm.{p}"),
    ("ffn.lin1.{p}", "intermediate.dense.{p}"),
    ("ffn.lin2.{p}", "output.dense.{p}"),
    ("layer_norm2.{p}", "output.LayerNorm.{p}"),
]
DECODER_NAMES = [
    ("position_embeddings.weight", "roberta.embeddings.position_embeddings.weight"),
    ("layer_norm_emb.{p}", "roberta.embeddings.LayerNorm.{p}"),
    *[(f"layers.{{i}}.{ours}", f"roberta.encoder.layer.{{i}}.{theirs}") for ours, theirs in _DECODER_BLOCK],
    ("head.dense.{p}", "lm_head.dense.{p}"),
    ("head.layer_norm.{p}", "lm_head.layer_norm.{p}"),
    ("head.bias", "lm_head.bias"),
]


def export_problems(cfg) -> list[str]:
    problems = []
    if cfg.use_lang_emb and cfg.n_langs > 1:
        problems.append(f"model.use_lang_emb=True with {cfg.n_langs} languages: transformers' XLM-R halves have "
                        f"no language embeddings, so nothing would select the target language")
    if cfg.pre_ln:
        problems.append("model.pre_ln=True: transformers' XLM-R blocks are post-LN only")
    if cfg.sinusoidal_embeddings:
        problems.append("model.sinusoidal_embeddings=True: XLM-R needs learned position embeddings")
    if not cfg.head_transform:
        problems.append("model.head_transform=False: XLM-R's output head always has the dense+GELU+LayerNorm "
                        "transform")
    return problems


def to_transformers(model, vocab: dict):
    """The EncoderDecoderModel holding `model`'s weights (fp32, eval mode)."""
    import torch

    problems = export_problems(model.cfg)
    if problems:
        raise XlmkitError("cannot export this encoder-decoder to transformers: " + "; ".join(problems))
    tf = _transformers()
    m = model.cfg
    enc_cfg = hf_config(m, "xlmr", vocab)
    dec_cfg = hf_config(m, "xlmr", vocab)
    dec_cfg.is_decoder, dec_cfg.add_cross_attention = True, True
    hf = tf.EncoderDecoderModel(encoder=tf.XLMRobertaModel(enc_cfg, add_pooling_layer=False),
                                decoder=tf.XLMRobertaForCausalLM(dec_cfg))
    pad = m.pad_id

    def shifted(pos):  # (P, D) -> (P + pad + 1, D)
        out = torch.zeros(m.max_positions + pad + 1, m.dim)
        out[pad + 1:] = pos
        return out

    sd = {}
    for name, t in model.encoder.state_dict().items():
        if name.startswith("mlm_head."):
            continue  # the encoder's MLM head has no place in an EncoderDecoderModel
        hf_name = rename(name, XLMR_NAMES, to_hf=True)
        if hf_name is None:
            raise XlmkitError(f"encoder parameter {name!r} has no equivalent in transformers' XLM-R")
        sd["encoder." + hf_name.removeprefix("roberta.")] = t.detach().float()
    for name, t in model.decoder.state_dict().items():
        hf_name = rename(name, DECODER_NAMES, to_hf=True)
        if hf_name is None:
            raise XlmkitError(f"decoder parameter {name!r} has no equivalent in transformers' XLM-R decoder")
        sd["decoder." + hf_name] = t.detach().float()
    sd["encoder.embeddings.position_embeddings.weight"] = shifted(sd["encoder.embeddings.position_embeddings.weight"])
    sd["decoder.roberta.embeddings.position_embeddings.weight"] = shifted(
        sd["decoder.roberta.embeddings.position_embeddings.weight"])
    token = model.token_weight.detach().float()
    sd["decoder.roberta.embeddings.word_embeddings.weight"] = token.clone()
    sd["decoder.lm_head.decoder.weight"] = token.clone()
    sd["decoder.lm_head.decoder.bias"] = sd["decoder.lm_head.bias"]
    for half in ("encoder.", "decoder.roberta."):
        sd[half + "embeddings.token_type_embeddings.weight"] = torch.zeros(1, m.dim)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise XlmkitError(f"internal: export left {missing} unset and {unexpected} unused")
    c = vocab if isinstance(vocab, RunContract) else RunContract.from_vocab(vocab)
    ids = {"bos": c.specials.bos, "eos": c.eos_id, "pad": pad}
    start = c.first_id  # </s> (xlm wrap) or <s> (roberta)
    for config in (hf.config, hf.generation_config):  # generate() reads the latter
        config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = start, pad, ids["eos"]
        config.bos_token_id = ids["bos"]
    hf.config.tie_word_embeddings = True
    return hf.eval()


def export_encoder_decoder(model, vocab: dict, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    to_transformers(model, vocab).save_pretrained(out_dir)
    return out_dir
