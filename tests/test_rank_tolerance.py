"""Structural zeros are stored as exact zeros, and comparisons of zeros are not tests.

A singular value that is zero in exact arithmetic (a rank-deficient gradient or factor)
comes out of float32 factors as round-off, ~1e-8..1e-7 × σ_1, whose size follows σ_1
and so differs between groups (issue 20). Every route stores the values at or below the
numerical-rank tolerance (docs/method.md) as exactly 0.0. The models are trained for
real, a few steps on one batch of two groups; each spectrum is checked at every step.
"""

import json
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

import tf_autospec as ts
from tf_autospec import stats
from tf_autospec.calibration import simulated_run

GROUPS = ("a", "b")
STEPS = 3
MSE = keras.losses.MeanSquaredError()
SOFTMAX_CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _train(model, x, y, loss):
    """Trains ``STEPS`` steps on one batch whose samples alternate between the groups;
    returns each step's `StepSpectra`."""
    labels = np.arange(len(x)) % 2
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    recorded = []
    for _ in range(STEPS):
        model.train_on_batch({"x": x, "group": labels}, y)
        recorded.append(model.last_spectra)
    return recorded


def _assert_rank(spectrum, rank, bound, label):
    """``rank`` positive values, exact zeros up to the rank bound, NaN past it."""
    assert (spectrum[:rank] > 0).all(), f"{label}: {spectrum[:rank]}"
    np.testing.assert_array_equal(spectrum[rank:bound], 0.0, err_msg=label)
    assert np.isnan(spectrum[bound:]).all(), label


def _check(recorded, kernel, kind, rank, bound):
    for step in recorded:
        for group in GROUPS:
            label = f"{kernel} {kind} {group} step {step.step}"
            _assert_rank(step.spectrum(kernel, kind, group), rank, bound, label)


def test_two_logit_softmax_output_has_exact_zero_second_values():
    # The softmax's Δ rows sum to zero, so Δ and G = AᵀΔ have rank 1. That is below the
    # rank bound min(rows, 2) only with 2 rows or more: the fan route.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6)).astype("float32")
    y = rng.integers(0, 2, size=24)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="tanh", name="hidden")(inputs)
    model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2, name="out")(hidden), groups=GROUPS)
    recorded = _train(model, x, y, SOFTMAX_CE)
    _check(recorded, "out/kernel", "grad", rank=1, bound=2)
    _check(recorded, "out/kernel", "delta", rank=1, bound=2)


# A group's rows below min(fan_in, fan_out) take the rows route, above it the fan route.
ROUTES = pytest.mark.parametrize("rows", [11, 40], ids=["rows_route", "fan_route"])


@ROUTES
def test_constant_and_duplicated_input_columns_give_exact_zeros(rows):
    # 12 inputs: 8 random columns, two constant ones (one direction between them) and two
    # duplicates: A has rank 9, and so has the probe's gradient.
    rng = np.random.default_rng(1)
    random = rng.normal(size=(2 * rows, 8))
    constant = np.ones((2 * rows, 1))
    x = np.concatenate([random, constant, 3 * constant, random[:, :2]], axis=1).astype("float32")
    y = rng.normal(size=(2 * rows, 3)).astype("float32")
    inputs = keras.Input((12,))
    probe = keras.layers.Dense(16, activation="tanh", name="probe")(inputs)
    model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(3, name="out")(probe), groups=GROUPS)
    recorded = _train(model, x, y, MSE)
    _check(recorded, "probe/kernel", "act", rank=9, bound=min(rows, 12))
    _check(recorded, "probe/kernel", "grad", rank=9, bound=min(rows, 12))


@ROUTES
def test_dead_relu_units_give_exact_zeros(rows):
    # 20 of the 24 units of "dying" never activate: its Δ has 20 zero columns (rank 4),
    # and so has the next layer's input A.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2 * rows, 10)).astype("float32")
    y = rng.normal(size=(2 * rows, 3)).astype("float32")
    inputs = keras.Input((10,))
    dying = keras.layers.Dense(24, activation="relu", name="dying")
    after = keras.layers.Dense(16, activation="tanh", name="after")
    model = ts.AutoSpecModel(
        inputs=inputs, outputs=keras.layers.Dense(3, name="out")(after(dying(inputs))), groups=GROUPS
    )
    dying.bias.assign(np.r_[np.ones(4), np.full(20, -100.0)].astype("float32"))
    recorded = _train(model, x, y, MSE)
    _check(recorded, "dying/kernel", "delta", rank=4, bound=min(rows, 24))
    _check(recorded, "dying/kernel", "grad", rank=4, bound=min(rows, 10))
    _check(recorded, "after/kernel", "act", rank=4, bound=min(rows, 24))
    _check(recorded, "after/kernel", "grad", rank=4, bound=min(rows, 16))


