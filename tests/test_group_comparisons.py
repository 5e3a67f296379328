"""Group comparisons that hold (issue 19): calibrated under imbalance and on fixed subjects,
every pair of more than two groups, no claim when the groups are the target, and the input
data in a family of its own.

The simulated runs (`tf_autospec.calibration`) keep what makes comparisons hard on real
runs: a smaller group has larger per-sample norms by size alone, and seeds re-train on the
same subjects, each with its own signature. The older tests (``reference="runs"`` /
``"steps"``) run on the same runs to show that each null case is a real trap.
"""

import csv
import os

import keras
import numpy as np
import pytest

import tf_autospec as ts
from tf_autospec import cli, report, stats
from tf_autospec.calibration import simulated_run, simulated_subjects

SUMMARIES = ("spectral_norm", "nuclear_norm", "effective_rank")  # the CLI's default summaries
REPETITIONS = 20


def _any_significant(rows):
    return any(row["significant"] for row in rows)


@pytest.mark.parametrize("fraction", [0.3, 0.2])
def test_imbalanced_null_finds_nothing_where_the_runs_reference_does(tmp_path, fraction):
    # 70/30 and 80/20 groups of 40 subjects, no group effect; 2 folds × 2 seeds per
    # population. The smaller group's per-sample norms are larger by size alone.
    experiments = []
    for repetition in range(REPETITIONS):
        rng = np.random.default_rng(300 + repetition)
        labels, _ = simulated_subjects(rng, 40, fraction)
        fold = np.arange(40) % 2
        experiments.append([
            simulated_run(tmp_path / f"r{repetition}_{f}_{s}.h5", rng, labels, subjects=np.flatnonzero(fold != f),
                          layers=2, epochs=2, batch=10, partition_seed=repetition)
            for f in range(2) for s in range(2)])
    # Calibrated: about 5 % of the repetitions with any rejection (1 expected in 20; ≤ 3 as in
    # test_analysis's calibration).
    found = sum(_any_significant(stats.across_runs(runs, "HC", "SZ", summaries=SUMMARIES)) for runs in experiments)
    assert found <= 3, f"{found}/{REPETITIONS} null repetitions with a finding"
    # The trap is real: Welch between the runs finds the size effect nearly every time.
    older = sum(_any_significant(stats.across_runs(runs, "HC", "SZ", summaries=SUMMARIES, reference="runs",
                                                   permutations=100)) for runs in experiments)
    assert older >= 15, older


def test_seeds_of_fixed_subjects_null_finds_nothing_where_the_runs_reference_does(tmp_path):
    # 8 + 8 subjects with strong signatures, no group effect, balanced; 4 seeds re-train on
    # them (and one longer run for the tests within a run). The two particular sets of
    # subjects differ; the groups do not.
    experiments = []
    for repetition in range(REPETITIONS):
        rng = np.random.default_rng(600 + repetition)
        labels, _ = simulated_subjects(rng, 16, 0.5)
        options = dict(signature=4.0, layers=2, batch=8, partition_seed=repetition)
        runs = [simulated_run(tmp_path / f"s{repetition}_{s}.h5", rng, labels, epochs=2, **options)
                for s in range(4)]
        experiments.append((runs, simulated_run(tmp_path / f"l{repetition}.h5", rng, labels, epochs=10, **options)))
    across = sum(_any_significant(stats.across_runs(runs, "HC", "SZ", summaries=SUMMARIES)) for runs, _ in experiments)
    within = sum(_any_significant(stats.within_run(long, "HC", "SZ", summaries=SUMMARIES)) for _, long in experiments)
    assert across <= 3 and within <= 3, (across, within)
    across = sum(_any_significant(stats.across_runs(runs, "HC", "SZ", summaries=SUMMARIES, reference="runs",
                                                    permutations=100)) for runs, _ in experiments)
    within = sum(_any_significant(stats.within_run(long, "HC", "SZ", summaries=SUMMARIES, reference="steps",
                                                   block=2)) for _, long in experiments)
    assert across >= 12 and within >= 15, (across, within)


