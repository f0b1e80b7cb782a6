"""Fine-tuning batches grouped by length (xlmkit.tasks.finetune.training_batches)."""

import numpy as np

from xlmkit.tasks.finetune import training_batches


def test_every_example_once_per_epoch_in_batches_of_similar_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 128, size=1000)
    batches = training_batches(lengths, 32, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    assert sorted(len(b) for b in batches) == [1000 % 32] + [32] * (1000 // 32)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    plain = training_batches(lengths, 32, np.random.default_rng(1), group_by_length=False)
    assert sorted(np.concatenate(plain).tolist()) == list(range(1000))
    padded_plain = sum(len(b) * lengths[b].max() for b in plain)
    assert padded < 0.7 * padded_plain  # grouping removes most of the padding
    # reproducible from the generator, and a different order in the next epoch
    again = training_batches(lengths, 32, np.random.default_rng(1))
    assert all((a == b).all() for a, b in zip(batches, again))
    rng2 = np.random.default_rng(1)
    first, second = training_batches(lengths, 32, rng2), training_batches(lengths, 32, rng2)
    assert not all(len(a) == len(b) and (a == b).all() for a, b in zip(first, second))
