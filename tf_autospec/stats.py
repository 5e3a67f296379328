"""Statistics between groups: within one run, and across runs (seeds, CV folds).

Every test compares one summary (see `tf_autospec.summaries`) of two groups' spectra, or
one measure of their gradient geometry, and returns a tidy table: a list of dicts, one
row per test, that `write_csv` saves.

**The reference: random groups of the same sizes drawn from the same subjects**
(``reference="null"``, the default). A run recorded with
``AutoSpecModel(null_partitions=P)`` holds, beside the real groups, the spectra of P null
partitions: random relabelings of the subjects that keep every group's size, fixed for
the whole run (and, drawn once per dataset, for every run of an experiment), computed at
every recorded step from the same rows (`tf_autospec.null_partitions`). A test statistic
``T`` (the mean over runs of the per-run difference ``a − b`` of a summary, per epoch for
`across_runs`, over a window of steps for `within_run`) is computed in the same way for
the real groups (``T_0``) and for every null partition (``T_1 … T_P``). Under the null
hypothesis that the group labels are exchangeable between subjects (no group effect;
the groups are not the prediction target), ``T_0`` is one more draw from the
distribution of ``T_1 … T_P``, whatever the dependence between steps, epochs, seeds and
folds, and whatever the groups' sizes do to the spectra: the null partitions have the
same sizes, the same rows, the same weights. So

    z = (T_0 − mean(T_p)) / sd(T_p),   p = 2 · t_{P−1}.sf(|z| / √(1 + 1/P))

(the prediction interval of a new draw from a normal distribution whose mean and SD are
estimated from P draws; exact when the ``T`` are normal, as means over many steps and runs
nearly are). ``z`` is also the effect size: the groups' difference beyond what groups of
their sizes show by chance, in units of its chance variation. Subjects are the
replicates: seeds re-train on the same subjects and only make each ``T`` less noisy.

The older references, valid only for groups of equal size with runs on independent
subjects, stay available by name and say so in their rows (``inference``):
``reference="runs"`` in `across_runs` (Welch's t test between the runs' values, a paired
sign-flip permutation test, Hedges' g) and ``reference="steps"`` in `within_run` (a block
sign-flip permutation test of the per-step differences).

**Families.** The first layer's ``act`` spectrum (of every kernel that reads the model's
input) is the data itself, not how the model trains: those tests form their own
Benjamini–Hochberg family (``family = "input data"``), apart from the others
(``"training"``); the gradient geometry's tests form a third (``"geometry"``). Each
family is held at ``alpha`` divided by the number of families in the table, so that the
whole table keeps ``alpha``; `combine` joins the tables of several tests (the spectra's
and the geometry's) into one that does. A comparison of values that are all equal (such
as the exact zeros past a matrix's numerical rank) is no test: NaN p, outside the family.

**More than two groups**: every pair is compared (``group_a``, ``group_b`` left ``None``),
all pairs in one FDR family per family.

**Gradient geometry** (`across_runs_geometry`, `within_run_geometry`; a run recorded with
``AutoSpecModel(geometry=True, null_partitions=P)``): whether two groups' gradients move a
layer more or less alike than random groups of the same sizes do. Per pair of groups and
layer, the measures of `tf_autospec.geometry`: the ``cosine`` between the groups'
gradients, the ``overlap`` of their top singular subspaces, and ``batch_cosine``, group
``a``'s cosine with the whole batch's gradient minus ``b``'s (which group the step
follows more). The statistic is the measure itself, with the same reference: ``T`` (the
mean over runs of an epoch's mean, ``"level"``, or of the change from the first tested
epoch to the last, ``"change"``; over a window of steps within one run) for the real
groups and for every null partition, ``T_0`` against ``T_1 … T_P`` as above. Chance is
not a fixed number: two random groups' gradients share what the loss asks of every
sample, so their cosine is positive and grows with their sizes, and a larger group's
gradient is closer to the batch's; the null partitions have the same sizes, rows and
weights. A cosine ``"lower than chance"`` means that the groups pull the layer in more
different (at worst opposite) directions than random groups: a conflict between them.

By default spectra are made per sample before summarizing (``normalize=True``): ``grad``
divided by the group's sample count and ``act``/``delta`` by its square root (the null
partitions' by theirs). This makes the plots comparable; the tests do not rely on it.
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


def _per_sample(values, counts, kind, normalize):
    if not normalize:
        return values
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = counts if kind == "grad" else np.sqrt(counts)
        return values / np.where(scale > 0, scale, np.nan)[..., None]


def normalized_spectrum(run, layer, kind, group, normalize=True):
    """A run's spectrum ``[n, k]``, per sample when ``normalize`` (see the module docstring)."""
    values = run.spectrum(layer, kind, group).astype(np.float64)
    return _per_sample(values, run.counts(group).astype(np.float64), kind, normalize)


