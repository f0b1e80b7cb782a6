"""`xlmkit info DIR`, `info(path, verify=False)`: summarise a prepared data directory (manifest.json) or a
run (vocab.json, config.json, checkpoints). Reads JSON only: never imports torch, so it answers instantly."""

from __future__ import annotations

import json
from pathlib import Path

from xlmkit.core.errors import DataError
from xlmkit.data.contract import RunContract


def _table(header: list[str], rows: list[list]) -> str:
    """Plain-text table: numeric columns right-aligned, text columns left-aligned."""
    cells = [header] + [[f"{c:,}" if isinstance(c, int) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(isinstance(row[i], int) or str(row[i]).endswith("%") for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if numeric[i] else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from None


def describe_prepared(root: Path) -> str:
    """The manifest as text: languages, pairs, counts per split, tokenizer, sources."""
    from xlmkit.data.format import read_manifest

    m = read_manifest(root / "manifest.json")
    out = [f"prepared data: {root}",
           f"format {m.get('format')} v{m.get('version')}; vocab {m['vocab_size']:,} ({m.get('dtype')}); "
           f"tokenizer {m.get('tokenizer', {}).get('type', '?')}",
           f"languages ({len(m['languages'])}): " + ", ".join(f"{l}={i}" for l, i in m["lang2id"].items()),
           f"pairs ({len(m['pairs'])}): {', '.join(m['pairs']) or '-'}",
           "specials: " + ", ".join(f"{k}={v}" for k, v in m["specials"].items())
           + "; lang tags: " + ", ".join(f"{l}={i}" for l, i in m.get("lang_tokens", {}).items()), ""]
    splits = ("train", "valid", "test")
    rows = []
    for lang, entry in sorted(m.get("mono", {}).items()):
        for s in splits:
            e = entry.get(s, {})
            rows.append([f"{lang}" if s == "train" else "", s, e.get("sentences", 0), e.get("tokens", 0), e.get("unk", 0),
                         f"{100 * e.get('unk', 0) / max(e.get('tokens', 0), 1):.2f}%"])
    if rows:
        out += ["monolingual", _table(["lang", "split", "sentences", "tokens", "unk", "unk%"], rows), ""]
    rows = []
    for pair, entry in sorted(m.get("para", {}).items()):
        a, b = pair.split("-")
        for s in splits:
            e = entry.get(s, {})
            tok, unk = e.get("tokens", {}), e.get("unk", {})
            rows.append([pair if s == "train" else "", s, e.get("sentences", 0), tok.get(a, 0), tok.get(b, 0),
                         unk.get(a, 0), unk.get(b, 0)])
    if rows:
        out += ["parallel", _table(["pair", "split", "sentences", "tokens a", "tokens b", "unk a", "unk b"], rows), ""]
    sample = m.get("tokenizer", {}).get("sample_sentences", {})
    if sample:
        total = max(sum(sample.values()), 1)
        out.append("tokenizer sample: " + ", ".join(f"{l} {n:,} ({100 * n / total:.1f}%)" for l, n in sample.items())
                   + f" (alpha {m['tokenizer'].get('alpha')})")
    rows = [[s["kind"] + " " + s["name"], s["lines_read"], s["kept"],
             ", ".join(f"{k} {v}" for k, v in s.get("dropped", {}).items() if v) or "-",
             " ".join(Path(f["path"]).name for f in s["files"])] for s in m.get("sources", [])]
    if rows:
        out += ["", "sources", _table(["source", "lines", "kept", "dropped", "files"], rows)]
    return "\n".join(out)


def describe_run(root: Path, verify: bool = False) -> str:
    """What a run directory holds: its vocab.json, resolved config, metrics and checkpoints."""
    out = [f"run: {root}"]
    if (root / "vocab.json").is_file():
        v = RunContract.from_vocab(_read_json(root / "vocab.json"))
        out.append(f"vocab {v.vocab_size}; languages: {', '.join(v.languages) or '-'}; "
                   f"pairs: {', '.join(v.pairs) or '-'}")
        if v.data_dir:
            out.append(f"data: {v.data_dir}")
    if (root / "config.json").is_file():
        cfg = _read_json(root / "config.json")
        out.append(f"preset: {cfg.get('preset')}")
        for section in ("model", "train"):
            if isinstance(cfg.get(section), dict):
                out.append(f"{section}: " + ", ".join(f"{k}={v}" for k, v in cfg[section].items()))
    metrics = root / "metrics.jsonl"
    if metrics.is_file():
        last = {}
        with open(metrics, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                last[rec.get("split", "?")] = rec
        for split, rec in sorted(last.items()):
            out.append(f"last {split}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in rec.items() if k != "split"))
    ckpts = root / "checkpoints"
    if ckpts.is_dir():
        from xlmkit.core.integrity import checkpoint_problem

        dirs = sorted(p for p in ckpts.iterdir() if p.is_dir() and not p.name.startswith(".tmp-"))
        out.append("checkpoints" + ("" if verify else " (sizes and headers checked; --verify hashes every file)")
                   + (":" if dirs else ": -"))
        for p in dirs:
            why = checkpoint_problem(p, full=verify) if (p / "state.json").is_file() else "no state.json"
            if p.name.startswith(".damaged-"):
                why = why or "moved aside by --resume"
            out.append(f"  {p.name}: " + ("ok" if why is None else f"damaged: {why}"))
    return "\n".join(out)


def info(path: str | Path, verify: bool = False) -> None:
    """Print the summary of a prepared data directory or a run (`verify`: read every byte and check it);
    raises DataError for anything else or for damaged files found by `verify`."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such directory")
    if (root / "manifest.json").is_file():
        try:
            print(describe_prepared(root))
        except (KeyError, TypeError, AttributeError, ValueError) as e:  # a key of the wrong shape
            raise DataError(f"{root / 'manifest.json'}: damaged manifest ({type(e).__name__}: {e}); "
                            "re-run `xlmkit prepare`") from None
        if verify:
            from xlmkit.data.format import PreparedData

            results = PreparedData(root).verify()
            print("", "verify (every id, offset and hash):", sep="\n")
            for name, status in results:
                print(f"  {name}: {status}")
            bad = [status for _, status in results if status != "ok"]
            if bad:
                raise DataError(f"{len(bad)} damaged file(s) in {root}; first: {bad[0]}")
    elif (root / "vocab.json").is_file() or (root / "config.json").is_file():
        print(describe_run(root, verify=verify))
    else:
        raise DataError(f"{root}: neither prepared data (manifest.json) nor a run (vocab.json / config.json)")
