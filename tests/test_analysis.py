"""Summaries against NumPy, group statistics against SciPy and their calibration."""

import json
import re

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tf_autospec import stats, summaries
from tf_autospec import report, wording
from tf_autospec.calibration import simulated_run, simulated_subjects


def test_summaries_match_numpy_on_matrices():
    rng = np.random.default_rng(0)
    matrices = [rng.normal(size=(7, 5)) @ np.diag([5, 3, 1, 0.1, 0]) for _ in range(4)]
    sigma = np.array([np.linalg.svd(m, compute_uv=False) for m in matrices])
    padded = np.concatenate([sigma, np.full((4, 2), np.nan)], axis=1)  # NaN past the rank bound
    np.testing.assert_allclose(summaries.spectral_norm(padded), [np.linalg.norm(m, 2) for m in matrices])
    np.testing.assert_allclose(summaries.nuclear_norm(padded), [np.linalg.norm(m, "nuc") for m in matrices])
    np.testing.assert_allclose(summaries.frobenius_norm(padded), [np.linalg.norm(m, "fro") for m in matrices])
    np.testing.assert_allclose(summaries.stable_rank(padded),
                               [np.linalg.norm(m, "fro") ** 2 / np.linalg.norm(m, 2) ** 2 for m in matrices])
    p = sigma / sigma.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(p > 0, p * np.log(p), 0), axis=1)
    np.testing.assert_allclose(summaries.effective_rank(padded), np.exp(entropy))
    np.testing.assert_allclose(summaries.summarize(padded, "top_energy_2"),
                               (sigma[:, :2] ** 2).sum(1) / (sigma**2).sum(1))
    np.testing.assert_allclose(summaries.summarize(padded, "sigma_2"), sigma[:, 1])
    assert summaries.effective_rank(np.array([[2.0, 2.0, 2.0, 2.0]]))[0] == pytest.approx(4.0)
    nothing = np.full((1, 5), np.nan)
    for name in summaries.NAMES:
        assert np.isnan(summaries.summarize(nothing, name)[0]), name
    with pytest.raises(ValueError, match="Unknown summary"):
        summaries.summarize(padded, "largest")


def test_bh_and_hedges_match_references():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    np.testing.assert_allclose(stats.benjamini_hochberg(p)[:4], scipy_stats.false_discovery_control(p[:4]))
    assert np.isnan(stats.benjamini_hochberg(p)[4])
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 3.5, 4.0, 5.5, 6.0])
    g, low, high = stats.hedges_g(a, b)
    pooled = np.sqrt((3 * np.var(a, ddof=1) + 4 * np.var(b, ddof=1)) / 7)
    assert g == pytest.approx((1 - 3 / (4 * 9 - 9)) * (a.mean() - b.mean()) / pooled)
    assert low < g < high


def _population(rng, fraction=0.5, n_subjects=40):
    labels, _ = simulated_subjects(rng, n_subjects, fraction)
    return labels


def test_across_runs_finds_a_planted_difference_and_only_there(tmp_path):
    # 70/30 groups, 8 seeds of the same 40 subjects, SZ's rows 1.5 × larger in layer1 only:
    # against random groups of the same sizes the difference is found there and nowhere else.
    rng = np.random.default_rng(1)
    labels = _population(rng, fraction=0.3)
    runs = [simulated_run(tmp_path / f"r{i}.h5", rng, labels, shift=0.5, shift_layer="layer1/kernel")
            for i in range(8)]
    rows = stats.across_runs(runs, "HC", "SZ", summaries=("spectral_norm", "nuclear_norm"))
    assert len(rows) == 3 * 2 * 3
    assert {r["test"] for r in rows} == {"across_runs_null"} and {r["family"] for r in rows} == {"training"}
    found = {row["layer"] for row in rows if row["significant"]}
    assert found == {"layer1/kernel"}
    planted = [r for r in rows if r["layer"] == "layer1/kernel"]
    assert all(r["significant"] and r["effect"] < 0 and r["excess"] < 0 for r in planted)  # SZ larger
    # A smaller group has larger per-sample norms by size alone: the null partitions show it.
    assert all(r["null_mean"] < 0 for r in rows if r["layer"] == "layer0/kernel" and r["summary"] == "spectral_norm")
    row = planted[0]
    assert row["excess"] == pytest.approx(row["difference"] - row["null_mean"])
    assert row["count_a"] > 2 * row["count_b"]


