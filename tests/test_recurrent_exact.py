"""Recurrent layers against an independent brute force: cells unrolled by hand in a Python
loop (every product its own tensor), each group's gradient from its own tape pass on the
group-masked loss, float64 SVD. Also: the re-expressed loop gives the stock layer's outputs
and weight gradients, and training matches plain `keras.Model.fit`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_autospec as ts
from reference import (
    assert_spectrum_matches,
    group_gradients,
    per_sample_loss,
    precision_tolerance,
    singular_values,
)

GROUPS = ("a", "b", "c", "absent")
LABELS = np.array([0, 1, 0, 0, -1, 2, 0, 1, 0, -1, 0, 0])
N, T, F = len(LABELS), 6, 3
LOSS = keras.losses.MeanSquaredError(reduction=None)


def _unrolled(layer, x, mask, products):
    """Hand-unrolled forward pass of a SimpleRNN, LSTM or GRU layer (zero initial state).

    Appends ``(kernel path, A rows [N, fan_in], product tensor, embed)`` to ``products`` for
    every product of every step; ``embed`` maps ∂L/∂product to Δ rows ``[N, fan_out]``.
    """
    cell = layer.cell
    u = cell.units
    w, rec = tf.convert_to_tensor(cell.kernel), tf.convert_to_tensor(cell.recurrent_kernel)
    bias = tf.convert_to_tensor(cell.bias) if cell.use_bias else tf.zeros([2, 3 * u] if getattr(
        cell, "reset_after", False) else [w.shape[1]])
    h = tf.zeros([N, u])
    c = tf.zeros([N, u])
    out = tf.zeros([N, u])
    outputs = []
    same = lambda d: d  # noqa: E731
    steps = range(T - 1, -1, -1) if layer.go_backwards else range(T)
    for t in steps:
        m = tf.ones([N, 1]) if mask is None else tf.cast(mask[:, t : t + 1], tf.float32)
        xw = tf.matmul(x[:, t], w)
        products.append((cell.kernel.path, x[:, t] * m, xw, same))
        if isinstance(layer, keras.layers.GRU) and not cell.reset_after:
            hu = tf.matmul(h, rec[:, : 2 * u])
            products.append((cell.recurrent_kernel.path, h * m, hu, lambda d: tf.pad(d, [[0, 0], [0, u]])))
        else:
            hu = tf.matmul(h, rec)
            products.append((cell.recurrent_kernel.path, h * m, hu, same))
        if isinstance(layer, keras.layers.SimpleRNN):
            new_h, new_c = cell.activation(xw + bias + hu), c
        elif isinstance(layer, keras.layers.LSTM):
            i, f, g, o = tf.split(xw + hu + bias, 4, axis=-1)
            sig = cell.recurrent_activation
            new_c = sig(f) * c + sig(i) * cell.activation(g)
            new_h = sig(o) * cell.activation(new_c)
        else:
            x_z, x_r, x_h = tf.split(xw + (bias[0] if cell.reset_after else bias), 3, axis=-1)
            sig = cell.recurrent_activation
            if cell.reset_after:
                r_z, r_r, r_h = tf.split(hu + bias[1], 3, axis=-1)
                z, r = sig(x_z + r_z), sig(x_r + r_r)
                candidate = cell.activation(x_h + r * r_h)
            else:
                r_z, r_r = tf.split(hu, 2, axis=-1)
                z, r = sig(x_z + r_z), sig(x_r + r_r)
                reset_product = tf.matmul(r * h, rec[:, 2 * u :])
                products.append((cell.recurrent_kernel.path, r * h * m, reset_product,
                                 lambda d: tf.pad(d, [[0, 0], [2 * u, 0]])))
                candidate = cell.activation(x_h + reset_product)
            new_h, new_c = z * h + (1 - z) * candidate, c
        keep = m > 0
        h, c = tf.where(keep, new_h, h), tf.where(keep, new_c, c)
        out = tf.where(keep, new_h, tf.zeros_like(out) if layer.zero_output_for_mask else out)
        outputs.append(out)
    return tf.stack(outputs, axis=1) if layer.return_sequences else outputs[-1]


def _forward(model, x, products):
    """The model's prediction, every recurrent layer unrolled by hand."""
    h = tf.convert_to_tensor(x)
    mask = None
    for layer in model.layers[1:]:
        if isinstance(layer, keras.layers.Masking):
            mask = tf.reduce_any(tf.not_equal(h, layer.mask_value), axis=-1)
        elif isinstance(layer, keras.layers.Bidirectional):
            forward = _unrolled(layer.forward_layer, h, mask, products)
            backward = _unrolled(layer.backward_layer, h, mask, products)
            if layer.return_sequences:
                backward = tf.reverse(backward, [1])
            h = tf.concat([forward, backward], axis=-1)
        elif isinstance(layer, keras.layers.RNN):
            h = _unrolled(layer, h, mask, products)
        else:
            h = layer(h)
    return h


