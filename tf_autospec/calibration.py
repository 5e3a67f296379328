"""Simulated run files with a known group difference, to calibrate the statistics.

The simulation keeps what makes group comparisons hard on real runs:

* **subjects**: a fixed population of subjects, each with its own signature (a fixed
  random vector added to every row it contributes), so that runs that re-train on the
  same subjects (seeds) share the groups' particular subjects;
* **group size**: each recorded step takes a batch of subjects, and each group's
  spectrum is the singular values of its rows there, so that a larger group has more
  rows, a higher rank and larger norms, as in real spectra;
* **null partitions**: the same spectra for random relabelings of the subjects that keep
  the groups' sizes (`tf_autospec.null_partitions`), as `AutoSpecModel(null_partitions=P)`
  records them.

A planted effect scales the rows of the second group's subjects in one layer by
``1 + shift``. The files are written with the real writer, so they go through
`tf_autospec.load` and `tf_autospec.stats` exactly as recorded runs do.

With ``geometry=True`` a run also records the group gradient geometry
(`tf_autospec.geometry`) of a simulated gradient: each subject's gradient of a
``width × width`` kernel at a step is a direction common to every subject (what the loss
asks of everyone) plus the subject's own fixed gradient signature plus per-step noise,
and a group's gradient is the sum of its members', so that a larger group's gradient is
closer to the batch's, as in real runs. A planted conflict (``conflict``) inverts the
sign of the second group's subjects' common direction and signature on a share of the
kernel's output columns in one layer: there the two groups pull the weights opposite ways.
"""

import numpy as np

from tf_autospec import groups as groups_module
from tf_autospec import store
from tf_autospec.pairs import group_pairs


def simulated_subjects(rng, n_subjects=40, fraction=0.5, signature=0.5):
    """A population of subjects: their group labels (a ``fraction`` in the second group)
    and their signatures' scale.

    Returns:
        ``(labels, signature)``: int32 ``[n_subjects]`` labels, and the scale of each
        subject's fixed signature relative to the per-row noise.
    """
    labels = (np.arange(n_subjects) >= round(n_subjects * (1 - fraction))).astype(np.int32)
    return rng.permutation(labels), signature


