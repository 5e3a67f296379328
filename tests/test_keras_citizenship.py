"""Every AutoSpec model goes through the workflows Keras users already have: save and
load, checkpoints, clones, several models built in one loop, evaluate per group."""

import json
import os
import subprocess
import sys
import textwrap

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_autospec as ts
from tf_autospec import cli, serialization

GROUPS = ["HC", "SZ"]
OPTIONS = {"kinds": ("grad", "act"), "top_k": 3, "every_n_steps": 2, "null_partitions": 0, "geometry": ["overlap"],
           "overlap_k": 2}
HERE = os.path.dirname(os.path.abspath(__file__))

# The user's own subclass, in a module of theirs (a new process imports it to load).
USER_MODELS = textwrap.dedent('''
    import keras
    import tf_autospec as ts


    @keras.saving.register_keras_serializable(package="user")
    class Net(ts.AutoSpecModel):
        def __init__(self, hidden=5, **kwargs):
            super().__init__(groups=["HC", "SZ"], **kwargs)
            self.hidden_units = hidden
            self.hidden = keras.layers.Dense(hidden, activation="tanh")
            self.out = keras.layers.Dense(2)

        def call(self, x):
            return self.out(self.hidden(x))
''')


@pytest.fixture(scope="module")
def user_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "user_models.py").write_text(USER_MODELS)
    sys.path.insert(0, str(folder))
    import user_models

    yield folder, user_models
    sys.path.remove(str(folder))


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32"), np.array(GROUPS)[rng.integers(0, 2, size=n)]


def _functional(**options):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(5, activation="tanh")(inputs)
    return ts.AutoSpecModel(inputs, keras.layers.Dense(2)(hidden), groups=GROUPS, **options)


def _wrapped(**options):
    plain = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(2)])
    return ts.wrap(plain, GROUPS, **options)


def _subclassed(user_models, **options):
    model = user_models[1].Net(**options)
    model(np.zeros((1, 6), "float32"))
    return model


def _compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def _trained(model, epochs=2, **kwargs):
    x, y, labels = _data()
    model.fit(x, y, groups=labels, batch_size=16, epochs=epochs, verbose=0, **kwargs)
    return model


