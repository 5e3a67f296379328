"""Statistics between groups: within one run, and across runs (seeds, CV folds).

Every test compares one summary (see `tf_autospec.summaries`) of two groups' spectra and
returns a tidy table: a list of dicts, one row per test, that `write_csv` saves.

* `within_run`: the steps of one run are repeated measures, correlated in time. The
  per-step difference ``d_t = s_a(t) − s_b(t)`` is tested with a block sign-flip
  permutation test: under the null hypothesis that the two groups are exchangeable,
  each block of ``block`` consecutive differences is as likely to change sign, and
  flipping whole blocks keeps the dependence within them.
* `across_runs`: per layer × kind × summary × epoch, each run contributes one value per
  group (the epoch's mean over its recorded steps). Welch's t test (the primary test:
  ``significant`` is its BH q-value ≤ alpha; with the positive correlation of the two
  values of one run it is conservative), a paired sign-flip permutation test of the
  per-run differences (exact when ``2**runs`` is small), Hedges' g with a 95 %
  confidence interval (normal approximation, se² = (n_a + n_b)/(n_a n_b) + g²/(2(n_a +
  n_b)), which under-covers for very few runs), and Benjamini–Hochberg FDR over the
  whole table.

By default spectra are made per sample before summarizing (``normalize=True``): ``grad``
divided by the group's sample count and ``act``/``delta`` by its square root. This does
not make groups of different sizes comparable in every summary (the rank of a group's
matrices grows with its rows, and a norm of a sum of noisy terms does not scale exactly
with their number): every row reports the mean sample counts, and a warning is raised
when they differ by more than 20 %. Compare groups of similar size, or subsample.
"""

import csv
import itertools
import math
import warnings

import numpy as np
from scipy import stats as scipy_stats

from tf_autospec import summaries as summaries_module


def benjamini_hochberg(p_values):
    """BH-adjusted q-values (NaN p-values stay NaN and do not count in the family)."""
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    if valid.size:
        order = valid[np.argsort(p[valid])]
        ranked = p[order] * valid.size / np.arange(1, valid.size + 1)
        q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return q


def hedges_g(a, b):
    """Hedges' g of ``a`` minus ``b`` with its 95 % confidence interval."""
    n_a, n_b = len(a), len(b)
    if n_a < 2 or n_b < 2:
        return np.nan, np.nan, np.nan
    pooled = math.sqrt(((n_a - 1) * np.var(a, ddof=1) + (n_b - 1) * np.var(b, ddof=1)) / (n_a + n_b - 2))
    if pooled == 0:
        return np.nan, np.nan, np.nan
    g = (1 - 3 / (4 * (n_a + n_b) - 9)) * (np.mean(a) - np.mean(b)) / pooled
    se = math.sqrt((n_a + n_b) / (n_a * n_b) + g**2 / (2 * (n_a + n_b)))
    return g, g - 1.959964 * se, g + 1.959964 * se


def sign_flip_p(values, permutations, rng):
    """Two-sided sign-flip permutation p-value of ``sum(values)`` (exact when small).

    Valid when, under the null hypothesis, each value is as likely to change sign (paired
    differences, or blocks of them). With ``n`` values it cannot go below ``2 / 2**n``.
    NaN (no test, left out of the FDR family) without values or when all are exactly zero:
    every sign flip then gives the same statistic. Two groups with identical values (such
    as the exact zeros past a matrix's numerical rank) have nothing to compare, and a p of
    1 would still count in the family.
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.any(values):
        return np.nan
    if 2 ** len(values) <= permutations:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(values))))
    else:
        signs = np.concatenate([np.ones((1, len(values))), rng.choice((1.0, -1.0), size=(permutations, len(values)))])
    statistics = np.abs(signs @ values)
    observed = statistics[0]  # the all-plus row: computed like the others
    tolerance = 1e-9 * max(observed, np.abs(values).sum(), 1e-300)
    return float(np.mean(statistics >= observed - tolerance))


def normalized_spectrum(run, layer, kind, group, normalize=True):
    """A run's spectrum, per sample when ``normalize`` (see the module docstring)."""
    values = run.spectrum(layer, kind, group).astype(np.float64)
    if normalize:
        counts = run.counts(group).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = counts if kind == "grad" else np.sqrt(counts)
            values = values / np.where(scale > 0, scale, np.nan)[:, None]
    return values


