"""Paper-style figures of recorded runs (matplotlib, headless). Each returns a Figure.

* `trajectories`: a summary (or one singular value) of a layer over steps or epochs, one
  colour per group: the median across runs and the band between their 25th and 75th
  percentiles.
* `layer_panels`: grad, act and delta of one layer side by side.
* `overview`: every layer (rows) × kind (columns).
* `loss_curves`: the training loss per group (or of all samples) and the validation loss.
* `difference_heatmap`: the effect between two groups per singular-value index × epoch
  (z against random groups of the same sizes, or Hedges' g), FDR-significant cells marked.
* `findings_map`: the strongest effect per layer, kind and epoch, from a table of tests.
* `geometry`: whether the groups pull each layer's weights the same way: the cosine
  between their gradients, each group's cosine with the whole batch's gradient and the
  overlap of their top input directions, beside what random groups of the same sizes give.

Every figure says what it draws: its statistic (median and IQR over n runs), its
normalisation (per sample) and its numbering (steps and epochs from 0, as in the files).
The y axis is logarithmic where the drawn values span more than two decades
(``scale="auto"``; ``"log"`` or ``"linear"`` to choose). Colours are the Okabe–Ito
palette, readable with the common colour-vision deficiencies.
"""

import textwrap
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from tf_autospec import report, stats, summaries, wording  # noqa: E402

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
SCALES = ("auto", "log", "linear")
NUMBERED_FROM_0 = "\u00a00"  # " 0" that a wrapped title keeps on one line with its "from"
LOG_SPAN = 100.0  # "auto" draws a log axis where the values span more than two decades


def _runs(runs):
    runs = list(runs) if isinstance(runs, (list, tuple)) else [runs]
    if not runs:
        raise ValueError("No run to plot.")
    for run in runs:
        if len(run) == 0:
            raise ValueError(f"{run.path} holds no recorded step; nothing to plot.")
    return runs


def _check_scale(scale):
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}; received {scale!r}.")


def _aligned(series, what):
    """x values and a [runs, x] array from per-run ``{x: value}`` dicts, on the x values all runs share."""
    common = sorted(set.intersection(*[set(s) for s in series]))
    if not common:
        raise ValueError(f"The runs share no {what}; plot them separately or per epoch.")
    return np.array(common), np.array([[s[x] for x in common] for s in series], dtype=np.float64)


def _band(ax, series, what, colour, label, linestyle="-"):
    """Draws the median over runs and, with several runs, their interquartile band;
    returns the medians."""
    x, values = _aligned(series, what)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # steps where the group was absent
        median = np.nanmedian(values, axis=0)
        ax.plot(x, median, color=colour, label=label, linewidth=1.6, linestyle=linestyle)
        if len(series) > 1:
            low, high = np.nanpercentile(values, [25, 75], axis=0)
            ax.fill_between(x, low, high, color=colour, alpha=0.22, linewidth=0)
    return median


def y_scale(values, scale="auto"):
    """The y scale for drawn values: ``"log"`` where ``scale`` says so, or for ``"auto"``
    where the finite values are all positive and span more than two decades; else ``"linear"``.

    Args:
        values: array-like of the values drawn (NaN ignored).
        scale: one of `SCALES`.

    Returns:
        ``"log"`` or ``"linear"``.
    """
    _check_scale(scale)
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if scale != "auto":
        return scale
    spans = values.size > 0 and values.min() > 0 and values.max() / values.min() > LOG_SPAN
    return "log" if spans else "linear"


def _apply_scale(ax, medians, scale):
    """Sets the y scale of the drawn medians; returns whether it is logarithmic."""
    log = y_scale(np.concatenate([np.ravel(m) for m in medians]), scale) == "log"
    if log:
        ax.set_yscale("log", nonpositive="mask")
    return log


def _statistic(runs, normalize, per_epoch):
    """What every line and band is, in one line."""
    n = len(runs)
    statistic = f"median over {n} runs, band: interquartile range" if n > 1 else "one run"
    if per_epoch:
        statistic += " (each run's mean over the epoch's steps)"
    scaling = ("per sample: grad ÷ n, act and delta ÷ √n (n: the group's samples in the batch)" if normalize
               else "as recorded (not per sample)")
    return f"{statistic}; {scaling}; {'epochs' if per_epoch else 'steps'} from{NUMBERED_FROM_0}"


