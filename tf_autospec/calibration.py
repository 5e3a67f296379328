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
"""

import numpy as np

from tf_autospec import groups as groups_module
from tf_autospec import store


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
                  signature=0.5, shift=0.0, shift_layer=None, null_partitions=20, partition_seed=0):
    """Writes a run file of simulated spectra and returns it loaded.

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
    writer = store.RunWriter(str(path), layout, {"metadata": {"simulated": True}}, resume=False)
    steps = len(subjects) // batch
    n, columns, g = epochs * steps, 1 + null_partitions, len(groups)
    spectra = {(k["path"], "act"): np.full((n, columns, g, width), np.nan, np.float32) for k in kernels}
    counts = np.zeros((n, columns, g), np.int32)
    for epoch in range(epochs):
        order = rng.permutation(subjects)
        for step in range(steps):
            members = order[step * batch:(step + 1) * batch]
            row = epoch * steps + step
            for layer, kernel in enumerate(kernels):
                rows = signatures[layer, members] + rng.normal(size=(len(members), width))
                if kernel["path"] == shift_layer:
                    rows[labels[members] == 1] *= 1 + shift
                for column in range(columns):
                    for group in range(g):
                        mine = partitioned[members, column] == group
                        counts[row, column, group] = mine.sum()
                        if mine.any():
                            values = np.linalg.svd(rows[mine], compute_uv=False)
                            spectra[(kernel["path"], "act")][row, column, group, : len(values)] = values
    records = {"epoch": np.repeat(np.arange(epochs), steps), "batch": np.tile(np.arange(steps), epochs),
               "wall_time": np.arange(n, dtype=float), "step": np.arange(n), "loss": np.ones(n)}
    writer.append(records, {key: v[:, 0] for key, v in spectra.items()}, counts[:, 0],
                  {key: v[:, 1:] for key, v in spectra.items()}, counts[:, 1:],
                  np.full((n, g), np.nan))  # spectra only: no model, no loss
    writer.close()
    return store.load(path)
