"""Reference models, and `autospec run` end to end (folds × seeds → HDF5 runs → analysis)."""

import csv
import json
import os
import warnings

import numpy as np
import pytest

from tf_autospec import models
import tf_autospec as ts
from tf_autospec import cli, experiment, load

SHAPES = {"mlp": (12,), "cnn2d": (8, 8, 1), "cnn1d": (20, 5), "cnn3d": (6, 6, 6, 1),
          "simple_rnn": (10, 3), "lstm": (10, 3), "gru": (10, 3), "bilstm": (10, 3)}
SIZES = {"mlp": dict(hidden=(16,)), "cnn2d": dict(filters=(4, 8), dense=8, padding="same"),
         "cnn1d": dict(filters=(4, 8), dense=8), "cnn3d": dict(filters=(2, 4), dense=8)}


# The recurrent cells themselves are tested in test_recurrent_exact.py; here each builder once.
@pytest.mark.parametrize("name, task", [(name, "classification") for name in ("mlp", "cnn2d", "cnn1d", "cnn3d", "bilstm")]
                         + [("mlp", "autoencoding"), ("lstm", "autoencoding"), ("gru", "regression"),
                            ("simple_rnn", "regression")])
def test_every_reference_architecture_builds_and_trains(name, task):
    rng = np.random.default_rng(0)
    shape = SHAPES[name]
    x = rng.normal(size=(16, *shape)).astype("float32")
    y = {"classification": rng.integers(0, 3, 16), "regression": rng.normal(size=(16, 2)), "autoencoding": x}[task]
    sizes = SIZES.get(name, dict(units=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ts.AutoSpecWarning)  # every layer of every architecture is tracked
        model = models.build(name, ["A", "B"], shape, task=task, outputs=3 if task == "classification" else 2,
                             **sizes)
        history = model.fit(x, y, groups=rng.integers(0, 2, 16), batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.predict(x, verbose=0).shape == (y.shape if task != "classification" else (16, 3))
    spectra = model.last_spectra
    assert spectra.kernels and np.isfinite(spectra.spectrum(spectra.kernels[-1], "grad", "A")[0])


def test_unknown_architecture_and_task_are_refused():
    with pytest.raises(ValueError, match="choose one of"):
        models.build("resnet", ["A"], (4,))
    with pytest.raises(ValueError, match="task must be one of"):
        models.build("mlp", ["A"], (4,), task="segmentation")


def test_folds_are_stratified_by_group():
    labels = np.repeat([0, 1, 2], [10, 20, 7])
    fold = experiment.stratified_folds(labels, 5, seed=3)
    for value in range(3):
        counts = np.bincount(fold[labels == value], minlength=5)
        assert counts.max() - counts.min() <= 1


def _run(tmp_path, *arguments):
    cli.main(["run", "-o", str(tmp_path), "--verbose", "0", "--permutations", "100", *arguments])


def test_autospec_run_writes_one_file_per_fold_and_seed_and_the_analysis(tmp_path, capsys):
    _run(tmp_path, "--dataset", "digits", "--classes", "2", "--n", "240", "--model", "cnn2d", "--filters", "2", "4",
         "--folds", "2", "--seeds", "2", "--epochs", "2", "--indices", "2")
    names = sorted(os.listdir(tmp_path / "runs"))
    assert names == ["fold0_seed0.h5", "fold0_seed1.h5", "fold1_seed0.h5", "fold1_seed1.h5"]
    runs = [load(tmp_path / "runs" / name) for name in names]
    assert all(r.layers == runs[0].layers and r.groups == ("digit 0", "digit 1") for r in runs)
    meta = runs[3].metadata
    assert (meta["fold"], meta["seed"], meta["folds"], meta["model"], meta["dataset"]) == (1, 1, 2, "cnn2d", "digits")
    assert json.loads(meta["model_options"]) == {"filters": [2, 4]} and meta["learning_rate"] == 1e-3
    assert json.loads(meta["data"])["group_classes"] == [0, 1]
    # 240 samples, two folds: each run trains on 120, 3 full batches of 32 per epoch.
    assert len(runs[0]) == 2 * 3 and set(runs[0].records["epoch"]) == {0, 1}
    assert all(0 < run.counts("digit 0")[k] + run.counts("digit 1")[k] <= 32 for run in runs for k in range(6))
    assert "val_loss" in runs[0].epochs["logs"][-1]
    with open(tmp_path / "analysis" / "tests.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["layer"] for r in rows} == set(runs[0].layers)
    # Every run records the null partitions (default 20), the reference of the default tests.
    assert all(r.null_partitions == 20 for r in runs)
    # The spectra's tests and the gradient geometry's, both against the null partitions.
    assert {r["test"] for r in rows} == {"across_runs_null", "across_runs_geometry"} and {
        (r["group_a"], r["group_b"]) for r in rows} == {("digit 0", "digit 1")}
    for path in ("report.html", "figures/overview.png", "figures/differences_digit_0_digit_1.png", "figures/loss.png",
                 "analysis/heatmap_digit_0_digit_1_conv2d_kernel_grad.png"):
        assert (tmp_path / path).stat().st_size > 1000
    page = (tmp_path / "report.html").read_text()
    drawn = os.listdir(tmp_path / "figures") + [n for n in os.listdir(tmp_path / "analysis") if n.startswith("heatmap")]
    assert page.count("<img") == len(drawn) and page.count("data:image/png;base64,iVBOR") == len(drawn)
    assert "runs done" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--overwrite"):
        _run(tmp_path, "--dataset", "digits", "--folds", "2", "--seeds", "1", "--epochs", "1")
    with pytest.raises(SystemExit, match="classes present"):  # a failing experiment deletes nothing
        _run(tmp_path, "--dataset", "digits", "--classes", "11", "--overwrite")
    assert sorted(os.listdir(tmp_path / "runs")) == names
    _run(tmp_path, "--dataset", "digits", "--n", "240", "--model", "mlp", "--hidden", "4", "--folds", "1",
         "--seeds", "1", "--epochs", "1", "--overwrite")
    assert os.listdir(tmp_path / "runs") == ["fold0_seed0.h5"]  # the earlier experiment's runs are gone


def test_autospec_run_on_users_files_with_random_groups(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"S{i}" for i in range(24)]
    np.savez(tmp_path / "tc.npz", timecourses=rng.normal(size=(24, 30, 6)), subjects=np.array(ids))
    with open(tmp_path / "p.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "site")] + [(i, "A" if k % 2 else "B") for k, i in enumerate(ids)])
    _run(tmp_path / "out", "--dataset", "files", "--data", str(tmp_path / "tc.npz"), "--phenotype",
         str(tmp_path / "p.csv"), "--group-column", "site", "--model", "cnn1d", "--filters", "4", "8",
         "--grouping", "random", "--folds", "1", "--seeds", "1", "--epochs", "2", "--batch-size", "8")
    run = load(tmp_path / "out" / "runs" / "fold0_seed0.h5")
    assert run.groups == ("R1", "R2") and run.metadata["grouping"] == "random"
    assert sorted(run.counts("R1") + run.counts("R2")) == [8, 8, 8, 8, 8, 8]  # every subject is in a group
    assert [run.kernel_info[k]["layer_class"] for k in run.layers] == ["Conv1D", "Conv1D", "Dense", "Dense"]
    assert (tmp_path / "out" / "report.html").exists()


def test_random_grouping_keeps_group_sizes_and_ungrouped_samples():
    labels = np.repeat([0, 1, -1], [10, 30, 20])
    shuffled = experiment.shuffled_groups(labels, seed=3)
    assert np.array_equal(np.bincount(shuffled[shuffled >= 0]), [10, 30])
    assert np.array_equal(shuffled == -1, labels == -1) and not np.array_equal(shuffled, labels)


def test_autospec_run_refuses_options_of_another_dataset(tmp_path):
    with pytest.raises(SystemExit, match="--effect-size does not apply to --dataset digits"):
        _run(tmp_path, "--dataset", "digits", "--effect-size", "0.2")
    with pytest.raises(SystemExit, match="--dataset files needs --data, --phenotype, --group-column"):
        _run(tmp_path, "--dataset", "files")
    with pytest.raises(SystemExit, match="'lstm' does not take the sizes .*unexpected keyword argument 'hidden'"):
        _run(tmp_path, "--dataset", "sinusoids", "--model", "lstm", "--hidden", "8")
    with pytest.raises(SystemExit, match="--randomized .* give --top-k too"):
        _run(tmp_path, "--dataset", "digits", "--randomized")
