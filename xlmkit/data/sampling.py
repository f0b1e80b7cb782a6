"""Language sampling probabilities, shared by tokenizer training (data/tokenizer.py) and the
pretraining sampler (train/batches.py)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def language_probs(counts: Mapping[str, int], alpha: float) -> dict[str, float]:
    """p(lang) ∝ n_lang^alpha (Lample & Conneau 2019, section 3.1): alpha=1 samples proportionally to
    the data, alpha=0 uniformly; alpha<1 up-samples low-resource languages (XLM uses 0.5 / 0.7).

    A language with n = 0 gets p = 0 whatever alpha (0^0 would otherwise give it a uniform share)."""
    if not counts:
        raise ValueError("language_probs: no languages")
    if alpha < 0:
        raise ValueError(f"language_probs: alpha must be >= 0, got {alpha}")
    names = list(counts)
    n = np.array([counts[k] for k in names], dtype=np.float64)
    if (n < 0).any():
        raise ValueError(f"language_probs: negative count in {dict(counts)}")
    if not (n > 0).any():
        raise ValueError(f"language_probs: every count is zero: {dict(counts)}")
    # Normalise first (as XLM does) so that n^alpha never overflows on big corpora.
    q = np.where(n > 0, (n / n.sum()) ** alpha, 0.0)
    q /= q.sum()
    return {k: float(p) for k, p in zip(names, q)}
