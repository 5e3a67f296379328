"""The HDF5 file of a run: writing records as training goes, and `load` to read them.

The layout is documented in ``docs/hdf5-format.md``. The writer uses h5py's single-writer
/ multiple-reader (SWMR) mode: every flush leaves the file consistent on disk, so readers
(`load`) can open it while training runs and after the writing process was killed.
"""

import contextlib
import json
import os
import warnings

import h5py
import numpy as np

from tf_autospec.pairs import group_pairs

FORMAT = "tf_autospec"
FORMAT_VERSION = 1
# Written in this order: "step" last, so that its length counts the complete rows.
RECORD_COLUMNS = ("epoch", "batch", "wall_time", "step")
_INTEGER_COLUMNS = ("epoch", "step", "batch")
# The per-kernel datasets of each gradient geometry measure, with the axis each has after
# the rows: "pairs" (the pairs of groups, `group_pairs`) or "groups".
GEOMETRY_DATASETS = {"cosine": {"cosine": "pairs", "batch_cosine": "groups"}, "overlap": {"overlap": "pairs"}}


class StoreError(Exception):
    """A run file cannot be written or read; the message names the path and the fix."""


def _extendable(parent, name, tail_shape, dtype, chunk_rows=8):
    kind = np.dtype(dtype).kind
    # Numbers get a checksum: a corrupted chunk raises on read instead of returning garbage.
    checked = {"f": {"fillvalue": np.nan, "fletcher32": True}, "i": {"fillvalue": 0, "fletcher32": True}}
    options = checked.get(kind, {})
    # HDF5 chunks need positive sizes: an empty axis (no pair of groups for one group)
    # is chunked by 1 and left extendable, which HDF5 requires of such a chunk.
    return parent.create_dataset(
        name,
        shape=(0, *tail_shape),
        maxshape=(None, *(size or None for size in tail_shape)),
        chunks=(chunk_rows, *(size or 1 for size in tail_shape)),
        dtype=dtype,
        # Small chunks and fast gzip: a flush recompresses only the chunk it completes.
        compression="gzip",
        compression_opts=1,
        shuffle=True,
        **options,
    )


def _append(dataset, rows):
    start = dataset.shape[0]
    dataset.resize(start + len(rows), axis=0)
    dataset[start:] = rows


def _open(path, mode, **kwargs):
    try:
        return h5py.File(path, mode, **kwargs)
    except FileNotFoundError:
        raise StoreError(f"No run file at '{path}'.") from None
    except OSError as error:
        text = str(error)
        if "file signature not found" in text or "truncated" in text or "bad" in text.lower():
            raise StoreError(
                f"'{path}' is not a readable HDF5 file (corrupted or truncated: {text})."
            ) from None
        if "already open for write" in text:
            raise StoreError(
                f"'{path}' is still marked open by a writer (a run that is running or was "
                f"killed). Read it with tf_autospec.load, which opens it in SWMR mode. ({text})"
            ) from None
        raise StoreError(f"Cannot open '{path}' ({text}).") from None


def open_for_reading(path):
    """Opens a run file read-only; in SWMR mode when a writer holds it (or was killed).

    A file closed normally is opened plainly, so that a truncated file fails at once
    instead of making a SWMR reader retry its reads.
    """
    try:
        return h5py.File(path, "r")
    except OSError as error:
        if "already open for write" not in str(error):
            return _open(path, "r")  # raises the clear error
    return _open(path, "r", swmr=True)


@contextlib.contextmanager
def reading(path):
    """An open run file whose read errors (bad checksums, missing objects) name the path."""
    with open_for_reading(path) as f:
        try:
            yield f
        except StoreError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as error:
            # h5py raises RuntimeError for some damaged metadata (e.g. "Error iterating
            # over attributes (incorrect metadata checksum ...)").
            raise StoreError(
                f"'{path}' is corrupted or incomplete and cannot be read "
                f"({type(error).__name__}: {error})."
            ) from None


