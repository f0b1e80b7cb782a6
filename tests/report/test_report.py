"""`xlmkit report`: plots from a hand-written metrics.jsonl, tables from eval JSON files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from xlmkit.cli.main import main
from xlmkit.core.errors import XlmkitError
from xlmkit.report.render import (
    average_of,
    build_report,
    format_value,
    read_metrics,
    read_table,
    read_tables,
    write_table,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(run: Path, broken_line: bool = True) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(10, 101, 10):
        lines.append({"step": step, "split": "train", "loss": 8.0 - step / 20, "loss_mlm_en": 8.1 - step / 20,
                      "loss_tlm_en-fr": 7.9 - step / 25, "lr": 1e-3 * min(1.0, step / 30),
                      "tokens_per_s": 9000 + step})
        if step % 50 == 0:
            lines.append({"step": step, "split": "valid", "ppl/en": 400.0 / step, "acc/en": step / 250,
                          "ppl/fr": 500.0 / step, "acc/fr": step / 300, "ppl/en-fr": 300.0 / step,
                          "mean_ppl": 1200.0 / step / 3})
    text = "\n".join(json.dumps(r) for r in lines) + "\n"
    if broken_line:
        text += '{"step": 110, "split": "tr'  # a run still writing
    (run / "metrics.jsonl").write_text(text, encoding="utf-8")
    (run / "config.json").write_text(json.dumps({"preset": "tiny", "model": {"dim": 64, "n_layers": 2},
                                                 "train": {"max_steps": 100, "mlm_steps": ["en", "fr"]}}))


def test_write_table_json_and_markdown_round_trip(tmp_path):
    rows = [{"lang": "de", "n": 1000, "acc": 93.4}, {"lang": "fr", "n": 1000, "acc": 88.123}]
    avg = average_of(rows, ["acc"])
    assert avg == {"acc": pytest.approx((93.4 + 88.123) / 2)}
    js, md = write_table(tmp_path / "sub" / "tab", rows, ["lang", "n", "acc"], "My table", avg,
                         meta={"layer": 3}, notes=["es: skipped"])
    assert js == tmp_path / "sub" / "tab.json" and md == tmp_path / "sub" / "tab.md"
    data = json.loads(js.read_text())
    assert data["rows"] == rows and data["columns"] == ["lang", "n", "acc"] and data["meta"] == {"layer": 3}
    text = md.read_text()
    assert "## My table" in text and "| de | 1000 | 93.40 |" in text and "| fr | 1000 | 88.12 |" in text
    assert "**90.76**" in text and "- es: skipped" in text
    t = read_table(js)
    assert t["rows"] == rows and t["average"] == avg and t["title"] == "My table"


def test_format_value():
    assert format_value(93.456) == "93.46"
    assert format_value(0.12345) == "0.1235"
    assert format_value(0.0) == "0.00"
    assert format_value(0.2) == "0.20" and format_value(0.3333) == "0.3333"
    assert format_value(7) == "7"
    assert format_value(None) == ""
    assert format_value("x") == "x"


def test_read_table_is_liberal(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([{"lang": "en", "f1": 0.9}, {"lang": "de", "f1": 0.7}]))
    (tmp_path / "nested.json").write_text(json.dumps({"en": {"acc": 81.0}, "fr": {"acc": 75.5}}))
    (tmp_path / "flat.json").write_text(json.dumps({"accuracy": 0.93, "macro_f1": 0.91}))
    (tmp_path / "rows_only.json").write_text(json.dumps({"rows": [{"lang": "en", "acc": 1.0, "x": [1, 2]}]}))
    (tmp_path / "junk.json").write_text(json.dumps({"config": [1, 2, 3]}))
    (tmp_path / "broken.json").write_text("{not json")
    assert read_table(tmp_path / "list.json")["columns"] == ["lang", "f1"]
    nested = read_table(tmp_path / "nested.json")
    assert nested["rows"] == [{"lang": "en", "acc": 81.0}, {"lang": "fr", "acc": 75.5}]
    assert read_table(tmp_path / "flat.json")["rows"][0] == {"metric": "accuracy", "value": 0.93}
    assert read_table(tmp_path / "rows_only.json")["rows"][0]["x"] == "[1, 2]"
    assert read_table(tmp_path / "junk.json") is None
    assert read_table(tmp_path / "broken.json") is None


def test_read_tables_of_evaluate_and_langid_results(tmp_path):
    evaluate = {"task": "xnli", "model": "runs/x", "train_lang": "en",
                "languages": {"en": {"n": 100, "accuracy": 0.8125, "macro_f1": 0.8},
                              "de": {"n": 100, "accuracy": 0.7031, "macro_f1": 0.69}},
                "average_zero_shot": {"accuracy": 0.7031, "macro_f1": 0.69}, "seconds": {"total": 3.0}}
    (tmp_path / "results.json").write_text(json.dumps(evaluate))
    (t,) = read_tables(tmp_path / "results.json")
    assert t["title"] == "xnli (results)" and t["columns"] == ["lang", "n", "accuracy", "macro_f1"]
    assert t["rows"][1] == {"lang": "de", "n": 100, "accuracy": 0.7031, "macro_f1": 0.69}
    assert t["average"] == {"accuracy": 0.7031, "macro_f1": 0.69} and t["meta"]["train_lang"] == "en"
    langid = {"task": "langid", "scores": {"accuracy": 0.9512, "macro_f1": 0.95, "n": 300,
                                           "per_class": {"en": {"precision": 0.9, "recall": 1.0, "support": 100}}},
              "confusion_matrix": {"labels": ["en"], "rows_true_cols_pred": [[100]]}}
    (tmp_path / "langid.json").write_text(json.dumps(langid))
    summary, per_class = read_tables(tmp_path / "langid.json")
    assert summary["rows"][0] == {"metric": "accuracy", "value": 0.9512}
    assert per_class["title"] == "langid (langid): per_class" and per_class["rows"][0]["lang"] == "en"


def test_read_metrics_skips_broken_lines(tmp_path):
    _write_run(tmp_path / "run")
    records, bad = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert bad == 1 and len(records) == 12


def test_report_writes_pngs_html_and_markdown(tmp_path, capsys):
    run = tmp_path / "run"
    _write_run(run)
    write_table(run / "eval" / "retrieve-tatoeba" / "retrieval",
                [{"lang": "de", "n": 1000, "acc_xx_en": 93.4}, {"lang": "fr", "n": 1000, "acc_xx_en": 87.6}],
                ["lang", "n", "acc_xx_en"], "Tatoeba retrieval", {"acc_xx_en": 90.5})
    (run / "eval" / "xnli.json").write_text(json.dumps({"en": {"acc": 71.25}, "de": {"acc": 64.5}}))
    (run / "eval" / "notes.json").write_text(json.dumps({"step": 5, "config": {"a": 1}}))  # not a table
    (run / "eval" / "xnli" / "model").mkdir(parents=True)  # a saved model's files are not results
    (run / "eval" / "xnli" / "model" / "config.json").write_text(json.dumps({"preset": "tiny", "model": {"dim": 8}}))
    extra = tmp_path / "langid.json"
    extra.write_text(json.dumps({"rows": [{"lang": "en", "f1": 0.9876}], "title": "Language id"}))

    assert main(["report", str(run), "--tables", str(extra)]) == 0
    out = run / "report"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["lr.png", "tokens_per_s.png", "train_loss.png", "valid_acc.png", "valid_ppl.png"]
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    md = (out / "report.md").read_text()
    for number in ("93.40", "87.60", "90.50", "71.25", "64.50", "0.9876"):
        assert number in md, number
    assert "## Tatoeba retrieval" in md and "## Language id" in md and "![Training loss](train_loss.png)" in md
    # the last validation record as a per-language table: ppl/en at step 100 = 4.0
    assert "## Validation at step 100" in md and "| en | 4.00 | 0.40 |" in md
    assert "best mean_ppl 4.00 at step 100" in md
    assert "not a table, skipped: eval/notes.json" in md and "config.json" not in md and "1 unreadable line(s)" in md
    html = (out / "index.html").read_text()
    assert '<img src="train_loss.png"' in html and "93.40" in html and "Tatoeba retrieval" in html
    assert "[report]" in capsys.readouterr().out


def test_report_without_matplotlib_fails_clearly(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _write_run(run, broken_line=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(XlmkitError, match=r"pip install 'xlmkit\[plot\]'"):
        build_report(run)
    # tables only still work
    summary = build_report(run, plots=False)
    assert summary["figures"] == [] and "Validation at step 100" in summary["markdown"].read_text()


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "nothing to report" in capsys.readouterr().err


def test_report_draws_a_bar_chart_per_language_table(tmp_path):
    """A per-language results table gets a grouped bar chart of its scores (not of its counts) under it."""
    pytest.importorskip("matplotlib")
    from xlmkit.report.render import bar_chart_columns, build_report

    run = tmp_path / "run"
    rows = [{"lang": lang, "n": 100, "accuracy": acc, "macro_f1": f1}
            for lang, acc, f1 in (("en", 0.81, 0.8), ("de", 0.70, 0.69), ("ru", 0.55, 0.5))]
    write_table(run / "eval" / "sib" / "results", rows, ["lang", "n", "accuracy", "macro_f1"], "SIB-200 zero-shot",
                average={"accuracy": 0.625, "macro_f1": 0.595})
    write_table(run / "eval" / "one", [{"lang": "en", "accuracy": 0.9}], ["lang", "accuracy"], "one row")
    summary = build_report(run)
    charts = [p for p in summary["figures"] if p.name.startswith("table_")]
    assert len(charts) == 1 and charts[0].stat().st_size > 1000  # the one-row table has no chart
    md = (run / "report" / "report.md").read_text()
    assert f"](tables/{charts[0].name})" in md and f"tables/{charts[0].name}" in (run / "report" / "index.html").read_text()
    assert bar_chart_columns({"columns": ["lang", "n", "accuracy", "macro_f1"], "rows": rows}) == ["accuracy",
                                                                                                 "macro_f1"]
