"""Experiments: a reference model trained on a dataset over CV folds and seeds, one HDF5
file per run (what ``autospec run`` does before its analysis).

Example:
    >>> paths = run_experiment(Experiment(dataset="simulated_fmri", model="mlp", folds=5, seeds=2),
    ...                        output="autospec_run")
"""

import contextlib
import dataclasses
import datetime
import glob
import json
import logging
import os

import numpy as np

from tf_autospec import data as datasets
from tf_autospec.groups import follows_the_target
from tf_autospec.data.files import KIND_AXES

DATASETS = ("simulated_fmri", "sinusoids", "mnist", "digits", "files")
GROUPINGS = ("dataset", "random")
_SEQUENCE_MODELS = ("simple_rnn", "lstm", "gru", "bilstm", "cnn1d")


@dataclasses.dataclass
class Experiment:
    """What to train and how.

    Attributes:
        dataset: one of `DATASETS`.
        model: a reference architecture (`models.ARCHITECTURES`).
        task: ``"classification"``, ``"regression"`` or ``"autoencoding"``; default: the
            dataset's own (classification; next-step regression for sinusoids).
        grouping: ``"dataset"`` (the dataset's groups) or ``"random"`` (the same group
            sizes with memberships shuffled: a null control).
        folds: k of k-fold cross-validation (stratified by group); 1 trains on everything.
        seeds: number of seeds (0, 1, ...) per fold.
        epochs, batch_size, learning_rate: training.
        dataset_options: keyword arguments of the dataset's loader (``n_subjects``,
            ``effect_size``, ``data_dir``, ``data``, ``phenotype``, ``group_column``...).
        model_options: size arguments of the architecture (``hidden``, ``units``...).
        autospec_options: `AutoSpecModel` options (``kinds``, ``top_k``, ``randomized``, ``every_n_steps``).
        null_partitions: null partitions recorded in every run (`tf_autospec.null_partitions`),
            drawn once for the whole dataset so that every fold and seed sees the same ones;
            the reference of the tests (``docs/analysis.md``). 0 records none.
    """

    dataset: str = "simulated_fmri"
    model: str = "mlp"
    task: str = None
    grouping: str = "dataset"
    folds: int = 5
    seeds: int = 2
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    dataset_options: dict = dataclasses.field(default_factory=dict)
    model_options: dict = dataclasses.field(default_factory=dict)
    autospec_options: dict = dataclasses.field(default_factory=dict)
    null_partitions: int = 20


def load_dataset(name, task=None, **options):
    """The `GroupedData` of a dataset of `DATASETS` for a task (see `Experiment`)."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {DATASETS}.")
    if name == "sinusoids":
        options.setdefault("task", "classification" if task == "classification" else "next_step")
    loader = {"simulated_fmri": datasets.simulated_fmri, "sinusoids": datasets.sinusoids,
              "mnist": datasets.mnist, "digits": datasets.digits, "files": datasets.from_files}[name]
    try:
        return loader(**options)
    except TypeError as error:
        raise ValueError(f"Dataset {name!r} does not take these options {sorted(options)} ({error}).") from None


def model_inputs(model, x, info):
    """The dataset's inputs in the shape the architecture takes.

    MLPs see ICA time courses and FNC matrices as FNC features
    (`tf_autospec.data.fnc_features`); sequence models see images row by row; 2D CNNs see
    two-dimensional samples (FNC matrices, time × components) as one-channel images.
    """
    sample = x.shape[1:]
    if model == "mlp" and info.get("kind") in ("timecourses", "fnc"):
        return datasets.fnc_features(x)
    if model in _SEQUENCE_MODELS:
        if len(sample) == 3 and sample[-1] == 1:
            return x[..., 0]  # images as sequences of rows
        if len(sample) != 2:
            raise ValueError(f"Model {model!r} takes sequences [time, features]; these inputs are {sample}.")
    if model == "cnn2d":
        if len(sample) == 2:
            return x[..., None]
        if len(sample) != 3:
            raise ValueError(f"Model 'cnn2d' takes images [height, width, channels]; these inputs are {sample}.")
    if model == "cnn3d":
        if len(sample) == 3:
            return x[..., None]
        if len(sample) != 4:
            raise ValueError(f"Model 'cnn3d' takes volumes [x, y, z, channels]; these inputs are {sample}.")
    return x


def _targets(task, dataset, x, model):
    """Targets, the head's output count and whether the head predicts every time step."""
    if task == "autoencoding":
        return x, 0, False
    y = dataset.y
    if task == "classification":
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise ValueError(f"The {dataset.info['dataset']} targets are not class labels; use task regression.")
        return y, int(y.max()) + 1, False
    y = y.astype(np.float32)
    if y.ndim == 1:
        return y[:, None], 1, False
    if model in _SEQUENCE_MODELS[:-1] and y.ndim == 3:
        return y, y.shape[-1], True
    flat = y.reshape(len(y), -1)
    return flat, flat.shape[1], False


