"""Calibration of the group comparisons (`tf_autospec.stats`), their power, and the cost
of the null partitions they need.

Rate = the fraction of repetitions with ANY significant test (the rows' ``significant``,
as `tf_autospec.stats` decides it) over the whole table (every layer × kind × summary ×
epoch, both families), on data with no group effect; the target is ≤ 0.05 (with a 95 %
Clopper–Pearson interval). The same p-values are also counted with each family at 0.05,
with one BH family for the whole table, and with each family at 0.025.
Every repetition is tested with the new reference (``reference="null"``: random groups of
the same sizes from the same subjects) and with the older one (``"runs"`` across runs,
``"steps"`` within a run) on the same runs, so that the table shows the problem beside
its fix.

Parts (each one a sub-command; results merged into one JSON file):

``simulated``  `tf_autospec.calibration.simulated_run`: fixed subjects with their own
    signatures, groups of 50/50, 70/30, 80/20 (of 40 subjects), three designs: seeds-only
    (5 runs on all subjects, different row noise and batch order), folds (5 stratified
    folds, each run on the other 4 with its own seed), and one run (`within_run`, 40
    steps). Null, then a planted ×(1 + shift) in the second group's rows of layer1.
``geometry``   the gradient geometry tests (`stats.across_runs_geometry`,
    `stats.within_run_geometry`) on `simulated_run(geometry=True)`: the same subjects,
    groups and designs as ``simulated``; the whole geometry table (3 layers × cosine,
    overlap, batch-cosine difference × each epoch's level and the change from the first
    to the last epoch). Beside it a test against a fixed chance level (cosine 0, overlap
    k / fan_in, batch-cosine difference 0), which is what "by chance" means for groups of
    equal size and unrelated gradients. Power: a conflict planted in layer1 (the second
    group's gradients sign-inverted on 1 or 2 of its 6 output columns), found when a
    cosine of layer1 is significant and lower than chance.
``real``       real trainings through `tf_autospec.experiment.run_experiment`
    (``null_partitions=20``), designs folds 1 × seeds 3 and folds 3 × seeds 1:
    digits (4 classes, the target; groups drawn at random per repetition at 50/50, 70/30,
    80/20), simulated fMRI at 45/35 without group effect, and with the default effect
    (0.3 between two domains) and a modest one (0.18 on one edge, d ≈ 1). Each setting and
    design runs in a child process of its own. Beside the real groups, a "rotation": every
    labelling (the groups and the P partitions) taken in turn for the groups and tested
    against the other P, P + 1 exchangeable repetitions of the procedure per repetition.
``cost``       plain ``keras.Model.fit`` vs `AutoSpecModel` with 0 and 20 null partitions,
    every step, all kinds, batch 32 and 128, side by side in one process (MLP
    1378-512-256-2 of ``autospec run``, a small CNN).

Usage (what docs/analysis.md and docs/benchmarks.md report; 2-core VM):
    python benchmarks/calibration.py simulated --repetitions 400 --power-repetitions 100   # 13 min
    python benchmarks/calibration.py simulated --signature 2 --fractions 0.5 0.2 --shifts --name simulated_signature_2
    python benchmarks/calibration.py simulated --repetitions 1000 --fractions 0.2 --designs seeds folds \
        --shifts --seed 7 --name simulated_80_20_1000
    python benchmarks/calibration.py geometry --repetitions 400 --power-repetitions 100
    python benchmarks/calibration.py real          # 20 repetitions × 12 cells, 39 min
    python benchmarks/calibration.py cost --repeats 11 --name cost_repeat
    python benchmarks/calibration.py tables        # the markdown tables from the JSON file
"""

import argparse
import contextlib
import datetime
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from scipy import stats as scipy_stats  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tf_autospec as ts  # noqa: E402
from tf_autospec import experiment as experiment_module  # noqa: E402
from tf_autospec import stats  # noqa: E402
from tf_autospec.calibration import simulated_run, simulated_subjects  # noqa: E402

SIMULATED_SUMMARIES = ("spectral_norm", "nuclear_norm", "effective_rank", "sigma_2")
# What `autospec run` tests across runs (its --summaries) plus sigma_2..3.
REAL_SUMMARIES = ("spectral_norm", "nuclear_norm", "effective_rank", "sigma_2", "sigma_3")
FRACTIONS = (0.5, 0.3, 0.2)  # of the second group: 50/50, 70/30, 80/20
SHIFT_LAYER = "layer1/kernel"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def rate(k, n):
    """``{"k", "n", "rate", "ci"}`` with the 95 % Clopper–Pearson interval."""
    ci = scipy_stats.binomtest(int(k), int(n)).proportion_ci(0.95) if n else None
    return {"k": int(k), "n": int(n), "rate": k / n if n else float("nan"),
            "ci": [ci.low, ci.high] if ci else None}


