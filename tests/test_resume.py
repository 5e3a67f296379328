"""A fit appends to an existing run file only when it continues that run, and says so in the file."""

import datetime
import errno
import shutil

import keras
import numpy as np
import pytest

import tf_autospec as ts
from tf_autospec import cli, store

GROUPS = ["HC", "SZ"]


def _model(**options):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2, name="out")(hidden), groups=GROUPS,
                             **options)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data(n=48):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 2, size=n), rng.integers(-1, 2, size=n)


def _fit(model, *callbacks, epochs=1, **kwargs):
    x, y, labels = _data()
    model.fit(x, y, groups=labels, batch_size=16, epochs=epochs, verbose=0, callbacks=list(callbacks), **kwargs)


@pytest.fixture
def recorded(tmp_path):
    """A run file of 3 steps (epoch 0) with metadata {"fold": 0}."""
    path = tmp_path / "run.h5"
    _fit(_model(), ts.AutoSpecCallback(path, metadata={"fold": 0}))
    return path


def test_a_fresh_fit_on_a_recorded_run_is_refused_before_any_step(recorded):
    before = recorded.read_bytes()
    keras.backend.clear_session()  # a rerun notebook cell: a new model of the same architecture
    model = _model()
    with pytest.raises(ts.StoreError) as raised:
        _fit(model, ts.AutoSpecCallback(recorded, metadata={"fold": 0}))
    message = str(raised.value)
    for part in (f"'{recorded}' already holds a run", "3 recorded steps: steps 0..2, epochs 0..0",
                 "1 finished epochs", 'metadata {"fold": 0}', "epoch 0, optimizer at step 0", "new path",
                 "overwrite=True", "resume=True"):
        assert part in message
    assert model.optimizer.iterations.numpy() == 0
    assert recorded.read_bytes() == before


def test_a_fresh_fit_on_a_killed_run_is_refused_and_leaves_it_as_it_was(tmp_path):
    path, killed = tmp_path / "run.h5", tmp_path / "killed.h5"
    callback = ts.AutoSpecCallback(path)

    class Die(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                callback.flush()
                shutil.copyfile(path, killed)  # as a killed writer leaves it: still marked open
                raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _fit(_model(), callback, Die(), epochs=2)
    before = killed.read_bytes()
    with pytest.raises(ts.StoreError, match="already holds a run .3 recorded steps"):
        _fit(_model(), ts.AutoSpecCallback(killed))
    assert killed.read_bytes() == before


def test_a_second_fit_of_the_same_model_appends_and_is_recorded(recorded, capsys):
    model = _model()
    callback = ts.AutoSpecCallback(recorded, overwrite=True)
    _fit(model, callback)  # replaces the file
    _fit(model, ts.AutoSpecCallback(recorded))
    again = ts.AutoSpecCallback(recorded)
    _fit(model, again)
    _fit(model, again, epochs=2)  # Keras restarts epochs at 0 in each fit
    run = ts.load(recorded)
    np.testing.assert_array_equal(run.records["step"], np.arange(15))
    np.testing.assert_array_equal(run.records["epoch"], np.repeat([0, 1, 2, 3, 4], 3))
    assert run.metadata == {}
    assert [r["reasons"] for r in run.resumes] == [["optimizer_steps"]] * 3
    assert [(r["step"], r["step_offset"]) for r in run.resumes] == [(3, 0), (6, 0), (9, 0)]
    assert [(r["epoch"], r["epoch_offset"]) for r in run.resumes] == [(0, 1), (0, 2), (0, 3)]
    assert [r["first_row"] for r in run.resumes] == [3, 6, 9]
    for resume in run.resumes:
        assert datetime.datetime.strptime(resume["time"], "%Y-%m-%dT%H:%M:%S%z")
        assert resume["metadata"] == {}
    cli.main(["info", str(recorded)])
    said = [line for line in capsys.readouterr().out.splitlines() if "resumed" in line]
    assert len(said) == 3 and "at row 3 (optimizer_steps): steps +0, epochs +1" in said[0]


def test_a_backup_and_restore_restart_appends(tmp_path):
    path, backup = tmp_path / "run.h5", tmp_path / "backup"
    # A run that died after 2 epochs, leaving its checkpoint.
    _fit(_model(), ts.AutoSpecCallback(path), keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False),
         epochs=2)
    keras.backend.clear_session()
    # AutoSpecCallback first: its on_train_begin runs before the restore.
    _fit(_model(), ts.AutoSpecCallback(path), keras.callbacks.BackupAndRestore(backup), epochs=4)
    run = ts.load(path)
    np.testing.assert_array_equal(run.records["step"], np.arange(12))
    np.testing.assert_array_equal(run.records["epoch"], np.repeat([0, 1, 2, 3], 3))
    (resume,) = run.resumes
    assert resume["reasons"] == ["initial_epoch", "optimizer_steps"]
    assert (resume["epoch"], resume["epoch_offset"], resume["step"], resume["step_offset"]) == (2, 0, 6, 0)


