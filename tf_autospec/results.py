"""The spectra of one recorded training step, as handed to callbacks."""

import dataclasses

import numpy as np

from tf_autospec.pairs import group_pairs


@dataclasses.dataclass(frozen=True)
class StepSpectra:
    """Group spectra of every tracked kernel for one training step.

    Read it in a callback as ``self.model.last_spectra`` after each training batch;
    it is ``None`` for steps that were not recorded (see ``every_n_steps``).

    Attributes:
        step: the optimizer iteration (0-based) whose gradient was decomposed.
        groups: the declared group names; row ``i`` of each array is ``groups[i]``.
        counts: int ``[G]``, samples of each group in the batch.
        spectra: ``{(kernel_path, kind): float32 [G, width]}``, singular values in
            descending order, 0 below the numerical rank (``docs/method.md``), NaN beyond
            the group's rank bound, for absent groups and for groups whose inputs or
            gradients held NaN or Inf at this step.
        nonfinite: kernel paths whose inputs or gradients held NaN or Inf at this step.
        null_counts: int ``[P, G]``, samples of each group of each null partition
            (``AutoSpecModel(null_partitions=P)``; ``[0, G]`` without).
        null_spectra: ``{(kernel_path, kind): float32 [P, G, width]}``, the spectra of
            the null partitions' groups, computed like ``spectra``.
        group_loss: float64 ``[G]``, the mean training loss of each group's samples in the
            batch (Keras's per-sample loss before reduction, with sample weights, without
            regularization losses; see `tf_autospec.group_loss`); NaN for an absent group.
        geometry: ``{(kernel_path, name): float32 array}``, the groups' gradient geometry
            (`tf_autospec.geometry`; empty with ``geometry=False``): ``"cosine"`` and
            ``"overlap"`` ``[n_pairs]`` for the pairs of `pairs`, ``"batch_cosine"`` ``[G]``,
            each group's cosine with the whole batch's gradient. Read them with `cosine`
            and `overlap`.
        null_geometry: the same for the null partitions, ``[P, ...]``.

    Example:

    ```python
    class PrintTop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            spectra = self.model.last_spectra
            if spectra is not None:
                print(spectra.spectrum("dense/kernel", "grad", "SZ")[:3])
    ```
    """

    step: int
    groups: tuple
    counts: np.ndarray
    spectra: dict
    nonfinite: tuple = ()
    null_counts: np.ndarray = None
    null_spectra: dict = None
    group_loss: np.ndarray = None
    geometry: dict = dataclasses.field(default_factory=dict)
    null_geometry: dict = dataclasses.field(default_factory=dict)

    @property
    def kernels(self):
        """Kernel paths in model order."""
        return list(dict.fromkeys(path for path, _ in self.spectra))

    def _index(self, group):
        if isinstance(group, (int, np.integer)) and 0 <= group < len(self.groups):
            return int(group)
        if group in self.groups:
            return self.groups.index(group)
        raise KeyError(f"Unknown group {group!r}; the groups are {list(self.groups)}.")

    def _values(self, spectra, kernel, kind):
        try:
            return spectra[(kernel, kind)]
        except KeyError:
            raise KeyError(
                f"No '{kind}' spectrum for '{kernel}'; recorded: {sorted(self.spectra)}."
            ) from None

    def spectrum(self, kernel, kind, group):
        """Singular values ``[width]`` of one kernel, kind and group (name or index)."""
        return self._values(self.spectra, kernel, kind)[self._index(group)]

    def null_spectrum(self, kernel, kind, group):
        """Singular values ``[P, width]`` of ``group``'s counterpart in each null partition."""
        return self._values(self.null_spectra or {}, kernel, kind)[:, self._index(group)]

    @property
    def pairs(self):
        """The pairs of group names in the order of the ``"cosine"`` and ``"overlap"`` values."""
        return [(self.groups[a], self.groups[b]) for a, b in group_pairs(self.groups)]

    def _geometry(self, values, kernel, name, a, b):
        key = (kernel, name if b is not None or name != "cosine" else "batch_cosine")
        if kernel not in self.kernels:
            raise KeyError(f"Unknown kernel {kernel!r}; recorded: {self.kernels}.")
        if key not in values:
            raise KeyError(
                f"No '{name}' recorded for '{kernel}'; recorded: {sorted(values) or 'no geometry'} "
                "(record it with AutoSpecModel(..., geometry=True))."
            )
        first = self._index(a)
        if b is None:
            return values[key][..., first]
        second = self._index(b)
        if first == second:
            raise ValueError(f"'{a}' and '{b}' are the same group; give two different groups.")
        pair = group_pairs(self.groups).index((min(first, second), max(first, second)))
        return values[key][..., pair]

    def cosine(self, kernel, a, b=None):
        """The cosine between groups ``a`` and ``b``'s gradients of ``kernel`` (names or
        indices, either order); with ``b=None``, between ``a``'s and the whole batch's
        gradient. NaN where undefined (`tf_autospec.geometry`)."""
        return float(self._geometry(self.geometry, kernel, "cosine", a, b))

    def overlap(self, kernel, a, b):
        """The overlap of groups ``a`` and ``b``'s top-k left singular subspaces of ``kernel``."""
        return float(self._geometry(self.geometry, kernel, "overlap", a, b))

    def null_cosine(self, kernel, a, b=None):
        """`cosine` of ``a`` and ``b``'s counterparts in each null partition, ``[P]``."""
        return self._geometry(self.null_geometry, kernel, "cosine", a, b)

    def null_overlap(self, kernel, a, b):
        """`overlap` of ``a`` and ``b``'s counterparts in each null partition, ``[P]``."""
        return self._geometry(self.null_geometry, kernel, "overlap", a, b)
