"""Simulated datasets: shapes, seeds, and the documented group difference."""

import time

import numpy as np
import pytest

from tf_autospec import data


def _between_domain_correlation(x, labels, group, domains=(0, 1)):
    """Mean correlation between components of two domains (53 components, 7 domains)."""
    domain = np.arange(53) * 7 // 53
    values = []
    for subject in np.flatnonzero(labels == group):
        c = np.corrcoef(x[subject].T)
        values.append(c[np.ix_(domain == domains[0], domain == domains[1])].mean())
    return np.mean(values)


def _gap(data_, labels, domains=(0, 1)):
    return (_between_domain_correlation(data_.x, labels, 1, domains)
            - _between_domain_correlation(data_.x, labels, 0, domains))


def test_simulated_fmri_is_seeded_fast_and_carries_its_effects():
    start = time.perf_counter()
    effect = data.simulated_fmri(n_subjects=60, effect_size=0.4, seed=3)
    assert time.perf_counter() - start < 10
    assert effect.x.shape == (60, 150, 53) and effect.x.dtype == np.float32
    # 60/40 by default; the condition (the target) is balanced within each group.
    assert effect.group_names == ("HC", "SZ") and np.bincount(effect.labels).tolist() == [36, 24]
    for group in (0, 1):
        assert np.bincount(effect.y[effect.labels == group]).tolist() == [np.sum(effect.labels == group) // 2] * 2
    np.testing.assert_allclose(effect.x.mean(axis=1), 0, atol=1e-5)
    again = data.simulated_fmri(n_subjects=60, effect_size=0.4, seed=3)
    np.testing.assert_array_equal(again.x, effect.x)
    null = data.simulated_fmri(n_subjects=60, effect_size=0.0, seed=3)
    assert _gap(effect, effect.labels) > 0.15 and abs(_gap(null, null.labels)) < 0.05
    # The condition changes the third and fourth domains, and not the first two.
    assert _gap(effect, effect.y, (2, 3)) > 0.15 and abs(_gap(null, null.y)) < 0.05
    as_group = data.simulated_fmri(n_subjects=60, effect_size=0.4, group_fraction=0.5, target="group", seed=3)
    np.testing.assert_array_equal(as_group.y, as_group.labels)
    assert np.bincount(as_group.labels).tolist() == [30, 30]


def test_simulated_fmri_one_edge_effect():
    one = data.simulated_fmri(n_subjects=80, effect_size=0.3, effect_pattern="one_edge", seed=4)
    edge = np.array([np.corrcoef(subject.T)[0, -1] for subject in one.x])
    difference = edge[one.labels == 1].mean() - edge[one.labels == 0].mean()
    assert difference > 0.1
    assert abs(_gap(one, one.labels)) < 0.05  # the domains are untouched


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
