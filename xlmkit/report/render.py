"""`xlmkit report RUN_DIR`: training curves (PNG) and evaluation tables (HTML + Markdown) of a run.

    xlmkit report runs/small                    # writes runs/small/report/{index.html,report.md,*.png}
    xlmkit report runs/small --tables more.json --out /tmp/rep

What it reads:
  RUN/metrics.jsonl     one JSON object per line, {"step":…, "split":"train"|"valid", …} (xlmkit.train.pretrain).
                        Train lines: every key starting with "loss" (loss, loss/mlm, loss/tlm/en-fr, …)
                        is a loss curve; "lr"; "tokens_per_s". Valid lines: "ppl/<lang or pair>",
                        "acc/<…>", "mean_ppl". Unknown keys are ignored; unreadable lines are skipped
                        (a run that is still writing may end in half a line).
  RUN/config.json       the resolved config (summarised at the top of the report).
  tables                every *.json under RUN/eval*/ (recursively) and every file given with --tables.

The evaluation table format (written by `xlmkit.core.tables.write_table`, which every evaluation command should
use: retrieve, evaluate, langid):

    {"title": "Tatoeba retrieval", "columns": ["lang", "n", "acc_xx_en"],
     "rows": [{"lang": "de", "n": 1000, "acc_xx_en": 93.4}, …],
     "average": {"acc_xx_en": 90.1},              optional
     "meta": {"model": "runs/small", …},          optional, free-form
     "notes": ["fi: skipped (…)"]}                optional

plus a Markdown rendering beside it (same stem, .md). When reading, the report is liberal: a JSON
list of row objects, a {"rows": …} object without "columns", a {lang: {metric: value}} mapping and
a flat {metric: value} mapping are all read as tables; anything else is listed as skipped.

Plots need matplotlib (`pip install 'xlmkit[plot]'`); it runs with the Agg backend (no display).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Sequence

from xlmkit.core.errors import XlmkitError
from xlmkit.core.tables import (_columns_of, _is_number, average_of, format_value, read_table,  # noqa: F401
                                read_tables, table_markdown, write_table)

# ----------------------------------------------------------------------------------------------
# Metrics


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """metrics.jsonl -> (records, number of unreadable lines skipped)."""
    records, bad = [], 0
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict) and _is_number(rec.get("step")):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def series(records: Sequence[dict[str, Any]], split: str, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric in one split, in file order; non-finite values dropped."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if r.get("split") == split and _is_number(v) and math.isfinite(float(v)):
            xs.append(float(r["step"]))
            ys.append(float(v))
    return xs, ys


def _keys(records: Sequence[dict[str, Any]], split: str, pred) -> list[str]:
    keys: list[str] = []
    for r in records:
        if r.get("split") == split:
            for k, v in r.items():
                if k not in keys and pred(k) and _is_number(v):
                    keys.append(k)
    return keys


def _is_loss_key(k: str) -> bool:
    return k.startswith("loss") or k.endswith("_loss") or k.endswith("/loss")


# Each figure: (file name, title, y label, split, key predicate, log scale)
FIGURES = (
    ("train_loss.png", "Training loss", "loss", "train", _is_loss_key, False),
    ("valid_ppl.png", "Validation perplexity", "perplexity", "valid",
     lambda k: k.startswith("ppl/") or k == "mean_ppl", True),
    ("valid_acc.png", "Validation accuracy (predicted tokens)", "accuracy", "valid",
     lambda k: k.startswith("acc/") or k == "mean_acc", False),
    ("valid_loss.png", "Validation loss", "loss", "valid", _is_loss_key, False),
    ("lr.png", "Learning rate", "learning rate", "train", lambda k: k == "lr", False),
    ("grad_norm.png", "Gradient norm (before clipping)", "norm", "train", lambda k: k == "grad_norm", True),
    ("tokens_per_s.png", "Throughput", "tokens / s", "train", lambda k: k in ("tokens_per_s", "tok_per_s"), False),
)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise XlmkitError("plots need matplotlib: pip install 'xlmkit[plot]' (or use --no-plots)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: Sequence[dict[str, Any]], out_dir: str | Path) -> list[tuple[str, Path]]:
    """One PNG per figure of FIGURES that has data -> [(title, path)]."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, title, ylabel, split, pred, log in FIGURES:
        keys = _keys(records, split, pred)
        keys = [k for k in keys if k in ("loss", "mean_ppl", "mean_acc")] + sorted(
            k for k in keys if k not in ("loss", "mean_ppl", "mean_acc"))
        curves = [(k, *series(records, split, k)) for k in keys]
        curves = [c for c in curves if c[1]]
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for k, xs, ys in curves:
            style = dict(linewidth=2.2, color="black") if k in ("loss", "mean_ppl", "mean_acc") else dict(linewidth=1.2)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=k, **style)
        if log and all(y > 0 for _, _, ys in curves for y in ys):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=8, ncol=2 if len(curves) > 6 else 1)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path)
        plt.close(fig)
        written.append((title, path))
    return written


