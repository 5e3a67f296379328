"""Group labels: one reading everywhere (issue "Trust" 1, 4 and 6).

Integer labels are indices, text labels are names, and names never look like numbers;
every Keras entry point takes the same label forms; misspelt keys, unbuilt models and
unknown options get errors that say what to do.
"""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tf_autospec as ts
from tf_autospec import groups as groups_module

FEATURES = 4


def _sequential(with_input=True):
    layers = [keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)]
    return keras.Sequential(([keras.Input((FEATURES,))] if with_input else []) + layers)


def _compile(model):
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _data(n):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, FEATURES)).astype("float32"), rng.integers(0, 2, size=n)


# ------------------------------------------------------------------ 1. one rule

@pytest.mark.parametrize("declared", [[1, 2, 3], [1, 0], ["1", "2"], ["HC", 2], [np.int64(0), np.int64(1)],
                                      ["0.5", "b"], [-1, "a"], ["a", " 7 "], [True, False], [1.5, 2.5]])
def test_group_names_that_look_like_numbers_are_refused_at_declaration(declared):
    with pytest.raises(ValueError, match="does not look like a number.*indices"):
        ts.wrap(_sequential(), groups=declared)


def test_the_issue_case_is_refused_before_any_sample_can_land_in_the_wrong_group():
    # ts.wrap(model, groups=[1, 2, 3]) with labels 1/2 recorded counts [0, 100, 60] before.
    with pytest.raises(ValueError, match=r"groups=\['group 1', 'group 2', 'group 3'\]"):
        ts.wrap(_sequential(), groups=[1, 2, 3])
    model = _compile(ts.wrap(_sequential(), groups=["site 1", "site 2", "site 3"]))
    x, y = _data(160)
    codes = np.array([1] * 100 + [2] * 60)
    model.fit(x, y, groups=codes - 1, batch_size=160, verbose=0)
    np.testing.assert_array_equal(model.last_spectra.counts, [100, 60, 0])
    model.fit(x, y, groups=np.array(["site 1", "site 2"])[codes - 1], batch_size=160, verbose=0)
    np.testing.assert_array_equal(model.last_spectra.counts, [100, 60, 0])


_NAME = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=6),  # text
    st.integers(-2, 20),  # ints
    st.integers(-2, 20).map(str),  # numeric strings
)
_NAMES = st.lists(_NAME, min_size=1, max_size=5, unique_by=str)  # mixed sets too


def _encodings(indices, names):
    """Every form a label array can take: indices as ints of any width, floats and
    tensors; names as NumPy str, bytes, object, pandas and tf.string."""
    as_names = np.array(["-1" if i < 0 else names[i] for i in indices])
    return {
        "int64": indices.astype(np.int64), "int8": indices.astype(np.int8), "float": indices.astype(float),
        "int tensor": tf.constant(indices), "column": indices[:, None],
        "str": as_names, "bytes": np.char.encode(as_names), "object": as_names.astype(object),
        "pandas": pd.Series(as_names), "pandas categorical": pd.Series(as_names, dtype="category"),
        "tf.string": tf.constant(as_names),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=_NAMES, data=st.data())
def test_every_sample_lands_in_the_group_its_label_names(names, data):
    if any(groups_module.looks_like_number(n) for n in names):
        with pytest.raises(ValueError, match="look like a number"):
            groups_module.validate_group_names(names)
        return
    declared = groups_module.validate_group_names(names)
    indices = np.array(data.draw(st.lists(st.integers(-1, len(names) - 1), min_size=1, max_size=12)))
    for encoding, labels in _encodings(indices, names).items():
        np.testing.assert_array_equal(groups_module.labels_to_indices(labels, declared), indices, err_msg=encoding)
        if encoding not in ("pandas", "pandas categorical", "object"):  # what tf.data can carry
            in_graph = groups_module.labels_to_indices_tensor(tf.constant(np.asarray(labels)), declared)
            np.testing.assert_array_equal(in_graph.numpy(), indices, err_msg=encoding)


@pytest.mark.parametrize("labels,match", [
    (np.array(["0", "1"]), "Text labels are read as names only"),
    (np.array([0, "HC"], dtype=object), "all integers .* or all text"),
    (np.array([True, False]), "integers or group names"),
])
def test_labels_that_could_be_read_two_ways_are_refused(labels, match):
    with pytest.raises(ValueError, match=match):
        groups_module.labels_to_indices(labels, ("HC", "SZ"))


# --------------------------------------------------- 4. every Keras entry point

class _Batches(keras.utils.PyDataset):
    """A PyDataset yielding ({"x": x, "group": labels}, y) with labels in a given form."""

    def __init__(self, x, y, labels, batch_size=20):
        super().__init__()
        self.x, self.y, self.labels, self.batch_size = x, y, labels, batch_size

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return {"x": self.x[part], "group": self.labels[part]}, self.y[part]


