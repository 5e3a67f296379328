"""Users' own neuroimaging data: ICA time courses or FNC matrices plus a phenotype table.

Supported data files:

* ``.npz``, ``.h5``/``.hdf5``: one array ``[subjects, time, components]`` (time courses),
  ``[subjects, C, C]`` (FNC matrices) or ``[subjects, features]``; optionally an array
  ``subjects`` (or ``subject_ids``) with each row's subject ID.
* ``.mat`` (GIFT output; MATLAB v5 through SciPy, v7.3 through h5py): the same, e.g. GIFT's
  ``fnc_corrs_all`` (``[subjects, sessions, C, C]``: the sessions are averaged); subject IDs
  as numbers, a cell array of strings or a char matrix. A struct's fields are named with
  dots (``ica.tc``).
* NIfTI time-course files (GIFT's ``*_sub001_timecourses_ica_s1_.nii``), one per subject:
  a folder or a glob pattern; needs ``pip install tf_autospec[nifti]`` (nibabel). Each file's
  subject ID is read from its name with ``subject_pattern``.

Nothing is guessed in silence: how the array was read (``info["read_as"]``) and how its
subjects were matched to the phenotype (``info["matched"]``) are returned, and a shape, a
subject list or a group column that could be read in two ways is refused with the option
that settles it. The rules are in `from_files` and docs/datasets.md.

The phenotype table (CSV, or tab-separated such as BIDS ``participants.tsv``) has a header
row, one row per subject, a subject ID column and any number of columns to group by
(diagnosis, sex, site...). Numeric columns with more than ``max_levels`` distinct values
(age, scores) are binned into ``bins`` quantile bins.
"""

import collections
import csv
import glob
import io
import math
import os
import re
import warnings
import zipfile

import numpy as np

from tf_autospec.data.simulated import GroupedData
from tf_autospec.groups import looks_like_number

_MISSING = {"", "na", "nan", "n/a", "none", "null"}
_ID_VARIABLES = ("subjects", "subject_ids")
LAYOUTS = ("time_components", "components_time", "fnc", "features")
KIND_AXES = {"timecourses": "[subjects, time, components]", "fnc": "[subjects, C, C] FNC matrices",
             "features": "[subjects, features]"}  # the axes of each ``info["kind"]``
_KIND = {"time_components": "timecourses", "components_time": "timecourses", "fnc": "fnc", "features": "features"}
_AXES = {**{layout: KIND_AXES[kind] for layout, kind in _KIND.items()},
         "components_time": "[subjects, components, time]"}


class DataFileError(ValueError):
    """A data or phenotype file cannot be used; the message says why and what to do."""


def _text(value):
    return str(value.decode() if isinstance(value, bytes) else value).strip()


def _normalize_id(value):
    """"sub-007", "007", "7" and 7.0 name the same subject."""
    text = re.sub(r"^sub[-_]?", "", _text(value))
    if re.fullmatch(r"\d+(\.0+)?", text):
        return str(int(float(text)))
    return text


def _few(values, k=5):
    """The first ``k`` values, for a message."""
    return f"{list(values)[:k]}{' ...' if len(values) > k else ''}"


def _check_unique(ids, where):
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise DataFileError(f"{where} holds subjects {repeated[:5]} more than once (several sessions?); keep one "
                            "entry per subject, or average them, so that no subject is in two folds.")


def _arrays_from_npz(path):
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _matlab_text(dataset):
    """A MATLAB v7.3 char array (UTF-16 codes) as one string per row."""
    codes = np.atleast_2d(dataset[()].T)  # column-major: h5py sees the axes reversed
    return ["".join(map(chr, row)).rstrip("\0 ") for row in codes]