def outcome(rows, planted=None, alpha=0.05):
    """What one table of tests says: any significant test (as `stats` decides it: since
    commit f0a9368 each family at ``alpha`` / the number of families), the same p-values
    under other rules (each family at ``alpha``; per family at ``alpha``; one BH family for
    the whole table; each family at ``alpha / 2``), the layers flagged, how many tests, and
    the unadjusted p-values."""
    significant = [r for r in rows if r["significant"]]
    p_values = np.array([r["p_value"] for r in rows], dtype=np.float64)
    one_family = stats.benjamini_hochberg(p_values)
    q = np.array([r["q_value"] for r in rows], dtype=np.float64)
    families = np.array([r["family"] for r in rows])
    at_alpha = np.isfinite(q) & (q <= alpha)
    out = {
        "any": bool(significant),
        "any_each_alpha": bool(at_alpha.any()),
        "any_training": bool((at_alpha & (families == "training")).any()),
        "any_input": bool((at_alpha & (families == "input data")).any()),
        "any_one_family": bool(np.any(np.isfinite(one_family) & (one_family <= alpha))),
        "any_half_alpha": bool(np.any(np.isfinite(q) & (q <= alpha / 2))),
        "tests": sum(np.isfinite(r["p_value"]) for r in rows),
        "significant": len(significant),
        "layers": sorted({r["layer"] for r in significant}),
        "p": [float(r["p_value"]) for r in rows if np.isfinite(r["p_value"])],
    }
    if planted is not None:
        out["found"] = planted in out["layers"]
        out["elsewhere"] = bool(set(out["layers"]) - {planted})
        out["false_discovery_proportion"] = (
            float(np.mean([r["layer"] != planted for r in significant])) if significant else 0.0)
    return out


def tally(outcomes, planted=False):
    """Rates over repetitions, and the per-test calibration of the unadjusted p-values."""
    n = len(outcomes)
    p = np.concatenate([o["p"] for o in outcomes]) if outcomes else np.array([])
    out = {
        "any": rate(sum(o["any"] for o in outcomes), n),
        "any_training": rate(sum(o["any_training"] for o in outcomes), n),
        "any_input": rate(sum(o["any_input"] for o in outcomes), n),
        "any_each_alpha": rate(sum(o["any_each_alpha"] for o in outcomes), n),
        "any_one_family": rate(sum(o["any_one_family"] for o in outcomes), n),
        "any_half_alpha": rate(sum(o["any_half_alpha"] for o in outcomes), n),
        "tests_per_repetition": float(np.mean([o["tests"] for o in outcomes])),
        "mean_significant": float(np.mean([o["significant"] for o in outcomes])),
        "per_test_p_le_0.05": float(np.mean(p <= 0.05)) if p.size else None,
        "per_test_p_le_0.01": float(np.mean(p <= 0.01)) if p.size else None,
        "per_test_p_le_0.001": float(np.mean(p <= 0.001)) if p.size else None,
        "ks_uniform": float(scipy_stats.kstest(p, "uniform").statistic) if p.size else None,
    }
    if planted:
        out["found"] = rate(sum(o["found"] for o in outcomes), n)
        out["elsewhere"] = rate(sum(o["elsewhere"] for o in outcomes), n)
        out["fdr"] = float(np.mean([o["false_discovery_proportion"] for o in outcomes]))
    return out


def labeling_statistics(runs, summaries, group_a, group_b):
    """``T_j`` of every test for every labeling ``j`` (0: the real groups, 1…P: the null
    partitions), computed as `stats.across_runs` computes ``T_0`` and ``T_1 … T_P``.

    Returns:
        ``(T, families)``: float ``[tests, 1 + P]`` and each test's family.
    """
    from tf_autospec import summaries as summaries_module

    first = runs[0]
    statistics_, families = [], []
    for layer, kind, summary in itertools.product(first.layers, first.kinds, summaries):
        position = summaries_module.index(summary)
        if position is not None and position >= first.widths[layer][kind]:
            continue
        per_run = []
        for run in runs:
            values = []
            for group in (group_a, group_b):
                real_ = stats.normalized_spectrum(run, layer, kind, group)[:, None]
                null = stats.normalized_null_spectrum(run, layer, kind, group)
                values.append(summaries_module.summarize(np.concatenate([real_, null], axis=1), summary))
            per_run.append(stats._epoch_means(values[0] - values[1], run))
        for epoch in sorted(set.intersection(*[set(e) for e in per_run])):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                statistics_.append(np.nanmean(np.stack([e[epoch] for e in per_run]), axis=0))
            families.append(stats.family(first, layer, kind))
    return np.array(statistics_), np.array(families)


