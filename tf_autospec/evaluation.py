"""``evaluate`` per group: Keras's loss and compiled metrics on each group's samples.

Each group's results are those of `keras.Model.evaluate` on that group's samples alone,
batched with the batch size ``B`` of the data given::

    keras.Model.evaluate(model, x[rows], y[rows], sample_weight=sample_weight[rows], batch_size=B)

``rows`` being the group's samples among those Keras evaluates (with ``steps``, the
samples of the first ``steps`` batches only), in their order, and ``B`` the
``batch_size`` given with arrays (Keras's default 32 without it), a `tf.data.Dataset`'s
own batch size (its element_spec's batch dimension, or its first batch's size when that
is unknown), or a generator's or `keras.utils.PyDataset`'s first batch's size. The batch
size matters: Keras's total loss and its metrics are per-sample means whatever the
batching, but the per-output losses of a multi-output model (``"cls_loss"``) are means
of per-batch means, unweighted by batch size; a group's samples kept within the
original batches would make batches of varying, smaller sizes. A `tf.data.Dataset` is
filtered sample by sample and batched again, after one pass that counts each group's
samples (its number of batches must be known: see `_dataset_of_group`).

They are returned as ``"<name>/<group>"`` (``"loss/HC"``, ``"cls_loss/SZ"``), NaN for a
group with no sample in the data.

A `tf.data.Dataset` is read in several passes (the count, each group's, Keras's own): a
pipeline that shuffles or augments at random gives each pass other samples, so with such
a pipeline the per-group results are of other draws than Keras's own (with ``steps``, of
other batches). Evaluate on a deterministic pipeline, or ``cache()`` it.
"""

import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_autospec import groups as groups_module
from tf_autospec import inputs
from tf_autospec.keras_internals import tree, unpack_x_y_sample_weight


def has_labels(x):
    """Whether the evaluation data (as `AutoSpecModel._with_indices` returns it) carries
    group labels."""
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec[0] if isinstance(x.element_spec, tuple) else x.element_spec
        return isinstance(spec, dict) and groups_module.GROUP_KEY in spec
    return isinstance(x, dict) and groups_module.GROUP_KEY in x


def in_memory(x, y, sample_weight, steps=None):
    """A generator's or PyDataset's batches as arrays ``(x, y, sample_weight, batch size)``:
    a generator can be read once only, and each group needs its own pass. With ``steps``,
    only the first ``steps`` batches are read (all Keras would evaluate: a generator or
    PyDataset may be infinite)."""
    batches = inputs.read_batches(x, steps)
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
    if isinstance(x, tf.data.Dataset):
        if steps is not None:  # Keras evaluates the first `steps` batches
            x = x.take(steps)
        sizes = _group_sizes(x, model.groups)
        dataset_batch = inputs.dataset_batch_size(x) if sizes.any() else None
    for index, group in enumerate(model.groups):
        with warnings.catch_warnings():
            # An empty subset makes Keras warn that the input "ran out of data".
            warnings.simplefilter("ignore", UserWarning)
            if isinstance(x, tf.data.Dataset):
                subset = _dataset_of_group(x, index, model.groups, dataset_batch, sizes[index]) if sizes[index] else None
                logs = None if subset is None else keras.Model.evaluate(model, subset, verbose=0, return_dict=True)
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


def _group_index(element, group_names):
    """The group indices ``[n]`` of a dataset element's samples: column 0 of the labels
    (names or indices, ``[n]``, ``[n, 1]`` or ``[n, 1 + P]`` with null partitions)."""
    labels = element[0][groups_module.GROUP_KEY]
    first_column = tf.reshape(labels, tf.stack([tf.shape(labels)[0], -1]))[:, 0] if labels.shape.rank else labels
    return groups_module.labels_to_indices_tensor(first_column, group_names)


def _group_sizes(dataset, group_names):
    """The number of samples of each group in a batched dataset (one pass over it)."""
    count = len(group_names)

    def counts(*element):
        indices = _group_index(element, group_names)
        return tf.reduce_sum(tf.one_hot(indices, count, dtype=tf.int64), axis=0)  # -1 (no group): zeros

    return dataset.map(counts).reduce(tf.zeros([count], tf.int64), lambda total, c: total + c).numpy()


def _dataset_of_group(dataset, index, group_names, batch_size, size):
    """The group's ``size`` samples of a batched dataset, batched again by ``batch_size``:
    as `keras.Model.evaluate` batches the group's samples given as arrays. The known
    number of batches matters: on a dataset of unknown cardinality (a filtered one), Keras
    counts a last, empty step in its per-output losses."""

    def in_group(*element):  # one sample: (x, y[, sample_weight]) or x alone
        sample = tree.map_structure(lambda v: v[None], element)
        return tf.equal(_group_index(sample, group_names)[0], index)

    batches = -(-int(size) // batch_size)
    return (dataset.unbatch().filter(in_group).batch(batch_size)
            .apply(tf.data.experimental.assert_cardinality(batches)))
