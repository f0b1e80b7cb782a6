"""An xlmkit EncoderDecoder as transformers' EncoderDecoderModel (xlmkit.interop.hf_seq2seq): same logits,
same greedy tokens; options without an equivalent refused in one line."""

import pytest
import torch

from xlmkit.core.config import ModelConfig
from xlmkit.model.decoder import EncoderDecoder
from xlmkit.core.errors import XlmkitError
from xlmkit.model.generate import GenerationConfig, generate

pytest.importorskip("transformers")
from xlmkit.interop.hf_seq2seq import export_encoder_decoder, to_transformers  # noqa: E402

VOCAB = {"specials": {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 4}, "sentence_wrap": "xlm"}


def xlmr_style(**kw) -> EncoderDecoder:
    cfg = dict(dim=32, n_layers=2, n_heads=4, ffn_dim=48, dropout=0.0, attention_dropout=0.0, max_positions=40,
               use_lang_emb=False, head_transform=True, layer_norm_eps=1e-5, vocab_size=30, n_langs=2, pad_id=1)
    torch.manual_seed(0)
    model = EncoderDecoder(ModelConfig(**{**cfg, **kw}))
    with torch.no_grad():  # every weight random, LayerNorms and biases included, so every name is checked
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def sources():
    src = torch.tensor([[2, 7, 8, 9, 10, 2], [2, 11, 12, 2, 1, 1]])
    return src, src != 1


def test_teacher_forced_logits_match():
    model = xlmr_style()
    hf = to_transformers(model, VOCAB)
    src, mask = sources()
    tgt = torch.tensor([[2, 5, 6, 7], [2, 8, 9, 10]])
    with torch.no_grad():
        ours = model(src, None, tgt, None, mask)
        theirs = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_greedy_tokens_match_and_the_export_reloads(tmp_path):
    from transformers import EncoderDecoderModel

    model = xlmr_style()
    src, mask = sources()
    n = 8
    ours = generate(model, src, None, None, GenerationConfig(max_len_a=0, max_len_b=n + 1), 2, 2, src_mask=mask)
    hf = EncoderDecoderModel.from_pretrained(export_encoder_decoder(model, VOCAB, tmp_path / "hf"))
    out = hf.generate(input_ids=src, attention_mask=mask.long(), max_new_tokens=n + 1, num_beams=1, do_sample=False)
    for row, mine in zip(out.tolist(), ours):
        theirs = row[1:]  # after the decoder start token
        theirs = theirs[: theirs.index(2)] if 2 in theirs else theirs
        assert mine == theirs[:n] and (len(mine) == n or len(theirs) == len(mine))


def test_options_without_an_equivalent_are_refused():
    with pytest.raises(XlmkitError, match="use_lang_emb=True with 2 languages"):
        to_transformers(xlmr_style(use_lang_emb=True), VOCAB)
    with pytest.raises(XlmkitError, match="pre_ln=True"):
        to_transformers(xlmr_style(pre_ln=True), VOCAB)