def rotation(runs, summaries, alpha=0.05):
    """Every labeling in turn taken for the real groups and tested against the other P
    (`stats.null_test`, BH per family): under the null hypothesis the P + 1 labelings are
    exchangeable, so each is one more draw of the whole procedure (with P − 1 partitions
    in the reference instead of P). Gives P + 1 (dependent) repetitions of "any
    significant" per set of runs, and the unadjusted p-values' tails."""
    group_a, group_b = runs[0].groups[:2]
    t, families = labeling_statistics(runs, summaries, group_a, group_b)
    columns = t.shape[1]
    rules = {key: [] for key in ("any", "any_each_alpha", "any_training", "any_input", "any_one_family",
                                 "any_half_alpha")}
    present = [name for name in stats.FAMILIES if np.any(families == name)]
    p_all = []
    for j in range(columns):
        others = np.delete(t, j, axis=1)
        p = np.array([stats.null_test(t[i, j], others[i])["p_value"] for i in range(len(t))])
        found = dict.fromkeys(rules, False)
        for name in present:
            q = stats.benjamini_hochberg(p[families == name])
            q = q[np.isfinite(q)]
            found["any"] |= bool(np.any(q <= alpha / len(present)))  # what stats does
            found["any_each_alpha"] |= bool(np.any(q <= alpha))
            found["any_half_alpha"] |= bool(np.any(q <= alpha / 2))
            found["any_training" if name == "training" else "any_input"] = bool(np.any(q <= alpha))
        q = stats.benjamini_hochberg(p)
        found["any_one_family"] = bool(np.any(np.isfinite(q) & (q <= alpha)))
        for key, value in found.items():
            rules[key].append(value)
        p_all.append(p[np.isfinite(p)])
    p_all = np.concatenate(p_all)
    return {"labelings": columns, **{key: float(np.mean(v)) for key, v in rules.items()},
            "p_le": {str(level): float(np.mean(p_all <= level)) for level in (0.05, 0.01, 0.001)}}


# --------------------------------------------------------------------------- simulated

DESIGNS = ("seeds", "folds", "within")


def design_runs(folder, rng, labels, design, args, **common):
    """The design's simulated runs: ``args.runs`` seeds on every subject, ``args.folds``
    stratified folds, or one run (``"within"``); ``common`` goes to `simulated_run`."""
    if design == "seeds":
        plan = [None] * args.runs
    elif design == "folds":
        fold_of = experiment_module.stratified_folds(labels, args.folds, seed=int(rng.integers(2**31)))
        plan = [np.flatnonzero(fold_of != fold) for fold in range(args.folds)]
    else:
        plan = [None]
    epochs = args.within_epochs if design == "within" else args.epochs
    return [simulated_run(os.path.join(folder, f"run{i}.h5"), np.random.default_rng(rng.integers(2**31)),
                          labels=labels, subjects=subjects, epochs=epochs, **common) for i, subjects in enumerate(plan)]


def simulated_repetition(folder, fraction, design, shift, repetition, args):
    """One repetition: a new population of subjects and their groups, the design's runs,
    both references on the same runs."""
    sequence = np.random.SeedSequence([args.seed, repetition, round(100 * fraction), DESIGNS.index(design),
                                       round(1000 * shift)])
    rng = np.random.default_rng(sequence)
    labels, signature = simulated_subjects(rng, args.subjects, fraction, args.signature)
    runs = design_runs(folder, rng, labels, design, args, signature=signature,
                       partition_seed=int(rng.integers(2**31)), shift=shift,
                       shift_layer=SHIFT_LAYER if shift else None, null_partitions=args.partitions, batch=args.batch)
    planted = SHIFT_LAYER if shift else None
    if design == "within":
        new = stats.within_run(runs[0], summaries=SIMULATED_SUMMARIES)
        old = stats.within_run(runs[0], summaries=SIMULATED_SUMMARIES, reference="steps", block=args.block,
                               permutations=500, seed=repetition)
    else:
        new = stats.across_runs(runs, summaries=SIMULATED_SUMMARIES)
        old = stats.across_runs(runs, summaries=SIMULATED_SUMMARIES, reference="runs", permutations=200,
                                seed=repetition)
    return {"null": outcome(new, planted), "old": outcome(old, planted)}


def simulated(args):
    folder = tempfile.mkdtemp()
    results = {"settings": {k: getattr(args, k) for k in ("repetitions", "power_repetitions", "subjects", "signature",
                                                          "runs", "folds", "epochs", "within_epochs", "batch",
                                                          "block", "partitions", "seed", "shifts")},
               "summaries": SIMULATED_SUMMARIES, "cells": []}
    for cell, _ in planted_cells("shift", args.shifts, args,
                                 lambda *cell_repetition: simulated_repetition(folder, *cell_repetition, args)):
        results["cells"].append(cell)
        print(_simulated_line(cell), flush=True)
    shutil.rmtree(folder)
    return results


def planted_cells(name, effects, args, repetition):
    """The cells of a simulated calibration: with no planted effect and with each of
    ``effects``, for every group fraction and design, the outcomes of
    ``repetition(fraction, design, effect, index)`` over ``args.repetitions`` (no effect)
    or ``args.power_repetitions``, tallied per reference. Yields ``(cell, outcomes)``,
    the cell keyed by ``name`` for the effect."""
    for effect, fraction, design in itertools.product([0.0] + list(effects), args.fractions, args.designs):
        repetitions = args.repetitions if effect == 0 else args.power_repetitions
        start = time.perf_counter()
        outcomes = [repetition(fraction, design, effect, r) for r in range(repetitions)]
        cell = {name: effect, "fraction": fraction, "design": design, "repetitions": repetitions,
                "seconds": time.perf_counter() - start}
        for reference in ("null", "old"):
            cell[reference] = tally([o[reference] for o in outcomes], planted=bool(effect))
        yield cell, outcomes