def _matlab_value(file, item):
    """A MATLAB v7.3 variable: numbers with their axes restored, a char array or a cell
    array of strings (subject IDs) as an array of strings."""
    kind = item.attrs.get("MATLAB_class", b"")
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind == "char":
        return np.array(_matlab_text(item))
    if kind == "cell":
        cells = item[()].T.ravel()
        if not all(file[ref].attrs.get("MATLAB_class", b"") in (b"char", "char") for ref in cells):
            raise DataFileError(f"Cell array {item.name!r} holds something other than text; store subject IDs "
                                "as a cell array of strings, a char matrix or numbers.")
        return np.array(["".join(_matlab_text(file[ref])) for ref in cells])
    value = item[()]
    return value.T if isinstance(value, np.ndarray) else value


def _arrays_from_hdf5(path, matlab):
    """Every dataset, named by its path; MATLAB struct fields (HDF5 groups) with dots, as in MATLAB."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        def visit(name, item):
            if isinstance(item, h5py.Dataset) and not name.startswith("#"):
                arrays[name.replace("/", ".") if matlab else name] = _matlab_value(f, item) if matlab else item[()]

        f.visititems(visit)
    return arrays


def _add_matlab_v5(arrays, name, value):
    """A MATLAB v5 variable as SciPy reads it: a 1 × 1 struct as one entry per field
    (``name.field``), a cell array (of subject IDs) as an array of its elements."""
    if value.dtype.names and value.size == 1:
        for field in value.dtype.names:
            _add_matlab_v5(arrays, f"{name}.{field}", value.ravel()[0][field])
    elif value.dtype == object:
        arrays[name] = np.array([np.asarray(v).ravel()[0] for v in value.ravel()])
    else:
        arrays[name] = value


def _arrays_from_mat(path):
    from scipy import io as matlab_io

    try:
        contents = matlab_io.loadmat(path)
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        return _arrays_from_hdf5(path, matlab=True)
    except ValueError as error:
        raise DataFileError(f"{path} is not a readable MATLAB file ({error}).") from None
    arrays = {}
    for name, value in contents.items():
        if not name.startswith("__"):
            _add_matlab_v5(arrays, name, value)
    return arrays


def _read_arrays(path):
    extension = os.path.splitext(path)[1].lower()
    readers = {".npz": _arrays_from_npz, ".h5": lambda p: _arrays_from_hdf5(p, matlab=False),
               ".hdf5": lambda p: _arrays_from_hdf5(p, matlab=False), ".mat": _arrays_from_mat}
    if extension not in readers:
        raise DataFileError(f"{path}: unsupported file type {extension!r}; use .npz, .h5, .hdf5 or .mat, "
                            "or a folder / glob pattern of NIfTI time-course files.")
    try:
        return readers[extension](path)
    except DataFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataFileError(f"{path} cannot be read ({error}); is it a complete {extension} file?") from None


def _find(arrays, name, path):
    """The stored name of variable ``name``; a struct field may be written ``ica.tc`` or ``ica/tc``."""
    for key in (name, name.replace(".", "/"), name.replace("/", ".")):
        if key in arrays:
            return key
    raise DataFileError(f"{path} has no variable {name!r}; it has {sorted(arrays)}.")


def _leaf(name):
    return re.split(r"[./]", name)[-1]


def _axes_longer_than_one(value):
    return sum(d > 1 for d in np.shape(value))


def _choose_variable(arrays, path, variable):
    if variable is not None:
        return _find(arrays, variable, path)
    # A vector (one axis longer than 1) is a list of IDs or values, not data.
    candidates = [name for name, value in arrays.items()
                  if _leaf(name) not in _ID_VARIABLES and isinstance(value, np.ndarray)
                  and _axes_longer_than_one(value) >= 2 and np.issubdtype(value.dtype, np.number)]
    if len(candidates) != 1:
        raise DataFileError(f"{path} holds {len(candidates)} numeric arrays with two or more axes longer than 1 "
                            f"({sorted(candidates)}); name the one to use with variable=... (--variable); "
                            f"a struct's field as 'struct.field'. Its variables: {sorted(arrays)}.")
    return candidates[0]


def _could_be_ids(value, n_subjects):
    """A vector of ``n_subjects`` distinct texts or whole numbers."""
    value = np.asarray(value)
    if value.size != n_subjects or _axes_longer_than_one(value) > 1:
        return False
    flat = value.ravel()
    if flat.dtype.kind == "f":
        if not (np.isfinite(flat).all() and (flat == np.round(flat)).all()):
            return False
    elif flat.dtype.kind not in "iuUSO":
        return False
    return len({_normalize_id(v) for v in flat}) == n_subjects


def _subject_ids(arrays, data_name, n_subjects, path, subject_variable, match_by_row):
    """Each row's subject ID as stored in the file, or None to match the phenotype row by row.

    Returns:
        (the IDs as text, or None; the variable they come from, or None).
    """
    known = [name for name in arrays if _leaf(name) in _ID_VARIABLES]
    if subject_variable is not None:
        if match_by_row:
            raise DataFileError("Pass subject_variable (--subject-variable) or match_by_row (--match-by-row), "
                                "not both.")
        name = _find(arrays, subject_variable, path)
    elif known:
        if match_by_row:
            raise DataFileError(f"{path} holds subject IDs ({known[0]!r}), and they are used; drop match_by_row "
                                "(--match-by-row), which is for files without IDs.")
        name = known[0]
    else:
        candidates = [name for name, value in arrays.items() if name != data_name and _could_be_ids(value, n_subjects)]
        if candidates and not match_by_row:
            examples = [_text(v) for v in np.asarray(arrays[candidates[0]]).ravel()[:3]]
            raise DataFileError(
                f"{path} holds {', '.join(map(repr, candidates))} ({n_subjects} distinct values such as {examples}), "
                f"which may be the subject IDs, but no array named {' or '.join(map(repr, _ID_VARIABLES))}. Say how to "
                f"match the data to the phenotype: subject_variable={candidates[0]!r} (--subject-variable "
                f"{candidates[0]}) to match by these IDs, or match_by_row=True (--match-by-row) if the data's rows "
                "are in the phenotype's row order.")
        return None, None
    ids = np.asarray(arrays[name]).ravel()
    if len(ids) != n_subjects:
        raise DataFileError(f"{path}: {name!r} has {len(ids)} IDs for {n_subjects} subjects.")
    return [_text(i) for i in ids], name


def _from_nifti(pattern, subject_pattern):
    try:
        import nibabel
    except ImportError:
        raise DataFileError("Reading NIfTI time courses needs nibabel: pip install 'tf_autospec[nifti]'.") from None
    paths = sorted(glob.glob(os.path.join(pattern, "*.nii*")) if os.path.isdir(pattern) else glob.glob(pattern))
    if not paths:
        raise DataFileError(f"No NIfTI files match {pattern!r}.")
    courses, ids = [], []
    for path in paths:
        match = re.search(subject_pattern, os.path.basename(path))
        if not match:
            raise DataFileError(f"Cannot read a subject ID from {os.path.basename(path)!r} with subject_pattern="
                                f"{subject_pattern!r}; pass a regular expression whose first group is the ID "
                                r"(--subject-pattern), e.g. '^(\d+)_' for '001_timecourses.nii'.")
        try:
            course = np.asarray(nibabel.load(path).get_fdata(), dtype=np.float64).squeeze()
        except Exception as error:  # nibabel raises several types for bad files
            raise DataFileError(f"{path} is not a readable NIfTI file ({error}).") from None
        if course.ndim != 2 or (courses and course.shape != courses[0].shape):
            expected = f"{courses[0].shape}, like {paths[0]}" if courses else "2 (time × components)"
            raise DataFileError(f"{path} holds an array of shape {course.shape}; expected {expected}.")
        courses.append(course)
        ids.append(match.group(1))
    return np.stack(courses), ids


def _is_fnc(x):
    """Square and symmetric for every subject: connectivity matrices."""
    return x.ndim == 3 and x.shape[1] == x.shape[2] and np.allclose(x, np.swapaxes(x, 1, 2))


def _infer_layout(x, stored):
    """The layout of an array when its shape and values leave one reading; else an error
    naming the choices."""
    if x.ndim == 2:
        return "features", "one row per subject"
    if x.ndim == 4 and x.shape[2] == x.shape[3]:
        return "fnc", "GIFT's fnc_corrs_all layout [subjects, sessions, C, C]"
    if x.ndim != 3:
        raise DataFileError(f"{stored}: expected [subjects, features], [subjects, time, components], "
                            "[subjects, C, C] or [subjects, sessions, C, C]; pass layout='features' "
                            "(--layout features) to use each subject's values as they are.")
    if _is_fnc(x):
        return "fnc", "square and symmetric"
    rows, columns = x.shape[1:]
    if rows > columns:
        return "time_components", "more rows than columns: ICA gives at most as many components as time points"
    why = ("square but not symmetric" if rows == columns
           else "fewer rows than columns, so the rows may be the components")
    raise DataFileError(f"{stored}: cannot tell time from components ({rows} × {columns} per subject: {why}). Say "
                        "how it is stored: layout='components_time' (--layout components_time) for [subjects, "
                        "components, time], 'time_components' for [subjects, time, components], or 'features' to "
                        "use each subject's values as they are.")


def _apply_layout(x, layout, name, path):
    """The array as ``[subjects, time, components]``, ``[subjects, C, C]`` or
    ``[subjects, features]``, as ``layout`` says or, when None, as `_infer_layout` reads it.

    Returns:
        (the array, the layout, how it was read: a phrase for ``info["read_as"]``).
    """
    if layout is not None and layout not in LAYOUTS:
        raise DataFileError(f"layout must be one of {LAYOUTS}; received {layout!r}.")
    stored = f"{name!r} {'×'.join(map(str, x.shape))}"
    layout, why = _infer_layout(x, f"{path}: {stored}") if layout is None else (layout, "given by layout")
    done = ""
    if layout == "features":
        x = x.reshape(len(x), -1)
    elif layout == "fnc":
        if x.ndim == 4 and x.shape[2] == x.shape[3]:
            x, done = x.mean(axis=1), f", averaged over its {x.shape[1]} sessions"
        if not _is_fnc(x):
            raise DataFileError(f"{path}: {stored} is not square symmetric matrices [subjects, C, C], so layout "
                                "'fnc' does not fit; use layout='features' (--layout features) to use every value "
                                "as it is.")
    elif x.ndim != 3:
        raise DataFileError(f"{path}: {stored} has {x.ndim} axes; layout {layout!r} needs three: {_AXES[layout]}.")
    elif layout == "components_time":
        x, done = np.swapaxes(x, 1, 2), f", transposed to {_AXES['time_components']}"
    return x, layout, f"{stored} read as {_AXES[layout]} ({why}){done}"


def _read_phenotype(path):
    """Header and rows of the phenotype table. The delimiter is a tab for ``.tsv`` files,
    else whichever of comma, tab and semicolon the header line holds most (comma on ties)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as error:
        raise DataFileError(f"Cannot read the phenotype file {path} ({error}).") from None
    header_line = text.split("\n", 1)[0]
    delimiter = "\t" if os.fspath(path).lower().endswith(".tsv") else max(",\t;", key=header_line.count)
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    rows = list(reader)
    if not rows:
        raise DataFileError(f"The phenotype file {path} has no rows under its header.")
    return list(reader.fieldnames), rows


