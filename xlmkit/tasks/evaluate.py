"""`xlmkit evaluate`: zero-shot cross-lingual transfer. Fine-tune on one language, test on every language.

    xlmkit evaluate --model RUN_DIR --task token --data ../shared/data/ud-pud --train-lang en --out eval/pos
    xlmkit evaluate --model RUN_DIR --task classification --data DIR --out eval/cls

Data: a directory (every .jsonl / .tsv / .conllu / .conll file in it) or comma-separated files, in the
formats of xlmkit.tasks.io. A file's split comes from its name (`train`, `dev` / `valid`, `test`, e.g.
`en.train.jsonl`); a file whose name names no split is "unsplit". A directory of language folders
(SIB-200's `eng_Latn/train.tsv`, UMSAB sentiment's `english/train_text.txt` + `train_labels.txt`) is
read by xlmkit.tasks.benchmarks. Sets that publish train and dev only are tested on dev: --test-split dev;
sets without training data train on the training language's dev file: --train-split dev (XNLI).

    xlmkit evaluate --model RUN --task classification --data ../shared/data/classification/sib-200 \
        --train-lang en --test-split dev --out eval/sib

Which examples train and which test:
- The training language has a train file: train on it; dev = its dev file, else a deterministic
  --dev-fraction of the training examples (for early stopping and the best checkpoint). Every language
  is tested on its test file (its dev file with --test-split dev), or on its unsplit file(s).
- The training language has only test / unsplit data (UD PUD: one 1000-sentence test file per
  language): its sentence ids (CoNLL-U sent_id, JSONL "id", else the index) are split deterministically
  (seeded permutation): 1 - --train-fraction of them are held out for testing, the rest is train and
  dev (--dev-fraction of it). Every language is tested on the SAME held-out ids, so the test sets are
  translations of each other (PUD is parallel) and the languages are compared on the same content,
  never on a sentence whose translation was trained on. --test-all tests the other languages on all
  their sentences instead (more data, but its translations of the training sentences were seen).
- A fine-tuned model directory (`xlmkit finetune` output) is only tested: no training, every language
  on its test / unsplit data.

Labels: the label list is that of the training language's whole data (before any split). A test label
that was not seen in training is an error naming file, line and label (--unknown-labels ignore leaves
those examples / words out of the scores and counts them). Training labels that a test language lacks
are fine and reported as a note; macro averages run over the labels in that language's gold data or
predictions (scikit-learn's convention), so an absent class counts only if it is predicted.

Reported per language: accuracy, macro precision, macro recall, macro F1 (per-class with --per-class);
token tasks: token accuracy, macro P/R/F1 over tags, span F1 when the tags are BIO / IOB2; and the
majority-class baseline: always predicting the most frequent TRAINING label (a test-set majority would
use the test labels). "avg" is the unweighted mean over the zero-shot languages (all but the training
language, whose in-language score is shown for reference). Written to OUT/results.json and
OUT/results.md; the fine-tuned model is kept in OUT/model.

Centering (--center): every language's representations sit around a language-specific mean, and a
head trained on one language reads another's offset as evidence for some class; a briefly pretrained
encoder often sends a whole test language to one label that way. Libovický, Rosa & Fraser (2020, "On
the Language Neutrality of Pre-trained Multilingual Representations") remove it by subtracting each
language's mean vector. Here, before the head, each test language's features (the pooled vector; token
task: every token's state) are moved by (training-language mean - this language's mean), the means
taken over the test inputs of each language, labels unused (transductive, like any test-time
normalisation). The training language is left as it is.

Alignment (--align DIR): the same paper's learned projection. For each test language with parallel
text beside the training language in DIR (`xlmkit prepare`'s file names: `un.en-ru.en` /
`un.en-ru.ru`, several corpora merged), up to --align-sentences pairs are drawn evenly from it, both
sides encoded by the fine-tuned encoder (the pooled vector; token task: the mean of the tokens'
states), and an affine map from that language's features onto the training language's is fitted by
least squares (ridge 1e-2 of the mean feature variance); before the head, the test features go
through it. No test input and no label is used. Languages without such text are centered if --center
is given too, else left as they are; the results record which were aligned and on how many pairs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from xlmkit.core.errors import DataError, XlmkitError
from xlmkit.core.langs import canonical_lang
from xlmkit.core.tables import table_markdown
from xlmkit.tasks.io import (
    Example,
    check_labels,
    group_by_lang,
    label_counts,
    label_list,
    list_task_files,
    read_task_file,
    select_uids,
    split_from_filename,
    split_uids,
    unknown_labels,
)

UNSPLIT = "unsplit"


# ----------------------------------------------------------------------------------------------
# Data: splits per language


def read_split_data(spec, task: str) -> dict[str, dict[str, list[Example]]]:
    """{split: {lang: examples}} with split in train / dev / test / unsplit. A directory of language
    folders (SIB-200, UMSAB sentiment: xlmkit.tasks.benchmarks) is read as its layout says."""
    from xlmkit.tasks.benchmarks import is_language_folders, read_language_folders

    if isinstance(spec, (str, Path)) and is_language_folders(spec):
        return read_language_folders(spec, task)
    out: dict[str, dict[str, list[Example]]] = {}
    for f in list_task_files(spec):
        split = split_from_filename(f) or UNSPLIT
        for lang, exs in group_by_lang(read_task_file(f, task)).items():
            out.setdefault(split, {}).setdefault(lang, []).extend(exs)
    return out


def _test_pool(data: dict[str, dict[str, list[Example]]], lang: str, split: str = "test") -> list[Example]:
    return data.get(split, {}).get(lang) or data.get(UNSPLIT, {}).get(lang) or []


def zero_shot_splits(data: dict[str, dict[str, list[Example]]], train_lang: str, train_fraction: float,
                     dev_fraction: float, seed: int, test_all: bool = False,
                     langs: Sequence[str] | None = None, test_split: str = "test",
                     train_split: str = "train") -> dict[str, Any]:
    """{'train', 'dev', 'test': {lang: examples}, 'labels', 'protocol'} (see the module doc)."""
    all_langs = sorted({lang for split in data.values() for lang in split})
    if train_lang not in all_langs:
        raise DataError(f"no data for the training language {train_lang!r}; languages in the data: "
                        f"{', '.join(all_langs) or 'none'}")
    test_langs = [lang for lang in all_langs if langs is None or lang in langs or lang == train_lang]
    if langs is not None:
        missing = sorted(set(langs) - set(all_langs))
        if missing:
            raise DataError(f"no data for language(s) {', '.join(missing)}; have {', '.join(all_langs)}")
    if not 0.0 < train_fraction < 1.0:
        raise DataError(f"--train-fraction must be in (0, 1), got {train_fraction}")
    if not 0.0 <= dev_fraction < 1.0:
        raise DataError(f"--dev-fraction must be in [0, 1), got {dev_fraction}")

    test: dict[str, list[Example]] = {}
    if data.get(train_split, {}).get(train_lang):
        train = data[train_split][train_lang]
        labels = label_list(train)
        dev = data.get("dev", {}).get(train_lang) if train_split != "dev" else None
        if dev is None and dev_fraction > 0:
            train_ids, dev_ids = split_uids([ex.uid for ex in train], (1 - dev_fraction, dev_fraction), seed)
            train, dev = select_uids(train, train_ids), select_uids(train, dev_ids)
        for lang in test_langs:
            pool = _test_pool(data, lang, test_split)
            if not pool and train_split == "dev" and lang != train_lang:
                pool = data.get("dev", {}).get(lang) or []  # XNLI-style sets: a language with dev only
            if pool:
                test[lang] = pool
        protocol = (f"{train_split} file of the training language; every language tested on its {test_split}"
                    + (" (else dev)" if train_split == "dev" else "") + " / unsplit file")
    else:
        pool = _test_pool(data, train_lang)
        labels = label_list(pool)
        uids = [ex.uid for ex in pool]
        if len(set(uids)) != len(uids):
            raise DataError(f"{pool[0].source.rsplit(':', 1)[0]}: sentence ids are not unique; cannot split by id")
        f_dev = train_fraction * dev_fraction
        train_ids, dev_ids, test_ids = split_uids(uids, (train_fraction - f_dev, f_dev, 1 - train_fraction), seed)
        train, dev = select_uids(pool, train_ids), (select_uids(pool, dev_ids) if dev_ids else None)
        for lang in test_langs:
            lang_pool = _test_pool(data, lang)
            if not lang_pool:
                continue
            if test_all and lang != train_lang:
                test[lang] = lang_pool
                continue
            held = select_uids(lang_pool, test_ids)
            if not held:
                raise DataError(f"{lang_pool[0].source.rsplit(':', 1)[0]}: none of its {len(lang_pool)} examples has "
                                f"a held-out id of the training language; the data is not parallel (use --test-all)")
            test[lang] = held
        protocol = (f"one unsplit set per language; ids split {train_fraction:.2f} train (of which "
                    f"{dev_fraction:.2f} dev) / {1 - train_fraction:.2f} held out, seed {seed}; "
                    + ("other languages tested on all their examples" if test_all
                       else "every language tested on the same held-out ids (parallel test sets)"))
    if not train:
        raise DataError(f"the training split of {train_lang!r} is empty")
    if dev is not None and not dev:
        dev = None
    for lang, exs in test.items():
        if not exs:
            raise DataError(f"the test split of {lang!r} is empty")
    return {"train": train, "dev": dev, "test": test, "labels": labels, "protocol": protocol}


# ----------------------------------------------------------------------------------------------
# Tables


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _columns(task: str, spans: bool) -> list[tuple[str, str]]:
    """(header, key) of the table's columns; keys index a language's result row."""
    if task == "token":
        cols = [("sents", "n_sequences"), ("tokens", "n_tokens"), ("token acc", "token_accuracy"),
                ("macro-P", "macro_precision"), ("macro-R", "macro_recall"), ("macro-F1", "macro_f1")]
        if spans:
            cols.append(("span F1", "span_f1"))
        return cols + [("majority acc", "majority_accuracy"), ("majority macro-F1", "majority_macro_f1")]
    return [("n", "n"), ("accuracy", "accuracy"), ("macro-P", "macro_precision"), ("macro-R", "macro_recall"),
            ("macro-F1", "macro_f1"), ("majority acc", "majority_accuracy"),
            ("majority macro-F1", "majority_macro_f1")]


_COUNT_KEYS = ("n", "n_sequences", "n_tokens")


def markdown_table(rows: dict[str, dict], columns: list[tuple[str, str]], average: dict | None = None,
                   train_lang: str | None = None) -> str:
    """Rows of numbers as a Markdown table (percentages with one decimal; counts as integers)."""

    def cell(row: dict, key: str) -> str:
        v = row.get(key)
        if v is None:
            return "-"
        return str(int(v)) if key in _COUNT_KEYS else _pct(v)

    keys = [k for _, k in columns]
    table = [{"lang": f"{lang} (train)" if lang == train_lang else lang, **{k: cell(row, k) for k in keys}}
             for lang, row in rows.items()]
    avg = {k: cell(average, k) for k in keys if k not in _COUNT_KEYS} if average else None
    return table_markdown(table, ["lang", *keys], average=avg, headers={k: h for h, k in columns},
                          average_label="avg").rstrip("\n")


def per_class_table(per_class: dict[str, dict]) -> str:
    table = [{"label": lab, "precision": _pct(s["precision"]), "recall": _pct(s["recall"]), "F1": _pct(s["f1"]),
              "support": s["support"]} for lab, s in per_class.items()]
    return table_markdown(table, ["label", "precision", "recall", "F1", "support"]).rstrip("\n")


def average_rows(rows: dict[str, dict], langs: Sequence[str]) -> dict[str, float]:
    """Unweighted mean of every numeric, non-count key over `langs`."""
    if not langs:
        return {}
    keys = [k for k, v in rows[langs[0]].items() if isinstance(v, float)]
    return {k: sum(rows[lang][k] for lang in langs) / len(langs) for k in keys if all(k in rows[lang] for lang in langs)}


def write_results(out: Path, results: dict, markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Scoring one language


def evaluate_language(ft_model, encoder, examples: list[Example], labels: Sequence[str], majority: str,
                      ft, device, per_class: bool, unknown: str, reference=None, affine=None) -> dict[str, Any]:
    """Scores of the model and of the majority baseline on one language's examples. `reference`: the
    training language's mean features, to center this language on (the module doc); None = no centering.
    `affine`: (W, b) of fit_affine, to align this language with (the module doc; instead of centering)."""
    from xlmkit.tasks import scores as M
    from xlmkit.tasks.finetune import mean_features, predict, score

    notes = []
    langs = sorted({ex.lang for ex in examples})
    if encoder.spec.use_langs and encoder.has_lang_emb:
        fallback = encoder.contract.missing_langs(langs)
        if fallback and encoder.spec.unknown_lang_id is not None:
            notes.append(f"no language embedding for {', '.join(fallback)}: given language id "
                         f"{encoder.spec.unknown_lang_id} (--unknown-lang-id)")
    bad = unknown_labels(examples, labels)
    if bad:
        if unknown == "error":
            check_labels(examples, labels, "the training labels")
        notes.append(f"{len(bad)} {'words' if encoder.spec.task == 'token' else 'examples'} with labels unseen in "
                     f"training left out of the scores (first: {bad[0][0]} {bad[0][1]!r})")
        if encoder.spec.task != "token":
            examples = [ex for ex in examples if ex.label in set(labels)]
            if not examples:
                raise DataError("no test example left after leaving out unknown labels")
    data, stats = encoder.encode(examples, allow_unknown=unknown == "ignore")
    batch_size = max(ft.batch_size, 64)
    shift = None
    if reference is not None and affine is None:
        shift = mean_features(ft_model, data, encoder.pad_id, batch_size, device, ft.precision) - reference
    preds = predict(ft_model, data, encoder.pad_id, batch_size, device, ft.precision, shift=shift, affine=affine)
    row = score(examples, preds, labels, per_class=per_class)
    # majority baseline: the most frequent training label everywhere
    if encoder.spec.task == "token":
        known = set(labels)
        gold = [[g for g in ex.label if g in known] for ex in examples]
        base = M.token_scores(gold, [[majority] * len(g) for g in gold], spans=False)
        row["majority_accuracy"] = base["token_accuracy"]
    else:
        gold = [ex.label for ex in examples]
        base = M.classification_scores(gold, [majority] * len(gold))
        row["majority_accuracy"] = base["accuracy"]
    row["majority_macro_f1"] = base["macro_f1"]
    row["truncated"] = stats.truncated
    missing = sorted(set(labels) - set(label_counts(examples)))
    if missing:
        notes.append(f"training labels absent from this language: {', '.join(missing)}")
    if notes:
        row["notes"] = notes
    return row


# ----------------------------------------------------------------------------------------------
# Alignment on parallel text (--align)

MIN_ALIGN_PAIRS = 100  # fewer pairs than this fit a 256-d map poorly: the language is left unaligned


def parallel_sentences(dirs: Sequence[str | Path], lang_a: str, lang_b: str, limit: int) -> list[tuple[str, str]]:
    """Up to `limit` clean (lang_a, lang_b) sentence pairs from the parallel corpora of `dirs` (found as
    `xlmkit prepare --data-dir` finds them, either direction, every corpus of the pair), drawn evenly
    over all of them in file order; pairs with an empty side are left out."""
    from xlmkit.data.prepare import discover_inputs
    from xlmkit.data.text import clean_line, read_lines

    pairs: list[tuple[str, str]] = []
    for d in dirs:
        _, para = discover_inputs(d)
        for name, flip in ((f"{lang_a}-{lang_b}", False), (f"{lang_b}-{lang_a}", True)):
            corpora = para.get(name)
            if corpora is None:
                continue
            for fa, fb in corpora if isinstance(corpora, list) else [corpora]:
                fa, fb = (fb, fa) if flip else (fa, fb)
                for a, b in zip(read_lines(fa, skip_bad_lines=True), read_lines(fb, skip_bad_lines=True)):
                    a, b = clean_line(a or ""), clean_line(b or "")
                    if a and b:
                        pairs.append((a, b))
    if len(pairs) > limit:
        import numpy as np

        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, limit).round().astype(int)]
    return pairs


def fit_affine(x, y, ridge: float = 1e-2):
    """(W (D, D), b (D,)) minimising |x W + b - y|^2 + lam |W|^2 over the rows of x, y (N, D): the least
    squares map of Libovický et al. (2020), with lam = ridge x the mean variance of x's features."""
    import torch

    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    cov = xc.T @ xc / len(x)  # (D, D)
    lam = ridge * float(cov.diagonal().mean().clamp(min=1e-12))
    weight = torch.linalg.solve(cov + lam * torch.eye(len(cov), dtype=cov.dtype), xc.T @ yc / len(x))
    return weight.float(), (my - mx @ weight).float()