def _steps_per_epoch(runs):
    """``" (5 per epoch)"`` when every run records the same steps in every epoch, else ``""``."""
    counts = {int(n) for run in runs for n in np.unique(run.records["epoch"], return_counts=True)[1]}
    return f" ({counts.pop()} per epoch)" if len(counts) == 1 else ""


def _draw(ax, runs, layer, kind, summary, per_epoch, normalize, groups, scale):
    medians = []
    for colour, group in zip(PALETTE, groups):
        series = []
        for run in runs:
            values = summaries.summarize(stats.normalized_spectrum(run, layer, kind, group, normalize), summary)
            x, values = run.per_epoch(values, "mean") if per_epoch else (run.records["step"], values)
            series.append(dict(zip(x.tolist(), values)))
        medians.append(_band(ax, series, "epoch" if per_epoch else "step", colour, group))
    log = _apply_scale(ax, medians, scale)
    ax.set_xlabel("epoch" if per_epoch else f"training step{_steps_per_epoch(runs)}")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(wording.axis_label(summary, normalize) + (" (log scale)" if log else ""), fontsize=9)
    separator = "\n" if len(layer) > 24 else " · "  # long kernel paths (recurrent cells) get their own line
    ax.set_title(f"{layer}{separator}{kind}: {wording.KIND_NAMES.get(kind, kind)}", fontsize=9)
    ax.grid(alpha=0.3, which="major")


def _legend(ax):
    """The groups' legend to the right of ``ax`` (the last panel of a row), clear of the data."""
    ax.legend(title="group", fontsize=9, title_fontsize=9, loc="center left", bbox_to_anchor=(1.02, 0.5),
              frameon=False)


def _title(figure, title, statistic):
    """The title, and below it, wrapped to the figure's width, what the lines and bands are."""
    width = int(figure.get_figwidth() * 14)
    figure.suptitle("\n".join([textwrap.fill(title, width)] + [textwrap.fill(line, width)
                                                               for line in statistic.split("\n")]), fontsize=9.5)


def trajectories(runs, layer, kind="grad", summary="spectral_norm", per_epoch=False, normalize=True,
                 groups=None, scale="auto"):
    """One layer's summary over training, one colour per group, median and IQR across runs.

    Args:
        runs: a `tf_autospec.Run` or several (seeds, folds) of the same model.
        layer: kernel path, e.g. ``"dense/kernel"``.
        kind: ``"grad"``, ``"act"`` or ``"delta"``.
        summary: a `tf_autospec.summaries` name, or ``"sigma_<i>"`` for one singular value.
        per_epoch: x axis in epochs (each the mean over its steps) instead of steps.
        normalize: per-sample spectra, as in `tf_autospec.stats`.
        groups: groups to draw (default all).
        scale: ``"auto"`` (log where the values span more than two decades), ``"log"``
            or ``"linear"``.

    Returns:
        A matplotlib Figure.
    """
    runs = _runs(runs)
    _check_scale(scale)
    figure, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    _draw(ax, runs, layer, kind, summary, per_epoch, normalize, groups or runs[0].groups, scale)
    _legend(ax)
    _title(figure, f"{layer}: {wording.summary_name(summary)} per group", _statistic(runs, normalize, per_epoch))
    return figure


