"""What every example does after training: figures and group tests from its HDF5 runs."""

import argparse
import os

import tf_autospec as ts
from tf_autospec import plot, report, stats


def arguments(description, **defaults):
    """Command-line options shared by the examples (small defaults; raise them for paper scale)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=defaults.get("epochs", 5))
    parser.add_argument("--seeds", type=int, default=defaults.get("seeds", 3), help="runs per model")
    parser.add_argument("--n", type=int, default=defaults.get("n"), help="samples / subjects / sequences")
    parser.add_argument("--output", default=defaults["output"], help="folder for HDF5 runs and figures")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier runs in --output")
    return parser


def analyse(paths, output, group_a, group_b, title):
    """Overview figure, per-layer panels, tests against random groups of the same sizes
    (the runs' null partitions) and difference heat maps; where the runs recorded it, the
    gradient geometry too (do the groups pull the weights the same way?), tested and drawn.

    Args:
        paths: HDF5 runs of one model (seeds or folds).
        output: folder for the figures and ``tests.csv``.
        group_a, group_b: the two groups to test.
        title: name used in the file names.

    Returns:
        The test rows of `tf_autospec.stats.across_runs` and, where recorded,
        `tf_autospec.stats.across_runs_geometry`, their families sharing the FDR level
        (`tf_autospec.stats.combine`).
    """
    runs = [ts.load(p) for p in paths]
    os.makedirs(output, exist_ok=True)
    print(plot.save(plot.overview(runs), os.path.join(output, f"{title}_overview.png")))
    rows = stats.across_runs(runs, group_a, group_b, summaries=["spectral_norm", "effective_rank"])
    if all(run.geometry for run in runs):
        rows = stats.combine(rows, stats.across_runs_geometry(runs, group_a, group_b))
        print(plot.save(plot.geometry(runs, rows=rows), os.path.join(output, f"{title}_geometry.png")))
    stats.write_csv(rows, os.path.join(output, f"{title}_tests.csv"))
    for layer in runs[0].layers:
        name = layer.replace("/", "_")
        print(plot.save(plot.difference_heatmap(runs, layer, group_a, group_b, kind="grad", max_index=5),
                        os.path.join(output, f"{title}_{name}_grad_difference.png")))
    print(f"{title}:")
    print("\n".join(report.console_summary(runs, [(group_a, group_b)], rows)))
    return rows
