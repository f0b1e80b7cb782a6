"""`xlmkit langid`: a language identifier fine-tuned from a pretrained encoder, and its evaluation.

    xlmkit langid --model RUN_DIR --data ../shared/data/langid --out eval/langid [--all-langs]

Data: a directory of `{lang}.txt` files, one sentence per line (the code canonicalised with
xlmkit.core.langs: `eng.txt` and `en.txt` are both English; files whose name is no language code, such as
README.txt, are skipped). Languages: those of the model's vocab.json ("languages") that have a file,
or every language with a file (--all-langs), or --langs.

Split, per language, deterministic: the non-empty lines are shuffled by a generator seeded with
(--seed, the language code), capped at --max-per-lang, then the first --test-fraction is the test set,
the next --dev-fraction the dev set (best checkpoint, early stopping), the rest the training set.

The input never tells the model the language: no language embedding is added (langs=None), whatever
the model's `use_lang_emb` (with XLM's language embeddings the true language id would give the answer
away, and a fixed "neutral" id would be one of the languages). The classifier is the fine-tuning
classification head (xlmkit.tasks.finetune, mean pooling by default) over the languages as labels.

Reported: per-language precision / recall / F1 / support, their macro averages and accuracy, the most
frequent confusions; OUT/results.json (with the full confusion matrix), OUT/results.md, OUT/model/.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xlmkit.core.errors import DataError, reading
from xlmkit.core.langs import canonical_lang
from xlmkit.core.tables import table_markdown
from xlmkit.data.contract import RunContract
from xlmkit.tasks.io import Example


def read_langid_dir(data_dir: str | Path, langs: list[str] | None = None) -> dict[str, tuple[Path, list[str]]]:
    """{lang: (file, non-empty stripped lines)} for the `{lang}.txt` files of a directory."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"langid data directory not found: {data_dir}")
    out: dict[str, tuple[Path, list[str]]] = {}
    for f in sorted(data_dir.glob("*.txt")):
        try:
            lang = canonical_lang(f.stem)
        except ValueError:
            continue
        if langs is not None and lang not in langs:
            continue
        if lang in out:
            raise DataError(f"{f}: language {lang!r} also in {out[lang][0]}")
        try:
            with reading(f):
                raw = f.read_bytes()
            lines = [line.strip() for line in raw.decode("utf-8").splitlines()]
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise DataError(f"{f}:{line}: invalid UTF-8 ({e.reason})") from None
        out[lang] = (f, lines)
    return out