def shuffled_groups(labels, seed=12345):
    """A null grouping: the same group sizes and the same samples in no group (-1), with
    the memberships of the grouped samples shuffled."""
    labels = np.array(labels, copy=True)
    grouped = labels >= 0
    labels[grouped] = np.random.default_rng(seed).permutation(labels[grouped])
    return labels


def stratified_folds(labels, folds, seed=0):
    """Fold index of each sample: every group's samples spread evenly over the folds."""
    fold = np.empty(len(labels), dtype=np.int32)
    rng = np.random.default_rng(seed)
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        fold[members] = np.arange(len(members)) % folds
    return fold


def _batches(x, y, labels, batch_size, seed):
    """Shuffled full batches. A partial last batch is dropped: the loss is a batch mean, so
    its few samples would weigh batch_size / remainder times more than in the other steps."""
    import tensorflow as tf

    if len(x) < batch_size:
        raise ValueError(f"The training set has {len(x)} samples, fewer than one batch of {batch_size}; "
                         "lower the batch size.")
    dataset = tf.data.Dataset.from_tensor_slices(({"x": x, "group": labels}, y))
    return dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(batch_size, drop_remainder=True)


def _default_task(dataset):
    return "regression" if dataset == "sinusoids" else "classification"


def _json_safe(info):
    return {k: v for k, v in info.items() if k != "subjects" and isinstance(v, (str, int, float, bool, list))}


def _shape(array):
    return "×".join(map(str, np.shape(array)))


def data_summary(experiment, dataset, x, y, labels, group_names, task, fold_of):
    """What an experiment trains on, in a few lines: N, the data's shape and how it was read,
    the target (and whether it is the groups themselves), the groups with their sizes, and
    the design (folds vary the training samples, seeds re-train on the same ones).

    Args:
        experiment: the `Experiment`.
        dataset: its `GroupedData`, as loaded.
        x, y, labels, group_names: the model's inputs and targets, the group labels and names
            used (shuffled ones for ``grouping="random"``).
        task: the task trained.
        fold_of: each sample's fold (-1 everywhere with one fold).

    Returns:
        The summary, lines joined with newlines.
    """
    info, n = dataset.info, len(x)
    shape = _shape(dataset.x) + (f" {info['kind']} {KIND_AXES[info['kind']]}" if "kind" in info else "")
    lines = [f"data     {experiment.dataset}: N = {n}, {info.get('read_as', shape)}"]
    if "matched" in info:
        lines.append(f"         subjects matched {info['matched']}")
    if x.shape != dataset.x.shape:
        features = " (FNC features)" if x.ndim == 2 and info.get("kind") in ("timecourses", "fnc") else ""
        lines.append(f"         {experiment.model} input {_shape(x)}{features}")
    name = f"{info['target']!r}" if "target" in info else "the dataset's targets"
    if task == "autoencoding":
        lines.append("target   the inputs themselves (autoencoding)")
    elif task == "regression":
        values = "one value" if np.size(y[0]) == 1 else f"{_shape(y[0])} values"
        lines.append(f"target   {name}, regression ({values} per sample)")
    elif np.array_equal(y, labels):
        lines.append(f"target   the groups themselves{f' ({name})' if 'target' in info else ''}: "
                     f"classification into {len(group_names)} classes; their gradients differ by construction, "
                     "so no finding will be claimed")
    elif follows_the_target(y, labels):
        lines.append(f"target   {name}, classification into {int(y.max()) + 1} classes, and the groups follow "
                     "from it; their gradients differ by construction, so no finding will be claimed")
    else:
        lines.append(f"target   {name}, not the groups: classification into {int(y.max()) + 1} classes")
    sizes = ", ".join(f"{group} {int((labels == k).sum())}" for k, group in enumerate(group_names))
    ungrouped = int((labels < 0).sum())
    lines.append(f"groups   {sizes}" + (f"; {ungrouped} in no group (trained on, in no spectrum)" if ungrouped else "")
                 + ("; random memberships (a null control)" if experiment.grouping == "random" else ""))
    folds, seeds = experiment.folds, experiment.seeds
    runs = f"{_count(folds, 'fold')} × {_count(seeds, 'seed')} = {_count(folds * seeds, 'run')}"
    if folds == 1:
        split = f"no cross-validation, every run trains on all {n} samples"
    else:
        train = sorted({int((fold_of != fold).sum()) for fold in range(folds)})
        span = str(train[0]) if len(train) == 1 else f"{train[0]}-{train[-1]}"
        split = f"folds vary the training samples ({span} per fold, the rest validate)"
    lines.append(f"design   {runs}; {split}; seeds re-train on the same samples (new initialisation and batch order)")
    return "\n".join(lines)


