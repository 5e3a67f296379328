"""The decomposition routes of tf_autospec.spectra against float64 NumPy SVD."""

import numpy as np
import pytest
import tensorflow as tf

from reference import assert_spectrum_matches, singular_values
from tf_autospec import spectra
from tf_autospec.tracking import spectrum_widths

LABELS = np.array([0, 2, 0, 0, -1, 2, 0, 1, 0, -1, 0, 0], dtype=np.int32)
GROUPS = 4  # group 3 is absent


def _factors(rows_per_sample, fan_in, fan_out, rank=None, seed=0):
    rng = np.random.default_rng(seed)
    n = len(LABELS)
    a = rng.normal(size=(n, rows_per_sample, fan_in))
    if rank is not None:  # rows of A confined to a rank-`rank` subspace
        a = a[..., :rank] @ rng.normal(size=(rank, fan_in))
    delta = rng.normal(size=(n, rows_per_sample, fan_out)) * np.exp(-np.arange(fan_out) / 2)
    return a.astype("float32"), delta.astype("float32")


def _run(a, delta, static_shapes, kinds=spectra.KINDS):
    grouping = spectra.SampleGrouping(tf.constant(LABELS), GROUPS, static_shapes)
    grouped_a = tf.reshape(grouping.apply(tf.constant(a), 0), [GROUPS, -1, a.shape[-1]])
    grouped_d = tf.reshape(grouping.apply(tf.constant(delta), 0), [GROUPS, -1, delta.shape[-1]])
    widths = spectrum_widths(a.shape[-1], delta.shape[-1], kinds, None)
    out, finite = spectra.group_spectra(
        spectra.DenseRows(grouped_a), spectra.DenseRows(grouped_d), a.shape[1],
        grouping.counts, kinds, widths,
    )
    assert finite.numpy().all()
    return {k: v.numpy() for k, v in out.items()}, grouping.counts.numpy()


def _check(a, delta, out, counts):
    fan_in, fan_out = a.shape[2], delta.shape[2]
    np.testing.assert_array_equal(counts, [np.sum(LABELS == g) for g in range(GROUPS)])
    for g in range(GROUPS):
        members = LABELS == g
        if not members.any():
            for values in out.values():
                assert np.all(np.isnan(values[g]))
            continue
        a_g = a[members].reshape(-1, fan_in).astype(np.float64)
        d_g = delta[members].reshape(-1, fan_out).astype(np.float64)
        rows = a_g.shape[0]
        assert_spectrum_matches(out["grad"][g], singular_values(a_g.T @ d_g), min(rows, fan_in, fan_out), f"grad {g}")
        assert_spectrum_matches(out["act"][g], singular_values(a_g), min(rows, fan_in), f"act {g}")
        assert_spectrum_matches(out["delta"][g], singular_values(d_g), min(rows, fan_out), f"delta {g}")


@pytest.mark.parametrize("static_shapes", [False, True], ids=["gather", "mask"])
@pytest.mark.parametrize(
    "rows_per_sample,fan_in,fan_out",
    [
        (1, 40, 30),  # rows route: a group's rows < both fans
        (1, 40, 3),  # fan route through the small output side
        (50, 9, 16),  # conv-like: rows far exceed both fans
        (3, 5, 40),  # rows between the fans
    ],
)
def test_routes_match_numpy(static_shapes, rows_per_sample, fan_in, fan_out):
    a, delta = _factors(rows_per_sample, fan_in, fan_out)
    out, counts = _run(a, delta, static_shapes)
    _check(a, delta, out, counts)


@pytest.mark.parametrize("rows_per_sample,fan_in,fan_out", [(1, 40, 30), (50, 9, 16)])
def test_rank_deficient_factors_keep_small_values_exact(rows_per_sample, fan_in, fan_out):
    # A spans only 2 directions: every further singular value is exactly zero and
    # must come out as ~0, not as sqrt(rounding noise) of a Gram matrix.
    a, delta = _factors(rows_per_sample, fan_in, fan_out, rank=2)
    out, counts = _run(a, delta, static_shapes=False)
    _check(a, delta, out, counts)


