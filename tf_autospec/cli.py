"""The ``autospec`` command: run experiments; inspect, plot, compare and report recorded runs.

    autospec run [--dataset simulated_fmri] [--model mlp] [--folds 5] [--seeds 2] [-o DIR]
    autospec info RUN.h5
    autospec plot RUN.h5 [-o DIR]
    autospec compare RUN.h5 [RUN.h5 ...] [--by group] [--groups A B] [-o DIR]
    autospec report RUN.h5 [RUN.h5 ...] -o report.html

TensorFlow's start-up lines stay off the screen (`tf_autospec.native_log`); training
shows one progress bar over all runs (``--verbose`` brings back Keras's logs), and every
verb ends with what it found and where it wrote it.
"""

import argparse
import collections
import io
import os
import shutil
import sys
import time

import numpy as np

from tf_autospec import native_log, wording
from tf_autospec.data.files import LAYOUTS

DEFAULT_RUN_FOLDER = "autospec_run"


def _load(paths):
    from tf_autospec import store

    runs = []
    for path in paths:
        try:
            runs.append(store.load(path))
        except store.StoreError as error:
            raise SystemExit(f"autospec: {error}") from None
    return runs


class ProgressBar:
    """One line over a long loop, redrawn in place on a terminal; elsewhere (a log file, a
    pipe) silent: the caller says what was done.

    Args:
        total: units to do.
        unit: their name, plural (``"epochs"``, ``"tests"``).
        stream: where to write (default ``sys.stdout``).
    """

    WIDTH = 24

    def __init__(self, total, unit, stream=None):
        self.total, self.unit = total, unit
        self.stream = stream or sys.stdout
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.done, self.shown = 0, 0

    def update(self, done, note="", total=None):
        """Shows ``done`` of the total (``total`` replaces it), with a note."""
        self.done, self.total = done, total or self.total
        if not self.interactive:
            return
        elapsed = time.monotonic() - self.start
        filled = int(self.WIDTH * min(done / max(self.total, 1), 1.0))
        left = f", ~{wording.duration(elapsed / done * (self.total - done))} left" if 0 < done < self.total else ""
        text = (f"{'█' * filled}{'·' * (self.WIDTH - filled)} {done}/{self.total} {self.unit}"
                f"{' · ' + note if note else ''} · {wording.duration(elapsed)}{left}")
        text = text[: shutil.get_terminal_size().columns - 1]
        self.stream.write("\r" + text.ljust(self.shown))
        self.stream.flush()
        self.shown = len(text)

    def close(self):
        """Ends the line; returns the time taken, in seconds."""
        elapsed = time.monotonic() - self.start
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()
        return elapsed


def _table(rows, header):
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def info(args):
    from tf_autospec import report

    for run in _load(args.runs):
        steps = run.records["step"]
        print(f"{run.path}")
        print(f"  groups   {', '.join(run.groups)}")
        print(f"  kinds    {', '.join(run.kinds)}")
        span = f"steps {steps[0]}..{steps[-1]}, epochs {len(np.unique(run.records['epoch']))}" if len(run) else "empty"
        print(f"  records  {len(run)} ({span})")
        print(f"  versions tf_autospec {run.attributes.get('tf_autospec_version')}, TensorFlow "
              f"{run.attributes.get('tensorflow_version')}, Keras {run.attributes.get('keras_version')}")
        metadata = report.flat_metadata(run.metadata)
        width = max(map(len, metadata), default=0)
        print("  metadata" + "".join(f"\n    {key.ljust(width)}  {value}" for key, value in metadata.items()))
        for resume in run.resumes:
            dropped = resume.get("dropped")
            lost = ""
            if dropped:
                steps = f" (steps {dropped['steps'][0]}..{dropped['steps'][1]})" if dropped["steps"] else ""
                lost = (f"; dropped {dropped['rows']} rows{steps} and finished epochs {dropped['epochs']} "
                        "recorded after the restored checkpoint")
            print(f"  resumed  {resume['time']} at row {resume['first_row']} ({', '.join(resume['reasons'])}): "
                  f"steps +{resume['step_offset']}, epochs +{resume['epoch_offset']}{lost}")
        rows = []
        for layer in run.layers:
            k = run.kernel_info[layer]
            rows.append((layer, k.get("layer_class", ""), f"{k['fan_in']} x {k['fan_out']}",
                         ", ".join(f"{kind} {w}" for kind, w in run.widths[layer].items())))
        print(_table(rows, ("layer", "class", "matrix", "stored values")))
        print(f"  geometry {_geometry_info(run)}")
        if len(run):
            counts = ", ".join(f"{g} {int(np.mean(run.counts(g)))}" for g in run.groups)
            print(f"  mean samples per step: {counts}")


