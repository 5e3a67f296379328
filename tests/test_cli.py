"""The autospec command: info, plot, compare and report on real recorded runs."""

import csv
import subprocess
import sys

import keras
import numpy as np
import pytest

import tf_autospec as ts
from tf_autospec import cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    groups = rng.integers(0, 2, size=96)
    x[groups == 1] *= 2.0  # SZ inputs are larger: act must differ
    y = (x.sum(axis=1) > 0).astype(int)
    paths = []
    for seed in range(4):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
        model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2, name="out")(hidden),
                                 groups=["HC", "SZ"])
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        path = folder / f"seed{seed}.h5"
        model.fit(x, y, groups=groups, batch_size=32, epochs=2, verbose=0,
                  callbacks=[ts.AutoSpecCallback(path, metadata={"seed": seed})])
        paths.append(str(path))
    return paths


def test_info_prints_groups_layers_records_and_metadata(runs, capsys):
    cli.main(["info", runs[0]])
    out = capsys.readouterr().out
    for text in ("HC, SZ", "hidden/kernel", "6 x 8", "records  6", '"seed": 0', "grad 6, act 6, delta 8"):
        assert text in out, text


@pytest.mark.parametrize("extension", ["png", "pdf", "svg"])
def test_plot_writes_overview_and_layer_figures(runs, tmp_path, extension):
    cli.main(["plot", *runs, "-o", str(tmp_path), "--format", extension])
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(f"{n}.{extension}" for n in ("overview", "layer_hidden_kernel", "layer_out_kernel"))
    assert all(p.stat().st_size > 5000 for p in tmp_path.iterdir())


def test_compare_across_runs_writes_csv_and_heatmaps(runs, tmp_path, capsys):
    cli.main(["compare", *runs, "-o", str(tmp_path), "--indices", "2", "--permutations", "200"])
    with open(tmp_path / "tests.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["test"] for r in rows} == {"across_runs"}
    assert {r["layer"] for r in rows} == {"hidden/kernel", "out/kernel"}
    act = [r for r in rows if r["kind"] == "act" and r["summary"] == "spectral_norm"]
    # Inputs scaled by 2 in SZ: Welch (the primary test) finds it in both layers.
    assert act and all(r["significant"] == "True" and float(r["hedges_g"]) < 0 for r in act)
    assert not any(r["summary"] == "sigma_1" for r in rows)
    assert (tmp_path / "heatmap_hidden_kernel_grad.png").exists()
    assert "significant at FDR 0.05" in capsys.readouterr().out


def test_compare_one_run_says_it_tests_within_the_run(runs, tmp_path, capsys):
    cli.main(["compare", runs[0], "-o", str(tmp_path), "--block", "1"])
    assert "testing HC vs SZ within it" in capsys.readouterr().out
    with open(tmp_path / "tests.csv") as f:
        assert {r["test"] for r in csv.DictReader(f)} == {"within_run_block_sign_flip"}
    assert (tmp_path / "overview.png").stat().st_size > 5000


def test_report_is_one_self_contained_page(runs, tmp_path):
    page = tmp_path / "report.html"
    cli.main(["report", *runs, "-o", str(page), "--indices", "2", "--permutations", "200"])
    text = page.read_text()
    assert text.count("data:image/png;base64,") >= 4 and "src='http" not in text
    assert "<tr><td>hidden/kernel</td><td>act</td><td>spectral_norm</td>" in text


def test_errors_are_clear(runs, tmp_path):
    with pytest.raises(SystemExit, match="No run file"):
        cli.main(["info", str(tmp_path / "missing.h5")])
    with pytest.raises(SystemExit, match="not in"):
        cli.main(["compare", runs[0], runs[1], "--groups", "HC", "XX", "-o", str(tmp_path)])


@pytest.mark.parametrize("verb", ["run", "info", "plot", "compare", "report"])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_status:
        cli.main([verb, "--help"])
    assert exit_status.value.code == 0 and f"usage: autospec {verb}" in capsys.readouterr().out


def test_the_console_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "tf_autospec.cli", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "usage: autospec" in result.stdout and "run" in result.stdout
