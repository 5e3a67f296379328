"""Handwritten digits with classes as groups: MNIST through TensorFlow Datasets, and
scikit-learn's digits (real data that ships with scikit-learn, so it works offline).

The paper groups MNIST by its first four classes: the samples of classes 0–3 form groups
"0".."3" and every other sample is trained on in no group (label -1). Both loaders take
``groups`` as that number N, or as the list of classes to use as groups.
"""

import os
import socket

import numpy as np

from tf_autospec.data.simulated import GroupedData


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither prepared locally nor downloadable from here."""


def _class_groups(classes, groups):
    """Group labels, names and classes: the classes listed (or the first ``groups``) are groups."""
    chosen = list(range(groups)) if isinstance(groups, (int, np.integer)) else [int(c) for c in groups]
    present = set(np.unique(classes).tolist())
    missing = [c for c in chosen if c not in present]
    if not chosen or missing:
        raise ValueError(f"groups must name classes present in the data ({sorted(present)}); "
                         f"received {groups!r}" + (f", and classes {missing} have no samples." if missing else "."))
    labels = np.full(len(classes), -1, dtype=np.int32)
    for index, c in enumerate(chosen):
        labels[classes == c] = index
    # Names, not numbers: integer labels are group indices (tf_autospec.groups).
    return labels, tuple(f"digit {c}" for c in chosen), chosen


def _subset(n_samples, seed, *arrays):
    """A seeded random subset of ``n_samples`` rows (in their original order), or everything."""
    if n_samples is None:
        return arrays
    keep = np.sort(np.random.default_rng(seed).permutation(len(arrays[0]))[:n_samples])
    return tuple(a[keep] for a in arrays)


def _reachable(host, port=443, timeout=3.0):
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def mnist(groups=4, split="train", data_dir=None, n_samples=None, download=True, seed=0):
    """MNIST through ``tensorflow_datasets``, with classes as groups.

    Args:
        groups: number N of classes (0..N-1) that form the groups, or a list of classes.
            Samples of other classes get label -1 (trained on, in no group).
        split: TFDS split (``"train"``, ``"test"``, ``"train[:10%]"``...).
        data_dir: TFDS data folder; point it at a prepared copy to work offline
            (``tfds build mnist --data_dir DIR`` on a machine with internet, then copy DIR).
        n_samples: keep a random subset of this size (seeded), or all samples.
        download: download and prepare MNIST when ``data_dir`` has no copy.
        seed: seed of the subset.

    Returns:
        `GroupedData` with ``x`` float32 ``[samples, 28, 28, 1]`` in [0, 1] and ``y`` the digit.

    Raises:
        DatasetUnavailableError: no prepared copy and no way to download one.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder("mnist", data_dir=data_dir)
    if not builder.is_prepared():
        where = data_dir or "the default TFDS folder (~/tensorflow_datasets)"
        advice = ("Point data_dir (--data-dir) at a folder holding a prepared copy: run `tfds build mnist "
                  "--data_dir DIR` on a machine with internet and copy DIR here, or use the offline "
                  "scikit-learn digits (tf_autospec.data.digits, --dataset digits).")
        if not download:
            raise DatasetUnavailableError(f"MNIST is not prepared in {where}. {advice}")
        # Without this check an offline download retries for minutes before failing.
        if not _reachable("storage.googleapis.com"):
            raise DatasetUnavailableError(f"MNIST is not prepared in {where} and its download server "
                                          f"cannot be reached (offline?). {advice}")
        builder.download_and_prepare()
    dataset = builder.as_dataset(split=split, as_supervised=True).batch(8192)
    images, classes = (np.concatenate(parts) for parts in zip(*tfds.as_numpy(dataset)))
    images, classes = _subset(n_samples, seed, images, classes)
    labels, names, classes_chosen = _class_groups(classes, groups)
    info = dict(dataset="mnist", split=split, data_dir=os.fspath(data_dir) if data_dir else "", seed=seed,
                group_classes=classes_chosen)
    return GroupedData(images.astype(np.float32) / 255.0, classes.astype(np.int32), labels, names, info)


def digits(groups=4, n_samples=None, seed=0):
    """scikit-learn's handwritten digits (1,797 real 8×8 images; no download), classes as groups.

    Args:
        groups: number N of classes (0..N-1) that form the groups, or a list of classes.
            Samples of other classes get label -1 (trained on, in no group).
        n_samples: keep a random subset of this size (seeded), or all samples.
        seed: seed of the subset.

    Returns:
        `GroupedData` with ``x`` float32 ``[samples, 8, 8, 1]`` in [0, 1] and ``y`` the digit.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, classes = _subset(n_samples, seed, bunch.images, bunch.target.astype(np.int32))
    labels, names, classes_chosen = _class_groups(classes, groups)
    info = dict(dataset="digits", seed=seed, group_classes=classes_chosen)
    return GroupedData((images / 16.0).astype(np.float32)[..., None], classes, labels, names, info)