def _simulated_line(cell):
    new, old = cell["null"], cell["old"]
    text = (f"shift {cell['shift']:.2f} {round(100 * (1 - cell['fraction']))}/{round(100 * cell['fraction'])} "
            f"{cell['design']:6s} n={cell['repetitions']}: any significant null {new['any']['rate']:.3f} "
            f"old {old['any']['rate']:.3f}; per-test p≤.05 {new['per_test_p_le_0.05']:.3f}")
    if cell["shift"]:
        text += (f"; found null {new['found']['rate']:.2f} old {old['found']['rate']:.2f}; elsewhere null "
                 f"{new['elsewhere']['rate']:.2f} old {old['elsewhere']['rate']:.2f}; FDR null {new['fdr']:.3f}")
    return text + f" ({cell['seconds']:.0f} s)"


# --------------------------------------------------------------------------- geometry

CONFLICT_LAYER = "layer1/kernel"


def fixed_chance_rows(runs, design, alpha=0.05):
    """The naive test of the gradient geometry: each pair's value against a fixed chance
    level (cosine 0: unrelated directions; overlap ``k / fan_in``; the batch-cosine
    difference 0: equal groups), a one-sample t test over the runs' epoch means (over the
    steps within one run), BH at ``alpha``. It ignores what the groups' sizes and training
    do to the measures, which the null partitions measure."""
    rows = []
    for layer, measure in itertools.product(runs[0].layers, stats.GEOMETRY_MEASURES):
        chance = runs[0].overlap_k / runs[0].kernel_info[layer]["fan_in"] if measure == "overlap" else 0.0
        values = [stats.geometry_values(run, layer, measure, *runs[0].groups[:2]) for run in runs]
        if design == "within":
            samples = {None: values[0][np.isfinite(values[0])]}
        else:
            per_run = [stats._epoch_means(v, run) for v, run in zip(values, runs)]
            samples = {epoch: np.array([e[epoch] for e in per_run]) for epoch in per_run[0]}
        for epoch, sample in samples.items():
            sample = sample[np.isfinite(sample)]
            p = scipy_stats.ttest_1samp(sample, chance).pvalue if len(sample) > 1 and np.ptp(sample) > 0 else np.nan
            rows.append({"family": "geometry", "layer": layer, "measure": measure, "epoch": epoch,
                         "p_value": float(p), "effect": float(np.mean(sample) - chance)})
    for row, q in zip(rows, stats.benjamini_hochberg([r["p_value"] for r in rows])):
        row.update(q_value=float(q), significant=bool(np.isfinite(q) and q <= alpha))
    return rows


def geometry_outcome(rows, planted=None):
    """`outcome`, with "found" = a significant cosine in the planted layer, lower than chance."""
    out = outcome(rows, planted)
    if planted is not None:
        out["found"] = any(r["significant"] and r["layer"] == planted and r["measure"] == "cosine"
                           and r["effect"] < 0 for r in rows)
    out["by_measure"] = {m: any(r["significant"] for r in rows if r["measure"] == m) for m in stats.GEOMETRY_MEASURES}
    return out


def geometry_repetition(folder, fraction, design, conflict, repetition, args):
    """One repetition of the geometry calibration: a new population and groups, the
    design's runs (`simulated_run(geometry=True)`), the null-partition tests and the
    fixed-chance test on the same runs."""
    sequence = np.random.SeedSequence([args.seed, repetition, round(100 * fraction), DESIGNS.index(design),
                                       round(1000 * conflict), 17])
    rng = np.random.default_rng(sequence)
    labels, signature = simulated_subjects(rng, args.subjects, fraction, args.signature)
    runs = design_runs(folder, rng, labels, design, args, signature=signature,
                       partition_seed=int(rng.integers(2**31)), null_partitions=args.partitions, batch=args.batch,
                       geometry=True, common=args.common, conflict=conflict,
                       conflict_layer=CONFLICT_LAYER if conflict else None, with_spectra=False)
    new = stats.within_run_geometry(runs[0]) if design == "within" else stats.across_runs_geometry(runs)
    planted = CONFLICT_LAYER if conflict else None
    return {"null": geometry_outcome(new, planted), "old": geometry_outcome(fixed_chance_rows(runs, design), planted)}


