"""The training loss of each group, recorded with the spectra, against each group's subset
evaluated independently with the weights of that step."""

import keras
import numpy as np
import pytest

import tf_autospec as ts

GROUPS = ["HC", "SZ", "absent"]


def _labels(n, rng):
    return rng.choice(np.array(["HC", "SZ", "-1"]), size=n)  # "-1": trained on, in no group


def _reference(plain, loss, x, y, labels, weights=None, loss_weights=None):
    """Keras's loss ("sum_over_batch_size") on each group's samples alone."""
    out = []
    for group in GROUPS:
        rows = labels == group
        if not rows.any():
            out.append(np.nan)
            continue
        pred = plain(x[rows])
        w = None if weights is None else weights[rows]
        if isinstance(loss, list):
            out.append(sum(lw * float(fn(t[rows], p, w)) for fn, t, p, lw in zip(loss, y, pred, loss_weights)))
        else:
            out.append(float(loss(y[rows], pred, w)))
    return np.array(out)


def _step(model, x, y, labels, **fit):
    plain = keras.Model(model.inputs, model.outputs)
    before = [w.numpy() for w in model.weights]
    model.fit(x, y, groups=labels, batch_size=len(labels), epochs=1, shuffle=False, verbose=0, **fit)
    plain_now = [w.numpy() for w in plain.weights]
    for w, value in zip(model.weights, before):  # the step's weights, for the reference
        w.assign(value)
    return model.last_spectra.group_loss, plain, plain_now


CASES = {
    "classification from logits": (lambda i: keras.layers.Dense(3)(keras.layers.Dense(5, activation="tanh")(i)),
                                   keras.losses.SparseCategoricalCrossentropy(from_logits=True), (8,)),
    "regression, named loss": (lambda i: keras.layers.Dense(2)(i), "mse", (8,)),
    "sequence targets": (lambda i: keras.layers.Dense(2)(keras.layers.SimpleRNN(4, return_sequences=True)(i)),
                         keras.losses.MeanAbsoluteError(), (5, 3)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("weighted", [False, True])
def test_group_loss_matches_each_group_evaluated_alone(case, weighted):
    build, loss, shape = CASES[case]
    rng = np.random.default_rng(0)
    inputs = keras.Input(shape)
    model = ts.AutoSpecModel(inputs, build(inputs), groups=GROUPS)
    model.compile(optimizer="sgd", loss=loss)
    x = rng.normal(size=(40, *shape)).astype("float32")
    out_shape = model.outputs[0].shape[1:]
    y = rng.integers(0, 3, size=40) if case.startswith("classification") else \
        rng.normal(size=(40, *out_shape)).astype("float32")
    labels = _labels(40, rng)
    weight_shape = (40, shape[0]) if case == "sequence targets" else (40,)  # one weight per loss value
    weights = rng.uniform(0.2, 2.0, size=weight_shape).astype("float32") if weighted else None
    recorded, plain, _ = _step(model, x, y, labels, sample_weight=weights)
    reference_loss = keras.losses.MeanSquaredError() if loss == "mse" else loss
    expected = _reference(plain, reference_loss, x, y, labels, weights)
    np.testing.assert_allclose(recorded, expected, rtol=1e-5, atol=1e-7)
    assert np.isnan(recorded[2])


def test_several_outputs_with_loss_weights():
    rng = np.random.default_rng(1)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(4, activation="tanh")(inputs)
    model = ts.AutoSpecModel(inputs, [keras.layers.Dense(2)(hidden), keras.layers.Dense(1)(hidden)], groups=GROUPS)
    losses = [keras.losses.SparseCategoricalCrossentropy(from_logits=True), keras.losses.MeanSquaredError()]
    model.compile(optimizer="sgd", loss=losses, loss_weights=[0.3, 2.0])
    x = rng.normal(size=(30, 6)).astype("float32")
    y = [rng.integers(0, 2, size=30), rng.normal(size=(30, 1)).astype("float32")]
    labels = _labels(30, rng)
    recorded, plain, _ = _step(model, x, y, labels)
    np.testing.assert_allclose(recorded, _reference(plain, losses, x, y, labels, loss_weights=[0.3, 2.0]),
                               rtol=1e-5)


def test_group_loss_in_the_run_file_per_step_and_per_epoch(tmp_path):
    rng = np.random.default_rng(2)
    inputs = keras.Input((6,))
    model = ts.AutoSpecModel(inputs, keras.layers.Dense(2)(inputs), groups=GROUPS, every_n_steps=2)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y, labels = rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 2, 64), _labels(64, rng)
    seen = []

    class Keep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.last_spectra is not None:
                seen.append(self.model.last_spectra.group_loss)

    model.fit(x, y, groups=labels, batch_size=16, epochs=2, verbose=0,
              callbacks=[Keep(), ts.AutoSpecCallback(tmp_path / "run.h5")])
    run = ts.load(tmp_path / "run.h5")
    assert run.has_group_loss and len(run) == 4
    for index, group in enumerate(GROUPS):
        np.testing.assert_array_equal(run.group_loss(group), [s[index] for s in seen])
    epochs, per_epoch = run.epoch_group_loss("SZ")
    np.testing.assert_array_equal(epochs, [0, 1])
    np.testing.assert_allclose(per_epoch, [np.nanmean(run.group_loss("SZ")[:2]), np.nanmean(run.group_loss("SZ")[2:])])
    assert np.all(np.isnan(run.group_loss("absent")))


def test_a_model_without_a_compiled_loss_warns_and_records_nan():
    class OwnLoss(ts.AutoSpecModel):
        def __init__(self):
            super().__init__(groups=GROUPS)
            self.dense = keras.layers.Dense(1)

        def call(self, x):
            return self.dense(x)

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            return keras.ops.mean((y_pred - y) ** 2)

    model = OwnLoss()
    model.compile(optimizer="sgd")
    with pytest.warns(ts.AutoSpecWarning, match="loss per group is not recorded"):
        model.fit(np.ones((8, 4), "float32"), np.ones((8, 1), "float32"), groups=[0, 1] * 4, verbose=0)
    assert np.all(np.isnan(model.last_spectra.group_loss))


def _evaluated_alone(model, x, y, labels, weights=None):
    """Keras's own loss on each group's samples, with the model's (unchanged) weights."""
    plain = keras.Model(model.inputs, model.outputs)
    plain.compile(loss=model.loss, loss_weights=model._compile_config.config.get("loss_weights"))
    out = []
    for group in GROUPS:
        rows = labels == group
        pick = (lambda v: {k: a[rows] for k, a in v.items()} if isinstance(v, dict) else
                [a[rows] for a in v] if isinstance(v, list) else v[rows])
        out.append(plain.evaluate(pick(x), pick(y), sample_weight=None if weights is None else pick(weights),
                                  batch_size=len(labels), verbose=0, return_dict=True)["loss"] if rows.any()
                   else np.nan)
    return np.array(out)


def _one_step(model, x, y, labels, **fit):
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=model._test_loss,
                  loss_weights=getattr(model, "_test_loss_weights", None))
    model.fit(x, y, groups=labels, batch_size=len(labels), epochs=1, shuffle=False, verbose=0, **fit)
    return model.last_spectra.group_loss