def _features_of_texts(task_model, encoder, texts: list[str], lang: str, labels: Sequence[str], ft, device):
    """The fine-tuned encoder's sentence features of raw texts in `lang` (a placeholder label: unused)."""
    from xlmkit.tasks.finetune import sentence_features

    if encoder.spec.task == "token":
        examples = [Example(lang=lang, label=[labels[0]] * len(t.split()), tokens=t.split(), source="--align")
                    for t in texts]
    else:
        examples = [Example(lang=lang, label=labels[0], text=t, source="--align") for t in texts]
    data, _ = encoder.encode(examples, allow_unknown=True)
    return sentence_features(task_model, data, encoder.pad_id, max(ft.batch_size, 64), device, ft.precision)


def fit_alignments(task_model, encoder, dirs: Sequence[str | Path], source_lang: str, langs: Sequence[str],
                   labels: Sequence[str], ft, device, limit: int) -> tuple[dict[str, tuple], dict[str, int]]:
    """Per language of `langs` (but source_lang) with >= MIN_ALIGN_PAIRS parallel pairs with source_lang
    in `dirs`: the affine map of its features onto source_lang's. -> (maps, pairs used per language;
    0 for a language left unaligned)."""
    if encoder.spec.task == "pair":
        raise XlmkitError("--align maps single sentences' features; the pair task is not supported")
    maps, used = {}, {}
    for lang in langs:
        if lang == source_lang:
            continue
        pairs = parallel_sentences(dirs, source_lang, lang, limit)
        used[lang] = len(pairs) if len(pairs) >= MIN_ALIGN_PAIRS else 0
        if not used[lang]:
            continue
        x = _features_of_texts(task_model, encoder, [b for _, b in pairs], lang, labels, ft, device)
        y = _features_of_texts(task_model, encoder, [a for a, _ in pairs], source_lang, labels, ft, device)
        maps[lang] = fit_affine(x, y)
    return maps, used