def _column_holding(ids, rows, header, besides):
    """A column other than ``besides`` that holds every one of the data's (normalized) IDs, or None."""
    for column in header:
        if column != besides and set(ids) <= {_normalize_id(row[column] or "") for row in rows}:
            return column
    return None


def _subject_column_hint(ids, rows, header, subject_column, defaulted):
    """A sentence pointing at the right subject ID column, or ''."""
    column = None if ids is None else _column_holding(ids, rows, header, subject_column)
    if column is not None:
        return f" Column {column!r} holds the data's IDs: pass subject_column={column!r} (--subject-column {column})."
    if defaulted:
        return (f" {subject_column!r} is the subject ID column because it comes first; name another with "
                "subject_column= (--subject-column).")
    return ""


def _by_subject(rows, header, subject_column, defaulted, ids, path):
    """The phenotype rows by normalized subject ID; a subject twice is an error."""
    table = {}
    for row in rows:
        subject = _normalize_id(row[subject_column] or "")
        if subject in table:
            raise DataFileError(f"Subject {subject!r} appears twice in {path} (column {subject_column!r}); keep "
                                "one row per subject." + _subject_column_hint(ids, rows, header, subject_column,
                                                                                defaulted))
        table[subject] = row
    return table


def _missing(value):
    return value is None or value.strip().lower() in _MISSING