@pytest.mark.parametrize("form", ["str", "object", "bytes"])
def test_string_labels_work_in_every_entry_point(form):
    x, y = _data(40)
    indices = np.array([0, 1, 1, 0] * 10)
    names = np.array(["HC", "SZ"])[indices]
    names = {"str": names, "object": names.astype(object), "bytes": np.char.encode(names)}[form]
    model = _compile(ts.wrap(_sequential(), groups=["HC", "SZ"]))
    history = model.fit(x, y, groups=names, batch_size=40, epochs=1, verbose=0,
                        validation_data=({"x": x, "group": names}, y))
    assert "val_loss" in history.history
    np.testing.assert_array_equal(model.last_spectra.counts, [20, 20])
    expected = model.evaluate(x, y, groups=indices, verbose=0)  # Keras's results, then per group
    np.testing.assert_allclose(model.evaluate(x, y, groups=names, verbose=0), expected)
    np.testing.assert_allclose(model.evaluate({"x": x, "group": names}, y, verbose=0), expected)
    np.testing.assert_allclose(model.evaluate(_Batches(x, y, names), verbose=0), expected, rtol=1e-5)
    np.testing.assert_allclose(model.predict({"x": x, "group": names}, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_allclose(model.predict_on_batch({"x": x, "group": names}), model.predict_on_batch(x))
    model.test_on_batch({"x": x, "group": names}, y)
    model.fit(_Batches(x, y, names), epochs=1, verbose=0)
    np.testing.assert_array_equal(model.last_spectra.counts, [10, 10])
    model.fit(_Batches(x, y, names, batch_size=20), validation_data=_Batches(x, y, names), epochs=1, verbose=0)
    model.train_on_batch({"x": x, "group": names}, y)
    np.testing.assert_array_equal(model.last_spectra.counts, [20, 20])


# ------------------------------------------------------ 6. errors that say what is wrong

def test_a_bad_label_inside_tf_data_is_named():
    x, y = _data(40)
    labels = np.array(["HC"] * 39 + ["sz"])
    model = _compile(ts.wrap(_sequential(), groups=["HC", "SZ"]))
    dataset = tf.data.Dataset.from_tensor_slices(({"x": x, "group": labels}, y)).batch(40)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Unknown group labels.*\[?b?'?sz"):
        model.fit(dataset, epochs=1, verbose=0)
    numbers = tf.data.Dataset.from_tensor_slices(({"x": x, "group": np.array([0] * 39 + [7])}, y)).batch(40)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"these are not:.*\b7\b"):
        model.fit(numbers, epochs=1, verbose=0)


@pytest.mark.parametrize("key", ["groups", "grp", "Group", "group_labels"])
def test_a_misspelt_group_key_names_the_right_one(key):
    x, y = _data(40)
    model = _compile(ts.wrap(_sequential(), groups=["HC", "SZ"]))
    labels = np.zeros(40, int)
    with pytest.raises(ValueError, match=f"entry '{key}'.*key 'group'"):
        model.fit({"x": x, key: labels}, y, verbose=0)
    with pytest.raises(ValueError, match=f"entry '{key}'.*key 'group'"):
        model.fit(tf.data.Dataset.from_tensor_slices(({"x": x, key: labels}, y)).batch(8), verbose=0)
    with pytest.raises(ValueError, match=f"entry '{key}'.*key 'group'"):
        model.evaluate({"x": x, key: labels}, y, verbose=0)


def test_a_model_input_named_group_is_refused():
    features, group = keras.Input((FEATURES,), name="features"), keras.Input((1,), name="group")
    outputs = keras.layers.Dense(2)(keras.layers.Concatenate()([features, group]))
    with pytest.raises(ValueError, match="input named 'group'.*Rename"):
        ts.AutoSpecModel(inputs={"features": features, "group": group}, outputs=outputs, groups=["a", "b"])
    with pytest.raises(ValueError, match="input named 'group'"):
        ts.wrap(keras.Model([features, group], outputs), groups=["a", "b"])


def test_another_keras_backend_is_refused_at_import():
    # jax and torch are not installed here: stand in for them by what Keras reports.
    code = "import keras; keras.backend.backend = lambda: 'jax'; import tf_autospec"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode != 0
    assert "needs Keras's TensorFlow backend; KERAS_BACKEND is 'jax'. Set KERAS_BACKEND=tensorflow" in result.stderr


class SubclassedNet(ts.AutoSpecModel):
    def __init__(self, **options):
        super().__init__(groups=["HC", "SZ"], **options)
        self.hidden = keras.layers.Dense(3, activation="relu")
        self.out = keras.layers.Dense(2)

    def call(self, x):
        return self.out(self.hidden(x))


@pytest.mark.parametrize("make", [SubclassedNet, lambda: ts.wrap(_sequential(with_input=False), groups=["HC", "SZ"])],
                         ids=["subclassed", "sequential without Input"])
def test_first_calls_on_an_unbuilt_model_work_as_for_keras(make):
    x, y = _data(40)
    labels = np.array([0, 1] * 20)

    def batches():
        for start in range(0, 40, 20):
            yield {"x": x[start:start + 20], "group": labels[start:start + 20]}, y[start:start + 20]

    model = _compile(make())
    model.fit(batches(), epochs=1, verbose=0)
    np.testing.assert_array_equal(model.last_spectra.counts, [10, 10])

    model = _compile(make())
    model.train_on_batch({"x": x, "group": labels}, y)
    np.testing.assert_array_equal(model.last_spectra.counts, [20, 20])

    model = _compile(make())
    model.train_step(({"x": tf.constant(x), "group": tf.constant(labels)}, tf.constant(y)))
    np.testing.assert_array_equal(model.last_spectra.counts, [20, 20])


@pytest.mark.parametrize("make", [
    lambda **o: ts.AutoSpecModel(inputs=(i := keras.Input((FEATURES,))), outputs=keras.layers.Dense(2)(i),
                                 groups=["a", "b"], **o),
    lambda **o: SubclassedNet(**o),
    lambda **o: ts.wrap(_sequential(), groups=["a", "b"], **o),
], ids=["functional", "subclassed", "wrapped"])
def test_unknown_options_are_refused_on_every_form(make):
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['every_n_step'\].*every_n_steps"):
        make(every_n_step=10)


def test_warnings_point_at_the_users_line():
    inputs = keras.Input((FEATURES,))
    outputs = keras.layers.Dense(2)(keras.layers.BatchNormalization()(keras.layers.Dense(3)(inputs)))
    model = _compile(ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=["a", "b"]))
    x, y = _data(20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, groups=np.zeros(20, int), verbose=0)  # the line the warnings must name
    ours = [w for w in caught if issubclass(w.category, ts.AutoSpecWarning)]
    assert ours, "expected the BatchNormalization warnings"
    for warning in ours:
        assert warning.filename == __file__, (warning.filename, str(warning.message))


def test_unordered_group_declarations_are_refused():
    # A set's order changes between processes: label 0 would name another group in another run.
    for declared in ({"HC", "SZ", "BP"}, frozenset({"HC", "SZ"}), {"HC": 0, "SZ": 1}.keys()):
        with pytest.raises(ValueError, match="list or tuple.*order can change"):
            ts.wrap(_sequential(), groups=declared)


def test_unsigned_labels_are_read_by_value_everywhere():
    x, y = _data(24)
    model = _compile(ts.wrap(_sequential(), groups=["a", "b", "c"]))
    wrapped = np.array([0, 1, 2] * 8, np.uint64)
    wrapped[0] = 2**64 - 1  # was cast to -1, "in no group", in silence
    with pytest.raises(ValueError, match="outside 0..2"):
        model.fit(x, y, groups=wrapped, verbose=0)
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        labels = (np.arange(24) % 3).astype(dtype)
        model.fit(tf.data.Dataset.from_tensor_slices(({"x": x, "group": labels}, y)).batch(24), verbose=0)
        np.testing.assert_array_equal(model.last_spectra.counts, [8, 8, 8], err_msg=str(dtype))


def test_bool_labels_and_bool_options_are_refused():
    x, y = _data(24)
    model = _compile(ts.wrap(_sequential(), groups=["a", "b"]))
    bools = tf.data.Dataset.from_tensor_slices(({"x": x, "group": np.arange(24) % 2 == 0}, y)).batch(24)
    with pytest.raises(ValueError, match="integers .* or group names; received bool"):
        model.fit(bools, verbose=0)
    for option in ("every_n_steps", "top_k", "null_partitions"):
        with pytest.raises(ValueError, match=option):
            ts.wrap(_sequential(), groups=["a", "b"], **{option: True})


def test_evaluate_refuses_bad_labels_inside_tf_data_as_fit_does():
    x, y = _data(24)
    model = _compile(ts.wrap(_sequential(), groups=["HC", "SZ"]))
    model.fit(x, y, groups=np.arange(24) % 2, verbose=0)
    typo = tf.data.Dataset.from_tensor_slices(({"x": x, "group": np.array(["HC"] * 23 + ["sz"])}, y)).batch(24)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown group labels"):
        model.evaluate(typo, verbose=0)


def test_a_models_own_input_is_never_taken_for_a_misspelt_group_key():
    features, cohort = keras.Input((FEATURES,), name="x"), keras.Input((1,), name="cohort")
    outputs = keras.layers.Dense(2)(keras.layers.Concatenate()([features, cohort]))
    model = _compile(ts.AutoSpecModel(inputs={"x": features, "cohort": cohort}, outputs=outputs, groups=["a", "b"]))
    x, y = _data(20)
    inputs = {"x": x, "cohort": np.ones((20, 1), "float32")}
    model.fit({**inputs, "group": np.arange(20) % 2}, y, verbose=0)
    assert model.predict(inputs, verbose=0).shape == (20, 2)
    model.evaluate(inputs, y, verbose=0)
