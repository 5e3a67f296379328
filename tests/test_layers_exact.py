"""Every supported layer family against the independent brute force (tests/reference.py).

Each model is trained for one step on one batch with four declared groups: three
imbalanced groups, unassigned (-1) samples, and group 3 absent from the batch.
"""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_autospec as ts
from tf_autospec.capture import conv
from reference import (
    assert_spectrum_matches,
    group_gradients,
    precision_tolerance,
    product_factors,
    singular_values,
)

GROUPS = ("a", "b", "c", "absent")
LABELS = np.array([0, 1, 0, 0, -1, 2, 0, 1, 0, -1, 0, 0])
N = len(LABELS)
LOSS = keras.losses.MeanSquaredError(reduction=None)


def im2col(x, kernel_size, strides, dilation, padding):
    """Patches of a channels-last ``x`` in kernel order (offsets, then channel), by hand."""
    spatial = x.shape[1:-1]
    pads, outs = [], []
    for size, k, s, d in zip(spatial, kernel_size, strides, dilation):
        span = (k - 1) * d + 1
        if padding == "same":
            out = -(-size // s)
            total = max((out - 1) * s + span - size, 0)
            pads.append((total // 2, total - total // 2))
        elif padding == "causal":
            pads.append((span - 1, 0))
        else:
            pads.append((0, 0))
        outs.append((size + sum(pads[-1]) - span) // s + 1)
    padded = np.pad(x, [(0, 0)] + pads + [(0, 0)])
    rows = []
    for n in range(x.shape[0]):
        for position in itertools.product(*[range(o) for o in outs]):
            patch = []
            for offset in itertools.product(*[range(k) for k in kernel_size]):
                index = tuple(p * s + o * d for p, s, o, d in zip(position, strides, offset, dilation))
                patch.append(padded[(n, *index)])
            rows.append(np.concatenate(patch))
    return np.array(rows)


def conv_product(layer):
    padding = "valid" if layer.padding == "causal" else layer.padding.upper()

    def product(a):
        if layer.padding == "causal":
            a = tf.pad(a, [[0, 0], [(layer.kernel_size[0] - 1) * layer.dilation_rate[0], 0], [0, 0]])
        return tf.nn.convolution(
            a, layer.kernel, strides=layer.strides, padding=padding.upper(),
            dilations=layer.dilation_rate,
        ) + layer.bias

    return product


def conv_rows(layer):
    return lambda a: im2col(a, layer.kernel_size, layer.strides, layer.dilation_rate, layer.padding)


def dense_product(layer):
    return lambda a: tf.matmul(a, layer.kernel) + layer.bias


def flat_rows(width):
    return lambda a: a.reshape(-1, width)


def train_one_step(model, x, y, labels=LABELS):
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x, y, groups=labels, batch_size=N, epochs=1, shuffle=False, verbose=0)
    return model.last_spectra


def check_layer(model, layer, x, y, product, input_rows, fan_out=None, groups=GROUPS, labels=LABELS):
    """Compares grad, act and delta of ``layer`` for every group with the brute force,
    within the bound of the model's precision."""
    kernel = layer.embeddings if isinstance(layer, keras.layers.Embedding) else layer.kernel
    grads = group_gradients(model, kernel, x, y, labels, len(groups), LOSS)
    rows_a, rows_delta = product_factors(
        model, layer, x, y, labels, len(groups), LOSS, product, input_rows, fan_out
    )
    spectra = train_one_step(model, x, y, labels)
    fan_in, fan_out = rows_a[0].shape[1], rows_delta[0].shape[1]
    np.testing.assert_array_equal(spectra.counts, [np.sum(labels == g) for g in range(len(groups))])
    for g, name in enumerate(groups):
        if rows_a[g] is None:
            for kind in ts.KINDS:
                assert np.all(np.isnan(spectra.spectrum(model.kernel_path(kernel), kind, name))), (kind, name)
            continue
        matrix = grads[g].reshape(fan_in, fan_out)
        # The hand-made factors must reproduce the tape's group gradient.
        np.testing.assert_allclose(rows_a[g].T @ rows_delta[g], matrix, atol=1e-5 * np.abs(matrix).max())
        rows = rows_a[g].shape[0]
        for kind, reference, bound in (("grad", matrix, min(rows, fan_in, fan_out)),
                                       ("act", rows_a[g], min(rows, fan_in)),
                                       ("delta", rows_delta[g], min(rows, fan_out))):
            tolerance = precision_tolerance(model.autospec_precision, kind, fan_in, fan_out)
            recorded = spectra.spectrum(model.kernel_path(kernel), kind, name)
            assert_spectrum_matches(recorded, singular_values(reference), bound, f"{kind} {name}", tolerance)


def data(shape, outputs, seed=0, integer_inputs=None):
    rng = np.random.default_rng(seed)
    if integer_inputs:
        x = rng.integers(0, integer_inputs, size=(N, *shape)).astype("int32")
    else:
        x = rng.normal(size=(N, *shape)).astype("float32")
    return x, rng.normal(size=(N, outputs)).astype("float32")


def build(inputs, outputs, precision="float64"):
    return ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=GROUPS, precision=precision)


@pytest.mark.parametrize("layer_index", [0, 1])
def test_dense_rows_and_fan_routes(layer_index):
    # 24-wide layer: a group's rows (≤7) < fans -> rows route; 3 outputs -> fan route.
    inputs = keras.Input((32,))
    hidden = keras.layers.Dense(24, activation="relu")
    last = keras.layers.Dense(3)
    model = build(inputs, last(hidden(inputs)))
    layer = [hidden, last][layer_index]
    x, y = data((32,), 3)
    check_layer(model, layer, x, y, dense_product(layer), flat_rows(layer.kernel.shape[0]))


def test_dense_on_sequences_uses_every_position():
    inputs = keras.Input((3, 6))
    layer = keras.layers.Dense(5, activation="tanh")
    model = build(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(layer(inputs))))
    x, y = data((3, 6), 2)
    check_layer(model, layer, x, y, dense_product(layer), flat_rows(6))


@pytest.mark.parametrize(
    "options",
    [
        dict(filters=3, kernel_size=3, strides=2, padding="same"),
        dict(filters=4, kernel_size=2, dilation_rate=2, padding="valid"),
        dict(filters=2, kernel_size=(3, 2), strides=(1, 2), padding="valid"),
    ],
)
def test_conv2d(options):
    inputs = keras.Input((7, 7, 2))
    layer = keras.layers.Conv2D(activation="relu", **options)
    model = build(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(layer(inputs))))
    x, y = data((7, 7, 2), 3)
    check_layer(model, layer, x, y, conv_product(layer), conv_rows(layer))


