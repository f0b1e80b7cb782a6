"""Results tables: one format, one writer, one reader (every evaluation command and `xlmkit report`).

    write_table(out / "retrieval", rows, columns, title, average, meta, notes)  # -> retrieval.json + .md
    md = table_markdown(rows, columns, title, average, notes, headers, average_label)
    tables = read_tables(path)    # [{"title", "columns", "rows", "average", "notes", "meta", "path"}]

The JSON format:

    {"title": "Tatoeba retrieval", "columns": ["lang", "n", "acc_xx_en"],
     "rows": [{"lang": "de", "n": 1000, "acc_xx_en": 93.4}, …],
     "average": {"acc_xx_en": 90.1},              optional
     "meta": {"model": "runs/small", …},          optional, free-form
     "notes": ["fi: skipped (…)"]}                optional

The reader is liberal: a JSON list of row objects, a {"rows": …} object without "columns", a
{lang: {metric: value}} mapping, a flat {metric: value} mapping and result files holding such parts
(evaluate's, langid's) are all read as tables.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any, Iterable, Sequence


def format_value(value: Any) -> str:
    """How a table cell is printed: floats with 2 decimals, or 4 for a value below 1 in magnitude that
    2 decimals would not show exactly (0.2 -> "0.20", 0.8125 -> "0.8125"); others as str."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.2f}" if abs(v) >= 1 or abs(round(v, 2) - v) < 1e-9 else f"{v:.4f}"
    return str(value)


def average_of(rows: Sequence[dict[str, Any]], columns: Iterable[str]) -> dict[str, float]:
    """Mean of each numeric column over the rows that have a number there (NaN and None skipped)."""
    out = {}
    for col in columns:
        vals = [float(r[col]) for r in rows
                if isinstance(r.get(col), numbers.Real) and not isinstance(r.get(col), bool)
                and not math.isnan(float(r[col]))]
        if vals:
            out[col] = sum(vals) / len(vals)
    return out


