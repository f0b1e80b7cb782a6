"""Extractive QA pieces (xlmkit.tasks.qa): the SQuAD reader, windows, span decoding, MLQA's metrics."""

import json

import numpy as np
import pytest

from xlmkit.core.errors import DataError
from xlmkit.tasks.qa import (QAExample, answer_token_span, best_spans, decode_answer, exact_match, f1, normalize_answer,
                       qa_scores, read_squad, window_spans, window_target)


def test_windows_overlap_by_the_stride_and_cover_everything():
    assert window_spans(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert window_spans(3, 4, 2) == [(0, 3)]
    assert window_spans(9, 4, 1) == [(0, 4), (3, 7), (6, 9)]
    with pytest.raises(ValueError):
        window_spans(9, 4, 4)


CONTEXT = "The cat sat on the mat in Paris today"
# whitespace tokens with their character offsets
OFFSETS = [(m, m + len(w)) for m, w in zip([0, 4, 8, 12, 15, 19, 23, 26, 32], CONTEXT.split())]


def test_answer_tokens_and_window_targets():
    assert [CONTEXT[a:b] for a, b in OFFSETS] == CONTEXT.split()
    span = answer_token_span(OFFSETS, CONTEXT.index("Paris"), CONTEXT.index("Paris") + 5)
    assert span == (7, 7)
    assert answer_token_span(OFFSETS, 4, 11) == (1, 2)  # "cat sat"
    assert window_target((1, 2), (0, 4)) == (1, 2)
    assert window_target((3, 4), (0, 4)) is None  # cut by the window's edge: no answer here
    assert window_target((3, 4), (2, 6)) == (1, 2)  # whole in the next window


def logits(n, peaks):
    x = np.full(n, -5.0)
    for i, v in peaks.items():
        x[i] = v
    return x


def test_answer_at_a_window_edge():
    # window (0, 4): "The cat sat on"; the answer "on" is its last token
    answer = decode_answer(CONTEXT, OFFSETS, [(0, logits(4, {3: 3.0}), logits(4, {3: 3.0}))])
    assert answer == "on"


def test_answer_in_the_second_window_wins_over_a_weaker_one_in_the_first():
    windows = [(0, logits(4, {1: 1.0}), logits(4, {2: 1.0})),  # "cat sat", score 2
               (4, logits(5, {3: 4.0}), logits(5, {4: 3.0}))]  # tokens 7..8 "Paris today", score 7
    assert decode_answer(CONTEXT, OFFSETS, windows) == "Paris today"


def test_no_valid_span_gives_an_empty_answer():
    # among the n_best candidates the only start comes after the only end
    s, e = logits(5, {4: 9.0}), logits(5, {0: 9.0})
    assert best_spans(s, e, 0, n_best=1) == []
    assert decode_answer(CONTEXT, OFFSETS, [(0, s, e)], n_best=1, max_answer_tokens=1) == ""
    assert decode_answer(CONTEXT, OFFSETS, []) == ""
    # a span longer than max_answer_tokens is never chosen: (0, 5) scores 10 but has 6 tokens
    s, e = logits(6, {0: 5.0, 4: 1.0}), logits(6, {5: 5.0, 4: 1.0})
    assert decode_answer(CONTEXT, OFFSETS, [(0, s, e)], max_answer_tokens=3) == "the mat"  # (4, 5), score 6
    assert decode_answer(CONTEXT, OFFSETS, [(0, s, e)], max_answer_tokens=6) == "The cat sat on the mat"


def test_normalisation_and_metrics_by_hand():
    assert normalize_answer("The  Cat, sat!", "en") == "cat sat"
    assert normalize_answer("«Der Hund»", "de") == "hund"
    assert normalize_answer("el gato", "es") == "gato"
    assert normalize_answer("北京大学。", "zh") == "北 京 大 学"
    assert normalize_answer("2008年北京", "zh") == "2008 年 北 京"
    assert exact_match("the cat", "Cat.", "en") == 1.0
    assert exact_match("北京大学。", "北京大学", "zh") == 1.0
    # zh F1 on characters: pred 北京 (2 chars) vs gold 北京大学 (4): P = 1, R = 1/2
    assert f1("北京", "北京大学", "zh") == pytest.approx(2 / 3)
    # en: pred "cat sat on mat" vs gold "the cat sat": common {cat, sat}, P = 2/4, R = 2/2
    assert f1("cat sat on mat", "the cat sat", "en") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert f1("dog", "cat", "en") == 0.0
    assert normalize_answer("ein Haus", "ru") == "ein haus"  # outside MLQA: whitespace, no articles


def test_scores_take_the_best_gold_answer_and_count_missing_predictions():
    exs = [QAExample("q1", "en", "?", "ctx", (("the cat", 0), ("a dog", 0))),
           QAExample("q2", "zh", "?", "ctx", (("北京大学", 0),)),
           QAExample("q3", "en", "?", "ctx", (("Paris", 0),))]
    s = qa_scores({"q1": "dog", "q2": "北京"}, exs)
    assert s["n"] == 3
    assert s["exact_match"] == pytest.approx(100 * 1 / 3)  # q1 matches "a dog"
    assert s["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def squad(tmp_path, answer_start):
    data = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Tom lives in Paris.", "qas": [
        {"id": "a1", "question": "Where?", "answers": [{"text": "Paris", "answer_start": answer_start}]},
        {"id": "a2", "question": "Who?", "answers": [{"text": "Tom", "answer_start": 0}]}]}]}]}
    path = tmp_path / "xquad.en.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_squad_reader_checks_answer_offsets(tmp_path):
    exs, skipped = read_squad(squad(tmp_path, 13), "en")
    assert skipped == 0 and [e.qid for e in exs] == ["a1", "a2"] and exs[0].answers == (("Paris", 13),)
    bad = squad(tmp_path, 3)
    with pytest.raises(DataError, match=r"question a1: answer 'Paris' is not at answer_start 3"):
        read_squad(bad, "en")
    exs, skipped = read_squad(bad, "en", skip_misaligned=True)
    assert skipped == 1 and [e.qid for e in exs] == ["a2"]
    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(DataError, match="broken.json:1: not valid JSON"):
        read_squad(broken, "en")