def _count(k, noun):
    return f"{k} {noun}{'s' if k != 1 else ''}"


def _target_name(task, info):
    if task == "autoencoding":
        return "the inputs (autoencoding)"
    return str(info.get("target") or {"digits": "the digit", "mnist": "the digit"}.get(info.get("dataset"), "y"))


class _NotRetracing(logging.Filter):
    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _retracing_expected():
    """Every run predicts with a new model, so TensorFlow traces its predict function
    again in every run, as it should; its warning that this is expensive says nothing here."""
    import tensorflow as tf

    quiet = _NotRetracing()
    tf.get_logger().addFilter(quiet)
    try:
        yield
    finally:
        tf.get_logger().removeFilter(quiet)


def evaluation_by_group(model, x, y, labels, group_names, task, split):
    """How well the model does on each group's samples: accuracy for classification, mean
    squared error otherwise.

    Returns:
        dict with ``metric``, ``split``, ``overall`` and ``by_group`` (``{name: value}``,
        NaN for a group with no sample).
    """
    with _retracing_expected():
        predictions = np.asarray(model.predict(x, verbose=0))
    if task == "classification":
        metric, per_sample = "accuracy", (np.argmax(predictions, axis=-1) == y).astype(float)
    else:
        metric = "mean squared error"
        per_sample = np.mean(((predictions - y) ** 2).reshape(len(y), -1), axis=1)
    by_group = {g: float(np.mean(per_sample[labels == k])) if np.any(labels == k) else float("nan")
                for k, g in enumerate(group_names)}
    return {"metric": metric, "split": split, "overall": float(np.mean(per_sample)), "by_group": by_group}


def fresh_output_folder(parent="autospec_run", now=None):
    """A new folder name for an experiment's results: ``parent/YYYY-MM-DD_HH-MM-SS``, with
    ``_2``, ``_3``... appended when it exists already (it is not created).

    Args:
        parent: the folder that holds the experiments.
        now: the time to name it after (default: now).

    Returns:
        The path.
    """
    base = os.path.join(parent, (now or datetime.datetime.now()).strftime("%Y-%m-%d_%H-%M-%S"))
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}_{k}"
    return path


def run_label(fold, seed):
    """How runs are named to people: ``"fold 0, seed 1"``, numbered from 0 as in their
    file names (``fold0_seed1.h5``) and metadata."""
    return f"fold {fold}, seed {seed}"


