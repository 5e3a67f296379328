"""The ``autospec`` command: run experiments; inspect, plot, compare and report recorded runs.

    autospec run [--dataset simulated_fmri] [--model mlp] [--folds 5] [--seeds 2] [-o DIR]
    autospec info RUN.h5
    autospec plot RUN.h5 [-o DIR]
    autospec compare RUN.h5 [RUN.h5 ...] [--by group] [--groups A B] [-o DIR]
    autospec report RUN.h5 [RUN.h5 ...] -o report.html
"""

import argparse
import base64
import io
import json
import os
import sys

import numpy as np

from tf_autospec.data.files import LAYOUTS


def _load(paths):
    from tf_autospec import store

    runs = []
    for path in paths:
        try:
            runs.append(store.load(path))
        except store.StoreError as error:
            raise SystemExit(f"autospec: {error}") from None
    return runs


def _progress(total, label):
    """A Keras progress bar advanced by ``update(done, total)``."""
    import keras

    bar = keras.utils.Progbar(total, unit_name=label)

    def update(done, total_now):
        bar.target = total_now  # the tests skip singular-value indices a layer does not have
        bar.update(done, finalize=done >= total_now)

    return update


def _table(rows, header):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def info(args):
    for run in _load(args.runs):
        steps = run.records["step"]
        print(f"{run.path}")
        print(f"  groups   {', '.join(run.groups)}")
        print(f"  kinds    {', '.join(run.kinds)}")
        span = f"steps {steps[0]}..{steps[-1]}, epochs {len(np.unique(run.records['epoch']))}" if len(run) else "empty"
        print(f"  records  {len(run)} ({span})")
        print(f"  versions tf_autospec {run.attributes.get('tf_autospec_version')}, TensorFlow "
              f"{run.attributes.get('tensorflow_version')}, Keras {run.attributes.get('keras_version')}")
        print(f"  metadata {json.dumps(run.metadata)}")
        for resume in run.resumes:
            print(f"  resumed  {resume['time']} at row {resume['first_row']} ({', '.join(resume['reasons'])}): "
                  f"steps +{resume['step_offset']}, epochs +{resume['epoch_offset']}")
        rows = []
        for layer in run.layers:
            k = run.kernel_info[layer]
            rows.append((layer, k.get("layer_class", ""), f"{k['fan_in']} x {k['fan_out']}",
                         ", ".join(f"{kind} {w}" for kind, w in run.widths[layer].items())))
        print(_table(rows, ("layer", "class", "matrix", "stored values")))
        if len(run):
            counts = ", ".join(f"{g} {int(np.mean(run.counts(g)))}" for g in run.groups)
            print(f"  mean samples per step: {counts}")


def _figures(runs, summary, per_epoch, groups=None):
    from tf_autospec import plot

    yield "overview", plot.overview(runs, summary=summary, per_epoch=per_epoch, groups=groups)
    for layer in runs[0].layers:
        yield f"layer_{layer.replace('/', '_')}", plot.layer_panels(runs, layer, summary=summary,
                                                                     per_epoch=per_epoch, groups=groups)


def plot_command(args):
    from tf_autospec import plot

    runs = _load(args.runs)
    os.makedirs(args.output, exist_ok=True)
    figures = list(_figures(runs, args.summary, args.per_epoch))
    for name, figure in figures:
        path = plot.save(figure, os.path.join(args.output, f"{name}.{args.format}"))
        print(path)


def _compare(runs, args):
    """Tests every pair of groups (or ``--groups A B``); returns ``(pairs, rows)``."""
    from tf_autospec import stats

    pairs = stats.group_pairs(runs[0], *(args.groups or (None, None)))
    group_a, group_b = (args.groups or (None, None))
    if len(runs) == 1:
        reference = args.reference or "null"
        print(f"1 run: testing {_pairs_text(pairs)} within it (steps as repeated measures, reference "
              f"{reference}). Pass several runs to test across runs.")
        rows = stats.within_run(runs[0], group_a, group_b, summaries=args.summaries, reference=reference,
                                block=args.block, permutations=args.permutations)
    else:
        # sigma_1 is spectral_norm: the indices start at 2.
        summaries = list(args.summaries) + [f"sigma_{i}" for i in range(2, args.indices + 1)]
        combinations = len(runs[0].layers) * len(runs[0].kinds) * len(summaries)
        rows = stats.across_runs(runs, group_a, group_b, summaries=summaries, reference=args.reference or "null",
                                 permutations=args.permutations, progress=_progress(combinations, "tests"))
    return pairs, rows


def _pairs_text(pairs):
    return ", ".join(f"{a} vs {b}" for a, b in pairs)


