"""Independent brute-force references for the tests (float64 NumPy SVD).

Nothing here uses tf_autospec's capture or spectra code: each group's gradient
comes from its own tape pass on the group-masked loss, and the factors ``A`` and
``Δ`` are recomputed from an explicit forward pass.
"""

import keras
import numpy as np
import tensorflow as tf

GROUP_TOL = 1e-4


def singular_values(matrix):
    return np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)


def per_sample_loss(loss, y, pred):
    """Per-sample loss ``ℓ_n`` such that the compiled loss is ``Σ ℓ_n / N``."""
    values = loss(y, pred)
    if values.shape.rank > 1:
        values = tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), axis=1)
    return values


def group_gradients(model, kernel, x, y, labels, num_groups, loss):
    """``G_g`` as the gradient of ``Σ_{n∈g} ℓ_n / N`` w.r.t. ``kernel``, one tape each."""
    labels = np.asarray(labels)
    out = []
    for g in range(num_groups):
        mask = tf.constant((labels == g).astype("float32"))
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            ell = per_sample_loss(loss, y, pred)
            masked = tf.reduce_sum(ell * mask) / tf.cast(tf.shape(ell)[0], tf.float32)
        grad = tape.gradient(masked, kernel)
        out.append(tf.convert_to_tensor(grad).numpy().astype(np.float64))
    return out


def product_factors(model, layer, x, y, labels, num_groups, loss, product, input_rows, fan_out=None):
    """Per group: rows of ``A`` and of ``Δ = ∂L_g/∂Y`` from an explicit forward pass.

    Args:
        model: a functional model in which ``layer`` is called once.
        product: ``product(A) -> Y`` written out with TF ops (the layer's product plus bias).
        input_rows: ``input_rows(A) -> [rows, fan_in]`` NumPy, written out by hand.
        fan_out: width of a ``Δ`` row when the product has several output axes.
    """
    head = keras.Model(model.input, layer.input)
    if layer.output is model.outputs[0]:
        tail = lambda tensor, training: tensor  # noqa: E731
    else:
        tail = keras.Model(layer.output, model.output)
    activation = getattr(layer, "activation", keras.activations.linear)
    a = head(x, training=True)
    labels = np.asarray(labels)
    rows_a, rows_delta = [], []
    for g in range(num_groups):
        mask = tf.constant((labels == g).astype("float32"))
        with tf.GradientTape() as tape:
            y_product = product(a)
            tape.watch(y_product)
            pred = tail(activation(y_product), training=True)
            ell = per_sample_loss(loss, y, pred)
            masked = tf.reduce_sum(ell * mask) / tf.cast(tf.shape(ell)[0], tf.float32)
        delta = tape.gradient(masked, y_product).numpy().astype(np.float64)
        members = labels == g
        a_np = np.asarray(a)
        rows_a.append(input_rows(a_np[members]) if members.any() else None)
        rows_delta.append(delta[members].reshape(-1, fan_out or delta.shape[-1]) if members.any() else None)
    return rows_a, rows_delta


def precision_tolerance(precision, kind, fan_in, fan_out):
    """The documented error bound relative to σ_max (docs/method.md, "Precision"): 1e-4 in
    float64; ``√(w·ε₃₂)`` with Gram matrices in float32, ``w`` the matrix's width on the
    kernel's side."""
    if precision == "float64":
        return GROUP_TOL
    width = {"act": fan_in, "delta": fan_out, "grad": max(fan_in, fan_out)}[kind]
    return float(np.sqrt(width * np.finfo(np.float32).eps))


def assert_spectrum_matches(recorded, reference, bound, label, tolerance=GROUP_TOL):
    """``recorded[:bound]`` equals the reference within ``tolerance × σ_max``; NaN beyond
    ``bound``."""
    recorded = np.asarray(recorded, dtype=np.float64)
    reference = np.sort(np.asarray(reference, dtype=np.float64))[::-1]
    width = recorded.shape[0]
    n = min(bound, width)
    scale = max(reference[0] if reference.size else 0.0, 1e-30)
    expected = np.zeros(n)
    expected[: min(n, reference.size)] = reference[:n]
    error = np.max(np.abs(recorded[:n] - expected)) if n else 0.0
    assert error <= tolerance * scale, f"{label}: max |error| {error:.3g} > {tolerance:.3g} × σ_max {scale:.3g}"
    assert np.all(np.isnan(recorded[n:])), f"{label}: values beyond the rank bound {n} are not NaN"