def run_experiment(experiment, output, overwrite=False, verbose=1, progress=None, summary=print):
    """Train every fold × seed of an experiment, one HDF5 file per run.

    Args:
        experiment: an `Experiment`.
        output: folder; run files go to ``output/runs/fold{f}_seed{s}.h5`` (folds and
            seeds numbered from 0, as in the metadata).
        overwrite: replace run files from an earlier experiment in the same folder.
        verbose: Keras ``fit`` verbosity for each run (0: silent); above 0, each run
            is announced first.
        progress: called as ``progress(epochs_done, epochs_total, run, logs)`` at the end
            of every epoch of every run: ``run`` names the run (`run_label`), ``logs``
            are the epoch's Keras logs (``loss``...).
        summary: called with `data_summary` once the data are loaded, before training
            (default: printed, whatever ``verbose``); None says nothing.

    Returns:
        The paths of the run files.
    """
    import keras

    from tf_autospec import models
    import tf_autospec as ts
    from tf_autospec import store

    if experiment.grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}; received {experiment.grouping!r}.")
    if experiment.folds < 1 or experiment.seeds < 1:
        raise ValueError(f"folds and seeds must be at least 1; received {experiment.folds} and {experiment.seeds}.")
    run_folder = os.path.join(output, "runs")
    earlier = glob.glob(os.path.join(run_folder, "fold*_seed*.h5"))
    if earlier and not overwrite:
        raise FileExistsError(f"{run_folder} already holds runs; choose another output folder or pass "
                              "overwrite=True (--overwrite) to replace them.")
    task = experiment.task or _default_task(experiment.dataset)
    dataset = load_dataset(experiment.dataset, task=task, **experiment.dataset_options)
    labels, group_names = dataset.labels, dataset.group_names
    if experiment.grouping == "random":
        group_names = tuple(f"R{i + 1}" for i in range(len(group_names)))
        labels = shuffled_groups(labels)
    x = model_inputs(experiment.model, dataset.x, dataset.info)
    y, outputs, per_step = _targets(task, dataset, x, experiment.model)
    model_options = dict(experiment.model_options)
    if per_step:
        model_options.setdefault("per_step", True)
    fold_of = stratified_folds(labels, experiment.folds) if experiment.folds > 1 else np.full(len(x), -1)
    # Drawn once, before the folds: every run sees the same random groups of the same subjects.
    partitioned = ts.null_partitions(labels, experiment.null_partitions)
    options = {**experiment.autospec_options, "null_partitions": experiment.null_partitions}
    target_is_group = task == "classification" and bool(follows_the_target(y, labels))
    if summary:
        summary(data_summary(experiment, dataset, x, y, labels, group_names, task, fold_of))
    runs = [(fold, seed) for fold in range(experiment.folds) for seed in range(experiment.seeds)]
    # Only now that the data and options are known to be good: a smaller experiment must
    # not leave runs of the earlier one behind.
    for path in earlier:
        os.remove(path)
    os.makedirs(run_folder, exist_ok=True)
    paths = []
    for done, (fold, seed) in enumerate(runs):
        train, held_out = fold_of != fold, fold_of == fold
        keras.backend.clear_session()  # the same layer names in every run, so the runs can be compared
        keras.utils.set_random_seed(seed)
        model = models.build(experiment.model, group_names, x.shape[1:], task=task, outputs=outputs,
                             optimizer=keras.optimizers.Adam(experiment.learning_rate),
                             options=options, **model_options)
        path = os.path.join(run_folder, f"fold{fold}_seed{seed}.h5")
        metadata = dict(dataset=experiment.dataset, model=experiment.model, task=task,
                        grouping=experiment.grouping, fold=fold, folds=experiment.folds, seed=seed,
                        epochs=experiment.epochs, batch_size=experiment.batch_size,
                        learning_rate=experiment.learning_rate, model_options=json.dumps(model_options),
                        autospec_options=json.dumps(experiment.autospec_options),
                        dataset_options=json.dumps(experiment.dataset_options, default=str),
                        data=json.dumps(_json_safe(dataset.info)), target=_target_name(task, dataset.info),
                        target_is_group=bool(target_is_group),
                        group_sizes={g: int(np.sum(labels[train] == k)) for k, g in enumerate(group_names)},
                        group_sizes_all={g: int(np.sum(labels == k)) for k, g in enumerate(group_names)})
        if verbose:
            print(f"\nrun {done + 1}/{len(runs)}: {run_label(fold, seed)} ({experiment.model} on {experiment.dataset})")
        validation = None
        if held_out.any():
            validation = ({"x": x[held_out], "group": labels[held_out]}, y[held_out])
        callbacks = [ts.AutoSpecCallback(path, metadata=metadata, overwrite=True)]
        if progress:
            first, total, label = done * experiment.epochs, len(runs) * experiment.epochs, run_label(fold, seed)
            callbacks.append(keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs, first=first, label=label: progress(first + epoch + 1, total, label,
                                                                                    logs or {})))
        model.fit(_batches(x[train], y[train], partitioned[train], experiment.batch_size, seed),
                  epochs=experiment.epochs, shuffle=False, validation_data=validation, verbose=verbose,
                  callbacks=callbacks)
        evaluated = held_out if held_out.any() else train
        store.annotate(path, "evaluation", evaluation_by_group(
            model, x[evaluated], y[evaluated], labels[evaluated], group_names, task,
            "validation" if held_out.any() else "training"))
        paths.append(path)
    return paths
