"""The global batch's group spectra under `tf.distribute`: what the replicas exchange.

Under `tf.distribute.MirroredStrategy` or `MultiWorkerMirroredStrategy` each replica
runs the training step on its share of the global batch. A group's gradient is the sum
over replicas, ``G_g = Σ_r A_rᵀ M_g Δ_r``, and its spectra need every replica's rows.
Per tracked kernel the replicas exchange whichever of two things holds fewer values:

* **rows**: the layer inputs and ``Δ`` of every sample are all-gathered, and each
  replica computes the spectra of the whole batch as a single device would
  (``global batch × (input + output values per sample)``);
* **sums**: each replica sums over its own rows, per group, ``A_gᵀΔ_g``, ``A_gᵀA_g``
  and ``Δ_gᵀΔ_g`` (`spectra.row_sums`); the sums are all-reduced and decomposed
  (``G × (fan_in·fan_out + 2·fan_in² + 2·fan_out² + 2)``: the Gram matrices and a
  non-finite flag in float64; an Embedding's ``A_gᵀA_g`` is diagonal, ``2·fan_in``).

Per-sample gradients are never formed. The group labels (one int32 per sample) are
all-gathered at every recorded step. Each replica decomposes the same global matrices,
in parallel.

The exchange runs only in the recording training step; with ``every_n_steps > 1`` the
steps in between are `keras.Model`'s own (see ``AutoSpecModel.make_train_function``), so
no collective sits inside a conditional branch, which MirroredStrategy on CPUs
(synchronising through ``merge_call``) refuses.
"""

import numpy as np
import tensorflow as tf

from tf_autospec import spectra

_FLOAT64_VALUES = 2  # a float64 costs two float32 values on the wire


def replica_context():
    """The replica context of a strategy with several replicas, else ``None``."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    return context if context.num_replicas_in_sync > 1 else None


def _placed(tensor):
    """``tensor`` with a device. With one device per worker, MultiWorkerMirroredStrategy
    runs the step outside any device scope, and its collectives refuse a tensor with no
    device; with several devices per worker each replica's tensors have theirs."""
    devices = tf.distribute.get_strategy().extended.worker_devices
    if tensor.device or len(devices) != 1:
        return tensor
    with tf.device(devices[0]):
        return tf.identity(tensor)


def _values_per_sample(tensors):
    """Values per sample of the given per-sample tensors, ``None`` if not known statically."""
    total = 0
    for tensor in tensors:
        shape = tensor.shape[1:]
        if not shape.is_fully_defined():
            return None
        total += int(np.prod(shape))
    return total


def summed_values(spec):
    """Values all-reduced per recorded step by the sums exchange, from `spectra.row_sums_spec`."""
    return sum(
        int(np.prod(entry.shape)) * (_FLOAT64_VALUES if entry.dtype == tf.float64 else 1)
        for entry in spec.values()
    )


def gathered_values(kernel_calls, kernel_deltas, global_batch):
    """Values all-gathered per recorded step for one kernel by the rows exchange, or ``None`` if
    the global batch or the per-sample sizes are not known while tracing."""
    per_sample = _values_per_sample([inputs for inputs, _ in kernel_calls] + list(kernel_deltas))
    if per_sample is None or global_batch is None:
        return None
    return global_batch * per_sample


class GlobalBatch:
    """One training step's exchange between the replicas.

    Args:
        replicas: the `tf.distribute.ReplicaContext` of this replica.
        labels: int32 ``[n]`` group indices of this replica's samples.
        num_groups: the number of declared groups.
        global_batch: samples in the global batch, if known while tracing.
        static_shapes: lay groups out with masks (XLA), as `spectra.SampleGrouping`.
    """

    def __init__(self, replicas, labels, num_groups, global_batch, static_shapes):
        self.replicas = replicas
        self.global_batch = global_batch
        self._gathered = {}
        self.local_grouping = spectra.SampleGrouping(labels, num_groups, static_shapes)
        self.grouping = spectra.SampleGrouping(
            replicas.all_gather(_placed(labels), axis=0), num_groups, static_shapes
        )

    def gather(self, tensors):
        """Each per-sample tensor of this replica, concatenated with the others' (the
        order of the labels in `grouping`)."""
        # all_gather may lose the per-sample dimensions' static sizes, which the factors need.
        return [
            tf.ensure_shape(self.replicas.all_gather(_placed(tensor), axis=0), [None, *tensor.shape[1:]])
            for tensor in tensors
        ]

    def gather_once(self, key, tensors):
        """`gather`, done once per ``key`` in a step (an LSTM's two kernels share ``Δ``)."""
        if key not in self._gathered:
            self._gathered[key] = self.gather(tensors)
        return self._gathered[key]

    def all_reduce(self, sums):
        """The element-wise sum over replicas of a dict of `spectra.row_sums`."""
        # One collective per dtype: a batched all-reduce packs its tensors into one.
        summed = {}
        dtypes = sorted({value.dtype for value in sums.values()}, key=lambda d: d.name)  # one order on every worker
        for dtype in dtypes:
            same_dtype = {key: _placed(value) for key, value in sums.items() if value.dtype == dtype}
            summed.update(self.replicas.all_reduce(tf.distribute.ReduceOp.SUM, same_dtype))
        return summed