# Columns that count things (examples, sentences): not plotted beside the scores.
_COUNT_COLUMNS = {"n", "n test", "n_test", "support", "sentences", "examples", "count", "tokens", "steps"}


def bar_chart_columns(table: dict[str, Any]) -> list[str]:
    """The score columns of a per-row table worth a bar chart (numbers in most rows, not counts)."""
    rows, columns = table.get("rows") or [], table.get("columns") or []
    if len(rows) < 2 or len(columns) < 2:
        return []
    out = []
    for col in columns[1:]:
        if col.lower() in _COUNT_COLUMNS or col.lower().startswith("n_") or col.lower().startswith("n "):
            continue
        values = [r.get(col) for r in rows]
        if sum(_is_number(v) and not isinstance(v, bool) for v in values) >= max(2, len(rows) // 2):
            out.append(col)
    return out[:4]  # grouped bars stay readable with a few metrics


def plot_table_bars(table: dict[str, Any], path: str | Path) -> Path | None:
    """A grouped bar chart of a table's score columns per row (per language, per direction), with
    its average as a dashed line per metric; None when the table has nothing to chart."""
    columns = bar_chart_columns(table)
    if not columns:
        return None
    plt = _pyplot()
    rows = table["rows"]
    label_col = table["columns"][0]
    labels = [str(r.get(label_col, "")) for r in rows]
    n, k = len(rows), len(columns)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * n * max(1, k / 2) + 2), 3.6), dpi=100)
    average = table.get("average") or {}
    for j, col in enumerate(columns):
        xs = [i + (j - (k - 1) / 2) * width for i in range(n)]
        ys = [float(r[col]) if _is_number(r.get(col)) else 0.0 for r in rows]
        bars = ax.bar(xs, ys, width=width, label=col)
        if _is_number(average.get(col)):
            ax.axhline(float(average[col]), linestyle="--", linewidth=1, color=bars.patches[0].get_facecolor())
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, rotation=60 if n > 12 else 0, fontsize=8 if n > 12 else 9)
    ax.set_title(table.get("title", ""), fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    if k > 1 or average:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def final_validation_table(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Last validation record as a per-language table (ppl and acc), plus the best mean_ppl seen."""
    valid = [r for r in records if r.get("split") == "valid"]
    if not valid:
        return None
    last = valid[-1]
    names: list[str] = []
    for k in last:
        if "/" in k and k.split("/", 1)[0] in ("ppl", "acc", "loss"):
            name = k.split("/", 1)[1]
            if name not in names:
                names.append(name)
    rows = [{"lang": n, **{m: last[f"{m}/{n}"] for m in ("ppl", "acc", "loss") if _is_number(last.get(f"{m}/{n}"))}}
            for n in names]
    if not rows:
        return None
    columns = ["lang"] + [m for m in ("ppl", "acc", "loss") if any(m in r for r in rows)]
    average = {}
    if _is_number(last.get("mean_ppl")):
        average["ppl"] = last["mean_ppl"]
    notes = []
    best = [r for r in valid if _is_number(r.get("mean_ppl"))]
    if best:
        b = min(best, key=lambda r: r["mean_ppl"])
        notes.append(f"best mean_ppl {format_value(b['mean_ppl'])} at step {int(b['step'])}")
    return {"title": f"Validation at step {int(last['step'])}", "columns": columns, "rows": rows,
            "average": average or None, "notes": notes, "meta": {}, "path": None}


# Files under RUN/eval*/ that are parts of saved models, not results: never read as tables.
NOT_TABLES = {"config.json", "vocab.json", "tokenizer.json", "state.json", "manifest.json"}
NOT_TABLE_DIRS = {"checkpoints", "tb", "model"}


def find_tables(run_dir: Path, extra: Sequence[str | Path] = ()) -> tuple[list[dict[str, Any]], list[Path]]:
    """Tables under RUN/eval*/ (recursively, sorted; saved models' files left out) and in the extra
    files -> (tables, files that held none)."""
    paths: list[Path] = []
    for d in sorted(p for p in run_dir.glob("eval*") if p.is_dir()):
        for p in sorted(d.rglob("*.json")):
            rel = p.relative_to(d).parts
            if p.name in NOT_TABLES or NOT_TABLE_DIRS & set(rel[:-1]):
                continue
            paths.append(p)
    for p in extra:
        p = Path(p)
        if not p.is_file():
            raise XlmkitError(f"--tables: no such file: {p}")
        paths.append(p)
    tables, skipped = [], []
    seen = set()
    for p in paths:
        if p.resolve() in seen:
            continue
        seen.add(p.resolve())
        found = read_tables(p)
        (tables.extend(found) if found else skipped.append(p))
    return tables, skipped


# ----------------------------------------------------------------------------------------------
# The pages


def _config_summary(run_dir: Path) -> list[tuple[str, str]]:
    path = run_dir / "config.json"
    if not path.is_file():
        return []
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return []
    out = [("preset", str(cfg.get("preset", "?")))]
    m, t = cfg.get("model") or {}, cfg.get("train") or {}

    def fields(section: dict, names: tuple[tuple[str, str], ...]) -> str:
        return ", ".join(f"{label} {section[k]}" for k, label in names if section.get(k) is not None)

    model = fields(m, (("dim", "dim"), ("n_layers", "layers"), ("n_heads", "heads"), ("ffn_dim", "ffn"),
                       ("vocab_size", "vocab"), ("n_langs", "langs"), ("use_lang_emb", "lang emb"),
                       ("pre_ln", "pre-LN")))
    if model:
        out.append(("model", model))
    train = fields(t, (("max_steps", "steps"), ("batch_size", "batch"), ("lr", "lr"), ("schedule", "schedule"),
                       ("precision", "precision")))
    objectives = []
    for name in ("mlm_steps", "tlm_steps", "clm_steps"):
        v = t.get(name)
        if isinstance(v, list) and v and v != ["none"]:
            objectives.append(f"{name[:3].upper()} {','.join(map(str, v))}")
    train = "; ".join(x for x in (train, "; ".join(objectives)) if x)
    if train:
        out.append(("train", train))
    return out


def _relative(path: Path | None, base: Path) -> str:
    if path is None:
        return ""
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _table_html(t: dict[str, Any]) -> str:
    cols = t["columns"]
    numeric = {c for c in cols if any(_is_number(r.get(c)) for r in t["rows"])}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in t["rows"]:
        cells = "".join(f'<td class="{"num" if c in numeric else ""}">{html.escape(format_value(r.get(c)))}</td>'
                        for c in cols)
        body.append(f"<tr>{cells}</tr>")
    if t.get("average"):
        cells = "".join(
            f'<td class="num"><b>{html.escape(format_value(t["average"][c]))}</b></td>' if c in t["average"]
            else ("<td><b>average</b></td>" if i == 0 else "<td></td>") for i, c in enumerate(cols))
        body.append(f'<tr class="avg">{cells}</tr>')
    out = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    if t.get("notes"):
        out += "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in t["notes"]) + "</ul>"
    return out


_CSS = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}tr.avg{background:#fafafa}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}.src{color:#777;font-size:0.85em}"""


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, tables: Sequence[str | Path] = (),
                 plots: bool = True) -> dict[str, Any]:
    """Write OUT/index.html, OUT/report.md and OUT/*.png (OUT defaults to RUN/report) -> summary dict."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise XlmkitError(f"no such run directory: {run_dir}")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    metrics_path = run_dir / "metrics.jsonl"
    records, bad = read_metrics(metrics_path) if metrics_path.is_file() else ([], 0)
    found, skipped = find_tables(run_dir, tables)
    if not records and not found:
        raise XlmkitError(f"{run_dir}: nothing to report (no metrics.jsonl with records, no tables under "
                          f"{run_dir}/eval*/ and none given with --tables)")
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = plot_curves(records, out_dir) if (plots and records) else []
    valid_table = final_validation_table(records)
    all_tables = ([valid_table] if valid_table else []) + found
    # one bar chart per table of per-language (per-direction) scores, shown under its table
    charts = {id(t): plot_table_bars(t, out_dir / "tables" / f"table_{i:02d}.png") if plots else None
              for i, t in enumerate(all_tables)}

    notes = []
    if not metrics_path.is_file():
        notes.append(f"no {metrics_path.name} in the run directory")
    if bad:
        notes.append(f"{bad} unreadable line(s) of {metrics_path.name} skipped")
    notes += [f"not a table, skipped: {_relative(p, run_dir)}" for p in skipped]
    cfg = _config_summary(run_dir)
    train = [r for r in records if r.get("split") == "train"]
    if train:
        cfg.append(("progress", f"{len(train)} train records, last step {int(train[-1]['step'])}"))
    title = f"xlmkit report: {run_dir.resolve().name}"

    # Markdown
    md = [f"# {title}", "", f"Run directory: `{run_dir}`", ""]
    md += [f"- **{k}**: {v}" for k, v in cfg]
    if cfg:
        md.append("")
    if figures:
        md += ["## Training curves", ""]
        md += [f"![{t}]({_relative(p, out_dir)})" for t, p in figures]
        md.append("")
    for t in all_tables:
        md.append(table_markdown(t["rows"], t["columns"], t["title"], t["average"], t["notes"]))
        if charts[id(t)] is not None:
            md += [f"![{t['title']}]({_relative(charts[id(t)], out_dir)})", ""]
        if t.get("path"):
            md += [f"_source: `{_relative(t['path'], run_dir)}`_", ""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")

    # HTML
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
         f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
         f"<p>Run directory: <code>{html.escape(str(run_dir))}</code></p>"]
    if cfg:
        h.append("<ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in cfg) + "</ul>")
    if figures:
        h.append("<h2>Training curves</h2>")
        h += [f'<img src="{html.escape(_relative(p, out_dir))}" alt="{html.escape(t)}">' for t, p in figures]
    for t in all_tables:
        h.append(f"<h2>{html.escape(t['title'])}</h2>")
        h.append(_table_html(t))
        if charts[id(t)] is not None:
            h.append(f'<img src="{html.escape(_relative(charts[id(t)], out_dir))}" alt="{html.escape(t["title"])}">')
        if t.get("path"):
            h.append(f'<p class="src">source: {html.escape(_relative(t["path"], run_dir))}</p>')
    if notes:
        h.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    h.append("</body></html>")
    html_path = out_dir / "index.html"
    html_path.write_text("\n".join(h) + "\n", encoding="utf-8")
    return {"out_dir": out_dir, "html": html_path, "markdown": md_path,
            "figures": [p for _, p in figures] + [p for p in charts.values() if p is not None],
            "tables": list(dict.fromkeys(t["path"] for t in found)), "skipped": skipped, "bad_lines": bad}

