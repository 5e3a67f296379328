"""``precision="float32"``: Gram matrices in float32, every layer family within the
documented bound of the independent float64 reference (tests/reference.py). The recurrent
families are checked in tests/test_recurrent_exact.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_autospec as ts
from test_layers_exact import (
    build,
    check_layer,
    conv_product,
    conv_rows,
    data,
    dense_product,
    flat_rows,
    grad_only,
)


def test_dense_on_both_routes():
    inputs = keras.Input((32,))
    hidden, last = keras.layers.Dense(24, activation="relu"), keras.layers.Dense(3)
    model = build(inputs, last(hidden(inputs)), precision="float32")
    x, y = data((32,), 3)
    for layer in (hidden, last):  # rows route, fan route
        check_layer(model, layer, x, y, dense_product(layer), flat_rows(layer.kernel.shape[0]))


@pytest.mark.parametrize("family", ["conv1d", "conv2d", "conv3d"])
def test_convolutions(family):
    shape, layer = {
        "conv1d": ((10, 3), keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="tanh")),
        "conv2d": ((15, 15, 1), keras.layers.Conv2D(6, 2, activation="relu")),  # rows far exceed fan_in
        "conv3d": ((5, 5, 4, 2), keras.layers.Conv3D(3, 2, strides=(1, 2, 2), padding="same", activation="relu")),
    }[family]
    inputs = keras.Input(shape)
    model = build(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(layer(inputs))), precision="float32")
    x, y = data(shape, 2)
    check_layer(model, layer, x, y, conv_product(layer), conv_rows(layer))


def test_embedding_and_einsum_dense():
    vocabulary = 20
    inputs = keras.Input((5,), dtype="int32")
    layer = keras.layers.Embedding(vocabulary, 4)
    model = build(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(layer(inputs))), precision="float32")
    x, y = data((5,), 3, integer_inputs=vocabulary)
    check_layer(model, layer, x, y, lambda ids: tf.gather(layer.embeddings, ids),
                lambda ids: np.eye(vocabulary)[ids.reshape(-1)])

    inputs = keras.Input((4, 6))
    layer = keras.layers.EinsumDense("abc,cde->abde", output_shape=(4, 2, 3), bias_axes="de", activation="relu")
    model = build(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(layer(inputs))), precision="float32")
    x, y = data((4, 6), 2)
    check_layer(model, layer, x, y, lambda a: tf.einsum("abc,cde->abde", a, layer.kernel) + layer.bias,
                flat_rows(6), fan_out=6)


def test_multi_head_attention():
    inputs = keras.Input((5, 8))
    attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    model = build(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(attention(inputs, inputs))),
                  precision="float32")
    x, y = data((5, 8), 2)
    grad_only(model, x, y, [attention._query_dense.kernel, attention._output_dense.kernel], rows_per_sample=5)


def test_zero_singular_values_stay_zero_and_the_option_is_checked():
    # A 2-logit softmax: Δ rows sum to zero, so σ_2(Δ) = σ_2(G) = 0 exactly.
    inputs = keras.Input((6,))
    model = ts.AutoSpecModel(inputs, keras.layers.Dense(2, activation="softmax")(inputs), groups=["a", "b"],
                             precision="float32")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 2, 64), groups=rng.integers(0, 2, 64),
              batch_size=64, verbose=0)
    for kind in ("grad", "delta"):
        assert (model.last_spectra.spectrum("dense/kernel", kind, "a")[1:] == 0).all()
    with pytest.raises(ValueError, match="precision must be one of"):
        ts.AutoSpecModel(inputs, keras.layers.Dense(2)(inputs), groups=["a", "b"], precision="float16")