def _geometry_info(run):
    """Whether and what gradient geometry a run recorded, in a line."""
    if not run.geometry:
        return "not recorded (a file from before it was, or geometry=False)"
    measures = {"cosine": "cosine of each pair's gradients and each group's with the batch's",
                "overlap": f"overlap of each pair's top-k input directions (k = {run.overlap_k}, at most a layer's "
                           "smaller fan: kernel_info[layer]['overlap_k'])"}
    pairs = f" ({', '.join(f'{a}-{b}' for a, b in run.pairs)})" if run.pairs else " (one group: no pair)"
    return "; ".join(measures[m] for m in run.geometry) + pairs


# A figure as drawn: its file name (no extension), its title, its caption and the matplotlib Figure.
Drawn = collections.namedtuple("Drawn", "name title caption figure")


def _file_name(*parts):
    return "_".join(parts).replace("/", "_").replace(" ", "_")


def _scale(args):
    return "linear" if args.linear else "auto"


def _spectra_figures(runs, args, layers=True):
    """The overview and, with ``layers``, one figure per layer."""
    from tf_autospec import plot, report

    caption = report.spectra_caption(runs, args.summary, args.per_epoch, runs[0].kinds)
    options = dict(summary=args.summary, per_epoch=args.per_epoch, scale=_scale(args))
    yield Drawn("overview", "Every layer, per group", caption, plot.overview(runs, **options))
    for layer in runs[0].layers if layers else ():
        yield Drawn(_file_name("layer", layer), layer, caption, plot.layer_panels(runs, layer, **options))


def _difference_maps(pairs, rows):
    """Where each pair of groups differs, across runs (tests per epoch)."""
    from tf_autospec import plot, report

    if rows and "epoch" in rows[0]:
        for a, b in pairs:
            yield Drawn(_file_name("differences", a, b), f"Where {a} and {b} differ",
                        report.findings_map_caption(rows, a, b), plot.findings_map(rows, a, b))


def _geometry_figure(runs, rows=None):
    """The gradient geometry of every layer, where the runs recorded it; with test
    ``rows``, dots where they are significant."""
    from tf_autospec import plot, report

    if all(run.geometry for run in runs):
        yield Drawn("geometry", "Do the groups pull the weights the same way?", report.geometry_caption(runs, rows),
                    plot.geometry(runs, rows=rows))


def _loss_figure(runs, args):
    from tf_autospec import plot, report

    loss = plot.loss_curves(runs, scale=_scale(args))
    if loss is not None:
        yield Drawn("loss", "Loss", report.loss_caption(runs), loss)


def _heatmaps(runs, args, pairs, rows):
    from tf_autospec import plot

    if len(runs) < 2 or not args.indices:
        return
    for group_a, group_b in pairs:
        for layer in runs[0].layers:
            for kind in runs[0].kinds:
                figure = plot.difference_heatmap(runs, layer, group_a, group_b, kind=kind,
                                                 max_index=args.indices, rows=rows)
                yield Drawn(_file_name("heatmap", group_a, group_b, layer, kind),
                            f"{group_a} − {group_b}: {layer} · {kind}", "", figure)


def _rendered(drawn, folder=None):
    """The figure as a `report.ReportFigure`; also written to ``folder/<name>.png`` when given."""
    from tf_autospec import plot, report

    buffer = io.BytesIO()
    plot.save(drawn.figure, buffer)
    if folder:
        with open(os.path.join(folder, f"{drawn.name}.png"), "wb") as f:
            f.write(buffer.getvalue())
    return report.ReportFigure(drawn.title, buffer.getvalue())