def test_conv2d_rows_far_exceed_fan_in():
    # 1 channel, 2x2 kernel: fan_in 4, a group's rows = samples x 196 positions.
    inputs = keras.Input((15, 15, 1))
    layer = keras.layers.Conv2D(6, 2, activation="relu")
    model = build(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(layer(inputs))))
    x, y = data((15, 15, 1), 2)
    check_layer(model, layer, x, y, conv_product(layer), conv_rows(layer))


@pytest.mark.parametrize(
    "options",
    [
        dict(filters=4, kernel_size=3, padding="causal", dilation_rate=2),
        dict(filters=2, kernel_size=2, strides=2, padding="same"),
    ],
)
def test_conv1d(options):
    inputs = keras.Input((10, 3))
    layer = keras.layers.Conv1D(activation="tanh", **options)
    model = build(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(layer(inputs))))
    x, y = data((10, 3), 2)
    check_layer(model, layer, x, y, conv_product(layer), conv_rows(layer))


@pytest.mark.parametrize("padding", ["same", "causal"])
def test_conv1d_patches_of_unknown_length_reproduce_the_convolution(padding):
    # Traced with the length unknown: the patches' padding and slices are tensors.
    layer = keras.layers.Conv1D(4, 3, strides=2 if padding == "same" else 1, padding=padding, use_bias=False)
    x = np.random.default_rng(0).normal(size=(2, 9, 3)).astype("float32")
    expected = layer(x).numpy()
    patches = tf.function(
        lambda inputs: conv._patches(layer, inputs), input_signature=[tf.TensorSpec([None, None, 3])]
    )(x).numpy()
    product = patches.astype(np.float64) @ layer.kernel.numpy().reshape(-1, 4)
    np.testing.assert_allclose(product.reshape(expected.shape), expected, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        dict(filters=2, kernel_size=2, dilation_rate=2, padding="valid"),
        dict(filters=3, kernel_size=2, strides=(1, 2, 2), padding="same"),
    ],
)
def test_conv3d(options):
    inputs = keras.Input((5, 5, 4, 2))
    layer = keras.layers.Conv3D(activation="relu", **options)
    model = build(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(layer(inputs))))
    x, y = data((5, 5, 4, 2), 2)
    check_layer(model, layer, x, y, conv_product(layer), conv_rows(layer))


def test_embedding():
    vocabulary = 20
    inputs = keras.Input((5,), dtype="int32")
    layer = keras.layers.Embedding(vocabulary, 4)
    model = build(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(layer(inputs))))
    x, y = data((5,), 3, integer_inputs=vocabulary)
    check_layer(
        model, layer, x, y,
        lambda ids: tf.gather(layer.embeddings, ids),
        lambda ids: np.eye(vocabulary)[ids.reshape(-1)],
    )


def test_einsum_dense():
    inputs = keras.Input((4, 6))
    layer = keras.layers.EinsumDense("abc,cde->abde", output_shape=(4, 2, 3), bias_axes="de", activation="relu")
    model = build(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(layer(inputs))))
    x, y = data((4, 6), 2)
    check_layer(
        model, layer, x, y,
        lambda a: tf.einsum("abc,cde->abde", a, layer.kernel) + layer.bias,
        flat_rows(6),
        fan_out=6,
    )