def _three_groups(tmp_path, n_runs=4, layers=3, **options):
    rng = np.random.default_rng(11)
    labels = rng.permutation(np.arange(45) % 3).astype(np.int32)
    return [simulated_run(tmp_path / f"g{i}.h5", rng, labels, groups=("A", "B", "C"), layers=layers, batch=15,
                          **options) for i in range(n_runs)]


def test_three_groups_every_pair_in_one_family(tmp_path):
    # B's rows are 1.6 × larger in layer1: the pairs with B differ there, A and C do not.
    runs = _three_groups(tmp_path, shift=0.6, shift_layer="layer1/kernel")
    rows = stats.across_runs(runs, summaries=("spectral_norm",))
    pairs = [("A", "B"), ("A", "C"), ("B", "C")]
    assert list(dict.fromkeys((r["group_a"], r["group_b"]) for r in rows)) == pairs
    for pair in pairs:
        assert sum((r["group_a"], r["group_b"]) == pair for r in rows) == 3 * 3  # layers × epochs
    found = {(r["group_a"], r["group_b"], r["layer"]) for r in rows if r["significant"]}
    assert found == {("A", "B", "layer1/kernel"), ("B", "C", "layer1/kernel")}
    assert all(r["effect"] < 0 for r in rows if (r["group_a"], r["group_b"]) == ("A", "B") and r["significant"])
    assert all(r["effect"] > 0 for r in rows if (r["group_a"], r["group_b"]) == ("B", "C") and r["significant"])
    # One BH family for all pairs (all rows here are "training").
    assert {r["family"] for r in rows} == {"training"}
    np.testing.assert_allclose([r["q_value"] for r in rows], stats.benjamini_hochberg([r["p_value"] for r in rows]))
    # A pair asked for by name is the same test, in a family of its own.
    one = stats.across_runs(runs, "A", "C", summaries=("spectral_norm",))
    np.testing.assert_allclose([r["p_value"] for r in one], [r["p_value"] for r in rows if r["group_b"] == "C"
                                                                 and r["group_a"] == "A"])
    within = stats.within_run(runs[0], summaries=("spectral_norm",))
    assert [(r["group_a"], r["group_b"]) for r in within] == pairs * 3