def split_language(path: Path, lines: list[str], lang: str, test_fraction: float, dev_fraction: float,
                   max_per_lang: int, seed: int) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, dev, test) examples of one language, deterministic given seed and language."""
    items = [(i + 1, line) for i, line in enumerate(lines) if line]
    rng = np.random.default_rng([seed, zlib.crc32(lang.encode())])
    order = rng.permutation(len(items))
    if max_per_lang > 0:
        order = order[:max_per_lang]
    n = len(order)
    n_test = int(round(test_fraction * n))
    n_dev = int(round(dev_fraction * n))
    parts = (order[n_test + n_dev:], order[n_test:n_test + n_dev], order[:n_test])
    names = ("train", "dev", "test")
    out = []
    for name, idx in zip(names, parts):
        if len(idx) == 0 and (name != "dev" or dev_fraction > 0):
            raise DataError(f"{path}: {n} sentences give an empty {name} split (test fraction {test_fraction}, "
                            f"dev fraction {dev_fraction}); add sentences or change the fractions")
        out.append([Example(lang=lang, label=lang, text=items[j][1], source=f"{path}:{items[j][0]}",
                            uid=str(items[j][0])) for j in sorted(idx)])
    return out[0], out[1], out[2]


def langid(model: str | Path, data: str | Path, out: str | Path, langs: str | Sequence[str] | None = None,
           all_langs: bool = False, test_fraction: float = 0.2, dev_fraction: float = 0.1, max_per_lang: int = 0,
           seed: int = 0, which: str = "best", config: str | Path | None = None, overrides: Sequence[str] = (),
           pooling: str = "mean") -> dict[str, Any]:
    """`xlmkit langid`: fine-tune a language identifier from the pretrained run `model` on the `{lang}.txt`
    files of `data` and test it (the module doc). Languages: `langs`, else every file's (`all_langs`),
    else the model's. Writes OUT/results.json, OUT/results.md and OUT/model; returns the results.json
    object. `config` / `overrides` / `pooling` as xlmkit.tasks.finetune.finetune_run."""
    from xlmkit.tasks import scores as M
    from xlmkit.tasks.evaluate import _pct, write_results
    from xlmkit.tasks.finetune import finetune, load_pretrained, predict, score

    t0 = time.time()
    if not 0 < test_fraction < 1 or not 0 <= dev_fraction < 1 or test_fraction + dev_fraction >= 1:
        raise DataError("--test-fraction must be in (0, 1), --dev-fraction in [0, 1), and their sum < 1")
    overrides = [*overrides, "finetune.task=classification"]
    loaded, ft = load_pretrained(model, which, config, overrides, command="langid")
    available = read_langid_dir(data)
    if not available:
        raise DataError(f"{data}: no {{lang}}.txt files")
    if isinstance(langs, str):  # "de,fr" as the command line gives it
        langs = [x for x in langs.split(",") if x.strip()]
    if langs is not None:
        langs = sorted({canonical_lang(x) for x in langs})
        missing = [lang for lang in langs if lang not in available]
        if missing:
            raise DataError(f"{data}: no file for language(s) {', '.join(missing)}")
    elif all_langs:
        langs = sorted(available)
    else:
        model_langs = [canonical_lang(x) for x in RunContract.from_vocab(loaded.vocab).languages]
        langs = sorted(lang for lang in model_langs if lang in available)
        absent = sorted(set(model_langs) - set(available))
        if absent:
            print(f"[langid] note: model languages without a file in {data}: {', '.join(absent)}")
        if len(langs) < 2:
            raise DataError(f"{data}: files for {len(langs)} of the model's languages "
                            f"({', '.join(model_langs) or 'none'}); need at least 2 (or use --all-langs)")
    train, dev, test = [], [], {}
    for lang in langs:
        path, lines = available[lang]
        tr, dv, te = split_language(path, lines, lang, test_fraction, dev_fraction, max_per_lang, seed)
        train += tr
        dev += dv
        test[lang] = te
    print(f"[langid] {len(langs)} languages: {', '.join(langs)}; train {len(train)}, dev {len(dev)}, "
          f"test {sum(len(v) for v in test.values())}")
    out = Path(out)
    result = finetune(loaded, ft, train, dev or None, labels=langs, pooling=pooling, use_langs=False,
                      out_dir=out / "model")
    test_examples = [ex for lang in langs for ex in test[lang]]
    encoded, stats = result.encoder.encode(test_examples)
    device = next(result.model.parameters()).device
    preds = predict(result.model, encoded, result.encoder.pad_id, max(ft.batch_size, 64), device,
                    result.config.finetune.precision)
    scores = score(test_examples, preds, langs, per_class=True)
    gold = [ex.label for ex in test_examples]
    pred = [langs[j] for j in preds]
    cm = M.confusion_matrix(gold, pred, langs)
    confusions = sorted(((int(cm[i, j]), langs[i], langs[j]) for i in range(len(langs)) for j in range(len(langs))
                         if i != j and cm[i, j] > 0), reverse=True)[:10]

    cols = ["lang", "n test", "precision", "recall", "F1"]
    table = table_markdown(
        [{"lang": lang, "n test": s["support"], "precision": _pct(s["precision"]), "recall": _pct(s["recall"]),
          "F1": _pct(s["f1"])} for lang, s in ((lang, scores["per_class"][lang]) for lang in langs)], cols,
        average={"n test": scores["n"], "precision": _pct(scores["macro_precision"]),
                 "recall": _pct(scores["macro_recall"]), "F1": _pct(scores["macro_f1"])},
        average_label="macro").rstrip("\n")
    md = ["# Language identification", "", f"- model: `{model}`", f"- data: `{data}`",
          f"- {len(langs)} languages; per language: {test_fraction:.2f} test, {dev_fraction:.2f} dev, "
          f"rest train (seed {seed}" + (f", at most {max_per_lang} sentences" if max_per_lang else "")
          + "); no language embedding at input",
          f"- accuracy {_pct(scores['accuracy'])}, macro-F1 {_pct(scores['macro_f1'])} (percentages); "
          f"chance {_pct(1 / len(langs))}", "", table]
    if confusions:
        md += ["", "Most frequent confusions (true -> predicted: count): "
               + ", ".join(f"{a} -> {b}: {n}" for n, a, b in confusions)]
    if stats.truncated:
        md += ["", f"- note: {stats.truncated} test sentences truncated to {result.spec.max_len} ids"]
    results = {"task": "langid", "model": str(model), "data": str(data), "languages": langs,
               "split": {"test_fraction": test_fraction, "dev_fraction": dev_fraction,
                         "max_per_lang": max_per_lang, "seed": seed},
               "train_examples": len(train), "dev_examples": len(dev), "scores": scores,
               "confusion_matrix": {"labels": langs, "rows_true_cols_pred": cm.tolist()},
               "finetune": {"best": result.best, "seconds": round(result.seconds, 1), "history": result.history},
               "truncated_test": stats.truncated, "seconds": round(time.time() - t0, 1)}
    write_results(out, results, "\n".join(md))
    print(table)
    print(f"[langid] accuracy {_pct(scores['accuracy'])}, macro-F1 {_pct(scores['macro_f1'])}; "
          f"results in {out / 'results.md'} ({time.time() - t0:.0f}s)")
    return results