def test_squad_reader_reads_xquad(shared_data):
    path = shared_data / "qa" / "xquad" / "xquad.zh.json"
    if not path.is_file():
        pytest.skip("no XQuAD in shared data")
    exs, skipped = read_squad(path, "zh", skip_misaligned=True)
    assert len(exs) == 1190 and skipped == 0


def word_tokenizer(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False))
    return tok


def test_features_round_trip_to_the_answer_text_through_every_window():
    """Logits peaked at each feature's target decode back to the gold answer's characters, whether the
    answer is in the first window, in a later one, or cut by a window edge and whole in the next."""
    from xlmkit.tasks.qa import qa_features

    context = "Tom lives in Paris . " * 3 + "The capital of Kenya is Nairobi , a large city . " + "Cats sleep a lot . " * 4
    start = context.index("Nairobi")
    exs = [QAExample("k", "en", "What is the capital of Kenya ?", context, (("Nairobi", start),)),
           QAExample("t", "en", "Who lives in Paris ?", context, (("Tom", 0),))]
    tok = word_tokenizer([context, exs[0].question, exs[1].question])
    feats, offsets = qa_features(tok, exs, first_id=2, last_id=2, max_len=24, stride=6)
    assert len({f.example for f in feats}) == 2 and len(feats) > 4  # several windows per example
    for f in feats:
        assert len(f.ids) <= 24 and f.ids[0] == 2 and f.ids[f.context_start - 1] == 2 and f.ids[-1] == 2
    for i, ex in enumerate(exs):
        mine = [f for f in feats if f.example == i]
        holding = [f for f in mine if f.target != (0, 0)]
        assert holding, "some window holds the answer whole"
        windows = []
        for f in mine:
            n = f.window[1] - f.window[0]
            s, e = np.zeros(n), np.zeros(n)
            if f.target != (0, 0):
                s[f.target[0] - f.context_start] = 10.0
                e[f.target[1] - f.context_start] = 10.0
            windows.append((f.window[0], s, e))
        assert decode_answer(ex.context, offsets[i], windows) == ex.answers[0][0]
    k_windows = [f for f in feats if f.example == 0 and f.target != (0, 0)]
    assert any(f.window[0] > 0 for f in k_windows)  # the Kenya answer sits in a later window
