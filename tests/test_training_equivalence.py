"""AutoSpecModel's update is exactly keras.Model's: same weights after several steps."""

import keras
import numpy as np
import pytest

import tf_autospec as ts


def _layers_out(inputs):
    h = keras.layers.Conv1D(4, 3, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-2))(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dropout(0.3, seed=7)(h)
    h = keras.layers.Dense(8, activation="tanh", kernel_regularizer=keras.regularizers.L1(1e-3))(h)
    return keras.layers.Dense(3, dtype="float32")(h)


def _pair():
    inputs = keras.Input((10, 2))
    plain = keras.Model(inputs, _layers_out(inputs))
    spec_inputs = keras.Input((10, 2))
    spec = ts.AutoSpecModel(inputs=spec_inputs, outputs=_layers_out(spec_inputs), groups=["a", "b", "c"])
    spec.set_weights(plain.get_weights())
    return plain, spec


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_weights_after_several_steps_equal_plain_fit(policy):
    keras.mixed_precision.set_global_policy(policy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 10, 2)).astype("float32")
    y = rng.integers(0, 3, size=48)
    labels = rng.integers(-1, 3, size=48)
    histories = []
    plain, spec = _pair()
    for model in (plain, spec):
        keras.utils.set_random_seed(99)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        extra = {"groups": labels} if model is spec else {}
        histories.append(model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0, **extra).history)
    assert spec.last_spectra is not None and spec.last_spectra.step == 8
    for w_plain, w_spec in zip(plain.get_weights(), spec.get_weights()):
        np.testing.assert_allclose(w_spec, w_plain, rtol=1e-6, atol=1e-6)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(histories[1][key], histories[0][key], rtol=1e-6)
    if policy == "mixed_float16":
        assert isinstance(spec.optimizer, keras.optimizers.LossScaleOptimizer)
