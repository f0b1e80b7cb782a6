"""Export of the QA span head to transformers (xlmkit.interop.hf_qa): start / end logits of
XLMForQuestionAnsweringSimple and XLMRobertaForQuestionAnswering equal xlmkit's on QA windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_qa_task import FT, write_tiny_xquad  # noqa: E402

from xlmkit.interop.hf_qa import export_qa, export_qa_model, qa_default_format  # noqa: E402
from xlmkit.tasks.qa import read_squad  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
TOL = 1e-4


def qa_batch(run_dir: Path, xquad: Path, lang: str = "en", wrap: str | None = None):
    """A padded batch of real QA windows (several lengths) from the tiny XQuAD files, and the span model."""
    from xlmkit.core.integrity import open_tokenizer
    from xlmkit.tasks.finetune import collate
    from xlmkit.tasks.qa_task import QASpec, SpanModel, contract_for, encode_qa
    from xlmkit.train.checkpoint import load_model

    loaded = load_model(run_dir)
    if wrap is not None:
        loaded.vocab = {**loaded.vocab, "sentence_wrap": wrap}
    tok = open_tokenizer(loaded.tokenizer_path)
    c = contract_for(loaded.vocab, tok, loaded.model)
    exs, _ = read_squad(xquad / f"xquad.{lang}.json", lang)
    data = encode_qa(tok, exs[:6], QASpec(max_len=40, stride=12), c)
    by_len = sorted(data.inputs, key=lambda x: len(x.ids))
    items = [by_len[0], by_len[len(by_len) // 2], by_len[-1], by_len[1]]
    assert len({len(x.ids) for x in items}) > 1  # padding in the batch
    batch = collate(items, c.pad_id)
    model = SpanModel(loaded.model).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a head far from its init, so a wrong mapping shows
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g))
        model.head.bias.copy_(torch.randn(2, generator=g))
    return model, batch, loaded


def ours(model, batch):
    from xlmkit.tasks.qa_task import span_logits

    with torch.no_grad():
        return span_logits(model, batch["input_ids"], batch["langs"], batch["positions"], batch["attention_mask"])


@pytest.fixture(scope="module")
def xquad(tmp_path_factory) -> Path:
    return write_tiny_xquad(tmp_path_factory.mktemp("xq") / "xquad", langs=("en",))


@pytest.mark.parametrize("case", ["xlm", "xlmr"])
def test_exported_qa_head_matches_transformers(tmp_path, xquad, case):
    from _tiny_model import make_tiny_run

    run = make_tiny_run(tmp_path / "run", use_lang_emb=case == "xlm")
    model, batch, loaded = qa_batch(run, xquad)
    assert qa_default_format(loaded.config.model) == case
    out = export_qa_model(model, loaded.config.model, loaded.vocab, loaded.tokenizer_path, tmp_path / "hf")
    hf, info = transformers.AutoModelForQuestionAnswering.from_pretrained(str(out), local_files_only=True,
                                                                         output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    expected = "XLMForQuestionAnsweringSimple" if case == "xlm" else "XLMRobertaForQuestionAnswering"
    assert type(hf).__name__ == expected
    hf.eval()
    mask = batch["attention_mask"]
    # xlmkit's XLM runs restart positions on the context side: transformers takes them as position_ids
    # (XLM-R numbers positions from pad_id + 1)
    offset = 0 if case == "xlm" else loaded.config.model.pad_id + 1
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=mask.long(), position_ids=batch["positions"] + offset)
    if case == "xlm":
        kwargs["langs"] = batch["langs"]
    with torch.no_grad():
        theirs = hf(**kwargs)
    start, end = ours(model, batch)
    ds = (start[mask] - theirs.start_logits[mask]).abs().max().item()
    de = (end[mask] - theirs.end_logits[mask]).abs().max().item()
    assert ds < TOL and de < TOL, (ds, de)
    assert start[mask].std() > 0.1  # the comparison is not between near-constants
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == [expected]


def test_roberta_wrap_run_needs_no_position_ids(tmp_path, xquad):
    """An XLM-R style run (sentence_wrap roberta: one run of positions) matches transformers' default
    positions: no position_ids needed."""
    from _tiny_model import make_tiny_run

    run = make_tiny_run(tmp_path / "run", use_lang_emb=False)
    model, batch, loaded = qa_batch(run, xquad, wrap="roberta")
    assert batch["input_ids"][0, 0].item() == 0  # <s> first
    n = int(batch["attention_mask"][0].sum())
    assert torch.equal(batch["positions"][0, :n], torch.arange(n))  # one run of positions
    out = export_qa_model(model, loaded.config.model, loaded.vocab, loaded.tokenizer_path, tmp_path / "hf")
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(str(out), local_files_only=True).eval()
    mask = batch["attention_mask"]
    with torch.no_grad():
        theirs = hf(input_ids=batch["input_ids"], attention_mask=mask.long())
    start, end = ours(model, batch)
    assert (start[mask] - theirs.start_logits[mask]).abs().max().item() < TOL
    assert (end[mask] - theirs.end_logits[mask]).abs().max().item() < TOL


def test_export_a_fine_tuned_qa_directory(tiny_random_run, xquad, tmp_path):
    """`xlmkit qa`'s model directory -> transformers: same logits, and the exported tokenizer frames
    a (question, context) pair as the QA windows are framed."""
    from xlmkit.cli.main import main
    from xlmkit.tasks.qa_task import load_qa_model

    data = write_tiny_xquad(tmp_path / "xq2", langs=("en", "de"), sentences=2, questions=2)
    args = ["qa", "--model", str(tiny_random_run), "--data", str(data), "--out", str(tmp_path / "eval"),
            "--train-articles", "2", "--test-articles", "1", "--max-len", "40", "--stride", "12"]
    for o in (*FT, "finetune.max_steps=2"):
        args += ["--set", o]
    assert main(args + ["--export-hf", str(tmp_path / "hf")]) == 0
    qa_dir = tmp_path / "eval" / "model"
    out = tmp_path / "hf"
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    with pytest.raises(Exception, match="not empty"):
        export_qa(qa_dir, out)
    qa = load_qa_model(qa_dir)
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(str(out), local_files_only=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    exs, _ = read_squad(data / "xquad.en.json", "en")
    ex = exs[0]
    enc = tok(ex.question, ex.context, add_special_tokens=True, return_tensors="pt")
    from xlmkit.tasks.qa_task import QASpec, encode_qa

    spec = QASpec(max_len=64, stride=12)
    windows = encode_qa(qa.tokenizer, [ex], spec, qa.contract).inputs
    assert len(windows) == 1  # a short context: one window holds it whole
    x = windows[0]
    assert enc["input_ids"][0].tolist() == x.ids.tolist()
    ids = torch.from_numpy(x.ids)[None]
    pos = torch.from_numpy(x.positions)[None]
    langs = torch.from_numpy(x.langs)[None]
    with torch.no_grad():
        theirs = hf(input_ids=ids, position_ids=pos, langs=langs)
        start, end = qa.model(ids, langs, pos, torch.ones_like(ids, dtype=torch.bool)).unbind(-1)
    assert (start - theirs.start_logits).abs().max().item() < TOL
    assert (end - theirs.end_logits).abs().max().item() < TOL
