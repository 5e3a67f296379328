"""``evaluate`` per group is `keras.Model.evaluate` on each group's subset, batched as
the data given are batched: per-output losses of a multi-output model (which Keras
averages per batch), infinite generators and PyDatasets read only ``steps`` batches."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_autospec as ts

GROUPS = ["HC", "SZ"]
ALL = GROUPS + ["absent"]
N = 40
BATCH = 7


def _compile(model):
    model.compile(
        loss={"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "reg": "mse"},
        loss_weights={"cls": 1.0, "reg": 0.3},
        metrics={"cls": ["accuracy"], "reg": ["mae"]},
    )
    return model


def _models():
    inputs = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(5, activation="tanh")(inputs)
    outputs = {"cls": keras.layers.Dense(2, name="cls")(hidden), "reg": keras.layers.Dense(1, name="reg")(hidden)}
    model = _compile(ts.AutoSpecModel(inputs, outputs, groups=ALL))
    plain = _compile(keras.Model(model.inputs, model.outputs))  # the same layers: the same weights
    return model, plain


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(7)
    return _models()


def _data(n=N, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = {"cls": (x[:, 0] > 0).astype("int32"), "reg": (x[:, 1] + rng.normal(size=n)).astype("float32")[:, None]}
    return x, y, np.array(GROUPS)[rng.integers(0, 2, size=n)]


def _take(values, rows):
    return {k: v[rows] for k, v in values.items()} if isinstance(values, dict) else values[rows]


def _expected(plain, x, y, labels, batch_size):
    """Keras on the whole data, and on each group's subset, with ``batch_size``."""
    expected = dict(plain.evaluate(x, y, batch_size=batch_size, return_dict=True, verbose=0))
    names = list(expected)
    for group in ALL:
        rows = labels == group
        logs = plain.evaluate(x[rows], _take(y, rows), batch_size=batch_size, return_dict=True,
                              verbose=0) if rows.any() else dict.fromkeys(names, np.nan)
        expected.update({f"{name}/{group}": value for name, value in logs.items()})
    return expected


def _check(results, expected):
    assert set(results) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(results[key], value, rtol=1e-5, atol=1e-7, err_msg=key)


def test_per_output_losses_with_arrays_and_datasets(models):
    model, plain = models
    x, y, labels = _data()
    expected = _expected(plain, x, y, labels, BATCH)
    assert {"cls_loss/HC", "reg_loss/SZ", "cls_accuracy/HC", "reg_mae/absent"} <= set(expected)
    # The batches of one group are smaller than BATCH and of varying sizes: per-output
    # losses (means of per-batch means) would differ without re-batching.
    _check(model.evaluate(x, y, groups=labels, batch_size=BATCH, return_dict=True, verbose=0), expected)
    index = np.array([ALL.index(g) for g in labels])
    for group_entry in (labels, index):  # names, indices
        dataset = tf.data.Dataset.from_tensor_slices(({"x": x, "group": group_entry}, y)).batch(BATCH)
        _check(model.evaluate(dataset, return_dict=True, verbose=0), expected)
    # [N, 1 + P] labels (null partitions): column 0 is the group. A model of its own: one
    # whose test step was traced with labels of another rank fails (Keras then traces an
    # unknown rank), per group or not.
    other, other_plain = _models()
    partitions = np.stack([index, index[::-1], index], axis=1)
    dataset = tf.data.Dataset.from_tensor_slices(({"x": x, "group": partitions}, y)).batch(BATCH)
    _check(other.evaluate(dataset, return_dict=True, verbose=0), _expected(other_plain, x, y, labels, BATCH))
    # a static batch dimension, and `steps`: the samples of the first 3 batches only
    dataset = tf.data.Dataset.from_tensor_slices(({"x": x, "group": labels}, y)).batch(BATCH, drop_remainder=True)
    first = slice(0, 3 * BATCH)
    _check(model.evaluate(dataset, steps=3, return_dict=True, verbose=0),
           _expected(plain, x[first], _take(y, first), labels[first], BATCH))
    # an unbatched dimension other than the batch's: a dataset of one batch
    whole = tf.data.Dataset.from_tensors(({"x": x, "group": labels}, y))
    _check(model.evaluate(whole, return_dict=True, verbose=0), _expected(plain, x, y, labels, N))


def _batch(i, size=8):
    x, y, labels = _data(size, seed=100 + i)
    return {"x": x, "group": labels}, y


def test_an_infinite_generator_with_steps(models):
    model, plain = models
    drawn = []

    def endless():
        for i in itertools.count():
            if i > 50:  # a hang, made a failure
                raise RuntimeError("evaluate read past `steps` batches")
            drawn.append(i)
            yield _batch(i)

    results = model.evaluate(endless(), steps=5, return_dict=True, verbose=0)
    assert len(drawn) == 5
    batches = [_batch(i) for i in range(5)]
    x = np.concatenate([b[0]["x"] for b in batches])
    y = {k: np.concatenate([b[1][k] for b in batches]) for k in ("cls", "reg")}
    _check(results, _expected(plain, x, y, np.concatenate([b[0]["group"] for b in batches]), 8))


class Endless(keras.utils.PyDataset):
    def __init__(self):
        super().__init__()
        self.read = []

    @property
    def num_batches(self):
        return None

    def __getitem__(self, index):
        self.read.append(index)
        return _batch(index)


def test_an_infinite_pydataset_with_steps(models):
    model, plain = models
    data = Endless()
    results = model.evaluate(data, steps=4, return_dict=True, verbose=0)
    assert max(data.read) == 3
    batches = [_batch(i) for i in range(4)]
    x = np.concatenate([b[0]["x"] for b in batches])
    y = {k: np.concatenate([b[1][k] for b in batches]) for k in ("cls", "reg")}
    _check(results, _expected(plain, x, y, np.concatenate([b[0]["group"] for b in batches]), 8))
    with pytest.raises(ValueError, match="steps="):
        model.evaluate(Endless(), verbose=0)


def test_one_model_evaluates_labels_of_either_rank():
    # Keras retraces the step with labels of unknown rank when their rank changes.
    inputs = keras.Input((4,))
    model = ts.AutoSpecModel(inputs, keras.layers.Dense(2)(inputs), groups=["HC", "SZ"])
    model.compile(optimizer="sgd", loss="mse")
    x, y, labels = np.ones((8, 4), "float32"), np.zeros((8, 2), "float32"), np.array([0, 1] * 4, "int32")
    for column in (labels, labels[:, None]):
        dataset = tf.data.Dataset.from_tensor_slices(({"x": x, "group": column}, y)).batch(4)
        assert np.isfinite(model.evaluate(dataset, return_dict=True, verbose=0)["loss/SZ"])
