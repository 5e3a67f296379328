"""Randomized top-k spectra: the documented bound, and the option end to end."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_autospec as ts
from tf_autospec import spectra


def _matrices_with_spectra(rng, singular_values, shape):
    """Matrices ``U diag(σ) Vᵀ`` with the given spectra (one per row of ``singular_values``)."""
    m, n = shape
    out = []
    for sigma in singular_values:
        u = np.linalg.qr(rng.normal(size=(m, len(sigma))))[0]
        v = np.linalg.qr(rng.normal(size=(n, len(sigma))))[0]
        out.append((u * sigma) @ v.T)
    return np.stack(out).astype("float32")


def test_randomized_values_are_lower_bounds_within_the_a_posteriori_bound():
    rng = np.random.default_rng(0)
    rank = 120
    spectra_true = np.stack([
        0.7 ** np.arange(rank),  # fast decay
        1.0 / (1.0 + np.arange(rank)),  # slow decay
        np.ones(rank),  # flat: no decay at all
    ])
    matrices = _matrices_with_spectra(rng, spectra_true, (300, 200))
    width = 5
    values, residual = (t.numpy() for t in spectra.randomized_top_singular_values(tf.constant(matrices), width))
    truth = np.linalg.svd(matrices.astype(np.float64), compute_uv=False)[:, :width]
    rounding = 1e-5 * truth[:, :1]  # float32 products
    assert (values <= truth + rounding).all()
    assert (truth - values <= residual[:, None] + rounding).all()
    # The bound is informative when the spectrum decays past width + oversampling (15):
    # it cannot beat the best rank-15 residual, √(Σ_{j>15} σ_j²).
    best = np.sqrt((spectra_true[0, 15:] ** 2).sum())
    assert best <= residual[0] <= 1.5 * best
    np.testing.assert_allclose(values[0], truth[0], rtol=1e-4)


def test_randomized_gives_nan_for_a_group_whose_gradient_overflowed():
    rng = np.random.default_rng(2)
    matrices = rng.normal(size=(2, 40, 30)).astype("float32")
    matrices[1, 3, 4] = np.inf  # float32 overflow of huge factors
    values, residual = (t.numpy() for t in spectra.randomized_top_singular_values(tf.constant(matrices), 3))
    assert np.isnan(values[1]).all() and np.isnan(residual[1])
    truth = np.linalg.svd(matrices[0].astype(np.float64), compute_uv=False)[:3]
    assert np.isfinite(values[0]).all() and (values[0] <= truth * (1 + 1e-5)).all()
    assert (truth - values[0] <= residual[0] + 1e-5 * truth[0]).all()


def _low_rank_data(rng, samples, features, rank):
    return (rng.normal(size=(samples, rank)) @ rng.normal(size=(rank, features))).astype("float32")


def test_randomized_option_matches_exact_spectra_when_the_rank_fits_the_sketch():
    # Inputs of rank 6 and a linear network with 3 outputs: every factor and gradient of
    # the first kernel has rank <= 6 < top_k + oversampling, so the sketch is exact.
    rng = np.random.default_rng(1)
    x = _low_rank_data(rng, 256, 64, rank=6)
    y = rng.integers(0, 3, 256)
    labels = rng.choice([0, 1, -1], size=256, p=[0.55, 0.4, 0.05])
    results = {}
    for randomized in (False, True):
        keras.utils.set_random_seed(0)
        model = ts.AutoSpecModel(
            inputs=(inputs := keras.Input((64,))),
            outputs=keras.layers.Dense(3, name="out")(keras.layers.Dense(40, name="wide")(inputs)),
            groups=["a", "b", "absent"], top_k=4, randomized=randomized,
        )
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, groups=labels, batch_size=256, epochs=1, verbose=0)  # one step: rows 140 > fans
        results[randomized] = model.last_spectra
    kernel = "wide/kernel"
    for kind in spectra.KINDS:
        exact = results[False].spectra[(kernel, kind)]
        approximate = results[True].spectra[(kernel, kind)]
        np.testing.assert_array_equal(np.isnan(approximate), np.isnan(exact))
        assert np.isnan(exact[2]).all()  # the absent group
        scale = exact[:2, :1]
        assert (np.abs(approximate[:2] - exact[:2]) <= 1e-4 * scale).all(), kind


def test_randomized_needs_top_k():
    with pytest.raises(ValueError, match="top_k"):
        ts.AutoSpecModel(inputs=(i := keras.Input((3,))), outputs=keras.layers.Dense(2)(i), groups=["a"],
                         randomized=True)