def test_compare_three_groups_writes_every_pair_and_its_heat_maps(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    runs = _three_groups(tmp_path / "runs", layers=2)
    cli.main(["compare", *[run.path for run in runs], "-o", str(tmp_path / "out"), "--indices", "2",
              "--summaries", "spectral_norm"])
    with open(tmp_path / "out" / "tests.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["group_a"], r["group_b"]) for r in rows} == {("A", "B"), ("A", "C"), ("B", "C")}
    assert len(rows) == 3 * 2 * 2 * 3  # pairs × layers × (spectral_norm, sigma_2) × epochs
    written = sorted(name for name in os.listdir(tmp_path / "out") if name.startswith("heatmap"))
    assert written == sorted(f"heatmap_{a}_{b}_layer{i}_kernel_act.png" for a, b in (("A", "B"), ("A", "C"), ("B", "C"))
                             for i in range(2))
    assert "compared A vs B, A vs C, B vs C" in capsys.readouterr().out


def test_no_finding_is_claimed_when_the_groups_are_the_target(tmp_path):
    rng = np.random.default_rng(1)
    labels, _ = simulated_subjects(rng, 40, 0.3)
    runs = [simulated_run(tmp_path / f"r{i}.h5", rng, labels, shift=0.5, shift_layer="layer1/kernel")
            for i in range(4)]
    # As recorded, the planted difference is found ...
    assert _any_significant(stats.across_runs(runs, "HC", "SZ"))
    for run in runs:
        run.metadata["target_is_group"] = True  # as `autospec run` writes it when y is the groups
    # ... but not claimed when the groups are the prediction target.
    for rows in (stats.across_runs(runs, "HC", "SZ"), stats.across_runs(runs, reference="runs"),
                 stats.within_run(runs[0]), stats.within_run(runs[0], reference="steps", block=1)):
        assert not _any_significant(rows)
        assert all(r["inference"].startswith("none: the groups are the prediction target") for r in rows)
    rows = stats.across_runs(runs, "HC", "SZ")
    assert any(r["q_value"] <= 0.05 for r in rows)  # what would have been claimed
    lines = report.console_summary(runs, [("HC", "SZ")], rows)
    assert any(line.startswith("target   The groups are the prediction target") and "no finding is claimed" in line
               for line in lines)
    assert "0 significant" in "\n".join(lines)
    page = tmp_path / "report.html"
    report.write(page, runs, [("HC", "SZ")], rows, [])
    text = page.read_text()
    assert "The groups are the prediction target" in text and "no finding is claimed" in text


def test_autospec_run_with_the_groups_as_target_says_so_and_claims_nothing(tmp_path, capsys):
    cli.main(["run", "--dataset", "simulated_fmri", "--target", "group", "--n", "40", "--hidden", "4", "--folds", "1",
              "--seeds", "2", "--epochs", "2", "--batch-size", "8", "--indices", "0", "-o", str(tmp_path),
              "--verbose", "0"])
    out = capsys.readouterr().out
    assert "target   the groups themselves ('group'): classification into 2 classes" in out
    statement = next(line for line in out.splitlines() if line.startswith("target   The groups are"))
    assert "differ by construction" in statement and "no finding is claimed" in statement
    assert out.index("runs done") < out.index(statement)
    run = ts.load(tmp_path / "runs" / "fold0_seed0.h5")
    assert run.metadata["target_is_group"] is True and run.null_partitions == 20
    with open(tmp_path / "analysis" / "tests.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["significant"] == "False" for r in rows)
    assert all(r["inference"].startswith("none: the groups are the prediction target") for r in rows)
    text = (tmp_path / "report.html").read_text()
    assert "The groups are the prediction target" in text and "no finding is claimed" in text


def test_the_first_kernels_act_is_the_input_data_family(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4, 3)).astype("float32")
    groups = rng.integers(0, 2, size=64)
    x[groups == 1] *= 1.5
    y = (x.sum(axis=(1, 2)) > 0).astype(int)
    inputs = keras.Input((4, 3))
    hidden = keras.layers.Dense(6, activation="relu", name="first")(keras.layers.Flatten()(inputs))
    model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2, name="out")(hidden), groups=["HC", "SZ"],
                             null_partitions=5)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    path = tmp_path / "run.h5"
    model.fit(x, y, groups=groups, batch_size=16, epochs=3, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
    run = ts.load(path)
    assert run.kernel_info["first/kernel"]["reads_model_input"] is True  # through the Flatten
    assert run.kernel_info["out/kernel"]["reads_model_input"] is False
    rows = stats.within_run(run, summaries=("spectral_norm", "nuclear_norm"))
    families = {(r["layer"], r["kind"]): r["family"] for r in rows}
    assert families == {("first/kernel", "act"): "input data", ("first/kernel", "grad"): "training",
                        ("first/kernel", "delta"): "training", ("out/kernel", "act"): "training",
                        ("out/kernel", "grad"): "training", ("out/kernel", "delta"): "training"}
    # BH within each family: the input data's tests do not crowd the training ones.
    for name in stats.FAMILIES:
        members = [r for r in rows if r["family"] == name]
        np.testing.assert_allclose([r["q_value"] for r in members],
                                   stats.benjamini_hochberg([r["p_value"] for r in members]))


def test_groups_that_follow_the_target_are_recognised():
    from tf_autospec.groups import follows_the_target as groups_follow_the_target

    digits = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    as_groups = np.where(digits < 2, digits, -1)  # digits 0 and 1 as groups, the others in none
    assert groups_follow_the_target(digits, as_groups)
    diagnosis = np.array([0, 1, 0, 1])
    assert groups_follow_the_target(diagnosis, diagnosis)  # the group is what is predicted
    condition = np.array([0, 1, 0, 1, 0, 1])
    groups = np.array([0, 0, 0, 1, 1, 1])
    assert not groups_follow_the_target(condition, groups)  # independent of the groups