def _brute_force(model, x, y):
    """Per kernel path and group: (A rows, Δ rows), from the hand-unrolled model."""
    factors = {}
    for g in range(len(GROUPS)):
        products = []
        with tf.GradientTape() as tape:
            pred = _forward_watched(model, x, products, tape)
            ell = per_sample_loss(LOSS, y, pred)
            masked = tf.reduce_sum(ell * (LABELS == g).astype("float32")) / N
        deltas = tape.gradient(masked, [p for _, _, p, _ in products])
        members = LABELS == g
        for (path, rows, _, embed), delta in zip(products, deltas):
            a_rows, d_rows = factors.setdefault((path, g), ([], []))
            a_rows.append(np.asarray(rows, np.float64)[members])
            d_rows.append(np.asarray(embed(delta), np.float64)[members])
    return {key: (np.concatenate(a), np.concatenate(d)) for key, (a, d) in factors.items()}


def _forward_watched(model, x, products, tape):
    class Watched(list):
        def append(self, item):
            tape.watch(item[2])
            super().append(item)

    watched = Watched()
    pred = _forward(model, x, watched)
    products.extend(watched)
    return pred


def _data(seed=0, padded=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, T, F)).astype("float32")
    if padded:
        lengths = rng.integers(2, T + 1, size=N)
        x[np.arange(T)[None, :] >= lengths[:, None]] = 0.0
    return x, rng.normal(size=(N, 2)).astype("float32")


CASES = {
    "simple_rnn": lambda: [keras.layers.SimpleRNN(4)],
    "lstm_sequences": lambda: [keras.layers.LSTM(4, return_sequences=True), keras.layers.Flatten()],
    "gru_reset_after_backwards": lambda: [keras.layers.GRU(4, go_backwards=True)],
    "gru_reset_before": lambda: [keras.layers.GRU(4, reset_after=False, return_sequences=True),
                                 keras.layers.Flatten()],
    "masked_lstm": lambda: [keras.layers.Masking(0.0), keras.layers.LSTM(4)],
    "masked_gru_sequences_backwards": lambda: [keras.layers.Masking(0.0), keras.layers.GRU(
        4, return_sequences=True, go_backwards=True, zero_output_for_mask=True), keras.layers.Flatten()],
    "stacked": lambda: [keras.layers.LSTM(5, return_sequences=True), keras.layers.SimpleRNN(3)],
    "masked_gru_reset_before_unrolled": lambda: [keras.layers.Masking(0.0), keras.layers.GRU(
        4, reset_after=False, unroll=True, use_bias=False)],
    "bidirectional": lambda: [keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True)),
                              keras.layers.Flatten()],
}


def _model(case, cls=ts.AutoSpecModel, **options):
    keras.backend.clear_session()  # the same layer names for every build of a case
    keras.utils.set_random_seed(1)
    inputs = keras.Input((T, F))
    h = inputs
    for layer in CASES[case]():
        h = layer(h)
    outputs = keras.layers.Dense(2)(h)
    if cls is keras.Model:
        return keras.Model(inputs, outputs)
    return cls(inputs=inputs, outputs=outputs, groups=GROUPS, **options)


@pytest.mark.parametrize("case", list(CASES))
def test_recurrent_spectra_match_the_hand_unrolled_brute_force(case):
    _check_against_the_brute_force(case, "float64")


@pytest.mark.parametrize("case", ["stacked", "gru_reset_before"])
def test_float32_gram_matrices_stay_within_their_bound(case):
    _check_against_the_brute_force(case, "float32")


def _check_against_the_brute_force(case, precision):
    model = _model(case, precision=precision)
    x, y = _data(padded=case.startswith("masked"))
    np.testing.assert_allclose(_forward(model, x, []), model(x), atol=1e-5)  # the hand-unrolled model is the model
    factors = _brute_force(model, x, y)
    recurrent = [v for v in model.trainable_variables if "kernel" in v.path and "dense" not in v.path]
    gradients = {v.path: group_gradients(model, v, x, y, LABELS, len(GROUPS), LOSS) for v in recurrent}
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, y, groups=LABELS, batch_size=N, epochs=1, shuffle=False, verbose=0)
    spectra = model.last_spectra
    assert set(gradients) <= set(spectra.kernels)
    for path, per_group in gradients.items():
        for g, name in enumerate(GROUPS):
            if not (LABELS == g).any():
                for kind in ts.KINDS:
                    assert np.all(np.isnan(spectra.spectrum(path, kind, name))), (path, kind, name)
                continue
            a_rows, d_rows = factors[(path, g)]
            matrix = per_group[g]
            # The hand-unrolled factors reproduce the stock layer's group gradient.
            np.testing.assert_allclose(a_rows.T @ d_rows, matrix, atol=1e-5 * np.abs(matrix).max())
            fan_in, fan_out = matrix.shape
            rows = len(a_rows)  # masked steps are zero rows (A and Δ): they add nothing to any spectrum
            for kind, reference, bound in (("grad", matrix, min(rows, fan_in, fan_out)),
                                           ("act", a_rows, min(rows, fan_in)),
                                           ("delta", d_rows, min(rows, fan_out))):
                tolerance = precision_tolerance(precision, kind, fan_in, fan_out)
                assert_spectrum_matches(spectra.spectrum(path, kind, name), singular_values(reference), bound,
                                        f"{case} {path} {kind} {name}", tolerance)


