"""A fit appends to an existing run file only when it continues that run, and says so in the file."""

import datetime
import errno
import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import h5py
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


# ------------------------------------------- a fit restored from a checkpoint after a crash


class _Crash(keras.callbacks.Callback):
    """Stands for a crash at optimizer step ``step``, after ``callback`` flushed that step."""

    def __init__(self, callback, step):
        super().__init__()
        self.callback, self.step = callback, step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step + 1:
            self.callback.flush()
            raise RuntimeError("crash")


class _KerasNumbers(keras.callbacks.Callback):
    """The epoch Keras gives each optimizer step; a later fit's step replaces an abandoned one."""

    def __init__(self, numbers):
        super().__init__()
        self.numbers = numbers

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.numbers[int(self.model.optimizer.iterations.numpy()) - 1] = self.epoch


def _lengths(path):
    """The first-axis length of every dataset in the file."""
    lengths = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            lengths[name] = obj.shape[0]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return lengths


def _assert_continues_as_if_not_crashed(path, epochs_by_step, finished, dropped, warning):
    run = ts.load(path)
    np.testing.assert_array_equal(run.records["step"], np.arange(len(run)))
    np.testing.assert_array_equal(run.records["epoch"], [epochs_by_step[s] for s in range(len(run))])
    np.testing.assert_array_equal(run.epochs["epoch"], finished)
    lengths = _lengths(path)  # every per-row dataset was cut to the same length
    assert len(lengths) > 10
    assert {n for n, rows in lengths.items() if rows != (len(finished) if n.startswith("epochs/") else len(run))} == set()
    (resume,) = run.resumes
    assert resume["dropped"] == dropped and resume["first_row"] == dropped["steps"][0]
    message = str(warning.message)
    for part in (f"dropped {dropped['rows']} recorded steps (steps {dropped['steps'][0]}..{dropped['steps'][1]})",
                 f"from '{path}'", "recorded after the checkpoint this fit resumes from",
                 "by a fit that did not finish", "Run.resumes"):
        assert part in message
    return resume


@pytest.mark.parametrize("initial_epoch", [2, 0], ids=["initial_epoch", "epochs_restarted"])
def test_a_checkpoint_restored_after_a_crash_drops_the_rows_recorded_after_it(tmp_path, initial_epoch):
    # The checkpoint holds the state after epoch 1 (optimizer at step 6); the crashed fit had
    # recorded steps 6..8 from a state that is lost.
    path, checkpoint, numbers = tmp_path / "run.h5", tmp_path / "checkpoint.keras", {}
    callback = ts.AutoSpecCallback(path, flush_every_seconds=1e-6)
    with pytest.raises(RuntimeError, match="crash"):
        _fit(_model(), callback, keras.callbacks.ModelCheckpoint(checkpoint), _KerasNumbers(numbers),
             _Crash(callback, 8), epochs=4)
    assert len(ts.load(path)) == 9
    model = keras.models.load_model(checkpoint)
    assert model.optimizer.iterations.numpy() == 6
    keras_numbers = {}
    with pytest.warns(ts.AutoSpecWarning, match="dropped 3 recorded steps") as caught:
        if initial_epoch:
            _fit(model, ts.AutoSpecCallback(path), _KerasNumbers(keras_numbers), epochs=4, initial_epoch=2)
        else:  # initial_epoch forgotten: Keras numbers this fit's epochs from 0, the file after its own
            _fit(model, ts.AutoSpecCallback(path), _KerasNumbers(keras_numbers), epochs=2)
    (warning,) = [w for w in caught if "dropped" in str(w.message)]
    assert "no finished epoch" in str(warning.message)
    offset = 2 - initial_epoch
    numbers.update({step: epoch + offset for step, epoch in keras_numbers.items()})
    resume = _assert_continues_as_if_not_crashed(path, numbers, [0, 1, 2, 3],
                                                 {"rows": 3, "steps": [6, 8], "epochs": []}, warning)
    assert (resume["step"], resume["step_offset"], resume["epoch"], resume["epoch_offset"]) == (6, 0, initial_epoch, offset)
    np.testing.assert_array_equal(ts.load(path).records["epoch"], np.repeat(np.arange(4), 3))


def test_a_backup_and_restore_restart_drops_the_rows_recorded_after_its_backup(tmp_path):
    # Backups every 5 batches; the crash at step 9 comes after the one at step 4 (optimizer
    # at 5, in epoch 1). Keras restarts epoch 1 from its first batch, with the optimizer at 5.
    path, backup, numbers = tmp_path / "run.h5", tmp_path / "backup", {}
    callback = ts.AutoSpecCallback(path, flush_every_seconds=1e-6)
    with pytest.raises(RuntimeError, match="crash"):
        _fit(_model(), callback, keras.callbacks.BackupAndRestore(backup, save_freq=5), _KerasNumbers(numbers),
             _Crash(callback, 8), epochs=3)
    assert list(ts.load(path).epochs["epoch"]) == [0, 1]
    keras.backend.clear_session()
    with pytest.warns(ts.AutoSpecWarning, match="dropped 4 recorded steps") as caught:
        _fit(_model(), ts.AutoSpecCallback(path), keras.callbacks.BackupAndRestore(backup, save_freq=5),
             _KerasNumbers(numbers), epochs=3)
    (warning,) = [w for w in caught if "dropped" in str(w.message)]
    assert "and 1 finished epoch (1)" in str(warning.message)
    resume = _assert_continues_as_if_not_crashed(path, numbers, [0, 1, 2], {"rows": 4, "steps": [5, 8], "epochs": [1]},
                                                 warning)
    assert (resume["step"], resume["step_offset"], resume["epoch"], resume["epoch_offset"]) == (5, 0, 1, 0)
    run = ts.load(path)
    assert len(run) == 11 and list(run.records["batch"]) == [0, 1, 2, 0, 1, 0, 1, 2, 0, 1, 2]


