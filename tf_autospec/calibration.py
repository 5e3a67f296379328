"""Simulated run files with a known group difference, to calibrate the statistics.

Spectra are drawn from a gamma distribution (positive, skewed, like singular values),
sorted in descending order; a planted effect multiplies the second group's spectra of one
layer by ``1 + shift``. The files are written with the real writer, so they go through
`tf_autospec.load` and `tf_autospec.stats` exactly as recorded runs do.
"""

import numpy as np

from tf_autospec import store


def simulated_run(path, rng, groups=("HC", "SZ"), layers=3, epochs=3, steps=8, width=4,
                  shift=0.0, shift_layer=None, samples_per_group=8):
    """Writes a run file of random spectra and returns it loaded.

    Args:
        path: the ``.h5`` file to write.
        rng: a NumPy ``Generator``.
        groups: group names.
        layers: number of kernels, named ``layer<i>/kernel``.
        epochs, steps: records are ``epochs × steps`` steps.
        width: singular values per spectrum (kind ``grad`` only).
        shift: relative increase of the second group's spectra in ``shift_layer``.
        shift_layer: the kernel path with the planted difference, or ``None``.
        samples_per_group: the group counts stored with each step.

    Returns:
        The `tf_autospec.Run`.
    """
    kernels = [{"path": f"layer{i}/kernel", "layer": f"layer{i}", "layer_class": "Dense",
                "fan_in": width + 2, "fan_out": width, "widths": {"grad": width}} for i in range(layers)]
    layout = {"groups": list(groups), "kinds": ["grad"], "kernels": kernels, "log_keys": ["loss"]}
    writer = store.RunWriter(str(path), layout, {"metadata": {"simulated": True}}, resume=False)
    n = epochs * steps
    spectra = {}
    for kernel in kernels:
        values = np.sort(rng.gamma(4.0, 0.25, size=(n, len(groups), width)), axis=-1)[..., ::-1]
        if kernel["path"] == shift_layer:
            values[:, 1] *= 1 + shift
        spectra[(kernel["path"], "grad")] = values.astype("float32")
    records = {"epoch": np.repeat(np.arange(epochs), steps), "batch": np.tile(np.arange(steps), epochs),
               "wall_time": np.arange(n, dtype=float), "step": np.arange(n), "loss": np.ones(n)}
    writer.append(records, spectra, np.full((n, len(groups)), samples_per_group))
    writer.close()
    return store.load(path)
