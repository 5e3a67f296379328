"""The gradient geometry in figures, the report and the CLI: `plot.geometry` draws what the
runs recorded beside what random groups of the same sizes give, says when there is no
value, and refuses files without geometry; the report states in words whether the groups
pull the weights the same way. Simulated runs (`calibration.simulated_run`) keep it fast;
one tiny real fit checks a model's undefined overlaps."""

import csv
import io

import keras
import numpy as np
import pytest

import tf_autospec as ts
from tf_autospec import cli, plot, report, stats
from tf_autospec.calibration import simulated_run, simulated_subjects

CONFLICT_LAYER = "layer1/kernel"


def _runs(folder, conflict, runs=3, epochs=3, **options):
    """Simulated runs of one population (60/40 groups) with the geometry recorded; with
    ``conflict``, SZ's gradients of `CONFLICT_LAYER` are inverted on half its columns."""
    rng = np.random.default_rng(0)
    labels, signature = simulated_subjects(rng, 40, 0.4)
    return [simulated_run(folder / f"run{i}.h5", np.random.default_rng(i), labels, signature=signature,
                          epochs=epochs, geometry=True, with_spectra=False, conflict=conflict,
                          conflict_layer=CONFLICT_LAYER, **options) for i in range(runs)]


@pytest.fixture(scope="module")
def conflict_runs(tmp_path_factory):
    return _runs(tmp_path_factory.mktemp("conflict"), conflict=0.5)


def _panel(figure, layer, question):
    return next(ax for ax in figure.axes if ax.get_title() == f"{layer}\n{question}")


def test_a_row_per_layer_each_measure_beside_random_groups(conflict_runs):
    rows = stats.across_runs_geometry(conflict_runs, measures=["cosine"], statistics=["level"])
    figure = plot.geometry(conflict_runs, rows=rows)
    assert len(figure.axes) == 3 * 3  # layers × (cosine, batch cosine, overlap)
    heading = figure._suptitle.get_text().replace("\n", " ")
    assert "median over 3 runs" in heading and "20 null partitions × 3 runs" in heading and "FDR" in heading
    cosine = _panel(figure, CONFLICT_LAYER, "do the groups' gradients point the same way?")
    assert "+1 same way · 0 unrelated · −1 opposed" in cosine.get_ylabel()
    labels = [line.get_label() for line in cosine.get_lines()]
    assert {"HC and SZ", "random groups of the same sizes"} <= set(labels)
    assert len(cosine.collections) == 2  # the runs' IQR and the random groups' IQR
    # The conflict: HC's and SZ's cosine below 0 and below random groups', a dot at every epoch.
    real = next(line for line in cosine.get_lines() if line.get_label() == "HC and SZ").get_ydata()
    chance = next(line for line in cosine.get_lines() if line.get_label() == "random groups of the same sizes")
    assert np.all(real < 0) and np.all(real < chance.get_ydata())
    dots = [line for line in cosine.get_lines() if line.get_label() == "significant (FDR)"]
    assert dots and sorted(dots[0].get_xdata()) == [0, 1, 2]
    batch = _panel(figure, CONFLICT_LAYER, "does the step follow each group?")
    assert {"HC", "SZ", "random groups of HC's size", "random groups of SZ's size"} <= {
        line.get_label() for line in batch.get_lines()}
    overlap = _panel(figure, CONFLICT_LAYER, "do they use the same input directions?")
    chance_line = next(line for line in overlap.get_lines() if line.get_label().startswith("unrelated directions"))
    assert chance_line.get_label() == "unrelated directions (k/fan_in = 2/6)"
    assert np.allclose(chance_line.get_ydata(), 2 / 6) and overlap.get_ylim() == (0, 1.02)
    assert plot.save(figure, io.BytesIO()).getvalue().startswith(b"\x89PNG")


def test_one_layer_per_step_and_one_pair(conflict_runs):
    figure = plot.geometry(conflict_runs[0], layers=CONFLICT_LAYER, per_epoch=False)
    assert len(figure.axes) == 3 and figure.axes[0].get_xlabel().startswith("training step")
    assert "one run" in figure._suptitle.get_text()


def test_no_value_one_group_and_files_without_geometry(tmp_path, capsys):
    # One group: no pair to compare, its cosine with the batch's gradient alone.
    one = simulated_run(tmp_path / "one.h5", np.random.default_rng(0), np.zeros(20, np.int32), groups=("all",),
                        epochs=2, geometry=True, with_spectra=False, null_partitions=5)
    figure = plot.geometry(one)
    assert [ax.get_title() for ax in figure.axes] == [
        f"layer{i}/kernel\ndoes the step follow each group?" for i in range(3)]
    # A file written before the geometry was recorded (or with geometry=False).
    old = simulated_run(tmp_path / "old.h5", np.random.default_rng(0), np.zeros(20, np.int32), epochs=1)
    with pytest.raises(ValueError, match="holds no gradient geometry .*geometry=True"):
        plot.geometry(old)
    plot.save(plot.overview(old), tmp_path / "old.png")  # the other figures still draw
    cli.main(["info", old.path])
    assert "  geometry not recorded (a file from before it was, or geometry=False)" in capsys.readouterr().out
    cli.main(["plot", old.path, "-o", str(tmp_path / "figures")])  # without the geometry figure
    assert "geometry.png" not in {p.name for p in (tmp_path / "figures").iterdir()}


