"""The training loss of each group's samples, recorded with the spectra.

At a recorded step, the per-sample loss Keras computes before reducing it (the compiled
loss with its sample weights and masks, without the model's regularization losses) is
averaged over each group's samples in the batch: ``Σ_{i∈g} w_i·l_i / n_g``, which is
what Keras's loss (``"sum_over_batch_size"``) would report on that group's samples alone.
"""

import copy

import keras
import tensorflow as tf

from tf_autospec import tracking
from tf_autospec.keras_internals import LossFunctionWrapper, tree


def _unreduced(loss):
    """``loss`` as a `keras.losses.Loss` that returns one value per element."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        loss = copy.copy(loss)
        loss.reduction = None
        return loss
    if callable(loss):
        return LossFunctionWrapper(loss, reduction=None)
    return None


def per_sample(model, y, y_pred, sample_weight):
    """The loss of each sample of the batch, float32 ``[B]``, or ``None`` (warned once) when
    the model's compiled loss cannot be read per sample (no compiled loss, or losses keyed
    by output name)."""
    losses = model.loss if isinstance(model.loss, (list, tuple)) else [model.loss]
    outputs, targets = tree.flatten(y_pred), tree.flatten(y)
    functions = [_unreduced(loss) for loss in losses]
    compiled = getattr(model, "_compile_config", None)  # what compile() was given, unserialized
    weights = None if compiled is None else compiled.config.get("loss_weights")
    weights = [1.0] * len(outputs) if weights is None else [weights] * len(outputs) \
        if isinstance(weights, (int, float)) else weights
    if None in functions or not len(functions) == len(outputs) == len(targets) or not isinstance(weights, list):
        if not getattr(model, "_warned_group_loss", False):
            model._warned_group_loss = True
            tracking.warn(
                f"The loss per group is not recorded for this model (compiled loss {model.loss!r} "
                f"for {len(outputs)} output(s)): it needs one loss per output, given as a Keras "
                "loss, its name or a function (a list for several outputs, loss_weights a "
                "number or a list). Run.group_loss is NaN."
            )
        return None
    total = 0.0
    for function, target, output, weight in zip(functions, targets, outputs, weights):
        values = tf.cast(function(target, output, sample_weight), tf.float32)
        if values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
        total += float(weight) * values
    return total


def group_means(values, one_hot, num_groups):
    """Mean of ``values`` ``[B]`` over each of the first ``num_groups`` groups of ``one_hot``
    ``[B, G']``; NaN for a group with no sample (or ``values`` of ``None``)."""
    if values is None:
        return tf.fill([num_groups], tf.constant(float("nan"), tf.float64))
    members = tf.cast(one_hot[:, :num_groups], tf.float64)
    sums = tf.linalg.matvec(members, tf.cast(values, tf.float64), transpose_a=True)
    counts = tf.reduce_sum(members, axis=0)
    return tf.where(counts > 0, sums / tf.maximum(counts, 1.0), float("nan"))