def normalized_null_spectrum(run, layer, kind, group, normalize=True):
    """``group``'s counterparts in the run's null partitions, ``[n, P, k]``, per sample
    when ``normalize``."""
    values = run.null_spectrum(layer, kind, group).astype(np.float64)
    return _per_sample(values, run.null_counts(group).astype(np.float64), kind, normalize)


FULL_SPECTRUM_SUMMARIES = ("nuclear_norm", "frobenius_norm", "effective_rank", "stable_rank", "top_energy")
REFERENCES = ("null", "runs", "steps")
FAMILIES = ("training", "input data", "geometry")
MINIMUM_NULL_PARTITIONS = 5


class _Series:
    """Summaries of normalized spectra (and of their null partitions'), reading each
    spectrum from its file once.

    The tests run summary after summary on the same layer and kind; only that layer and
    kind's spectra are kept.
    """

    def __init__(self, normalize):
        self.normalize = normalize
        self.layer_kind = None
        self.spectra = {}

    def __call__(self, run, layer, kind, group, summary, null=False):
        """``[n]`` summaries of the group's spectra, or ``[n, P]`` of its null counterparts."""
        top_k = (run.attributes.get("options") or {}).get("top_k")
        if top_k is not None and summary.startswith(FULL_SPECTRUM_SUMMARIES):
            raise ValueError(
                f"{run.path} kept only the top {top_k} singular values, so '{summary}' would be "
                "computed from a truncated spectrum. Use spectral_norm or sigma_<i>, or record "
                "without top_k."
            )
        if self.layer_kind != (layer, kind):
            self.layer_kind, self.spectra = (layer, kind), {}
        key = (id(run), group, null)
        if key not in self.spectra:
            read = normalized_null_spectrum if null else normalized_spectrum
            self.spectra[key] = read(run, layer, kind, group, self.normalize)
        return summaries_module.summarize(self.spectra[key], summary)


def null_test(observed, null):
    """``observed`` against the same statistic of the null partitions.

    Args:
        observed: ``T_0``, the real groups' statistic.
        null: ``[P]`` the null partitions' statistics (NaN entries are left out).

    Returns:
        dict with ``null_mean`` (what groups of these sizes show by chance), ``excess``
        (``T_0 − null_mean``), ``effect`` (``z``: the excess in SDs of the null), and
        ``p_value`` (two-sided, ``t`` with P − 1 degrees of freedom on ``z / √(1 + 1/P)``);
        NaN when there is nothing to test (all values equal, fewer than 3 null values).
    """
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    out = {"null_mean": np.nan, "excess": np.nan, "effect": np.nan, "p_value": np.nan}
    if not np.isfinite(observed) or len(null) < 3:
        return out
    mean, sd = float(np.mean(null)), float(np.std(null, ddof=1))
    out.update(null_mean=mean, excess=float(observed - mean))
    if sd == 0:
        return out  # every partition gives the same value: nothing varies, nothing to test
    z = (observed - mean) / sd
    statistic = abs(z) / math.sqrt(1 + 1 / len(null))
    out.update(effect=float(z), p_value=float(2 * scipy_stats.t.sf(statistic, df=len(null) - 1)))
    return out


def _check_groups(run, group_a, group_b):
    for group in (group_a, group_b):
        if group not in run.groups:
            raise ValueError(f"Group {group!r} is not in {run.path} (groups {list(run.groups)}).")
    if group_a == group_b:
        raise ValueError("Compare two different groups.")


def group_pairs(run, group_a=None, group_b=None):
    """The pairs of groups to compare: the one given, or every pair of the run's groups."""
    if (group_a is None) != (group_b is None):
        raise ValueError("Give both group_a and group_b, or neither (every pair is compared).")
    if group_a is not None:
        _check_groups(run, group_a, group_b)
        return [(group_a, group_b)]
    if len(run.groups) < 2:
        raise ValueError(f"{run.path} has one group ({run.groups[0]}); nothing to compare.")
    return list(itertools.combinations(run.groups, 2))


def family(run, layer, kind):
    """``"input data"`` for the ``act`` spectrum of a kernel that reads the model's input
    (the data itself), ``"training"`` otherwise."""
    reads_input = run.kernel_info[layer].get("reads_model_input", False)
    return FAMILIES[1] if kind == "act" and reads_input else FAMILIES[0]


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


