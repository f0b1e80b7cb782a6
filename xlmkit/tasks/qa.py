"""Extractive question answering: SQuAD v1.1 data, long contexts in overlapping windows, span decoding
back to the original characters, and exact match / F1 with the official normalisation.

    examples = read_squad("xquad.de.json", lang="de")                     # QAExample per question
    windows = window_spans(n_context_tokens, max_context_tokens=300, stride=128)
    answer = decode_answer(context, windows_logits, max_answer_tokens=30)  # the best span's text
    scores = qa_scores({qid: answer}, examples)                            # {"exact_match", "f1", "n"}

Normalisation (`normalize_answer`) is MLQA's (Lewis et al. 2020, mlqa_evaluation_v1.py), which is
SQuAD v1.1's (lower case, no punctuation, no articles, single spaces) with every Unicode punctuation
character removed, each language's articles (en, es, de, vi, ar; none for hi and zh) and Chinese
split into single characters ("mixed segmentation"). Languages MLQA does not cover (ru, el, tr, ...)
are normalised as whitespace languages without articles.

The pieces here are pure functions on token offsets and logits; the span head, its fine-tuning on
the training engine and the XQuAD protocol (`xlmkit qa`) are in xlmkit.tasks.qa_task.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlmkit.core.errors import DataError

# ----------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class QAExample:
    qid: str
    lang: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, character start in context)
    title: str = ""
    article: int = 0  # index of its article in the file (XQuAD's protocol splits by article)


def read_squad(path: str | Path, lang: str, skip_misaligned: bool = False) -> tuple[list[QAExample], int]:
    """A SQuAD v1.1 JSON file -> (examples in file order, number of misaligned answers skipped). An
    answer whose text is not at its answer_start in the context is an error naming the question id,
    or, with skip_misaligned, dropped and counted (a question left with no answer is dropped)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: not SQuAD JSON (expected an object with a 'data' list)")
    out, skipped = [], 0
    for article_index, article in enumerate(data["data"]):
        title = str(article.get("title", ""))
        for para in article.get("paragraphs", []):
            context = para.get("context")
            if not isinstance(context, str):
                raise DataError(f"{path}: a paragraph of '{title}' has no context string")
            for qa in para.get("qas", []):
                qid = str(qa.get("id", ""))
                answers = []
                for ans in qa.get("answers", []):
                    text, start = ans.get("text"), ans.get("answer_start")
                    if not isinstance(text, str) or not isinstance(start, int) or context[start:start + len(text)] != text:
                        if skip_misaligned:
                            skipped += 1
                            continue
                        raise DataError(f"{path}: question {qid}: answer {text!r} is not at answer_start {start} "
                                        f"of its context (pass skip_misaligned to count and skip such answers)")
                    answers.append((text, start))
                if answers or not qa.get("answers"):
                    out.append(QAExample(qid, lang, str(qa.get("question", "")), context, tuple(answers), title,
                                         article_index))
    return out, skipped


# ----------------------------------------------------------------------------------------------
# Windows over long contexts


def window_spans(n_tokens: int, max_tokens: int, stride: int) -> list[tuple[int, int]]:
    """[start, stop) token ranges covering a context of n_tokens in windows of at most max_tokens,
    consecutive windows overlapping by `stride` tokens (the doc_stride of BERT's SQuAD code and
    transformers' run_qa), so an answer cut by one window's edge is whole in the next."""
    if max_tokens < 1 or not 0 <= stride < max_tokens:
        raise ValueError(f"need max_tokens >= 1 and 0 <= stride < max_tokens, got {max_tokens}, {stride}")
    spans, start = [], 0
    while True:
        stop = min(start + max_tokens, n_tokens)
        spans.append((start, stop))
        if stop >= n_tokens:
            return spans
        start = stop - stride