def _numeric(values):
    try:
        return np.array([float(v) for v in values])
    except ValueError:
        return None


def _spelling(value):
    """What two spellings of one value share: the number, or the text without case and spaces."""
    try:
        return float(value)
    except ValueError:
        return "".join(value.split()).lower()


def _odd_values(counts, rare_below):
    """Values that look like typos, or are held by fewer than ``rare_below`` subjects, each
    with the reason: no letter or digit (``?``), or another spelling of a more frequent value
    (``sz`` beside ``SZ``, ``1.0`` beside ``1``)."""
    spellings = collections.defaultdict(list)
    for value in counts:
        spellings[_spelling(value)].append(value)
    odd = {}
    for value, count in counts.items():
        usual = max(spellings[_spelling(value)], key=counts.get)
        if not any(c.isalnum() for c in value):
            odd[value] = "no letter or digit"
        elif value != usual:
            odd[value] = f"{usual!r} spelled differently"
        elif count < rare_below:
            odd[value] = f"fewer than {rare_below} subjects"
    return odd


def _counted(counts, k=12):
    """``'SZ' ×40, 'HC' ×35``, most frequent first."""
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    shown = ", ".join(f"{value!r} ×{count}" for value, count in ordered[:k])
    return shown + (f", ... ({len(ordered)} values)" if len(ordered) > k else "")


