"""Users' own neuroimaging data: ICA time courses or FNC matrices plus a phenotype CSV.

Supported data files:

* ``.npz``, ``.h5``/``.hdf5``: one array ``[subjects, time, components]`` (time courses),
  ``[subjects, C, C]`` (FNC matrices) or ``[subjects, features]``; optionally an array
  ``subjects`` (or ``subject_ids``) with each row's subject ID.
* ``.mat`` (GIFT output; MATLAB v5 through SciPy, v7.3 through h5py): the same, e.g. GIFT's
  ``fnc_corrs_all`` (``[subjects, sessions, C, C]``: the sessions are averaged); subject IDs
  as numbers, a cell array of strings or a char matrix.
* NIfTI time-course files (GIFT's ``*_sub001_timecourses_ica_s1_.nii``), one per subject:
  a folder or a glob pattern; needs ``pip install tf_autospec[nifti]`` (nibabel). Each file's
  subject ID is read from its name with ``subject_pattern``.

The phenotype CSV has a header row, one row per subject, a subject ID column and any number
of columns to group by (diagnosis, sex, site...). Numeric columns with more than
``max_levels`` distinct values (age, scores) are binned into ``bins`` quantile bins.
"""

import csv
import glob
import os
import re
import warnings
import zipfile

import numpy as np

from tf_autospec.data.simulated import GroupedData

_MISSING = {"", "na", "nan", "n/a", "none", "null"}
_ID_VARIABLES = ("subjects", "subject_ids")


class DataFileError(ValueError):
    """A data or phenotype file cannot be used; the message says why and what to do."""


def _normalize_id(value):
    """"sub-007", "007", "7" and 7.0 name the same subject."""
    text = str(value.decode() if isinstance(value, bytes) else value).strip()
    text = re.sub(r"^sub[-_]?", "", text)
    if re.fullmatch(r"\d+(\.0+)?", text):
        return str(int(float(text)))
    return text


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
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        def visit(name, item):
            if isinstance(item, h5py.Dataset) and not name.startswith("#"):
                arrays[name] = _matlab_value(f, item) if matlab else item[()]

        f.visititems(visit)
    return arrays


def _arrays_from_mat(path):
    from scipy import io

    try:
        contents = io.loadmat(path)
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        return _arrays_from_hdf5(path, matlab=True)
    except ValueError as error:
        raise DataFileError(f"{path} is not a readable MATLAB file ({error}).") from None
    arrays = {}
    for name, value in contents.items():
        if name.startswith("__"):
            continue
        if value.dtype == object:  # a cell array of subject IDs
            value = np.array([np.asarray(v).ravel()[0] for v in value.ravel()])
        arrays[name] = value
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


def _choose_variable(arrays, path, variable):
    if variable is not None:
        if variable not in arrays:
            raise DataFileError(f"{path} has no variable {variable!r}; it has {sorted(arrays)}.")
        return variable
    candidates = [name for name, value in arrays.items()
                  if name.split("/")[-1] not in _ID_VARIABLES and isinstance(value, np.ndarray)
                  and value.ndim >= 2 and np.issubdtype(value.dtype, np.number)]
    if len(candidates) != 1:
        raise DataFileError(f"{path} holds {len(candidates)} numeric arrays of two or more dimensions "
                            f"({sorted(candidates)}); name the one to use with variable=... (--variable).")
    return candidates[0]


def _subjects_in_file(arrays, n_subjects, path):
    for name in _ID_VARIABLES:
        if name in arrays:
            ids = np.asarray(arrays[name]).ravel()
            if len(ids) != n_subjects:
                raise DataFileError(f"{path}: {name!r} has {len(ids)} IDs for {n_subjects} subjects.")
            return [_normalize_id(i) for i in ids]
    return None


def _from_array_file(path, variable):
    arrays = _read_arrays(path)
    name = _choose_variable(arrays, path, variable)
    x = np.asarray(arrays[name], dtype=np.float64)
    if x.ndim == 4 and x.shape[2] == x.shape[3]:  # GIFT fnc_corrs_all: [subjects, sessions, C, C]
        x = x.mean(axis=1)
    return x, _subjects_in_file(arrays, len(x), path), name


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
                                f"{subject_pattern!r}; pass a regular expression whose first group is the ID.")
        try:
            course = np.asarray(nibabel.load(path).get_fdata(), dtype=np.float64).squeeze()
        except Exception as error:  # nibabel raises several types for bad files
            raise DataFileError(f"{path} is not a readable NIfTI file ({error}).") from None
        if course.ndim != 2 or (courses and course.shape != courses[0].shape):
            expected = f"{courses[0].shape}, like {paths[0]}" if courses else "2 (time × components)"
            raise DataFileError(f"{path} holds an array of shape {course.shape}; expected {expected}.")
        courses.append(course)
        ids.append(_normalize_id(match.group(1)))
    return np.stack(courses), ids, "nifti"


def _read_phenotype(path, subject_column, columns):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as error:
        raise DataFileError(f"Cannot read the phenotype file {path} ({error}).") from None
    if not rows:
        raise DataFileError(f"The phenotype file {path} has no rows under its header.")
    header = list(rows[0])
    subject_column = subject_column or header[0]
    for column in [subject_column, *columns]:
        if column not in header:
            raise DataFileError(f"The phenotype file {path} has no column {column!r}; its columns are {header}.")
    table = {}
    for row in rows:
        subject = _normalize_id(row[subject_column])
        if subject in table:
            raise DataFileError(f"Subject {subject!r} appears twice in {path}.")
        table[subject] = row
    return table, subject_column


def _missing(value):
    return value is None or value.strip().lower() in _MISSING


def _numeric(values):
    try:
        return np.array([float(v) for v in values])
    except ValueError:
        return None


