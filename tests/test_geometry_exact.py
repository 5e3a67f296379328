"""Group gradient geometry against the independent reference (tests/reference.py).

Each group's gradient comes from its own tape pass on the group-masked loss, the whole
batch's from the unmasked loss; cosines and top-k left singular subspaces are computed
from them in float64 NumPy. The model is trained one step on one batch with four
declared groups: imbalanced groups, unassigned (-1) samples, a group of one sample and
a group absent from the batch.
"""

import keras
import numpy as np
import pytest

import tf_autospec as ts
from reference import group_gradients
from test_layers_exact import N, data

GROUPS = ("a", "b", "c", "absent")
LABELS = np.array([0, 1, 0, 0, -1, 2, 0, 1, 0, -1, 0, 1])  # N samples, as `data` makes
LOSS = keras.losses.MeanSquaredError(reduction=None)
COSINE_TOL = 1e-5
OVERLAP_TOL = 1e-4
GAP = 1e-3  # overlaps are compared where σ_k − σ_{k+1} ≥ GAP · σ_1 for both groups
RANK_ZERO = 1e-5  # a reference σ_k below RANK_ZERO · σ_1: rank below k, recorded NaN


def _cosine(first, second):
    norms = np.linalg.norm(first) * np.linalg.norm(second)
    return np.nan if norms == 0 else float(np.sum(first * second) / norms)


def _subspace(matrix, k):
    """Top-k left singular vectors, singular values, and whether the subspace is
    determined (gap) or of rank below k (None: neither, skipped)."""
    u, sigma, _ = np.linalg.svd(matrix)
    sigma = np.concatenate([sigma, [0.0]])
    if sigma[0] == 0 or sigma[k - 1] < RANK_ZERO * sigma[0]:
        return u[:, :k], False
    if sigma[k - 1] - sigma[k] >= GAP * sigma[0]:
        return u[:, :k], True
    return u[:, :k], None


def references(model, x, y, labels=LABELS, groups=GROUPS):
    """Per trainable kernel path: (group gradients, whole-batch gradient), float64."""
    out = {}
    for variable in model.trainable_variables:
        if len(variable.shape) < 2:
            continue
        grads = group_gradients(model, variable, x, y, labels, len(groups), LOSS)
        whole = group_gradients(model, variable, x, y, np.zeros(len(labels)), 1, LOSS)[0]
        out[model.kernel_path(variable)] = grads, whole
    return out


def check_geometry(model, x, y, labels=LABELS, groups=GROUPS):
    """Trains one step and compares every tracked kernel's geometry with the reference;
    returns the overlaps skipped for a small gap (printed, run pytest with -s)."""
    expected = references(model, x, y, labels, groups)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, y, groups=labels, batch_size=len(labels), epochs=1, shuffle=False, verbose=0)
    spectra = model.last_spectra
    present = [g for g in range(len(groups)) if np.any(labels == g)]
    skipped, compared = [], 0
    assert model.tracked_kernels
    for kernel in model.tracked_kernels:
        grads, whole = expected[kernel.path]
        matrices = [g.reshape(kernel.fan_in, kernel.fan_out) for g in grads]
        k = min(3, kernel.fan_in, kernel.fan_out)
        subspaces = [_subspace(m, k) for m in matrices]
        for g, name in enumerate(groups):
            want = _cosine(grads[g], whole) if g in present else np.nan
            got = spectra.cosine(kernel.path, name)
            _assert_close(got, want, COSINE_TOL, f"{kernel.path} {name}~batch")
        for a, b in spectra.pairs:
            ia, ib = groups.index(a), groups.index(b)
            label = f"{kernel.path} {a}~{b}"
            want = _cosine(grads[ia], grads[ib]) if ia in present and ib in present else np.nan
            _assert_close(spectra.cosine(kernel.path, a, b), want, COSINE_TOL, label)
            np.testing.assert_equal(spectra.cosine(kernel.path, b, a), spectra.cosine(kernel.path, a, b))
            got = spectra.overlap(kernel.path, a, b)
            (u_a, ok_a), (u_b, ok_b) = subspaces[ia], subspaces[ib]
            if ok_a is False or ok_b is False or ia not in present or ib not in present:
                assert np.isnan(got), f"{label}: rank below k={k} or absent, recorded {got}"
            elif ok_a and ok_b:
                _assert_close(got, np.sum((u_a.T @ u_b) ** 2) / k, OVERLAP_TOL, f"{label} overlap")
                compared += 1
            else:
                skipped.append(label)
    if skipped:
        print(f"overlaps not compared, gap below {GAP}·σ_1: {skipped}")
    assert compared or len(present) < 2, "no overlap was compared"
    return skipped