def _odd_listed(odd, counts):
    """``'?' ×3 (no letter or digit). Values found: 'SZ' ×40, ...``, for a message."""
    listed = ", ".join(f"{value!r} ×{counts[value]} ({why})" for value, why in odd.items())
    return f"{listed}. Values found: {_counted(counts)}"


def _levels(values, column, bins, max_levels, names, where):
    """Map the column's values to group indices; returns (labels, group_names)."""
    present = [v.strip() for v in values if not _missing(v)]
    numbers = _numeric(present)
    if numbers is not None and len(np.unique(numbers)) > max_levels:
        edges = np.quantile(numbers, np.linspace(0, 1, bins + 1)[1:-1]) if np.isscalar(bins) else np.asarray(bins)
        edges = np.unique(edges)
        labels_of = lambda v: int(np.searchsorted(edges, float(v), side="right"))  # noqa: E731
        bounds = [f"{e:g}" for e in edges]
        group_names = ([f"{column}<{bounds[0]}"]
                       + [f"{lo}≤{column}<{hi}" for lo, hi in zip(bounds, bounds[1:])]
                       + [f"{column}≥{bounds[-1]}"])
        if names is not None:
            raise DataFileError(f"Column {column!r} is binned into {group_names}; do not pass group names for it.")
    else:
        counts = collections.Counter(present)
        if names is None:
            odd = _odd_values(counts, rare_below=max(2, math.ceil(0.05 * len(present))))
            if odd:
                raise DataFileError(
                    f"Column {column!r} of {where} has values that look like typos or are too rare to be a group: "
                    f"{_odd_listed(odd, counts)}. In the file, map each to a group, or blank it (empty or NA) to "
                    "leave the subject out; to keep a rare value as a group, declare the groups: group_names=[...] "
                    "(--group-names ...).")
            group_names = sorted(counts, key=float if numbers is not None else str)
        else:
            group_names = list(names)
            outside = {v: c for v, c in counts.items() if v not in group_names}
            if outside:
                raise DataFileError(
                    f"Column {column!r} of {where} has values {_counted(outside)} outside the declared groups "
                    f"{group_names}. In the file, map each to a declared group, or blank it (empty or NA) to leave "
                    "those subjects out; or declare it as a group too.")
        labels_of = group_names.index
        # Coded values (site 1, 2, 3; sex 0/1) are named after their column: a group name
        # never looks like a number, so that integer labels are only ever indices.
        group_names = [f"{column} {n}" if looks_like_number(n) else n for n in group_names]
    labels = np.array([-1 if _missing(v) else labels_of(v.strip()) for v in values], dtype=np.int32)
    return labels, tuple(group_names)