def _check_reference(runs, reference, allowed):
    if reference not in allowed:
        raise ValueError(f"reference must be one of {allowed}; received {reference!r}.")
    if reference != "null":
        return
    counts = {run.path: run.null_partitions for run in runs}
    if len(set(counts.values())) > 1:
        raise ValueError(
            f"The runs hold different numbers of null partitions ({counts}); compare runs recorded "
            "with the same null partitions (drawn once for the whole dataset)."
        )
    _check_same_partitions(runs)
    partitions = min(counts.values())
    if partitions < MINIMUM_NULL_PARTITIONS:
        other = [r for r in allowed if r != "null"][0]
        raise ValueError(
            f"{runs[0].path if partitions == runs[0].null_partitions else 'A run'} holds {partitions} null "
            f"partitions; the test against random groups of the same sizes needs at least "
            f"{MINIMUM_NULL_PARTITIONS} (20 recommended): record with AutoSpecModel(..., null_partitions=20) "
            f"(autospec run --null-partitions 20). Without them, groups of different sizes differ in "
            f"their spectra by size alone, and runs that re-train on the same subjects are not "
            f"independent: reference={other!r} (autospec compare --reference {other}) tests these runs "
            f"as they are and is valid only for groups of equal size on independent subjects."
        )


def _warn_if_unbalanced(runs, pairs, reference):
    """The older references assume groups of equal size: say so when they are not."""
    if reference == "null":
        return
    for a, b in pairs:
        mean_a = np.mean([np.mean(run.counts(a)) for run in runs])
        mean_b = np.mean([np.mean(run.counts(b)) for run in runs])
        if max(mean_a, mean_b) > 1.2 * min(mean_a, mean_b):
            warnings.warn(
                f"Groups differ in size ({a}: {mean_a:.1f}, {b}: {mean_b:.1f} samples per step on average), "
                f"and reference={reference!r} assumes equal sizes: size alone changes spectra, even per sample. "
                "Record null partitions and use the default reference."
            )


def _check_same_partitions(runs):
    """Refuses runs whose null partitions cannot be the same random groups: drawn by
    ``fit`` from different samples (folds made by hand, other data), or drawn in some runs
    and given in others. Partitions given with the labels cannot be checked here."""
    origins = {run.path: run.attributes.get("null_partitions_origin") for run in runs}
    known = {path: origin for path, origin in origins.items() if origin}
    drawn = {path: origin["fingerprint"] for path, origin in known.items() if not origin.get("given")}
    if drawn and (len(set(drawn.values())) > 1 or len(drawn) < len(known)):
        raise ValueError(
            f"The runs' null partitions are not the same random groups: {sorted(drawn)} drew theirs in fit "
            f"from {'different samples' if len(set(drawn.values())) > 1 else 'their own labels'}"
            f"{'' if len(drawn) == len(known) else ', the others were given them'}. Comparing them would "
            "compare different random groups. Draw them once for the whole dataset, "
            "partitions = tf_autospec.null_partitions(labels, P, subjects=ids), and give each run (fold) its "
            "rows: fit(x[train], y[train], groups=partitions[train])."
        )


def target_follows_groups(runs):
    """Whether any run says that its groups follow the prediction target (``fit`` and
    `autospec run` record it)."""
    return any(run.metadata.get("target_is_group") or run.attributes.get("target_is_group") for run in runs)


def _inference(reference):
    return {
        "null": "subjects: random groups of the same sizes from the same subjects",
        "runs": "these runs: equal group sizes and independent subjects assumed",
        "steps": "these steps of this run: equal group sizes assumed",
    }[reference]


def _window_mean(values, window):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a group absent from every step: NaN
        return np.nanmean(values[window], axis=0)