def table_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None,
                   average: dict[str, Any] | None = None, notes: Sequence[str] = (),
                   headers: dict[str, str] | None = None, average_label: str = "average") -> str:
    """A GitHub-flavoured Markdown table; numeric columns right-aligned; the average (or any summary
    row: `average_label` names it) as a last row, in bold."""
    headers = headers or {}
    numeric = {c for c in columns
               if any(isinstance(r.get(c), numbers.Real) and not isinstance(r.get(c), bool) for r in rows)}
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines.append("| " + " | ".join(headers.get(c, c) for c in columns) + " |")
    lines.append("|" + "|".join("---:" if c in numeric else "---" for c in columns) + "|")
    for r in rows:
        lines.append("| " + " | ".join(format_value(r.get(c)).replace("|", "\\|") for c in columns) + " |")
    if average:
        cells = [(f"**{average_label}**" if i == 0 else "") if c not in average else f"**{format_value(average[c])}**"
                 for i, c in enumerate(columns)]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_table(path_stem: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str,
                average: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
                notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write an evaluation table as `path_stem.json` and `path_stem.md`; return both paths.

    rows: one dict per row (e.g. per language), keyed by column name; columns: their order (a key
    missing from a row prints as an empty cell). average: e.g. `average_of(rows, ["acc"])`, printed
    as a last row. meta: free-form context (model, layer, data dir). notes: lines printed under the
    Markdown table (e.g. skipped languages). The JSON is what `xlmkit report` reads back."""
    stem = Path(path_stem)
    if stem.suffix in (".json", ".md"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"title": title, "columns": list(columns), "rows": [dict(r) for r in rows]}
    if average:
        data["average"] = dict(average)
    if meta:
        data["meta"] = dict(meta)
    if notes:
        data["notes"] = list(notes)
    json_path = stem.parent / (stem.name + ".json")
    md_path = stem.parent / (stem.name + ".md")
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(table_markdown(rows, columns, title, average, notes), encoding="utf-8")
    return json_path, md_path


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, numbers.Real))


def _is_row_mapping(d: Any) -> bool:
    """{name: {metric: value, …}, …} with at least one number in every row."""
    return (isinstance(d, dict) and bool(d) and all(isinstance(v, dict) for v in d.values())
            and all(any(_is_number(x) for x in v.values()) for v in d.values()))


def _numeric_average(d: dict) -> dict[str, Any] | None:
    for k, v in d.items():
        if (k.startswith("average") or k.startswith("avg") or k == "mean") and isinstance(v, dict) \
                and any(_is_number(x) for x in v.values()):
            return v
    return None


def _make_table(rows: list, columns: Any, title: str, average: Any = None, notes: Any = None, meta: Any = None,
                path: Path | None = None) -> dict[str, Any] | None:
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return None
    # cells must be scalars to print; nested values are shown as compact JSON
    rows = [{k: (v if _scalar(v) else json.dumps(v)) for k, v in r.items()} for r in rows]
    if not isinstance(columns, list) or not columns:
        columns = _columns_of(rows)
    columns = [str(c) for c in columns]
    average = {k: v for k, v in average.items() if k in columns} if isinstance(average, dict) else None
    notes = [str(n) for n in notes] if isinstance(notes, list) else []
    return {"title": title, "columns": columns, "rows": rows, "average": average or None, "notes": notes,
            "meta": meta if isinstance(meta, dict) else {}, "path": path}


def _rows_of_mapping(d: dict, key_name: str = "lang") -> list[dict]:
    return [{key_name: k, **{m: x for m, x in v.items() if _scalar(x)}} for k, v in d.items()]


def read_tables(path: str | Path) -> list[dict[str, Any]]:
    """Every table in a JSON file -> [{"title", "columns", "rows", "average", "notes", "meta", "path"}].

    Accepted shapes: write_table's {"rows": [...], "columns", "average", "title", "notes", "meta"};
    a list of row objects; {lang: {metric: value}}; a flat {metric: value}; and result files with
    such parts under known keys: {"task": …, "languages": {lang: {…}}, "average…": {…}} (evaluate),
    {"scores": {"accuracy": …, "per_class": {lang: {…}}}} (langid)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    stem = path.stem
    tables: list[dict[str, Any] | None] = []
    if isinstance(data, list):
        tables.append(_make_table(data, None, stem, path=path))
    elif isinstance(data, dict) and isinstance(data.get("rows"), list):
        tables.append(_make_table(data["rows"], data.get("columns"), str(data.get("title") or stem),
                                  data.get("average"), data.get("notes"), data.get("meta"), path))
    elif _is_row_mapping(data):
        tables.append(_make_table(_rows_of_mapping(data), None, stem, path=path))
    elif isinstance(data, dict) and data and all(_scalar(v) for v in data.values()) \
            and any(_is_number(v) for v in data.values()):
        tables.append(_make_table([{"metric": k, "value": v} for k, v in data.items()], ["metric", "value"], stem,
                                  path=path))
    elif isinstance(data, dict):
        base = str(data.get("title") or (f"{data['task']} ({stem})" if isinstance(data.get("task"), str) else stem))
        meta = {k: v for k, v in data.items() if _scalar(v)}
        for key in ("languages", "per_language", "per_lang", "results"):
            if _is_row_mapping(data.get(key)):
                tables.append(_make_table(_rows_of_mapping(data[key]), None, base, _numeric_average(data),
                                          meta=meta, path=path))
        for key in ("scores", "metrics"):
            sub = data.get(key)
            if not isinstance(sub, dict):
                continue
            flat = [{"metric": k, "value": v} for k, v in sub.items() if _is_number(v)]
            if flat:
                tables.append(_make_table(flat, ["metric", "value"], f"{base}: {key}", meta=meta, path=path))
            for k, v in sub.items():
                if _is_row_mapping(v):
                    tables.append(_make_table(_rows_of_mapping(v), None, f"{base}: {k}", _numeric_average(sub),
                                              meta=meta, path=path))
    return [t for t in tables if t is not None]


def read_table(path: str | Path) -> dict[str, Any] | None:
    """The first table of a JSON file (see `read_tables`), None if it holds none."""
    tables = read_tables(path)
    return tables[0] if tables else None
