"""Evaluation metrics for downstream tasks: small pure functions over label arrays (numpy only).

Conventions (those of scikit-learn, which the tests check against on random inputs):
- `labels=None` means the sorted union of the labels in y_true and y_pred.
- Precision, recall or F1 of a class with a zero denominator is 0 (sklearn's zero_division=0).
- Macro averages are the unweighted mean over `labels`, so a class that is predicted but absent
  from the gold data counts (with recall 0 and F1 0), as in sklearn.

Span F1 for BIO / IOB2 tags follows seqeval's default (lenient) chunking: a chunk starts at B-X,
or at I-X after O or after a tag of another type, and ends before O, B-*, or a tag of another type.
E-X / S-X (IOBES) are understood too. A predicted span counts only if type, start and end all match
a gold span (exact match); precision, recall and F1 are micro-averaged over spans.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Hashable, Sequence

import numpy as np


def _as_array(y: Sequence[Any] | np.ndarray) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"expected a 1-d sequence of labels, got shape {a.shape}")
    return a


def _check_same_length(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")


def unique_labels(*ys: Sequence[Any]) -> list:
    """Sorted union of the labels in the given sequences."""
    out: set = set()
    for y in ys:
        out.update(np.asarray(y).tolist())
    return sorted(out)


def accuracy(y_true: Sequence[Any], y_pred: Sequence[Any]) -> float:
    """Fraction of positions where y_pred == y_true (0.0 for empty input)."""
    t, p = _as_array(y_true), _as_array(y_pred)
    _check_same_length(t, p)
    if len(t) == 0:
        return 0.0
    return float(np.mean(t == p))


def confusion_matrix(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any] | None = None) -> np.ndarray:
    """(K, K) int64 counts: row = true label, column = predicted label, in the order of `labels`.
    Pairs whose true or predicted label is not in `labels` are not counted (as sklearn)."""
    t, p = _as_array(y_true), _as_array(y_pred)
    _check_same_length(t, p)
    labels = unique_labels(t, p) if labels is None else list(labels)
    index = {lab: i for i, lab in enumerate(labels)}
    k = len(labels)
    ti = np.array([index.get(x, -1) for x in t.tolist()], dtype=np.int64)
    pi = np.array([index.get(x, -1) for x in p.tolist()], dtype=np.int64)
    keep = (ti >= 0) & (pi >= 0)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (ti[keep], pi[keep]), 1)
    return cm


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_recall_f1(
    y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any] | None = None
) -> tuple[list, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (labels, precision, recall, f1, support), each array (K,) in the order of labels."""
    t, p = _as_array(y_true), _as_array(y_pred)
    _check_same_length(t, p)
    labels = unique_labels(t, p) if labels is None else list(labels)
    cm = confusion_matrix(t, p, labels)
    tp = np.diag(cm).astype(np.float64)
    # predicted / true counts over ALL positions (not only those whose other side is in `labels`)
    index = {lab: i for i, lab in enumerate(labels)}
    pred_count = np.zeros(len(labels))
    true_count = np.zeros(len(labels))
    for lab, n in Counter(p.tolist()).items():
        if lab in index:
            pred_count[index[lab]] = n
    for lab, n in Counter(t.tolist()).items():
        if lab in index:
            true_count[index[lab]] = n
    precision = _safe_div(tp, pred_count)
    recall = _safe_div(tp, true_count)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return labels, precision, recall, f1, true_count.astype(np.int64)


def macro_precision_recall_f1(
    y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any] | None = None
) -> tuple[float, float, float]:
    """Unweighted means over classes of precision, recall and F1 (F1 is the mean of per-class F1,
    as sklearn's f1_score(average='macro'), not the F1 of the macro P and R)."""
    _, p, r, f, _ = precision_recall_f1(y_true, y_pred, labels)
    if len(p) == 0:
        return 0.0, 0.0, 0.0
    return float(p.mean()), float(r.mean()), float(f.mean())


def classification_scores(
    y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any] | None = None, per_class: bool = False
) -> dict[str, Any]:
    """{'n', 'accuracy', 'macro_precision', 'macro_recall', 'macro_f1'} (+ 'per_class' with per_class)."""
    labs, p, r, f, s = precision_recall_f1(y_true, y_pred, labels)
    out: dict[str, Any] = {
        "n": int(len(_as_array(y_true))),
        "accuracy": accuracy(y_true, y_pred),
        "macro_precision": float(p.mean()) if len(p) else 0.0,
        "macro_recall": float(r.mean()) if len(r) else 0.0,
        "macro_f1": float(f.mean()) if len(f) else 0.0,
    }
    if per_class:
        out["per_class"] = {
            str(lab): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, lab in enumerate(labs)
        }
    return out


