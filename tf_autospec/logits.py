"""What the traced training step reads of the graph: the logits of a softmax, and layers
that read the model's input."""

import keras
import tensorflow as tf

from tf_autospec.keras_internals import tree

# Operations that move or re-type values without changing them (Flatten, Reshape, casts).
_DATA_PRESERVING_OPS = ("Identity", "Reshape", "Cast", "Transpose", "ExpandDims", "Squeeze")


def reshaped_from(tensor, sources, depth=16):
    """Whether ``tensor`` is one of ``sources`` or made from one of them by operations that
    only reshape or re-type it (a layer reading the model's input through Flatten)."""
    for _ in range(depth):
        if any(tensor is source or _same_graph_tensor(tensor, source) for source in sources):
            return True
        op = getattr(tensor, "op", None)
        if op is None or op.type not in _DATA_PRESERVING_OPS:
            return False
        tensor = op.inputs[0]
    return False


def _same_graph_tensor(a, b):
    try:
        return a.graph is b.graph and a.name == b.name
    except AttributeError:  # eager tensors have no graph
        return False


def unscaled_delta(gradient, product, loss_scale, zero_sum):
    """``Δ`` without the loss scale, in float32 so that float16 values do not underflow;
    with ``zero_sum``, each row's mean removed (see `softmax_logits`)."""
    if gradient is None:
        return tf.zeros_like(product, dtype=tf.float32)
    delta = tf.cast(gradient, tf.float32) / tf.cast(loss_scale, tf.float32)
    if zero_sum:
        delta -= tf.reduce_mean(delta, axis=-1, keepdims=True)
    return delta


_SOFTMAX_CROSSENTROPIES = (keras.losses.SparseCategoricalCrossentropy, keras.losses.CategoricalCrossentropy)
_OPS_AFTER_THE_SOFTMAX = ("Identity", "Cast")


def softmax_logits(loss, y_pred, products):
    """The captured products that the loss reads as softmax logits, found while the step is
    traced (any way the model is built).

    Under a softmax the gradient at the logits, ``Jᵀv`` with ``J = diag(p) − ppᵀ``, has
    rows that sum to zero exactly, whatever the loss; so has ``p − y``, the gradient of a
    cross-entropy from logits. ``Δ``, and so ``G_g``, then lose one rank. Keras computes
    ``p − y`` in float32, and once the model is confident (``p ≈ 1``) the subtraction leaves
    round-off of up to ``ε / (1 − p)`` relative to the row, far above any numerical-rank
    tolerance: the zero singular value would come back as up to ~1e-2 × σ_1 and follow σ_1
    between groups. `unscaled_delta` removes each row's mean from these products' ``Δ``, which
    restores the exact zero sum and changes ``Δ`` by its round-off only.

    Recognised: the model's single output is a softmax of a product (a softmax activation,
    a `keras.layers.Softmax` layer), with any loss; or is the product itself (a linear
    output layer) with a Keras (sparse) categorical cross-entropy ``from_logits=True``. A
    custom loss function that applies the softmax itself is not recognised.
    """
    outputs = tree.flatten(y_pred)
    if len(outputs) != 1 or not products:
        return []
    output = outputs[0]
    while getattr(output, "op", None) is not None and output.op.type in _OPS_AFTER_THE_SOFTMAX:
        output = output.op.inputs[0]
    if getattr(output, "op", None) is not None and output.op.type == "Softmax":
        return [p for p in products if reshaped_from(output.op.inputs[0], [p])]
    from_logits = isinstance(loss, _SOFTMAX_CROSSENTROPIES) and bool(loss._fn_kwargs.get("from_logits"))
    return [p for p in products if from_logits and reshaped_from(output, [p])]