def check_ours(file, path):
    """Raises `StoreError` unless ``file`` was written by tf_autospec in a known version."""
    if file.attrs.get("format") != FORMAT:
        raise StoreError(
            f"'{path}' is an HDF5 file but not a tf_autospec run (no format='{FORMAT}' "
            "attribute, or its attributes are corrupted). Choose another path, or pass "
            "overwrite=True to replace it."
        )
    version = int(file.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise StoreError(
            f"'{path}' has format version {version}; this tf_autospec reads up to "
            f"{FORMAT_VERSION}. Upgrade tf_autospec."
        )


class RunWriter:
    """Appends recorded steps to a run file in SWMR mode.

    Args:
        path: the ``.h5`` file.
        layout: dict with ``groups``, ``kinds``, ``kernels`` (list of dicts with ``path``,
            ``layer``, ``layer_class``, ``fan_in``, ``fan_out``, ``widths``), ``log_keys``,
            and optionally ``null_partitions`` (P, default 0), ``geometry`` (the gradient
            geometry measures recorded, a subset of ``["cosine", "overlap"]``, default
            none) and ``overlap_k`` (the ``k`` of ``overlap``).
        attributes: file attributes (versions, options, model config, metadata) as
            JSON-serialisable values; written when the file is created.
        resume: a false value to create the file; or, to append to the existing file
            (of the same layout), the record of this resume: a JSON-serialisable dict,
            added to the file's ``resumes`` attribute (see `Run.resumes`).
        keep: when resuming, ``{"records": n, "epochs": m}``: the file is cut to its
            first ``n`` recorded steps and ``m`` finished epochs before anything is
            appended (the caller tells the user what was dropped). By default every
            complete row is kept, and only the part of a row that a failed write left
            (invisible to readers) is cut.
    """

    def __init__(self, path, layout, attributes, resume, keep=None):
        self.path = path
        self.layout = layout
        try:
            if resume:
                recover(path)
                self.file = h5py.File(path, "a", libver="latest")
                # Before SWMR mode, which forbids changing attributes (and shrinking).
                _cut(self.file, keep)
                resumes = _json_attr(self.file.attrs, "resumes", [])
                self.file.attrs["resumes"] = json.dumps([*resumes, resume])
            else:
                self.file = h5py.File(path, "w", libver="latest")
                self._create(attributes)
            self.file.swmr_mode = True
        except OSError as error:
            raise StoreError(f"Cannot write the run file '{path}': {error}.") from None

    def _create(self, attributes):
        f, layout = self.file, self.layout
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["groups"] = json.dumps(list(layout["groups"]))
        f.attrs["kinds"] = json.dumps(list(layout["kinds"]))
        f.attrs["kernels"] = json.dumps([k["path"] for k in layout["kernels"]])
        partitions = layout.get("null_partitions", 0)
        f.attrs["null_partitions"] = partitions
        geometry = list(layout.get("geometry") or [])
        f.attrs["geometry"] = json.dumps(geometry)
        pairs = group_pairs(layout["groups"])
        f.attrs["pairs"] = json.dumps([[layout["groups"][a], layout["groups"][b]] for a, b in pairs])
        if "overlap" in geometry:
            f.attrs["overlap_k"] = int(layout["overlap_k"])
        axes = {"pairs": len(pairs), "groups": len(layout["groups"])}
        for key, value in attributes.items():
            f.attrs[key] = value if isinstance(value, str) else json.dumps(value)
        records = f.create_group("records")
        for column in RECORD_COLUMNS:
            _extendable(records, column, (), "i8" if column in _INTEGER_COLUMNS else "f8", 1024)
        logs = records.create_group("logs")
        for key in layout["log_keys"]:
            _extendable(logs, key, (), "f8", 1024)
        _extendable(f, "counts", (len(layout["groups"]),), "i4", 1024)
        _extendable(f, "group_loss", (len(layout["groups"]),), "f8", 1024)
        epochs = f.create_group("epochs")
        _extendable(epochs, "epoch", (), "i8", 64)
        _extendable(epochs, "logs", (), h5py.string_dtype(), 64)
        for kernel in layout["kernels"]:
            group = f.require_group(f"kernels/{kernel['path']}")
            for key in ("path", "layer", "layer_class", "fan_in", "fan_out", "reads_model_input", "overlap_k"):
                group.attrs[key] = kernel.get(key, False)
            group.attrs["rank_bound"] = min(kernel["fan_in"], kernel["fan_out"])  # of G_g
            for kind, width in kernel["widths"].items():
                _extendable(group, kind, (len(layout["groups"]), width), "f4")
                if partitions:
                    _extendable(f.require_group(f"null/{kernel['path']}"), kind,
                                (partitions, len(layout["groups"]), width), "f4")
            for name, axis in _geometry_datasets(geometry):
                _extendable(group, name, (axes[axis],), "f4")
                if partitions:
                    _extendable(f.require_group(f"null/{kernel['path']}"), name, (partitions, axes[axis]), "f4")
        if partitions:
            _extendable(f["null"], "counts", (partitions, len(layout["groups"])), "i4", 1024)
        f.flush()

    @property
    def num_records(self):
        return self.file["records/step"].shape[0]

    def append(self, records, spectra, counts, null_spectra, null_counts, group_loss, geometry=None,
               null_geometry=None):
        """Appends rows and flushes, so that every row written is on disk.

        Args:
            records: dict column -> 1-D array (``RECORD_COLUMNS`` and log keys).
            spectra: dict (kernel path, kind) -> ``[n, G, width]``.
            counts: int ``[n, G]``.
            null_spectra: dict (kernel path, kind) -> ``[n, P, G, width]``, the null
                partitions' spectra (ignored when the run has none).
            null_counts: int ``[n, P, G]``.
            group_loss: float ``[n, G]``, each group's mean training loss (not written to
                a file created before it was recorded).
            geometry: dict (kernel path, measure) -> ``[n, n_pairs]`` (``"cosine"``,
                ``"overlap"``) or ``[n, G]`` (``"batch_cosine"``), for the measures of
                the layout's ``geometry``.
            null_geometry: the same keys -> ``[n, P, ...]``, the null partitions'
                (ignored when the run has none).
        """
        f = self.file
        partitions = self.layout.get("null_partitions", 0)
        measures = _geometry_datasets(self.layout.get("geometry") or [])
        if measures and (geometry is None or (partitions and null_geometry is None)):
            raise ValueError(
                f"The layout of '{self.path}' records the gradient geometry "
                f"{list(self.layout['geometry'])}; pass geometry= (and null_geometry= with null "
                "partitions) to RunWriter.append."
            )
        try:
            for kernel in self.layout["kernels"]:
                for kind in kernel["widths"]:
                    key = (kernel["path"], kind)
                    _append(f[f"kernels/{kernel['path']}/{kind}"], spectra[key])
                    if partitions:
                        _append(f[f"null/{kernel['path']}/{kind}"], null_spectra[key])
                for name, _ in measures:
                    key = (kernel["path"], name)
                    _append(f[f"kernels/{kernel['path']}/{name}"], geometry[key])
                    if partitions:
                        _append(f[f"null/{kernel['path']}/{name}"], null_geometry[key])
            _append(f["counts"], counts)
            if "group_loss" in f:
                _append(f["group_loss"], group_loss)
            if partitions:
                _append(f["null/counts"], null_counts)
            for key in self.layout["log_keys"]:
                _append(f[f"records/logs/{key}"], records[key])
            for column in RECORD_COLUMNS:  # "step" last: readers trust rows up to its length
                _append(f[f"records/{column}"], records[column])
            f.flush()
        except OSError as error:
            raise StoreError(
                f"Writing to '{self.path}' failed ({error}); is the disk full? The file "
                f"holds every step flushed before this one ({self.num_records} rows)."
            ) from None

    def append_epoch(self, epoch, logs):
        epochs = self.file["epochs"]
        try:
            _append(epochs["logs"], np.array([json.dumps(logs)], dtype=object))
            _append(epochs["epoch"], np.array([epoch]))  # last: its length counts the rows
            self.file.flush()
        except OSError as error:
            raise StoreError(f"Writing to '{self.path}' failed ({error}); is the disk full?") from None

    def close(self):
        if self.file.id.valid:
            self.file.close()


def recover(path):
    """Makes a run file left open by a killed writer openable for appending again.

    HDF5 marks a file open for SWMR writing until it is closed; a killed writer leaves
    that mark. The file's content up to the last flush is intact and is copied into a
    fresh file that replaces it. A closed file is left as it is.
    """
    with open_for_reading(path) as f:
        check_ours(f, path)
        if not f.swmr_mode:
            return
    temporary = f"{path}.recovering"
    with _open(path, "r", swmr=True) as source, h5py.File(temporary, "w", libver="latest") as target:
        rows = {"records": source["records/step"].shape[0], "epochs": source["epochs/epoch"].shape[0]}
        for key, value in source.attrs.items():
            target.attrs[key] = value
        source.visititems(lambda name, obj: _copy(name, obj, target, rows))
    os.replace(temporary, path)


def _cut(file, keep=None):
    """Cuts every per-row dataset of an open run file to ``keep["records"]`` rows
    (``epochs/*``: ``keep["epochs"]``); by default to the rows complete in every column.

    ``records/step`` and ``epochs/epoch``, whose lengths readers trust, are cut first: a
    writer killed while cutting leaves no row that readers would see half cut.
    """
    complete = {"records": file["records/step"].shape[0], "epochs": file["epochs/epoch"].shape[0]}
    keep = {key: min(complete[key], int((keep or complete)[key])) for key in complete}
    names = []
    file.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    for name in sorted(names, key=lambda name: name not in ("records/step", "epochs/epoch")):
        rows = keep["epochs"] if name.startswith("epochs/") else keep["records"]
        if file[name].shape[0] > rows:
            file[name].resize(rows, axis=0)
    file.flush()


def annotate(path, name, value):
    """Adds a JSON attribute to a closed run file (e.g. an evaluation made after training);
    `Run.attributes` holds it.

    Args:
        path: the run file, not open for writing.
        name: the attribute; not one the writer sets.
        value: JSON-serialisable.
    """
    if name in _WRITER_ATTRIBUTES:
        raise ValueError(f"'{name}' is written by the run's writer; choose another attribute name.")
    with reading(path) as f:
        check_ours(f, path)
    try:
        with h5py.File(path, "a") as f:
            f.attrs[name] = json.dumps(value)
    except OSError as error:
        raise StoreError(f"Cannot annotate '{path}' ({error}); is it still being written?") from None


_WRITER_ATTRIBUTES = ("format", "format_version", "groups", "kinds", "kernels", "null_partitions", "options",
                      "metadata", "model_config", "created", "resumes", "geometry", "pairs", "overlap_k")


def _geometry_datasets(measures):
    """``(dataset name, axis)`` of each per-kernel dataset of the geometry ``measures``."""
    return [item for measure in measures for item in GEOMETRY_DATASETS[measure].items()]


def _copy(name, obj, target, rows):
    """Copies one object, cutting per-row datasets to the rows complete in every column."""
    if isinstance(obj, h5py.Group):
        group = target.require_group(name)
        for key, value in obj.attrs.items():
            group.attrs[key] = value
        return
    keep = rows["epochs"] if name.startswith("epochs/") else rows["records"]
    data = target.create_dataset(
        name, data=obj[:keep], maxshape=obj.maxshape, chunks=obj.chunks,
        compression=obj.compression, compression_opts=obj.compression_opts, shuffle=obj.shuffle,
        fletcher32=obj.fletcher32,
    )
    for key, value in obj.attrs.items():
        data.attrs[key] = value


def _json_attr(attrs, key, default):
    value = attrs.get(key)
    if value is None:
        return default
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


class Run:
    """A recorded run, read from its HDF5 file by `load`.

    Attributes:
        path: the file.
        groups: group names, in label order.
        layers: the tracked kernels' paths (their place in the model, see
            `tf_autospec.layer_paths`), in model order.
        kinds: the recorded kinds (subset of ``("grad", "act", "delta")``).
        records: dict column -> array, one entry per recorded step: ``"epoch"``,
            ``"step"`` (strictly increasing), ``"batch"``, ``"wall_time"`` and the
            step's loss and metric values.
        epochs: dict with ``"epoch"`` and ``"logs"`` (one dict per finished epoch,
            including validation metrics).
        metadata: the user metadata given to `AutoSpecCallback`.
        null_partitions: how many null partitions were recorded beside the groups
            (``null_spectrum``, ``null_counts``); 0 for none.
        geometry: the gradient geometry measures recorded (``cosine``, ``overlap``), a
            subset of ``("cosine", "overlap")``; ``()`` when none was (also for files
            written before geometry was recorded).
        pairs: the pairs of groups ``(name_a, name_b)`` that ``cosine`` and ``overlap``
            compare, in the order of the files' pair axis (`tf_autospec.pairs.group_pairs`).
        overlap_k: the number of top singular directions ``overlap`` compares; None
            when ``overlap`` was not recorded.
        resumes: one dict per ``fit`` appended to the file after the first (see
            ``docs/hdf5-format.md``): ``"time"``, ``"reasons"`` (``"initial_epoch"``,
            ``"optimizer_steps"``, ``"resume=True"``), the fit's first ``"epoch"`` and
            ``"step"`` as Keras numbered them, the ``"epoch_offset"`` and
            ``"step_offset"`` added to them in the file, ``"first_row"`` (its first
            record), the ``"metadata"`` it was given and, when it resumed from a
            checkpoint older than the file's last rows, ``"dropped"``: the rows it
            removed (``"rows"``, ``"steps"`` ``[first, last]``, finished ``"epochs"``).
        attributes: every file attribute (versions, options, model config, ...).

    Example:

    ```python
    run = tf_autospec.load("run.h5")
    sz = run.spectrum("dense/kernel", "grad", "SZ")        # [n_records, k]
    epochs, per_epoch = run.epoch_spectrum("dense/kernel", "grad", "SZ", "median")
    cosine = run.cosine("dense/kernel", "HC", "SZ")       # [n_records], with geometry=True
    ```
    """

    def __init__(self, path):
        self.path = path
        with reading(path) as f:
            check_ours(f, path)
            self.attributes = {key: _json_attr(f.attrs, key, None) for key in f.attrs}
            self.groups = tuple(self.attributes["groups"])
            self.kinds = tuple(self.attributes["kinds"])
            self.layers = list(self.attributes["kernels"])
            self.metadata = self.attributes.get("metadata") or {}
            self.resumes = self.attributes.get("resumes") or []
            self.null_partitions = int(self.attributes.get("null_partitions") or 0)
            self.geometry = tuple(self.attributes.get("geometry") or ())
            pairs = self.attributes.get("pairs")
            if pairs is None:  # a file written before geometry was recorded
                pairs = [[self.groups[a], self.groups[b]] for a, b in group_pairs(self.groups)]
            self.pairs = [tuple(pair) for pair in pairs]
            self.overlap_k = self.attributes.get("overlap_k")
            # Columns are written in a fixed order with "step" last: its length counts
            # the complete rows, even while a writer is appending.
            self._rows = f["records/step"].shape[0]
            self.records = {c: f[f"records/{c}"][: self._rows] for c in RECORD_COLUMNS}
            for key in f["records/logs"]:
                self.records[key] = f[f"records/logs/{key}"][: self._rows]
            self._counts = f["counts"][: self._rows]
            self.has_group_loss = "group_loss" in f
            self._group_loss = f["group_loss"][: self._rows] if self.has_group_loss else None
            self._null_counts = f["null/counts"][: self._rows] if self.null_partitions else None
            self.kernel_info = {
                layer: {k: _plain(v) for k, v in f[f"kernels/{layer}"].attrs.items()}
                for layer in self.layers
            }
            self.widths = {
                layer: {kind: f[f"kernels/{layer}/{kind}"].shape[2] for kind in self.kinds}
                for layer in self.layers
            }
            epochs = f["epochs/epoch"].shape[0]
            self.epochs = {
                "epoch": f["epochs/epoch"][:epochs],
                "logs": [json.loads(v) for v in f["epochs/logs"].asstr()[:epochs]],
            }

    def __len__(self):
        return self._rows

    def _group_index(self, group):
        if isinstance(group, (int, np.integer)) and 0 <= group < len(self.groups):
            return int(group)
        if group in self.groups:
            return self.groups.index(group)
        raise KeyError(f"Unknown group {group!r}; this run has groups {list(self.groups)}.")

    def _check(self, layer, kind):
        if layer not in self.layers:
            raise KeyError(f"Unknown layer {layer!r}; this run has {self.layers}.")
        if kind not in self.kinds:
            raise KeyError(f"Kind {kind!r} was not recorded; this run has {list(self.kinds)}.")

    def spectrum(self, layer, kind, group):
        """Singular values ``[n_records, k]`` (float32), NaN where nothing was recorded."""
        self._check(layer, kind)
        index = self._group_index(group)
        with reading(self.path) as f:
            return f[f"kernels/{layer}/{kind}"][: self._rows, index, :]

    def counts(self, group):
        """Samples of ``group`` in each recorded step's batch, ``[n_records]``."""
        return self._counts[:, self._group_index(group)]

    def group_loss(self, group):
        """The mean training loss of ``group``'s samples in each recorded step's batch,
        ``[n_records]`` (NaN where the group was absent; see `tf_autospec.group_loss`).

        Raises:
            KeyError: the file was written before the loss per group was recorded
                (`has_group_loss` is False).
        """
        if not self.has_group_loss:
            raise KeyError(f"{self.path} was written before the loss per group was recorded; "
                           "train again to have it (Run.has_group_loss is False).")
        return self._group_loss[:, self._group_index(group)]

    def epoch_group_loss(self, group, reduce="mean"):
        """`group_loss` aggregated per epoch over its recorded steps (NaN-aware):
        ``(epochs, values)``."""
        return self.per_epoch(self.group_loss(group), reduce)

    def _check_null(self):
        if not self.null_partitions:
            raise KeyError(
                f"{self.path} holds no null partitions; record with "
                "AutoSpecModel(..., null_partitions=P) (autospec run --null-partitions P)."
            )

    def null_spectrum(self, layer, kind, group):
        """``group``'s counterparts in the null partitions: singular values
        ``[n_records, P, k]`` (see `tf_autospec.null_partitions`)."""
        self._check(layer, kind)
        self._check_null()
        index = self._group_index(group)
        with reading(self.path) as f:
            return f[f"null/{layer}/{kind}"][: self._rows, :, index, :]

    def null_counts(self, group):
        """Samples of ``group``'s counterpart in each null partition, ``[n_records, P]``."""
        self._check_null()
        return self._null_counts[:, :, self._group_index(group)]

    def _geometry_dataset(self, layer, measure, a, b, null):
        """The path and the index on the last axis of the dataset that holds ``measure``
        of groups ``a`` and ``b`` (``b=None``: ``a`` with the whole batch)."""
        if layer not in self.layers:
            raise KeyError(f"Unknown layer {layer!r}; this run has {self.layers}.")
        if measure not in self.geometry:
            raise KeyError(
                f"{self.path} holds no gradient {measure} (recorded geometry: {list(self.geometry)}); "
                "train with AutoSpecModel(..., geometry=True) to record it."
            )
        if null:
            self._check_null()
        first = self._group_index(a)
        root = "null" if null else "kernels"
        if b is None:
            return f"{root}/{layer}/batch_cosine", first
        second = self._group_index(b)
        if first == second:
            fix = ", or b=None for its cosine with the whole batch's gradient" if measure == "cosine" else ""
            raise ValueError(
                f"The {measure} of group {self.groups[first]!r} with itself is not recorded; give two "
                f"different groups{fix}."
            )
        names = (self.groups[min(first, second)], self.groups[max(first, second)])
        return f"{root}/{layer}/{measure}", self.pairs.index(names)

    def _read(self, dataset, index):
        with reading(self.path) as f:
            return f[dataset][: self._rows, ..., index]

    def cosine(self, layer, a, b=None):
        """The cosine between the gradients of groups ``a`` and ``b`` of one kernel, at
        each recorded step; with ``b=None``, between ``a``'s gradient and the whole
        batch's.

        Args:
            layer: a kernel path of `layers`.
            a, b: group names or indices, in either order (``cosine(l, "SZ", "HC")`` is
                ``cosine(l, "HC", "SZ")``); two different groups.

        Returns:
            float32 ``[n_records]``; NaN where it is undefined (a group absent from the
            batch, a zero gradient).

        Raises:
            KeyError: the cosine was not recorded (`geometry`), or an unknown layer or group.
            ValueError: ``a`` and ``b`` are the same group.

        Example:

        ```python
        run.cosine("dense/kernel", "HC", "SZ")   # [n_records]
        run.cosine("dense/kernel", "SZ")         # SZ's gradient against the batch's
        ```
        """
        return self._read(*self._geometry_dataset(layer, "cosine", a, b, null=False))

    def overlap(self, layer, a, b):
        """The overlap of groups ``a`` and ``b``'s gradient subspaces of one kernel at each
        recorded step: ``||U_aᵀ U_b||_F² / k`` for the top ``k`` (`overlap_k`) left
        singular vectors ``U`` of each group's gradient, from 0 (orthogonal) to 1 (the same
        subspace).

        Args:
            layer: a kernel path of `layers`.
            a, b: two different groups, names or indices, in either order.

        Returns:
            float32 ``[n_records]``; NaN where it is undefined (a group absent from the batch).

        Raises:
            KeyError: the overlap was not recorded (`geometry`), or an unknown layer or group.
            ValueError: ``a`` and ``b`` are the same group.

        Example:

        ```python
        run.overlap("dense/kernel", "HC", "SZ")  # [n_records]
        ```
        """
        return self._read(*self._geometry_dataset(layer, "overlap", a, b, null=False))

    def null_cosine(self, layer, a, b=None):
        """`cosine` of ``a`` and ``b``'s counterparts in each null partition (see
        `tf_autospec.null_partitions`).

        Returns:
            float32 ``[n_records, P]``.

        Raises:
            KeyError: as `cosine`, or the run holds no null partitions.
        """
        return self._read(*self._geometry_dataset(layer, "cosine", a, b, null=True))

    def null_overlap(self, layer, a, b):
        """`overlap` of ``a`` and ``b``'s counterparts in each null partition.

        Returns:
            float32 ``[n_records, P]``.

        Raises:
            KeyError: as `overlap`, or the run holds no null partitions.
        """
        return self._read(*self._geometry_dataset(layer, "overlap", a, b, null=True))

    def epoch_cosine(self, layer, a, b=None, reduce="mean"):
        """`cosine` aggregated per epoch over its recorded steps (NaN-aware).

        Args:
            reduce: ``"mean"`` or ``"median"``.

        Returns:
            ``(epochs, values)``: the epoch numbers ``[E]`` and float64 ``[E]`` aggregates.
        """
        return self.per_epoch(self.cosine(layer, a, b).astype(np.float64), reduce)

    def epoch_overlap(self, layer, a, b, reduce="mean"):
        """`overlap` aggregated per epoch over its recorded steps (NaN-aware).

        Args:
            reduce: ``"mean"`` or ``"median"``.

        Returns:
            ``(epochs, values)``: the epoch numbers ``[E]`` and float64 ``[E]`` aggregates.
        """
        return self.per_epoch(self.overlap(layer, a, b).astype(np.float64), reduce)

    def epoch_spectrum(self, layer, kind, group, reduce="mean"):
        """Per-epoch aggregate of a spectrum over the epoch's recorded steps.

        Args:
            reduce: ``"mean"`` or ``"median"``, NaN-aware (absent steps are skipped).

        Returns:
            ``(epochs, values)``: the epoch numbers ``[E]`` and ``[E, k]`` aggregates.
        """
        return self.per_epoch(self.spectrum(layer, kind, group).astype(np.float64), reduce)

    def summary(self, layer, kind, group, name, reduce=None):
        """A summary (see `tf_autospec.summaries`) of each recorded step's spectrum, as
        recorded (`tf_autospec.stats` and `tf_autospec.plot` use per-sample spectra by
        default; see `tf_autospec.stats.normalized_spectrum`).

        Args:
            name: e.g. ``"spectral_norm"``, ``"effective_rank"``, ``"sigma_2"``.
            reduce: ``None`` for one value per record; ``"mean"`` or ``"median"`` for
                one per epoch, returned as ``(epochs, values)``.
        """
        from tf_autospec import summaries  # store.py stays importable with h5py and NumPy only

        values = summaries.summarize(self.spectrum(layer, kind, group), name)
        return values if reduce is None else self.per_epoch(values, reduce)

    def per_epoch(self, values, reduce):
        """Aggregates per-record ``values`` (first axis) by epoch: ``(epochs, [E, ...])``."""
        reducers = {"mean": np.nanmean, "median": np.nanmedian}
        if reduce not in reducers:
            raise ValueError(f"reduce must be one of {sorted(reducers)}; received {reduce!r}.")
        epochs = np.unique(self.records["epoch"])
        out = np.full((len(epochs), *values.shape[1:]), np.nan, dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            for i, epoch in enumerate(epochs):
                out[i] = reducers[reduce](values[self.records["epoch"] == epoch], axis=0)
        return epochs, out


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def load(path):
    """Reads a run file written by `AutoSpecCallback`, also while it is being written.

    Args:
        path: the ``.h5`` file.

    Returns:
        A `Run`.

    Raises:
        StoreError: the file is missing, not a tf_autospec run, corrupted or truncated.
    """
    return Run(os.fspath(path))
