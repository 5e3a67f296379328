"""Reference architectures: a function building the layers on an input tensor, and a
builder returning the `AutoSpecModel` around them (the benchmarks also train the same
layers as a plain `keras.Model`)."""

import keras

import tf_autospec as ts


def mlp_outputs(inputs, hidden=(512, 256), outputs=10):
    """Flatten, Dense layers with ReLU, linear output (the paper's 784-512-256-10)."""
    h = keras.layers.Flatten()(inputs)
    for width in hidden:
        h = keras.layers.Dense(width, activation="relu")(h)
    return keras.layers.Dense(outputs)(h)


def mnist_cnn_outputs(inputs, outputs=10):
    """Conv 32 → pool → Conv 64 → pool → Dense 128 → outputs (3×3 kernels, valid padding)."""
    h = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(128, activation="relu")(h)
    return keras.layers.Dense(outputs)(h)


def _builder(layers_fn):
    def build(groups, input_shape=(28, 28, 1), options=None, **sizes):
        inputs = keras.Input(input_shape)
        return ts.AutoSpecModel(
            inputs=inputs, outputs=layers_fn(inputs, **sizes), groups=groups, **(options or {})
        )

    build.__doc__ = f"""`AutoSpecModel` of {layers_fn.__name__}: {layers_fn.__doc__}

    Args:
        groups: group names.
        input_shape: shape of one sample.
        options: `AutoSpecModel` options (``kinds``, ``top_k``, ``every_n_steps``...).
        **sizes: size arguments of `{layers_fn.__name__}`.
    """
    return build


mlp = _builder(mlp_outputs)
mnist_cnn = _builder(mnist_cnn_outputs)