def test_resume_true_appends_a_fresh_fit(tmp_path):
    path = tmp_path / "run.h5"
    _fit(_model(), ts.AutoSpecCallback(path, resume=True))  # no file yet: creates it
    assert ts.load(path).resumes == []
    _fit(_model(), ts.AutoSpecCallback(path, resume=True))
    run = ts.load(path)
    np.testing.assert_array_equal(run.records["step"], np.arange(6))
    np.testing.assert_array_equal(run.records["epoch"], [0, 0, 0, 1, 1, 1])
    (resume,) = run.resumes
    assert resume["reasons"] == ["resume=True"]
    assert (resume["epoch"], resume["epoch_offset"], resume["step"], resume["step_offset"]) == (0, 1, 0, 3)


def test_resume_together_with_overwrite_is_refused(tmp_path):
    with pytest.raises(ValueError, match="resume=True appends .* overwrite=True replaces .* one of them"):
        ts.AutoSpecCallback(tmp_path / "run.h5", resume=True, overwrite=True)


@pytest.mark.parametrize(
    "metadata,differs", [({"fold": 1}, "['fold']"), ({"fold": 0, "seed": 2}, "['seed']"), ({"seed": 2}, "['fold', 'seed']")],
    ids=["changed", "added", "replaced"],
)
def test_a_resume_with_other_metadata_is_refused(recorded, metadata, differs):
    before = recorded.read_bytes()
    with pytest.raises(ts.StoreError) as raised:
        _fit(_model(), ts.AutoSpecCallback(recorded, metadata=metadata), initial_epoch=1, epochs=2)
    message = str(raised.value)
    for part in (f"'{recorded}' holds a run with metadata {{\"fold\": 0}}", "(initial_epoch)",
                 f"differs in {differs}", "metadata=None keeps the file's", "new path", "overwrite=True"):
        assert part in message
    assert recorded.read_bytes() == before


@pytest.mark.parametrize("metadata", [None, {"fold": 0}], ids=["omitted", "same"])
def test_a_resume_keeps_the_file_metadata(recorded, metadata):
    _fit(_model(), ts.AutoSpecCallback(recorded, metadata=metadata), initial_epoch=1, epochs=2)
    run = ts.load(recorded)
    assert len(run) == 6 and run.metadata == {"fold": 0}
    assert run.resumes[0]["metadata"] == (metadata or {})


def test_a_file_without_records_is_replaced_by_a_fresh_fit(tmp_path, monkeypatch):
    path = tmp_path / "run.h5"

    def full_disk(dataset, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:  # the writer dies after creating the file, before its first row
        patch.setattr(store, "_append", full_disk)
        with pytest.raises(ts.StoreError, match="disk full"):
            _fit(_model(), ts.AutoSpecCallback(path, metadata={"try": 1}))
    assert len(ts.load(path)) == 0
    _fit(_model(), ts.AutoSpecCallback(path, metadata={"try": 2}))
    run = ts.load(path)
    np.testing.assert_array_equal(run.records["step"], np.arange(3))
    assert run.metadata == {"try": 2} and run.resumes == []


@pytest.mark.parametrize("option", [{"every_n_steps": 2}, {"randomized": True, "top_k": 2}, {"null_partitions": 3}])
def test_a_resume_with_other_recording_options_is_refused(tmp_path, option):
    # Exact values and randomized lower bounds, or every step and every other one, must not
    # be mixed under one label in the file.
    path = tmp_path / "run.h5"
    first = {"top_k": 2} if "randomized" in option else {}
    _fit(_model(**first), ts.AutoSpecCallback(path))
    before = path.read_bytes()
    keras.backend.clear_session()
    with pytest.raises(store.StoreError, match="options: file has"):
        _fit(_model(**option), ts.AutoSpecCallback(path, resume=True))
    assert path.read_bytes() == before


def test_an_epochs_row_is_on_disk_when_the_epoch_ends(tmp_path):
    # A process killed right after an epoch ended lost that epoch's row (its write was
    # still in the background thread); the next callback now finds it in the file.
    path, seen = tmp_path / "run.h5", []

    class ReadAtEpochEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(list(ts.load(path).epochs["epoch"]))

    _fit(_model(), ts.AutoSpecCallback(path), ReadAtEpochEnd(), epochs=3)
    assert seen == [[0], [0, 1], [0, 1, 2]]
