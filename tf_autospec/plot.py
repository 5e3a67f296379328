"""Paper-style figures of recorded runs (matplotlib, headless). Each returns a Figure.

* `trajectories`: a summary (or one singular value) of a layer over steps or epochs, one
  colour per group: the median across runs and the band between their 25th and 75th
  percentiles.
* `layer_panels`: grad, act and delta of one layer side by side.
* `overview`: every layer (rows) × kind (columns).
* `difference_heatmap`: the effect between two groups per singular-value index × epoch
  (z against random groups of the same sizes, or Hedges' g), FDR-significant cells marked.

Colours are the Okabe–Ito palette, readable with the common colour-vision deficiencies.
"""

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tf_autospec import stats, summaries  # noqa: E402

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
KIND_LABELS = {"grad": "gradient σ(G_g)", "act": "input factor σ(M_g A)", "delta": "output-gradient factor σ(M_g Δ)"}


def _runs(runs):
    runs = list(runs) if isinstance(runs, (list, tuple)) else [runs]
    if not runs:
        raise ValueError("No run to plot.")
    for run in runs:
        if len(run) == 0:
            raise ValueError(f"{run.path} holds no recorded step; nothing to plot.")
    return runs


def _aligned(runs, layer, kind, group, summary, per_epoch, normalize):
    """x values and a [runs, x] array of the summary, on the x values all runs share."""
    series = []
    for run in runs:
        values = summaries.summarize(stats.normalized_spectrum(run, layer, kind, group, normalize), summary)
        if per_epoch:
            x, values = run.per_epoch(values, "mean")
        else:
            x = run.records["step"]
        series.append(dict(zip(x.tolist(), values)))
    common = sorted(set.intersection(*[set(s) for s in series]))
    if not common:
        raise ValueError(
            f"The runs share no {'epoch' if per_epoch else 'step'}; plot them separately or per epoch."
        )
    return np.array(common), np.array([[s[x] for x in common] for s in series], dtype=np.float64)


def _draw(ax, runs, layer, kind, summary, per_epoch, normalize, groups):
    for colour, group in zip(PALETTE, groups):
        x, values = _aligned(runs, layer, kind, group, summary, per_epoch, normalize)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # steps where the group was absent
            median = np.nanmedian(values, axis=0)
            ax.plot(x, median, color=colour, label=group, linewidth=1.5)
            if len(runs) > 1:
                low, high = np.nanpercentile(values, [25, 75], axis=0)
                ax.fill_between(x, low, high, color=colour, alpha=0.25, linewidth=0)
    ax.set_xlabel("epoch" if per_epoch else "training step")
    unit = " per sample" if normalize else ""
    ax.set_ylabel(f"{summary.replace('_', ' ')}{unit}")
    separator = "\n" if len(layer) > 24 else " — "  # long kernel paths (recurrent cells) get their own line
    ax.set_title(f"{layer}{separator}{KIND_LABELS.get(kind, kind)}", fontsize=9)
    ax.grid(alpha=0.3)


def trajectories(runs, layer, kind="grad", summary="spectral_norm", per_epoch=False, normalize=True,
                 groups=None):
    """One layer's summary over training, one colour per group, median and IQR across runs.

    Args:
        runs: a `tf_autospec.Run` or several (seeds, folds) of the same model.
        layer: kernel path, e.g. ``"dense/kernel"``.
        kind: ``"grad"``, ``"act"`` or ``"delta"``.
        summary: a `tf_autospec.summaries` name, or ``"sigma_<i>"`` for one singular value.
        per_epoch: x axis in epochs (each the mean over its steps) instead of steps.
        normalize: per-sample spectra, as in `tf_autospec.stats`.
        groups: groups to draw (default all).

    Returns:
        A matplotlib Figure.
    """
    runs = _runs(runs)
    figure, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    _draw(ax, runs, layer, kind, summary, per_epoch, normalize, groups or runs[0].groups)
    ax.legend(title="group", fontsize=8)
    return figure


def layer_panels(runs, layer, summary="spectral_norm", per_epoch=False, normalize=True, groups=None):
    """grad, act and delta of one layer side by side (one panel per recorded kind)."""
    runs = _runs(runs)
    kinds = runs[0].kinds
    figure, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.4), constrained_layout=True,
                                squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        _draw(ax, runs, layer, kind, summary, per_epoch, normalize, groups or runs[0].groups)
    axes[0][0].legend(title="group", fontsize=8)
    return figure


def overview(runs, summary="spectral_norm", per_epoch=False, normalize=True, groups=None):
    """Every tracked layer (rows) × kind (columns) in one figure."""
    runs = _runs(runs)
    layers, kinds = runs[0].layers, runs[0].kinds
    figure, axes = plt.subplots(len(layers), len(kinds), figsize=(4.2 * len(kinds), 2.8 * len(layers)),
                                constrained_layout=True, squeeze=False)
    for row, layer in enumerate(layers):
        for column, kind in enumerate(kinds):
            _draw(axes[row][column], runs, layer, kind, summary, per_epoch, normalize, groups or runs[0].groups)
    axes[0][0].legend(title="group", fontsize=8)
    figure.suptitle(f"{summary.replace('_', ' ')} of every layer, per group", fontsize=11)
    return figure


def difference_heatmap(runs, layer, group_a, group_b, kind="grad", max_index=10, alpha=0.05,
                       normalize=True, rows=None):
    """The effect of ``group_a`` − ``group_b`` per singular-value index × epoch.

    With several runs the cells come from `stats.across_runs` (summaries ``sigma_1`` …
    ``sigma_<max_index>``): with null partitions the difference beyond random groups of
    the same sizes, in SDs of its chance variation (``effect``, z); with
    ``reference="runs"`` Hedges' g. FDR-significant cells (q ≤ ``alpha``) carry a dot.

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
    if not any(r["summary"] == "sigma_1" for r in rows):
        index_of["spectral_norm"] = 0
    rows = [r for r in rows if r["layer"] == layer and r["kind"] == kind and r["summary"] in index_of
            and r["group_a"] == group_a and r["group_b"] == group_b]
    epochs = sorted({r["epoch"] for r in rows})
    grid = np.full((width, len(epochs)), np.nan)
    marks = []
    for r in rows:
        i, j = index_of[r["summary"]], epochs.index(r["epoch"])
        grid[i, j] = r["effect"]
        if r["significant"]:
            marks.append((j, i))
    against_null = bool(rows) and rows[0]["test"].endswith("null")
    effect = "z vs random groups of these sizes" if against_null else "Hedges' g"
    figure, ax = plt.subplots(figsize=(max(4, 0.5 * len(epochs) + 2.5), max(3, 0.3 * width + 1.5)),
                              constrained_layout=True)
    bound = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
    image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, origin="lower",
                      extent=(-0.5, len(epochs) - 0.5, 0.5, width + 0.5))
    for j, i in marks:
        ax.plot(j, i + 1, marker="o", color="black", markersize=4)
    ax.set_xticks(range(len(epochs)), [str(e) for e in epochs])
    ax.set_yticks(range(1, width + 1))
    ax.set_xlabel("epoch")
    ax.set_ylabel("singular value index")
    ax.set_title(f"{layer} {kind}\n{group_a} − {group_b}: {effect} (• FDR q ≤ {alpha})", fontsize=9)
    figure.colorbar(image, ax=ax, label="z" if against_null else effect)
    return figure


def save(figure, path):
    """Saves a figure; the format (PNG, PDF, SVG) follows the file extension."""
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path
