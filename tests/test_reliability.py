"""Bad input gets a clear error; faults leave the data whole (docs/reliability.md)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tf_autospec as ts
from reference import assert_spectrum_matches, group_gradients, singular_values
from tf_autospec import spectra, store
from tf_autospec.tracking import spectrum_widths

LOSS = keras.losses.MeanSquaredError(reduction=None)


def _model(groups=("a", "b"), hidden_name="hidden", **options):
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(4, activation="tanh", name=hidden_name)(inputs)
    model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2, name="out")(hidden),
                             groups=list(groups), **options)
    model.compile(optimizer="sgd", loss="mse")
    return model


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype("float32"), rng.normal(size=(n, 2)).astype("float32")


@pytest.mark.parametrize("labels", [np.array([1]), np.array([0, 0, 0, 0, 0, 0, 0, 0]), np.array([0, 0, 0, 0, 0, 0, 0, 1])],
                         ids=["batch-of-one", "all-in-one-group", "group-of-one"])
def test_small_batches_and_lopsided_groups_are_exact(labels):
    x, y = _data(len(labels))
    model = _model()
    kernel = model.get_layer("hidden").kernel
    grads = group_gradients(model, kernel, x, y, labels, 2, LOSS)
    model.fit(x, y, groups=labels, batch_size=len(labels), epochs=1, shuffle=False, verbose=0)
    recorded = model.last_spectra
    np.testing.assert_array_equal(recorded.counts, [np.sum(labels == 0), np.sum(labels == 1)])
    for g, name in enumerate(("a", "b")):
        values = recorded.spectrum("hidden/kernel", "grad", name)
        if not np.any(labels == g):
            assert np.all(np.isnan(values)) and recorded.counts[g] == 0
            continue
        assert_spectrum_matches(values, singular_values(grads[g]), min(np.sum(labels == g), 4), name)


def test_nan_in_the_loss_gives_nan_spectra_a_warning_and_terminate_on_nan_still_works():
    # Sample 3 (group "b") is NaN: the loss is NaN, and so are group b's factors;
    # group a's rows stay finite (MSE keeps samples apart), so its spectra stay exact.
    x, y = _data(16)
    x[3] = np.nan
    model = _model()
    with pytest.warns(ts.AutoSpecWarning, match="NaN or Inf"):
        history = model.fit(x, y, groups=np.arange(16) % 2, batch_size=8, epochs=3, verbose=0,
                            callbacks=[keras.callbacks.TerminateOnNaN()])
        spectra_now = model.last_spectra
    assert len(history.history["loss"]) == 1  # stopped after the first NaN batch
    assert set(spectra_now.nonfinite) == {"hidden/kernel", "out/kernel"}
    for key, values in spectra_now.spectra.items():
        assert np.all(np.isnan(values[1])) and np.all(np.isfinite(values[0, :2])), key


def test_non_finite_rows_of_one_group_leave_the_other_groups_exact():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 0, 1, 1, 0], dtype=np.int32)
    a = rng.normal(size=(6, 1, 9)).astype("float32")
    d = rng.normal(size=(6, 1, 7)).astype("float32")
    a[1, 0, 2] = np.inf  # group 1
    grouping = spectra.SampleGrouping(tf.constant(labels), 2, static_shapes=False)
    out, finite = spectra.group_spectra(
        spectra.DenseRows(tf.reshape(grouping.apply(tf.constant(a), 0), [2, -1, 9])),
        spectra.DenseRows(tf.reshape(grouping.apply(tf.constant(d), 0), [2, -1, 7])),
        1, grouping.counts, spectra.KINDS, spectrum_widths(9, 7, spectra.KINDS, None),
    )
    np.testing.assert_array_equal(finite.numpy(), [True, False])
    a0, d0 = a[labels == 0, 0].astype(np.float64), d[labels == 0, 0].astype(np.float64)
    assert_spectrum_matches(out["grad"].numpy()[0], singular_values(a0.T @ d0), 3, "grad")
    for values in out.values():
        assert np.all(np.isnan(values.numpy()[1]))


def test_float32_overflow_of_a_group_gradient_is_nan_not_a_failed_solver():
    a = np.full((4, 50, 3), 1e25, dtype=np.float32)  # finite, but Aᵀ·Δ overflows float32
    d = np.full((4, 50, 2), 1e25, dtype=np.float32)
    grouping = spectra.SampleGrouping(tf.constant([0, 0, 1, 1]), 2, static_shapes=False)
    out, _ = spectra.group_spectra(
        spectra.DenseRows(tf.reshape(grouping.apply(tf.constant(a), 0), [2, -1, 3])),
        spectra.DenseRows(tf.reshape(grouping.apply(tf.constant(d), 0), [2, -1, 2])),
        50, grouping.counts, spectra.KINDS, spectrum_widths(3, 2, spectra.KINDS, None),
    )
    assert np.all(np.isnan(out["grad"].numpy()))
    assert np.all(np.isfinite(out["act"].numpy()[:, :1]))


def test_bfloat16_mixed_precision_decomposes_in_float64():
    x, y = _data(16)
    labels = np.arange(16) % 2
    results = []
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(11)
        model = _model()
        model.fit(x, y, groups=labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
        results.append(model.last_spectra)
    keras.mixed_precision.set_global_policy("float32")
    for key, values in results[0].spectra.items():
        finite = np.isfinite(values)
        np.testing.assert_array_equal(np.isfinite(results[1].spectra[key]), finite)
        # bfloat16 keeps 8 bits: agreement to ~1e-2 of the largest value.
        np.testing.assert_allclose(results[1].spectra[key][finite], values[finite],
                                   atol=3e-2 * np.nanmax(values), err_msg=str(key))


def test_model_without_a_supported_layer_is_refused():
    inputs = keras.Input((5,))
    outputs = keras.layers.LayerNormalization()(inputs)
    model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=["a"])
    model.compile(optimizer="sgd", loss="mse")
    x, _ = _data()
    with pytest.warns(ts.AutoSpecWarning), pytest.raises(ValueError, match="no layer that AutoSpec can track"):
        model.fit(x, x, groups=np.zeros(8, int), epochs=1, verbose=0)


def test_bool_labels_are_refused():
    x, y = _data()
    with pytest.raises(ValueError, match="integers or group names"):
        _model().fit(x, y, groups=np.zeros(8, bool), epochs=1, verbose=0)


def test_layer_renamed_between_runs_is_named_on_resume(tmp_path):
    path = tmp_path / "run.h5"
    x, y = _data()
    labels = np.arange(8) % 2
    _model().fit(x, y, groups=labels, epochs=1, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    with pytest.raises(ts.StoreError, match="hidden/kernel.*encoder/kernel|encoder/kernel.*hidden/kernel"):
        _model(hidden_name="encoder").fit(x, y, groups=labels, epochs=1, verbose=0,
                                          callbacks=[ts.AutoSpecCallback(path)])
    assert len(ts.load(path)) == 1  # nothing recorded was lost


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows_per_sample=st.integers(1, 6),
    fan_in=st.integers(1, 24),
    fan_out=st.integers(1, 24),
    rank=st.integers(1, 24),
    labels=st.lists(st.integers(-1, 2), min_size=1, max_size=14),
    static_shapes=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_routes_match_numpy_on_random_shapes_ranks_and_groups(
    rows_per_sample, fan_in, fan_out, rank, labels, static_shapes, seed
):
    rng = np.random.default_rng(seed)
    n = len(labels)
    rank = min(rank, fan_in)
    a = (rng.normal(size=(n, rows_per_sample, rank)) @ rng.normal(size=(rank, fan_in))).astype("float32")
    d = rng.normal(size=(n, rows_per_sample, fan_out)).astype("float32")
    labels = np.array(labels, dtype=np.int32)
    grouping = spectra.SampleGrouping(tf.constant(labels), 3, static_shapes)
    out, _ = spectra.group_spectra(
        spectra.DenseRows(tf.reshape(grouping.apply(tf.constant(a), 0), [3, -1, fan_in])),
        spectra.DenseRows(tf.reshape(grouping.apply(tf.constant(d), 0), [3, -1, fan_out])),
        rows_per_sample, grouping.counts, spectra.KINDS, spectrum_widths(fan_in, fan_out, spectra.KINDS, None),
    )
    for g in range(3):
        members = labels == g
        rows = int(members.sum()) * rows_per_sample
        if rows == 0:
            assert all(np.all(np.isnan(v.numpy()[g])) for v in out.values())
            continue
        a_g = a[members].reshape(-1, fan_in).astype(np.float64)
        d_g = d[members].reshape(-1, fan_out).astype(np.float64)
        assert_spectrum_matches(out["grad"].numpy()[g], singular_values(a_g.T @ d_g), min(rows, fan_in, fan_out), "grad")
        assert_spectrum_matches(out["act"].numpy()[g], singular_values(a_g), min(rows, fan_in), "act")
        assert_spectrum_matches(out["delta"].numpy()[g], singular_values(d_g), min(rows, fan_out), "delta")


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "run.h5"
    x, y = _data(32)
    _model().fit(x, y, groups=np.arange(32) % 2, batch_size=8, epochs=2, verbose=0,
                 callbacks=[ts.AutoSpecCallback(path)])
    return path.read_bytes()


LOAD_EVERYTHING = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("store", sys.argv[1])
store = importlib.util.module_from_spec(spec); spec.loader.exec_module(store)
try:
    run = store.load(sys.argv[2])
    for layer in run.layers:
        for kind in run.kinds:
            for group in run.groups:
                run.spectrum(layer, kind, group)
    print("read")
except store.StoreError as error:
    print("clear error:", error)
"""


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_load_on_truncated_and_corrupted_files_errors_clearly_without_crash_or_hang(good_run, tmp_path, data):
    content = bytearray(good_run)
    if data.draw(st.booleans(), label="truncate"):
        content = content[: data.draw(st.integers(0, len(content) - 1), label="keep")]
    else:
        for _ in range(data.draw(st.integers(1, 16), label="bytes")):
            content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "damaged.h5"
    path.write_bytes(bytes(content))
    store_module = os.path.join(os.path.dirname(ts.__file__), "store.py")
    # A separate process (h5py and NumPy only), so that a crash or a hang would show.
    result = subprocess.run([sys.executable, "-c", LOAD_EVERYTHING, store_module, str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(("read", "clear error:")), result.stdout + result.stderr[-2000:]
    if result.stdout.startswith("clear error:"):
        assert str(path) in result.stdout


def test_a_damaged_attribute_heap_is_a_clear_error(good_run, tmp_path):
    # Found by the test above: h5py raises RuntimeError, not OSError, when the heap that
    # holds the file's attributes fails its checksum.
    content = bytearray(good_run)
    content[content.index(b"FHDB") + 20] ^= 0xFF  # inside the heap's first direct block
    path = tmp_path / "damaged.h5"
    path.write_bytes(bytes(content))
    with pytest.raises(store.StoreError, match="corrupted or incomplete.*checksum") as error:
        ts.load(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("scale", [1e-30, 1e-6, 1e6, 1e15], ids=lambda s: f"{s:g}")
def test_extreme_finite_scales_never_fail_a_solver(scale):
    # What could make an eigen-solver fail to converge is non-finite input, which never
    # reaches it; finite factors across 45 orders of magnitude decompose exactly.
    rng = np.random.default_rng(1)
    labels = np.array([0, 1, 0, 1, 0, 1], dtype=np.int32)
    a = (rng.normal(size=(6, 3, 8)) * scale * np.logspace(0, -6, 8)).astype("float32")
    d = (rng.normal(size=(6, 3, 5)) / scale).astype("float32")
    grouping = spectra.SampleGrouping(tf.constant(labels), 2, static_shapes=False)
    out, finite = spectra.group_spectra(
        spectra.DenseRows(tf.reshape(grouping.apply(tf.constant(a), 0), [2, -1, 8])),
        spectra.DenseRows(tf.reshape(grouping.apply(tf.constant(d), 0), [2, -1, 5])),
        3, grouping.counts, spectra.KINDS, spectrum_widths(8, 5, spectra.KINDS, None),
    )
    assert finite.numpy().all()
    for g in range(2):
        a_g = a[labels == g].reshape(-1, 8).astype(np.float64)
        d_g = d[labels == g].reshape(-1, 5).astype(np.float64)
        assert_spectrum_matches(out["grad"].numpy()[g], singular_values(a_g.T @ d_g), 5, "grad")
        assert_spectrum_matches(out["act"].numpy()[g], singular_values(a_g), 8, "act")
        assert_spectrum_matches(out["delta"].numpy()[g], singular_values(d_g), 5, "delta")


def test_a_refused_fit_leaves_the_recorded_run_whole(tmp_path):
    path = tmp_path / "run.h5"
    x, y = _data()
    model = _model()
    model.fit(x, y, groups=np.arange(8) % 2, batch_size=4, epochs=1, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    for bad in (np.full(8, 7), np.full(8, np.nan), np.array(["zz"] * 8)):
        with pytest.raises(ValueError):
            model.fit(x, y, groups=bad, epochs=1, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    run = ts.load(path)
    np.testing.assert_array_equal(run.records["step"], [0, 1])
    assert np.all(np.isfinite(run.spectrum("out/kernel", "grad", "a")[:, 0]))