def layer_panels(runs, layer, summary="spectral_norm", per_epoch=False, normalize=True, groups=None,
                 scale="auto"):
    """grad, act and delta of one layer side by side (one panel per recorded kind);
    arguments as in `trajectories`."""
    runs = _runs(runs)
    _check_scale(scale)
    kinds = runs[0].kinds
    figure, axes = plt.subplots(1, len(kinds), figsize=(4.4 * len(kinds), 4.0), constrained_layout=True,
                                squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        _draw(ax, runs, layer, kind, summary, per_epoch, normalize, groups or runs[0].groups, scale)
    _legend(axes[0][-1])
    _title(figure, f"{layer}: {wording.summary_name(summary)} per group",
           _statistic(runs, normalize, per_epoch))
    return figure


def overview(runs, summary="spectral_norm", per_epoch=False, normalize=True, groups=None, scale="auto"):
    """Every tracked layer (rows) × kind (columns) in one figure, a legend on every row;
    arguments as in `trajectories`."""
    runs = _runs(runs)
    _check_scale(scale)
    layers, kinds = runs[0].layers, runs[0].kinds
    figure, axes = plt.subplots(len(layers), len(kinds), figsize=(4.4 * len(kinds), 3.0 * len(layers) + 0.6),
                                constrained_layout=True, squeeze=False)
    for row, layer in enumerate(layers):
        for column, kind in enumerate(kinds):
            _draw(axes[row][column], runs, layer, kind, summary, per_epoch, normalize, groups or runs[0].groups,
                  scale)
        _legend(axes[row][-1])
    _title(figure, f"{wording.summary_name(summary).capitalize()} of every layer, per group",
           _statistic(runs, normalize, per_epoch))
    return figure


def _epoch_logs(run, key):
    return {int(e): float(logs[key]) for e, logs in zip(run.epochs["epoch"], run.epochs["logs"]) if key in logs}


def loss_curves(runs, groups=None, scale="auto"):
    """The training loss per epoch: per group where the runs record it
    (`report.records_group_loss`), else of all samples; and the validation loss, dashed,
    where the runs have one. Median and IQR over the runs.

    Args:
        runs: a `tf_autospec.Run` or several.
        groups: groups to draw (default all).
        scale: as in `trajectories`.

    Returns:
        A matplotlib Figure, or ``None`` when the runs record no loss per epoch.
    """
    runs = _runs(runs)
    _check_scale(scale)
    per_group = report.records_group_loss(runs)
    curves = []
    if per_group:
        for colour, group in zip(PALETTE, groups or runs[0].groups):
            series = [dict(zip(*(a.tolist() for a in run.epoch_group_loss(group)))) for run in runs]
            curves.append((series, colour, f"{group}, training", "-"))
    elif all(_epoch_logs(run, "loss") for run in runs):
        curves.append(([_epoch_logs(run, "loss") for run in runs], "#555555", "all samples, training", "-"))
    if all(_epoch_logs(run, "val_loss") for run in runs):
        curves.append(([_epoch_logs(run, "val_loss") for run in runs], "#000000", "all samples, validation", "--"))
    if not curves:
        return None
    figure, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    medians = [_band(ax, series, "epoch", colour, label, style) for series, colour, label, style in curves]
    log = _apply_scale(ax, medians, scale)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("loss" + (" (log scale)" if log else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, framealpha=0.9)
    what = "Training loss per group" if per_group else "Loss (these runs record no per-group loss)"
    _title(figure, what, f"median over {len(runs)} runs, band: interquartile range; epochs from{NUMBERED_FROM_0}"
           if len(runs) > 1 else f"one run; epochs from{NUMBERED_FROM_0}")
    return figure


def _effect_name(rows):
    against_null = bool(rows) and rows[0]["test"].endswith("null")
    return against_null, "z vs random groups of these sizes" if against_null else "Hedges' g"


def difference_heatmap(runs, layer, group_a, group_b, kind="grad", max_index=10, alpha=0.05,
                       normalize=True, rows=None):
    """The effect of ``group_a`` − ``group_b`` per singular-value index × epoch.

    With several runs the cells come from `stats.across_runs` (summaries ``sigma_1`` …
    ``sigma_<max_index>``): with null partitions the difference beyond random groups of
    the same sizes, in SDs of its chance variation (``effect``, z); with
    ``reference="runs"`` Hedges' g. FDR-significant cells carry a dot.

    Args:
        rows: precomputed `stats.across_runs` rows to draw instead of testing again.
    """
    runs = _runs(runs)
    width = min(max_index, runs[0].widths[layer][kind])
    names = [f"sigma_{i + 1}" for i in range(width)]
    if rows is None:
        reference = "null" if min(run.null_partitions for run in runs) else "runs"
        rows = stats.across_runs(runs, group_a, group_b, layers=[layer], kinds=[kind], summaries=names,
                                 normalize=normalize, alpha=alpha, reference=reference)
    # σ_1 is the spectral norm: precomputed tables test it under that name only.
    index_of = {name: i for i, name in enumerate(names)}
    if not any(r.get("summary") == "sigma_1" for r in rows):
        index_of["spectral_norm"] = 0
    rows = [r for r in report.spectra_rows(rows) if r["layer"] == layer and r["kind"] == kind
            and r["summary"] in index_of and r["group_a"] == group_a and r["group_b"] == group_b]
    epochs = sorted({r["epoch"] for r in rows})
    grid = np.full((width, len(epochs)), np.nan)
    marks = []
    for r in rows:
        i, j = index_of[r["summary"]], epochs.index(r["epoch"])
        grid[i, j] = r["effect"]
        if r["significant"]:
            marks.append((j, i))
    against_null, effect = _effect_name(rows)
    figure, ax = plt.subplots(figsize=(max(4.5, 0.4 * len(epochs) + 3), max(3.2, 0.3 * width + 2)),
                              constrained_layout=True)
    bound = max(np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 0.0, 3.0)
    image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, origin="lower",
                      extent=(-0.5, len(epochs) - 0.5, 0.5, width + 0.5))
    for j, i in marks:
        ax.plot(j, i + 1, marker="o", color="black", markersize=4)
    ax.set_xticks(range(len(epochs)), [str(e) for e in epochs], fontsize=8)
    ax.set_yticks(range(1, width + 1))
    ax.set_xlabel("epoch (from 0)")
    ax.set_ylabel("singular value index (1 = largest)")
    ax.set_title(f"{layer} · {kind}: {wording.KIND_NAMES.get(kind, kind)}\n{group_a} − {group_b}: {effect}, "
                 f"{len(runs)} runs (• significant, FDR)", fontsize=9)
    figure.colorbar(image, ax=ax, label=f"{'z' if against_null else effect} (> 0: {group_a} higher)")
    return figure


def findings_map(rows, group_a, group_b):
    """Where two groups differ: the strongest effect of any tested summary per layer ×
    kind (rows) and epoch (columns), from `stats.across_runs` rows; a dot where at least
    one test of the cell is significant. The colour scale reaches at least ±``wording.MAP_BOUND``,
    so that effects of the size chance gives stay pale.

    Args:
        rows: `stats.across_runs` rows (one per test, with ``epoch``).
        group_a, group_b: the pair to draw.

    Returns:
        A matplotlib Figure.
    """
    rows = [r for r in report.spectra_rows(rows) if r["group_a"] == group_a and r["group_b"] == group_b
            and "epoch" in r]
    if not rows:
        raise ValueError(f"No test of {group_a} vs {group_b} per epoch to draw.")
    lines = list(dict.fromkeys((r["layer"], r["kind"]) for r in rows))
    epochs = sorted({r["epoch"] for r in rows})
    grid = np.full((len(lines), len(epochs)), np.nan)
    marked = np.zeros(grid.shape, bool)
    for r in rows:
        i, j = lines.index((r["layer"], r["kind"])), epochs.index(r["epoch"])
        if np.isfinite(r["effect"]) and not abs(r["effect"]) <= abs(grid[i, j]):  # NaN: the first
            grid[i, j] = r["effect"]
        marked[i, j] |= bool(r["significant"])
    input_data = {(r["layer"], r["kind"]) for r in rows if r["family"] == stats.FAMILIES[1]}
    against_null, effect = _effect_name(rows)
    figure, ax = plt.subplots(figsize=(min(max(5.5, 0.2 * len(epochs) + 4.2), 7.0), 0.34 * len(lines) + 1.9),
                              constrained_layout=True)
    bound = max(np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 0.0, wording.MAP_BOUND)
    image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    j, i = np.nonzero(marked.T)
    ax.plot(j, i, "o", color="black", markersize=3.5, linestyle="none")
    ax.set_yticks(range(len(lines)), [f"{layer} · {kind}: {wording.KIND_NAMES.get(kind, kind)}"
                                      + (" (input data)" if (layer, kind) in input_data else "")
                                      for layer, kind in lines], fontsize=8)
    step = max(1, len(epochs) // 20)
    ax.set_xticks(range(0, len(epochs), step), [str(e) for e in epochs[::step]], fontsize=8)
    ax.set_xlabel("epoch (from 0)")
    _title(figure, f"Where {group_a} and {group_b} differ",
           f"the strongest effect of any summary tested ({effect})\n{max(r['n_runs'] for r in rows)} runs; "
           "• significant (FDR)")
    figure.colorbar(image, ax=ax, label=f"{'z' if against_null else effect} (> 0: {group_a} higher)",
                    fraction=0.05, pad=0.02)
    return figure


GEOMETRY_PANELS = ("cosine", "batch_cosine", "overlap")
CHANCE_COLOUR = "#7a7a7a"
SIGNIFICANT = "significant (FDR)"
_GEOMETRY_TITLES = {
    "cosine": "do the groups' gradients point the same way?",
    "batch_cosine": "does the step follow each group?",
    "overlap": "do they use the same input directions?",
}
_GEOMETRY_LABELS = {
    "cosine": "cosine of the groups' gradients\n+1 same way · 0 unrelated · −1 opposed",
    "batch_cosine": "cosine with the batch's gradient\n1 the step follows it · 0 ignores it",
    "overlap": "overlap of top-{k} input directions\n1 the same · 0 orthogonal",
}


def _geometry_runs(runs):
    """The runs, checked to hold the same gradient geometry measures."""
    runs = _runs(runs)
    for run in runs:
        if not run.geometry:
            raise ValueError(
                f"{run.path} holds no gradient geometry (a file written before tf_autospec recorded it, or trained "
                "with geometry=False); train with AutoSpecModel(..., geometry=True), the default, to draw it.")
        if run.geometry != runs[0].geometry:
            raise ValueError(f"{run.path} recorded the geometry {list(run.geometry)} but {runs[0].path} "
                             f"{list(runs[0].geometry)}; draw runs recorded alike.")
    return runs


def _per_x(run, values, per_epoch):
    """``{x: value}`` of per-record ``values`` (``[n]`` or ``[n, P]``), per epoch (mean) or per step."""
    x, values = run.per_epoch(values.astype(np.float64), "mean") if per_epoch else (run.records["step"], values)
    return dict(zip(x.tolist(), values))


def _chance_band(ax, series, what, colour, label, band=True):
    """The null partitions' values pooled over runs and partitions (``series``: per run
    ``{x: [P] values}``): their median, dotted, and with ``band`` their interquartile range."""
    x, values = _aligned(series, what)  # [runs, x, P]
    pooled = values.transpose(1, 0, 2).reshape(len(x), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # steps where a group was absent
        median = np.nanmedian(pooled, axis=1)
        ax.plot(x, median, color=colour, label=label, linewidth=1.3, linestyle=":")
        if band:
            low, high = np.nanpercentile(pooled, [25, 75], axis=1)
            ax.fill_between(x, low, high, color=colour, alpha=0.18, linewidth=0)


def _geometry_overlap_k(run, layer):
    """The ``k`` of a kernel's overlap (at most its smaller fan)."""
    info = run.kernel_info[layer]
    return int(info.get("overlap_k") or min(run.overlap_k or 0, info["fan_in"], info["fan_out"]))


def _recorded_pair(run, pair):
    """A pair of groups in the order the run records it (``("SZ", "HC")`` -> ``("HC", "SZ")``)."""
    for recorded in (tuple(pair), tuple(pair)[::-1]):
        if recorded in run.pairs:
            return recorded
    raise ValueError(f"{tuple(pair)} is not a pair of this run's groups; it records {run.pairs}.")


def _significant_epochs(rows, layer, measure, pair):
    """The epochs of the significant ``"level"`` tests of one layer, measure and pair."""
    return [r["epoch"] for r in rows
            if r["family"] == report.GEOMETRY and r["significant"] and r.get("statistic") == "level" and "epoch" in r
            and r["layer"] == layer and r["measure"] == measure and (r["group_a"], r["group_b"]) == pair]


def _mark(ax, series, median, epochs):
    """Dots on the median line at the ``epochs`` where a test is significant."""
    x = sorted(set.intersection(*[set(s) for s in series]))
    points = [(e, m) for e, m in zip(x, median) if e in set(epochs) and np.isfinite(m)]
    if points:
        ax.plot(*zip(*points), "o", color="black", markersize=4, zorder=5, label=SIGNIFICANT)


def _draw_geometry(ax, runs, layer, panel, pairs, groups, per_epoch, legend, rows=()):
    """One panel (with its legend where ``legend``; with `stats` ``rows`` per epoch, a dot
    where a test is significant); a note where it has no value at all."""
    what = "epoch" if per_epoch else "step"
    null = min(run.null_partitions for run in runs) > 0
    drawn = []
    marked = bool(rows) and per_epoch
    if panel == "batch_cosine":
        lines = {}
        for group in groups:  # a group keeps its colour whichever groups are drawn
            colour = PALETTE[runs[0].groups.index(group) % len(PALETTE)]
            series = [_per_x(run, run.cosine(layer, group), per_epoch) for run in runs]
            drawn.append(_band(ax, series, what, colour, group))
            lines[group] = (series, drawn[-1])
            if null:
                _chance_band(ax, [_per_x(run, run.null_cosine(layer, group), per_epoch) for run in runs], what,
                             colour, f"random groups of {group}'s size", band=False)
        if marked:  # the test is of the difference of two groups' lines: a dot on both
            for a, b in pairs:
                epochs = _significant_epochs(rows, layer, panel, (a, b))
                for group in (a, b):
                    _mark(ax, *lines[group], epochs)
    else:
        for colour, (a, b) in zip(PALETTE, pairs):
            label = f"{a} vs {b}" if len(pairs) > 1 else f"{a} and {b}"
            series = [_per_x(run, getattr(run, panel)(layer, a, b), per_epoch) for run in runs]
            drawn.append(_band(ax, series, what, colour, label))
            if marked:
                _mark(ax, series, drawn[-1], _significant_epochs(rows, layer, panel, (a, b)))
            if null:
                # One pair: a grey band; several: each pair's chance median in its colour.
                single = len(pairs) == 1
                _chance_band(ax, [_per_x(run, getattr(run, f"null_{panel}")(layer, a, b), per_epoch) for run in runs],
                             what,
                             CHANCE_COLOUR if single else colour,
                             "random groups of the same sizes" if single else f"random groups, sizes of {a}, {b}",
                             band=single)
    if panel == "overlap":
        k, fan_in = _geometry_overlap_k(runs[0], layer), runs[0].kernel_info[layer]["fan_in"]
        ax.axhline(k / fan_in, color="black", linestyle="-.", linewidth=1.0,
                   label=f"unrelated directions (k/fan_in = {k}/{fan_in})")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(_GEOMETRY_LABELS[panel].format(k=k), fontsize=8.5)
    else:
        ax.axhline(0, color="black", linewidth=0.7)
        ax.set_ylabel(_GEOMETRY_LABELS[panel], fontsize=8.5)
    if not any(np.isfinite(m).any() for m in drawn):
        why = (f"fewer than k = {_geometry_overlap_k(runs[0], layer)} clear directions at every step"
               if panel == "overlap" else "undefined at every step")
        ax.text(0.5, 0.5, f"no value: {why}", transform=ax.transAxes, ha="center", va="center", fontsize=8,
                color="#555555", wrap=True)
        x = np.unique(runs[0].records["epoch"]) if per_epoch else runs[0].records["step"]
        if len(x) > 1:  # the x axis of the other panels, not matplotlib's default around 0
            ax.set_xlim(x[0], x[-1])
    ax.set_xlabel("epoch" if per_epoch else f"training step{_steps_per_epoch(runs)}")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(f"{layer}\n{_GEOMETRY_TITLES[panel]}", fontsize=9)
    ax.grid(alpha=0.3)
    if legend:
        if marked:  # the dots' entry, also where this panel has none
            ax.plot([], [], "o", color="black", markersize=4, label=SIGNIFICANT)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))  # one "significant" entry, the last
        unique = {**{k: v for k, v in unique.items() if k != SIGNIFICANT}, **{k: v for k, v in unique.items()
                                                                            if k == SIGNIFICANT}}
        if len(unique) > 4:  # several pairs: below the panel, where it covers no line
            ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                      ncol=2, frameon=False)
        else:
            ax.legend(unique.values(), unique.keys(), fontsize=7, framealpha=0.85, loc="best")