def majority_label(y: Sequence[Hashable]) -> Hashable:
    """Most frequent label; ties go to the smallest label (deterministic)."""
    counts = Counter(np.asarray(y).tolist())
    if not counts:
        raise ValueError("majority_label of an empty sequence")
    best = max(counts.values())
    return min(lab for lab, n in counts.items() if n == best)


# ----------------------------------------------------------------------------------------------
# Sequence labelling


def _flatten(seqs: Sequence[Sequence[Any]]) -> list:
    return [x for s in seqs for x in s]


def _check_seqs(true_seqs: Sequence[Sequence[Any]], pred_seqs: Sequence[Sequence[Any]]) -> None:
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(f"{len(true_seqs)} gold sequences but {len(pred_seqs)} predicted ones")
    for i, (t, p) in enumerate(zip(true_seqs, pred_seqs)):
        if len(t) != len(p):
            raise ValueError(f"sequence {i}: {len(t)} gold tags but {len(p)} predicted tags")


def token_accuracy(true_seqs: Sequence[Sequence[Any]], pred_seqs: Sequence[Sequence[Any]]) -> float:
    """Accuracy over all tokens of all sequences (micro)."""
    _check_seqs(true_seqs, pred_seqs)
    return accuracy(_flatten(true_seqs), _flatten(pred_seqs))


def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', ''); a tag without a prefix is taken as I-tag."""
    if tag in ("O", "", "_"):
        return "O", ""
    if len(tag) >= 2 and tag[1] in "-_" and tag[0] in "BIESLU":
        prefix = {"L": "E", "U": "S"}.get(tag[0], tag[0])
        return prefix, tag[2:]
    return "I", tag


def is_bio_tagset(labels: Sequence[str]) -> bool:
    """True when the tags look like BIO / IOB2 / IOBES NER tags (an 'O' or B-/I- prefixed tags)."""
    labs = [str(x) for x in labels]
    prefixed = [x for x in labs if len(x) >= 3 and x[0] in "BIES" and x[1] in "-_"]
    return bool(prefixed) and all(x == "O" or x in prefixed for x in labs)


def bio_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks of one tag sequence as (type, start, end_inclusive), seqeval's default rules."""
    spans = []
    prev_prefix, prev_type = "O", ""
    start = -1
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, typ = _split_tag(str(tag))
        # end of the current chunk?
        end = (
            prev_prefix in ("E", "S")
            or (prev_prefix in ("B", "I") and prefix in ("B", "S", "O"))
            or (prev_prefix != "O" and prev_type != typ)
        )
        if start >= 0 and end:
            spans.append((prev_type, start, i - 1))
            start = -1
        # start of a new chunk?
        begin = (
            prefix in ("B", "S")
            or (prefix in ("I", "E") and (prev_prefix in ("E", "S", "O") or prev_type != typ))
        )
        if prefix != "O" and begin:
            start = i
        prev_prefix, prev_type = prefix, typ
    return spans


def span_f1(true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact-match span precision / recall / F1, micro over all spans (seqeval's f1_score)."""
    _check_seqs(true_seqs, pred_seqs)
    gold: set = set()
    pred: set = set()
    for i, (t, p) in enumerate(zip(true_seqs, pred_seqs)):
        gold.update((i, *s) for s in bio_spans(t))
        pred.update((i, *s) for s in bio_spans(p))
    tp = len(gold & pred)
    precision = tp / len(pred) if pred else 0.0
    recall = tp / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"span_precision": precision, "span_recall": recall, "span_f1": f1,
            "gold_spans": len(gold), "pred_spans": len(pred)}


def token_scores(
    true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]],
    labels: Sequence[str] | None = None, per_class: bool = False, spans: bool | None = None,
) -> dict[str, Any]:
    """Token accuracy, macro P/R/F1 over tags (+ per-tag), and span F1 when the tags are BIO
    (spans=None: decided by `is_bio_tagset` on the gold and predicted tags)."""
    _check_seqs(true_seqs, pred_seqs)
    flat_t, flat_p = _flatten(true_seqs), _flatten(pred_seqs)
    out = classification_scores(flat_t, flat_p, labels, per_class=per_class)
    out["token_accuracy"] = out.pop("accuracy")
    out["n_tokens"] = out.pop("n")
    out["n_sequences"] = len(true_seqs)
    if spans is None:
        spans = is_bio_tagset(unique_labels(flat_t, flat_p)) if flat_t else False
    if spans:
        out.update(span_f1(true_seqs, pred_seqs))
    return out