def test_the_summary_names_the_planted_layer_and_epochs_and_nothing_on_null_data(tmp_path, monkeypatch):
    # Calibrated simulated runs (70/30, 8 seeds, SZ's rows 1.5 × larger in layer1 in every epoch).
    rng = np.random.default_rng(1)
    labels = _population(rng, fraction=0.3)
    runs = [simulated_run(tmp_path / f"r{i}.h5", rng, labels, shift=0.5, shift_layer="layer1/kernel")
            for i in range(8)]
    rows = stats.across_runs(runs, "HC", "SZ", summaries=("spectral_norm", "nuclear_norm"))
    headline, sentences, unchanged = report.family_answer(rows, "training", [("HC", "SZ")])
    assert headline.startswith("How the model trains differs in 1 of 3 layer × kind combinations (6 of 18 tests")
    assert len(sentences) == 1 and re.fullmatch(
        r"layer1/kernel, input \(act\): (nuclear norm and spectral norm|spectral norm and nuclear norm) higher in "
        r"SZ, epochs 0–2 \(\|z\| up to \d\.\d\)", sentences[0]), sentences
    assert unchanged == "the input (act) of layer0/kernel and layer2/kernel"
    closing = report.console_summary(runs, [("HC", "SZ")], rows)
    assert closing[-2] == "strongest differences:" and closing[-1].startswith("  layer1/kernel · input (act): ")
    page = tmp_path / "report.html"
    report.write(page, runs, [("HC", "SZ")], rows, [], tests_csv="tests.csv")
    text = page.read_text()
    summary = text[:text.index("<h2>Findings</h2>")]
    assert "higher in SZ, epochs 0–2" in summary and "No difference beyond chance in the input (act) of " \
        "layer0/kernel and layer2/kernel" in summary
    # The findings table: a row per summary under one layer and kind, the columns explained once.
    assert "<td rowspan='2' class='group'>layer1/kernel</td><td rowspan='2' class='group'>input (act)</td>" in text
    assert text.count("higher in: the group whose value is higher") == 1 and "href='tests.csv'" in text
    monkeypatch.setattr(report, "TOP_FINDINGS", 1)  # the table shows the strongest lines, and says so
    report.write(page, runs, [("HC", "SZ")], rows, [], tests_csv="tests.csv")
    assert "The strongest 1 of 2 lines. <a href='tests.csv'>" in page.read_text()
    # The same design without a group effect: nothing differs, and the summary says so.
    rng = np.random.default_rng(300)
    labels = _population(rng)
    null = [simulated_run(tmp_path / f"n{i}.h5", rng, labels) for i in range(6)]
    rows = stats.across_runs(null, "HC", "SZ", summaries=("spectral_norm", "nuclear_norm"))
    headline, sentences, unchanged = report.family_answer(rows, "training", [("HC", "SZ")])
    assert headline == ("How the model trains: no difference between HC and SZ beyond what random groups of the "
                        "same sizes show (0 of 18 tests significant at FDR 0.05).") and not sentences
    assert report.console_summary(null, [("HC", "SZ")], rows)[-1] == (
        "found    nothing differs beyond what random groups of the same sizes show")
    report.write(page, null, [("HC", "SZ")], rows, [])
    assert "higher in" not in page.read_text().split("<h2>Findings</h2>")[0]


def test_wording_of_epochs_summaries_and_units():
    assert wording.span([7, 0, 1, 2, 5, 8]) == "0–2, 5, 7–8" and wording.span([3]) == "3"
    assert wording.summary_name("sigma_12") == "σ₁₂" and wording.summary_name("top_energy_3") == "top-3 energy"
    assert wording.axis_label("spectral_norm", True) == "spectral norm per sample"
    assert wording.axis_label("effective_rank", True) == "effective rank (directions)"  # a rank has no sample
    assert wording.duration(42) == "42 s" and wording.duration(125) == "2 min 05 s"