def _heatmaps(runs, args, pairs, rows):
    from tf_autospec import plot

    if len(runs) < 2 or not args.indices:
        return
    for group_a, group_b in pairs:
        for layer in runs[0].layers:
            for kind in runs[0].kinds:
                figure = plot.difference_heatmap(runs, layer, group_a, group_b, kind=kind,
                                                 max_index=args.indices, rows=rows)
                name = f"heatmap_{group_a}_{group_b}_{layer}_{kind}".replace("/", "_").replace(" ", "_")
                yield f"{group_a} − {group_b}: {layer} {kind}", name, figure


def _write_comparison(runs, args, pairs, rows):
    """Writes tests.csv, the overview and the heat maps, prints what the tests found;
    returns ``[(title, png path), ...]`` of the heat maps."""
    from tf_autospec import plot, report, stats

    os.makedirs(args.output, exist_ok=True)
    csv_path = os.path.join(args.output, "tests.csv")
    stats.write_csv(rows, csv_path)
    print(csv_path)
    for line in report.console_summary(runs, pairs, rows):
        print(line)
    overview = plot.overview(runs, summary=args.summaries[0])
    print(plot.save(overview, os.path.join(args.output, "overview.png")))
    heatmaps = []
    for title, name, figure in _heatmaps(runs, args, pairs, rows):
        heatmaps.append((title, plot.save(figure, os.path.join(args.output, f"{name}.png"))))
        print(heatmaps[-1][1])
    return heatmaps


def compare(args):
    runs = _load(args.runs)
    if args.by != "group":
        raise SystemExit("autospec: only --by group is supported.")
    _write_comparison(runs, args, *_compare(runs, args))


