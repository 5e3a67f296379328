"""The input forms of Keras's entry points that need care to carry group labels:
generators, `keras.utils.PyDataset`s, and the batch size ``fit`` will use."""

import itertools

import keras
import tensorflow as tf

from tf_autospec.keras_internals import tree


def is_iterator(x):
    """A Python generator or iterator of batches (not an array, dataset or dict)."""
    return hasattr(x, "__next__") and not hasattr(x, "shape") and not isinstance(x, tf.data.Iterator)


def converted_batches(batches, convert):
    # keras reads only real generators as generators of batches.
    for batch in batches:
        yield convert(batch)


def peeked(x):
    """``(x, first batch's inputs)`` for a generator, whose first batch is consumed by
    looking at it; ``(x, None)`` otherwise."""
    if not is_iterator(x):
        return x, None
    try:
        first = next(x)
    except StopIteration:
        raise ValueError("The generator yields no batch.") from None
    return _prepended(first, x), first[0] if isinstance(first, tuple) else first


def first_inputs(dataset):
    """The inputs of a `keras.utils.PyDataset`'s first batch."""
    batch = dataset[0]
    return batch[0] if isinstance(batch, tuple) else batch


def read_batches(x, steps=None):
    """The batches of a generator or `keras.utils.PyDataset`, as a list: its first
    ``steps`` (all Keras would read), or all of them when ``steps`` is ``None``.

    Raises:
        ValueError: for a PyDataset whose ``num_batches`` is ``None`` (infinite), without
            ``steps``.
    """
    if not isinstance(x, keras.utils.PyDataset):
        return list(x if steps is None else itertools.islice(x, steps))
    count = x.num_batches
    if count is None and steps is None:
        raise ValueError(
            "This PyDataset is infinite (its num_batches is None): pass steps= to evaluate, "
            "the number of batches to evaluate."
        )
    count = steps if count is None else count if steps is None else min(steps, count)
    return [x[i] for i in range(count)]


def dataset_batch_size(dataset):
    """A batched `tf.data.Dataset`'s batch size: its element_spec's batch dimension, or,
    when that is unknown, the size of its first batch (``None`` for an empty dataset or
    unbatched elements)."""
    first = tree.flatten(dataset.element_spec)[0]
    if not first.shape.rank:
        return None
    if first.shape[0] is not None:
        return first.shape[0]
    for element in dataset.take(1):
        return int(tf.shape(tree.flatten(element)[0])[0])
    return None


def _prepended(first, rest):
    yield first
    yield from rest


class LabelledPyDataset(keras.utils.PyDataset):
    """A user's `keras.utils.PyDataset` with each batch's group labels converted to indices."""

    def __init__(self, dataset, convert):
        super().__init__(workers=dataset.workers, use_multiprocessing=dataset.use_multiprocessing,
                         max_queue_size=dataset.max_queue_size)
        self.dataset = dataset
        self.convert = convert

    def __len__(self):
        count = self.num_batches
        if count is None:
            raise TypeError("This PyDataset is infinite (its num_batches is None): it has no len().")
        return count

    @property
    def num_batches(self):
        return self.dataset.num_batches

    def __getitem__(self, index):
        return self.convert(self.dataset[index])

    def on_epoch_begin(self):
        self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


def batch_size(x, batch_size, replicas):
    """The (global) batch size ``fit`` will use, or ``None`` when it is not known.

    Under a strategy with several ``replicas`` the size of a `tf.data.Dataset`'s first
    batch stands in for an unknown batch dimension: it chooses what the replicas exchange
    (`tf_autospec.distributed`), the same on every worker fed the same pipeline.
    """
    if isinstance(x, tf.data.Dataset):
        first = tree.flatten(x.element_spec)[0]
        if first.shape.rank and first.shape[0] is None and replicas > 1:
            return dataset_batch_size(x)
        return first.shape[0] if first.shape.rank else None
    if isinstance(x, (keras.utils.PyDataset, tf.distribute.DistributedDataset)) or hasattr(x, "__next__"):
        return None
    return batch_size or 32  # keras.Model.fit's default for arrays