def geometry(args):
    folder = tempfile.mkdtemp()
    results = {"settings": {k: getattr(args, k) for k in ("repetitions", "power_repetitions", "subjects", "signature",
                                                          "common", "runs", "folds", "epochs", "within_epochs",
                                                          "batch", "partitions", "seed", "conflicts")},
               "measures": stats.GEOMETRY_MEASURES, "statistics": stats.GEOMETRY_STATISTICS, "cells": []}
    for cell, outcomes in planted_cells("conflict", args.conflicts, args,
                                        lambda *cell_repetition: geometry_repetition(folder, *cell_repetition, args)):
        for reference in ("null", "old"):
            cell[reference]["any_by_measure"] = {
                m: rate(sum(o[reference]["by_measure"][m] for o in outcomes), cell["repetitions"])
                for m in stats.GEOMETRY_MEASURES}
        results["cells"].append(cell)
        print(_geometry_line(cell), flush=True)
        _save(args.json, args.name or "geometry", results)  # a partial result survives an interruption
    shutil.rmtree(folder)
    return results


def _geometry_line(cell):
    new, old = cell["null"], cell["old"]
    text = (f"conflict {cell['conflict']:.2f} {_split(cell['fraction'])} {cell['design']:6s} n={cell['repetitions']}: "
            f"any significant null {new['any']['rate']:.3f} fixed chance {old['any']['rate']:.3f}; per-test "
            f"p≤.05 {new['per_test_p_le_0.05']:.3f} p≤.001 {new['per_test_p_le_0.001']:.4f}; by measure "
            + ", ".join(f"{m} {r['rate']:.3f}" for m, r in new["any_by_measure"].items()))
    if cell["conflict"]:
        text += (f"; found {new['found']['rate']:.2f}, elsewhere {new['elsewhere']['rate']:.2f}, "
                 f"FDR {new['fdr']:.3f}")
    return text + f" ({cell['seconds']:.0f} s)"


# --------------------------------------------------------------------------- real

REAL_DESIGNS = {"seeds": (1, 3), "folds": (3, 1)}  # (folds, seeds)


def digits_data(n, fraction, classes, seed):
    """scikit-learn's digits of ``classes`` (the target: the digit), ``n`` of them, with
    two groups drawn at random: a ``fraction`` in the second, no group effect."""
    from sklearn.datasets import load_digits

    from tf_autospec.data.simulated import GroupedData

    bunch = load_digits()
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(np.flatnonzero(np.isin(bunch.target, classes)))[:n])
    labels = (np.arange(len(chosen)) >= round(len(chosen) * (1 - fraction))).astype(np.int32)
    rng.shuffle(labels)
    x = (bunch.images[chosen] / 16.0).astype(np.float32)[..., None]
    info = dict(dataset="digits", seed=seed, group_classes=[], random_fraction=fraction)
    return GroupedData(x, bunch.target[chosen].astype(np.int32), labels, ("A", "B"), info)


@contextlib.contextmanager
def dataset_given(data):
    """`run_experiment` on ``data`` (a `GroupedData`) instead of a named dataset: the one
    way to hand it groups of chosen sizes at random without changing the library."""
    with mock.patch.object(experiment_module, "load_dataset", lambda name, task=None, **options: data):
        yield


def real_settings(args):
    """``(name, fraction, options)`` of every real setting run."""
    fmri = dict(n_subjects=80, group_fraction=35 / 80)
    settings = []
    if "digits" in args.settings:
        settings += [("digits", f, {}) for f in args.fractions]
    if "fmri_null" in args.settings:
        settings.append(("fmri_null", 35 / 80, dict(fmri, effect_size=0.0)))
    if "fmri_default" in args.settings:
        settings.append(("fmri_default", 35 / 80, dict(fmri, effect_size=0.3)))
    if "fmri_one_edge" in args.settings:
        settings.append(("fmri_one_edge", 35 / 80, dict(fmri, effect_size=0.18, effect_pattern="one_edge")))
    return settings


def real_repetition(folder, name, fraction, options, design, repetition, args):
    folds, seeds = REAL_DESIGNS[design]
    seed = 1000 * args.seed + repetition
    if name == "digits":
        plan = experiment_module.Experiment(
            dataset="digits", model="mlp", folds=folds, seeds=seeds, epochs=args.digits_epochs,
            batch_size=args.batch, model_options={"hidden": tuple(args.digits_hidden)},
            null_partitions=args.partitions)
        context = dataset_given(digits_data(args.digits_n, fraction, list(range(args.digits_classes)), seed))
    else:
        plan = experiment_module.Experiment(
            dataset="simulated_fmri", model="mlp", folds=folds, seeds=seeds, epochs=args.epochs,
            batch_size=args.batch, dataset_options={**options, "seed": seed}, null_partitions=args.partitions)
        context = contextlib.nullcontext()
    with context:
        paths = experiment_module.run_experiment(plan, folder, overwrite=True, verbose=0, summary=None)
    runs = [ts.load(path) for path in paths]
    new = stats.across_runs(runs, summaries=REAL_SUMMARIES)
    old = stats.across_runs(runs, summaries=REAL_SUMMARIES, reference="runs", permutations=200, seed=repetition)
    accuracy = float(np.mean([run.attributes["evaluation"]["overall"] for run in runs]))
    return {"null": outcome(new), "old": outcome(old), "accuracy": accuracy, "steps": len(runs[0]),
            "rotation": rotation(runs, REAL_SUMMARIES)}