def _assert_close(got, want, tolerance, label):
    if np.isnan(want):
        assert np.isnan(got), f"{label}: expected NaN, recorded {got}"
    else:
        assert abs(got - want) <= tolerance, f"{label}: recorded {got}, reference {want}"


def _model(inputs, outputs, **options):
    return ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=GROUPS, **options)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_dense_rows_and_fan_routes(precision):
    # 24 wide: a group's rows (≤ 6) < fans -> rows route; 4 outputs -> fan route.
    inputs = keras.Input((32,))
    outputs = keras.layers.Dense(4)(keras.layers.Dense(24, activation="tanh")(inputs))
    x, y = data((32,), 4)
    check_geometry(_model(inputs, outputs, precision=precision), x, y)


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("with_unassigned", [True, False])
def test_two_groups_read_the_batch_gram_matrix(precision, with_unassigned, monkeypatch):
    # Two groups and their pair: the rows route reads every Gram matrix from one of the
    # whole batch (spectra.BatchGramRows), the samples in no group included.
    from tf_autospec import spectra

    built = []
    of = spectra.BatchGramRows.of
    monkeypatch.setattr(spectra.BatchGramRows, "of", classmethod(lambda cls, *args: built.append(args) or of(*args)))
    inputs = keras.Input((32,))
    outputs = keras.layers.Dense(4)(keras.layers.Dense(24, activation="tanh")(inputs))
    x, y = data((32,), 4)
    labels = np.array([0, 1, 0, 0, -1, 1, 0, 1, 0, -1, 0, 1])
    if not with_unassigned:
        labels = np.abs(labels)
    check_geometry(ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=("a", "b"), precision=precision),
                   x, y, labels, groups=("a", "b"))
    assert len(built) == 2  # the hidden kernel's two factors; the output kernel is on the fan route


def test_conv2d_fan_route():
    inputs = keras.Input((6, 6, 2))
    hidden = keras.layers.Conv2D(5, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(hidden))
    x, y = data((6, 6, 2), 3)
    check_geometry(_model(inputs, outputs), x, y)


@pytest.mark.parametrize("cell", [keras.layers.SimpleRNN, keras.layers.GRU, keras.layers.LSTM])
def test_recurrent_kernels(cell):
    inputs = keras.Input((4, 3))
    outputs = keras.layers.Dense(2)(cell(6)(inputs))
    x, y = data((4, 3), 2)
    check_geometry(_model(inputs, outputs), x, y)


def test_embedding_one_hot_rows():
    inputs = keras.Input((5,), dtype="int32")
    hidden = keras.layers.Flatten()(keras.layers.Embedding(40, 6)(inputs))
    outputs = keras.layers.Dense(3)(hidden)
    x, y = data((5,), 3, integer_inputs=40)
    check_geometry(_model(inputs, outputs), x, y)


def test_einsum_dense_and_attention_projections():
    inputs = keras.Input((5, 8))
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(inputs, inputs)
    hidden = keras.layers.EinsumDense("btd,de->bte", output_shape=(5, 6), activation="tanh")(attended)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(hidden))
    x, y = data((5, 8), 2)
    check_geometry(_model(inputs, outputs), x, y)


def test_randomized_route_gives_the_exact_cosines():
    # The randomized route approximates singular values; the cosines come from the
    # formed gradients and stay exact.
    inputs = keras.Input((6, 6, 2))
    hidden = keras.layers.Conv2D(24, 3)(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(hidden))
    x, y = data((6, 6, 2), 3)
    model = _model(inputs, outputs, top_k=2, randomized=True, geometry="cosine")
    expected = references(model, x, y)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, y, groups=LABELS, batch_size=N, epochs=1, shuffle=False, verbose=0)
    path = model.kernel_path(model.layers[1].kernel)
    grads, _ = expected[path]
    _assert_close(model.last_spectra.cosine(path, "a", "b"), _cosine(grads[0], grads[1]), COSINE_TOL, path)
    assert set(name for _, name in model.last_spectra.geometry) == {"cosine", "batch_cosine"}