def _mirrored_dead_filters(out):
    """Subprocess: a CNN with 4 of its 6 filters dead, fitted under `MirroredStrategy` over
    two logical CPUs. The conv kernel's spectra come from all-reduced row sums, the output
    layer's from gathered rows (checked through ``distributed_exchange``)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 8, 8, 2)).astype("float32")
    y = rng.integers(0, 2, size=16)
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        inputs = keras.Input((8, 8, 2))
        conv = keras.layers.Conv2D(6, 3, activation="relu", name="conv")
        pooled = keras.layers.GlobalAveragePooling2D()(conv(inputs))
        model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2, name="out")(pooled), groups=GROUPS)
        conv.bias.assign(np.r_[np.ones(2), np.full(4, -100.0)].astype("float32"))
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=SOFTMAX_CE)
    steps = []

    class Collect(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(self.model.last_spectra)

    model.fit(x, y, groups=np.arange(16) % 2, batch_size=16, epochs=STEPS, verbose=0, callbacks=[Collect()])
    arrays = {f"{kernel}|{kind}": np.stack([s.spectra[(kernel, kind)] for s in steps])
              for kernel, kind in steps[0].spectra}
    np.savez(os.path.join(out, "spectra.npz"), **arrays)
    with open(os.path.join(out, "exchange.json"), "w") as f:
        json.dump(model.distributed_exchange, f)


def test_distributed_row_sums_and_rows_give_exact_zeros(tmp_path):
    result = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    exchange = json.loads((tmp_path / "exchange.json").read_text())
    assert exchange["conv/kernel"]["exchange"] == "sums" and exchange["out/kernel"]["exchange"] == "rows"
    spectra = np.load(tmp_path / "spectra.npz")
    # [steps, groups, width]; each group has 8 samples × 36 positions for the conv.
    expected = {
        "conv/kernel|delta": (2, 6), "conv/kernel|grad": (2, 6),  # 2 live filters
        "out/kernel|act": (2, 6),  # their pooled outputs
        "out/kernel|grad": (1, 2), "out/kernel|delta": (1, 2),  # 2-logit softmax
    }
    for key, (rank, bound) in expected.items():
        for step in spectra[key]:
            for group, spectrum in enumerate(step):
                _assert_rank(spectrum, rank, bound, f"{key} group {group}")


def _run_with_zero_sigma_2(path, rng, **options):
    """A simulated run of two singular values per spectrum whose layer0 σ_2 is 0 in both
    groups, and in every null partition's groups, at every step, as a rank-1 spectrum now
    stores it."""
    labels = np.repeat([0, 1], 20)
    run = simulated_run(path, rng, labels, width=2, **options)
    with h5py.File(path, "r+") as f:
        f["kernels/layer0/kernel/act"][:, :, 1] = 0.0
        f["null/layer0/kernel/act"][..., 1] = 0.0
    return run


def test_sign_flip_of_all_zero_differences_is_not_a_test():
    assert np.isnan(stats.sign_flip_p(np.zeros(6), 1000, np.random.default_rng(0)))
    assert stats.sign_flip_p(np.r_[np.zeros(5), 1.0], 1000, np.random.default_rng(0)) == pytest.approx(1.0)


@pytest.mark.parametrize("reference, untested", [
    ("null", ("p_value", "q_value", "effect")),
    ("runs", ("p_value", "p_permutation", "q_value", "q_permutation", "effect")),
])
def test_across_runs_does_not_test_all_zero_values(tmp_path, reference, untested):
    rng = np.random.default_rng(4)
    runs = [_run_with_zero_sigma_2(tmp_path / f"r{i}.h5", rng, shift=2.0, shift_layer="layer1/kernel")
            for i in range(4)]
    rows = stats.across_runs(runs, "HC", "SZ", summaries=("sigma_1", "sigma_2"), reference=reference,
                             permutations=100)
    zero = [r for r in rows if r["layer"] == "layer0/kernel" and r["summary"] == "sigma_2"]
    assert len(zero) == 3  # one per epoch
    for row in zero:
        assert row["mean_a"] == row["mean_b"] == 0.0
        for column in untested:
            assert np.isnan(row[column]), column
        assert not row["significant"]
    tested = [r for r in rows if r not in zero]
    assert any(r["significant"] for r in tested)  # the planted difference
    # The BH family is the tested rows only.
    for column in [c for c in untested if c.startswith("p_")]:
        q = stats.benjamini_hochberg([r[column] for r in tested])
        np.testing.assert_allclose([r[column.replace("p_", "q_", 1)] for r in tested], q)


@pytest.mark.parametrize("reference", ["null", "steps"])
def test_within_run_does_not_test_all_zero_values(tmp_path, reference):
    run = _run_with_zero_sigma_2(tmp_path / "w.h5", np.random.default_rng(5), epochs=20, batch=8)
    rows = stats.within_run(run, "HC", "SZ", summaries=("sigma_1", "sigma_2"), reference=reference, block=5)
    zero = next(r for r in rows if r["layer"] == "layer0/kernel" and r["summary"] == "sigma_2")
    assert zero["difference"] == 0.0 and np.isnan(zero["p_value"]) and np.isnan(zero["q_value"])
    assert not zero["significant"]
    tested = [r for r in rows if r is not zero]
    q = stats.benjamini_hochberg([r["p_value"] for r in tested])
    np.testing.assert_allclose([r["q_value"] for r in tested], q)


if __name__ == "__main__":
    _mirrored_dead_filters(sys.argv[1])


class SubclassedHead(ts.AutoSpecModel):
    def __init__(self):
        super().__init__(groups=GROUPS)
        self.hidden = keras.layers.Dense(8, activation="relu", name="hidden")
        self.out = keras.layers.Dense(2, name="out")

    def call(self, x):
        return self.out(self.hidden(x))


def _confident_heads(head):
    """``(model, loss, kernel path of the output layer)`` for each way to put a softmax
    at the output that `_softmax_logits` recognises."""
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    if head == "functional logits":
        return ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2, name="out")(hidden), groups=GROUPS), \
            SOFTMAX_CE
    if head == "softmax activation":
        outputs = keras.layers.Dense(2, activation="softmax", name="out")(hidden)
        return ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=GROUPS), keras.losses.SparseCategoricalCrossentropy()
    if head == "Softmax layer":
        outputs = keras.layers.Softmax()(keras.layers.Dense(2, name="out")(hidden))
        return ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=GROUPS), keras.losses.SparseCategoricalCrossentropy()
    return SubclassedHead(), SOFTMAX_CE


@pytest.mark.parametrize("head", ["functional logits", "softmax activation", "Softmax layer", "subclassed logits"])
def test_a_confident_softmax_output_keeps_its_exact_zero(head):
    # Once p ≈ 1, Keras's float32 Δ = p − y carries round-off of ~ε / (1 − p) relative to
    # the row, far above any rank tolerance; the rows' exact zero sum is restored (issue 20:
    # the default run reported this σ_2 as significant in 18 of 20 epochs).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model, loss = _confident_heads(head)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss)
    labels = np.arange(64) % 2
    model.fit(x, y, groups=labels, batch_size=64, epochs=40, verbose=0)
    # Confident at once: the output layer's weights scaled up, then one more recorded step.
    out_layer = next(layer for layer in model._flatten_layers() if layer.name == "out")
    out_layer.set_weights([w * 4 for w in out_layer.get_weights()])
    model.fit(x, y, groups=labels, batch_size=64, epochs=1, verbose=0)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(x, verbose=0))) \
        if loss is SOFTMAX_CE else model.predict(x, verbose=0)
    assert np.median(np.min(probabilities, axis=1)) < 1e-4, "the model should be confident"
    step = model.last_spectra
    out = next(k for k in step.kernels if k.split("/")[-2] == "out")
    hidden = next(k for k in step.kernels if k.split("/")[-2] == "hidden")
    for group in GROUPS:
        for kind in ("grad", "delta"):
            values = step.spectrum(out, kind, group)
            assert values[0] > 0 and values[1] == 0.0, f"{kind} {group}: {values}"
    # The hidden layer's spectra are untouched: its Δ is not a softmax's.
    assert step.spectrum(hidden, "delta", "a")[1] > 0