def simulated_run(path, rng, labels, subjects=None, groups=("HC", "SZ"), layers=3, epochs=3, batch=16, width=6,
                  signature=0.5, shift=0.0, shift_layer=None, null_partitions=20, partition_seed=0,
                  geometry=False, common=0.5, conflict=0.0, conflict_layer=None, conflict_epoch=0, overlap_k=2,
                  with_spectra=True):
    """Writes a run file of simulated spectra (and gradient geometry) and returns it loaded.

    Args:
        path: the ``.h5`` file to write.
        rng: a NumPy ``Generator`` (the run's seed: batch order and row noise).
        labels: int32 group label of each subject of the population (``-1``: in no group).
        subjects: indices of the subjects this run trains on (a fold); default all.
        groups: group names.
        layers: kernels, named ``layer<i>/kernel``; kind ``act``, spectra of ``width`` values.
        epochs: passes over the run's subjects, ``batch`` subjects per recorded step.
        signature: scale of each subject's fixed signature (drawn from the path-independent
            ``partition_seed``, so every run of a population shares it) relative to the noise.
        shift: relative increase of the second group's rows in ``shift_layer``.
        shift_layer: the kernel path with the planted difference, or ``None``.
        null_partitions: null partitions recorded beside the groups.
        partition_seed: seed of the null partitions and of the subjects' signatures, the
            same for every run of one simulated experiment.
        geometry: also record ``cosine``, ``batch_cosine`` and ``overlap`` of simulated
            gradients (`simulated_geometry`; the module docstring).
        common: with ``geometry``, the scale (per element, relative to the per-step
            noise) of the gradient direction common to every subject.
        conflict: with ``geometry``, the share of ``conflict_layer``'s output columns on
            which the second group's gradients are sign-inverted (0: none).
        conflict_layer: the kernel path with the planted conflict, or ``None``.
        conflict_epoch: the first epoch with the conflict (a conflict that appears
            during training; before it the groups' gradients agree as elsewhere).
        overlap_k: the ``k`` of ``overlap``.
        with_spectra: compute the spectra; ``False`` records them as NaN (a faster run
            for the geometry alone).

    Returns:
        The `tf_autospec.Run`.
    """
    labels = np.asarray(labels, dtype=np.int32)
    subjects = np.arange(len(labels)) if subjects is None else np.asarray(subjects)
    population = np.random.default_rng(partition_seed)
    signatures = population.normal(size=(layers, len(labels), width)) * signature
    partitioned = groups_module.null_partitions(labels, null_partitions, seed=partition_seed)
    kernels = [{"path": f"layer{i}/kernel", "layer": f"layer{i}", "layer_class": "Dense", "fan_in": width,
                "fan_out": width, "widths": {"act": width}, "reads_model_input": False} for i in range(layers)]
    layout = {"groups": list(groups), "kinds": ["act"], "kernels": kernels, "log_keys": ["loss"],
              "null_partitions": null_partitions}
    if geometry:
        layout.update(geometry=["cosine", "overlap"], overlap_k=overlap_k)
        gradients = SimulatedGradients(labels, layers, width, signature, common, partition_seed,
                                       conflict, None if conflict_layer is None else
                                       [k["path"] for k in kernels].index(conflict_layer))
    writer = store.RunWriter(str(path), layout, {"metadata": {"simulated": True}}, resume=False)
    steps = len(subjects) // batch
    n, columns, g = epochs * steps, 1 + null_partitions, len(groups)
    spectra = {(k["path"], "act"): np.full((n, columns, g, width), np.nan, np.float32) for k in kernels}
    counts = np.zeros((n, columns, g), np.int32)
    measures = {}
    for epoch in range(epochs):
        order = rng.permutation(subjects)
        for step in range(steps):
            members = order[step * batch:(step + 1) * batch]
            row = epoch * steps + step
            for column in range(columns):
                counts[row, column] = np.bincount(partitioned[members, column] + 1, minlength=g + 1)[1:]
            for layer, kernel in enumerate(kernels):
                rows = signatures[layer, members] + rng.normal(size=(len(members), width))
                if kernel["path"] == shift_layer:
                    rows[labels[members] == 1] *= 1 + shift
                for column in range(columns if with_spectra else 0):
                    for group in range(g):
                        mine = partitioned[members, column] == group
                        if mine.any():
                            values = np.linalg.svd(rows[mine], compute_uv=False)
                            spectra[(kernel["path"], "act")][row, column, group, : len(values)] = values
                if geometry:
                    drawn = gradients.step(rng, members, layer, conflicted=epoch >= conflict_epoch)
                    measured = simulated_geometry(drawn, partitioned[members], g, overlap_k)
                    for name, values in measured.items():
                        measures.setdefault((kernel["path"], name), np.full((n, *values.shape), np.nan,
                                                                           np.float32))[row] = values
    records = {"epoch": np.repeat(np.arange(epochs), steps), "batch": np.tile(np.arange(steps), epochs),
               "wall_time": np.arange(n, dtype=float), "step": np.arange(n), "loss": np.ones(n)}
    writer.append(records, {key: v[:, 0] for key, v in spectra.items()}, counts[:, 0],
                  {key: v[:, 1:] for key, v in spectra.items()}, counts[:, 1:],
                  np.full((n, g), np.nan),  # no model, no loss
                  geometry={key: v[:, 0] for key, v in measures.items()},
                  null_geometry={key: v[:, 1:] for key, v in measures.items()})
    writer.close()
    return store.load(path)