def test_across_runs_matches_scipy_welch(tmp_path):
    rng = np.random.default_rng(2)
    labels = _population(rng)
    runs = [simulated_run(tmp_path / f"r{i}.h5", rng, labels) for i in range(5)]
    rows = stats.across_runs(runs, "HC", "SZ", layers=["layer0/kernel"], normalize=False, reference="runs")
    row = rows[0]
    first_epoch = runs[0].records["epoch"] == 0
    a = [np.nanmean(summaries.spectral_norm(r.spectrum("layer0/kernel", "act", "HC"))[first_epoch]) for r in runs]
    b = [np.nanmean(summaries.spectral_norm(r.spectrum("layer0/kernel", "act", "SZ"))[first_epoch]) for r in runs]
    expected = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert row["test"] == "across_runs_runs" and row["inference"].startswith("these runs")
    assert row["epoch"] == 0 and row["p_value"] == pytest.approx(expected.pvalue)
    assert row["t"] == pytest.approx(expected.statistic)
    assert row["effect"] == pytest.approx(stats.hedges_g(np.array(a), np.array(b))[0])


def test_null_test_is_a_prediction_interval():
    null = np.array([0.1, -0.3, 0.2, 0.0, -0.1, 0.4, -0.2])
    result = stats.null_test(1.0, null)
    z = (1.0 - null.mean()) / null.std(ddof=1)
    assert result["effect"] == pytest.approx(z) and result["excess"] == pytest.approx(1.0 - null.mean())
    assert result["p_value"] == pytest.approx(2 * scipy_stats.t.sf(z / np.sqrt(1 + 1 / 7), df=6))
    assert np.isnan(stats.null_test(1.0, [0.5, 0.5, 0.5])["p_value"])  # nothing varies: no test
    assert np.isnan(stats.null_test(1.0, [0.1, np.nan])["p_value"])  # too few null values


def test_null_calibration_fdr_false_positive_rate(tmp_path):
    # No group effect, subjects with their own signatures, 6 seeds of each population: with
    # the defaults (random groups of the same sizes as reference, BH at 0.05) the chance of
    # any rejection in the family (= FDR under the complete null) stays near or below 0.05.
    repetitions, rejected = 20, 0
    for repetition in range(repetitions):
        rng = np.random.default_rng(300 + repetition)
        labels = _population(rng)
        runs = [simulated_run(tmp_path / f"n{repetition}_{i}.h5", rng, labels, partition_seed=repetition)
                for i in range(6)]
        rows = stats.across_runs(runs, "HC", "SZ", seed=repetition)
        rejected += any(row["significant"] for row in rows)
    assert rejected / repetitions <= 0.15  # 20 repetitions: ≤ 3 (benchmark: docs/analysis.md)


def test_within_run_detects_a_shift_and_not_noise(tmp_path):
    rng = np.random.default_rng(4)
    labels = _population(rng, n_subjects=80)
    shifted = simulated_run(tmp_path / "s.h5", rng, labels, shift=0.6, shift_layer="layer2/kernel", epochs=4,
                            batch=8)
    assert len(shifted) == 40
    rows = stats.within_run(shifted, "HC", "SZ")
    assert {r["test"] for r in rows} == {"within_run_null"}
    assert {r["layer"] for r in rows if r["significant"]} == {"layer2/kernel"}
    # The older block sign-flip test of the per-step differences, by name.
    rows = stats.within_run(shifted, "HC", "SZ", reference="steps", block=5)
    assert {r["test"] for r in rows} == {"within_run_steps"}
    assert {r["layer"] for r in rows if r["significant"]} == {"layer2/kernel"}
    # A window of steps: the steps where both groups are in the batch (a batch of 8 of 80
    # subjects may hold one group only).
    both = (shifted.counts("HC") > 0) & (shifted.counts("SZ") > 0)
    steps = shifted.records["step"][both & (shifted.records["step"] >= 10) & (shifted.records["step"] <= 29)]
    assert 16 <= len(steps) <= 20
    with pytest.warns(UserWarning, match="4 blocks of 5 steps"):
        window = stats.within_run(shifted, "HC", "SZ", steps=(10, 29), reference="steps", block=5)
    for window in (window, stats.within_run(shifted, "HC", "SZ", steps=(10, 29))):
        assert all(r["n_steps"] == len(steps) and (r["first_step"], r["last_step"]) == (steps[0], steps[-1])
                   for r in window)