def test_only_unassigned_besides_one_group_and_no_unassigned():
    inputs = keras.Input((10,))
    outputs = keras.layers.Dense(3)(keras.layers.Dense(12, activation="tanh")(inputs))
    x, y = data((10,), 3)
    labels = np.where(np.arange(N) < 8, 0, -1)
    check_geometry(_model(inputs, outputs), x, y, labels)
    labels = np.arange(N) % 3
    check_geometry(_model(inputs, outputs), x, y, labels)


def test_geometry_off_records_none_and_spectra_unchanged():
    x, y = data((10,), 3)
    recorded = {}
    for geometry in (True, False):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((10,))
        outputs = keras.layers.Dense(3)(keras.layers.Dense(12, name="hidden")(inputs))
        model = _model(inputs, outputs, geometry=geometry)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        model.fit(x, y, groups=LABELS, batch_size=N, epochs=1, shuffle=False, verbose=0)
        recorded[geometry] = model.last_spectra
    assert recorded[False].geometry == {}
    with pytest.raises(KeyError, match="geometry=True"):
        recorded[False].cosine("hidden/kernel", "a", "b")
    with pytest.raises(ValueError, match="'a' and 'a' are the same group"):
        recorded[True].cosine("hidden/kernel", "a", "a")
    with pytest.raises(KeyError, match="Unknown group 'z'"):
        recorded[True].overlap("hidden/kernel", "a", "z")
    for key, values in recorded[False].spectra.items():
        np.testing.assert_array_equal(values, recorded[True].spectra[key])


def test_options_are_checked():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2)(inputs)
    with pytest.raises(ValueError, match="geometry takes True, False or a subset"):
        _model(inputs, outputs, geometry=["angle"])
    with pytest.raises(ValueError, match="geometry takes True, False or a subset.*received 1"):
        _model(inputs, outputs, geometry=1)
    with pytest.raises(ValueError, match="overlap_k must be a positive whole number"):
        _model(inputs, outputs, overlap_k=0)
    model = _model(inputs, outputs, geometry=["overlap"], overlap_k=2)
    assert model.autospec_geometry == ("overlap",) and model.autospec_overlap_k == 2


def test_each_measure_alone_gives_the_values_of_both():
    x, y = data((10,), 3)
    recorded = {}
    for geometry in ("cosine", "overlap", True):
        keras.utils.set_random_seed(2)
        inputs = keras.Input((10,))
        outputs = keras.layers.Dense(3)(keras.layers.Dense(12, activation="tanh", name="hidden")(inputs))
        model = _model(inputs, outputs, geometry=geometry)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        model.fit(x, y, groups=LABELS, batch_size=N, epochs=1, shuffle=False, verbose=0)
        recorded[geometry] = model.last_spectra.geometry
    for geometry in ("cosine", "overlap"):
        assert {name for _, name in recorded[geometry]} == set(ts.geometry.RECORDED[geometry])
        for key, values in recorded[geometry].items():
            np.testing.assert_allclose(values, recorded[True][key], atol=1e-6, err_msg=str(key))


@pytest.mark.parametrize("hidden", [12, 40])  # rows route; fan route (rows > fans)
def test_one_group_records_its_batch_cosine_and_no_pair(hidden):
    inputs = keras.Input((10,))
    outputs = keras.layers.Dense(3)(keras.layers.Dense(hidden, activation="tanh")(inputs))
    model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=["HC"], null_partitions=2)
    x, y = data((10,), 3)
    labels = np.where(np.arange(N) % 4 == 0, -1, 0)
    expected = references(model, x, y, labels)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, y, groups=labels, batch_size=N, epochs=1, shuffle=False, verbose=0)
    spectra = model.last_spectra
    assert spectra.pairs == []
    for kernel in model.tracked_kernels:
        grads, whole = expected[kernel.path]
        _assert_close(spectra.cosine(kernel.path, "HC"), _cosine(grads[0], whole), COSINE_TOL, kernel.path)
        assert spectra.geometry[(kernel.path, "cosine")].shape == (0,)
    with pytest.raises(KeyError, match="Unknown kernel"):
        spectra.cosine("nope/kernel", "HC")


