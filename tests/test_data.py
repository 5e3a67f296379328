"""Simulated datasets: shapes, seeds, and the documented group difference."""

import time

import numpy as np
import pytest

from tf_autospec import data


def _between_domain_correlation(x, labels, group):
    """Mean correlation between components of domain 0 and domain 1 (53 components, 7 domains)."""
    domain = np.arange(53) * 7 // 53
    values = []
    for subject in np.flatnonzero(labels == group):
        c = np.corrcoef(x[subject].T)
        values.append(c[np.ix_(domain == 0, domain == 1)].mean())
    return np.mean(values)


def test_simulated_fmri_is_seeded_fast_and_carries_its_effect():
    start = time.perf_counter()
    effect = data.simulated_fmri(n_subjects=60, effect_size=0.4, seed=3)
    assert time.perf_counter() - start < 10
    assert effect.x.shape == (60, 150, 53) and effect.x.dtype == np.float32
    assert effect.group_names == ("HC", "SZ") and sorted(np.bincount(effect.labels)) == [30, 30]
    np.testing.assert_array_equal(effect.y, effect.labels)
    np.testing.assert_allclose(effect.x.mean(axis=1), 0, atol=1e-5)
    again = data.simulated_fmri(n_subjects=60, effect_size=0.4, seed=3)
    np.testing.assert_array_equal(again.x, effect.x)
    gap = _between_domain_correlation(effect.x, effect.labels, 1) - _between_domain_correlation(effect.x, effect.labels, 0)
    null = data.simulated_fmri(n_subjects=60, effect_size=0.0, seed=3)
    null_gap = _between_domain_correlation(null.x, null.labels, 1) - _between_domain_correlation(null.x, null.labels, 0)
    assert gap > 0.15 and abs(null_gap) < 0.05


def test_simulated_fmri_refuses_an_impossible_effect():
    with pytest.raises(ValueError, match="positive definite"):
        data.simulated_fmri(n_subjects=4, effect_size=0.95, within=0.9)


@pytest.mark.parametrize("differ", ["frequency", "phase", "amplitude"])
def test_sinusoids_differ_as_documented(differ):
    seqs = data.sinusoids(n_sequences=200, differ=differ, noise=0.0, seed=1)
    assert seqs.x.shape == (200, 49, 1) and seqs.y.shape == (200, 49, 1)
    np.testing.assert_array_equal(seqs.x[:, 1:], seqs.y[:, :-1])
    a, b = seqs.x[seqs.labels == 0, :, 0], seqs.x[seqs.labels == 1, :, 0]
    if differ == "amplitude":
        assert np.abs(b).max() > 1.9 and np.abs(a).max() < 1.01
    if differ == "frequency":
        crossings = lambda s: np.mean(np.sum(np.diff(np.sign(s), axis=1) != 0, axis=1))  # noqa: E731
        assert crossings(b) > 1.6 * crossings(a)
    if differ == "phase":
        np.testing.assert_allclose(a[:, 0], 0, atol=1e-6)
        np.testing.assert_allclose(b[:, 0], 1, atol=1e-6)
    classification = data.sinusoids(n_sequences=10, task="classification")
    np.testing.assert_array_equal(classification.y, classification.labels)


def test_random_groups_is_a_seeded_null_control():
    labels = data.random_groups(1000, ("A", "B", "C"), seed=4)
    np.testing.assert_array_equal(labels, data.random_groups(1000, ("A", "B", "C"), seed=4))
    assert set(labels) == {0, 1, 2} and np.all(np.abs(np.bincount(labels) - 333) < 60)