FULL_SPECTRUM_SUMMARIES = ("nuclear_norm", "frobenius_norm", "effective_rank", "stable_rank", "top_energy")


class _Series:
    """Summaries of normalized spectra, reading each spectrum from its file once.

    The tests run summary after summary on the same layer and kind; only that layer and
    kind's spectra are kept.
    """

    def __init__(self, normalize):
        self.normalize = normalize
        self.layer_kind = None
        self.spectra = {}

    def __call__(self, run, layer, kind, group, summary):
        top_k = (run.attributes.get("options") or {}).get("top_k")
        if top_k is not None and summary.startswith(FULL_SPECTRUM_SUMMARIES):
            raise ValueError(
                f"{run.path} kept only the top {top_k} singular values, so '{summary}' would be "
                "computed from a truncated spectrum. Use spectral_norm or sigma_<i>, or record "
                "without top_k."
            )
        if self.layer_kind != (layer, kind):
            self.layer_kind, self.spectra = (layer, kind), {}
        key = (id(run), group)
        if key not in self.spectra:
            self.spectra[key] = normalized_spectrum(run, layer, kind, group, self.normalize)
        return summaries_module.summarize(self.spectra[key], summary)


def _check_groups(run, group_a, group_b):
    for group in (group_a, group_b):
        if group not in run.groups:
            raise ValueError(f"Group {group!r} is not in {run.path} (groups {list(run.groups)}).")
    if group_a == group_b:
        raise ValueError("Compare two different groups.")


def _selection(run, layers, kinds):
    layers = list(run.layers if layers is None else layers)
    kinds = list(run.kinds if kinds is None else kinds)
    for layer in layers:
        if layer not in run.layers:
            raise ValueError(f"Layer {layer!r} is not in {run.path} (layers {run.layers}).")
    for kind in kinds:
        if kind not in run.kinds:
            raise ValueError(f"Kind {kind!r} was not recorded in {run.path} (kinds {list(run.kinds)}).")
    return layers, kinds


def _check_not_empty(run):
    if len(run) == 0:
        raise ValueError(f"{run.path} holds no recorded step; train with AutoSpecCallback first.")