def _next_step(model):
    """The spectra the model records at its next step, on a fixed batch."""
    x, y, labels = _data(16, seed=1)
    model.fit(x, y, groups=labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return model.last_spectra


def _assert_same_model(loaded, original):
    assert type(loaded) is type(original)
    assert serialization.options_config(loaded) == serialization.options_config(original)
    for a, b in zip(loaded.get_weights(), original.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(loaded.optimizer.iterations) == int(original.optimizer.iterations)
    for a, b in zip(loaded.optimizer.variables, original.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _assert_same_spectra(a, b):
    assert a.step == b.step
    assert sorted(a.spectra) == sorted(b.spectra)
    for key in a.spectra:
        np.testing.assert_allclose(a.spectra[key], b.spectra[key], rtol=1e-4, atol=1e-6, err_msg=str(key))
    # The geometry the options ask for (only the overlap, k = 2), with the same values.
    assert sorted(a.geometry) == sorted(b.geometry) and {name for _, name in a.geometry} == {"overlap"}
    for key in a.geometry:
        np.testing.assert_allclose(a.geometry[key], b.geometry[key], atol=1e-5, err_msg=str(key))


FORMS = {
    "functional": lambda user: _functional(**OPTIONS),
    "wrapped": lambda user: _wrapped(**OPTIONS),
    "subclassed": lambda user: _subclassed(user, **OPTIONS),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_save_and_load_model_give_the_same_model_recording_the_same_spectra(form, user_models, tmp_path):
    original = _trained(_compiled(FORMS[form](user_models)))
    original.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")  # no custom_objects
    _assert_same_model(loaded, original)
    _assert_same_spectra(_next_step(loaded), _next_step(original))
    assert [k.path for k in loaded.tracked_kernels] == ["dense/kernel", "dense_1/kernel"]


@pytest.mark.parametrize("form", list(FORMS))
def test_weights_files_and_clones(form, user_models, tmp_path):
    original = _trained(_compiled(FORMS[form](user_models)))
    original.save_weights(tmp_path / "m.weights.h5")
    fresh = _compiled(FORMS[form](user_models))
    fresh.load_weights(tmp_path / "m.weights.h5")
    for a, b in zip(fresh.get_weights(), original.get_weights()):
        np.testing.assert_array_equal(a, b)
    if form == "subclassed":
        return  # Keras clones a subclassed model through its config, like any Keras model
    clone = keras.models.clone_model(original)
    assert type(clone) is type(original)
    assert serialization.options_config(clone) == serialization.options_config(original)
    assert not np.array_equal(clone.get_weights()[0], original.get_weights()[0])  # fresh weights
    _trained(_compiled(clone))
    assert [k.path for k in clone.tracked_kernels] == [k.path for k in original.tracked_kernels]


def test_a_wrapped_model_loaded_from_a_keras_file_and_weights_between_wrapped_and_plain(tmp_path):
    plain = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.Dense(2)])
    plain.save(tmp_path / "plain.keras")
    wrapped = _trained(_compiled(ts.wrap(keras.models.load_model(tmp_path / "plain.keras"), GROUPS)))
    assert [k.path for k in wrapped.tracked_kernels] == ["dense/kernel", "dense_1/kernel"]
    wrapped.save_weights(tmp_path / "wrapped.weights.h5")
    other = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.Dense(2)])
    ts.wrap(other, GROUPS).load_weights(tmp_path / "wrapped.weights.h5")  # the one-line way of docs/api.md
    for a, b in zip(other.get_weights(), wrapped.wrapped.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_fresh_process_loads_every_form_and_records_the_same_next_step(user_models, tmp_path):
    folder, _ = user_models
    (tmp_path / "user_models.py").write_text(USER_MODELS)
    originals = {}
    for form, make in FORMS.items():
        originals[form] = _trained(_compiled(make(user_models)))
        originals[form].save(tmp_path / f"{form}.keras")
    x, y, labels = _data(16, seed=1)
    np.savez(tmp_path / "batch.npz", x=x, y=y, labels=labels)
    subprocess.run([sys.executable, os.path.join(HERE, "keras_citizen_scenario.py"), "step", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    for form, original in originals.items():
        expected = _next_step(original)
        saved = np.load(tmp_path / f"{form}.npz")
        about = json.loads(str(saved["about"]))
        assert about["class"] == type(original).__name__
        assert about["options"] == serialization.options_config(original)
        assert about["step"] == expected.step
        for (kernel, kind), values in expected.spectra.items():
            np.testing.assert_allclose(saved[f"{kernel}|{kind}"], values, rtol=1e-4, atol=1e-6)


def test_checkpoints_and_a_run_continued_in_a_new_process(tmp_path):
    """ModelCheckpoint (.keras, best only) beside AutoSpecCallback; the checkpoint, loaded in
    a new process, continues the run file: no repeated or renumbered step."""
    x, y, labels = _data()
    np.savez(tmp_path / "batch.npz", x=x, y=y, labels=labels)
    model = _compiled(_wrapped())
    model.fit(x, y, groups=labels, batch_size=16, epochs=2, verbose=0, validation_data=(x, y), callbacks=[
        ts.AutoSpecCallback(tmp_path / "run.h5", metadata={"seed": 0}),
        keras.callbacks.ModelCheckpoint(tmp_path / "checkpoint.keras"),
        keras.callbacks.ModelCheckpoint(tmp_path / "best.keras", save_best_only=True),
        keras.callbacks.ModelCheckpoint(tmp_path / "best.weights.h5", save_best_only=True, save_weights_only=True),
    ])
    assert isinstance(keras.models.load_model(tmp_path / "best.keras"), ts.AutoSpecModel)
    _compiled(_wrapped()).load_weights(tmp_path / "best.weights.h5")
    subprocess.run([sys.executable, os.path.join(HERE, "keras_citizen_scenario.py"), "continue", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    run = ts.load(tmp_path / "run.h5")
    np.testing.assert_array_equal(run.records["step"], np.arange(12))
    np.testing.assert_array_equal(run.records["epoch"], np.repeat(np.arange(4), 3))
    assert run.layers == ["dense/kernel", "dense_1/kernel"]
    assert [r["reasons"] for r in run.resumes] == [["initial_epoch", "optimizer_steps"]]


def test_backup_and_restore_with_autospec_callback(tmp_path):
    x, y, labels = _data()

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("killed")

    def fit(*extra):
        model = _compiled(_functional())
        model.fit(x, y, groups=labels, batch_size=16, epochs=3, verbose=0, callbacks=[
            keras.callbacks.BackupAndRestore(tmp_path / "backup"), ts.AutoSpecCallback(tmp_path / "run.h5"), *extra])

    with pytest.raises(RuntimeError, match="killed"):
        fit(Interrupt())
    fit()
    run = ts.load(tmp_path / "run.h5")
    assert sorted(set(run.records["epoch"])) == [0, 1, 2]
    assert len(set(run.records["step"])) == len(run.records["step"])  # no step twice
    assert np.all(np.diff(run.records["step"]) > 0)


def test_three_seeds_built_in_one_loop_compare_without_clear_session(tmp_path, capsys):
    paths = []
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        model = _compiled(_wrapped(null_partitions=5))
        x, y, labels = _data()
        path = tmp_path / f"seed{seed}.h5"
        model.fit(x, y, groups=labels, batch_size=16, epochs=2, verbose=0,
                  callbacks=[ts.AutoSpecCallback(path, metadata={"seed": seed})])
        paths.append(path)
    runs = [ts.load(p) for p in paths]
    assert all(run.layers == ["dense/kernel", "dense_1/kernel"] for run in runs)
    rows = ts.stats.across_runs(runs)
    assert {row["layer"] for row in rows} == {"dense/kernel", "dense_1/kernel"}
    assert cli.main(["compare", *map(str, paths), "--output", str(tmp_path / "compared")]) in (None, 0)
    assert (tmp_path / "compared" / "tests.csv").exists()


def test_the_same_architecture_has_the_same_paths_in_a_new_process():
    code = textwrap.dedent('''
        import keras, numpy as np, tf_autospec as ts
        inputs = keras.Input((6, 3))
        h = keras.layers.LSTM(4, return_sequences=True)(inputs)
        h = keras.layers.Bidirectional(keras.layers.GRU(3))(h)
        inner = keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(2, name="head")])
        model = ts.AutoSpecModel(inputs, inner(h), groups=["HC", "SZ"])
        model.compile("sgd", "mse")
        model.fit(np.zeros((4, 6, 3), "float32"), np.zeros((4, 2), "float32"), groups=[0, 1, 0, 1], verbose=0)
        print("PATHS", [k.path for k in model.tracked_kernels])
    ''')

    def paths(*prelude):
        result = subprocess.run([sys.executable, "-c", "\n".join(prelude) + code], check=True,
                                capture_output=True, text=True, timeout=300)
        return next(line for line in result.stdout.splitlines() if line.startswith("PATHS"))

    # The second builds other models first, so that Keras's counters have moved on.
    warm_up = "import keras\nfor _ in range(3): keras.Sequential([keras.layers.Dense(2), keras.layers.LSTM(2)])"
    first = paths()
    assert first == paths(warm_up)
    assert "sequential/head/kernel" in first and "sequential/dense/kernel" in first
    assert "bidirectional/forward_gru/gru_cell/recurrent_kernel" in first
    assert "lstm/lstm_cell/kernel" in first


def test_a_run_file_of_the_older_naming_still_loads(tmp_path):
    path = tmp_path / "run.h5"
    _trained(_compiled(_functional()), callbacks=[ts.AutoSpecCallback(path)])
    with h5py.File(path, "a") as f:  # as Keras's counters named the kernels before
        f.move("kernels/dense", "kernels/dense_4")
        f.move("kernels/dense_1", "kernels/dense_5")
        f.attrs["kernels"] = json.dumps(["dense_4/kernel", "dense_5/kernel"])
    run = ts.load(path)
    assert run.layers == ["dense_4/kernel", "dense_5/kernel"]
    assert run.spectrum("dense_5/kernel", "grad", "SZ").shape[0] == len(run)


def _per_group_reference(model, x, y, labels, weights=None):
    """`keras.Model.evaluate` of a plain Keras model with the same weights on each group's
    subset."""
    plain = keras.Model(model.inputs, model.outputs)
    plain.compile(loss=model.loss, metrics=["accuracy"])
    expected = {}
    for group in GROUPS + ["absent"]:
        rows = labels == group
        for name, value in (plain.evaluate(x[rows], y[rows], sample_weight=None if weights is None else weights[rows],
                                           return_dict=True, verbose=0) if rows.any() else
                            {"loss": np.nan, "accuracy": np.nan}).items():
            expected[f"{name}/{group}"] = value
    return expected


def test_evaluate_per_group_matches_keras_on_each_subset():
    inputs = keras.Input((6,))
    model = ts.AutoSpecModel(inputs, keras.layers.Dense(2)(keras.layers.Dense(5, activation="tanh")(inputs)),
                             groups=GROUPS + ["absent"])
    _trained(_compiled(model))
    x, y, labels = _data(40, seed=3)
    weights = np.random.default_rng(0).uniform(0.5, 2, size=40).astype("float32")
    expected = _per_group_reference(model, x, y, labels)
    keras_own = keras.Model.evaluate(model, x, y, return_dict=True, verbose=0)

    def check(results, reference=expected):
        for key, value in reference.items():
            np.testing.assert_allclose(results[key], value, rtol=1e-5, err_msg=key)
        for key, value in keras_own.items():
            np.testing.assert_allclose(results[key], value, rtol=1e-5, err_msg=key)

    check(model.evaluate(x, y, groups=labels, return_dict=True, verbose=0))
    check(model.evaluate({"x": x, "group": labels}, y, batch_size=7, return_dict=True, verbose=0))
    dataset = tf.data.Dataset.from_tensor_slices(({"x": x, "group": labels}, y)).batch(9)
    check(model.evaluate(dataset, return_dict=True, verbose=0))
    check(model.evaluate(((b[0], b[1]) for b in dataset.as_numpy_iterator()), return_dict=True, verbose=0))
    as_list = model.evaluate(x, y, groups=labels, verbose=0)
    assert len(as_list) == 2 + 2 * 3 and np.isnan(as_list[-1])
    weighted = model.evaluate(x, y, groups=labels, sample_weight=weights, return_dict=True, verbose=0)
    for key, value in _per_group_reference(model, x, y, labels, weights).items():
        np.testing.assert_allclose(weighted[key], value, rtol=1e-5, err_msg=key)
    assert set(model.evaluate(x, y, return_dict=True, verbose=0)) == set(keras_own)  # no labels: Keras's own


def test_the_namespace_the_readme_uses():
    code = ("import tf_autospec, sys; tf_autospec.models.build; tf_autospec.stats.across_runs; "
            "tf_autospec.plot.overview; tf_autospec.data.simulated_fmri; "
            "assert 'models' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)


def _trained_paths(model):
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((4, *model.inputs[0].shape[1:]), "float32")
    model.fit(x, np.zeros((4, 2), "float32"), groups=[0, 1, 0, 1], verbose=0)
    return [(k.path, k.layer.name) for k in model.tracked_kernels]


def test_paths_keep_keras_names_in_a_fresh_state_and_the_names_authors_chose():
    keras.backend.clear_session()
    inputs = keras.Input((6,))
    first, second = keras.layers.Dense(3), keras.layers.Dense(4)  # created in this order
    joined = keras.layers.Concatenate()([second(inputs), first(inputs)])  # called in the other
    model = ts.AutoSpecModel(inputs, keras.layers.Dense(2)(joined), groups=GROUPS)
    assert all(path == f"{name}/kernel" for path, name in _trained_paths(model))
    assert model.kernel_path(first.kernel) == "dense/kernel"
    # Authors' names of the generated form, in any order; an author's name is never reused.
    inputs = keras.Input((4, 6))
    hidden = keras.layers.Dense(5, name="dense_1")(inputs)
    einsum = keras.layers.EinsumDense("abc,cd->abd", output_shape=(4, 2), name="dense")(hidden)
    model = ts.AutoSpecModel(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(einsum)), groups=GROUPS)
    paths = dict(_trained_paths(model))
    assert paths["dense/kernel"] == "dense" and paths["dense_1/kernel"] == "dense_1"
    assert len(paths) == 3


def test_layers_by_path_container_or_keras_name_and_ambiguity_refused():
    keras.backend.clear_session()
    for _ in range(2):  # move Keras's counters on: names and paths now differ
        keras.layers.Dense(1)
    inputs = keras.Input((5, 8))
    attention = keras.layers.MultiHeadAttention(2, 4)
    head = keras.layers.Dense(2)  # Keras's name dense_2: the lowest counter, so path "dense"
    hidden = keras.layers.Dense(3)  # dense_3: path "dense_1"
    last = keras.layers.Dense(3)  # dense_4: path "dense_2", which is also head's Keras name
    outputs = head(keras.layers.Flatten()(last(hidden(attention(inputs, inputs)))))
    assert [p for p, _ in _trained_paths(ts.AutoSpecModel(inputs, outputs, groups=GROUPS,
                                                          layers=["multi_head_attention"]))] == [
        f"multi_head_attention/{n}/kernel" for n in ("query", "key", "value", "attention_output")]
    assert _trained_paths(ts.AutoSpecModel(inputs, outputs, groups=GROUPS, layers=[hidden.name])) == [
        ("dense_1/kernel", hidden.name)]
    with pytest.raises(ValueError, match="can be read two ways"):
        _trained_paths(ts.AutoSpecModel(inputs, outputs, groups=GROUPS, layers=["dense_2"]))


def test_from_config_of_every_form_dtype_and_a_subclass_with_its_own_get_config(tmp_path):
    for model in (_functional(top_k=2, dtype="float32"), _wrapped(top_k=2)):
        rebuilt = ts.AutoSpecModel.from_config(model.get_config())
        assert type(rebuilt) is type(model)
        assert serialization.options_config(rebuilt) == serialization.options_config(model)

    @keras.saving.register_keras_serializable(package="test_citizenship")
    class Guide(ts.AutoSpecModel):  # get_config as Keras's guide writes it; groups passed in
        def __init__(self, units=4, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.hidden, self.out = keras.layers.Dense(units), keras.layers.Dense(2)

        def call(self, x):
            return self.out(self.hidden(x))

        def get_config(self):
            config = super().get_config()
            config.update(units=self.units)
            return config

    model = _trained(_compiled(Guide(units=3, groups=GROUPS, top_k=2)))
    model.save(tmp_path / "guide.keras")
    loaded = keras.models.load_model(tmp_path / "guide.keras")
    assert loaded.units == 3 and serialization.options_config(loaded) == serialization.options_config(model)
