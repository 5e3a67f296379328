"""The input forms of Keras's entry points that need care to carry group labels:
generators, `keras.utils.PyDataset`s, and the batch size ``fit`` will use."""

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
        return len(self.dataset)

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
        if not first.shape.rank:
            return None
        if first.shape[0] is None and replicas > 1:
            return int(tf.shape(tree.flatten(next(iter(x.take(1))))[0])[0])
        return first.shape[0]
    if isinstance(x, (keras.utils.PyDataset, tf.distribute.DistributedDataset)) or hasattr(x, "__next__"):
        return None
    return batch_size or 32  # keras.Model.fit's default for arrays