def real_cell(name, fraction, options, design, args):
    """The repetitions of one setting and design (run in a child process of its own: one
    process's memory grows by ~80 MB per repetition of three trainings)."""
    warnings.filterwarnings("ignore", message="Groups differ in size")  # said once, in the docs
    folder = tempfile.mkdtemp()
    start = time.perf_counter()
    outcomes = [real_repetition(folder, name, fraction, options, design, r, args) for r in range(args.repetitions)]
    seconds = time.perf_counter() - start
    shutil.rmtree(folder)
    n = options.get("n_subjects")
    split = f"{n - round(n * fraction)}/{round(n * fraction)}" if n else _split(fraction)
    cell = {"setting": name, "fraction": fraction, "split": split, "options": options, "design": design,
            "repetitions": args.repetitions, "seconds": seconds, "seconds_per_repetition": seconds / args.repetitions,
            "cpu_seconds": time.process_time(), "accuracy": float(np.mean([o["accuracy"] for o in outcomes])),
            "steps_per_run": outcomes[0]["steps"]}
    for reference in ("null", "old"):
        cell[reference] = tally([o[reference] for o in outcomes])
    rotations = [o["rotation"] for o in outcomes]
    cell["rotation"] = {"labelings": rotations[0]["labelings"], "repetitions": len(rotations),
                        **{key: float(np.mean([r[key] for r in rotations])) for key in rotations[0]
                           if key.startswith("any")},
                        "p_le": {k: float(np.mean([r["p_le"][k] for r in rotations])) for k in rotations[0]["p_le"]}}
    return cell


def _real_line(cell):
    n, o, r = cell["null"], cell["old"], cell["rotation"]
    return (f"{cell['setting']} {cell['split']} {cell['design']}: any significant {n['any']['rate']:.3f} "
            f"(each family at 0.05: {n['any_each_alpha']['rate']:.3f}; training {n['any_training']['rate']:.3f}, "
            f"input {n['any_input']['rate']:.3f}; one BH family {n['any_one_family']['rate']:.3f}); older "
            f"{o['any']['rate']:.3f}; per-test p≤.05 {n['per_test_p_le_0.05']:.3f}; rotation {r['any']:.3f} "
            f"(each family at 0.05 {r['any_each_alpha']:.3f}, p≤.001 {r['p_le']['0.001']:.4f}); "
            f"accuracy {cell['accuracy']:.2f}; {cell['seconds_per_repetition']:.1f} s/repetition")


def real(args):
    import multiprocessing

    results = {"settings": {k: getattr(args, k) for k in ("repetitions", "epochs", "digits_epochs", "digits_n",
                                                          "digits_classes", "digits_hidden", "batch",
                                                          "partitions", "seed")},
               "designs": REAL_DESIGNS, "summaries": REAL_SUMMARIES, "cells": []}
    context = multiprocessing.get_context("spawn")
    for (name, fraction, options), design in itertools.product(real_settings(args), args.designs):
        with context.Pool(1) as pool:
            cell = pool.apply(real_cell, (name, fraction, options, design, args))
        results["cells"].append(cell)
        print(_real_line(cell), flush=True)
        _save(args.json, args.name or "real", results)  # a partial result survives an interruption
    results["cpu_seconds_children"] = sum(c["cpu_seconds"] for c in results["cells"])
    return results


# --------------------------------------------------------------------------- cost

def cost(args):
    import keras
    import tensorflow as tf

    from tf_autospec import models
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import overhead

    def small_cnn(inputs):
        return models.cnn2d_outputs(inputs, outputs=10, filters=(16, 32), dense=64)

    architectures = {
        "mlp": ("MLP 1378-512-256-2 (autospec run's default)", lambda i: models.mlp_outputs(i, outputs=2), (1378,), 2),
        "cnn": ("CNN Conv16-pool-Conv32-pool-Dense64-10, 28×28×1", small_cnn, (28, 28, 1), 10),
    }
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"TF {tf.__version__}, Keras {keras.__version__}",
               "steps": args.steps, "repeats": args.repeats, "models": {}}
    for name, batch in itertools.product(args.models, args.batches):
        title, make, shape, classes = architectures[name]
        x, y, labels = overhead.synthetic_data(shape, batch, args.steps, 2)
        data = (x, y % classes, labels)
        trained = {}
        for variant, partitions in (("plain", None), ("autospec_P0", 0), ("autospec_P20", 20)):
            keras.utils.set_random_seed(0)
            inputs = keras.Input(shape)
            outputs = make(inputs)
            if partitions is None:
                model = keras.Model(inputs, outputs)
            else:
                model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=["g0", "g1"],
                                         null_partitions=partitions)
            model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            trained[variant] = model
        for model in trained.values():  # tracing epoch, excluded
            overhead.epoch_seconds(model, *data, batch)
        times = {variant: [] for variant in trained}
        for _ in range(args.repeats):
            for variant, model in trained.items():
                times[variant].append(overhead.step_ms(model, *data, batch))
        plain = statistics.median(times["plain"])
        rows = {variant: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t),
                          "quartiles_ms": [float(np.percentile(t, 25)), float(np.percentile(t, 75))],
                          "ratio": statistics.median(t) / plain, "all_ms": t} for variant, t in times.items()}
        results["models"][f"{name}_batch{batch}"] = {"title": title, "batch": batch, "variants": rows}
        for variant, r in rows.items():
            print(f"{name} batch {batch} {variant:13s} {r['median_ms']:8.1f} ms/step "
                  f"[{r['min_ms']:.1f}-{r['max_ms']:.1f}] {r['ratio']:.2f}x plain", flush=True)
        keras.backend.clear_session()
    return results