def test_subset_of_kinds():
    a, delta = _factors(1, 40, 30)
    out, _ = _run(a, delta, static_shapes=False, kinds=("grad",))
    assert set(out) == {"grad"}


def test_dynamic_row_count_picks_route_at_run_time():
    a, delta = _factors(1, 40, 30)

    @tf.function(input_signature=[tf.TensorSpec([None, 1, 40]), tf.TensorSpec([None, 1, 30]), tf.TensorSpec([None], tf.int32)])
    def run(a, delta, labels):
        grouping = spectra.SampleGrouping(labels, GROUPS, static_shapes=False)
        grouped_a = tf.reshape(grouping.apply(a, 0), [GROUPS, -1, 40])
        grouped_d = tf.reshape(grouping.apply(delta, 0), [GROUPS, -1, 30])
        widths = spectrum_widths(40, 30, spectra.KINDS, None)
        return spectra.group_spectra(
            spectra.DenseRows(grouped_a), spectra.DenseRows(grouped_d), 1, grouping.counts, spectra.KINDS, widths
        )[0], grouping.counts

    for copies in (1, 4):  # 7 rows (rows route) and 28 rows (fan route) in group 0
        big_a, big_d = np.concatenate([a] * copies), np.concatenate([delta] * copies)
        labels = np.concatenate([LABELS] * copies)
        out, counts = run(big_a, big_d, labels)
        for g in range(3):
            members = labels == g
            a_g = big_a[members, 0].astype(np.float64)
            d_g = big_d[members, 0].astype(np.float64)
            assert_spectrum_matches(out["grad"].numpy()[g], singular_values(a_g.T @ d_g), min(len(a_g), 30), "grad")
            assert_spectrum_matches(out["act"].numpy()[g], singular_values(a_g), min(len(a_g), 40), "act")


def test_one_hot_rows_match_explicit_one_hot():
    rng = np.random.default_rng(3)
    depth, fan_out = 7, 5
    ids = rng.integers(0, depth, size=(len(LABELS), 4)).astype(np.int32)
    delta = rng.normal(size=(len(LABELS), 4, fan_out)).astype(np.float32)
    for static_shapes in (False, True):
        grouping = spectra.SampleGrouping(tf.constant(LABELS), GROUPS, static_shapes)
        grouped_ids = tf.reshape(grouping.apply(tf.constant(ids), -1), [GROUPS, -1])
        grouped_d = tf.reshape(grouping.apply(tf.constant(delta), 0), [GROUPS, -1, fan_out])
        widths = spectrum_widths(depth, fan_out, spectra.KINDS, None)
        out, _ = spectra.group_spectra(
            spectra.OneHotRows(grouped_ids, depth), spectra.DenseRows(grouped_d), 4,
            grouping.counts, spectra.KINDS, widths,
        )
        _check(np.eye(depth, dtype=np.float32)[ids], delta, {k: v.numpy() for k, v in out.items()}, grouping.counts.numpy())


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_batch_gram_rows_zero_exactly_the_rows_holding_nan_or_inf(precision):
    # float64: the rows are found on the Gram matrix's diagonal, which a sum of float32
    # squares cannot overflow (the 3e38 row stays); float32: on the rows themselves.
    rows = [[1, 2, 3], [np.inf, -np.inf, 0], [np.nan, np.inf, 1], [0, -np.inf, 0], [np.nan, 0, 0], [4, -5, 6]]
    if precision == "float64":
        rows.append([3e38, -3e38, 3e38])
    rows = np.array(rows, np.float32)
    batch = spectra.BatchGramRows.of(spectra.DenseRows(rows[None]), tf.constant([[0, 5], [1, 2]]),
                                     spectra.PRECISIONS[precision])
    finite = np.isfinite(rows).all(axis=1)
    kept = np.where(finite[:, None], rows, 0).astype(np.float64)
    assert batch.finite.numpy().tolist() == finite.tolist() + [True]
    gram = batch.gram.numpy()
    np.testing.assert_allclose(gram[:-1, :-1], kept @ kept.T, rtol=1e-6 if precision == "float32" else 1e-15)
    assert not gram[-1].any() and not gram[:, -1].any()  # the empty slot's zero row and column
    assert batch.finite_groups().numpy().tolist() == [True, False]