def _sections(drawn, folder=None):
    """A `report.ReportSection` per drawn figure (also written into ``folder``)."""
    from tf_autospec import report

    return [report.ReportSection(d.title, d.caption, [_rendered(d, folder)]) for d in drawn]


def _gallery(title, caption, drawn, folder=None):
    """Drawn figures under one title and caption (also written into ``folder``), or nothing."""
    from tf_autospec import report

    figures = [_rendered(d, folder) for d in drawn]
    return [report.ReportSection(title, caption, figures)] if figures else []


def plot_command(args):
    from tf_autospec import plot

    runs = _load(args.runs)
    os.makedirs(args.output, exist_ok=True)
    for drawn in [*_spectra_figures(runs, args), *_geometry_figure(runs)]:
        print(plot.save(drawn.figure, os.path.join(args.output, f"{drawn.name}.{args.format}")))


def _compare(runs, args):
    """Tests every pair of groups (or ``--groups A B``); returns ``(pairs, rows)``."""
    from tf_autospec import report, stats

    pairs = stats.group_pairs(runs[0], *(args.groups or (None, None)))
    group_a, group_b = (args.groups or (None, None))
    if len(runs) == 1:
        reference = args.reference or "null"
        print(f"1 run: testing {report.pairs_text(pairs)} within it (steps as repeated measures, reference "
              f"{reference}). Pass several runs to test across runs.")
        rows = stats.within_run(runs[0], group_a, group_b, summaries=args.summaries, reference=reference,
                                block=args.block, permutations=args.permutations)
    else:
        # sigma_1 is spectral_norm: the indices start at 2.
        summaries = list(args.summaries) + [f"sigma_{i}" for i in range(2, args.indices + 1)]
        bar = ProgressBar(len(runs[0].layers) * len(runs[0].kinds) * len(summaries), "tests")
        rows = stats.across_runs(runs, group_a, group_b, summaries=summaries, reference=args.reference or "null",
                                 permutations=args.permutations,
                                 progress=lambda done, total: bar.update(done, total=total))
        bar.close()
    return pairs, _with_geometry(runs, args, rows, group_a, group_b)


def _with_geometry(runs, args, rows, group_a, group_b):
    """The spectra's tests and, where the runs recorded the gradient geometry with null
    partitions, the geometry's, in one table whose families share the FDR level."""
    from tf_autospec import stats

    if args.no_geometry or not all(run.geometry for run in runs):
        return rows
    partitions = min(run.null_partitions for run in runs)
    if partitions < stats.MINIMUM_NULL_PARTITIONS:
        print(f"gradient geometry not tested: it is tested against random groups of the same sizes, and these runs "
              f"hold {partitions} null partitions (at least {stats.MINIMUM_NULL_PARTITIONS} needed; 20 "
              "recommended).")
        return rows
    if len(runs) == 1:
        geometry = stats.within_run_geometry(runs[0], group_a, group_b)
    else:
        geometry = stats.across_runs_geometry(runs, group_a, group_b)
    return stats.combine(rows, geometry)


def _write_tests(rows, path):
    from tf_autospec import stats

    stats.write_csv(rows, path)
    return path


def compare(args):
    from tf_autospec import report

    runs = _load(args.runs)
    if args.by != "group":
        raise SystemExit("autospec: only --by group is supported.")
    pairs, rows = _compare(runs, args)
    os.makedirs(args.output, exist_ok=True)
    tests = _write_tests(rows, os.path.join(args.output, "tests.csv"))
    drawn = [*_spectra_figures(runs, args, layers=False), *_geometry_figure(runs, rows),
             *_difference_maps(pairs, rows), *_heatmaps(runs, args, pairs, rows)]
    for d in drawn:
        _rendered(d, args.output)
    print("\n".join(report.console_summary(runs, pairs, rows)))
    print(f"written  {tests} and {len(drawn)} figures in {args.output}")


