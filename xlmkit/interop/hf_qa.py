"""Export of a fine-tuned QA model (`xlmkit qa`'s OUT/model, xlmkit.tasks.qa_task) to transformers.

    export_qa("runs/small/eval/xquad/model", "hf/qa")      # AutoModelForQuestionAnswering loads hf/qa

Formats (as xlmkit.interop.hf, the encoder converts by renaming; the span head is transformers'
`qa_outputs`, nn.Linear(D, 2), start logits first):
- `xlmr`: `XLMRobertaForQuestionAnswering`, for models without language embeddings (the default for
  them). Its encoder has no MLM head, so model.head_transform does not matter here.
- `xlm`: `XLMForQuestionAnsweringSimple` (the same linear span head over XLM's encoder; it takes
  `langs`), the default for models with language embeddings.
The MLM head of the encoder is left out (neither class has one). The tokenizer is exported as
`xlmkit export` writes it: its pair template is the QA layout, `first question </s> </s> context </s>`.

Positions. xlmkit's XLM runs restart positions at 0 on the context side of the pair (the TLM layout,
see xlmkit.tasks.qa_task); transformers numbers one run unless given `position_ids`. So for a run of
sentence_wrap "xlm" pass `position_ids` (xlmkit's positions; XLM-R: + pad_token_id + 1, XLM-R's offset)
to get xlmkit's logits exactly; for XLM-R style runs ("roberta" wrap) the default positions are xlmkit's.
The parity tests (tests/test_qa_hf.py) check start and end logits both ways.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from xlmkit.core.errors import XlmkitError
from xlmkit.data.contract import RunContract
from xlmkit.interop.hf import (_has_lang_embeddings, _specials, _transformers, check_exportable, export_tokenizer,
                               hf_config, hf_state_dict)

QA_ARCHITECTURES = {"xlm": "XLMForQuestionAnsweringSimple", "xlmr": "XLMRobertaForQuestionAnswering"}
QA_HEAD = "qa_outputs"


def qa_default_format(model_cfg) -> str:
    """XLM-R for models without language embeddings (and learned positions), XLM otherwise."""
    return "xlm" if _has_lang_embeddings(model_cfg) or model_cfg.sinusoidal_embeddings else "xlmr"


def _encoder_cfg(model_cfg, fmt: str):
    """The model config as the exporter judges it: the MLM head is not exported, so it is taken to be
    the one the format has."""
    return dataclasses.replace(model_cfg, head_transform=fmt == "xlmr")


class _EncoderOnly:
    """The encoder's parameters without its MLM head, in the shape hf_state_dict reads."""

    def __init__(self, encoder) -> None:
        self.cfg = encoder.cfg
        self._encoder = encoder

    def state_dict(self) -> dict:
        return {k: v for k, v in self._encoder.state_dict().items() if not k.startswith("mlm_head.")}

    @property
    def position_table(self):
        return self._encoder.position_table


def qa_state_dict(span_model, fmt: str) -> dict:
    """xlmkit SpanModel -> the state dict of transformers' QA class of `fmt`."""
    import torch

    sd = hf_state_dict(_EncoderOnly(span_model.encoder), fmt)
    head = span_model.head
    sd[f"{QA_HEAD}.weight"] = head.weight.detach().to("cpu", torch.float32).clone()  # (2, D): start, end
    sd[f"{QA_HEAD}.bias"] = head.bias.detach().to("cpu", torch.float32).clone()
    return sd


def export_qa_model(span_model, model_cfg, vocab: dict | RunContract, tokenizer_path: str | Path, out_dir: str | Path,
                    fmt: str | None = None) -> Path:
    """Write a SpanModel (encoder + span head) as a transformers QA model directory."""
    from safetensors.torch import save_file

    _transformers()
    out_dir = Path(out_dir)
    contract = vocab if isinstance(vocab, RunContract) else RunContract.from_vocab(vocab)
    fmt = fmt or qa_default_format(model_cfg)
    if fmt not in QA_ARCHITECTURES:
        raise XlmkitError(f"unknown format {fmt!r}; known: {', '.join(QA_ARCHITECTURES)}")
    cfg = _encoder_cfg(model_cfg, fmt)
    check_exportable(cfg, fmt)
    ids = _specials(contract)
    if ids["pad"] != cfg.pad_id:
        raise XlmkitError(f"vocab.json pad id {ids['pad']} != model.pad_id {cfg.pad_id}")
    if not Path(tokenizer_path).is_file():
        raise XlmkitError(f"tokenizer not found at {tokenizer_path}")
    out_dir.mkdir(parents=True, exist_ok=True)
    export_tokenizer(Path(tokenizer_path), out_dir, ids, contract.wrap(), cfg.max_positions)
    hf_cfg = hf_config(cfg, fmt, contract)
    hf_cfg.architectures = [QA_ARCHITECTURES[fmt]]
    hf_cfg.save_pretrained(str(out_dir))
    save_file(qa_state_dict(span_model, fmt), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


def export_qa(qa_dir: str | Path, out_dir: str | Path, fmt: str | None = None, which: str = "best",
              overwrite: bool = False) -> Path:
    """Write a fine-tuned QA model directory (`xlmkit qa`'s OUT/model) as a transformers directory that
    AutoModelForQuestionAnswering and AutoTokenizer load."""
    from xlmkit.tasks.qa_task import load_qa_model

    _transformers()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise XlmkitError(f"{out_dir} exists and is not empty (pass overwrite=True to replace its files)")
    qa = load_qa_model(qa_dir, which=which)
    return export_qa_model(qa.model, qa.config.model, qa.contract, qa.tokenizer_path, out_dir, fmt)