def within_run(run, group_a=None, group_b=None, layers=None, kinds=None, summaries=("spectral_norm",),
               steps=None, reference="null", block=10, permutations=2000, normalize=True, alpha=0.05, seed=0):
    """Groups compared over a window of steps of one run.

    Args:
        run: a `tf_autospec.Run`.
        group_a, group_b: the two group names; ``None`` compares every pair.
        layers, kinds: subsets to test (default: all in the run).
        summaries: summary names (`tf_autospec.summaries.summarize`).
        steps: ``(first, last)`` step window, inclusive; default all steps.
        reference: ``"null"`` (default): the run's null partitions (see the module
            docstring); ``"steps"``: a block sign-flip permutation test of the per-step
            differences, valid only for groups of equal size.
        block: with ``reference="steps"``, consecutive steps per sign-flip block.
        permutations: with ``reference="steps"``, random sign-flips.
        normalize: per-sample spectra (see the module docstring).
        alpha: FDR level for the ``significant`` column.
        seed: random seed.

    Returns:
        A list of row dicts, with BH q-values per family (``family``).
    """
    _check_not_empty(run)
    pairs = group_pairs(run, group_a, group_b)
    _check_reference([run], reference, ("null", "steps"))
    _warn_if_unbalanced([run], pairs, reference)
    layers, kinds = _selection(run, layers, kinds)
    step_numbers = run.records["step"]
    window = _step_window(run, steps)
    rng = np.random.default_rng(seed)
    series = _Series(normalize)
    rows = []
    for layer, kind, summary in itertools.product(layers, kinds, summaries):
        for a_name, b_name in pairs:
            a = series(run, layer, kind, a_name, summary)[window]
            b = series(run, layer, kind, b_name, summary)[window]
            both = np.isfinite(a) & np.isfinite(b)
            difference = (a - b)[both]
            row = {
                "test": f"within_run_{reference}", "inference": _inference(reference), "run": run.path,
                "family": family(run, layer, kind), "layer": layer, "kind": kind, "summary": summary,
                "group_a": a_name, "group_b": b_name,
                "first_step": int(step_numbers[window][both][0]) if both.any() else None,
                "last_step": int(step_numbers[window][both][-1]) if both.any() else None,
                "n_steps": int(both.sum()),
                "count_a": float(np.mean(run.counts(a_name)[window])),
                "count_b": float(np.mean(run.counts(b_name)[window])),
                "mean_a": float(np.mean(a[both])) if both.any() else np.nan,
                "mean_b": float(np.mean(b[both])) if both.any() else np.nan,
                "difference": float(np.mean(difference)) if both.any() else np.nan,
            }
            if reference == "null":
                null_a = series(run, layer, kind, a_name, summary, null=True)[window]
                null_b = series(run, layer, kind, b_name, summary, null=True)[window]
                row.update(null_test(row["difference"], _window_mean(null_a - null_b, np.ones(len(null_a), bool))))
            else:
                blocks = [difference[i : i + block].sum() for i in range(0, len(difference), block)]
                spread = np.std(difference, ddof=1) if len(difference) > 1 else 0.0
                row.update(effect=float(np.mean(difference) / spread) if spread > 0 else np.nan, block=block, n_blocks=len(blocks), smallest_p=2.0 / 2 ** len(blocks) if blocks else np.nan,
                           p_value=sign_flip_p(blocks, permutations, rng) if len(blocks) >= 2 else np.nan)
            rows.append(row)
    if reference == "steps" and rows and min(r["smallest_p"] for r in rows) > alpha:
        warnings.warn(
            f"Only {max(r['n_blocks'] for r in rows)} blocks of {block} steps: no p-value can go below "
            f"{min(r['smallest_p'] for r in rows):.3g} > alpha={alpha}. Use a smaller block or more steps."
        )
    _add_fdr(rows, "p_value", ["p_value"], alpha)
    _withhold_when_target(rows, [run])
    return rows


WITHHELD = "none: the groups are the prediction target (differences by construction)"


def _withhold_when_target(rows, runs):
    """No finding is claimed when the groups are the prediction target (metadata
    ``target_is_group``, which `autospec run` writes): the loss pulls each class towards
    its own label, so the groups' gradients differ by construction, and random groups,
    which mix the classes, are no reference for that."""
    if target_follows_groups(runs):
        for row in rows:
            row["inference"] = WITHHELD
            row["significant"] = False