# --------------------------------------------------------------------------- tables

def _ci(r):
    return f"{r['rate']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


def _split(fraction):
    return f"{round(100 * (1 - fraction))}/{round(100 * fraction)}"


def _rule(r):
    return f"{r['rate']:.2f}"


def tables(path):
    with open(path) as f:
        results = json.load(f)
    lines = []
    simulated_keys = [k for k in results if k.startswith("simulated")]
    if simulated_keys:
        lines += ["| groups | design | subjects' signature | repetitions | null partitions: any significant [95 % CI] "
                  "| per test: p ≤ 0.05 | p ≤ 0.001 | older reference: any significant |",
                  "|---|---|---|---|---|---|---|---|"]
        for key in simulated_keys:
            signature = results[key]["settings"]["signature"]
            for c in (c for c in results[key]["cells"] if c["shift"] == 0):
                n, o = c["null"], c["old"]
                tail = n.get("per_test_p_le_0.001")
                lines.append(f"| {_split(c['fraction'])} | {c['design']} | {signature} | {c['repetitions']} "
                             f"| **{_ci(n['any'])}** | {n['per_test_p_le_0.05']:.3f} "
                             f"| {'' if tail is None else f'{tail:.4f}'} | {_ci(o['any'])} |")
        lines += ["", "| planted | groups | design | repetitions | null partitions: layer found | another layer "
                  "| FDR | older: found | older: another layer |", "|---|---|---|---|---|---|---|---|---|"]
        for key in simulated_keys:
            for c in (c for c in results[key]["cells"] if c["shift"] != 0):
                lines.append(f"| ×{1 + c['shift']:.1f} | {_split(c['fraction'])} | {c['design']} | {c['repetitions']} "
                             f"| {c['null']['found']['rate']:.2f} | {c['null']['elsewhere']['rate']:.2f} "
                             f"| {c['null']['fdr']:.3f} | {c['old']['found']['rate']:.2f} "
                             f"| {c['old']['elsewhere']['rate']:.2f} |")
    for key in (k for k in results if k.startswith("geometry")):
        lines += ["", f"`{key}`", "", "| groups | design | repetitions | null partitions: any significant [95 % CI] "
                  "| cosine | overlap | batch cosine | per test: p ≤ 0.05 | p ≤ 0.001 | fixed chance level: any "
                  "| fixed chance level: batch cosine |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in (c for c in results[key]["cells"] if c["conflict"] == 0):
            n, o = c["null"], c["old"]
            by = n["any_by_measure"]
            lines.append(f"| {_split(c['fraction'])} | {c['design']} | {c['repetitions']} | **{_ci(n['any'])}** "
                         f"| {by['cosine']['rate']:.3f} | {by['overlap']['rate']:.3f} "
                         f"| {by['batch_cosine']['rate']:.3f} | {n['per_test_p_le_0.05']:.3f} "
                         f"| {n['per_test_p_le_0.001']:.4f} | {_ci(o['any'])} "
                         f"| {o['any_by_measure']['batch_cosine']['rate']:.3f} |")
        lines += ["", "| conflict (columns of 6) | groups | design | repetitions | found: cosine lower than chance "
                  "| another layer | FDR |", "|---|---|---|---|---|---|---|"]
        for c in (c for c in results[key]["cells"] if c["conflict"] != 0):
            n = c["null"]
            lines.append(f"| {round(6 * c['conflict'])} | {_split(c['fraction'])} | {c['design']} "
                         f"| {c['repetitions']} | {_ci(n['found'])} | {n['elsewhere']['rate']:.2f} "
                         f"| {n['fdr']:.3f} |")
    real_keys = [k for k in results if k.startswith("real")]
    for key in real_keys:
        designs = results[key]["designs"]
        lines += ["", f"`{key}`", "",
                  "| data | groups | design | reps | accuracy | any significant [95 % CI] | each family at 0.05 "
                  "| training at 0.05 | input data at 0.05 | one BH family | rotation (each family at 0.05) "
                  "| older test | s/rep |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in results[key]["cells"]:
            folds, seeds = designs[c["design"]]
            n, o, r = c["null"], c["old"], c["rotation"]
            lines.append(f"| {c['setting']} | {c['split']} | {folds} × {seeds} | {c['repetitions']} "
                         f"| {c['accuracy']:.2f} | **{_ci(n['any'])}** | {_rule(n['any_each_alpha'])} "
                         f"| {_rule(n['any_training'])} | {_rule(n['any_input'])} | {_rule(n['any_one_family'])} "
                         f"| {r['any']:.3f} ({r['any_each_alpha']:.3f}) | {_rule(o['any'])} "
                         f"| {c['seconds_per_repetition']:.1f} |")
    for key in (k for k in results if k.startswith("cost")):
        lines += ["", f"`{key}`: {results[key]['machine']}; median [min–max] of {results[key]['repeats']} epochs of "
                  f"{results[key]['steps']} steps", "",
                  "| model | batch | plain ms/step | AutoSpec, P = 0 | AutoSpec, P = 20 |", "|---|---|---|---|---|"]
        for m in results[key]["models"].values():
            v = m["variants"]
            cell = [f"{v[k]['median_ms']:.1f} [{v[k]['min_ms']:.1f}–{v[k]['max_ms']:.1f}]"
                    + ("" if k == "plain" else f" ({v[k]['ratio']:.2f}×)") for k in ("plain", "autospec_P0", "autospec_P20")]
            lines.append(f"| {m['title']} | {m['batch']} | " + " | ".join(cell) + " |")
    return "\n".join(lines)


def _save(path, part, results):
    existing = {}
    if os.path.exists(path):
        with open(path) as f:
            existing = json.load(f)
    existing[part] = results
    with open(path, "w") as f:
        json.dump(existing, f, indent=1, default=float)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["simulated", "geometry", "real", "cost", "tables"])
    parser.add_argument("--json", default=os.path.join(RESULTS, f"calibration_{datetime.date.today()}.json"))
    parser.add_argument("--repetitions", type=int, help="null repetitions (simulated 200, real 20)")
    parser.add_argument("--power-repetitions", type=int, default=100, help="simulated, per planted shift")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS),
                        help="fraction of subjects in the second group")
    parser.add_argument("--designs", nargs="+", help="simulated: seeds folds within; real: seeds folds")
    parser.add_argument("--shifts", type=float, nargs="*", default=[0.2, 0.5], help="simulated planted shifts")
    parser.add_argument("--conflicts", type=float, nargs="*", default=[1 / 6, 2 / 6],
                        help="geometry: planted conflicts, the share of layer1's output columns inverted")
    parser.add_argument("--common", type=float, default=0.5,
                        help="geometry: the gradient direction common to every subject, relative to the noise")
    parser.add_argument("--subjects", type=int, default=40, help="simulated subjects")
    parser.add_argument("--signature", type=float, default=0.5, help="simulated subjects' signature scale")
    parser.add_argument("--runs", type=int, default=5, help="simulated seeds-only design: runs")
    parser.add_argument("--folds", type=int, default=5, help="simulated folds design: folds (one seed each)")
    parser.add_argument("--epochs", type=int, help="simulated runs (3) / simulated fMRI trainings (10)")
    parser.add_argument("--within-epochs", type=int, default=20, help="simulated one-run design")
    parser.add_argument("--batch", type=int, help="simulated subjects per step (16) / real batch size (32)")
    parser.add_argument("--block", type=int, default=5, help="simulated one run: block of the older test")
    parser.add_argument("--partitions", type=int, default=20, help="null partitions")
    parser.add_argument("--settings", nargs="+", default=["digits", "fmri_null", "fmri_default", "fmri_one_edge"])
    parser.add_argument("--digits-n", type=int, default=400)
    parser.add_argument("--digits-classes", type=int, default=4)
    parser.add_argument("--digits-hidden", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--digits-epochs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], help="cost")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128], help="cost")
    parser.add_argument("--steps", type=int, default=10, help="cost: steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=7, help="cost: timed epochs per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="key of the results in the JSON file (default: the part)")
    args = parser.parse_args()
    # The older reference warns at every unequal-size call; the tables show what it gives.
    warnings.filterwarnings("ignore", message="Groups differ in size")
    if args.part == "tables":
        print(tables(args.json))
        return
    simulated_part = args.part in ("simulated", "geometry")
    args.repetitions = args.repetitions or (200 if simulated_part else 20)
    args.epochs = args.epochs or (3 if simulated_part else 10)
    args.batch = args.batch or (16 if simulated_part else 32)
    args.designs = args.designs or (list(DESIGNS) if simulated_part else list(REAL_DESIGNS))
    start = time.perf_counter()
    results = {"simulated": simulated, "geometry": geometry, "real": real, "cost": cost}[args.part](args)
    results["wall_seconds"] = time.perf_counter() - start
    results["cpu_seconds"] = time.process_time()
    results["command"] = " ".join(sys.argv)
    _save(args.json, args.name or args.part, results)
    print(f"{args.part}: {results['wall_seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s CPU -> {args.json}")


if __name__ == "__main__":
    main()