@pytest.mark.parametrize("hidden", [24, 4])  # rows route; fan route
def test_null_partitions_geometry_matches_each_relabeling(hidden):
    # Each null partition is a relabeling of the same samples: its cosines and overlaps are
    # those of its own groups' gradients, as for the real groups.
    inputs = keras.Input((32,))
    outputs = keras.layers.Dense(3)(keras.layers.Dense(hidden, activation="tanh")(inputs))
    model = _model(inputs, outputs, null_partitions=3)
    x, y = data((32,), 3)
    labels = ts.null_partitions(LABELS, 3, seed=1)
    expected = [references(model, x, y, labels[:, p]) for p in range(4)]
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, y, groups=labels, batch_size=N, epochs=1, shuffle=False, verbose=0)
    spectra, compared = model.last_spectra, 0
    for kernel in model.tracked_kernels:
        k = min(3, kernel.fan_in, kernel.fan_out)
        for p in range(1, 4):
            grads, whole = expected[p][kernel.path]
            present = [g for g in range(len(GROUPS)) if np.any(labels[:, p] == g)]
            for g, name in enumerate(GROUPS):
                want = _cosine(grads[g], whole) if g in present else np.nan
                _assert_close(spectra.null_cosine(kernel.path, name)[p - 1], want, COSINE_TOL, f"{kernel.path} {p} {name}")
            for a, b in spectra.pairs:
                ia, ib = GROUPS.index(a), GROUPS.index(b)
                want = _cosine(grads[ia], grads[ib]) if ia in present and ib in present else np.nan
                label = f"{kernel.path} partition {p} {a}~{b}"
                _assert_close(spectra.null_cosine(kernel.path, a, b)[p - 1], want, COSINE_TOL, label)
                matrices = [grads[i].reshape(kernel.fan_in, kernel.fan_out) for i in (ia, ib)]
                (u_a, ok_a), (u_b, ok_b) = (_subspace(m, k) for m in matrices)
                if ok_a and ok_b and ia in present and ib in present:
                    _assert_close(spectra.null_overlap(kernel.path, a, b)[p - 1], np.sum((u_a.T @ u_b) ** 2) / k,
                                  OVERLAP_TOL, f"{label} overlap")
                    compared += 1
    assert compared


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nan_or_inf_sample_makes_its_groups_nan_and_leaves_the_other_pair_exact(bad, precision):
    # With 3 groups and 4 partitions the pairs read one row-Gram matrix of the batch; the
    # NaN or Inf sample's rows are zeroed there and every group holding it is reported NaN
    # (float64: found on the Gram matrix's diagonal; float32: on the rows).
    groups = ("a", "b", "c")
    inputs = keras.Input((32,))
    outputs = keras.layers.Dense(3)(keras.layers.Dense(24, activation="tanh", name="hidden")(inputs))
    model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=groups, null_partitions=3, precision=precision)
    x, y = data((32,), 3)
    x[5, 0] = bad
    labels = np.arange(N) % 3  # sample 5 is in group c
    keep = np.arange(N) != 5  # samples do not interact: a and b's gradients are those without it
    grads, _ = references(model, x[keep], y[keep], labels[keep])["hidden/kernel"]
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    with pytest.warns(UserWarning, match="NaN or Inf"):
        model.fit(x, y, groups=labels, batch_size=N, epochs=1, shuffle=False, verbose=0)
        spectra = model.last_spectra
    _assert_close(spectra.cosine("hidden/kernel", "a", "b"), _cosine(grads[0], grads[1]), COSINE_TOL, "a~b")
    for pair in (("a", "c"), ("b", "c")):
        assert np.isnan(spectra.cosine("hidden/kernel", *pair)), pair
        assert np.isnan(spectra.overlap("hidden/kernel", *pair)), pair
    assert all(np.isnan(spectra.cosine("hidden/kernel", g)) for g in groups)
    assert np.isnan(spectra.null_cosine("hidden/kernel", "a")).all()