def grad_only(model, x, y, kernels, rows_per_sample):
    """Checks ``grad`` of the given kernel variables against the group-masked tape."""
    references = {model.kernel_path(k): group_gradients(model, k, x, y, LABELS, len(GROUPS), LOSS) for k in kernels}
    spectra = train_one_step(model, x, y)
    tracked = {k.path: k for k in model.tracked_kernels}
    for path, grads in references.items():
        kernel = tracked[path]
        for g, name in enumerate(GROUPS):
            recorded = spectra.spectrum(path, "grad", name)
            rows = np.sum(LABELS == g) * rows_per_sample
            if rows == 0:
                assert np.all(np.isnan(recorded))
                continue
            matrix = grads[g].reshape(kernel.fan_in, kernel.fan_out)
            bound = min(kernel.fan_in, kernel.fan_out, rows)
            tolerance = precision_tolerance(model.autospec_precision, "grad", kernel.fan_in, kernel.fan_out)
            assert_spectrum_matches(recorded, singular_values(matrix), bound, f"{path} {name}", tolerance)


def test_multi_head_attention_projections_are_found_and_exact():
    inputs = keras.Input((5, 8))
    attention = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    model = build(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(attention(inputs, inputs))))
    x, y = data((5, 8), 2)
    kernels = [attention._query_dense.kernel, attention._key_dense.kernel,
               attention._value_dense.kernel, attention._output_dense.kernel]
    grad_only(model, x, y, kernels, rows_per_sample=5)
    assert {k.path for k in model.tracked_kernels} >= {model.kernel_path(k) for k in kernels}


def test_shared_layer_called_twice_sums_both_calls():
    inputs = keras.Input((6,))
    shared = keras.layers.Dense(6, activation="tanh")
    model = build(inputs, keras.layers.Dense(2)(shared(shared(inputs))))
    x, y = data((6,), 2)
    grad_only(model, x, y, [shared.kernel], rows_per_sample=2)


def test_layers_nested_in_models_are_found():
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu")], name="inner")
    inputs = keras.Input((6,))
    model = build(inputs, keras.layers.Dense(2)(inner(inputs)))
    x, y = data((6,), 2)
    grad_only(model, x, y, [inner.layers[0].kernel], rows_per_sample=1)


TWO_GROUPS = ("a", "b")
TWO_LABELS = np.array([0, 1, 0, 0, -1, 1, 0, 1, 0, -1, 0, 0])  # imbalanced, with samples in no group


def _two_group_case(case):
    """``(inputs, layer, outputs, x, y, product, input_rows)`` of a layer whose whole batch
    (12 samples) has fewer rows than its smaller fan: the rows route, for any grouping."""
    if case == "embedding":
        vocabulary = 40
        inputs = keras.Input((2,), dtype="int32")
        layer = keras.layers.Embedding(vocabulary, 30)  # 24 rows < 30
        x, y = data((2,), 3, integer_inputs=vocabulary)
        return (inputs, layer, keras.layers.Dense(3)(keras.layers.Flatten()(layer(inputs))), x, y,
                lambda ids: tf.gather(layer.embeddings, ids), lambda ids: np.eye(vocabulary)[ids.reshape(-1)])
    if case == "conv1d":  # 2 positions per sample: 24 rows < 30 = 3 × 10
        inputs = keras.Input((4, 10))
        layer = keras.layers.Conv1D(32, 3, activation="tanh")
        x, y = data((4, 10), 2)
        return (inputs, layer, keras.layers.Dense(2)(keras.layers.Flatten()(layer(inputs))), x, y,
                conv_product(layer), conv_rows(layer))
    if case == "dense_on_sequences":  # 2 positions per sample: 24 rows < 40
        inputs = keras.Input((2, 40))
        layer = keras.layers.Dense(40, activation="tanh")
        x, y = data((2, 40), 2)
        return (inputs, layer, keras.layers.Dense(2)(keras.layers.Flatten()(layer(inputs))), x, y,
                dense_product(layer), flat_rows(40))
    inputs = keras.Input((32,))
    layer = keras.layers.Dense(24, activation="relu")  # 12 rows < 24
    x, y = data((32,), 3)
    return inputs, layer, keras.layers.Dense(3)(layer(inputs)), x, y, dense_product(layer), flat_rows(32)


@pytest.mark.parametrize("geometry", [True, False])
@pytest.mark.parametrize("case", ["dense", "dense_on_sequences", "conv1d", "embedding"])
def test_two_groups_on_the_rows_route_with_and_without_the_batch_gram(case, geometry, monkeypatch):
    """Two groups recording their pair's geometry read their row Gram matrices from one of
    the whole batch (`spectra.BatchGramRows`: cheaper than the groups' and the pair's
    own); without the geometry each group's is formed. Both give the exact spectra."""
    from tf_autospec import spectra as spectra_module

    built = []
    of = spectra_module.BatchGramRows.of
    monkeypatch.setattr(spectra_module.BatchGramRows, "of",
                        classmethod(lambda cls, *args: built.append(args) or of(*args)))
    inputs, layer, outputs, x, y, product, input_rows = _two_group_case(case)
    model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=TWO_GROUPS, geometry=geometry)
    check_layer(model, layer, x, y, product, input_rows, groups=TWO_GROUPS, labels=TWO_LABELS)
    assert bool(built) == geometry
