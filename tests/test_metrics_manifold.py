"""Improved precision / recall (todsynth.metrics.manifold): k-NN radii, coverage and its edge cases."""

import math

import numpy as np
import pytest

from todsynth.metrics.manifold import knn_radii, precision_recall


def test_knn_radii_by_hand():
    pts = np.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_allclose(knn_radii(pts, k=1), [1.0, 1.0, 2.0, 4.0])
    np.testing.assert_allclose(knn_radii(pts, k=2), [3.0, 2.0, 3.0, 6.0])


def test_same_set_scores_one_and_far_set_zero():
    x = np.random.default_rng(0).normal(size=(50, 8))
    assert precision_recall(x, x) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(x, x + 100.0) == {"precision": 0.0, "recall": 0.0}


def test_collapsed_generator_keeps_precision_and_loses_recall():
    """Real: two clusters; fake: only the first. Precision stays high, recall is about the drawn cluster's share."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(100, 4)), rng.normal(size=(100, 4)) + 20.0
    real = np.concatenate([a, b])
    fake = rng.normal(size=(100, 4))
    pr = precision_recall(real, fake)
    assert pr["precision"] > 0.9
    assert 0.35 < pr["recall"] <= 0.5  # none of cluster b, most of cluster a
    # a generator that draws both clusters recovers the recall
    both = np.concatenate([fake[:50], rng.normal(size=(50, 4)) + 20.0])
    assert precision_recall(real, both)["recall"] > 0.8


def test_two_samples_of_one_distribution_score_below_one():
    """The ceiling is not 1: a finite manifold misses part of another sample of the same law."""
    rng = np.random.default_rng(2)
    pr = precision_recall(rng.normal(size=(200, 16)), rng.normal(size=(200, 16)))
    assert 0.5 < pr["precision"] < 1.0 and 0.5 < pr["recall"] < 1.0


def test_a_large_common_offset_does_not_change_the_scores():
    """Distances are translation-invariant; the |a|^2 + |b|^2 - 2ab expansion was not (offset 1e7 x spread: 0.67
    against 0.61)."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(200, 16)) * 1e-2, rng.normal(size=(200, 16)) * 1e-2 + 3e-3

    def reference(r, f, k=3):
        radii_r, radii_f = np.sort(cdist(r, r), axis=1)[:, k], np.sort(cdist(f, f), axis=1)[:, k]
        return {"precision": float((cdist(f, r) <= radii_r[None]).any(1).mean()),
                "recall": float((cdist(r, f) <= radii_f[None]).any(1).mean())}

    expected = reference(real, fake)
    assert 0 < expected["precision"] < 1 and 0 < expected["recall"] < 1
    for offset in (0.0, 1e2, 1e5):
        assert precision_recall(real + offset, fake + offset) == expected, offset


def test_too_few_rows_give_nan_and_bad_shapes_raise():
    x = np.zeros((3, 2))
    pr = precision_recall(np.ones((10, 2)), x, k=3)
    assert math.isnan(pr["precision"]) and math.isnan(pr["recall"])
    with pytest.raises(ValueError, match="equal D"):
        precision_recall(np.ones((10, 2)), np.ones((10, 3)))
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(np.ones((10, 2)), np.ones((10, 2)), k=0)
    fake = np.random.default_rng(0).normal(size=(21, 2))
    fake[4] = np.nan  # was counted as outside every ball: precision 20/21, no error
    with pytest.raises(ValueError, match="NaN or inf"):
        precision_recall(np.random.default_rng(1).normal(size=(20, 2)), fake)
    with pytest.raises(ValueError, match="at least 4"):
        knn_radii(x, k=3)
