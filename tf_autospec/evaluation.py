"""``evaluate`` per group: Keras's loss and compiled metrics on each group's samples.

Each group's results are `keras.Model.evaluate` on that group's samples alone, so they
mean what Keras's own results mean (a per-sample mean of the loss, the metrics as Keras
accumulates them), whatever the batching. They are returned as ``"<name>/<group>"``
(``"loss/HC"``, ``"accuracy/SZ"``), NaN for a group with no sample in the data.
"""

import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_autospec import groups as groups_module
from tf_autospec.keras_internals import tree, unpack_x_y_sample_weight


def has_labels(x):
    """Whether the evaluation data (as `AutoSpecModel._with_indices` returns it) carries
    group labels."""
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec[0] if isinstance(x.element_spec, tuple) else x.element_spec
        return isinstance(spec, dict) and groups_module.GROUP_KEY in spec
    return isinstance(x, dict) and groups_module.GROUP_KEY in x


def in_memory(x, y, sample_weight):
    """A generator's or PyDataset's batches as arrays ``(x, y, sample_weight, batch size)``:
    a generator can be read once only, and each group needs its own pass."""
    batches = [x[i] for i in range(len(x))] if isinstance(x, keras.utils.PyDataset) else list(x)
    if not batches:
        raise ValueError("The data given to evaluate yields no batch.")
    parts = [unpack_x_y_sample_weight(b if isinstance(b, tuple) else (b,)) for b in batches]
    joined = [
        None if parts[0][i] is None else tree.map_structure(lambda *v: np.concatenate(v), *[p[i] for p in parts])
        for i in range(3)
    ]
    first = tree.flatten(parts[0][0])[0]
    return joined[0], joined[1], joined[2], len(first)


def per_group(model, x, y, sample_weight, batch_size, steps):
    """Evaluates ``model`` on each of its groups' samples.

    Args:
        model: the `AutoSpecModel`.
        x: arrays (a dict with a ``"group"`` entry of indices) or a `tf.data.Dataset`
            whose inputs have that entry.
        y, sample_weight, batch_size, steps: as given to ``evaluate``.

    Returns:
        Per group, ``keras.Model.evaluate``'s ``return_dict`` results on its samples, or
        ``None`` for a group with none.
    """
    results = {}
    for index, group in enumerate(model.groups):
        with warnings.catch_warnings():
            # An empty subset makes Keras warn that the input "ran out of data".
            warnings.simplefilter("ignore", UserWarning)
            if isinstance(x, tf.data.Dataset):
                subset = _dataset_of_group(x, index, model.groups, steps)
                logs = keras.Model.evaluate(model, subset, verbose=0, return_dict=True)
            else:
                subset = _arrays_of_group(x, y, sample_weight, index, batch_size, steps)
                logs = None if subset is None else keras.Model.evaluate(
                    model, subset[0], subset[1], sample_weight=subset[2], batch_size=batch_size, verbose=0,
                    return_dict=True,
                )
        results[group] = logs or None
    return results


def keyed(results, names):
    """``{"loss/HC": ..., "accuracy/HC": ..., "loss/SZ": ...}``: every result name per group,
    NaN where the group had no sample."""
    return {
        f"{name}/{group}": float("nan") if logs is None else logs[name]
        for group, logs in results.items()
        for name in names
    }


def _arrays_of_group(x, y, sample_weight, index, batch_size, steps):
    labels = np.asarray(x[groups_module.GROUP_KEY])
    labels = labels[:, 0] if labels.ndim == 2 else labels
    if steps is not None:  # Keras evaluates the first `steps` batches
        labels = labels[: steps * (batch_size or 32)]
    rows = np.flatnonzero(labels == index)
    if not len(rows):
        return None

    def take(values):
        return None if values is None else tree.map_structure(lambda v: np.asarray(v)[rows], values)

    return take(x), take(y), take(sample_weight)


def _dataset_of_group(dataset, index, group_names, steps):
    if steps is not None:
        dataset = dataset.take(steps)

    def keep_group(*element):
        features = element[0]
        labels = groups_module.labels_to_indices_tensor(features[groups_module.GROUP_KEY], group_names)
        labels = labels[:, 0] if labels.shape.rank == 2 else labels
        mask = tf.equal(labels, index)
        return tree.map_structure(lambda v: tf.boolean_mask(v, mask), element)

    return dataset.map(keep_group).filter(lambda *element: tf.shape(tree.flatten(element)[0])[0] > 0)

