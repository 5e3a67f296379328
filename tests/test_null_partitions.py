"""Null partitions: random relabelings of the subjects that keep every group's size
(`tf_autospec.null_partitions`), recorded beside the groups by
``AutoSpecModel(null_partitions=P)``.

Their spectra are checked like the groups' own against the independent brute force
(tests/reference.py): each group's gradient from its own tape pass on the group-masked
loss, the factors from an explicit forward pass, float64 NumPy SVD.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_autospec as ts
from tf_autospec import groups as groups_module
from reference import assert_spectrum_matches, group_gradients, product_factors, singular_values

GROUPS = ("a", "b", "c", "absent")
# Imbalanced groups, samples in no group (-1), a declared group that never occurs.
LABELS = np.array([0, 1, 0, 0, -1, 2, 0, 1, 0, -1, 0, 0, 2, 1], dtype=np.int32)
N = len(LABELS)
PARTITIONS = 3
LOSS = keras.losses.MeanSquaredError(reduction=None)


def _model(null_partitions=PARTITIONS):
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(4, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, name="out")(hidden)
    model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=GROUPS, null_partitions=null_partitions)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 5)).astype("float32"), rng.normal(size=(N, 3)).astype("float32")


def _dense_product(layer):
    return lambda a: tf.matmul(a, layer.kernel) + layer.bias


def test_null_partition_spectra_match_the_independent_reference():
    x, y = _data()
    partitioned = ts.null_partitions(LABELS, PARTITIONS, seed=4)
    model = _model()
    model(x)  # built: the reference runs on the weights of the step's forward pass
    references = {}
    for name in ("hidden", "out"):
        layer = model.get_layer(name)
        for column in range(1 + PARTITIONS):
            labels = partitioned[:, column]
            grads = group_gradients(model, layer.kernel, x, y, labels, len(GROUPS), LOSS)
            rows_a, rows_delta = product_factors(model, layer, x, y, labels, len(GROUPS), LOSS,
                                                 _dense_product(layer), lambda a: a)
            references[(name, column)] = grads, rows_a, rows_delta
    model.fit(x, y, groups=partitioned, batch_size=N, epochs=1, shuffle=False, verbose=0)
    spectra = model.last_spectra

    np.testing.assert_array_equal(spectra.counts, [np.sum(LABELS == g) for g in range(len(GROUPS))])
    assert spectra.null_counts.shape == (PARTITIONS, len(GROUPS))
    for column in range(1, 1 + PARTITIONS):
        counts = [np.sum(partitioned[:, column] == g) for g in range(len(GROUPS))]
        np.testing.assert_array_equal(spectra.null_counts[column - 1], counts)
        np.testing.assert_array_equal(counts, spectra.counts)  # the same sizes as the groups
    checked = 0
    for (name, column), (grads, rows_a, rows_delta) in references.items():
        kernel = model.get_layer(name).kernel.path
        fan_in, fan_out = model.get_layer(name).kernel.shape
        for g, group in enumerate(GROUPS):
            recorded = {kind: spectra.spectrum(kernel, kind, group) if column == 0
                        else spectra.null_spectrum(kernel, kind, group)[column - 1] for kind in ts.KINDS}
            label = f"{kernel} partition {column} group {group}"
            if rows_a[g] is None:
                assert all(np.isnan(v).all() for v in recorded.values()), label
                continue
            rows = rows_a[g].shape[0]
            np.testing.assert_allclose(rows_a[g].T @ rows_delta[g], grads[g], atol=1e-5 * np.abs(grads[g]).max())
            assert_spectrum_matches(recorded["grad"], singular_values(grads[g]), min(rows, fan_in, fan_out),
                                    f"grad {label}")
            assert_spectrum_matches(recorded["act"], singular_values(rows_a[g]), min(rows, fan_in), f"act {label}")
            assert_spectrum_matches(recorded["delta"], singular_values(rows_delta[g]), min(rows, fan_out),
                                    f"delta {label}")
            checked += column > 0
    assert checked == 2 * PARTITIONS * 3  # kernels × partitions × present groups
    # The relabelings are not the groups: some partition's spectra differ from the real ones.
    assert not np.allclose(spectra.null_spectrum("hidden/kernel", "grad", "a"),
                           spectra.spectrum("hidden/kernel", "grad", "a")[None], equal_nan=True)


def test_null_partitions_keep_sizes_are_reproducible_and_keep_subjects_together():
    labels = np.array([0, 0, 1, -1, 2, 1, 0, 2, 0, -1, 1, 0], dtype=np.int32)
    partitioned = ts.null_partitions(labels, 50, seed=1)
    assert partitioned.shape == (12, 51) and partitioned.dtype == np.int32
    np.testing.assert_array_equal(partitioned[:, 0], labels)
    for column in partitioned.T:
        np.testing.assert_array_equal(np.sort(column), np.sort(labels))  # every group's size
        np.testing.assert_array_equal(column == -1, labels == -1)  # the samples in no group stay out
    assert len({tuple(column) for column in partitioned[:, 1:].T}) > 40  # relabelings, not copies
    # A function of (labels, seed, subjects).
    np.testing.assert_array_equal(ts.null_partitions(labels, 50, seed=1), partitioned)
    assert not np.array_equal(ts.null_partitions(labels, 50, seed=2), partitioned)

    # Several samples per subject: a subject's samples keep one label in every partition, and
    # the groups keep their numbers of subjects.
    subjects = np.array(["s1", "s2", "s3", "s1", "s4", "s2", "s5", "s6", "s3", "s5", "s6", "s4"])
    per_subject = {"s1": 0, "s2": 1, "s3": 0, "s4": 2, "s5": -1, "s6": 1}
    labels = np.array([per_subject[s] for s in subjects], dtype=np.int32)
    partitioned = ts.null_partitions(labels, 30, seed=0, subjects=subjects)
    np.testing.assert_array_equal(ts.null_partitions(labels, 30, seed=0, subjects=subjects), partitioned)
    assert not np.array_equal(ts.null_partitions(labels, 30, seed=0), partitioned)
    for column in partitioned.T:
        relabeled = {}
        for subject, label in zip(subjects, column):
            assert relabeled.setdefault(subject, label) == label, subject
        assert sorted(relabeled.values()) == sorted(per_subject.values())
        assert relabeled["s5"] == -1
    with pytest.raises(ValueError, match="s1.* has samples in different groups"):
        ts.null_partitions(np.where(np.arange(12) == 3, 1, labels), 5, subjects=subjects)
    with pytest.raises(ValueError, match="one label per sample"):
        ts.null_partitions(labels[:, None].repeat(2, axis=1), 5)


def test_labels_with_the_wrong_number_of_columns_are_refused_clearly():
    x, y = _data()
    partitioned = ts.null_partitions(LABELS, PARTITIONS)
    message = str(groups_module.partitions_error(3, PARTITIONS))
    assert "1 + 3 columns; received 3" in message and "tf_autospec.null_partitions(labels, 3)" in message
    with pytest.raises(ValueError, match=r"1 \+ 3 columns; received 3"):
        _model().fit(x, y, groups=partitioned[:, :3], batch_size=N, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"records no null partitions.*null_partitions=3"):
        _model(null_partitions=0).fit(x, y, groups=partitioned, batch_size=N, epochs=1, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices(({"x": x, "group": partitioned[:, :2]}, y)).batch(N)
    with pytest.raises(ValueError, match=r"1 \+ 3 columns; received 2"):
        _model().fit(dataset, epochs=1, shuffle=False, verbose=0)
    # One label per sample as arrays: the partitions are drawn in fit (every sample a
    # subject, seed 0), as tf_autospec.null_partitions draws them.
    drawn, given = _model(), _model()
    given.set_weights(drawn.get_weights())
    drawn.fit(x, y, groups=LABELS, batch_size=N, epochs=1, shuffle=False, verbose=0)
    given.fit(x, y, groups=partitioned, batch_size=N, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_array_equal(drawn.last_spectra.null_counts, given.last_spectra.null_counts)
    for key, values in given.last_spectra.null_spectra.items():
        np.testing.assert_allclose(drawn.last_spectra.null_spectra[key], values, rtol=1e-6, err_msg=str(key))


def _run(tmp_path, name, groups, x=None, y=None):
    """A short recorded run of the test model; returns it loaded."""
    keras.backend.clear_session()
    x_default, y_default = _data()
    model = _model(null_partitions=5)
    path = tmp_path / f"{name}.h5"
    model.fit(x_default if x is None else x, y_default if y is None else y, groups=groups, batch_size=N,
              epochs=2, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    return ts.load(path)


def test_runs_with_other_random_groups_are_not_compared(tmp_path):
    # Partitions drawn by fit from different samples (folds made by hand) are different
    # random groups: their comparison gave 8 of 12 "significant" tests on null data.
    labels = np.array([0, 1, 2] * (N // 3) + [0] * (N % 3))
    same = [_run(tmp_path, f"seed{i}", labels) for i in range(2)]
    assert same[0].attributes["null_partitions_origin"]["given"] is False
    ts.stats.across_runs(same)  # the same arrays: the same partitions
    other_sample = _run(tmp_path, "fold", labels[::-1].copy())
    with pytest.raises(ValueError, match="not the same random groups.*drew theirs in fit from different samples"):
        ts.stats.across_runs([same[0], other_sample])
    given = _run(tmp_path, "given", groups_module.null_partitions(labels, 5, seed=7))
    assert given.attributes["null_partitions_origin"] == {"given": True}
    with pytest.raises(ValueError, match="the others were given them"):
        ts.stats.across_runs([same[0], given])
    fewer_path = tmp_path / "fewer.h5"
    keras.backend.clear_session()
    fewer = _model(null_partitions=6)
    fewer.fit(*_data(), groups=labels, batch_size=N, epochs=1, verbose=0, callbacks=[ts.AutoSpecCallback(fewer_path)])
    with pytest.raises(ValueError, match="different numbers of null partitions"):
        ts.stats.across_runs([same[0], ts.load(fewer_path)])


def test_partitions_are_never_drawn_from_one_batch():
    # A subject's random group would change from batch to batch.
    x, y = _data()
    model = _model()

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            part = slice(index * 7, (index + 1) * 7)
            return {"x": x[part], "group": LABELS[part]}, y[part]

    with pytest.raises(ValueError, match="null partitions, so its group labels need 1 \\+ 3 columns"):
        model.fit(Batches(), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="1 \\+ 3 columns"):
        model.train_on_batch({"x": x, "group": LABELS}, y)
    model.train_on_batch({"x": x, "group": groups_module.null_partitions(LABELS, PARTITIONS)}, y)


def test_groups_that_are_the_target_are_recorded_and_claim_nothing(tmp_path):
    x, _ = _data()
    classes = np.array([0, 1] * (N // 2))
    runs = []
    for seed in range(2):
        keras.backend.clear_session()
        inputs = keras.Input((5,))
        model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2)(inputs), groups=("c0", "c1"),
                                 null_partitions=5)
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        path = tmp_path / f"target{seed}.h5"
        model.fit(x, classes, groups=classes, batch_size=N, epochs=2, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
        runs.append(ts.load(path))
    assert runs[0].attributes["target_is_group"] is True
    rows = ts.stats.across_runs(runs)
    assert rows and not any(r["significant"] for r in rows)
    assert all(r["inference"].startswith("none: the groups are the prediction target") for r in rows)
