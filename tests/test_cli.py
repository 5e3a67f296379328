"""The autospec command: info, plot, compare and report on real recorded runs."""

import argparse
import csv
import datetime
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import tf_autospec as ts
from tf_autospec import cli, experiment


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
    for text in ("HC, SZ", "hidden/kernel", "6 x 8", "records  6", "  metadata\n    seed  0\n",
                 "grad 6, act 6, delta 8", "  geometry cosine of each pair's gradients"):
        assert text in out, text


@pytest.mark.parametrize("extension", ["png", "pdf", "svg"])
def test_plot_writes_overview_and_layer_figures(runs, tmp_path, extension):
    cli.main(["plot", *runs, "-o", str(tmp_path), "--format", extension])
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(f"{n}.{extension}" for n in ("overview", "layer_hidden_kernel", "layer_out_kernel",
                                                           "geometry"))
    assert all(p.stat().st_size > 5000 for p in tmp_path.iterdir())


def test_compare_across_runs_writes_csv_and_heatmaps(runs, tmp_path, capsys):
    cli.main(["compare", *runs, "-o", str(tmp_path), "--indices", "2", "--permutations", "200"])
    with open(tmp_path / "tests.csv") as f:
        rows = list(csv.DictReader(f))
    # The spectra's tests and the gradient geometry's, the three families sharing FDR 0.05.
    assert {r["test"] for r in rows} == {"across_runs_null", "across_runs_geometry"}
    rows = [r for r in rows if r["family"] != "geometry"]
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
    assert "significant at FDR 0.0167" in out and "random groups of the same sizes" in out
    assert (tmp_path / "geometry.png").exists()
    # The older test, by name: Welch between the runs, Hedges' g.
    cli.main(["compare", *runs, "-o", str(tmp_path / "runs"), "--indices", "0", "--reference", "runs",
              "--permutations", "200"])
    with open(tmp_path / "runs" / "tests.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["test"] for r in rows} == {"across_runs_runs", "across_runs_geometry"}
    rows = [r for r in rows if r["family"] != "geometry"]
    act = [r for r in rows if r["kind"] == "act" and r["summary"] == "spectral_norm"]
    assert act and all(r["significant"] == "True" and float(r["effect"]) < 0 for r in act)
    assert "assume groups of equal size" in capsys.readouterr().out


def test_compare_one_run_says_it_tests_within_the_run(runs, tmp_path, capsys):
    cli.main(["compare", runs[0], "-o", str(tmp_path)])
    assert "testing HC vs SZ within it" in capsys.readouterr().out
    with open(tmp_path / "tests.csv") as f:
        assert {r["test"] for r in csv.DictReader(f)} == {"within_run_null", "within_run_geometry"}
    assert (tmp_path / "overview.png").stat().st_size > 5000
    cli.main(["compare", runs[0], "-o", str(tmp_path / "steps"), "--reference", "steps", "--block", "1"])
    assert "testing HC vs SZ within it" in capsys.readouterr().out
    cli.main(["compare", runs[0], "-o", str(tmp_path / "spectra"), "--no-geometry"])
    with open(tmp_path / "spectra" / "tests.csv") as f:
        assert {r["test"] for r in csv.DictReader(f)} == {"within_run_null"}
    with open(tmp_path / "steps" / "tests.csv") as f:
        assert {r["test"] for r in csv.DictReader(f)} == {"within_run_steps", "within_run_geometry"}


def test_report_is_one_self_contained_page_that_leads_with_the_answer(runs, tmp_path, capsys):
    page = tmp_path / "report.html"
    cli.main(["report", *runs, "-o", str(page), "--indices", "2", "--permutations", "200"])
    text = page.read_text()
    assert text.count("data:image/png;base64,") >= 4 and "src='http" not in text
    # The summary first: what was compared, what differs (SZ's inputs are twice as large), the loss.
    summary = text[: text.index("<h2>Figures</h2>")]
    assert "Compared HC (16.3 samples per step on average) and SZ (15.7) in 4 runs." in summary
    assert re.search(r"<li>hidden/kernel, input \(act\): [^<]*spectral norm[^<]* higher in SZ, epochs 0–1", summary)
    assert summary.index("The input data (the first layers&#x27; input) differs") < summary.index("<img")
    assert "Where HC and SZ differ." in summary and "Loss." in summary  # the figures beside it, captioned
    # Then the figures, each section with a caption; then the findings, grouped by layer and kind.
    figures = text[text.index("<h2>Figures</h2>"): text.index("<h2>Findings</h2>")]
    assert figures.count("<p class='caption'>") == 4 and "median over the 4 runs" in figures
    assert "<h3>Do the groups pull the weights the same way?</h3>" in figures
    assert "the layer&#x27;s weight gradient" in figures and "the gradient of the loss at the layer&#x27;s output" \
        in figures
    findings = text[text.index("<h2>Findings</h2>"): text.index("<h2>Runs</h2>")]
    assert "<td rowspan='3' class='group'>hidden/kernel</td><td rowspan='3' class='group'>input (act)</td>" \
        in findings and "<td>spectral norm</td><td>SZ</td><td>0–1</td>" in findings
    assert "href='report_tests.csv'" in findings and (tmp_path / "report_tests.csv").exists()
    # The runs: a row per run, the seed the one option that varies, no JSON.
    runs_table = text[text.index("<h2>Runs</h2>"):]
    assert "<th>seed</th>" in runs_table and "seed0.h5" in runs_table and "{" not in runs_table
    assert f"report   {page}" in capsys.readouterr().out


def test_report_shows_the_summary_and_the_first_figure_on_the_first_screen(runs, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("needs Chromium (apt-get install chromium)")
    page = tmp_path / "report.html"
    cli.main(["report", *runs, "-o", str(page), "--indices", "0"])
    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "report_screenshot.py"
    result = subprocess.run([sys.executable, str(script), "--report", str(page), "-o", str(tmp_path / "shot.png")],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(within the first screen of 1000 px)" in result.stdout and (tmp_path / "shot.png").stat().st_size > 10000


def test_errors_are_clear(runs, tmp_path):
    with pytest.raises(SystemExit, match="No run file"):
        cli.main(["info", str(tmp_path / "missing.h5")])
    with pytest.raises(SystemExit, match="not in"):
        cli.main(["compare", runs[0], runs[1], "--groups", "HC", "XX", "-o", str(tmp_path)])


@pytest.mark.parametrize("verb", ["run", "info", "plot", "compare", "report"])
def test_every_verb_has_help_for_every_option_with_its_default(verb, capsys):
    with pytest.raises(SystemExit) as exit_status:
        cli.main([verb, "--help"])
    out = capsys.readouterr().out
    assert exit_status.value.code == 0 and f"usage: autospec {verb}" in out
    parser = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    for action in parser._actions:
        assert action.help, f"{verb} {action.option_strings or action.dest} has no description"
        shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
        if action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {shown})" in " ".join(out.split()), (verb, action.dest)
    if verb == "run":
        assert "(default: 20)" in out and "a new dated folder in autospec_run/" in " ".join(out.split())


def test_the_console_entry_point_says_nothing_but_its_own_words(tmp_path):
    # TensorFlow's start-up lines (absl, oneDNN, cpu_feature_guard, the CUDA probe) are held
    # back while it loads, and the user's errors still reach them afterwards.
    result = subprocess.run([sys.executable, "-m", "tf_autospec.cli", "info", str(tmp_path / "missing.h5")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("autospec: No run file") and len(result.stderr.splitlines()) == 1, result.stderr


def test_startup_noise_is_recognised_and_the_rest_is_kept():
    from tf_autospec import native_log

    noise = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "I0000 00:00:1796016339.710747   15509 port.cc:153] oneDNN custom operations are on. You may see",
             "I0000 00:00:1796016594.068771   20500 cpu_feature_guard.cc:227] This TensorFlow binary is optimized",
             "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
             "appropriate compiler flags."]
    cuda = ["I0000 00:00:1796016339.711030   15509 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
            "GPU will not be used.",
            "E0000 00:00:1796016484.831836   16531 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error"]
    assert all(native_log.is_startup_noise(line, gpu_machine=True) for line in noise)
    assert all(native_log.is_startup_noise(line, gpu_machine=False) for line in cuda)
    assert not any(native_log.is_startup_noise(line, gpu_machine=True) for line in cuda)  # there, it matters
    assert not native_log.is_startup_noise("Traceback (most recent call last):", gpu_machine=False)


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


def test_run_says_what_it_trains_on_and_ends_with_what_it_found(tmp_path, capsys, monkeypatch):
    # Without --output, every run gets a folder of its own: the README's first command works twice.
    monkeypatch.chdir(tmp_path)
    os.makedirs(tmp_path / "autospec_run" / "earlier" / "runs")
    cli.main(["run", "--n", "40", "--hidden", "4", "--folds", "1", "--seeds", "2", "--epochs", "2", "--batch-size",
              "8", "--indices", "2"])
    out = capsys.readouterr().out
    folder = [f for f in os.listdir(tmp_path / "autospec_run") if f != "earlier"]
    assert len(folder) == 1 and re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", folder[0])
    folder = os.path.join("autospec_run", folder[0])
    assert experiment.fresh_output_folder("autospec_run", datetime.datetime.strptime(
        os.path.basename(folder), "%Y-%m-%d_%H-%M-%S")) == folder + "_2"
    # Quiet: no Keras log, a line per run, then the closing block that names the report.
    assert "Epoch 1/2" not in out and "  fold 0, seed 1: trained, loss " in out
    closing = out[out.index("2 runs done in "):].splitlines()
    assert closing[0].endswith(f": {folder}") and closing[-2] == f"report   {folder}/report.html"
    assert re.search(r"^training   \d+ tests \(\d+ with values to compare\), \d+ significant at FDR 0.0167$",
                     "\n".join(closing), re.M)
    assert re.search(r"^geometry   \d+ tests", "\n".join(closing), re.M)
    # No two files written are copies of each other.
    written = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if not f.endswith(".h5")]
    digests = [hashlib.sha256(open(path, "rb").read()).hexdigest() for path in written]
    assert len(set(digests)) == len(digests) and len(written) > 10
    assert sorted(os.listdir(os.path.join(folder, "figures"))) == [
        "differences_HC_SZ.png", "geometry.png", "layer_dense_1_kernel.png", "layer_dense_kernel.png", "loss.png",
        "overview.png"]
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
