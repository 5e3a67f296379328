"""`stats.across_runs_geometry` and `stats.within_run_geometry`: the groups' gradient
geometry tested against random groups of the same sizes, calibrated on simulated runs
(`calibration.simulated_run(geometry=True)`): no more findings than alpha on random groups,
of equal or unequal sizes, and a planted conflict found where it is, as a cosine lower
than chance. The longer calibration: `benchmarks/calibration.py geometry`."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tf_autospec import stats, store
from tf_autospec.calibration import simulated_run, simulated_subjects

CONFLICT_LAYER = "layer1/kernel"
OTHER_LAYERS = ("layer0/kernel", "layer2/kernel")


def _experiment(folder, seed, fraction=0.5, runs=2, epochs=3, **options):
    """One simulated experiment: a new population of 40 subjects and its groups, ``runs``
    seeds on all of them (geometry only, 20 null partitions)."""
    rng = np.random.default_rng([seed, round(100 * fraction)])
    labels, signature = simulated_subjects(rng, 40, fraction)
    partition_seed = int(rng.integers(2**31))
    return [simulated_run(folder / f"{seed}_{i}.h5", np.random.default_rng(rng.integers(2**31)), labels,
                          signature=signature, partition_seed=partition_seed, epochs=epochs, geometry=True,
                          with_spectra=False, **options)
            for i in range(runs)]


@pytest.fixture(scope="module")
def null_tables(tmp_path_factory):
    """Across-runs tables of experiments without any group effect, at 50/50 and 70/30."""
    folder = tmp_path_factory.mktemp("null")
    return {fraction: [stats.across_runs_geometry(_experiment(folder, seed, fraction)) for seed in range(60)]
            for fraction in (0.5, 0.3)}


def test_rows_say_what_was_tested(tmp_path):
    rows = stats.across_runs_geometry(_experiment(tmp_path, 0))
    assert list(rows[0]) == ["test", "inference", "family", "measure", "statistic", "layer", "group_a", "group_b",
                             "from_epoch", "epoch", "n_runs", "count_a", "count_b", "value", "null_mean", "excess",
                             "effect", "p_value", "direction", "q_value", "significant"]
    assert {r["family"] for r in rows} == {"geometry"}
    # 3 layers × 3 measures × (3 epochs' levels + 1 change).
    assert len(rows) == 36
    levels = [r for r in rows if r["statistic"] == "level"]
    assert all(r["from_epoch"] == r["epoch"] for r in levels) and {r["epoch"] for r in levels} == {0, 1, 2}
    assert all((r["from_epoch"], r["epoch"]) == (0, 2) for r in rows if r["statistic"] == "change")
    np.testing.assert_allclose([r["q_value"] for r in rows], stats.benjamini_hochberg([r["p_value"] for r in rows]))
    for row in rows:
        assert row["direction"] == ("lower than chance" if row["effect"] < 0 else "higher than chance")
        assert row["excess"] == pytest.approx(row["value"] - row["null_mean"])


def test_statistic_is_the_mean_over_runs_of_epoch_means(tmp_path):
    runs = _experiment(tmp_path, 1)
    rows = stats.across_runs_geometry(runs, layers=["layer2/kernel"], measures=["cosine", "batch_cosine"])
    by = {(r["measure"], r["statistic"], r["epoch"]): r for r in rows}
    per_run = [run.epoch_cosine("layer2/kernel", "HC", "SZ")[1] for run in runs]
    assert by[("cosine", "level", 1)]["value"] == pytest.approx(np.mean([v[1] for v in per_run]))
    assert by[("cosine", "change", 2)]["value"] == pytest.approx(np.mean([v[2] - v[0] for v in per_run]))
    null = np.mean([run.per_epoch(run.null_cosine("layer2/kernel", "HC", "SZ").astype(float), "mean")[1][1]
                    for run in runs], axis=0)
    assert by[("cosine", "level", 1)]["null_mean"] == pytest.approx(np.mean(null))
    batch = [run.epoch_cosine("layer2/kernel", "HC")[1] - run.epoch_cosine("layer2/kernel", "SZ")[1] for run in runs]
    assert by[("batch_cosine", "level", 0)]["value"] == pytest.approx(np.mean([v[0] for v in batch]))


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_random_groups_find_nothing_beyond_alpha(null_tables, fraction):
    """Family-wise: the share of experiments (each a table of 36 tests) with any
    significant row, on groups without any effect, stays at alpha; so does each p ≤ 0.05."""
    tables = null_tables[fraction]
    any_significant = sum(any(r["significant"] for r in rows) for rows in tables)
    # Not above 0.05 beyond chance (60 experiments: 3 expected; 9 or more has p < 0.01).
    assert scipy_stats.binomtest(any_significant, len(tables), 0.05, alternative="greater").pvalue > 0.01
    rows = [r for table in tables for r in table]
    assert np.mean([r["significant"] for r in rows]) <= 0.05
    p = np.array([r["p_value"] for r in rows])
    assert np.all(np.isfinite(p)) and 0.02 <= np.mean(p <= 0.05) <= 0.08


def test_unequal_sizes_move_chance_not_the_findings(null_tables):
    """At 70/30 the larger group's gradient follows the batch's more, by size alone: a
    comparison with equal groups' chance level (batch cosines alike, a difference of 0)
    would find it in every experiment. The null partitions have the same sizes."""
    for fraction, expected in ((0.5, 0.0), (0.3, 0.1)):
        rows = [r for table in null_tables[fraction] for r in table
                if r["measure"] == "batch_cosine" and r["statistic"] == "level"]
        null_mean = np.mean([r["null_mean"] for r in rows])
        assert null_mean > 0.1 if expected else abs(null_mean) < 0.02
        assert np.mean([r["value"] for r in rows]) == pytest.approx(null_mean, abs=0.02)
    # The same test with equal groups' chance level, 0, for the null partitions' mean
    # (the null's SD is excess / effect): p ≤ 0.05 in nearly every test, not in 5 %.
    naive_z = np.abs([r["value"] / (r["excess"] / r["effect"]) for r in rows])
    naive_p = 2 * scipy_stats.t.sf(naive_z / np.sqrt(1 + 1 / 20), df=19)
    assert np.mean(naive_p <= 0.05) > 0.95 and np.mean([r["p_value"] <= 0.05 for r in rows]) < 0.1


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_a_planted_conflict_is_found_where_it_is(tmp_path, fraction):
    """The second group's gradients inverted on 2 of 6 output columns of layer1: its
    cosine is found lower than chance in every experiment, in nearly every epoch; the
    other layers keep alpha."""
    found, epochs_found, elsewhere, other_rows = 0, [], 0, 0
    for seed in range(10):
        rows = stats.across_runs_geometry(_experiment(tmp_path, seed, fraction, conflict=2 / 6,
                                                      conflict_layer=CONFLICT_LAYER))
        cosine = [r["significant"] and r["direction"] == "lower than chance" for r in rows
                  if r["layer"] == CONFLICT_LAYER and r["measure"] == "cosine" and r["statistic"] == "level"]
        found += any(cosine)
        epochs_found += cosine
        others = [r for r in rows if r["layer"] in OTHER_LAYERS]
        elsewhere += sum(r["significant"] for r in others)
        other_rows += len(others)
    assert found == 10 and np.mean(epochs_found) >= 0.9
    assert elsewhere / other_rows <= 0.05


def test_a_conflict_that_appears_during_training_is_a_change(tmp_path):
    runs = _experiment(tmp_path, 3, epochs=4, runs=3, conflict=3 / 6, conflict_layer=CONFLICT_LAYER,
                       conflict_epoch=2)
    rows = stats.across_runs_geometry(runs, measures=["cosine"])
    by = {(r["layer"], r["statistic"], r["epoch"]): r for r in rows}
    change = by[(CONFLICT_LAYER, "change", 3)]
    assert change["significant"] and change["direction"] == "lower than chance"
    assert not by[(CONFLICT_LAYER, "level", 0)]["significant"]
    assert by[(CONFLICT_LAYER, "level", 3)]["significant"]
    assert not any(r["significant"] for r in rows if r["layer"] in OTHER_LAYERS)


def test_within_one_run(tmp_path):
    run = _experiment(tmp_path, 4, runs=1, epochs=6, conflict=2 / 6, conflict_layer=CONFLICT_LAYER)[0]
    rows = stats.within_run_geometry(run)
    assert list(rows[0])[:15] == ["test", "inference", "run", "family", "measure", "statistic", "layer", "group_a",
                                  "group_b", "first_step", "last_step", "n_steps", "first_epoch", "last_epoch",
                                  "count_a"]
    cosine = {r["statistic"]: r for r in rows if r["layer"] == CONFLICT_LAYER and r["measure"] == "cosine"}
    assert cosine["level"]["significant"] and cosine["level"]["direction"] == "lower than chance"
    assert not any(r["significant"] for r in rows if r["layer"] in OTHER_LAYERS)
    level = cosine["level"]
    values = run.cosine(CONFLICT_LAYER, "HC", "SZ")
    assert level["value"] == pytest.approx(np.nanmean(values)) and level["n_steps"] == len(run)
    # A window of steps; within one epoch there is no change to test.
    window = stats.within_run_geometry(run, layers=[CONFLICT_LAYER], steps=(2, 3), measures="cosine")
    assert [(r["statistic"], r["first_step"], r["last_step"]) for r in window] == [("level", 2, 3)]
    assert window[0]["value"] == pytest.approx(np.nanmean(values[2:4]))


def test_within_one_run_keeps_alpha(tmp_path):
    tables = []
    for seed in range(40):
        run = _experiment(tmp_path, 100 + seed, 0.3, runs=1, epochs=6)[0]
        tables.append(stats.within_run_geometry(run))
    assert sum(any(r["significant"] for r in rows) for rows in tables) <= 5  # 2 expected; 6 or more: p < 0.01
    p = np.array([r["p_value"] for rows in tables for r in rows])
    assert 0.02 <= np.mean(p <= 0.05) <= 0.08


def test_no_finding_when_the_groups_are_the_target(tmp_path):
    runs = _experiment(tmp_path, 5, conflict=2 / 6, conflict_layer=CONFLICT_LAYER)
    runs[0].metadata["target_is_group"] = True
    rows = stats.across_runs_geometry(runs)
    assert not any(r["significant"] for r in rows)
    assert all(r["inference"] == stats.WITHHELD for r in rows)
    assert min(r["p_value"] for r in rows) < 1e-4  # the numbers stay


def test_combine_shares_alpha_between_families(tmp_path):
    folder = tmp_path
    rng = np.random.default_rng(0)
    labels, _ = simulated_subjects(rng, 40, 0.5)
    runs = [simulated_run(folder / f"r{i}.h5", np.random.default_rng(i), labels, geometry=True, conflict=2 / 6,
                          conflict_layer=CONFLICT_LAYER, shift=0.5, shift_layer="layer2/kernel")
            for i in range(2)]
    spectra = stats.across_runs(runs, summaries=("spectral_norm",))
    geometry = stats.across_runs_geometry(runs)
    both = stats.combine(spectra, geometry)
    assert len(both) == len(spectra) + len(geometry) and {r["family"] for r in both} == {"training", "geometry"}
    for family in ("training", "geometry"):
        members = [r for r in both if r["family"] == family]
        q = stats.benjamini_hochberg([r["p_value"] for r in members])
        np.testing.assert_allclose([r["q_value"] for r in members], q)
        assert [r["significant"] for r in members] == list(q <= 0.025)
    assert any(r["significant"] for r in both if r["family"] == "geometry")
    assert geometry[0]["q_value"] == both[len(spectra)]["q_value"]  # the tables themselves are left as they were
    path = tmp_path / "tests.csv"
    stats.write_csv(both, path)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:3] == ["test", "inference", "family"] and {"kind", "summary", "measure", "statistic"} <= set(header)


def test_clear_errors(tmp_path):
    rng = np.random.default_rng(0)
    labels, _ = simulated_subjects(rng, 40, 0.5)
    plain = [simulated_run(tmp_path / f"plain{i}.h5", rng, labels, with_spectra=False) for i in range(2)]
    with pytest.raises(ValueError, match=r"no gradient geometry.*geometry=True, null_partitions=20"):
        stats.across_runs_geometry(plain)
    few = [simulated_run(tmp_path / f"few{i}.h5", rng, labels, geometry=True, null_partitions=3) for i in range(2)]
    with pytest.raises(ValueError, match=r"3 null partitions.*null_partitions=20"):
        stats.within_run_geometry(few[0])
    runs = _experiment(tmp_path, 6)
    with pytest.raises(ValueError, match="within_run_geometry"):
        stats.across_runs_geometry(runs[:1])
    with pytest.raises(ValueError, match="Unknown geometry measure"):
        stats.across_runs_geometry(runs, measures=["angle"])
    with pytest.raises(ValueError, match="statistics"):
        stats.across_runs_geometry(runs, statistics=["slope"])
    with pytest.raises(ValueError, match="not recorded in every run"):
        stats.across_runs_geometry(runs, epochs=[7])
    with pytest.raises(ValueError, match="No recorded step"):
        stats.within_run_geometry(runs[0], steps=(100, 200))
    with pytest.raises(ValueError, match="Layer"):
        stats.within_run_geometry(runs[0], layers=["dense/kernel"])


def test_a_measure_not_recorded(tmp_path):
    """A run that recorded the cosine alone: the overlap is refused with the fix, the
    batch cosine comes with the cosine."""
    kernels = [{"path": "dense/kernel", "layer": "dense", "layer_class": "Dense", "fan_in": 3, "fan_out": 2,
                "widths": {"grad": 2}}]
    layout = {"groups": ["HC", "SZ"], "kinds": ["grad"], "kernels": kernels, "log_keys": ["loss"],
              "null_partitions": 5, "geometry": ["cosine"]}
    rng = np.random.default_rng(0)
    n = 4
    writer = store.RunWriter(str(tmp_path / "cosine.h5"), layout, {}, resume=False)
    writer.append({"epoch": np.arange(n) // 2, "batch": np.arange(n) % 2, "wall_time": np.arange(n, dtype=float),
                   "step": np.arange(n), "loss": np.ones(n)},
                  {("dense/kernel", "grad"): rng.uniform(size=(n, 2, 2))}, np.full((n, 2), 3),
                  {("dense/kernel", "grad"): rng.uniform(size=(n, 5, 2, 2))}, np.full((n, 5, 2), 3),
                  np.zeros((n, 2)),
                  geometry={("dense/kernel", "cosine"): rng.uniform(-1, 1, (n, 1)),
                            ("dense/kernel", "batch_cosine"): rng.uniform(-1, 1, (n, 2))},
                  null_geometry={("dense/kernel", "cosine"): rng.uniform(-1, 1, (n, 5, 1)),
                                 ("dense/kernel", "batch_cosine"): rng.uniform(-1, 1, (n, 5, 2))})
    writer.close()
    run = store.load(tmp_path / "cosine.h5")
    rows = stats.within_run_geometry(run)
    assert {r["measure"] for r in rows} == {"cosine", "batch_cosine"}
    with pytest.raises(ValueError, match=r"did not record \['overlap'\].*geometry=True"):
        stats.within_run_geometry(run, measures=["overlap"])
