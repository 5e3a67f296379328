"""`AutoSpecCallback`: saves every recorded step of an `AutoSpecModel` to HDF5."""

import concurrent.futures
import json
import os
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_autospec import geometry, serialization, store, summaries, tracking
from tf_autospec.pairs import group_pairs


def _layout(model, log_keys):
    return {
        "groups": list(model.groups),
        "kinds": list(model.autospec_kinds),
        "kernels": [
            {
                "path": k.path,
                "layer": k.layer.name,
                "layer_class": type(k.layer).__name__,
                "fan_in": k.fan_in,
                "fan_out": k.fan_out,
                "widths": dict(k.widths),
                "reads_model_input": k.path in model.input_kernels,
                "overlap_k": geometry.overlap_width(model.autospec_overlap_k, k.fan_in, k.fan_out)
                if "overlap" in model.autospec_geometry else 0,
            }
            for k in model.tracked_kernels
        ],
        "log_keys": list(log_keys),
        "null_partitions": model.autospec_null_partitions,
        "geometry": list(model.autospec_geometry),
        "overlap_k": model.autospec_overlap_k,
    }


def _options(model):
    """The model's AutoSpec options, as the run file stores them (without the groups,
    stored on their own)."""
    options = serialization.options_config(model)
    del options["groups"]
    return options


def _without_geometry(options):
    """``options`` without the geometry's, which a resume compares on their own."""
    return {key: value for key, value in options.items() if key not in ("geometry", "overlap_k")}


def _model_config(model):
    try:
        return model.to_json()
    except Exception as error:  # subclassed models without get_config
        return json.dumps({"unavailable": f"{type(error).__name__}: {error}"})


def _is_chief(strategy):
    """Whether this process is the one that writes (the chief of a multi-worker cluster)."""
    try:
        return bool(strategy.extended.should_checkpoint)
    except NotImplementedError:  # strategies with a single writer
        return True


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