def within_run(run, group_a, group_b, layers=None, kinds=None, summaries=("spectral_norm",),
               steps=None, block=10, permutations=2000, normalize=True, alpha=0.05, seed=0):
    """Groups compared over a window of steps of one run (block sign-flip permutation test).

    Args:
        run: a `tf_autospec.Run`.
        group_a, group_b: the two group names.
        layers, kinds: subsets to test (default: all in the run).
        summaries: summary names (`tf_autospec.summaries.summarize`).
        steps: ``(first, last)`` step window, inclusive; default all steps.
        block: consecutive steps per sign-flip block (set it above the autocorrelation length).
        permutations: random sign-flips (exact enumeration when ``2**blocks`` is smaller).
        normalize: per-sample spectra (see the module docstring).
        alpha: FDR level for the ``significant`` column.
        seed: random seed.

    Returns:
        A list of row dicts, with BH q-values over the returned family and
        ``smallest_p``, the smallest p-value the number of blocks allows (2 / 2**blocks):
        a warning says when it is above ``alpha``, i.e. when nothing can be significant.
    """
    _check_not_empty(run)
    _check_groups(run, group_a, group_b)
    layers, kinds = _selection(run, layers, kinds)
    step_numbers = run.records["step"]
    window = np.ones(len(run), bool)
    if steps is not None:
        window = (step_numbers >= steps[0]) & (step_numbers <= steps[1])
    _warn_if_unbalanced([run], group_a, group_b)
    rng = np.random.default_rng(seed)
    series = _Series(normalize)
    rows = []
    for layer, kind, summary in itertools.product(layers, kinds, summaries):
        a = series(run, layer, kind, group_a, summary)[window]
        b = series(run, layer, kind, group_b, summary)[window]
        both = np.isfinite(a) & np.isfinite(b)
        difference = (a - b)[both]
        row = {
            "test": "within_run_block_sign_flip", "run": run.path, "layer": layer, "kind": kind,
            "summary": summary, "group_a": group_a, "group_b": group_b,
            "first_step": int(step_numbers[window][both][0]) if both.any() else None,
            "last_step": int(step_numbers[window][both][-1]) if both.any() else None,
            "n_steps": int(both.sum()), "block": block,
            "mean_a": float(np.mean(a[both])) if both.any() else np.nan,
            "mean_b": float(np.mean(b[both])) if both.any() else np.nan,
            "difference": float(np.mean(difference)) if both.any() else np.nan,
        }
        blocks = [difference[i : i + block].sum() for i in range(0, len(difference), block)]
        row["n_blocks"] = len(blocks)
        row["smallest_p"] = 2.0 / 2 ** len(blocks) if blocks else np.nan
        row["p_value"] = sign_flip_p(blocks, permutations, rng) if len(blocks) >= 2 else np.nan
        rows.append(row)
    if rows and min(r["smallest_p"] for r in rows) > alpha:
        warnings.warn(
            f"Only {max(r['n_blocks'] for r in rows)} blocks of {block} steps: no p-value can go below "
            f"{min(r['smallest_p'] for r in rows):.3g} > alpha={alpha}. Use a smaller block or more steps."
        )
    _add_fdr(rows, "p_value", ["p_value"], alpha)
    return rows


def _check_comparable(runs):
    if len(runs) < 2:
        raise ValueError(
            f"Tests across runs need at least 2 runs (seeds or CV folds); got {len(runs)}. "
            "For one run, use tf_autospec.stats.within_run (CLI: autospec compare --within)."
        )
    first = runs[0]
    for run in runs:
        _check_not_empty(run)
        for attribute in ("groups", "layers", "kinds"):
            if list(getattr(run, attribute)) != list(getattr(first, attribute)):
                raise ValueError(
                    f"{run.path} has {attribute} {list(getattr(run, attribute))} but {first.path} has "
                    f"{list(getattr(first, attribute))}; compare runs of the same model and groups."
                )


def _warn_if_unbalanced(runs, group_a, group_b):
    mean_a = np.mean([np.mean(run.counts(group_a)) for run in runs])
    mean_b = np.mean([np.mean(run.counts(group_b)) for run in runs])
    if max(mean_a, mean_b) > 1.2 * min(mean_a, mean_b):
        warnings.warn(
            f"Groups differ in size ({group_a}: {mean_a:.1f}, {group_b}: {mean_b:.1f} samples per step on "
            "average); rank-based summaries and norms depend on group size even per sample. Compare "
            "groups of similar size, or subsample."
        )
    return mean_a, mean_b


def _epoch_means(values, run):
    epochs = run.records["epoch"]
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an epoch without the group: NaN
        for epoch in np.unique(epochs):
            out[int(epoch)] = float(np.nanmean(values[epochs == epoch]))
    return out