def _geometry_statistic(runs, per_epoch, rows):
    """What the lines, bands and dots of `geometry` are, in one line."""
    n = len(runs)
    lines = f"median over {n} runs, band: interquartile range" if n > 1 else "one run"
    if per_epoch:
        lines += " (each run's mean over the epoch's steps)" if n > 1 else " (each epoch: the mean over its steps)"
    partitions = min(run.null_partitions for run in runs)
    chance = (f"dotted: random groups of the same sizes ({partitions} null partitions × {n} run{'s' * (n > 1)}), "
              "median" + (" and IQR (grey)" if len(runs[0].pairs) == 1 else "")
              if partitions else "no random groups recorded (null_partitions=0): no chance reference")
    dots = "; • significant against them (FDR)" if rows and per_epoch else ""
    return f"{lines}; {chance}{dots}; {'epochs' if per_epoch else 'steps'} from{NUMBERED_FROM_0}"


def geometry(runs, layers=None, pairs=None, per_epoch=True, rows=None):
    """Do the groups pull each layer's weights the same way? One row of panels per layer:

    * the cosine between two groups' gradients (+1 the same direction, 0 unrelated, −1
      opposed: a gradient conflict), one colour per pair;
    * each group's cosine with the whole batch's gradient (does the step follow it? a
      larger group weighs more in the batch, so compare it with random groups of its size);
    * the overlap of the groups' top-``k`` left singular subspaces (the input directions
      each group's gradient uses most), with the overlap of unrelated directions,
      ``k / fan_in``, as a dash-dotted line.

    Lines: the median over runs with their interquartile band, as in `trajectories`.
    Dotted: what random groups of the same sizes give (the runs' null partitions, pooled
    over runs and partitions: median, and for one pair of groups their interquartile
    range in grey), the reference of `tf_autospec.stats.across_runs_geometry`. Only the
    measures the runs recorded are drawn; with one group, only its batch cosine.

    Args:
        runs: a `tf_autospec.Run` or several (seeds, folds), recorded with ``geometry``.
        layers: a kernel path or a list of them (default: every tracked kernel).
        pairs: pairs of groups ``(a, b)`` to draw (default: every pair, `Run.pairs`); the
            batch-cosine panel then draws the groups of these pairs.
        per_epoch: x axis in epochs, each run's mean over the epoch's steps (the default,
            as the statistics test it: one batch's cosine is noisy), or in steps.
        rows: `tf_autospec.stats.across_runs_geometry` rows (alone or in a `stats.combine`d
            table): a dot on the line at each epoch whose level test is significant; for
            the batch cosines, whose test is of two groups' difference, on both lines.

    Returns:
        A matplotlib Figure.

    Raises:
        ValueError: a run holds no gradient geometry (a file written before it was
            recorded, or ``geometry=False``), or the runs recorded different measures.

    Example:

    ```python
    plot.save(plot.geometry(runs, "dense/kernel"), "geometry.png")
    ```
    """
    runs = _geometry_runs(runs)
    layers = runs[0].layers if layers is None else [layers] if isinstance(layers, str) else list(layers)
    if pairs is None:
        pairs, groups = runs[0].pairs, runs[0].groups
    else:
        pairs = [_recorded_pair(runs[0], pair) for pair in pairs]
        groups = [group for group in runs[0].groups if any(group in pair for pair in pairs)]
    panels = [p for p in GEOMETRY_PANELS if (p == "batch_cosine" and "cosine" in runs[0].geometry)
              or (p in runs[0].geometry and pairs)]
    if not panels:
        raise ValueError(f"Nothing to draw: {runs[0].path} records only the overlap, which needs two groups.")
    figure, axes = plt.subplots(len(layers), len(panels), figsize=(max(4.6 * len(panels), 6.4),
                                                                   3.3 * len(layers) + 0.9),
                                constrained_layout=True, squeeze=False)
    for row, layer in enumerate(layers):
        for column, panel in enumerate(panels):
            _draw_geometry(axes[row][column], runs, layer, panel, pairs, groups, per_epoch,
                           legend=row == 0, rows=rows or ())
    _title(figure, "Do the groups pull the weights the same way? Gradient geometry of every layer"
           if len(layers) > 1 else f"{layers[0]}: do the groups pull the weights the same way?",
           _geometry_statistic(runs, per_epoch, rows))
    return figure


def save(figure, path):
    """Saves a figure; the format (PNG, PDF, SVG) follows the file extension."""
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path
