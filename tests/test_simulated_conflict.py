"""`simulated_fmri(conflict=...)` plants what it documents: on the connections between the
fifth and sixth domains the condition acts with opposite signs in the two groups, so the
groups' gradients of a model that predicts the condition point opposite ways there.
Checked on the data alone (NumPy), independently of the gradient geometry AutoSpec records."""

import numpy as np
import pytest

from tf_autospec import data

N_COMPONENTS, N_DOMAINS = 53, 7


def _edges(first, second):
    """bool over the FNC features (upper triangle): the edges between two domains."""
    domain = np.arange(N_COMPONENTS) * N_DOMAINS // N_COMPONENTS
    rows, columns = np.triu_indices(N_COMPONENTS, k=1)
    a, b = domain[rows], domain[columns]
    return ((a == first) & (b == second)) | ((a == second) & (b == first))


CONFLICT_EDGES, CONDITION_EDGES = _edges(4, 5), _edges(2, 3)


def _cosine(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def _group_gradients(dataset):
    """Per group, the gradient of the summed logistic loss of a linear model of the
    condition on the FNC features, at w = 0: Σ_n x_n (½ − y_n) over the group's subjects."""
    features = data.fnc_features(dataset.x).astype(np.float64)
    return [features[dataset.labels == g].T @ (0.5 - dataset.y[dataset.labels == g]) for g in (0, 1)]


def _condition_effects(dataset):
    """Per group, the mean FNC feature of the second condition minus the first's."""
    features = data.fnc_features(dataset.x).astype(np.float64)
    return [features[(dataset.labels == g) & (dataset.y == 1)].mean(axis=0)
            - features[(dataset.labels == g) & (dataset.y == 0)].mean(axis=0) for g in (0, 1)]


@pytest.fixture(scope="module")
def pair():
    """The same seed with and without the conflict: the same random draws, only the plant differs."""
    options = dict(n_subjects=80, n_timepoints=100, seed=2)
    return data.simulated_fmri(**options), data.simulated_fmri(conflict=0.3, **options)


def test_no_conflict_is_the_default_data(pair):
    null, conflicted = pair
    default = data.simulated_fmri(n_subjects=80, n_timepoints=100, seed=2)
    assert default.x.tobytes() == null.x.tobytes()
    assert null.info["conflict"] == 0.0 and conflicted.info["conflict"] == 0.3
    # The plant changes the time courses and nothing else: same groups, same conditions.
    np.testing.assert_array_equal(conflicted.labels, null.labels)
    np.testing.assert_array_equal(conflicted.y, null.y)
    assert not np.array_equal(conflicted.x, null.x)


def test_condition_acts_with_opposite_signs_on_the_conflict_edges(pair):
    null, conflicted = pair
    first, second = _condition_effects(conflicted)
    assert first[CONFLICT_EDGES].mean() > 0.15 and second[CONFLICT_EDGES].mean() < -0.15
    # The shared condition effect is untouched: the same sign in both groups.
    assert first[CONDITION_EDGES].mean() > 0.15 and second[CONDITION_EDGES].mean() > 0.15
    for effect in _condition_effects(null):
        assert abs(effect[CONFLICT_EDGES].mean()) < 0.08


def test_group_gradients_oppose_on_the_conflict_edges_only_when_planted(pair):
    null, conflicted = pair
    first, second = _group_gradients(conflicted)
    assert _cosine(first[CONFLICT_EDGES], second[CONFLICT_EDGES]) < -0.8
    assert _cosine(first[CONDITION_EDGES], second[CONDITION_EDGES]) > 0.8
    null_first, null_second = _group_gradients(null)
    assert _cosine(null_first[CONFLICT_EDGES], null_second[CONFLICT_EDGES]) > -0.5
    # Over every feature (a first layer reads them all) the groups agree less.
    assert _cosine(first, second) < _cosine(null_first, null_second) - 0.25


@pytest.mark.parametrize("conflict, message", [
    (-0.2, "conflict must be a number from 0"),
    (1.0, "conflict must be a number from 0"),
    ("0.3", "conflict must be a number from 0"),
    (True, "conflict must be a number from 0"),
    (float("nan"), "conflict must be a number from 0"),
])
def test_refuses_a_conflict_that_is_not_a_strength(conflict, message):
    with pytest.raises(ValueError, match=message):
        data.simulated_fmri(n_subjects=4, conflict=conflict)


def test_refuses_a_conflict_without_its_domains_or_beyond_a_valid_connectivity():
    with pytest.raises(ValueError, match=r"n_domains >= 6.*or conflict=0"):
        data.simulated_fmri(n_subjects=4, n_domains=5, conflict=0.3)
    with pytest.raises(ValueError, match=r"conflict=0.6 .*not positive definite; use smaller effects"):
        data.simulated_fmri(n_subjects=4, conflict=0.6)
    with pytest.raises(ValueError, match=r"with target='group' use conflict=0, or target='condition'"):
        data.simulated_fmri(n_subjects=4, target="group", conflict=0.3)
    # Without a conflict, few domains stay allowed, as before.
    assert data.simulated_fmri(n_subjects=4, n_domains=5).info["conflict"] == 0.0