def across_runs(runs, group_a, group_b, layers=None, kinds=None, summaries=("spectral_norm",),
                epochs=None, permutations=2000, normalize=True, alpha=0.05, seed=0, progress=None):
    """Groups compared across runs, per layer × kind × summary × epoch.

    Args:
        runs: `tf_autospec.Run`s of the same model and groups (seeds, folds).
        group_a, group_b: the two group names.
        layers, kinds: subsets to test (default: all).
        summaries: summary names, e.g. ``"spectral_norm"`` or ``"sigma_3"`` for a
            singular-value index.
        epochs: epochs to test (default: every epoch present in all runs).
        permutations: random permutations (exact enumeration when fewer splits exist).
        normalize: per-sample spectra (see the module docstring).
        alpha: FDR level for the ``significant`` column.
        seed: random seed.
        progress: optional callable ``progress(done, total)``.

    Returns:
        A list of row dicts with Welch's t, the paired permutation p, Hedges' g and its
        95 % CI, the mean sample counts of the groups, and BH q-values over the whole
        table (``q_welch``, ``q_permutation``); ``significant`` when ``q_welch`` ≤
        ``alpha``. The exact paired permutation p cannot go below ``2 / 2**runs``.
    """
    runs = list(runs)
    _check_comparable(runs)
    _check_groups(runs[0], group_a, group_b)
    layers, kinds = _selection(runs[0], layers, kinds)
    count_a, count_b = _warn_if_unbalanced(runs, group_a, group_b)
    rng = np.random.default_rng(seed)
    # Singular-value indices past a spectrum's width do not exist for that layer and kind.
    combinations = [
        (layer, kind, summary)
        for layer, kind, summary in itertools.product(layers, kinds, summaries)
        if summaries_module.index(summary) is None or summaries_module.index(summary) < runs[0].widths[layer][kind]
    ]
    series = _Series(normalize)
    rows = []
    for done, (layer, kind, summary) in enumerate(combinations):
        per_run = [
            tuple(_epoch_means(series(run, layer, kind, group, summary), run) for group in (group_a, group_b))
            for run in runs
        ]
        common = set.intersection(*[set(a) & set(b) for a, b in per_run])
        if epochs is not None and set(epochs) - common:
            raise ValueError(
                f"Epochs {sorted(set(epochs) - common)} are not recorded for both groups in every run "
                f"(common epochs: {sorted(common)})."
            )
        for epoch in sorted(common if epochs is None else epochs):
            paired_a = np.array([values[0][epoch] for values in per_run])
            paired_b = np.array([values[1][epoch] for values in per_run])
            both = np.isfinite(paired_a) & np.isfinite(paired_b)
            a, b = paired_a[np.isfinite(paired_a)], paired_b[np.isfinite(paired_b)]
            row = {
                "test": "across_runs", "layer": layer, "kind": kind, "summary": summary,
                "epoch": epoch, "group_a": group_a, "group_b": group_b,
                "n_a": len(a), "n_b": len(b), "n_pairs": int(both.sum()),
                "count_a": count_a, "count_b": count_b,
                "mean_a": float(np.mean(a)) if len(a) else np.nan,
                "mean_b": float(np.mean(b)) if len(b) else np.nan,
            }
            if len(a) >= 2 and len(b) >= 2 and np.ptp(np.concatenate([a, b])) > 0:
                welch = scipy_stats.ttest_ind(a, b, equal_var=False)
                row.update(t=float(welch.statistic), df=float(welch.df), p_welch=float(welch.pvalue))
            else:
                row.update(t=np.nan, df=np.nan, p_welch=np.nan)
            differences = (paired_a - paired_b)[both]
            row["p_permutation"] = sign_flip_p(differences, permutations, rng) if both.sum() >= 2 else np.nan
            g, low, high = hedges_g(a, b)
            row.update(hedges_g=g, g_ci_low=low, g_ci_high=high)
            rows.append(row)
        if progress is not None:
            progress(done + 1, len(combinations))
    _add_fdr(rows, "p_welch", ["p_welch", "p_permutation"], alpha)
    return rows


def _q_name(column):
    return "q_value" if column == "p_value" else "q_" + column.removeprefix("p_")


def _add_fdr(rows, primary, columns, alpha):
    """BH q-values for each p column; ``significant`` from the primary column's."""
    for column in columns:
        for row, value in zip(rows, benjamini_hochberg([row[column] for row in rows])):
            row[_q_name(column)] = float(value)
    for row in rows:
        q = row[_q_name(primary)]
        row["significant"] = bool(np.isfinite(q) and q <= alpha)


def write_csv(rows, path):
    """Writes a table of rows (dicts with the same keys) as CSV."""
    if not rows:
        raise ValueError("No test to write: the selection produced an empty table.")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