def test_clear_messages_for_bad_selections(tmp_path):
    rng = np.random.default_rng(5)
    labels = _population(rng)
    one = simulated_run(tmp_path / "a.h5", rng, labels)
    with pytest.raises(ValueError, match="at least 2 runs"):
        stats.across_runs([one], "HC", "SZ")
    other = simulated_run(tmp_path / "b.h5", rng, labels, groups=("HC", "BP"))
    with pytest.raises(ValueError, match="groups"):
        stats.across_runs([one, other], "HC", "SZ")
    with pytest.raises(ValueError, match="not in"):
        stats.within_run(one, "HC", "XX")
    with pytest.raises(ValueError, match="Give both group_a and group_b"):
        stats.within_run(one, "HC")
    with pytest.raises(ValueError, match="reference must be one of"):
        stats.within_run(one, reference="runs")
    # Without enough null partitions the default test refuses, naming the fix.
    few = [simulated_run(tmp_path / f"few{i}.h5", rng, labels, null_partitions=2) for i in range(2)]
    with pytest.raises(ValueError, match=r"holds 2 null partitions.*null_partitions=20.*reference='runs'"):
        stats.across_runs(few)
    with pytest.raises(ValueError, match=r"holds 2 null partitions.*reference='steps'"):
        stats.within_run(few[0])
    assert stats.across_runs(few, reference="runs")  # the older test still runs, by name
    empty = simulated_run(tmp_path / "e.h5", rng, labels, epochs=0)
    with pytest.raises(ValueError, match="no recorded step"):
        stats.within_run(empty, "HC", "SZ")
    with pytest.raises(ValueError, match="empty table"):
        stats.write_csv([], tmp_path / "x.csv")


def test_run_summary_per_step_and_per_epoch(tmp_path):
    rng = np.random.default_rng(6)
    run = simulated_run(tmp_path / "r.h5", rng, _population(rng), batch=5)  # 8 steps per epoch
    per_step = run.summary("layer0/kernel", "act", "SZ", "nuclear_norm")
    np.testing.assert_allclose(per_step, np.nansum(run.spectrum("layer0/kernel", "act", "SZ"), axis=1), rtol=1e-6)
    epochs, per_epoch = run.summary("layer0/kernel", "act", "SZ", "nuclear_norm", reduce="median")
    np.testing.assert_allclose(per_epoch[1], np.median(per_step[8:16]))
    assert json.loads(json.dumps(list(map(int, epochs)))) == [0, 1, 2]


def test_figures_have_labels_legends_and_save_in_three_formats(tmp_path):
    from tf_autospec import plot

    rng = np.random.default_rng(7)
    labels = _population(rng)
    runs = [simulated_run(tmp_path / f"f{i}.h5", rng, labels, shift=0.8, shift_layer="layer0/kernel")
            for i in range(6)]
    figure = plot.trajectories(runs, "layer0/kernel", kind="act", summary="sigma_1", per_epoch=True)
    ax = figure.axes[0]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "σ₁ per sample" and ax.get_yscale() == "linear"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["HC", "SZ"]
    # Every figure says what it draws: the statistic, over how many runs, the normalisation, the numbering.
    title = figure.get_suptitle().replace("\n", " ")
    assert "median over 6 runs" in title and "interquartile range" in title and "per sample" in title \
        and "epochs from\u00a00" in title
    ax = plot.trajectories(runs, "layer0/kernel", kind="act", summary="effective_rank", scale="log").axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "effective rank (directions) (log scale)"
    assert ax.get_xlabel() == "training step (2 per epoch)"
    # Log where the values span more than two decades, unless told.
    assert plot.y_scale([1e-5, 0.3, np.nan]) == "log" and plot.y_scale([0.5, 20]) == "linear"
    assert plot.y_scale([0.0, 1e-5, 1.0]) == "linear" and plot.y_scale([1e-5, 1.0], "linear") == "linear"
    with pytest.raises(ValueError, match="scale must be one of"):
        plot.y_scale([1.0], "logarithmic")
    layer = plot.layer_panels(runs, "layer1/kernel")
    assert layer.get_suptitle().startswith("layer1/kernel: spectral norm per group")
    overview = plot.overview(runs)
    assert all(ax.get_legend() for ax in overview.axes[len(runs[0].kinds) - 1::len(runs[0].kinds)])  # every row
    assert plot.loss_curves(runs) is None  # these files record no loss per epoch
    map_rows = stats.across_runs(runs, "HC", "SZ", summaries=["spectral_norm", "nuclear_norm"])
    ax = plot.findings_map(map_rows, "HC", "SZ").axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"layer{i}/kernel · act: input" for i in range(3)]
    assert len(ax.lines[0].get_xdata()) == sum(  # a dot per layer and epoch with a significant test
        len({r["epoch"] for r in map_rows if r["layer"] == f"layer{i}/kernel" and r["significant"]}) for i in range(3))
    heat = plot.difference_heatmap(runs, "layer0/kernel", "HC", "SZ", kind="act", max_index=3)
    assert heat.axes[0].get_ylabel() == "singular value index (1 = largest)" and len(heat.axes[0].lines) >= 1  # dots
    assert "random groups" in heat.axes[0].get_title()
    # A table from `autospec compare` tests σ_1 as spectral_norm: the heat map's first row comes from it.
    rows = stats.across_runs(runs, "HC", "SZ", layers=["layer0/kernel"], kinds=["act"],
                             summaries=["spectral_norm", "sigma_2", "sigma_3"])
    grid = plot.difference_heatmap(runs, "layer0/kernel", "HC", "SZ", kind="act", max_index=3,
                                   rows=rows).axes[0].images[0]
    expected = [r["effect"] for r in rows if r["summary"] == "spectral_norm"]
    np.testing.assert_allclose(np.asarray(grid.get_array())[0], expected)
    # With the older reference, by name, the cells are Hedges' g.
    rows = stats.across_runs(runs, "HC", "SZ", layers=["layer0/kernel"], kinds=["act"],
                             summaries=["spectral_norm", "sigma_2", "sigma_3"], reference="runs", permutations=50)
    heat = plot.difference_heatmap(runs, "layer0/kernel", "HC", "SZ", kind="act", max_index=3, rows=rows)
    np.testing.assert_allclose(np.asarray(heat.axes[0].images[0].get_array())[0],
                               [r["effect"] for r in rows if r["summary"] == "spectral_norm"])
    assert "Hedges' g" in heat.axes[0].get_title()
    for extension in ("png", "pdf", "svg"):
        path = tmp_path / f"o.{extension}"
        plot.save(plot.overview(runs), path)
        assert path.stat().st_size > 5000
    with pytest.raises(ValueError, match="no recorded step"):
        plot.overview([simulated_run(tmp_path / "empty.h5", rng, labels, epochs=0)])