def _levels(values, column, bins, max_levels, names):
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
        unique = sorted(set(present), key=(lambda v: float(v)) if numbers is not None else str)
        group_names = list(names) if names is not None else unique
        unknown = sorted(set(present) - set(group_names))
        if unknown:
            raise DataFileError(f"Column {column!r} has values {unknown} that are not among the group names "
                                f"{group_names}; add them or fix the file.")
        labels_of = group_names.index
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
    if _kind(x) == "fnc":
        matrices = x
    else:
        centred = x - x.mean(axis=1, keepdims=True)
        centred /= np.linalg.norm(centred, axis=1, keepdims=True)
        matrices = np.arctanh(np.clip(np.einsum("stc,std->scd", centred, centred), -0.999999, 0.999999))
    upper = np.triu_indices(x.shape[2], k=1)
    return matrices[:, upper[0], upper[1]].astype(np.float32)


def from_files(data, phenotype, group_column, subject_column=None, variable=None, group_names=None, target=None,
               bins=2, max_levels=10, subject_pattern=r"(?:^|[_.-])sub[-_]?(\d+|(?<=[-_])[A-Za-z0-9]+?)(?=[_.-]|$)"):
    """Load users' neuroimaging data with groups from a phenotype CSV.

    Args:
        data: ``.npz``/``.h5``/``.hdf5``/``.mat`` file, or a folder or glob pattern of NIfTI
            time-course files (one per subject).
        phenotype: CSV file with a header and one row per subject.
        group_column: the column that defines the groups (diagnosis, sex, site, age...).
        subject_column: the subject ID column (default: the first column).
        variable: the array to use when the file holds several.
        group_names: the groups' order (default: sorted values); every value must be listed.
        target: a column to predict: regression for numeric columns with more than
            ``max_levels`` values, else classification. Default: the group itself, in which
            case subjects with no group value are left out.
        bins: for numeric group columns with more than ``max_levels`` distinct values, the
            number of quantile bins, or a list of bin edges.
        max_levels: numeric columns with at most this many distinct values are categories.
        subject_pattern: regular expression whose first group is the subject ID in NIfTI
            file names (default: the characters after a ``sub`` token, as in
            ``study_sub001_timecourses_ica_s1_.nii``).

    Returns:
        `GroupedData`; ``info["kind"]`` is ``"timecourses"``, ``"fnc"`` or ``"features"``.

    Raises:
        DataFileError: unreadable files, missing columns or subjects, unknown group values,
            non-finite data.
    """
    data = os.fspath(data)
    is_nifti = data.lower().endswith((".nii", ".nii.gz")) or os.path.isdir(data) or glob.has_magic(data)
    if not is_nifti and not os.path.exists(data):
        raise DataFileError(f"Data file {data} does not exist.")
    is_array_file = not is_nifti
    if not np.isscalar(bins) and len(bins) < 1 or np.isscalar(bins) and bins < 2:
        raise DataFileError(f"bins must be at least 2 (or a list of bin edges); received {bins!r}.")
    x, ids, source = _from_array_file(data, variable) if is_array_file else _from_nifti(data, subject_pattern)
    if ids is not None:
        _check_unique(ids, data)
    if x.ndim not in (2, 3) or len(x) == 0:
        raise DataFileError(f"{data}: the data has shape {x.shape}; expected [subjects, features], "
                            "[subjects, time, components] or [subjects, C, C].")
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if len(bad):
        raise DataFileError(f"{data}: subjects {[ids[i] if ids else int(i) for i in bad[:5]]} have NaN or Inf "
                            "values; remove or fix them.")
    table, subject_column = _read_phenotype(phenotype, subject_column, [group_column] + ([target] if target else []))
    if ids is None:
        if len(table) != len(x):
            raise DataFileError(f"{data} has {len(x)} subjects and no subject IDs, and {phenotype} has {len(table)} "
                                f"rows; they must match row by row, or store a 'subjects' array in the data file.")
        ids = list(table)
    absent = [i for i in ids if i not in table]
    if absent:
        raise DataFileError(f"{len(absent)} subjects of {data} are missing from {phenotype} (column "
                            f"{subject_column!r}): {absent[:5]}{' ...' if len(absent) > 5 else ''}.")
    rows = [table[i] for i in ids]
    labels, names = _levels([r[group_column] for r in rows], group_column, bins, max_levels, group_names)
    info = dict(dataset="files", data=data, phenotype=os.fspath(phenotype), group_column=group_column,
                variable=source, kind=_kind(x), target=target or group_column)
    if target is None:
        keep = labels >= 0
        if not keep.all():
            warnings.warn(f"{int((~keep).sum())} subjects have no {group_column!r} value and are left out.",
                          stacklevel=2)
        x, labels, ids = x[keep], labels[keep], [i for i, k in zip(ids, keep) if k]
        y = labels.copy()
    else:
        y, target_names = _target([r[target] for r in rows], target, max_levels)
        info["target_names"] = target_names
    info["subjects"] = ids
    return GroupedData(x.astype(np.float32), y, labels, names, info)


def _kind(x):
    if x.ndim == 2:
        return "features"
    return "fnc" if x.shape[1] == x.shape[2] and np.allclose(x, np.swapaxes(x, 1, 2)) else "timecourses"


def _target(values, column, max_levels):
    """Regression targets for a numeric column with many values; class indices otherwise."""
    if any(_missing(v) for v in values):
        raise DataFileError(f"The target column {column!r} has missing values; fill them or drop those subjects.")
    numbers = _numeric(values)
    if numbers is not None and len(np.unique(numbers)) > max_levels:
        return numbers.astype(np.float32), []
    names = sorted(set(v.strip() for v in values), key=float if numbers is not None else str)
    return np.array([names.index(v.strip()) for v in values], dtype=np.int32), names