def _check_comparable(runs, one_run="tf_autospec.stats.within_run (CLI: autospec compare --within)"):
    if len(runs) < 2:
        raise ValueError(
            f"Tests across runs need at least 2 runs (seeds or CV folds); got {len(runs)}. "
            f"For one run, use {one_run}."
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


def _epoch_means(values, run):
    """``{epoch: mean over the epoch's steps}`` of per-step ``values`` ``[n, ...]``."""
    epochs = run.records["epoch"]
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an epoch without the group: NaN
        for epoch in np.unique(epochs):
            out[int(epoch)] = np.nanmean(values[epochs == epoch], axis=0)
    return out


def across_runs(runs, group_a=None, group_b=None, layers=None, kinds=None, summaries=("spectral_norm",),
                epochs=None, reference="null", permutations=2000, normalize=True, alpha=0.05, seed=0,
                progress=None):
    """Groups compared across runs, per layer × kind × summary × epoch (and pair of groups).

    Args:
        runs: `tf_autospec.Run`s of the same model and groups (seeds, folds).
        group_a, group_b: the two group names; ``None`` compares every pair.
        layers, kinds: subsets to test (default: all).
        summaries: summary names, e.g. ``"spectral_norm"`` or ``"sigma_3"`` for a
            singular-value index.
        epochs: epochs to test (default: every epoch present in all runs).
        reference: ``"null"`` (default): the runs' null partitions (see the module
            docstring); ``"runs"``: Welch's t test between the runs' values with a paired
            permutation test and Hedges' g, valid only for groups of equal size on
            independent subjects.
        permutations: with ``reference="runs"``, random permutations.
        normalize: per-sample spectra (see the module docstring).
        alpha: FDR level for the ``significant`` column.
        seed: random seed.
        progress: optional callable ``progress(done, total)``.

    Returns:
        A list of row dicts: the groups' mean values and sample counts, the difference
        ``T_0``, and with the null reference ``null_mean``, ``excess``, ``effect`` (z) and
        ``p_value``; BH q-values per family (``q_value``), ``significant`` when ``q_value``
        ≤ ``alpha``.
    """
    runs = list(runs)
    _check_comparable(runs)
    pairs = group_pairs(runs[0], group_a, group_b)
    _check_reference(runs, reference, ("null", "runs"))
    _warn_if_unbalanced(runs, pairs, reference)
    layers, kinds = _selection(runs[0], layers, kinds)
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
        for a_name, b_name in pairs:
            rows += _epoch_rows(runs, series, layer, kind, summary, a_name, b_name, epochs, reference,
                                permutations, rng)
        if progress is not None:
            progress(done + 1, len(combinations))
    _add_fdr(rows, "p_value", ["p_value"] if reference == "null" else ["p_value", "p_permutation"], alpha)
    _withhold_when_target(rows, runs)
    return rows


def _epoch_rows(runs, series, layer, kind, summary, a_name, b_name, epochs, reference, permutations, rng):
    """The rows of one layer, kind, summary and pair of groups, one per epoch."""
    per_run = [
        tuple(_epoch_means(series(run, layer, kind, group, summary), run) for group in (a_name, b_name))
        for run in runs
    ]
    common = set.intersection(*[set(a) & set(b) for a, b in per_run])
    if epochs is not None and set(epochs) - common:
        raise ValueError(
            f"Epochs {sorted(set(epochs) - common)} are not recorded for both groups in every run "
            f"(common epochs: {sorted(common)})."
        )
    if reference == "null":
        null_per_run = [
            _epoch_means(series(run, layer, kind, a_name, summary, null=True)
                         - series(run, layer, kind, b_name, summary, null=True), run)
            for run in runs
        ]
    counts = {g: float(np.mean([np.mean(run.counts(g)) for run in runs])) for g in (a_name, b_name)}
    rows = []
    for epoch in sorted(common if epochs is None else epochs):
        paired_a = np.array([values[0][epoch] for values in per_run])
        paired_b = np.array([values[1][epoch] for values in per_run])
        both = np.isfinite(paired_a) & np.isfinite(paired_b)
        a, b = paired_a[np.isfinite(paired_a)], paired_b[np.isfinite(paired_b)]
        row = {
            "test": f"across_runs_{reference}", "inference": _inference(reference),
            "family": family(runs[0], layer, kind), "layer": layer, "kind": kind, "summary": summary,
            "epoch": epoch, "group_a": a_name, "group_b": b_name, "n_runs": int(both.sum()),
            "count_a": counts[a_name], "count_b": counts[b_name],
            "mean_a": float(np.mean(a)) if len(a) else np.nan,
            "mean_b": float(np.mean(b)) if len(b) else np.nan,
            "difference": float(np.mean((paired_a - paired_b)[both])) if both.any() else np.nan,
        }
        if reference == "null":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a partition absent in an epoch
                null = np.nanmean(np.stack([values[epoch] for values in null_per_run]), axis=0)
            row.update(null_test(row["difference"], null))
        else:
            row.update(_runs_test(paired_a, paired_b, permutations, rng))
        rows.append(row)
    return rows


def _runs_test(paired_a, paired_b, permutations, rng):
    """Welch's t test between the runs' values, the paired sign-flip permutation test of
    their differences, and Hedges' g (``reference="runs"``)."""
    both = np.isfinite(paired_a) & np.isfinite(paired_b)
    a, b = paired_a[np.isfinite(paired_a)], paired_b[np.isfinite(paired_b)]
    out = {}
    if len(a) >= 2 and len(b) >= 2 and np.ptp(np.concatenate([a, b])) > 0:
        welch = scipy_stats.ttest_ind(a, b, equal_var=False)
        out.update(t=float(welch.statistic), df=float(welch.df), p_value=float(welch.pvalue))
    else:
        out.update(t=np.nan, df=np.nan, p_value=np.nan)
    differences = (paired_a - paired_b)[both]
    out["p_permutation"] = sign_flip_p(differences, permutations, rng) if both.sum() >= 2 else np.nan
    g, low, high = hedges_g(a, b)
    out.update(effect=g, g_ci_low=low, g_ci_high=high)
    return out


GEOMETRY_MEASURES = ("cosine", "overlap", "batch_cosine")
GEOMETRY_STATISTICS = ("level", "change")


def geometry_values(run, layer, measure, group_a, group_b, null=False):
    """A pair of groups' per-step values of one gradient geometry measure.

    Args:
        run: a `tf_autospec.Run` recorded with ``geometry``.
        layer: a kernel path.
        measure: ``"cosine"`` or ``"overlap"`` (the pair's, `Run.cosine`, `Run.overlap`),
            or ``"batch_cosine"``: ``group_a``'s cosine with the whole batch's gradient
            minus ``group_b``'s, which of the two the step follows more.
        group_a, group_b: two group names.
        null: the null partitions' counterparts instead.

    Returns:
        float64 ``[n_records]``, or ``[n_records, P]`` with ``null``.
    """
    if measure == "batch_cosine":
        read = run.null_cosine if null else run.cosine
        return read(layer, group_a).astype(np.float64) - read(layer, group_b).astype(np.float64)
    read = {"cosine": (run.cosine, run.null_cosine), "overlap": (run.overlap, run.null_overlap)}[measure][null]
    return read(layer, group_a, group_b).astype(np.float64)


def _direction(effect):
    if not np.isfinite(effect):
        return ""
    return "lower than chance" if effect < 0 else "higher than chance"


def _geometry_selection(runs, layers, measures):
    """Checks that ``runs`` hold the geometry ``measures`` (default: every one recorded)
    with enough null partitions, and returns ``(layers, measures)``."""
    fix = "record with AutoSpecModel(..., geometry=True, null_partitions=20) (autospec run records both)"
    for run in runs:
        _check_not_empty(run)
        if not run.geometry:
            raise ValueError(f"{run.path} holds no gradient geometry; {fix}.")
        if list(run.geometry) != list(runs[0].geometry):
            raise ValueError(f"{run.path} recorded the geometry {list(run.geometry)} but {runs[0].path} "
                             f"{list(runs[0].geometry)}; compare runs recorded alike.")
    recorded = [m for m in GEOMETRY_MEASURES if m in runs[0].geometry
                or (m == "batch_cosine" and "cosine" in runs[0].geometry)]
    measures = recorded if measures is None else [measures] if isinstance(measures, str) else list(measures)
    unknown = [m for m in measures if m not in GEOMETRY_MEASURES]
    if unknown or not measures:
        raise ValueError(f"Unknown geometry measure(s) {unknown}; choose from {list(GEOMETRY_MEASURES)}.")
    missing = [m for m in measures if m not in recorded]
    if missing:
        raise ValueError(f"{runs[0].path} did not record {missing} (recorded: {recorded}); {fix}.")
    layers, _ = _selection(runs[0], layers, [])
    counts = {run.path: run.null_partitions for run in runs}
    if len(set(counts.values())) > 1:
        raise ValueError(f"The runs hold different numbers of null partitions ({counts}); compare runs recorded "
                         "with the same null partitions (drawn once for the whole dataset).")
    if runs[0].null_partitions < MINIMUM_NULL_PARTITIONS:
        raise ValueError(
            f"{runs[0].path} holds {runs[0].null_partitions} null partitions; the gradient geometry is tested "
            f"against random groups of the same sizes and needs at least {MINIMUM_NULL_PARTITIONS} (20 "
            f"recommended): {fix}. No fixed value is what chance gives: the cosine between two groups' "
            "gradients grows with their sizes and changes as the model trains."
        )
    _check_same_partitions(runs)
    return layers, measures


def _check_statistics(statistics):
    statistics = [statistics] if isinstance(statistics, str) else list(statistics)
    unknown = [s for s in statistics if s not in GEOMETRY_STATISTICS]
    if unknown or not statistics:
        raise ValueError(f"statistics must be a non-empty subset of {list(GEOMETRY_STATISTICS)}; received "
                         f"{statistics}.")
    return statistics


def _step_window(run, steps):
    """bool ``[n_records]``: the records whose step lies in ``steps`` ``(first, last)``,
    inclusive; every record when ``steps`` is ``None``."""
    if steps is None:
        return np.ones(len(run), bool)
    step_numbers = run.records["step"]
    return (step_numbers >= steps[0]) & (step_numbers <= steps[1])


def _runs_mean(per_run, first, last):
    """The mean over runs of each run's epoch mean (``first == last``) or of its change
    from epoch ``first`` to ``last`` (runs where it is undefined left out), and how
    many runs count.

    Args:
        per_run: one ``{epoch: value}`` (`_epoch_means`) per run; values scalars or ``[P]``.
    """
    values = np.stack([v[last] - v[first] if first != last else v[last] for v in per_run])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # undefined in every run: NaN
        return np.nanmean(values, axis=0), np.isfinite(values).sum(axis=0)


def _steps_mean(values, steps, subtracted=None):
    """The mean of ``values`` over ``steps``, minus that over ``subtracted`` when given."""
    mean = _window_mean(values, steps)
    return mean if subtracted is None else mean - _window_mean(values, subtracted)


def _geometry_row(row, observed, null):
    """``row`` with the test of ``observed`` (``T_0``) against the null partitions' ``null``."""
    row["value"] = float(observed)
    row.update(null_test(observed, null))
    row["direction"] = _direction(row["effect"])
    return row


def across_runs_geometry(runs, group_a=None, group_b=None, layers=None, measures=None, epochs=None,
                         statistics=GEOMETRY_STATISTICS, alpha=0.05, progress=None):
    """Pairs of groups' gradient geometry against random groups of the same sizes, per
    layer × measure × epoch, and its change between epochs, across runs.

    For each pair of groups, layer and measure (see `geometry_values`):

    * ``"level"``, per epoch: ``T`` = the mean over runs of the epoch's mean value;
    * ``"change"``: ``T`` = the mean over runs of (the value in the last of the tested
      epochs − that in the first), one test per pair, layer and measure.

    ``T_0`` of the real groups is tested against ``T_1 … T_P`` of the null partitions
    (`null_test`; the module docstring). All rows form one BH family, ``"geometry"``.

    Args:
        runs: `tf_autospec.Run`s of the same model and groups (seeds, folds), recorded
            with ``geometry=True`` and null partitions.
        group_a, group_b: the two group names; ``None`` compares every pair.
        layers: kernel paths to test (default: all).
        measures: subset of ``("cosine", "overlap", "batch_cosine")`` (default: every
            one the runs recorded; ``batch_cosine`` comes with ``cosine``).
        epochs: epochs to test (default: every epoch present in all runs).
        statistics: subset of ``("level", "change")``.
        alpha: FDR level for the ``significant`` column.
        progress: optional callable ``progress(done, total)``.

    Returns:
        A list of row dicts: ``measure``, ``statistic``, the epochs (``from_epoch`` to
        ``epoch``; the same for a level), ``value`` (``T_0``), ``null_mean`` (what random
        groups of these sizes show), ``excess``, ``effect`` (z), ``direction`` (``"lower
        than chance"``, e.g. a conflict: a cosine below random groups'), ``p_value``,
        ``q_value``, ``significant``.

    Raises:
        ValueError: fewer than 2 runs, runs without geometry or with fewer than 5 null
            partitions, a measure not recorded, runs of different models.

    Example:

    ```python
    rows = tf_autospec.stats.across_runs_geometry(runs, "HC", "SZ", measures=["cosine"])
    [r for r in rows if r["significant"] and r["direction"] == "lower than chance"]  # conflicts
    ```
    """
    runs = list(runs)
    _check_comparable(runs, "tf_autospec.stats.within_run_geometry")
    layers, measures = _geometry_selection(runs, layers, measures)
    statistics = _check_statistics(statistics)
    pairs = group_pairs(runs[0], group_a, group_b)
    common = set.intersection(*[set(int(e) for e in np.unique(run.records["epoch"])) for run in runs])
    if epochs is not None and set(epochs) - common:
        raise ValueError(f"Epochs {sorted(set(epochs) - common)} are not recorded in every run "
                         f"(common epochs: {sorted(common)}).")
    tested = sorted(common if epochs is None else set(epochs))
    counts = {g: float(np.mean([np.mean(run.counts(g)) for run in runs])) for g in runs[0].groups}
    combinations = list(itertools.product(layers, measures))
    rows = []
    for done, (layer, measure) in enumerate(combinations):
        for a_name, b_name in pairs:
            real = [_epoch_means(geometry_values(run, layer, measure, a_name, b_name), run) for run in runs]
            null = [_epoch_means(geometry_values(run, layer, measure, a_name, b_name, null=True), run)
                    for run in runs]
            spans = [(e, e) for e in tested] if "level" in statistics else []
            if "change" in statistics and len(tested) > 1:
                spans.append((tested[0], tested[-1]))
            for first, last in spans:
                observed, n_runs = _runs_mean(real, first, last)
                row = {"test": "across_runs_geometry", "inference": _inference("null"), "family": FAMILIES[2],
                       "measure": measure, "statistic": "level" if first == last else "change", "layer": layer,
                       "group_a": a_name, "group_b": b_name, "from_epoch": first, "epoch": last,
                       "n_runs": int(n_runs), "count_a": counts[a_name], "count_b": counts[b_name]}
                rows.append(_geometry_row(row, observed, _runs_mean(null, first, last)[0]))
        if progress is not None:
            progress(done + 1, len(combinations))
    _add_fdr(rows, "p_value", ["p_value"], alpha)
    _withhold_when_target(rows, runs)
    return rows


def within_run_geometry(run, group_a=None, group_b=None, layers=None, measures=None, steps=None,
                        statistics=GEOMETRY_STATISTICS, alpha=0.05):
    """Pairs of groups' gradient geometry against random groups of the same sizes over a
    window of one run's steps, and its change between the window's first and last epochs.

    ``"level"``: ``T`` = the mean of the values over the window's steps; ``"change"``:
    ``T`` = the mean over the steps of the window's last epoch − that over its first
    epoch (no row when the window holds one epoch). Tested as `across_runs_geometry`.

    Args:
        run: a `tf_autospec.Run` recorded with ``geometry=True`` and null partitions.
        group_a, group_b: the two group names; ``None`` compares every pair.
        layers: kernel paths to test (default: all).
        measures: subset of ``("cosine", "overlap", "batch_cosine")`` (default: every one
            recorded).
        steps: ``(first, last)`` step window, inclusive; default all steps.
        statistics: subset of ``("level", "change")``.
        alpha: FDR level for the ``significant`` column.

    Returns:
        A list of row dicts as `across_runs_geometry`'s, with the window (``first_step``,
        ``last_step``, ``n_steps``, ``first_epoch``, ``last_epoch``) instead of epochs.
    """
    layers, measures = _geometry_selection([run], layers, measures)
    statistics = _check_statistics(statistics)
    pairs = group_pairs(run, group_a, group_b)
    step_numbers, epoch_numbers = run.records["step"], run.records["epoch"]
    window = _step_window(run, steps)
    if not window.any():
        raise ValueError(f"No recorded step of {run.path} lies in steps={steps} (steps "
                         f"{int(step_numbers[0])}–{int(step_numbers[-1])}).")
    first_epoch, last_epoch = int(epoch_numbers[window].min()), int(epoch_numbers[window].max())
    # The steps each statistic averages: (steps, steps subtracted) per statistic.
    parts = {"level": (window, None)} if "level" in statistics else {}
    if "change" in statistics and first_epoch != last_epoch:
        parts["change"] = (window & (epoch_numbers == last_epoch), window & (epoch_numbers == first_epoch))
    rows = []
    for layer, measure in itertools.product(layers, measures):
        for a_name, b_name in pairs:
            real = geometry_values(run, layer, measure, a_name, b_name)
            null = geometry_values(run, layer, measure, a_name, b_name, null=True)
            for name, masks in parts.items():
                row = {"test": "within_run_geometry", "inference": _inference("null"), "run": run.path,
                       "family": FAMILIES[2], "measure": measure, "statistic": name, "layer": layer,
                       "group_a": a_name, "group_b": b_name, "first_step": int(step_numbers[window][0]),
                       "last_step": int(step_numbers[window][-1]), "n_steps": int(np.isfinite(real[window]).sum()),
                       "first_epoch": first_epoch, "last_epoch": last_epoch,
                       "count_a": float(np.mean(run.counts(a_name)[window])),
                       "count_b": float(np.mean(run.counts(b_name)[window]))}
                rows.append(_geometry_row(row, _steps_mean(real, *masks), _steps_mean(null, *masks)))
    _add_fdr(rows, "p_value", ["p_value"], alpha)
    _withhold_when_target(rows, [run])
    return rows


def _q_name(column):
    return "q_value" if column == "p_value" else "q_" + column.removeprefix("p_")


def _add_fdr(rows, primary, columns, alpha):
    """BH q-values for each p column, within each family; ``significant`` from the
    primary column's, at ``alpha`` divided among the families present, so that the whole
    table keeps ``alpha`` (two families each at ``alpha`` would find something in up to
    twice as many null experiments)."""
    present = [name for name in FAMILIES if any(row["family"] == name for row in rows)]
    for name in present:
        for column in columns:
            members = [row for row in rows if row["family"] == name and column in row]
            for row, value in zip(members, benjamini_hochberg([row[column] for row in members])):
                row[_q_name(column)] = float(value)
    level = alpha / max(len(present), 1)
    for row in rows:
        q = row[_q_name(primary)]
        row["significant"] = bool(np.isfinite(q) and q <= level)


def combine(*tables, alpha=0.05):
    """One table from several tests' tables, with its families sharing ``alpha``.

    Each table holds its own families at ``alpha`` divided by their number; tables
    reported together (the spectra's and the geometry's) should share it:
    ``combine(across_runs(runs), across_runs_geometry(runs))`` holds each of the
    families present at ``alpha`` / their number, with BH q-values recomputed within
    each family. Rows withheld because the groups are the prediction target stay not
    significant.

    Args:
        *tables: lists of row dicts from this module's tests.
        alpha: FDR level shared by the families.

    Returns:
        A new list of (copied) rows, the tables' rows in order, with new ``q_*`` and
        ``significant`` columns.
    """
    rows = [dict(row) for table in tables for row in table]
    columns = list(dict.fromkeys(key for row in rows for key in row if key.startswith("p_")))
    _add_fdr(rows, "p_value", columns, alpha)
    for row in rows:
        if row["inference"] == WITHHELD:
            row["significant"] = False
    return rows


def write_csv(rows, path):
    """Writes a table of rows as CSV: one column per key, in the order the rows first
    use them (rows of a `combine`d table without a column leave it empty)."""
    if not rows:
        raise ValueError("No test to write: the selection produced an empty table.")
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