def test_sign_flip_p_is_exact_and_paired(tmp_path):
    values = np.array([0.5, 1.0, 1.5, -0.2])
    statistics = [abs(np.dot(s, values)) for s in __import__("itertools").product((1, -1), repeat=4)]
    expected = np.mean(np.array(statistics) >= abs(values.sum()) - 1e-12)
    assert stats.sign_flip_p(values, 1000, np.random.default_rng(0)) == pytest.approx(expected)
    assert stats.sign_flip_p(np.ones(3), 1000, np.random.default_rng(0)) == pytest.approx(2 / 8)


def test_truncated_spectra_refuse_full_spectrum_summaries(tmp_path):
    rng = np.random.default_rng(8)
    labels = _population(rng)
    runs = [simulated_run(tmp_path / f"t{i}.h5", rng, labels) for i in range(3)]
    for run in runs:
        run.attributes["options"] = {"top_k": 2}
    with pytest.raises(ValueError, match="truncated spectrum"):
        stats.across_runs(runs, "HC", "SZ", summaries=("nuclear_norm",))
    assert stats.across_runs(runs, "HC", "SZ", summaries=("spectral_norm", "sigma_2"))


def test_unbalanced_groups_and_too_few_blocks_are_said(tmp_path):
    rng = np.random.default_rng(9)
    run = simulated_run(tmp_path / "u.h5", rng, _population(rng, fraction=0.2), epochs=1, batch=6)
    # The older per-step test says what it assumes, and when it cannot reach alpha.
    with pytest.warns(UserWarning, match="no p-value can go below"):
        rows = stats.within_run(run, "HC", "SZ", reference="steps", block=3)
    assert rows[0]["n_blocks"] == 2 and rows[0]["smallest_p"] == 0.5
    assert all("equal group sizes assumed" in r["inference"] for r in rows)
    # The default test says what it compares against; the summary says how unbalanced the groups are.
    rows = stats.within_run(run, "HC", "SZ")
    assert all(r["inference"].startswith("subjects: random groups of the same sizes") for r in rows)
    counts = run.counts("HC").mean(), run.counts("SZ").mean()
    lines = report.console_summary([run], [("HC", "SZ")], rows)
    assert f"(imbalance {counts[0] / counts[1]:.2f}:1)" in lines[1] and counts[0] > 2 * counts[1]