def test_names_read_as_compile_reads_them_per_output_weights_dict_targets_and_masks():
    rng = np.random.default_rng(3)
    labels = _labels(24, rng)
    # "crossentropy": compile picks the sparse categorical cross-entropy from the shapes.
    inputs = keras.Input((5,))
    model = ts.AutoSpecModel(inputs, keras.layers.Dense(3, activation="softmax")(inputs), groups=GROUPS)
    model._test_loss = "crossentropy"
    x, y = rng.normal(size=(24, 5)).astype("float32"), rng.integers(0, 3, 24)
    np.testing.assert_allclose(_one_step(model, x, y, labels), _evaluated_alone(model, x, y, labels), rtol=1e-5)
    # Two outputs, one sample weight per output; targets keyed by output name (not in order).
    inputs = keras.Input((5,))
    zeta = keras.layers.Dense(1, name="zeta")(inputs)
    alpha = keras.layers.Dense(3, name="alpha")(inputs)
    model = ts.AutoSpecModel(inputs, [zeta, alpha], groups=GROUPS)
    model._test_loss, model._test_loss_weights = ["mse", "mae"], [0.5, 2.0]
    y = [rng.normal(size=(24, 1)).astype("float32"), rng.normal(size=(24, 3)).astype("float32")]
    weights = [rng.uniform(0.5, 2, 24).astype("float32"), rng.uniform(0.5, 2, 24).astype("float32")]
    recorded = _one_step(model, x, y, labels, sample_weight=weights)
    np.testing.assert_allclose(recorded, _evaluated_alone(model, x, y, labels, weights), rtol=1e-5)
    by_name = {"zeta": y[0], "alpha": y[1]}
    np.testing.assert_allclose(_one_step(model, x, by_name, labels), _evaluated_alone(model, x, by_name, labels),
                               rtol=1e-5)
    # A masked sequence output: Keras divides by the unmasked elements.
    inputs = keras.Input((6,), dtype="int32")
    hidden = keras.layers.SimpleRNN(4, return_sequences=True)(keras.layers.Embedding(10, 3, mask_zero=True)(inputs))
    model = ts.AutoSpecModel(inputs, keras.layers.Dense(1)(hidden), groups=GROUPS)
    model._test_loss = "mse"
    ids = rng.integers(1, 10, size=(24, 6)).astype("int32")
    ids[:, 4:] = 0  # padding
    ids[::3, 2:] = 0
    y = rng.normal(size=(24, 6, 1)).astype("float32")
    np.testing.assert_allclose(_one_step(model, ids, y, labels), _evaluated_alone(model, ids, y, labels), rtol=1e-5)