class AutoSpecCallback(keras.callbacks.Callback):
    """Writes the group spectra of every recorded step to an HDF5 file.

    Steps are buffered in memory and written (and flushed to disk) at the end of every
    epoch, at the end of training, and at least every ``flush_every_seconds``, by a
    background thread so that training does not wait for compression and I/O. The file
    stays readable while training runs (`tf_autospec.load`) and after the process is
    killed: it then holds every flushed step.

    A ``fit`` appends to a file that already holds a run only when it continues that
    run: it starts at ``initial_epoch > 0`` (given to ``fit``, or restored by
    `keras.callbacks.BackupAndRestore`), its optimizer has already taken steps (a second
    ``fit`` of the same model, a restored checkpoint), or ``resume=True``. Its steps and
    epochs are then numbered after the file's, and the file records the resume
    (`Run.resumes`). A ``fit`` restored from a checkpoint older than the file's last rows
    (its optimizer starts at a step the file already holds: those rows were recorded by
    a fit that did not finish, from a state that is lost) first removes the rows and
    finished epochs recorded after that checkpoint, with an `AutoSpecWarning` and a
    ``"dropped"`` entry in its resume record, then records its steps and epochs as Keras
    numbers them. A fresh ``fit`` on such a file raises `StoreError` before its first
    step and leaves the file as it was. A file that holds nothing (no recorded step, no
    finished epoch: its writer died before the first flush) is replaced.

    Args:
        path: the ``.h5`` file to write.
        flush_every_seconds: longest time between two flushes (default 30).
        metadata: JSON-serialisable dict stored with the run (subject fold, seed, site...).
            A resuming fit keeps the file's metadata: give the same, or none.
        overwrite: replace an existing file, whatever it holds (a run of this model or
            another, or a file that is not a tf_autospec run) instead of appending to it
            or refusing the fit.
        resume: append to the run in ``path`` even though this ``fit`` starts afresh
            (epoch 0, optimizer at step 0); creates the file if there is none. Not
            together with ``overwrite``.
        tensorboard_dir: if given, also write TensorBoard scalars there: per tracked
            kernel and group, the ``grad`` spectrum's top singular value, effective rank
            and nuclear norm (``<kernel>/<group>/top``, ``.../effective_rank``,
            ``.../nuclear_norm``) and, with ``geometry``, the group's gradient cosine with
            the batch's (``<kernel>/<group>/batch_cosine``); per pair of groups, their
            gradients' cosine and subspace overlap (``<kernel>/<a>~<b>/cosine``,
            ``<kernel>/<a>~<b>/overlap``).

    Example:

    ```python
    model.fit(x, y, groups=labels, epochs=10,
              callbacks=[tf_autospec.AutoSpecCallback("run.h5", metadata={"fold": 0})])
    run = tf_autospec.load("run.h5")
    ```
    """

    def __init__(self, path, flush_every_seconds=30.0, metadata=None, overwrite=False, resume=False,
                 tensorboard_dir=None):
        super().__init__()
        self.path = os.fspath(path)
        if flush_every_seconds <= 0:
            raise ValueError(f"flush_every_seconds must be > 0; received {flush_every_seconds}.")
        self.flush_every_seconds = float(flush_every_seconds)
        self.metadata = dict(metadata or {})
        try:
            json.dumps(self.metadata)
        except TypeError as error:
            raise ValueError(f"metadata must be JSON-serialisable: {error}.") from None
        if resume and overwrite:
            raise ValueError(
                "AutoSpecCallback: resume=True appends to the file and overwrite=True replaces "
                "it; pass one of them."
            )
        self.overwrite = overwrite
        self.resume = resume
        self.tensorboard_dir = tensorboard_dir
        if tensorboard_dir is not None:
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                raise ImportError(
                    "tensorboard_dir needs the tensorboard package: "
                    "pip install 'tf_autospec[tensorboard]'."
                ) from None
        self._writer = None
        self._pending = []
        self._tensorboard = None
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="autospec-writer")
        self._in_flight = None
        self._writes = True

    # ------------------------------------------------------------ lifecycle

    def on_train_begin(self, logs=None):
        from tf_autospec.model import AutoSpecModel

        if not isinstance(self.model, AutoSpecModel):
            raise TypeError(
                "AutoSpecCallback records an AutoSpecModel; this model is a "
                f"{type(self.model).__name__}. Use tf_autospec.wrap(model, groups=...)."
            )
        # Under a multi-worker strategy every worker holds the same global spectra; only
        # the chief writes them, so that workers never touch one file together.
        self._writes = _is_chief(self.model.distribute_strategy)
        if not self._writes:
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise store.StoreError(
                f"Cannot write the run file '{self.path}': folder '{directory}' does not exist."
            )
        if not os.access(directory, os.W_OK) or (
            os.path.exists(self.path) and not os.access(self.path, os.W_OK)
        ):
            raise store.StoreError(
                f"Cannot write the run file '{self.path}': permission denied. Choose a "
                "writable path."
            )
        self._abandon_previous_fit()
        self._first_epoch = None
        self._last_flush = time.monotonic()
        if self.tensorboard_dir and self._tensorboard is None:
            self._tensorboard = tf.summary.create_file_writer(self.tensorboard_dir)

    def _abandon_previous_fit(self):
        """Closes what an interrupted earlier ``fit`` left (its steps are in the file)."""
        try:
            self._wait()
        except Exception as error:
            warnings.warn(f"AutoSpecCallback: the last write of an interrupted fit failed: {error}")
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._pending = []

    def _start(self, first_epoch):
        """Decides, before the fit's first step, whether it creates the file or continues
        the file's run; refuses a fresh fit on a file that holds a run.

        Runs when the first epoch begins rather than in ``on_train_begin``: by then
        `keras.callbacks.BackupAndRestore` has restored the epoch and the optimizer step.
        A fit restored from a checkpoint older than the file's last rows drops those rows
        here, before its first step (`_restart_point`, `_drop_abandoned`).
        """
        self._first_epoch = first_epoch
        self._first_step = int(self.model.optimizer.iterations.numpy())
        self._step_offset = self._epoch_offset = 0
        self._resume = None
        self._file_without_geometry = False
        if self.overwrite or not os.path.exists(self.path):
            return
        run = store.load(self.path)
        reasons = [
            reason
            for reason, applies in (
                ("initial_epoch", first_epoch > 0),
                ("optimizer_steps", self._first_step > 0),
                ("resume=True", self.resume),
            )
            if applies
        ]
        if not reasons and not len(run) and not len(run.epochs["epoch"]):
            return  # its writer died before the first flush: nothing to keep
        self._check_same_layout(run)
        if not reasons:
            raise store.StoreError(
                f"'{self.path}' already holds a run ({_contents(run)}), and this fit starts "
                f"a new one (epoch {first_epoch}, optimizer at step {self._first_step}) instead of "
                "continuing it. Write to a new path, pass AutoSpecCallback(..., overwrite=True) "
                "to replace the file, or pass AutoSpecCallback(..., resume=True) to append this "
                "fit to that run (its steps and epochs are then numbered after the file's)."
            )
        self._check_same_metadata(run, reasons)
        restart = self._restart_point(run, first_epoch)
        if restart is None:
            if len(run):
                self._step_offset = max(0, int(run.records["step"][-1]) + 1 - self._first_step)
            epochs = np.concatenate([run.records["epoch"], run.epochs["epoch"]])
            if len(epochs):
                self._epoch_offset = max(0, int(epochs.max()) + 1 - first_epoch)
        else:
            self._step_offset, self._epoch_offset = restart["step_offset"], restart["epoch_offset"]
        self._resume = {
            "time": _now(),
            "reasons": reasons,
            "epoch": first_epoch,
            "step": self._first_step,
            "epoch_offset": self._epoch_offset,
            "step_offset": self._step_offset,
            "first_row": len(run) if restart is None else restart["keep"]["records"],
            "metadata": self.metadata,
        }
        if restart is not None:
            self._drop_abandoned(run, restart)

    def _restart_point(self, run, first_epoch):
        """Where a fit restored from a checkpoint continues the file, when the file holds
        rows recorded after that checkpoint (by a fit that did not finish); else None.

        The optimizer of such a fit starts at a step > 0 that the file has already
        recorded. Only the file's last rows numbered with one step offset are compared
        (their optimizer steps are the stored steps less that offset): rows appended
        before them by a fresh optimizer (``resume=True``) are another optimizer's.

        Returns:
            dict with ``keep`` (``{"records": n, "epochs": m}``: the rows before the
            restore point), and the ``step_offset`` and ``epoch_offset`` of this fit:
            those of the rows it replaces, so that it numbers its steps and epochs as
            the abandoned fit did (0 and 0 for a run never renumbered).
        """
        if self._first_step <= 0 or not len(run):
            return None
        step_offsets, epoch_offsets = _row_offsets(run)
        steps, epochs, finished = run.records["step"], run.records["epoch"], run.epochs["epoch"]
        others = np.flatnonzero(step_offsets != step_offsets[-1])
        start = int(others[-1]) + 1 if len(others) else 0
        later = np.flatnonzero(steps[start:] - step_offsets[-1] >= self._first_step)
        if not len(later):
            # No recorded step after the restore point, but under a sparse schedule the
            # abandoned fit may still have finished an epoch (its row) after it.
            epoch_offset = int(epoch_offsets[-1])
            abandoned = np.flatnonzero(finished >= first_epoch + epoch_offset) if first_epoch > 0 else []
            if not len(abandoned):
                return None  # the file ends before this fit's first step: it continues it
            return {"keep": {"records": len(run), "epochs": int(abandoned[0])},
                    "step_offset": int(step_offsets[-1]), "epoch_offset": epoch_offset}
        cut = start + int(later[0])
        step_offset, epoch_offset = int(step_offsets[cut]), int(epoch_offsets[cut])
        if cut:  # kept rows stay below this fit's first step
            step_offset = max(step_offset, int(steps[cut - 1]) + 1 - self._first_step)
        first_finished_dropped = first_epoch + epoch_offset
        if cut and int(epochs[:cut].max()) > first_epoch + epoch_offset:
            # The fit numbers its epochs from before the checkpoint's (initial_epoch not
            # given): the epochs it abandoned are those of the dropped rows, and this fit
            # numbers its own after the kept ones, as any other resume.
            first_finished_dropped = int(epochs[cut])
            kept = np.concatenate([epochs[:cut], finished[finished < first_finished_dropped]])
            epoch_offset = int(kept.max()) + 1 - first_epoch
        later_finished = np.flatnonzero(finished >= first_finished_dropped)  # a suffix: epochs increase
        keep_finished = int(later_finished[0]) if len(later_finished) else len(finished)
        return {
            "keep": {"records": cut, "epochs": keep_finished},
            "step_offset": step_offset,
            "epoch_offset": epoch_offset,
        }

    def _drop_abandoned(self, run, restart):
        """Cuts the rows recorded after the checkpoint this fit resumes from, before its
        first step, records what was dropped in the resume record, and says so."""
        keep = restart["keep"]
        steps, finished = run.records["step"][keep["records"]:], run.epochs["epoch"][keep["epochs"]:]
        self._resume["dropped"] = {
            "rows": int(len(steps)),
            "steps": [int(steps[0]), int(steps[-1])] if len(steps) else [],
            "epochs": [int(e) for e in finished],
        }
        self._writer = store.RunWriter(self.path, None, {}, resume=self._resume, keep=keep)
        self._writer.layout = self._continued_layout()
        rows = (f"{len(steps)} recorded step{'s' * (len(steps) != 1)} (steps {steps[0]}..{steps[-1]})"
                if len(steps) else "no recorded step")
        epochs = (f"{len(finished)} finished epoch{'s' * (len(finished) != 1)} "
                  f"({', '.join(str(int(e)) for e in finished)})" if len(finished) else "no finished epoch")
        tracking.warn(
            f"AutoSpecCallback: dropped {rows} and {epochs} from '{self.path}': they were recorded "
            f"after the checkpoint this fit resumes from (optimizer at step {self._first_step}, epoch "
            f"{self._first_epoch}), by a fit that did not "
            "finish, and the state that produced them is lost. This fit records from that checkpoint on; "
            "the file's resumes attribute lists what was dropped (Run.resumes)."
        )

    def _continued_layout(self):
        """The layout of the rows this fit appends to the file it continues."""
        layout = _layout(self.model, list(self._writer.file["records/logs"]))
        if self._file_without_geometry:
            layout["geometry"] = []
        return layout

    def _check_same_layout(self, run):
        expected = _layout(self.model, [])
        if not run.geometry and expected["geometry"]:
            # A file from before the geometry was recorded (or with geometry=False): its
            # spectra continue; the geometry of the new steps has nowhere to go.
            self._file_without_geometry = True
            expected["geometry"] = []
            tracking.warn(
                f"AutoSpecCallback: '{self.path}' holds no gradient geometry (written before it was recorded, "
                "or with geometry=False). This fit appends its spectra to it without the geometry of its "
                "steps (model.last_spectra still has it). To keep the geometry, write to a new file."
            )
        # The geometry is compared from what the file records (``k`` only where both record
        # the overlap), not from its options, so that the error names what differs.
        both_overlap = "overlap" in run.geometry and "overlap" in expected["geometry"]
        stored = {
            "groups": list(run.groups),
            "kinds": list(run.kinds),
            "kernels": [(k, run.kernel_info[k]["fan_in"], run.kernel_info[k]["fan_out"]) for k in run.layers],
            "widths": run.widths,
            "null_partitions": run.null_partitions,
            "geometry": list(run.geometry),
            "overlap_k": run.overlap_k if both_overlap else None,
            # Files written before an option existed were recorded with its default.
            "options": _without_geometry({**serialization.LATER_OPTION_DEFAULTS,
                                          **(run.attributes.get("options") or {})}),
        }
        current = {
            "groups": expected["groups"],
            "kinds": expected["kinds"],
            "kernels": [(k["path"], k["fan_in"], k["fan_out"]) for k in expected["kernels"]],
            "widths": {k["path"]: k["widths"] for k in expected["kernels"]},
            "null_partitions": expected["null_partitions"],
            "geometry": expected["geometry"],
            "overlap_k": expected["overlap_k"] if both_overlap else None,
            "options": _without_geometry(json.loads(json.dumps(_options(self.model)))),
        }
        differences = [
            f"{key}: file has {stored[key]}, model has {current[key]}"
            for key in stored
            if stored[key] != current[key]
        ]
        if differences:
            geometry = ""
            if stored["geometry"] != current["geometry"] or stored["overlap_k"] != current["overlap_k"]:
                k = f", overlap_k={run.overlap_k}" if run.overlap_k is not None else ""
                geometry = (
                    f" To continue it, record the file's gradient geometry: AutoSpecModel(..., "
                    f"geometry={tuple(stored['geometry'])!r}{k})." if stored["geometry"] else
                    " To continue it, record no gradient geometry: AutoSpecModel(..., geometry=False)."
                )
            raise store.StoreError(
                f"'{self.path}' holds a run of another model or group set ("
                + "; ".join(differences)
                + "). Write to a new path, or pass AutoSpecCallback(..., overwrite=True) "
                "to replace the file." + geometry
            )

    def _check_same_metadata(self, run, reasons):
        # Compared as stored: JSON turns tuples into lists and keys into strings.
        given = json.loads(json.dumps(self.metadata))
        if not given or given == run.metadata:
            return
        keys = sorted(
            key for key in given.keys() | run.metadata.keys()
            if key not in given or key not in run.metadata or given[key] != run.metadata[key]
        )
        raise store.StoreError(
            f"'{self.path}' holds a run with metadata {json.dumps(run.metadata)}; this fit "
            f"continues it ({', '.join(reasons)}) with metadata {json.dumps(given)}, which "
            f"differs in {keys}. A run keeps the metadata it was created with: pass the same "
            "metadata or none (metadata=None keeps the file's), write to a new path, or pass "
            "AutoSpecCallback(..., overwrite=True) to replace the file."
        )

    def on_epoch_begin(self, epoch, logs=None):
        if not self._writes:
            return
        self._epoch = epoch
        if self._first_epoch is None:
            self._start(epoch)

    def on_train_batch_end(self, batch, logs=None):
        if not self._writes:
            return
        spectra = self.model.last_spectra
        if spectra is not None:
            logs = {k: _float(v) for k, v in (logs or {}).items()}
            self._pending.append((self._epoch, spectra.step, batch, time.time(), logs, spectra))
        if time.monotonic() - self._last_flush >= self.flush_every_seconds:
            self._submit_pending()

    def on_epoch_end(self, epoch, logs=None):
        if not self._writes:
            return
        epoch_logs = {k: _float(v) for k, v in (logs or {}).items()}
        self._submit_pending()
        if self._writer is None:  # no step recorded yet: the epoch's logs still go in
            self._open_writer(sorted(k for k in epoch_logs if not k.startswith("val_")))
        self._submit(self._writer.append_epoch, epoch + self._epoch_offset, epoch_logs)
        self._wait()  # the epoch's row is on disk before the next epoch starts (a kill loses none)

    def on_train_end(self, logs=None):
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        if self._tensorboard is not None:
            self._tensorboard.flush()

    # -------------------------------------------------------------- writing

    def _open_writer(self, log_keys):
        if self._resume is not None:
            self._writer = store.RunWriter(self.path, None, {}, resume=self._resume)
            self._writer.layout = self._continued_layout()
            return
        attributes = {
            "tf_autospec_version": _version(),
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
            "options": _options(self.model),
            "null_partitions_origin": self.model.null_partitions_origin,
            "target_is_group": self.model.target_is_group,
            "model_config": _model_config(self.model),
            "metadata": self.metadata,
            "created": _now(),
        }
        self._writer = store.RunWriter(self.path, _layout(self.model, log_keys), attributes, resume=False)

    def flush(self):
        """Writes the buffered steps to the file, flushes it to disk, and waits for it."""
        self._submit_pending()
        self._wait()

    def _wait(self):
        """Waits for the write in flight; re-raises its error here, in the training thread."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            try:
                in_flight.result()
            except Exception:
                # Training stops on this error: leave the flushed rows in a closed file.
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
                raise

    def _submit(self, function, *args):
        self._wait()
        self._in_flight = self._io.submit(function, *args)

    def _submit_pending(self):
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        if self._writer is None:
            self._wait()
            self._open_writer(sorted(self._pending[0][4]))
        pending, self._pending = self._pending, []
        layout = self._writer.layout
        records = {
            "epoch": np.array([p[0] for p in pending], dtype=np.int64) + self._epoch_offset,
            "step": np.array([p[1] for p in pending], dtype=np.int64) + self._step_offset,
            "batch": np.array([p[2] for p in pending], dtype=np.int64),
            "wall_time": np.array([p[3] for p in pending], dtype=np.float64),
        }
        for key in layout["log_keys"]:
            records[key] = np.array([p[4].get(key, np.nan) for p in pending], dtype=np.float64)
        steps = [p[5] for p in pending]
        spectra = {key: np.stack([s.spectra[key] for s in steps]) for key in steps[0].spectra}
        null_spectra = {key: np.stack([s.null_spectra[key] for s in steps]) for key in steps[0].null_spectra}
        counts = np.stack([s.counts for s in steps])
        null_counts = np.stack([s.null_counts for s in steps])
        group_loss = np.stack([s.group_loss for s in steps])
        geometry = {key: np.stack([s.geometry[key] for s in steps]) for key in steps[0].geometry}
        null_geometry = {key: np.stack([s.null_geometry[key] for s in steps]) for key in steps[0].null_geometry}
        self._submit(self._write, self._writer, records, spectra, counts, null_spectra, null_counts, group_loss,
                     geometry, null_geometry)

    def _write(self, writer, records, spectra, counts, null_spectra, null_counts, group_loss, geometry,
               null_geometry):
        writer.append(records, spectra, counts, null_spectra, null_counts, group_loss, geometry, null_geometry)
        if self._tensorboard is not None:
            self._write_tensorboard(records["step"], spectra, geometry)

    def _write_tensorboard(self, steps, spectra, geometry):
        groups = self.model.groups
        pairs = [f"{groups[a]}~{groups[b]}" for a, b in group_pairs(groups)]
        with self._tensorboard.as_default():
            for (kernel, measure), values in geometry.items():
                # Per group (batch_cosine [n, G]) as the spectra's scalars; per pair ([n, n_pairs]).
                names = groups if measure == "batch_cosine" else pairs
                for column, name in enumerate(names):
                    for step, value in zip(steps, values[:, column]):
                        if np.isfinite(value):
                            tf.summary.scalar(f"{kernel}/{name}/{measure}", value, step=int(step))
            for (kernel, kind), values in spectra.items():
                if kind != "grad":
                    continue
                scalars = {
                    "top": summaries.top(values),
                    "effective_rank": summaries.effective_rank(values),
                    "nuclear_norm": summaries.nuclear_norm(values),
                }
                for name, per_step in scalars.items():
                    for g, group in enumerate(groups):
                        for step, value in zip(steps, per_step[:, g]):
                            if np.isfinite(value):
                                tf.summary.scalar(f"{kernel}/{group}/{name}", value, step=int(step))


def _row_offsets(run):
    """The step and epoch offsets each recorded row was stored with (from ``resumes``)."""
    steps, epochs = np.zeros(len(run), dtype=np.int64), np.zeros(len(run), dtype=np.int64)
    for resume in run.resumes:  # in order: a later fit rewrote every row from its first_row on
        first = int(resume.get("first_row", len(run)))
        steps[first:] = int(resume.get("step_offset", 0))
        epochs[first:] = int(resume.get("epoch_offset", 0))
    return steps, epochs


def _contents(run):
    """What a run file holds, in words, for error messages."""
    steps, epochs = run.records["step"], run.records["epoch"]
    span = f": steps {steps[0]}..{steps[-1]}, epochs {epochs[0]}..{epochs[-1]}" if len(run) else ""
    return (
        f"{len(run)} recorded steps{span}; {len(run.epochs['epoch'])} finished epochs; "
        f"metadata {json.dumps(run.metadata)}; created {run.attributes.get('created')}"
    )


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _version():
    from tf_autospec import __version__

    return __version__