def _embedded(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _embedded_file(path):
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


def report(args):
    runs = _load(args.runs)
    args.indices = args.indices if len(runs) > 1 else 0
    _write_report(runs, args, *_compare(runs, args))


def _write_report(runs, args, pairs, rows, sections=None):
    """Writes the HTML page; ``sections`` (``[(title, base64 PNG), ...]``) are drawn here when not given."""
    from tf_autospec import report as report_module

    if sections is None:
        sections = [(name.replace("_", " "), _embedded(figure))
                    for name, figure in _figures(runs, args.summary, args.per_epoch)]
        sections += [(title, _embedded(figure)) for title, _, figure in _heatmaps(runs, args, pairs, rows)]
    report_module.write(args.output, runs, pairs, rows, sections)
    print(args.output)


_DATASET_FLAGS = {
    "simulated_fmri": {"n": "n_subjects", "effect_size": "effect_size", "group_fraction": "group_fraction",
                       "effect_pattern": "effect_pattern", "target": "target"},
    "sinusoids": {"n": "n_sequences", "differ": "differ"},
    "mnist": {"n": "n_samples", "classes": "groups", "data_dir": "data_dir"},
    "digits": {"n": "n_samples", "classes": "groups"},
    "files": {"data": "data", "phenotype": "phenotype", "group_column": "group_column", "group_names": "group_names",
              "subject_column": "subject_column", "variable": "variable", "layout": "layout",
              "subject_variable": "subject_variable", "match_by_row": "match_by_row",
              "subject_pattern": "subject_pattern", "target": "target", "bins": "bins"},
}
_MODEL_FLAGS = {"hidden": "hidden", "units": "units", "filters": "filters"}


def _given(args, flags):
    """Options of the flags given on the command line, under their Python names."""
    return {python: getattr(args, flag) for flag, python in flags.items() if getattr(args, flag) is not None}


def _experiment(args):
    from tf_autospec import experiment

    dataset_flags = set().union(*(_DATASET_FLAGS[d] for d in _DATASET_FLAGS))
    foreign = [f for f in dataset_flags - set(_DATASET_FLAGS[args.dataset]) if getattr(args, f) is not None]
    if foreign:
        raise SystemExit(f"autospec: --{foreign[0].replace('_', '-')} does not apply to --dataset {args.dataset}; "
                         f"its options are {', '.join('--' + f.replace('_', '-') for f in _DATASET_FLAGS[args.dataset])}.")
    dataset_options = _given(args, _DATASET_FLAGS[args.dataset])
    if args.dataset == "files":
        missing = [f for f in ("data", "phenotype", "group_column") if getattr(args, f) is None]
        if missing:
            raise SystemExit(f"autospec: --dataset files needs {', '.join('--' + m.replace('_', '-') for m in missing)}.")
    if "groups" in dataset_options:
        classes = dataset_options["groups"]
        dataset_options["groups"] = classes[0] if len(classes) == 1 else classes
    if args.randomized and args.top_k is None:
        raise SystemExit("autospec: --randomized computes only the largest singular values; give --top-k too.")
    autospec_options = {k: v for k, v in (("kinds", args.kinds), ("top_k", args.top_k),
                                          ("every_n_steps", args.every_n_steps)) if v is not None}
    if args.randomized:
        autospec_options["randomized"] = True
    return experiment.Experiment(
        dataset=args.dataset, model=args.model, task=args.task, grouping=args.grouping, folds=args.folds,
        seeds=args.seeds, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        dataset_options=dataset_options, model_options=_given(args, _MODEL_FLAGS),
        autospec_options=autospec_options, null_partitions=args.null_partitions)


def run_command(args):
    from tf_autospec import experiment, plot

    plan = _experiment(args)
    runs_total = plan.folds * plan.seeds
    print(f"autospec run: {plan.model} on {plan.dataset} ({plan.grouping} groups), {plan.folds} fold(s) × "
          f"{plan.seeds} seed(s) = {runs_total} runs, {plan.epochs} epochs each -> {args.output}")
    overall = _progress(runs_total, "runs done")
    try:
        paths = experiment.run_experiment(plan, args.output, overwrite=args.overwrite, verbose=args.verbose,
                                          progress=overall)
    except (FileExistsError, RuntimeError) as error:
        raise SystemExit(f"autospec: {error}") from None
    runs = _load(paths)
    args.indices = args.indices if len(runs) > 1 else 0
    pairs, rows = _compare(runs, args)
    heatmaps = _write_comparison(
        runs, argparse.Namespace(**{**vars(args), "output": os.path.join(args.output, "analysis")}), pairs, rows)
    figures = os.path.join(args.output, "figures")
    os.makedirs(figures, exist_ok=True)
    sections = []
    for name, figure in _figures(runs, args.summary, args.per_epoch):
        path = plot.save(figure, os.path.join(figures, f"{name}.png"))
        print(path)
        sections.append((name.replace("_", " "), path))
    # The report embeds the figures just written instead of drawing them again.
    sections = [(title, _embedded_file(path)) for title, path in sections + heatmaps]
    _write_report(runs, argparse.Namespace(**{**vars(args), "output": os.path.join(args.output, "report.html")}),
                  pairs, rows, sections)


def build_parser():
    parser = argparse.ArgumentParser(prog="autospec", description="Inspect, plot, compare and report AutoSpec runs.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("info", help="groups, layers, records and metadata of runs")
    p.add_argument("runs", nargs="+", metavar="RUN.h5")
    p.set_defaults(function=info)

    def figures_options(p):
        p.add_argument("--summary", default="spectral_norm", help="summary to draw (default spectral_norm)")
        p.add_argument("--per-epoch", action="store_true", help="x axis in epochs instead of steps")

    def test_options(p):
        p.add_argument("--groups", nargs=2, metavar=("A", "B"), help="the two groups (default: every pair)")
        p.add_argument("--reference", choices=["null", "runs", "steps"],
                       help="what the groups are tested against: null (default) = random groups of the same "
                       "sizes from the same subjects (needs runs recorded with null partitions); runs (across "
                       "runs) or steps (within one run) = the older tests, valid only for groups of equal size "
                       "on independent subjects")
        p.add_argument("--summaries", nargs="+", default=["spectral_norm", "nuclear_norm", "effective_rank"])
        p.add_argument("--indices", type=int, default=5,
                       help="across runs, also test singular values 2..N (σ_1 is spectral_norm); "
                       "not used within one run")
        p.add_argument("--block", type=int, default=10, help="steps per block, within-run test with --reference steps")
        p.add_argument("--permutations", type=int, default=2000)

    p = verbs.add_parser("plot", help="overview and per-layer figures")
    p.add_argument("runs", nargs="+", metavar="RUN.h5")
    p.add_argument("-o", "--output", default="autospec_figures", help="folder for the figures")
    p.add_argument("--format", default="png", choices=["png", "pdf", "svg"])
    figures_options(p)
    p.set_defaults(function=plot_command)

    p = verbs.add_parser("compare", help="test groups against each other; CSV and heat maps")
    p.add_argument("runs", nargs="+", metavar="RUN.h5")
    p.add_argument("--by", default="group", help="what to compare (group)")
    p.add_argument("-o", "--output", default="autospec_compare", help="folder for tests.csv and figures")
    test_options(p)
    p.set_defaults(function=compare)

    p = verbs.add_parser("report", help="one self-contained HTML page with figures and findings")
    p.add_argument("runs", nargs="+", metavar="RUN.h5")
    p.add_argument("-o", "--output", required=True, help="the .html file")
    figures_options(p)
    test_options(p)
    p.set_defaults(function=report)
    p = verbs.add_parser("run", help="train a reference model over folds and seeds, then analyse the runs",
                         description="Train a reference model on a dataset over k folds and several seeds (one "
                         "HDF5 file per run in OUTPUT/runs), then write the analysis: OUTPUT/analysis/tests.csv "
                         "and heat maps, OUTPUT/figures, OUTPUT/report.html. With no arguments: simulated fMRI "
                         "(two groups whose connectivity differs), the MLP on FNC features, 5 folds × 2 seeds.")
    p.add_argument("--dataset", default="simulated_fmri", choices=list(_DATASET_FLAGS))
    p.add_argument("--model", default="mlp", help="mlp, cnn2d, cnn1d, cnn3d, simple_rnn, lstm, gru or bilstm")
    p.add_argument("--task", choices=["classification", "regression", "autoencoding"],
                   help="default: classification (next-step regression for sinusoids)")
    p.add_argument("--grouping", default="dataset", choices=["dataset", "random"],
                   help="the dataset's groups, or random labels (a null control)")
    p.add_argument("--folds", type=int, default=5, help="k-fold cross-validation, stratified by group (1: no CV)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per fold")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("-o", "--output", default="autospec_run", help="folder for runs, analysis and report")
    p.add_argument("--overwrite", action="store_true", help="replace the runs of an earlier experiment there")
    p.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2], help="Keras progress output per run")
    data = p.add_argument_group("dataset options")
    data.add_argument("--n", type=int, help="subjects / sequences / samples to use")
    data.add_argument("--effect-size", type=float,
                      help="simulated_fmri: FNC difference between the groups (default 0.3; 0: no group effect)")
    data.add_argument("--group-fraction", type=float,
                      help="simulated_fmri: fraction of subjects in the second group (default 0.4: 60/40)")
    data.add_argument("--effect-pattern", choices=["domains", "one_edge"],
                      help="simulated_fmri: the group effect on every edge between two domains, or on one edge")
    data.add_argument("--differ", choices=["frequency", "phase", "amplitude"], help="sinusoids: what differs")
    data.add_argument("--classes", type=int, nargs="+",
                      help="mnist, digits: N (the first N classes are the groups) or the list of classes")
    data.add_argument("--data-dir", help="mnist: TensorFlow Datasets folder holding a prepared copy")
    data.add_argument("--data", help="files: .npz/.h5/.mat file, or folder / glob of NIfTI time courses")
    data.add_argument("--phenotype", help="files: phenotype CSV or TSV (participants.tsv), one row per subject")
    data.add_argument("--group-column", help="files: the CSV column that defines the groups")
    data.add_argument("--group-names", nargs="+", metavar="NAME",
                      help="files: declare the groups (and their order); other values are refused. Default: the "
                      "values found, refusing typos and rare values. (--groups A B picks the two groups the "
                      "analysis compares.)")
    data.add_argument("--subject-column", help="files: the CSV's subject ID column (default: the first)")
    data.add_argument("--variable", help="files: the array to use when the file holds several (struct field: ica.tc)")
    data.add_argument("--layout", choices=LAYOUTS,
                      help="files: how the array is stored; needed when its shape leaves a doubt "
                      "(see docs/datasets.md)")
    data.add_argument("--subject-variable", help="files: the array of subject IDs, if not 'subjects' or 'subject_ids'")
    data.add_argument("--match-by-row", action="store_true", default=None,
                      help="files: the data file holds no IDs; its rows are the CSV's rows, in order")
    data.add_argument("--subject-pattern",
                      help="files: regular expression whose first group is the subject ID in NIfTI file names")
    data.add_argument("--target", help="files: a CSV column to predict (default: the group); simulated_fmri: "
                      "condition (default: a trait independent of the group) or group")
    data.add_argument("--bins", type=int, help="files: quantile bins for a numeric group column (default 2)")
    sizes = p.add_argument_group("model sizes")
    sizes.add_argument("--hidden", type=int, nargs="+", help="mlp: hidden layer widths")
    sizes.add_argument("--units", type=int, help="recurrent models: state size")
    sizes.add_argument("--filters", type=int, nargs="+", help="CNNs: filters per convolution")
    spec = p.add_argument_group("AutoSpec options")
    spec.add_argument("--kinds", nargs="+", choices=["grad", "act", "delta"])
    spec.add_argument("--top-k", type=int)
    spec.add_argument("--randomized", action="store_true",
                      help="with --top-k: randomized top-k for wide layers (lower bounds; see docs/api.md)")
    spec.add_argument("--every-n-steps", type=int)
    spec.add_argument("--null-partitions", type=int, default=20,
                      help="random groups of the same sizes recorded in every run as the tests' reference "
                      "(default 20; 0: none, then test with --reference runs)")
    figures_options(p)
    test_options(p)
    p.set_defaults(function=run_command)

    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.function(args)
    except ValueError as error:
        raise SystemExit(f"autospec: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