# Together these cover every cell (GRU both ways), masking, go_backwards, both
# return_sequences settings, stacking and Bidirectional.
@pytest.mark.parametrize("case", ["gru_reset_before", "masked_gru_sequences_backwards", "stacked", "bidirectional"])
def test_reexpressed_loop_matches_the_stock_layer_and_plain_fit(case):
    x, y = _data(seed=2, padded=case.startswith("masked"))
    model = _model(case)
    plain = _model(case, keras.Model)
    plain.set_weights(model.get_weights())
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    plain.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    # The re-expressed loop, as traced inside train_step, against the stock layer.
    with tf.GradientTape(persistent=True) as tape:
        with _intercepted(model, tape):
            recorded_output = model(x, training=True)
        stock_output = plain(x, training=True)
        recorded_loss = tf.reduce_mean((recorded_output - y) ** 2)
        stock_loss = tf.reduce_mean((stock_output - y) ** 2)
    np.testing.assert_allclose(recorded_output, stock_output, atol=1e-5)
    for a, b in zip(tape.gradient(recorded_loss, model.trainable_variables),
                    tape.gradient(stock_loss, plain.trainable_variables)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    model.fit(x, y, groups=LABELS, batch_size=4, epochs=2, shuffle=False, verbose=0)
    plain.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


class _intercepted:
    """Installs the layers' interception outside ``fit`` (which installs it only while tracing)."""

    def __init__(self, model, tape):
        from tf_autospec import capture, tracking

        self.kernels = tracking.find_tracked_kernels(model, model, None, ts.KINDS, None)
        self.recording = capture.Recording(tape)
        self.capture = capture

    def __enter__(self):
        layers = {id(k.layer): k.layer for k in self.kernels}
        self.undo = [self.capture.capture_for(layer).intercept(layer, self.recording) for layer in layers.values()]
        return self.recording

    def __exit__(self, *exc):
        for restore in self.undo:
            restore()


def test_recurrent_dropout_is_skipped_with_a_warning():
    inputs = keras.Input((T, F))
    outputs = keras.layers.Dense(2, name="head")(keras.layers.LSTM(3, dropout=0.2, name="dropped")(inputs))
    model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=GROUPS)
    model.compile(optimizer="sgd", loss="mse")
    x, y = _data()
    with pytest.warns(ts.AutoSpecWarning, match="'dropped'.*dropout"):
        model.fit(x, y, groups=LABELS, batch_size=N, epochs=1, verbose=0)
    assert model.last_spectra.kernels == ["head/kernel"]


def test_xla_compiled_recurrent_step_matches_the_eager_one(monkeypatch):
    from tf_autospec import model as model_module

    monkeypatch.setattr(model_module, "XLA_ON_CPU", True)  # tiny matrices: fast enough on CPU
    x, y = _data(seed=4, padded=True)
    results = []
    for jit in (True, False):
        model = _model("masked_gru_sequences_backwards")
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=jit)
        model.fit(x, y, groups=LABELS, batch_size=N, epochs=2, shuffle=False, verbose=0)
        assert model.jit_compile is jit
        results.append(model.last_spectra)
    compiled, eager = results
    for key, values in eager.spectra.items():
        np.testing.assert_allclose(compiled.spectra[key], values, rtol=1e-4, atol=1e-6, err_msg=str(key))


def test_return_state_stateful_and_mixed_precision_match_the_stock_layer():
    x, y = _data(seed=6)
    for policy, stateful in (("float32", True), ("mixed_float16", False)):
        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy(policy)
        try:
            keras.utils.set_random_seed(3)
            inputs = keras.Input((T, F), batch_size=N if stateful else None)
            lstm = keras.layers.LSTM(4, return_sequences=True, return_state=True, stateful=stateful)
            sequence, h, c = lstm(inputs)
            merged = keras.layers.Concatenate()([keras.layers.Flatten()(sequence), h, c])
            outputs = keras.layers.Dense(2, dtype="float32")(merged)
            model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=GROUPS)
            plain = keras.Model(inputs, outputs)  # the same layers, called without interception
            tolerance = 1e-5 if policy == "float32" else 2e-2
            with tf.GradientTape(persistent=True) as tape:
                if stateful:
                    lstm.reset_state()
                with _intercepted(model, tape) as recording:
                    recorded = model(x, training=True)
                if stateful:
                    lstm.reset_state()
                stock = plain(x, training=True)
                losses = [tf.reduce_mean((tf.cast(p, tf.float32) - y) ** 2) for p in (recorded, stock)]
            assert recording.calls_of(lstm, "recurrent_kernel")  # the interception was used
            np.testing.assert_allclose(recorded, stock, atol=tolerance)
            for a, b in zip(*(tape.gradient(loss, model.trainable_variables) for loss in losses)):
                np.testing.assert_allclose(a, b, atol=tolerance)
        finally:
            keras.mixed_precision.set_global_policy("float32")