def test_an_overlap_undefined_at_every_step_says_so(tmp_path, capsys):
    # Two classes: the rows of the output's Δ = softmax − one-hot sum to 0, so the output
    # kernel's gradient has rank 1 and no top-2 subspace: its overlap is NaN at every step.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y, labels = rng.normal(size=(64, 5)).astype("float32"), rng.integers(0, 2, 64), rng.integers(0, 2, 64)
    inputs = keras.Input((5,))
    model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2, name="out")(
        keras.layers.Dense(4, name="hidden")(inputs)), groups=["HC", "SZ"], null_partitions=5)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, groups=labels, batch_size=32, epochs=2, verbose=0,
              callbacks=[ts.AutoSpecCallback(tmp_path / "run.h5")])
    run = ts.load(tmp_path / "run.h5")
    assert np.isnan(run.overlap("out/kernel", "HC", "SZ")).all()
    overlap = _panel(plot.geometry(run), "out/kernel", "do they use the same input directions?")
    assert "no value: fewer than k = 2 clear directions at every step" in [t.get_text() for t in overlap.texts]
    assert overlap.get_xlim() == (0, 1)  # the epochs, as the other panels
    cli.main(["info", str(tmp_path / "run.h5")])
    assert "geometry cosine of each pair's gradients and each group's with the batch's; overlap of each pair's " \
           "top-k input directions (k = 3, at most a layer's smaller fan: kernel_info[layer]['overlap_k']) (HC-SZ)" \
           in capsys.readouterr().out


def test_the_report_says_whether_the_groups_pull_the_same_way(conflict_runs, tmp_path, capsys):
    page = tmp_path / "report.html"
    cli.main(["report", *[run.path for run in conflict_runs], "-o", str(page), "--indices", "0"])
    text = page.read_text()
    summary = text[: text.index("<h2>Figures</h2>")]
    assert "Gradient geometry, do the groups pull the weights the same way? (" in summary
    assert (f"<li>In {CONFLICT_LAYER}, HC&#x27;s and SZ&#x27;s gradients point in opposed directions, more than "
            "random groups of the same sizes, epochs 0–2 (cosine −") in summary
    figures = text[text.index("<h2>Figures</h2>"): text.index("<h2>Findings</h2>")]
    assert "<h3>Do the groups pull the weights the same way?</h3>" in figures
    assert "−1 opposite ways (a gradient conflict" in figures
    assert "Dots: epochs where the test against them is significant" in figures
    findings = text[text.index("<h2>Findings</h2>"): text.index("<h2>Runs</h2>")]
    assert "<h3>Geometry</h3>" in findings and "<td>cosine of the two groups&#x27; gradients</td>" in findings
    out = capsys.readouterr().out
    assert "geometry   " in out and f"  In {CONFLICT_LAYER}, HC's and SZ's gradients point in opposed" in out
    with open(tmp_path / "report_tests.csv") as f:
        families = {r["family"] for r in csv.DictReader(f)}
    assert families == {"training", "geometry"}  # the simulated runs record the input spectra only (act)


def test_without_a_conflict_the_report_says_no_difference_in_direction(tmp_path):
    runs = _runs(tmp_path, conflict=0.0, runs=2, epochs=2)
    rows = stats.across_runs_geometry(runs, measures=["cosine"])
    headline, sentences = report.geometry_answer(rows, [("HC", "SZ")])
    assert headline.startswith("Gradient geometry: no difference in direction between HC and SZ beyond what "
                               "random groups of the same sizes show (0 of") and sentences == []
    assert report.geometry_answer(report.spectra_rows(rows), [("HC", "SZ")]) is None
    # Without the cosines tested, nothing is said about the direction.
    overlap_rows = stats.across_runs_geometry(runs, measures=["overlap"])
    headline, _ = report.geometry_answer(overlap_rows, [("HC", "SZ")])
    assert "direction between" not in headline and "no difference in the input directions the gradients use" in headline


def test_chosen_pairs_their_groups_and_a_batch_cosine_finding(tmp_path):
    """`pairs=` draws the groups of those pairs in the middle panel too (each in its own
    colour); a significant batch-cosine test (two groups' difference) dots both lines;
    with three pairs the legend sits below the panel, off the lines."""
    labels = np.repeat(np.arange(3, dtype=np.int32), 12)
    runs = [simulated_run(tmp_path / f"three{i}.h5", np.random.default_rng(i), labels, groups=("A", "B", "C"),
                          epochs=3, geometry=True, with_spectra=False) for i in range(2)]
    finding = {"family": report.GEOMETRY, "significant": True, "statistic": "level", "epoch": 1,
               "layer": CONFLICT_LAYER, "measure": "batch_cosine", "group_a": "A", "group_b": "C"}
    chosen = plot.geometry(runs, layers=CONFLICT_LAYER, pairs=[("A", "C")], rows=[finding])
    batch = _panel(chosen, CONFLICT_LAYER, "does the step follow each group?")
    lines = {line.get_label(): line for line in batch.get_lines()}
    assert "B" not in lines and {"A", "C"} <= set(lines)
    assert lines["C"].get_color() == plot.PALETTE[2]  # C's colour, as with every group drawn
    dots = [line for line in batch.get_lines() if line.get_label() == "significant (FDR)" and len(line.get_xdata())]
    assert len(dots) == 2 and all(list(dot.get_xdata()) == [1] for dot in dots)
    assert sorted(float(dot.get_ydata()[0]) for dot in dots) == sorted(
        float(lines[group].get_ydata()[1]) for group in ("A", "C"))
    every = plot.geometry(runs, layers=CONFLICT_LAYER)
    legend = _panel(every, CONFLICT_LAYER, "do the groups' gradients point the same way?").get_legend()
    assert len(legend.get_texts()) > 4 and legend.get_bbox_to_anchor().y0 < legend.axes.bbox.y0
    plot.save(every, tmp_path / "three.png")