def fnc_features(x):
    """Functional network connectivity as features: the upper triangle of each subject's
    component correlation matrix (Fisher z), from time courses ``[subjects, time, C]`` or
    from FNC matrices ``[subjects, C, C]`` (used as they are).

    Returns:
        float32 ``[subjects, C·(C-1)/2]``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"fnc_features takes [subjects, time, components] or [subjects, C, C]; received {x.shape}.")
    if _is_fnc(x):
        matrices = x
    else:
        centred = x - x.mean(axis=1, keepdims=True)
        centred /= np.linalg.norm(centred, axis=1, keepdims=True)
        matrices = np.arctanh(np.clip(np.einsum("stc,std->scd", centred, centred), -0.999999, 0.999999))
    upper = np.triu_indices(x.shape[2], k=1)
    return matrices[:, upper[0], upper[1]].astype(np.float32)


def _read_data(data, variable, layout, subject_variable, match_by_row, subject_pattern):
    """The data array in its layout, each row's subject ID (or None: match row by row), and
    how both were read.

    Returns:
        (x, IDs as text or None, variable name, layout, ``read_as``, ``matched``).
    """
    is_nifti = data.lower().endswith((".nii", ".nii.gz")) or os.path.isdir(data) or glob.has_magic(data)
    if is_nifti:
        if subject_variable is not None or match_by_row:
            raise DataFileError("NIfTI files are matched to the phenotype by the subject ID in their names; set "
                                "how it is read with subject_pattern (--subject-pattern), not subject_variable or "
                                "match_by_row.")
        x, ids = _from_nifti(data, subject_pattern)
        name, matched = "nifti", "by ID, from the file names (subject_pattern)"
    else:
        if not os.path.exists(data):
            raise DataFileError(f"Data file {data} does not exist.")
        arrays = _read_arrays(data)
        name = _choose_variable(arrays, data, variable)
        x = np.asarray(arrays[name], dtype=np.float64)
        ids, id_name = _subject_ids(arrays, name, len(x), data, subject_variable, match_by_row)
        matched = (f"by ID ({id_name!r})" if ids is not None
                   else "row by row, as asked (match_by_row)" if match_by_row
                   else "row by row: the file holds no subject IDs")
    if len(x) == 0:
        raise DataFileError(f"{data}: {name!r} holds no subjects (shape {x.shape}).")
    x, layout, read_as = _apply_layout(x, layout, name, data)
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if len(bad):
        raise DataFileError(f"{data}: subjects {[ids[i] if ids else int(i) for i in bad[:5]]} have NaN or Inf "
                            "values; remove or fix them.")
    return x, ids, name, layout, read_as, matched



def _check_matched(ids, raw_ids, table, rows, header, subject_column, defaulted, data, phenotype):
    """Refuse subjects of the data that the phenotype lacks, showing IDs of both sides."""
    absent = [raw for raw, subject in zip(raw_ids, ids) if subject not in table]
    if absent:
        raise DataFileError(
            f"{len(absent)} of {len(ids)} subjects of {data} are missing from {phenotype} (column {subject_column!r}): "
            f"{_few(absent)}; that column holds {_few([row[subject_column] for row in rows])}. IDs match when equal "
            "as text or as whole numbers, after a leading 'sub', 'sub-' or 'sub_'; make them agree in one of the "
            "files." + _subject_column_hint(ids, rows, header, subject_column, defaulted))


def from_files(data, phenotype, group_column, subject_column=None, variable=None, group_names=None, target=None,
               bins=2, max_levels=10, subject_pattern=r"(?:^|[_.-])sub[-_]?(\d+|(?<=[-_])[A-Za-z0-9]+?)(?=[_.-]|$)",
               layout=None, subject_variable=None, match_by_row=False):
    """Load users' neuroimaging data with groups from a phenotype table.

    Nothing that could be read in two ways is guessed in silence:

    * Layout: a 2-D array is ``[subjects, features]``; ``[subjects, C, C]`` square and
      symmetric is FNC; ``[subjects, sessions, C, C]`` is GIFT's ``fnc_corrs_all`` (averaged
      over sessions); ``[subjects, rows, columns]`` with more rows than columns is time
      courses ``[subjects, time, components]`` (ICA gives at most as many components as
      time points). Any other shape (fewer rows than columns, square but not symmetric)
      needs ``layout``. ``info["read_as"]`` says how the array was read.
    * Subjects: matched by the IDs in the file (``subjects``, ``subject_ids``,
      ``subject_variable``, or NIfTI file names). Row by row only with ``match_by_row``, or
      when the file holds no vector that could be IDs and the sizes agree (then with a
      warning). A vector of distinct texts or whole numbers, one per subject, under another
      name is refused until ``subject_variable`` or ``match_by_row`` says what it is.
    * Groups: without ``group_names``, values with no letter or digit (``?``), other
      spellings of a more frequent value (``sz`` beside ``SZ``) and values held by fewer
      than max(2, 5 % of the subjects with a value, rounded up) subjects are refused with
      the values found; with ``group_names``, any other value is refused.

    Args:
        data: ``.npz``/``.h5``/``.hdf5``/``.mat`` file, or a folder or glob pattern of NIfTI
            time-course files (one per subject).
        phenotype: CSV or tab-separated file (``.tsv``, BIDS ``participants.tsv``) with a
            header and one row per subject.
        group_column: the column that defines the groups (diagnosis, sex, site, age...).
        subject_column: the subject ID column (default: the first column).
        variable: the array to use when the file holds several; a struct's field as
            ``"ica.tc"``.
        group_names: the groups and their order (default: the values found, sorted); values
            outside them are refused, empty and ``NA`` ones leave the subject out.
        target: a column to predict: regression for numeric columns with more than
            ``max_levels`` values, else classification. Default (or ``group_column``): the
            group itself, in which case subjects with no group value are left out.
        bins: for numeric group columns with more than ``max_levels`` distinct values, the
            number of quantile bins, or a list of bin edges.
        max_levels: numeric columns with at most this many distinct values are categories.
        subject_pattern: regular expression whose first group is the subject ID in NIfTI
            file names (default: the characters after a ``sub`` token, as in
            ``study_sub001_timecourses_ica_s1_.nii``).
        layout: how the array is stored: ``"time_components"``, ``"components_time"``
            (transposed to time × components), ``"fnc"`` or ``"features"`` (each subject's
            values flattened). Default: read from the shape as above.
        subject_variable: the array holding each row's subject ID, when not named
            ``subjects`` or ``subject_ids``.
        match_by_row: the data file holds no IDs: its rows are the phenotype's rows, in order.

    Returns:
        `GroupedData`; ``info["kind"]`` is ``"timecourses"``, ``"fnc"`` or ``"features"``,
        ``info["layout"]`` one of `LAYOUTS`, ``info["read_as"]`` and ``info["matched"]`` say
        how the array was read and how its subjects were matched.

    Raises:
        DataFileError: unreadable files, an ambiguous layout or subject list, missing
            columns or subjects, odd or undeclared group values, non-finite data.
    """
    data, phenotype = os.fspath(data), os.fspath(phenotype)
    if not np.isscalar(bins) and len(bins) < 1 or np.isscalar(bins) and bins < 2:
        raise DataFileError(f"bins must be at least 2 (or a list of bin edges); received {bins!r}.")
    x, raw_ids, name, layout, read_as, matched = _read_data(data, variable, layout, subject_variable, match_by_row,
                                                            subject_pattern)
    header, rows = _read_phenotype(phenotype)
    defaulted, subject_column = subject_column is None, subject_column or header[0]
    target = None if target == group_column else target
    for column in [subject_column, group_column] + ([target] if target else []):
        if column not in header:
            raise DataFileError(f"The phenotype file {phenotype} has no column {column!r}; its columns are {header}.")
    ids = None if raw_ids is None else [_normalize_id(i) for i in raw_ids]
    if ids is not None:
        _check_unique(ids, data)
    table = _by_subject(rows, header, subject_column, defaulted, ids, phenotype)
    if ids is None:
        if len(table) != len(x):
            raise DataFileError(f"{data} has {len(x)} subjects and no subject IDs, and {phenotype} has {len(table)} "
                                "rows; they must match row by row, or store a 'subjects' array in the data file.")
        ids = list(table)
        if not match_by_row:
            first, last = rows[0][subject_column], rows[-1][subject_column]
            warnings.warn(f"{data} holds no subject IDs: its {len(x)} rows are matched to the rows of {phenotype} "
                          f"in order (first {first!r}, last {last!r}). If the orders may differ, store the IDs in "
                          "the file as 'subjects'; to confirm the order, pass match_by_row=True (--match-by-row).",
                          stacklevel=2)
    else:
        _check_matched(ids, raw_ids, table, rows, header, subject_column, defaulted, data, phenotype)
    rows = [table[i] for i in ids]
    labels, names = _levels([r[group_column] for r in rows], group_column, bins, max_levels, group_names, phenotype)
    info = dict(dataset="files", data=data, phenotype=phenotype, group_column=group_column, variable=name,
                kind=_KIND[layout], layout=layout, read_as=read_as, matched=matched, target=target or group_column)
    if target is None:
        keep = labels >= 0
        if not keep.all():
            warnings.warn(f"{int((~keep).sum())} subjects have no {group_column!r} value and are left out.",
                          stacklevel=2)
        x, labels, ids = x[keep], labels[keep], [i for i, k in zip(ids, keep) if k]
        y = labels.copy()
    else:
        y, target_names = _target([r[target] for r in rows], target, max_levels, phenotype)
        info["target_names"] = target_names
    info["subjects"] = ids
    return GroupedData(x.astype(np.float32), y, labels, names, info)


def _target(values, column, max_levels, where):
    """Regression targets for a numeric column with many values; class indices otherwise."""
    if any(_missing(v) for v in values):
        raise DataFileError(f"The target column {column!r} has missing values; fill them or drop those subjects.")
    numbers = _numeric(values)
    if numbers is not None and len(np.unique(numbers)) > max_levels:
        return numbers.astype(np.float32), []
    counts = collections.Counter(v.strip() for v in values)
    odd = _odd_values(counts, rare_below=0)
    if odd:
        raise DataFileError(f"The target column {column!r} of {where} has values that look like typos: "
                            f"{_odd_listed(odd, counts)}. Correct them in the file.")
    names = sorted(counts, key=float if numbers is not None else str)
    return np.array([names.index(v.strip()) for v in values], dtype=np.int32), names