class SimulatedGradients:
    """The per-subject gradients of `simulated_run`'s kernels (``width × width``).

    A subject's gradient at a step is ``common · C_layer + S_subject,layer + noise``: ``C``
    the layer's direction common to every subject (a matrix of decaying singular values,
    so that a group's top singular directions are those of ``C`` plus chance), ``S`` the
    subject's fixed signature (scale ``signature``), the noise new at every step (scale
    1). With a conflict, the second group's ``common · C + S`` is sign-inverted on the
    first ``round(conflict · width)`` columns of the conflict layer.

    Args:
        labels: int32 group label of each subject (the conflict's second group is label 1).
        layers, width: kernels and their size.
        signature, common: scales, relative to the per-step noise.
        seed: the population's seed (shared by every run of one simulated experiment).
        conflict: share of the conflict layer's columns inverted.
        conflict_layer: index of that layer, or ``None``.
    """

    def __init__(self, labels, layers, width, signature, common, seed, conflict=0.0, conflict_layer=None):
        population = np.random.default_rng([seed, 1])  # apart from the spectra's signatures
        decay = np.arange(width, 0, -1, dtype=np.float64)
        directions = []
        for _ in range(layers):
            left, _ = np.linalg.qr(population.normal(size=(width, width)))
            right, _ = np.linalg.qr(population.normal(size=(width, width)))
            shared = (left * decay) @ right.T
            directions.append(shared * common * width / np.linalg.norm(shared))  # common per element
        self.agreeing = np.stack(directions)[:, None] + signature * population.normal(
            size=(layers, len(labels), width, width))
        self.conflicted = self.agreeing.copy()
        if conflict and conflict_layer is not None:
            columns = round(conflict * width)
            self.conflicted[conflict_layer, np.asarray(labels) == 1, :, :columns] *= -1
        self.width = width

    def step(self, rng, members, layer, conflicted=True):
        """``[len(members), width, width]``: the members' gradients of ``layer`` at one
        step, with the conflict (if any) or without."""
        systematic = self.conflicted if conflicted else self.agreeing
        return systematic[layer, members] + rng.normal(size=(len(members), self.width, self.width))


def simulated_geometry(gradients, partitioned, num_groups, overlap_k):
    """The geometry measures of one step, as `AutoSpecModel(geometry=True)` records them,
    for the real groups and every null partition.

    Args:
        gradients: ``[m, fan_in, fan_out]``, each batch member's gradient.
        partitioned: int ``[m, 1 + P]``, each member's group in the real labels (column
            0) and in each null partition (``-1``: in no group; still in the batch).
        num_groups: ``G``.
        overlap_k: ``k`` of the overlap.

    Returns:
        dict ``cosine`` ``[1 + P, n_pairs]``, ``batch_cosine`` ``[1 + P, G]``, ``overlap``
        ``[1 + P, n_pairs]`` (NaN where a group is absent).
    """
    members = partitioned[..., None] == np.arange(num_groups)  # [m, 1 + P, G]
    group = np.einsum("icg,ijk->cgjk", members.astype(np.float64), gradients)  # [1 + P, G, in, out]
    flat = group.reshape(*group.shape[:2], -1)
    batch = gradients.sum(axis=0).reshape(-1)
    norms = np.linalg.norm(flat, axis=-1)
    present = members.any(axis=0)
    pairs = group_pairs(range(num_groups))
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.sum(flat[:, first] * flat[:, second], axis=-1) / (norms[:, first] * norms[:, second])
        batch_cosine = flat @ batch / (norms * np.linalg.norm(batch))
    left = np.linalg.svd(group)[0][..., :overlap_k]  # [1 + P, G, in, k]
    products = np.einsum("cpik,cpil->cpkl", left[:, first], left[:, second])
    overlap = np.sum(products**2, axis=(-2, -1)) / overlap_k
    both = present[:, first] & present[:, second]
    return {"cosine": np.where(both, cosine, np.nan), "batch_cosine": np.where(present, batch_cosine, np.nan),
            "overlap": np.where(both, overlap, np.nan)}
