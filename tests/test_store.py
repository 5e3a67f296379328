"""AutoSpecCallback writes every recorded step to HDF5; tf_autospec.load reads it back."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_autospec as ts
from tf_autospec import store, summaries

GROUPS = ["HC", "SZ", "absent"]


def _model(groups=GROUPS, **options):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(2, name="out")(hidden)
    model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=groups, **options)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 2, size=n),
            rng.integers(-1, 2, size=n))


class Keep(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        if self.model.last_spectra is not None:
            self.steps.append(self.model.last_spectra)


def test_round_trip_holds_every_step_exactly(tmp_path):
    path = tmp_path / "run.h5"
    model, keep = _model(null_partitions=2), Keep()
    x, y, labels = _data()
    model.fit(x, y, groups=labels, batch_size=16, epochs=2, verbose=0,
              validation_data=({"x": x, "group": labels}, y),
              callbacks=[keep, ts.AutoSpecCallback(path, metadata={"fold": 3, "site": "NM"})])
    run = ts.load(path)
    assert run.null_partitions == 2
    assert run.groups == tuple(GROUPS) and run.kinds == ts.KINDS
    assert run.layers == ["hidden/kernel", "out/kernel"]
    assert len(run) == 6
    np.testing.assert_array_equal(run.records["step"], np.arange(6))
    np.testing.assert_array_equal(run.records["epoch"], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(run.records["batch"], [0, 1, 2, 0, 1, 2])
    assert np.all(np.diff(run.records["wall_time"]) >= 0)
    assert {"loss", "accuracy"} <= set(run.records)
    for layer in run.layers:
        for kind in run.kinds:
            for g, group in enumerate(GROUPS):
                expected = np.stack([s.spectra[(layer, kind)][g] for s in keep.steps])
                np.testing.assert_array_equal(run.spectrum(layer, kind, group), expected)
                # The null partitions' spectra [steps, P, width], as recorded.
                np.testing.assert_array_equal(run.null_spectrum(layer, kind, group),
                                              np.stack([s.null_spectra[(layer, kind)][:, g] for s in keep.steps]))
    np.testing.assert_array_equal(run.counts("SZ"), [s.counts[1] for s in keep.steps])
    np.testing.assert_array_equal(run.null_counts("SZ"), [s.null_counts[:, 1] for s in keep.steps])
    assert np.all(run.null_counts("absent") == 0) and run.null_counts("HC").shape == (6, 2)
    assert np.all(run.counts("absent") == 0) and np.all(np.isnan(run.spectrum("out/kernel", "grad", "absent")))
    assert run.metadata == {"fold": 3, "site": "NM"}
    assert run.attributes["tensorflow_version"] == tf.__version__
    assert run.attributes["keras_version"] == keras.__version__
    assert run.attributes["options"] == {"layers": None, "kinds": list(ts.KINDS), "top_k": None, "randomized": False,
                                        "every_n_steps": 1, "null_partitions": 2, "schedule": None,
                                        "precision": "float64", "geometry": ["cosine", "overlap"],
                                        "overlap_k": 3}
    assert run.attributes["model_config"]["class_name"]
    assert run.kernel_info["hidden/kernel"]["fan_in"] == 6 and run.kernel_info["hidden/kernel"]["rank_bound"] == 6
    assert [e["val_loss"] > 0 for e in run.epochs["logs"]] == [True, True]
    epochs, median = run.epoch_spectrum("hidden/kernel", "grad", "HC", "median")
    np.testing.assert_array_equal(epochs, [0, 1])
    values = run.spectrum("hidden/kernel", "grad", "HC")
    np.testing.assert_allclose(median[1], np.nanmedian(values[3:], axis=0))
    _, mean = run.epoch_spectrum("hidden/kernel", "grad", "HC", "mean")
    np.testing.assert_allclose(mean[0], np.nanmean(values[:3], axis=0))


def test_file_is_plain_hdf5_after_training(tmp_path):
    path = tmp_path / "run.h5"
    model = _model(kinds=["grad"], every_n_steps=2)
    x, y, labels = _data()
    model.fit(x, y, groups=labels, batch_size=16, epochs=2, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    with h5py.File(path, "r") as f:  # no tf_autospec, no SWMR
        assert f.attrs["format"] == "tf_autospec" and f.attrs["format_version"] == 1
        assert json.loads(f.attrs["groups"]) == GROUPS
        np.testing.assert_array_equal(f["records/step"][:], [0, 2, 4])
        assert f["kernels/hidden/kernel/grad"].shape == (3, 3, 6)
        assert f["kernels/hidden/kernel/grad"].compression == "gzip"
        assert f["kernels/hidden/kernel/grad"].maxshape[0] is None
        assert "act" not in f["kernels/hidden/kernel"]


def test_resume_appends_and_refuses_another_model(tmp_path):
    path = tmp_path / "run.h5"
    x, y, labels = _data()
    model = _model()
    model.fit(x, y, groups=labels, batch_size=16, epochs=1, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    model.fit(x, y, groups=labels, batch_size=16, epochs=1, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    run = ts.load(path)
    np.testing.assert_array_equal(run.records["step"], np.arange(6))
    np.testing.assert_array_equal(run.records["epoch"], [0, 0, 0, 1, 1, 1])
    other = _model(groups=["HC", "SZ"])
    with pytest.raises(ts.StoreError, match="another model or group set"):
        other.fit(x, y, groups=np.clip(labels, -1, 1), epochs=1, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    other.fit(x, y, groups=np.clip(labels, -1, 1), batch_size=48, epochs=1, verbose=0,
              callbacks=[ts.AutoSpecCallback(path, overwrite=True)])
    assert ts.load(path).groups == ("HC", "SZ") and len(ts.load(path)) == 1


def test_a_new_model_resuming_keeps_steps_increasing(tmp_path):
    path = tmp_path / "run.h5"
    x, y, labels = _data()
    for initial_epoch in (0, 1):  # a fresh model (optimizer steps restart at 0) continuing the file
        _model().fit(x, y, groups=labels, batch_size=16, initial_epoch=initial_epoch, epochs=initial_epoch + 1,
                     verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    run = ts.load(path)
    np.testing.assert_array_equal(run.records["step"], np.arange(6))
    np.testing.assert_array_equal(run.records["epoch"], [0, 0, 0, 1, 1, 1])
    (resume,) = run.resumes
    assert resume["reasons"] == ["initial_epoch"] and resume["first_row"] == 3
    assert (resume["epoch"], resume["epoch_offset"], resume["step"], resume["step_offset"]) == (1, 0, 0, 3)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: h5py.File(p, "w").close(), "not a tf_autospec run"),
        (lambda p: p.write_bytes(b"this is not HDF5" * 100), "not a readable HDF5 file"),
    ],
    ids=["foreign", "garbage"],
)
def test_foreign_and_corrupted_files_are_named(tmp_path, make, match):
    path = tmp_path / "other.h5"
    make(path)
    with pytest.raises(ts.StoreError, match=match) as raised:
        ts.load(path)
    assert str(path) in str(raised.value)
    model = _model()
    x, y, labels = _data()
    with pytest.raises(ts.StoreError, match=match):
        model.fit(x, y, groups=labels, epochs=1, verbose=0, callbacks=[ts.AutoSpecCallback(path)])


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "run.h5"
    x, y, labels = _data()
    _model().fit(x, y, groups=labels, batch_size=16, epochs=2, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    data = path.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ts.StoreError, match=str(truncated)):
        ts.load(truncated)


def test_unwritable_path_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    model = _model()
    x, y, labels = _data()
    with pytest.raises(ts.StoreError, match="does not exist"):
        model.fit(x, y, groups=labels, epochs=1, verbose=0, callbacks=[ts.AutoSpecCallback(blocker / "run.h5")])
    assert model.optimizer.iterations.numpy() == 0


def test_full_disk_stops_training_with_the_flushed_steps_kept(tmp_path, monkeypatch):
    path = tmp_path / "run.h5"
    model = _model()
    x, y, labels = _data()
    original, calls = store._append, []

    def failing(dataset, rows):
        calls.append(dataset.name)
        if len(calls) > 22:  # 20 datasets per flush + 2 per epoch: the second flush fails
            raise OSError(errno.ENOSPC, "No space left on device")
        original(dataset, rows)

    monkeypatch.setattr(store, "_append", failing)
    with pytest.raises(ts.StoreError, match="disk full") as raised:
        model.fit(x, y, groups=labels, batch_size=16, epochs=3, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    assert str(path) in str(raised.value) and "(3 rows)" in str(raised.value)
    monkeypatch.setattr(store, "_append", original)
    assert len(ts.load(path)) == 3


def test_tensorboard_scalars_match_the_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path, board = tmp_path / "run.h5", tmp_path / "tb"
    x, y, labels = _data()
    _model().fit(x, y, groups=labels, batch_size=16, epochs=1, verbose=0,
                 callbacks=[ts.AutoSpecCallback(path, tensorboard_dir=str(board))])
    events = EventAccumulator(str(board), size_guidance={"tensors": 0})
    events.Reload()
    run = ts.load(path)
    grad = run.spectrum("hidden/kernel", "grad", "SZ").astype(np.float64)
    for name, function in [("top", summaries.top), ("effective_rank", summaries.effective_rank),
                           ("nuclear_norm", summaries.nuclear_norm)]:
        tag = f"hidden/kernel/SZ/{name}"
        stored = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
        assert [s for s, _ in stored] == list(run.records["step"])
        np.testing.assert_allclose([v for _, v in stored], function(grad), rtol=1e-5)


WRITER = textwrap.dedent(
    """
    import sys, numpy as np, keras, tf_autospec as ts
    path, initial_epoch, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32"); y = rng.integers(0, 2, 64); g = rng.integers(0, 2, 64)
    inputs = keras.Input((6,))
    model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2)(keras.layers.Dense(8)(inputs)),
                             groups=["a", "b"])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, groups=g, batch_size=8, initial_epoch=initial_epoch, epochs=epochs, verbose=0,
              callbacks=[ts.AutoSpecCallback(path, flush_every_seconds=0.05)])
    print("finished", flush=True)
    """
)


def test_killed_run_leaves_a_readable_file_and_resumes(tmp_path):
    path = tmp_path / "run.h5"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, str(script), str(path), "0", "10000"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen, deadline = 0, time.monotonic() + 120
    try:
        while seen < 40 and time.monotonic() < deadline:  # read while the writer runs (SWMR)
            time.sleep(0.2)
            if path.exists():
                try:
                    seen = len(ts.load(path))
                except ts.StoreError:
                    pass
        assert seen >= 40, process.stderr.read().decode() if process.poll() is not None else "too slow"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed = ts.load(path)
    assert len(killed) >= seen
    steps = killed.records["step"]
    np.testing.assert_array_equal(steps, np.arange(len(steps)))
    top = killed.spectrum(killed.layers[0], "grad", "a")[:, 0]
    present = killed.counts("a") > 0
    assert np.all(np.isfinite(top[present])) and np.all(np.isnan(top[~present]))

    # Restarted as from a checkpoint of epoch 1: continues the killed run.
    resumed = subprocess.run([sys.executable, str(script), str(path), "1", "2"], env=env, capture_output=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    run = ts.load(path)
    assert len(run) == len(killed) + 8
    np.testing.assert_array_equal(run.records["step"], np.arange(len(run)))
    assert run.records["epoch"][-1] == killed.records["epoch"][-1] + 1
    (resume,) = run.resumes
    assert resume["reasons"] == ["initial_epoch"] and resume["first_row"] == len(killed)
    assert resume["step_offset"] == len(killed) and resume["epoch_offset"] == killed.records["epoch"][-1]
    with h5py.File(path, "r") as f:  # closed normally again: plain HDF5 readers work
        assert f["records/step"].shape[0] == len(run)


def test_resume_refuses_another_top_k(tmp_path):
    path = tmp_path / "run.h5"
    x, y, labels = _data()
    _model().fit(x, y, groups=labels, epochs=1, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    with pytest.raises(ts.StoreError, match="widths"):
        _model(top_k=2).fit(x, y, groups=labels, epochs=1, verbose=0, callbacks=[ts.AutoSpecCallback(path)])


@pytest.mark.skipif(not shutil.which("h5dump"), reason="h5dump (Debian hdf5-tools) is not installed")
def test_h5dump_reads_the_file(tmp_path):
    path = tmp_path / "run.h5"
    x, y, labels = _data()
    _model().fit(x, y, groups=labels, batch_size=16, epochs=1, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    dumped = subprocess.run(["h5dump", "-d", "/records/step", str(path)], capture_output=True, text=True)
    assert dumped.returncode == 0 and "(0): 0, 1, 2" in dumped.stdout