def answer_token_span(offsets: Sequence[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int] | None:
    """The (first, last) context tokens covering characters [char_start, char_end), from the tokens'
    character offsets; None where no token overlaps the answer."""
    first = last = None
    for i, (a, b) in enumerate(offsets):
        if b > char_start and a < char_end:
            first = i if first is None else first
            last = i
    return None if first is None else (first, last)


def window_target(span: tuple[int, int] | None, window: tuple[int, int]) -> tuple[int, int] | None:
    """The answer's (first, last) token relative to the window, or None when the window does not hold
    it whole (such a window trains its "no answer here" target, as BERT's SQuAD code)."""
    if span is None or span[0] < window[0] or span[1] >= window[1]:
        return None
    return span[0] - window[0], span[1] - window[0]


@dataclass(frozen=True)
class QAFeature:
    """One window of one example as model input: `first q last last c_window last` (the pair framing
    of pretraining's TLM and of fine-tuning's pair task: `</s> q </s> </s> c </s>` for XLM,
    `<s> q </s> </s> c </s>` for XLM-R). target: (start, end) positions in ids of the answer, or
    (0, 0) where the window does not hold it whole (BERT's "no answer here")."""

    example: int  # index of its QAExample
    ids: np.ndarray  # (L,) int64
    context_start: int  # position in ids of the window's first context token
    window: tuple[int, int]  # [start, stop) context tokens
    target: tuple[int, int]


def qa_features(tokenizer, examples: Sequence[QAExample], first_id: int, last_id: int, max_len: int = 384,
                stride: int = 128, max_question_tokens: int = 64
                ) -> tuple[list[QAFeature], list[list[tuple[int, int]]]]:
    """Examples -> (features, each example's context token offsets). The question is cut to
    max_question_tokens; the context is split into windows (window_spans) that fill max_len with the
    question and the four framing tokens; consecutive windows overlap by `stride` tokens. A training
    target is the first answer's tokens (answer_token_span); tokenizers' offsets locate them."""
    questions = tokenizer.encode_batch([ex.question for ex in examples], add_special_tokens=False)
    contexts = tokenizer.encode_batch([ex.context for ex in examples], add_special_tokens=False)
    features, all_offsets = [], []
    for i, (ex, q, c) in enumerate(zip(examples, questions, contexts)):
        q_ids = q.ids[:max_question_tokens]
        room = max_len - len(q_ids) - 4
        if room < 1:
            raise DataError(f"question {ex.qid}: max_len {max_len} leaves no room for context after the "
                            f"question ({len(q_ids)} tokens)")
        offsets = [tuple(o) for o in c.offsets]
        all_offsets.append(offsets)
        span = None
        if ex.answers:
            text, start = ex.answers[0]
            span = answer_token_span(offsets, start, start + len(text))
        head = [first_id, *q_ids, last_id, last_id]
        for window in window_spans(len(c.ids), room, min(stride, room - 1)):
            ids = np.array([*head, *c.ids[window[0]:window[1]], last_id], dtype=np.int64)
            rel = window_target(span, window)
            target = (0, 0) if rel is None else (rel[0] + len(head), rel[1] + len(head))
            features.append(QAFeature(i, ids, len(head), window, target))
    return features, all_offsets


# ----------------------------------------------------------------------------------------------
# Span decoding


@dataclass(frozen=True)
class Span:
    score: float
    start: int  # first context token (absolute, in the whole context)
    end: int  # last context token, inclusive


def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, window_start: int, n_best: int = 20,
               max_answer_tokens: int = 30) -> list[Span]:
    """The n_best spans of one window by start + end logit, over its context tokens only: start_logits,
    end_logits (n,) for the window's n context tokens (the question and specials cut off by the
    caller); spans with end < start or longer than max_answer_tokens are not valid. Token indices come
    back absolute (window_start added)."""
    n = len(start_logits)
    k = min(n_best, n)
    starts = np.argsort(-start_logits, kind="stable")[:k]
    ends = np.argsort(-end_logits, kind="stable")[:k]
    out = []
    for s in starts:
        for e in ends:
            if e < s or e - s + 1 > max_answer_tokens:
                continue
            out.append(Span(float(start_logits[s] + end_logits[e]), int(s) + window_start, int(e) + window_start))
    out.sort(key=lambda sp: -sp.score)
    return out[:n_best]


