"""The last recorded step's spectra, held in one variable so that a callback reads them
in one copy."""

import warnings

import numpy as np
import tensorflow as tf

from tf_autospec import geometry as geometry_module
from tf_autospec import spectra as spectra_module
from tf_autospec import tracking
from tf_autospec.results import StepSpectra


class LastStep:
    """One float64 variable holding the last recorded step.

    Layout: ``[step, counts (G'), finite flags (K), loss per group (G), values...]``
    where each (kernel, kind) spectrum ``[G', width]`` and each (kernel, geometry value)
    ``[1 + null partitions, ...]`` follows the previous one, flattened;
    ``G' = G · (1 + null partitions)``, the real groups first. float64 holds the step and the counts
    exactly. A second variable, ``recorded``, says whether the last step that ran was
    recorded: the steps that do not record set it to 0.
    """

    def __init__(self, kernels, num_groups, null_partitions, geometry=()):
        self.kernels = kernels
        self.num_groups = num_groups
        self.null_partitions = null_partitions
        recorded_groups = num_groups * (1 + null_partitions)
        self.recorded_groups = recorded_groups
        partitions = 1 + null_partitions
        self.segments = []  # (kernel path, kind or geometry value, start, shape per partition)
        self.header_size = 1 + recorded_groups + len(kernels) + num_groups
        start = self.header_size
        geometry_shapes = geometry_module.recorded_shapes(geometry, num_groups)
        for kernel in kernels:
            shapes = {**{kind: [num_groups, width] for kind, width in kernel.widths.items()}, **geometry_shapes}
            for name, shape in shapes.items():
                self.segments.append((kernel.path, name, start, shape))
                start += partitions * int(np.prod(shape))
        self.warned_nonfinite = False
        # Under tf.distribute every replica holds the same values; the first one's are kept.
        self.recorded = tf.Variable(
            False, trainable=False, name="autospec_recorded", aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA
        )
        self.buffer = tf.Variable(
            tf.concat([[-1.0], tf.ones([recorded_groups + len(kernels)], tf.float64),
                       tf.fill([start - 1 - recorded_groups - len(kernels)], tf.constant(float("nan"), tf.float64))],
                      0),
            trainable=False,
            name="autospec_last_step",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    def assign(self, step, counts, group_loss, spectra, finite):
        """One write of the whole buffer. ``group_loss`` holds each real group's mean loss;
        ``spectra`` maps (kernel path, kind) -> ``[G', width]``; ``finite`` holds a bool
        per kernel."""
        flat = [[tf.cast(step, tf.float64)], tf.cast(counts, tf.float64), tf.cast(tf.stack(finite), tf.float64),
                tf.cast(group_loss, tf.float64)]
        flat += [tf.reshape(tf.cast(spectra[(path, kind)], tf.float64), [-1]) for path, kind, _, _ in self.segments]
        self.buffer.assign(tf.concat(flat, 0))
        self.recorded.assign(True)

    def read(self, groups):
        if not self.recorded.numpy():
            return None
        buffer = self.buffer.value().numpy()
        step = int(buffer[0])
        finite = buffer[1 + self.recorded_groups : self.header_size - self.num_groups]
        nonfinite = tuple(k.path for k, ok in zip(self.kernels, finite) if not ok)
        if nonfinite and not self.warned_nonfinite:
            self.warned_nonfinite = True
            warnings.warn(
                f"Step {step}: NaN or Inf in the inputs or gradients of {list(nonfinite)}; "
                "their spectra are NaN for the affected groups (StepSpectra.nonfinite lists "
                "them at each step; this warning is not repeated).",
                tracking.AutoSpecWarning,
                stacklevel=tracking.user_stacklevel(),
            )
        partitions, groups_count = 1 + self.null_partitions, self.num_groups
        counts = buffer[1 : 1 + self.recorded_groups].astype(np.int32).reshape(partitions, groups_count)
        values = {
            (path, name): buffer[start : start + partitions * int(np.prod(shape))]
            .reshape(partitions, *shape)
            .astype(np.float32)
            for path, name, start, shape in self.segments
        }
        spectra = {key: v for key, v in values.items() if key[1] in spectra_module.KINDS}
        geometry = {key: v for key, v in values.items() if key[1] not in spectra_module.KINDS}
        return StepSpectra(
            step=step,
            groups=groups,
            counts=counts[0],
            nonfinite=nonfinite,
            spectra={key: values[0] for key, values in spectra.items()},
            null_counts=counts[1:],
            null_spectra={key: values[1:] for key, values in spectra.items()},
            group_loss=buffer[self.header_size - self.num_groups : self.header_size].copy(),
            geometry={key: v[0] for key, v in geometry.items()},
            null_geometry={key: v[1:] for key, v in geometry.items()},
        )