KILLED = textwrap.dedent(
    """
    import os, sys, keras, numpy as np, tf_autospec as ts
    folder = sys.argv[1]
    rng = np.random.default_rng(0)
    x, y, labels = rng.normal(size=(48, 6)).astype("float32"), rng.integers(0, 2, 48), rng.integers(-1, 2, 48)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2, name="out")(hidden), groups=["HC", "SZ"])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = ts.AutoSpecCallback(f"{folder}/run.h5", flush_every_seconds=1e-6)

    class Kill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations.numpy() == 9:  # step 8 recorded
                callback.flush()
                os._exit(1)

    model.fit(x, y, groups=labels, batch_size=16, epochs=4, verbose=0,
              callbacks=[callback, keras.callbacks.ModelCheckpoint(f"{folder}/checkpoint.keras"), Kill()])
    """
)


def test_a_killed_process_continued_from_its_checkpoint_in_a_new_one(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    killed = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, timeout=300)
    assert killed.returncode == 1, killed.stderr.decode()[-2000:]
    path = tmp_path / "run.h5"
    np.testing.assert_array_equal(ts.load(path).records["step"], np.arange(9))  # left open by the killed writer
    model = keras.models.load_model(tmp_path / "checkpoint.keras")
    with pytest.warns(ts.AutoSpecWarning, match="dropped 3 recorded steps") as caught:
        _fit(model, ts.AutoSpecCallback(path), epochs=4, initial_epoch=2)
    (warning,) = [w for w in caught if "dropped" in str(w.message)]
    epochs_by_step = dict(enumerate(np.repeat(np.arange(4), 3)))
    _assert_continues_as_if_not_crashed(path, epochs_by_step, [0, 1, 2, 3], {"rows": 3, "steps": [6, 8], "epochs": []},
                                        warning)


def test_a_second_fit_after_a_renumbered_one_drops_nothing(tmp_path):
    # Steps 3..5 of the file are the second model's steps 0..2 (step_offset 3): its next fit
    # starts at optimizer step 3 and continues them, it does not resume from before them.
    path = tmp_path / "run.h5"
    _fit(_model(), ts.AutoSpecCallback(path))
    model = _model()
    _fit(model, ts.AutoSpecCallback(path, resume=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ts.AutoSpecWarning)
        _fit(model, ts.AutoSpecCallback(path))
    run = ts.load(path)
    np.testing.assert_array_equal(run.records["step"], np.arange(9))
    np.testing.assert_array_equal(run.records["epoch"], np.repeat([0, 1, 2], 3))
    assert [(r["step_offset"], "dropped" in r) for r in run.resumes] == [(3, False), (3, False)]


def test_a_resume_after_a_failed_write_appends_after_the_complete_rows(tmp_path, monkeypatch):
    # The disk filled up in the middle of a flush: some datasets got rows that records/step
    # never counted. The resume cuts them, so that every dataset's row i is the same step.
    path, model = tmp_path / "run.h5", _model()
    original, calls = store._append, []

    def failing(dataset, rows):
        calls.append(dataset.name)
        if len(calls) > 26:  # 19 datasets per flush + 2 per epoch: fails inside the second flush
            raise OSError(errno.ENOSPC, "No space left on device")
        original(dataset, rows)

    with monkeypatch.context() as patch:
        patch.setattr(store, "_append", failing)
        with pytest.raises(ts.StoreError, match="disk full"):
            _fit(model, ts.AutoSpecCallback(path), epochs=2)
    with h5py.File(path, "r") as f:
        assert f["records/step"].shape[0] == 3 and f["kernels/hidden/kernel/grad"].shape[0] == 6
    _fit(model, ts.AutoSpecCallback(path))
    run = ts.load(path)
    np.testing.assert_array_equal(run.records["step"], [0, 1, 2, 6, 7, 8])
    lengths = _lengths(path)
    assert len(lengths) > 10
    assert {n: rows for n, rows in lengths.items() if not n.startswith("epochs/") and rows != 6} == {}


def test_under_a_sparse_schedule_an_abandoned_finished_epoch_is_dropped(tmp_path):
    # Steps 0, 5, 10 are recorded. The checkpoint holds epoch 1's end (step 6); the crashed
    # fit finished epoch 2 (steps 6..8, none recorded) and died at step 9.
    path, checkpoint = tmp_path / "run.h5", tmp_path / "checkpoint.keras"
    callback = ts.AutoSpecCallback(path, flush_every_seconds=1e-6)
    save_epoch_1 = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: model.save(checkpoint) if epoch == 1 else None)
    model = _model(every_n_steps=5)
    with pytest.raises(RuntimeError, match="crash"):
        _fit(model, callback, save_epoch_1, _Crash(callback, 9), epochs=4)
    assert list(ts.load(path).epochs["epoch"]) == [0, 1, 2]
    restored = keras.models.load_model(checkpoint)
    with pytest.warns(ts.AutoSpecWarning, match="dropped no recorded step and 1 finished epoch"):
        _fit(restored, ts.AutoSpecCallback(path), epochs=4, initial_epoch=2)
    run = ts.load(path)
    assert list(run.epochs["epoch"]) == [0, 1, 2, 3]
    np.testing.assert_array_equal(run.records["step"], [0, 5, 10])
    np.testing.assert_array_equal(run.records["epoch"], [0, 1, 3])
    assert run.resumes[-1]["dropped"] == {"rows": 0, "steps": [], "epochs": [2]}
