"""The three ways in, the ways group labels reach fit, options, warnings and errors."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_autospec as ts

GROUPS = ["HC", "SZ"]


def _data(n=40, features=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = rng.integers(0, 2, size=n)
    labels = np.array([0, 1] * (n // 2), dtype=np.int32)
    return x, y, labels


def _compile(model):
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


class Net(ts.AutoSpecModel):
    def __init__(self, **options):
        super().__init__(groups=GROUPS, **options)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(2)

    def call(self, x):
        return self.out(self.hidden(x))


def _functional(**options):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(2, name="out")(hidden)
    return ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=GROUPS, **options)


def _sequential():
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)]
    )


@pytest.mark.parametrize(
    "make", [Net, _functional, lambda: ts.wrap(_sequential(), groups=GROUPS)],
    ids=["subclassed", "functional", "wrapped"],
)
def test_three_ways_in_record_every_kernel(make):
    model = _compile(make())
    x, y, labels = _data()
    history = model.fit(x, y, groups=labels, batch_size=20, epochs=2, verbose=0)
    assert "accuracy" in history.history
    spectra = model.last_spectra
    assert spectra.step == 3 and spectra.groups == tuple(GROUPS)
    assert len(spectra.kernels) == 2
    assert spectra.counts.sum() == 20 and np.all(spectra.counts > 0)
    for kernel in spectra.kernels:
        for kind in ts.KINDS:
            values = spectra.spectrum(kernel, kind, "SZ")
            assert np.all(np.isfinite(values[:2])) and np.all(values[:-1] >= values[1:] - 1e-6)


def test_wrap_shares_layers_and_weights():
    plain = _sequential()
    model = ts.wrap(plain, groups=GROUPS)
    assert model.wrapped is plain
    _compile(model)
    x, y, labels = _data()
    before = [w.copy() for w in plain.get_weights()]
    model.fit(x, y, groups=labels, epochs=1, verbose=0)
    assert not np.allclose(before[0], plain.get_weights()[0])  # the original model trained
    with pytest.raises(TypeError, match="already an AutoSpecModel"):
        ts.wrap(model, groups=GROUPS)


def test_group_entry_in_dict_and_dataset_and_names():
    x, y, labels = _data()
    names = np.array(GROUPS)[labels]
    for fit_input in [
        dict(x={"x": x, "group": labels}, y=y, batch_size=20),
        dict(x={"x": x, "group": names}, y=y, batch_size=20),
        dict(x=tf.data.Dataset.from_tensor_slices(({"x": x, "group": labels}, y)).batch(20)),
        dict(x=tf.data.Dataset.from_tensor_slices(({"x": x, "group": names}, y)).batch(20)),
    ]:
        model = _compile(_functional())
        model.fit(**fit_input, epochs=1, verbose=0, shuffle=False)
        np.testing.assert_array_equal(model.last_spectra.counts, [10, 10])


def test_evaluate_predict_and_validation_with_or_without_groups():
    model = _compile(_functional())
    x, y, labels = _data()
    history = model.fit(
        x, y, groups=labels, validation_data=({"x": x, "group": labels}, y), epochs=1, verbose=0
    )
    assert "val_loss" in history.history
    with_groups = model.evaluate({"x": x, "group": labels}, y, verbose=0)
    without = model.evaluate(x, y, verbose=0)
    np.testing.assert_allclose(with_groups[: len(without)], without)  # then the results per group
    assert len(with_groups) == len(without) * (1 + len(model.groups))
    np.testing.assert_allclose(model.predict({"x": x, "group": labels}, verbose=0), model.predict(x, verbose=0))


def test_unassigned_and_absent_groups():
    model = _compile(ts.AutoSpecModel(inputs=(i := keras.Input((6,))), outputs=keras.layers.Dense(2)(i),
                                      groups=["a", "b", "never"]))
    x, y, _ = _data(n=10)
    labels = np.array([0, 0, 1, -1, 0, 1, -1, 0, 0, 1])
    model.fit(x, y, groups=labels, batch_size=10, epochs=1, verbose=0)
    spectra = model.last_spectra
    np.testing.assert_array_equal(spectra.counts, [5, 3, 0])
    for kind in ts.KINDS:
        assert np.all(np.isnan(spectra.spectrum(spectra.kernels[0], kind, "never")))
        assert not np.any(np.isnan(spectra.spectrum(spectra.kernels[0], kind, "b")[:2]))


def test_options_layers_kinds_top_k_every_n_steps():
    model = _compile(_functional(layers=["out"], kinds=["grad"], top_k=1, every_n_steps=3))
    x, y, labels = _data()
    recorded = []

    class Collect(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            spectra = self.model.last_spectra
            recorded.append(None if spectra is None else spectra.step)

    model.fit(x, y, groups=labels, batch_size=10, epochs=2, verbose=0, callbacks=[Collect()])
    assert recorded == [0, None, None, 3, None, None, 6, None]
    assert [k.path for k in model.tracked_kernels] == ["out/kernel"]
    assert model.tracked_kernels[0].widths == {"grad": 1}


def test_every_n_steps_follows_the_optimizer_step_and_trains_as_keras_in_between():
    x, y, labels = _data()
    model = _compile(_functional(every_n_steps=2))
    inputs = keras.Input((6,))
    plain = _compile(keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(8, activation="relu")(inputs))))
    plain.set_weights(model.get_weights())
    steps = []
    for start in (0, 10, 20, 30):
        batch = slice(start, start + 10)
        model.train_on_batch({"x": x[batch], "group": labels[batch]}, y[batch])
        plain.train_on_batch(x[batch], y[batch])
        spectra = model.last_spectra
        steps.append(None if spectra is None else spectra.step)
    assert steps == [0, None, 2, None]
    for trained, expected in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(trained, expected, rtol=1e-6, atol=1e-7)
    model.optimizer.iterations.assign(5)  # as restored from a checkpoint
    model.train_on_batch({"x": x[:10], "group": labels[:10]}, y[:10])
    assert model.last_spectra is None
    model.train_on_batch({"x": x[:10], "group": labels[:10]}, y[:10])
    assert model.last_spectra.step == 6


def test_every_n_steps_reports_the_last_step_that_ran():
    x, y, labels = _data(n=30)
    model = _compile(_functional(every_n_steps=2))
    # Unknown length: Keras makes one more call per epoch, which ends the data and runs no step.
    data = tf.data.Dataset.from_tensor_slices(({"x": x, "group": labels}, y)).filter(lambda *_: True).batch(10)
    model.fit(data, epochs=1, verbose=0)
    assert model.last_spectra.step == 2  # steps 0, 1, 2 ran; 2 was recorded
    model.optimizer.iterations.assign(5)
    model.train_on_batch({"x": x[:10], "group": labels[:10]}, y[:10])
    assert model.last_spectra is None  # step 5 ran unrecorded
    # A custom loop's train_step records at every call.
    tf.function(model.train_step)(({"x": x[:10], "group": labels[:10]}, y[:10]))
    assert model.last_spectra.step == 6
    bad = np.array(labels)
    bad[5] = 7  # a label outside the groups, in step 7: not recorded, still refused
    bad_data = tf.data.Dataset.from_tensor_slices(({"x": x, "group": bad}, y)).batch(10)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Group labels must be whole numbers in -1..1.*these are not:.*\[7\]"):
        model.fit(bad_data, epochs=1, verbose=0)


def test_default_options_record_everything_every_step():
    model = _compile(_functional())
    assert model.autospec_kinds == ts.KINDS and model.autospec_top_k is None
    assert model.autospec_every_n_steps == 1 and model.autospec_layers is None


def test_unsupported_layers_warn_once_by_name_and_training_goes_on():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, name="first")(inputs)
    h = keras.layers.LayerNormalization(name="norm")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Reshape((8, 1))(h)
    h = keras.layers.SimpleRNN(3, dropout=0.2, name="rnn")(h)  # recurrent dropout is not tracked
    model = _compile(ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2, name="last")(h), groups=GROUPS))
    x, y, labels = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, groups=labels, epochs=2, verbose=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, ts.AutoSpecWarning)]
    assert sum("'norm'" in m for m in messages) == 1
    assert sum("'rnn'" in m for m in messages) == 1
    assert sum("'bn'" in m and "couples the samples" in m for m in messages) == 1
    assert [k.path for k in model.tracked_kernels] == ["first/kernel", "last/kernel"]


def test_jit_compile_on_cpu_falls_back_without_hanging():
    model = _functional()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    x, y, labels = _data()
    with pytest.warns(ts.AutoSpecWarning, match="jit_compile"):
        model.fit(x, y, groups=labels, epochs=1, verbose=0)
    assert model.last_spectra is not None


def test_xla_compiled_step_masks_groups_and_matches_the_eager_route(monkeypatch):
    from tf_autospec import model as model_module

    monkeypatch.setattr(model_module, "XLA_ON_CPU", True)  # tiny matrices: fast enough on CPU
    x, y, labels = _data(n=12)
    labels = np.array([0, 1, 1, -1, 0, 1, 1, 1, -1, 0, 1, 1])
    results = []
    for jit in (True, False):
        keras.utils.set_random_seed(5)
        model = _functional()
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit)
        model.fit(x, y, groups=labels, batch_size=12, epochs=2, shuffle=False, verbose=0)
        assert model.jit_compile is jit
        results.append(model.last_spectra)
    compiled, eager = results
    np.testing.assert_array_equal(compiled.counts, eager.counts)
    for key, values in eager.spectra.items():
        np.testing.assert_allclose(compiled.spectra[key], values, rtol=1e-4, atol=1e-6, err_msg=str(key))


@pytest.mark.parametrize(
    "labels,match",
    [
        (np.array([0, 5] * 20), "outside 0..1"),
        (np.array(["HC", "XX"] * 20), "Unknown group labels"),
        (np.array([0.0, np.nan] * 20), "NaN"),
        (np.zeros((40, 2)), "1-D"),
        (np.zeros(39, dtype=int), "39 labels"),
    ],
)
def test_bad_labels_are_named(labels, match):
    model = _compile(_functional())
    x, y, _ = _data()
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, groups=labels, epochs=1, verbose=0)


def test_missing_groups_and_bad_declarations():
    model = _compile(_functional())
    x, y, _ = _data()
    with pytest.raises(ValueError, match="needs a group label per sample"):
        model.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="set of groups up front"):
        ts.AutoSpecModel(inputs=(i := keras.Input((3,))), outputs=keras.layers.Dense(1)(i))
    with pytest.raises(ValueError, match="distinct"):
        ts.wrap(_sequential(), groups=["a", "a"])
    with pytest.raises(ValueError, match="kinds"):
        _functional(kinds=["gradient"])
    with pytest.raises(ValueError, match="not a tracked layer"):
        model = _compile(_functional(layers=["nope"]))
        model.fit(x, y, groups=np.zeros(40, int), epochs=1, verbose=0)


def test_custom_layer_with_weights_is_skipped_with_a_warning():
    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.scale

    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(2, name="last")(Scale(name="scale")(inputs))
    model = _compile(ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=GROUPS))
    x, y, labels = _data()
    with pytest.warns(ts.AutoSpecWarning, match="'scale' \\(Scale\\)"):
        model.fit(x, y, groups=labels, epochs=1, verbose=0)
    assert [k.path for k in model.tracked_kernels] == ["last/kernel"]


def test_layer_shared_by_two_sub_models_is_tracked_once():
    shared = keras.layers.Dense(4, name="shared")
    first = keras.Sequential([keras.Input((6,)), shared], name="first")
    second = keras.Sequential([keras.Input((6,)), shared], name="second")
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(2, name="last")(keras.layers.Concatenate()([first(inputs), second(inputs)]))
    model = _compile(ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=GROUPS))
    x, y, labels = _data()
    model.fit(x, y, groups=labels, batch_size=40, epochs=1, verbose=0)
    assert [k.path for k in model.tracked_kernels] == [shared.kernel.path, "last/kernel"]
    assert model.last_spectra.counts.sum() == 40


def test_mixed_precision_spectra_have_the_loss_scale_divided_out():
    x, y, labels = _data()
    results = []
    for policy in ("float32", "mixed_float16"):
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(3)
        model = _compile(_functional())
        model.fit(x, y, groups=labels, batch_size=40, epochs=1, shuffle=False, verbose=0)
        results.append(model.last_spectra)
    keras.mixed_precision.set_global_policy("float32")
    for key, values in results[0].spectra.items():
        # float16 forward/backward: agreement to float16 accuracy, not to float32's.
        np.testing.assert_allclose(results[1].spectra[key], values, rtol=2e-2, atol=2e-3 * np.nanmax(values),
                                   err_msg=str(key))