def _write_report(runs, args, pairs, rows, path, tests_csv, figures=None, heatmaps=None):
    """Draws the figures and writes the HTML page.

    Args:
        path: the page.
        tests_csv: the table of every test, linked from the page.
        figures: a folder that also gets the figures as PNG files, or None.
        heatmaps: a folder that also gets the heat maps, or None.
    """
    from tf_autospec import report

    lead = _sections([*_difference_maps(pairs, rows), *_loss_figure(runs, args)], figures)
    overview, *layers = _spectra_figures(runs, args)
    sections = (_sections([overview, *_geometry_figure(runs, rows)], figures)
                + _gallery("Each layer", overview.caption, layers, figures)
                + _gallery("Differences per singular value", report.heatmap_caption(
                    rows, *(pairs[0] if len(pairs) == 1 else ("the first group", "the second"))),
                    _heatmaps(runs, args, pairs, rows), heatmaps))
    link = os.path.relpath(tests_csv, os.path.dirname(os.path.abspath(path)))
    report.write(path, runs, pairs, rows, sections, lead=lead, tests_csv=link)
    return path


def report_command(args):
    from tf_autospec import report

    runs = _load(args.runs)
    args.indices = args.indices if len(runs) > 1 else 0
    pairs, rows = _compare(runs, args)
    tests = _write_tests(rows, f"{os.path.splitext(args.output)[0]}_tests.csv")
    _write_report(runs, args, pairs, rows, args.output, tests)
    print("\n".join(report.console_summary(runs, pairs, rows)))
    print(f"report   {args.output} (every test: {tests})")


