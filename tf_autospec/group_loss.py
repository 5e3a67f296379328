"""The training loss of each group's samples, recorded with the spectra.

At a recorded step each output's loss is taken per element as Keras computes it before
reducing it (the compiled loss with its sample weights and the output's mask, without the
model's regularization losses) and reduced over each group's samples the way Keras's
``"sum_over_batch_size"`` reduction reduces a batch: ``Σ w·l / n`` with ``n`` the group's
(unmasked) elements; the outputs' values are summed with their ``loss_weights``. This is
what Keras's loss would report on that group's samples alone.

A compiled loss that cannot be read this way (none, losses keyed by output name, another
reduction, targets or sample weights that do not match the outputs) is warned about once,
and the loss per group is NaN.
"""

import copy

import tensorflow as tf

from tf_autospec import tracking
from tf_autospec.keras_internals import get_keras_mask, get_loss, tree

_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean")


def _unreduced(loss, target, output):
    """The compiled ``loss`` of one output as a `keras.losses.Loss` returning one value per
    element, or ``None`` when its reduction is not a mean."""
    loss = get_loss(loss, target, output)  # a keras.losses.Loss, names read as compile reads them
    if loss is None or loss.reduction not in _MEAN_REDUCTIONS:
        return None
    loss = copy.copy(loss)
    loss.reduction = None
    return loss


def _per_output(model, y, y_pred, sample_weight):
    """``[(loss, target, output, sample weight, loss weight), ...]`` in output order, or a
    reason why the compiled loss cannot be read per sample."""
    outputs = tree.flatten(y_pred)
    names = list(getattr(model, "output_names", None) or [])

    def in_output_order(values, what):
        """A dict keyed by output name in the outputs' order (`tree.flatten` sorts keys)."""
        if not isinstance(values, dict):
            return values
        if sorted(names) != sorted(values):
            return f"{what} keyed {sorted(values)} for outputs {names}"
        return [values[name] for name in names]

    targets = in_output_order(y, "targets")
    weights = in_output_order(sample_weight, "sample weights")
    for ordered in (targets, weights):
        if isinstance(ordered, str):
            return ordered
    targets = tree.flatten(targets)
    losses = model.loss if isinstance(model.loss, (list, tuple)) else [model.loss]
    weights = list(weights) if isinstance(weights, (list, tuple)) else [weights] * len(outputs)
    compiled = getattr(model, "_compile_config", None)  # what compile() was given, unserialized
    loss_weights = None if compiled is None else compiled.config.get("loss_weights")
    if loss_weights is None or isinstance(loss_weights, (int, float)):
        loss_weights = [1.0 if loss_weights is None else float(loss_weights)] * len(outputs)
    if model.loss is None or isinstance(model.loss, dict) or isinstance(loss_weights, dict):
        return f"compiled loss {model.loss!r}"
    if not len(losses) == len(targets) == len(outputs) == len(weights) == len(loss_weights):
        return f"{len(losses)} loss(es), {len(targets)} target(s) and {len(weights)} sample weight(s) " \
               f"for {len(outputs)} output(s)"
    return list(zip(losses, targets, outputs, weights, loss_weights))


def per_sample(model, y, y_pred, sample_weight):
    """Each output's weighted loss summed over each sample's elements and the sample's
    elements that count (unmasked): ``[(loss weight, sums [B], counts [B]), ...]``, or
    ``None`` (warned once) when the compiled loss cannot be read per sample."""
    parts = _per_output(model, y, y_pred, sample_weight)
    unreduced = [] if isinstance(parts, str) else [_unreduced(p[0], p[1], p[2]) for p in parts]
    if isinstance(parts, str) or None in unreduced:
        if not getattr(model, "_warned_group_loss", False):
            model._warned_group_loss = True
            reason = parts if isinstance(parts, str) else "a loss whose reduction is not a mean"
            tracking.warn(
                f"The loss per group is not recorded for this model ({reason}): it needs one "
                "loss per output (a Keras loss, its name or a function, mean-reduced; a list for "
                "several outputs), targets and sample weights given per output, and loss_weights "
                "a number or a list. Run.group_loss is NaN."
            )
        return None
    out = []
    for function, (_, target, output, weight, loss_weight) in zip(unreduced, parts):
        values = tf.cast(function(target, output, weight), tf.float32)
        mask = get_keras_mask(output)
        valid = tf.ones_like(values) if mask is None else tf.cast(tf.reshape(mask, tf.shape(values)), tf.float32)
        axes = list(range(1, values.shape.rank))
        out.append((float(loss_weight), tf.reduce_sum(values, axes), tf.reduce_sum(valid, axes)))
    return out


def gathered(parts, gather):
    """``parts`` with every per-sample tensor passed through ``gather`` (the global batch
    under `tf.distribute`)."""
    if parts is None:
        return None
    flat = gather([tensor for _, sums, counts in parts for tensor in (sums, counts)])
    return [(weight, flat[2 * i], flat[2 * i + 1]) for i, (weight, _, _) in enumerate(parts)]


def group_means(parts, one_hot, num_groups):
    """Each of the first ``num_groups`` groups of ``one_hot`` ``[B, G']``: the outputs'
    ``Σ sums / Σ counts`` over its samples, weighted by the loss weights; NaN for a group
    with no sample (or ``parts`` of ``None``)."""
    if parts is None:
        return tf.fill([num_groups], tf.constant(float("nan"), tf.float64))
    members = tf.cast(one_hot[:, :num_groups], tf.float64)
    present = tf.reduce_sum(members, axis=0) > 0
    total = tf.zeros([num_groups], tf.float64)
    for weight, sums, counts in parts:
        group_sums = tf.linalg.matvec(members, tf.cast(sums, tf.float64), transpose_a=True)
        group_counts = tf.linalg.matvec(members, tf.cast(counts, tf.float64), transpose_a=True)
        total += weight * tf.math.divide_no_nan(group_sums, group_counts)
    return tf.where(present, total, float("nan"))
