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
                                 groups=["HC", "SZ"], null_partitions=20)
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
    assert {r["test"] for r in rows} == {"across_runs_null"}
    assert {(r["group_a"], r["group_b"]) for r in rows} == {("HC", "SZ")}
    assert {r["layer"] for r in rows} == {"hidden/kernel", "out/kernel"}
    # The first layer's act is the input data, in a family of its own.
    assert {(r["layer"], r["kind"]) for r in rows if r["family"] == "input data"} == {("hidden/kernel", "act")}
    act = [r for r in rows if r["kind"] == "act" and r["summary"] == "spectral_norm"]
    # Inputs scaled by 2 in SZ: beyond random groups of the same sizes, in both layers.
    assert len(act) == 4 and all(r["significant"] == "True" and float(r["effect"]) < 0 for r in act)
    assert not any(r["summary"] == "sigma_1" for r in rows)
    assert (tmp_path / "heatmap_HC_SZ_hidden_kernel_grad.png").exists()
    out = capsys.readouterr().out
    assert "significant at FDR 0.025" in out and "random groups of the same sizes" in out
    # The older test, by name: Welch between the runs, Hedges' g.
    cli.main(["compare", *runs, "-o", str(tmp_path / "runs"), "--indices", "0", "--reference", "runs",
              "--permutations", "200"])
    with open(tmp_path / "runs" / "tests.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["test"] for r in rows} == {"across_runs_runs"}
    act = [r for r in rows if r["kind"] == "act" and r["summary"] == "spectral_norm"]
    assert act and all(r["significant"] == "True" and float(r["effect"]) < 0 for r in act)
    assert "assume groups of equal size" in capsys.readouterr().out


def test_compare_one_run_says_it_tests_within_the_run(runs, tmp_path, capsys):
    cli.main(["compare", runs[0], "-o", str(tmp_path)])
    assert "testing HC vs SZ within it" in capsys.readouterr().out
    with open(tmp_path / "tests.csv") as f:
        assert {r["test"] for r in csv.DictReader(f)} == {"within_run_null"}
    assert (tmp_path / "overview.png").stat().st_size > 5000
    cli.main(["compare", runs[0], "-o", str(tmp_path / "steps"), "--reference", "steps", "--block", "1"])
    assert "testing HC vs SZ within it" in capsys.readouterr().out
    with open(tmp_path / "steps" / "tests.csv") as f:
        assert {r["test"] for r in csv.DictReader(f)} == {"within_run_steps"}


def test_report_is_one_self_contained_page(runs, tmp_path):
    page = tmp_path / "report.html"
    cli.main(["report", *runs, "-o", str(page), "--indices", "2", "--permutations", "200"])
    text = page.read_text()
    assert text.count("data:image/png;base64,") >= 4 and "src='http" not in text
    finding = "<tr><td>HC − SZ</td><td>hidden/kernel</td><td>act</td><td>spectral_norm</td>"
    assert text.index("<h2>Training</h2>") < text.index("<h2>Input data</h2>") < text.index(finding) \
        < text.index("<h2>Figures</h2>")
    assert "Group sizes: HC" in text and "random groups of the same sizes" in text


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


def _gift_style_files(folder):
    """24 subjects' time courses stored [subjects, components, time], IDs under another
    name, and a phenotype CSV in another order whose ID column is not first."""
    rng = np.random.default_rng(0)
    ids = [f"sub-{i:03d}" for i in range(24)]
    np.savez(folder / "tc.npz", tc=rng.normal(size=(24, 6, 30)), subj_ids=np.array(ids))
    with open(folder / "p.csv", "w", newline="") as f:
        csv.writer(f).writerows([("age", "participant_id", "diagnosis")]
                                + [(20 + k, ids[k], "SZ" if k % 2 else "HC") for k in rng.permutation(24)])
    return ["--dataset", "files", "--data", str(folder / "tc.npz"), "--phenotype", str(folder / "p.csv"),
            "--group-column", "diagnosis"]


def test_run_says_what_it_trains_on_before_training(tmp_path, capsys):
    files = _gift_style_files(tmp_path)
    cli.main(["run", *files, "--layout", "components_time", "--subject-variable", "subj_ids", "--subject-column",
              "participant_id", "--group-names", "SZ", "HC", "--hidden", "4", "--folds", "2", "--seeds", "1",
              "--epochs", "1", "--batch-size", "4", "--indices", "0", "--permutations", "50", "-o",
              str(tmp_path / "out"), "--verbose", "0"])
    out = capsys.readouterr().out
    summary = ["data     files: N = 24, 'tc' 24×6×30 read as [subjects, components, time] (given by layout), "
               "transposed to [subjects, time, components]",
               "         subjects matched by ID ('subj_ids')",
               "         mlp input 24×15 (FNC features)",
               "target   the groups themselves ('diagnosis'): classification into 2 classes; their gradients "
               "differ by construction, so no finding will be claimed",
               "groups   SZ 12, HC 12",
               "design   2 folds × 1 seed = 2 runs; folds vary the training samples (12 per fold, the rest "
               "validate); seeds re-train on the same samples (new initialisation and batch order)"]
    assert "\n".join(summary) in out and out.index(summary[0]) < out.index("runs done")
    assert ts.load(tmp_path / "out" / "runs" / "fold0_seed0.h5").groups == ("SZ", "HC")


def test_run_summary_of_a_simulated_dataset(tmp_path, capsys):
    cli.main(["run", "--n", "40", "--hidden", "4", "--folds", "1", "--seeds", "2", "--epochs", "1", "--batch-size",
              "8", "--indices", "0", "--permutations", "50", "-o", str(tmp_path), "--verbose", "0"])
    out = capsys.readouterr().out
    assert ("data     simulated_fmri: N = 40, 40×150×53 timecourses [subjects, time, components]\n"
            "         mlp input 40×1378 (FNC features)\n"
            "target   'condition', not the groups: classification into 2 classes\n"
            "groups   HC 24, SZ 16\n"
            "design   1 fold × 2 seeds = 2 runs; no cross-validation, every run trains on all 40 samples; seeds "
            "re-train on the same samples (new initialisation and batch order)") in out
    # After the runs, the summary of the comparison: what was compared, against what, what was found.
    assert ("compared HC vs SZ; 2 runs (1 fold × 2 seeds); seeds re-train on the same subjects" in out
            and "groups   HC 24, SZ 16 subjects (imbalance 1.50:1)\n"
            "target   The model predicts condition, not the groups.\n"
            "tests    Each difference is tested against the same difference between random groups of the same "
            "sizes" in out)
    assert out.index("runs done") < out.index("compared HC vs SZ")
    assert "significant at FDR 0.025" in out


def test_run_passes_the_file_options_and_refuses_a_doubtful_layout(tmp_path):
    files = _gift_style_files(tmp_path)
    arguments = ["run", *files, "--match-by-row", "--subject-pattern", r"^(\d+)_", "--variable", "ica.tc"]
    options = cli._experiment(cli.build_parser().parse_args(arguments)).dataset_options
    assert (options["match_by_row"], options["subject_pattern"], options["variable"]) == (True, r"^(\d+)_", "ica.tc")
    with pytest.raises(SystemExit, match=r"autospec: .*holds 'subj_ids' .*--subject-variable subj_ids"):
        cli.main(["run", *files, "-o", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=r"autospec: .*'tc' 24×6×30: cannot tell time from components.*"
                       "--layout components_time"):
        cli.main(["run", *files, "--subject-variable", "subj_ids", "-o", str(tmp_path / "out")])
    for flag in (["--layout", "fnc"], ["--match-by-row"], ["--group-names", "A", "B"]):
        with pytest.raises(SystemExit, match=f"{flag[0]} does not apply to --dataset digits"):
            cli.main(["run", "--dataset", "digits", *flag, "-o", str(tmp_path / "out")])