_DATASET_FLAGS = {
    "simulated_fmri": {"n": "n_subjects", "effect_size": "effect_size", "group_fraction": "group_fraction",
                       "effect_pattern": "effect_pattern", "target": "target", "conflict": "conflict",
                       "condition_effect": "condition_effect"},
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


def _count(k, noun):
    return f"{k} {noun}{'s' if k != 1 else ''}"


def _train(plan, args):
    """Trains every run, with one progress bar over them all (or Keras's logs with
    ``--verbose``); returns ``(paths, seconds)``."""
    from tf_autospec import experiment

    bar = None if args.verbose else ProgressBar(plan.folds * plan.seeds * plan.epochs, "epochs")

    def progress(done, total, run, logs):
        loss = f", loss {logs['loss']:.3g}" if "loss" in logs else ""
        bar.update(done, f"{run}{loss}")
        if not bar.interactive and done % plan.epochs == 0:
            print(f"  {run}: trained{loss}", flush=True)

    start = time.monotonic()
    try:
        paths = experiment.run_experiment(plan, args.output, overwrite=args.overwrite, verbose=args.verbose,
                                          progress=progress if bar else None)
    except (FileExistsError, RuntimeError) as error:
        raise SystemExit(f"autospec: {error}") from None
    finally:
        if bar:
            bar.close()
    return paths, time.monotonic() - start


def run_command(args):
    from tf_autospec import experiment, report

    import tensorflow as tf

    with native_log.startup_lines_filtered():
        tf.config.list_physical_devices()  # the CUDA probe's lines, on machines without a GPU
    plan = _experiment(args)
    args.output = args.output or experiment.fresh_output_folder(DEFAULT_RUN_FOLDER)
    print(f"autospec run: {plan.model} on {plan.dataset} ({plan.grouping} groups), "
          f"{_count(plan.folds, 'fold')} × {_count(plan.seeds, 'seed')} = {_count(plan.folds * plan.seeds, 'run')}, "
          f"{plan.epochs} epochs each (folds, seeds and epochs numbered from 0) -> {args.output}")
    paths, seconds = _train(plan, args)
    runs = _load(paths)
    args.indices = args.indices if len(runs) > 1 else 0
    pairs, rows = _compare(runs, args)
    analysis, figures = os.path.join(args.output, "analysis"), os.path.join(args.output, "figures")
    os.makedirs(analysis, exist_ok=True)
    os.makedirs(figures, exist_ok=True)
    tests = _write_tests(rows, os.path.join(analysis, "tests.csv"))
    page = _write_report(runs, args, pairs, rows, os.path.join(args.output, "report.html"), tests, figures, analysis)
    print(f"\n{_count(len(runs), 'run')} done in {wording.duration(seconds)}: {args.output}")
    print("\n".join(report.console_summary(runs, pairs, rows)))
    print(f"report   {page}\n         beside it: figures/, runs/ and analysis/ (tests.csv: every test; heat maps)")


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows every option's default after its description (where it has one
    and does not say it already)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default in (None, False, argparse.SUPPRESS) or "default" in text
                or isinstance(action, argparse._HelpAction)):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def build_parser():
    parser = argparse.ArgumentParser(prog="autospec", formatter_class=HelpFormatter,
                                     description="Run AutoSpec experiments; inspect, plot, compare and report runs. "
                                     "Each verb has its own --help.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name, help_text, description=None):
        return verbs.add_parser(name, help=help_text, description=description or help_text.capitalize() + ".",
                                formatter_class=HelpFormatter)

    def runs_argument(p):
        p.add_argument("runs", nargs="+", metavar="RUN.h5", help="run files written by AutoSpecCallback")

    def figures_options(p):
        p.add_argument("--summary", default="spectral_norm",
                       help="summary of the spectra to draw: spectral_norm, nuclear_norm, frobenius_norm, "
                       "effective_rank, stable_rank, top_energy or sigma_<i>")
        p.add_argument("--per-epoch", action="store_true",
                       help="x axis in epochs (each run's mean over the epoch's steps) instead of steps")
        p.add_argument("--linear", action="store_true",
                       help="linear y axes everywhere (default: logarithmic where the values span more than two "
                       "decades)")

    def test_options(p):
        p.add_argument("--groups", nargs=2, metavar=("A", "B"), help="the two groups to compare (default: every pair)")
        p.add_argument("--reference", choices=["null", "runs", "steps"],
                       help="what the groups are tested against: null (the default) = random groups of the same "
                       "sizes from the same subjects (needs runs recorded with null partitions); runs (across "
                       "runs) or steps (within one run) = the older tests, valid only for groups of equal size "
                       "on independent subjects")
        p.add_argument("--summaries", nargs="+", default=["spectral_norm", "nuclear_norm", "effective_rank"],
                       metavar="NAME", help="summaries of the spectra to test")
        p.add_argument("--indices", type=int, default=5,
                       help="across runs, also test singular values 2..N (σ_1 is spectral_norm) and draw their heat "
                       "maps; 0: none; not used within one run")
        p.add_argument("--block", type=int, default=10, help="steps per block, within-run test with --reference steps")
        p.add_argument("--permutations", type=int, default=2000,
                       help="random sign flips of the older tests (--reference runs or steps)")
        p.add_argument("--no-geometry", action="store_true",
                       help="do not test the gradient geometry (by default tested, against random groups of the same "
                       "sizes, where the runs recorded it with null partitions)")

    p = verb("info", "groups, layers, records and metadata of runs")
    runs_argument(p)
    p.set_defaults(function=info)

    p = verb("plot", "overview, per-layer and gradient geometry figures of runs")
    runs_argument(p)
    p.add_argument("-o", "--output", default="autospec_figures", help="folder for the figures")
    p.add_argument("--format", default="png", choices=["png", "pdf", "svg"], help="file format of the figures")
    figures_options(p)
    p.set_defaults(function=plot_command)

    p = verb("compare", "test groups against each other: tests.csv, where they differ, heat maps")
    runs_argument(p)
    p.add_argument("--by", default="group", help="what to compare (group)")
    p.add_argument("-o", "--output", default="autospec_compare", help="folder for tests.csv and the figures")
    figures_options(p)
    test_options(p)
    p.set_defaults(function=compare)

    p = verb("report", "one self-contained HTML page that leads with what was found",
             "One self-contained HTML page: what was compared and what differs, the figures with captions, "
             "the findings table and the runs; the full table of tests beside it (REPORT_tests.csv).")
    runs_argument(p)
    p.add_argument("-o", "--output", required=True, help="the .html file to write")
    figures_options(p)
    test_options(p)
    p.set_defaults(function=report_command)

    p = verb("run", "train a reference model over folds and seeds, then analyse the runs",
             "Train a reference model on a dataset over k folds and several seeds (one HDF5 file per run in "
             "OUTPUT/runs), then write the analysis: OUTPUT/report.html, OUTPUT/figures and "
             "OUTPUT/analysis/tests.csv with the heat maps. With no arguments: simulated fMRI (two groups whose "
             "connectivity differs), the MLP on FNC features, 5 folds × 2 seeds. Folds, seeds and epochs are "
             "numbered from 0 everywhere: file names, metadata, figures, tests.csv.")
    p.add_argument("--dataset", default="simulated_fmri", choices=list(_DATASET_FLAGS), help="the data")
    p.add_argument("--model", default="mlp", help="mlp, cnn2d, cnn1d, cnn3d, simple_rnn, lstm, gru or bilstm")
    p.add_argument("--task", choices=["classification", "regression", "autoencoding"],
                   help="what the model learns (default: classification; next-step regression for sinusoids)")
    p.add_argument("--grouping", default="dataset", choices=["dataset", "random"],
                   help="the dataset's groups, or random labels of the same sizes (a null control)")
    p.add_argument("--folds", type=int, default=5, help="k-fold cross-validation, stratified by group (1: no CV)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per fold")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of each run")
    p.add_argument("--batch-size", type=int, default=32, help="samples per training step")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's learning rate")
    p.add_argument("-o", "--output", help=f"folder for runs, analysis and report (default: a new dated folder in "
                   f"{DEFAULT_RUN_FOLDER}/); one that holds runs is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace the runs of an earlier experiment in --output")
    p.add_argument("--verbose", type=int, nargs="?", const=2, default=0, choices=[0, 1, 2], metavar="LEVEL",
                   help="Keras's training logs instead of the one progress bar: 2 (a line per epoch, what "
                   "--verbose alone gives) or 1 (a bar per epoch); Keras counts epochs from 1 there")
    data = p.add_argument_group("dataset options")
    data.add_argument("--n", type=int, help="subjects / sequences / samples to use (default: the dataset's)")
    data.add_argument("--effect-size", type=float,
                      help="simulated_fmri: FNC difference between the groups (default 0.3; 0: no group effect)")
    data.add_argument("--group-fraction", type=float,
                      help="simulated_fmri: fraction of subjects in the second group (default 0.4: 60/40)")
    data.add_argument("--effect-pattern", choices=["domains", "one_edge"],
                      help="simulated_fmri: the group effect on every edge between two domains (the default), "
                      "or on one edge")
    data.add_argument("--conflict", type=float,
                      help="simulated_fmri: a planted gradient conflict, the correlation the condition adds between "
                      "two other domains in HC and removes in SZ, so that the groups' gradients oppose (default 0: "
                      "none; up to about 0.48; see docs/datasets.md)")
    data.add_argument("--condition-effect", type=float,
                      help="simulated_fmri: the condition's effect on FNC shared by both groups (default 0.3; "
                      "weaker makes a conflict clearer)")
    data.add_argument("--differ", choices=["frequency", "phase", "amplitude"],
                      help="sinusoids: what differs between the groups (default frequency)")
    data.add_argument("--classes", type=int, nargs="+",
                      help="mnist, digits: N (the first N classes are the groups) or the list of classes "
                      "(default: all ten)")
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
                      "condition (the default: a trait independent of the group) or group")
    data.add_argument("--bins", type=int, help="files: quantile bins for a numeric group column (default 2)")
    sizes = p.add_argument_group("model sizes")
    sizes.add_argument("--hidden", type=int, nargs="+", help="mlp: hidden layer widths (default 512 256)")
    sizes.add_argument("--units", type=int, help="recurrent models: state size (default: the model's)")
    sizes.add_argument("--filters", type=int, nargs="+", help="CNNs: filters per convolution (default: the model's)")
    spec = p.add_argument_group("AutoSpec options")
    spec.add_argument("--kinds", nargs="+", choices=["grad", "act", "delta"],
                      help="spectra to record (default: all three)")
    spec.add_argument("--top-k", type=int, help="record only the k largest singular values (default: all)")
    spec.add_argument("--randomized", action="store_true",
                      help="with --top-k: randomized top-k for wide layers (lower bounds; see docs/api.md)")
    spec.add_argument("--every-n-steps", type=int, help="record every n-th training step (default 1: every step)")
    spec.add_argument("--null-partitions", type=int, default=20,
                      help="random groups of the same sizes recorded in every run as the tests' reference "
                      "(0: none, then test with --reference runs)")
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