def decode_answer(context: str, offsets: Sequence[tuple[int, int]],
                  windows: Iterable[tuple[int, np.ndarray, np.ndarray]], n_best: int = 20,
                  max_answer_tokens: int = 30) -> str:
    """The answer text of one example: the best valid span over all its windows, each given as
    (window_start, start_logits, end_logits) over the window's context tokens, mapped back to the
    original characters of `context` through the tokens' offsets. "" when no window has a valid span."""
    best: Span | None = None
    for window_start, s, e in windows:
        spans = best_spans(np.asarray(s, dtype=np.float64), np.asarray(e, dtype=np.float64), window_start, n_best,
                           max_answer_tokens)
        if spans and (best is None or spans[0].score > best.score):
            best = spans[0]
    if best is None:
        return ""
    # a piece's offsets may take in the space before its word (Metaspace): the answer is the characters
    return context[offsets[best.start][0]:offsets[best.end][1]].strip()


# ----------------------------------------------------------------------------------------------
# Metrics (MLQA's evaluation script, see the module docstring)


def is_punctuation(ch: str) -> bool:
    """Any Unicode punctuation character (category P*) or ASCII punctuation (string.punctuation, which
    also holds symbols such as $ + < = > ^ ` | ~)."""
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")

_ARTICLES = {
    "en": r"\b(a|an|the)\b",
    "es": r"\b(un|una|unos|unas|el|la|los|las)\b",
    "vi": r"\b(của|là|cái|chiếc|những)\b",
    "de": r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b",
    "ar": r"\sال^|ال",
}
MIXED_SEGMENTATION_LANGS = ("zh",)
_CJK = re.compile(r"[\u4e00-\u9fa5]")


def mixed_segmentation(text: str) -> list[str]:
    """Chinese characters and punctuation as tokens of their own, the rest split on whitespace."""
    out, run = [], ""
    for ch in text:
        if _CJK.match(ch) or is_punctuation(ch):
            out.extend(run.split())
            run = ""
            out.append(ch)
        else:
            run += ch
    out.extend(run.split())
    return out


def normalize_answer(text: str, lang: str) -> str:
    text = "".join(ch for ch in text.lower() if not is_punctuation(ch))
    if lang in _ARTICLES:
        text = re.sub(_ARTICLES[lang], " ", text)
    tokens = mixed_segmentation(text) if lang in MIXED_SEGMENTATION_LANGS else text.split()
    return " ".join(t for t in tokens if t.strip())


def exact_match(prediction: str, truth: str, lang: str) -> float:
    return float(normalize_answer(prediction, lang) == normalize_answer(truth, lang))


def f1(prediction: str, truth: str, lang: str) -> float:
    pred, gold = normalize_answer(prediction, lang).split(), normalize_answer(truth, lang).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_scores(predictions: Mapping[str, str], examples: Sequence[QAExample]) -> dict[str, float]:
    """Exact match and F1 in percent, each the maximum over an example's gold answers, averaged over
    the examples (a question with no prediction scores 0), as the official scripts."""
    if not examples:
        raise DataError("no QA examples to score")
    em = f = 0.0
    for ex in examples:
        pred = predictions.get(ex.qid, "")
        golds = [text for text, _ in ex.answers] or [""]
        em += max(exact_match(pred, g, ex.lang) for g in golds)
        f += max(f1(pred, g, ex.lang) for g in golds)
    return {"exact_match": 100.0 * em / len(examples), "f1": 100.0 * f / len(examples), "n": len(examples)}