# ----------------------------------------------------------------------------------------------
# The protocol


def evaluate(model: str | Path, data: str | Path | Sequence[str | Path], out: str | Path, task: str | None = None,
             train_lang: str | None = None, langs: str | Sequence[str] | None = None, which: str = "best",
             config: str | Path | None = None, overrides: Sequence[str] = (), pooling: str = "mean",
             unknown_lang_id: str | None = None, train_fraction: float = 0.8, dev_fraction: float = 0.1,
             test_all: bool = False, train_split: str = "train", test_split: str = "test",
             per_class: bool = False, unknown_labels: str = "error", split_seed: int = 0,
             center: bool = False, align: Sequence[str | Path] = (), align_sentences: int = 2000) -> dict[str, Any]:
    """`xlmkit evaluate`: zero-shot cross-lingual transfer (the module doc). Fine-tune the pretrained run
    `model` on `train_lang` (default finetune.train_lang) of `data` (a directory or task files) and test
    every language (or `langs`); a fine-tuned run is only tested. Writes OUT/results.json, OUT/results.md
    and OUT/model; returns the results.json object. `config` / `overrides` / `pooling` /
    `unknown_lang_id` as xlmkit.tasks.finetune.finetune_run; `unknown_labels`: "error" or "ignore";
    `center`: per-language mean centering; `align`: directories of parallel text to fit each language's
    affine map onto the training language on, `align_sentences` pairs at most (the module doc)."""
    from xlmkit.tasks.finetune import finetune, is_finetuned_dir, load_finetuned, load_pretrained
    from xlmkit.core.runtime import choose_precision, pick_device

    t0 = time.time()
    out = Path(out)
    if isinstance(langs, str):  # "de,fr" as the command line gives it
        langs = [x for x in langs.split(",") if x.strip()]
    langs = [canonical_lang(x) for x in langs] if langs is not None else None
    overrides = list(overrides)
    if is_finetuned_dir(model):
        ftm = load_finetuned(model, which=which)
        ft = ftm.config.finetune
        if task is not None and task != ftm.spec.task:
            raise XlmkitError(f"{model} was fine-tuned for {ftm.spec.task}, not {task}")
        from xlmkit.tasks.finetune import TaskEncoder

        split_data = read_split_data(data, ftm.spec.task)
        all_langs = sorted({lang for split in split_data.values() for lang in split})
        test = {lang: _test_pool(split_data, lang, test_split) for lang in all_langs if langs is None or lang in langs}
        test = {k: v for k, v in test.items() if v}
        import dataclasses

        from xlmkit.tasks.finetune import resolve_unknown_lang_id

        spec = ftm.spec
        if unknown_lang_id is not None:
            spec = dataclasses.replace(spec, unknown_lang_id=resolve_unknown_lang_id(
                unknown_lang_id, ftm.vocab, ftm.model.encoder))
        task_model, encoder, labels = ftm.model, TaskEncoder(ftm.tokenizer, ftm.vocab, spec, ftm.model.encoder), list(spec.labels)
        device = pick_device(ft.device)
        # the precision of this machine, not of the one it was fine-tuned on
        ft = dataclasses.replace(ft, precision=choose_precision("auto", device)[0])
        task_model.to(device)
        train_lang, majority, protocol, ft_info = None, None, "fine-tuned model, tested on test / unsplit files", {}
    else:
        if task is not None:
            overrides = [*overrides, f"finetune.task={task}"]
        loaded, ft = load_pretrained(model, which, config, overrides, command="evaluate")
        train_lang = canonical_lang(train_lang or ft.train_lang)
        split_data = read_split_data(data, ft.task)
        splits = zero_shot_splits(split_data, train_lang, train_fraction, dev_fraction, split_seed,
                                  test_all, langs, test_split, train_split)
        labels, test, protocol = splits["labels"], splits["test"], splits["protocol"]
        print(f"[evaluate] {protocol}")
        print(f"[evaluate] train {train_lang}: {len(splits['train'])} examples, dev: {len(splits['dev'] or [])}; "
              f"test: " + ", ".join(f"{lang} {len(v)}" for lang, v in test.items()))
        from xlmkit.tasks.finetune import resolve_unknown_lang_id

        unknown = resolve_unknown_lang_id(unknown_lang_id, loaded.vocab, loaded.model)
        result = finetune(loaded, ft, splits["train"], splits["dev"], labels=labels, pooling=pooling,
                          unknown_lang_id=unknown, out_dir=out / "model")
        task_model, encoder, spec, ft = result.model, result.encoder, result.spec, result.config.finetune
        device = next(task_model.parameters()).device
        from xlmkit.tasks.scores import majority_label

        flat = [lab for ex in splits["train"] for lab in (ex.label if isinstance(ex.label, list) else [ex.label])]
        majority = majority_label(flat)
        ft_info = {"best": result.best, "seconds": round(result.seconds, 1), "history": result.history,
                   "train_examples": len(splits["train"]), "dev_examples": len(splits["dev"] or []),
                   "train_truncated": result.train_stats.truncated,
                   "train_dropped_labels": result.train_stats.dropped_labels}

    if majority is None:
        from xlmkit.tasks.scores import majority_label

        majority = majority_label(labels)  # no training data at hand: a placeholder baseline
    rows: dict[str, dict] = {}
    t_test = time.time()
    reference, center_lang = None, None
    if center:
        center_lang = train_lang or canonical_lang(ft.train_lang)
        if center_lang not in test:
            raise DataError(f"--center moves every language to the mean of {center_lang!r}, which has no test "
                            f"data here; languages tested: {', '.join(sorted(test)) or 'none'}")
        from xlmkit.tasks.finetune import mean_features

        ref = test[center_lang]
        if spec.task != "token":  # its examples with labels unseen in training are left out, as when scored
            known = set(labels)
            ref = [ex for ex in ref if ex.label in known]
        ref_data, _ = encoder.encode(ref, allow_unknown=True)
        reference = mean_features(task_model, ref_data, encoder.pad_id, max(ft.batch_size, 64), device, ft.precision)
    affines, aligned = {}, {}
    if align and align_sentences < MIN_ALIGN_PAIRS:
        raise XlmkitError(f"--align-sentences must be >= {MIN_ALIGN_PAIRS} (a map of D x D numbers needs many "
                          f"pairs), got {align_sentences}")
    if align:
        align_lang = train_lang or canonical_lang(ft.train_lang)
        affines, aligned = fit_alignments(task_model, encoder, align, align_lang, sorted(test), labels, ft, device,
                                          align_sentences)
        print("[evaluate] aligned on parallel text: " + (", ".join(f"{k} {v} pairs" for k, v in aligned.items() if v)
                                                         or "no language had enough"))
    for lang, exs in sorted(test.items(), key=lambda kv: (kv[0] != train_lang, kv[0])):
        rows[lang] = evaluate_language(task_model, encoder, exs, labels, majority, ft, device, per_class,
                                       unknown_labels, reference if lang != center_lang else None,
                                       affines.get(lang))
        if lang in aligned:  # a column of `xlmkit report`'s table: which languages were aligned, on how much
            rows[lang]["aligned_pairs"] = aligned[lang]
    zero_shot = [lang for lang in rows if lang != train_lang]
    avg = average_rows(rows, zero_shot)
    spans = any("span_f1" in r for r in rows.values())
    columns = _columns(spec.task, spans)
    table = markdown_table(rows, columns, avg, train_lang)

    title = (f"# Zero-shot {spec.task} transfer from {train_lang}" if train_lang else f"# {spec.task} evaluation")
    md = [title, "", f"- model: `{model}`", f"- data: `{data}`", f"- protocol: {protocol}",
          f"- labels ({len(labels)}): {', '.join(labels)}", f"- majority baseline: always `{majority}`",
          *([f"- centering: every language moved to the mean features of {center_lang} (--center)"
             + (" unless aligned" if align else "")] if center else []),
          *([f"- alignment: affine maps onto {train_lang or ft.train_lang}'s features fitted on parallel text "
             f"(--align {', '.join(map(str, align))}): "
             + (", ".join(f"{k} {v} pairs" for k, v in aligned.items() if v) or "none")
             + (f"; no (or too little) parallel text: {', '.join(k for k, v in aligned.items() if not v)}"
                if any(not v for v in aligned.values()) else "")] if align else []),
          "- numbers are percentages; avg = mean over the zero-shot languages (train language excluded)", "",
          table]
    notes = []
    for lang, row in rows.items():
        notes += [f"- note ({lang}): {note}" for note in row.get("notes", [])]
        if row.get("truncated"):
            notes.append(f"- note ({lang}): {row['truncated']} examples truncated to {spec.max_len} ids"
                         + (f", {row.get('dropped_words', 0)} words beyond the cut not scored"
                            if spec.task == "token" else ""))
    if notes:
        md += [""] + notes
    if per_class:
        for lang, row in rows.items():
            md += ["", f"## {lang}: per class", "", per_class_table(row["per_class"])]
    markdown = "\n".join(md)
    results = {"task": spec.task, "model": str(model), "data": str(data), "train_lang": train_lang,
               "protocol": protocol, "labels": labels, "majority_label": majority, "pooling": spec.pooling,
               "centering": center_lang, "alignment": ({"dirs": [str(x) for x in align], "pairs": aligned}
                                                       if align else None), "max_len": spec.max_len, "languages": rows, "average_zero_shot": avg,
               "finetune": ft_info,
               "seconds": {"total": round(time.time() - t0, 1), "test": round(time.time() - t_test, 1)}}
    write_results(out, results, markdown)
    print(table)
    print(f"[evaluate] results in {out / 'results.md'} and {out / 'results.json'} ({time.time() - t0:.0f}s)")
    return results
