"""Metrics against scikit-learn on random inputs, and span F1 on known (seqeval-documented) inputs."""

import numpy as np
import pytest

from xlmkit.tasks import scores as M

sk = pytest.importorskip("sklearn.metrics")


def _random_case(rng, n, k, strings):
    labels = [f"c{i}" for i in range(k)] if strings else list(range(k))
    t = [labels[i] for i in rng.integers(0, k, n)]
    # predictions biased towards the truth so that scores are not all near chance
    p = [x if rng.random() < 0.5 else labels[rng.integers(0, k)] for x in t]
    return t, p, labels


@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("seed", range(12))
def test_matches_sklearn_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    t, p, labels = _random_case(rng, int(rng.integers(1, 200)), int(rng.integers(1, 7)), strings=seed % 2 == 0)
    assert M.accuracy(t, p) == pytest.approx(sk.accuracy_score(t, p))
    np.testing.assert_array_equal(M.confusion_matrix(t, p), sk.confusion_matrix(t, p))
    labs, pr, rc, f1, sup = M.precision_recall_f1(t, p)
    ep, er, ef, es = sk.precision_recall_fscore_support(t, p, average=None, zero_division=0)
    assert labs == M.unique_labels(t, p)
    np.testing.assert_allclose(pr, ep)
    np.testing.assert_allclose(rc, er)
    np.testing.assert_allclose(f1, ef)
    np.testing.assert_array_equal(sup, es)
    mp, mr, mf = M.macro_precision_recall_f1(t, p)
    ep, er, ef, _ = sk.precision_recall_fscore_support(t, p, average="macro", zero_division=0)
    assert (mp, mr, mf) == pytest.approx((ep, er, ef))


@pytest.mark.parametrize("seed", range(6))
def test_explicit_label_lists_match_sklearn(seed):
    """A label list with an unseen class, and one that leaves a class out."""
    rng = np.random.default_rng(100 + seed)
    t, p, labels = _random_case(rng, 150, 5, strings=True)
    for labs in (labels + ["never"], labels[1:4], list(reversed(labels))):
        np.testing.assert_array_equal(M.confusion_matrix(t, p, labs), sk.confusion_matrix(t, p, labels=labs))
        _, pr, rc, f1, sup = M.precision_recall_f1(t, p, labs)
        ep, er, ef, es = sk.precision_recall_fscore_support(t, p, labels=labs, average=None, zero_division=0)
        np.testing.assert_allclose(pr, ep)
        np.testing.assert_allclose(rc, er)
        np.testing.assert_allclose(f1, ef)
        np.testing.assert_array_equal(sup, es)
        mf = M.macro_precision_recall_f1(t, p, labs)[2]
        assert mf == pytest.approx(sk.f1_score(t, p, labels=labs, average="macro", zero_division=0))


def test_classification_scores_and_majority():
    t = ["a", "a", "b", "c"]
    p = ["a", "b", "b", "b"]
    s = M.classification_scores(t, p, per_class=True)
    assert s["n"] == 4 and s["accuracy"] == 0.5
    assert s["per_class"]["b"] == {"precision": pytest.approx(1 / 3), "recall": 1.0, "f1": pytest.approx(0.5),
                                   "support": 1}
    assert s["per_class"]["c"]["f1"] == 0.0
    assert M.majority_label(["b", "a", "b", "a"]) == "a"  # tie -> smallest
    assert M.majority_label([3, 1, 3]) == 3
    with pytest.raises(ValueError):
        M.accuracy([1, 2], [1])


def test_token_accuracy_matches_flat_accuracy():
    rng = np.random.default_rng(0)
    true_seqs, pred_seqs = [], []
    for _ in range(20):
        n = int(rng.integers(1, 10))
        true_seqs.append(list(rng.integers(0, 3, n)))
        pred_seqs.append(list(rng.integers(0, 3, n)))
    flat_t = [x for s in true_seqs for x in s]
    flat_p = [x for s in pred_seqs for x in s]
    assert M.token_accuracy(true_seqs, pred_seqs) == pytest.approx(sk.accuracy_score(flat_t, flat_p))
    with pytest.raises(ValueError, match="sequence 0"):
        M.token_accuracy([[1, 2]], [[1]])


def test_bio_spans_seqeval_rules():
    assert M.bio_spans(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert M.bio_spans(["I-PER", "I-PER", "O"]) == [("PER", 0, 1)]  # I- after O starts a chunk
    assert M.bio_spans(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]  # type change
    assert M.bio_spans(["B-PER", "B-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]
    assert M.bio_spans(["S-PER", "B-LOC", "E-LOC", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 2), ("LOC", 3, 3)]
    assert M.bio_spans(["O", "O"]) == []


def test_span_f1_seqeval_example():
    # the example of seqeval's README: f1 = 0.5
    y_true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    y_pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    s = M.span_f1(y_true, y_pred)
    assert s["span_f1"] == pytest.approx(0.5)
    assert s["span_precision"] == pytest.approx(0.5) and s["span_recall"] == pytest.approx(0.5)
    # spans in different sentences never match each other
    s = M.span_f1([["B-PER"], ["O"]], [["O"], ["B-PER"]])
    assert s["span_f1"] == 0.0


def test_token_scores_detects_bio():
    t = [["B-PER", "I-PER", "O"], ["B-LOC"]]
    p = [["B-PER", "I-PER", "O"], ["O"]]
    s = M.token_scores(t, p)
    assert s["token_accuracy"] == pytest.approx(0.75)
    assert s["span_f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    s = M.token_scores([["NOUN", "VERB"]], [["NOUN", "NOUN"]])
    assert "span_f1" not in s and s["n_tokens"] == 2
    assert M.is_bio_tagset(["O", "B-PER", "I-PER"]) and not M.is_bio_tagset(["NOUN", "VERB", "B-X"])
