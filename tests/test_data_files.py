"""Loaders of real data: MNIST (mocked TFDS), scikit-learn digits, users' neuroimaging files."""

import csv
import time
import warnings

import h5py
import keras
import numpy as np
import pytest
from scipy import io

import tf_autospec as ts
from tf_autospec import data
from tf_autospec.data import images


def _phenotype(path, rows, header=("subject", "diagnosis", "sex", "age")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _subjects(n=12, seed=0):
    rng = np.random.default_rng(seed)
    courses = rng.normal(size=(n, 40, 5)).astype(np.float32)
    ids = [f"{i + 1:03d}" for i in range(n)]
    rows = [(i, "SZ" if k % 3 == 0 else "HC", "F" if k % 2 else "M", 20 + 3 * k) for k, i in enumerate(ids)]
    return courses, ids, rows


def test_mnist_groups_are_the_first_classes(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(images, "_reachable", lambda host: True)  # mock_data replaces the download itself
    with tfds.testing.mock_data(num_examples=60):
        mnist = data.mnist(groups=4, data_dir="/nonexistent")
    assert mnist.x.shape == (60, 28, 28, 1) and mnist.x.dtype == np.float32
    assert 0.0 <= mnist.x.min() and mnist.x.max() <= 1.0
    assert mnist.group_names == ("digit 0", "digit 1", "digit 2", "digit 3")
    np.testing.assert_array_equal(mnist.labels, np.where(mnist.y < 4, mnist.y, -1))
    with tfds.testing.mock_data(num_examples=60):
        chosen = data.mnist(groups=[7, 2], data_dir="/nonexistent", n_samples=30)
    assert chosen.group_names == ("digit 7", "digit 2") and len(chosen.y) == 30
    np.testing.assert_array_equal(chosen.labels, np.select([chosen.y == 7, chosen.y == 2], [0, 1], -1))


def test_mnist_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "_reachable", lambda host: False)
    start = time.perf_counter()
    with pytest.raises(data.DatasetUnavailableError, match="data_dir.*tfds build mnist.*digits"):
        data.mnist(data_dir=tmp_path)
    assert time.perf_counter() - start < 30
    with pytest.raises(data.DatasetUnavailableError, match="not prepared"):
        data.mnist(data_dir=tmp_path, download=False)


def test_digits_are_real_offline_images():
    digits = data.digits(groups=[0, 1, 2])
    assert digits.x.shape == (1797, 8, 8, 1) and digits.x.max() == 1.0
    assert digits.group_names == ("digit 0", "digit 1", "digit 2")
    assert np.array_equal(np.unique(digits.labels), [-1, 0, 1, 2])
    assert (digits.labels[digits.y == 1] == 1).all() and (digits.labels[digits.y > 2] == -1).all()
    with pytest.raises(ValueError, match="classes present"):
        data.digits(groups=[11])


def test_npz_with_subject_ids_in_any_order(tmp_path):
    courses, ids, rows = _subjects()
    order = np.random.default_rng(1).permutation(len(ids))
    np.savez(tmp_path / "tc.npz", timecourses=courses[order], subjects=np.array(ids)[order])
    phenotype = _phenotype(tmp_path / "p.csv", rows)
    loaded = data.from_files(tmp_path / "tc.npz", phenotype, "diagnosis")
    assert loaded.group_names == ("HC", "SZ") and loaded.info["kind"] == "timecourses"
    expected = np.array([1 if int(ids[i]) % 3 == 1 else 0 for i in order])
    np.testing.assert_array_equal(loaded.labels, expected)
    np.testing.assert_array_equal(loaded.y, expected)
    np.testing.assert_array_equal(loaded.x, courses[order])


def test_coded_group_values_are_named_after_their_column(tmp_path):
    # Site codes 1/2 as group names would make the integer label 1 mean two things
    # (issue 20): the groups are "site 1" and "site 2", and their labels indices.
    courses, ids, rows = _subjects()
    np.savez(tmp_path / "tc.npz", tc=courses, subjects=np.array(ids))
    coded = [(i, 1 + k % 2, *rest) for k, (i, *rest) in enumerate(rows)]
    phenotype = _phenotype(tmp_path / "p.csv", coded, header=("subject", "site", "diagnosis", "sex", "age"))
    loaded = data.from_files(tmp_path / "tc.npz", phenotype, "site")
    assert loaded.group_names == ("site 1", "site 2")
    np.testing.assert_array_equal(loaded.labels, np.arange(12) % 2)
    model = ts.wrap(keras.Sequential([keras.Input((40, 5)), keras.layers.Flatten(), keras.layers.Dense(2)]),
                    groups=loaded.group_names)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(loaded.x, np.zeros((12, 2)), groups=loaded.labels, batch_size=12, verbose=0)
    np.testing.assert_array_equal(model.last_spectra.counts, [6, 6])


def test_hdf5_and_fnc_matrices_and_a_numeric_target(tmp_path):
    courses, ids, rows = _subjects()
    fnc = np.stack([np.corrcoef(c.T) for c in courses])
    with h5py.File(tmp_path / "fnc.h5", "w") as f:
        f["fnc"] = fnc
    loaded = data.from_files(tmp_path / "fnc.h5", _phenotype(tmp_path / "p.csv", rows), "sex", target="age",
                             group_names=["M", "F"], match_by_row=True)
    assert loaded.info["kind"] == "fnc" and loaded.group_names == ("M", "F")
    assert loaded.info["read_as"] == "'fnc' 12×5×5 read as [subjects, C, C] FNC matrices (square and symmetric)"
    np.testing.assert_array_equal(loaded.labels, np.arange(12) % 2)
    np.testing.assert_allclose(loaded.y, 20 + 3 * np.arange(12))
    upper = np.triu_indices(5, 1)
    np.testing.assert_allclose(data.fnc_features(loaded.x), fnc[:, upper[0], upper[1]], atol=1e-6)


def test_matlab_v5_and_v73_gift_files(tmp_path):
    courses, ids, rows = _subjects()
    phenotype = _phenotype(tmp_path / "p.csv", rows)
    fnc = np.stack([np.corrcoef(c.T) for c in courses])
    sessions = np.stack([fnc, fnc + 0.1], axis=1)  # GIFT's fnc_corrs_all: subjects × sessions × C × C
    io.savemat(tmp_path / "v5.mat", {"fnc_corrs_all": sessions, "subjects": np.array([int(i) for i in ids])})
    v5 = data.from_files(tmp_path / "v5.mat", phenotype, "diagnosis")
    np.testing.assert_allclose(v5.x, fnc + 0.05, atol=1e-6)
    # MATLAB v7.3 is HDF5 behind a 512-byte MATLAB header, with the axes stored reversed;
    # subject IDs come as a cell array of strings (references to char arrays) or a char
    # matrix. Here the file lists the subjects in reverse order.
    def utf16(text):
        return np.array([[ord(c)] for c in text], dtype=np.uint16)  # MATLAB 1×n char, axes reversed

    for layout in ("cell", "char"):
        path = tmp_path / f"v73_{layout}.mat"
        with h5py.File(path, "w", userblock_size=512) as f:
            f["fnc_corrs_all"] = sessions[::-1].T
            if layout == "cell":
                refs = []
                for k, subject in enumerate(ids[::-1]):
                    text = f.create_dataset(f"#refs#/{k}", data=utf16(f"sub-{subject}"))
                    text.attrs["MATLAB_class"] = np.bytes_("char")
                    refs.append(text.ref)
                cell = f.create_dataset("subjects", data=np.array([refs], dtype=h5py.ref_dtype))
            else:
                cell = f.create_dataset("subjects", data=np.array(
                    [[ord(c) for c in subject] for subject in ids[::-1]], dtype=np.uint16).T)
            cell.attrs["MATLAB_class"] = np.bytes_(layout)
        with open(path, "r+b") as f:
            f.write(b"MATLAB 7.3 MAT-file".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
        v73 = data.from_files(path, phenotype, "diagnosis")
        np.testing.assert_allclose(v73.x, v5.x[::-1], atol=1e-6, err_msg=layout)
        np.testing.assert_array_equal(v73.labels, v5.labels[::-1], err_msg=layout)
    with h5py.File(tmp_path / "v73_cell.mat", "a") as f:  # a cell of numbers is not a list of IDs
        f["#refs#/0"].attrs["MATLAB_class"] = np.bytes_("double")
    with pytest.raises(data.DataFileError, match="other than text"):
        data.from_files(tmp_path / "v73_cell.mat", phenotype, "diagnosis")


def test_nifti_time_course_files(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    courses, ids, rows = _subjects(n=6)
    folder = tmp_path / "gift"
    folder.mkdir()
    for course, subject in zip(courses, ids):
        nibabel.save(nibabel.Nifti1Image(course, np.eye(4)), folder / f"cobre_sub{subject}_timecourses_ica_s1_.nii")
    loaded = data.from_files(folder, _phenotype(tmp_path / "p.csv", rows), "sex")
    np.testing.assert_allclose(loaded.x, courses, atol=1e-6)
    np.testing.assert_array_equal(loaded.labels, [1, 0, 1, 0, 1, 0])  # groups F, M sorted
    pattern = data.from_files(str(folder / "*sub00[12]*.nii"), _phenotype(tmp_path / "q.csv", rows), "sex",
                              group_names=["F", "M"])  # one subject each: rare groups must be declared
    assert len(pattern.x) == 2


def test_numeric_group_column_is_binned(tmp_path):
    courses, ids, rows = _subjects()
    np.savez(tmp_path / "tc.npz", tc=courses)  # no IDs: matched to the CSV row by row, with a warning
    with pytest.warns(UserWarning, match="holds no subject IDs: its 12 rows are matched to the rows of .* in order "
                      r"\(first '001', last '012'\).*match_by_row=True \(--match-by-row\)"):
        loaded = data.from_files(tmp_path / "tc.npz", _phenotype(tmp_path / "p.csv", rows), "age", bins=2)
    assert loaded.info["matched"] == "row by row: the file holds no subject IDs"
    assert loaded.group_names == ("age<36.5", "age≥36.5")
    np.testing.assert_array_equal(loaded.labels, (np.arange(12) >= 6).astype(int))


def test_missing_group_values_are_left_out_with_a_warning(tmp_path):
    courses, ids, rows = _subjects()
    rows[2] = (rows[2][0], "NA", *rows[2][2:])
    np.savez(tmp_path / "tc.npz", tc=courses, subjects=np.array(ids))
    with pytest.warns(UserWarning, match="1 subjects have no 'diagnosis' value"):
        loaded = data.from_files(tmp_path / "tc.npz", _phenotype(tmp_path / "p.csv", rows), "diagnosis")
    assert len(loaded.x) == 11 and "003" not in loaded.info["subjects"]


@pytest.mark.parametrize("case, match", [
    ("missing_subject", "1 of 12 subjects of .* are missing from"),
    ("no_column", "has no column 'dx'; its columns are"),
    ("unknown_value", r"values 'SZ' ×4 outside the declared groups \['HC'\]"),
    ("nan", "NaN or Inf"),
    ("two_arrays", "name the one to use with variable"),
    ("row_count", "12 subjects and no subject IDs"),
    ("extension", "unsupported file type '.txt'"),
    ("absent", "does not exist"),
    ("corrupt", "cannot be read"),
    ("duplicate", r"holds subjects \['2'\] more than once"),
    ("bins", "bins must be at least 2"),
])
def test_bad_files_get_clear_errors(tmp_path, case, match):
    courses, ids, rows = _subjects()
    path = tmp_path / "tc.npz"
    arrays = dict(tc=courses, subjects=np.array(ids))
    phenotype_rows, column, names = rows, "diagnosis", None
    if case == "missing_subject":
        phenotype_rows = rows[1:]
    elif case == "no_column":
        column = "dx"
    elif case == "unknown_value":
        names = ["HC"]
    elif case == "nan":
        arrays["tc"] = courses.copy()
        arrays["tc"][4, 0, 0] = np.nan
    elif case == "two_arrays":
        arrays["other"] = courses
    elif case == "row_count":
        arrays.pop("subjects")
        phenotype_rows = rows[:-1]
    elif case == "duplicate":
        arrays["subjects"] = np.array(ids[:1] + ["002"] + ids[2:5] + ["2"] + ids[6:])
    np.savez(path, **arrays)
    if case == "extension":
        path = tmp_path / "tc.txt"
        path.write_text("1 2 3")
    elif case == "absent":
        path = tmp_path / "none.npz"
    elif case == "corrupt":
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(data.DataFileError, match=match):
        data.from_files(path, _phenotype(tmp_path / "p.csv", phenotype_rows), column, group_names=names,
                        bins=1 if case == "bins" else 2)


def test_bids_ids_and_a_coded_categorical_target(tmp_path):
    courses, ids, rows = _subjects()
    np.savez(tmp_path / "tc.npz", tc=courses, subjects=np.array([f"sub{i}" for i in ids]))
    coded = [(f"sub-{i}", d, "1" if s == "F" else "0", a) for i, d, s, a in rows]
    loaded = data.from_files(tmp_path / "tc.npz", _phenotype(tmp_path / "p.csv", coded), "diagnosis", target="sex")
    assert loaded.y.dtype == np.int32 and loaded.info["target_names"] == ["0", "1"]
    np.testing.assert_array_equal(loaded.y, np.arange(12) % 2)


def test_fnc_features_are_fisher_z_correlations():
    courses, _, _ = _subjects(n=3)
    features = data.fnc_features(courses)
    upper = np.triu_indices(5, 1)
    for subject in range(3):
        expected = np.arctanh(np.corrcoef(courses[subject].T)[upper])
        np.testing.assert_allclose(features[subject], expected, atol=1e-5)


# Issue 20 part 5: users' files are never mis-read in silence; each ambiguity is refused
# with the option that settles it, or read and said so in info.

def _diagnosis_rows(values):
    """80 subjects (GIFT-style study), diagnosis as given, then HC/SZ alternating."""
    ids = [f"{i + 1:03d}" for i in range(80)]
    diagnosis = list(values) + ["HC" if k % 2 else "SZ" for k in range(len(values), 80)]
    return ids, [(i, d, "F", 30) for i, d in zip(ids, diagnosis)]


@pytest.mark.parametrize("values, odd", [
    (["?", "?", "sz"], r"'\?' ×2 \(no letter or digit\), 'sz' ×1 \('SZ' spelled differently\)"),
    (["SZ ", "s z"], r"'s z' ×1 \('SZ' spelled differently\)"),
    (["CTRL", "CTRL", "CTRL"], r"'CTRL' ×3 \(fewer than 4 subjects\)"),  # max(2, 5 % of 80)
])
def test_odd_or_rare_group_values_are_refused_with_the_values_found(tmp_path, values, odd):
    ids, rows = _diagnosis_rows(values)
    np.savez(tmp_path / "tc.npz", tc=np.random.default_rng(0).normal(size=(80, 20, 4)), subjects=np.array(ids))
    with pytest.raises(data.DataFileError, match=f"Column 'diagnosis' of .* too rare to be a group: {odd}. "
                       r"Values found: '(HC|SZ)' ×\d+, '(HC|SZ)' ×\d+.*blank it \(empty or NA\).*--group-names"):
        data.from_files(tmp_path / "tc.npz", _phenotype(tmp_path / "p.csv", rows), "diagnosis")


def test_declared_groups_keep_rare_ones_and_refuse_other_values(tmp_path):
    ids, rows = _diagnosis_rows(["CTRL", "CTRL", "CTRL"])
    np.savez(tmp_path / "tc.npz", tc=np.random.default_rng(0).normal(size=(80, 20, 4)), subjects=np.array(ids))
    phenotype = _phenotype(tmp_path / "p.csv", rows)
    loaded = data.from_files(tmp_path / "tc.npz", phenotype, "diagnosis", group_names=["SZ", "HC", "CTRL"])
    assert loaded.group_names == ("SZ", "HC", "CTRL") and np.bincount(loaded.labels).tolist() == [38, 39, 3]
    with pytest.raises(data.DataFileError, match=r"values 'CTRL' ×3 outside the declared groups \['SZ', 'HC'\]\. "
                       r"In the file, map each to a declared group, or blank it \(empty or NA\) to leave those "
                       "subjects out"):
        data.from_files(tmp_path / "tc.npz", phenotype, "diagnosis", group_names=["SZ", "HC"])


def test_a_target_column_with_typos_is_refused(tmp_path):
    courses, ids, rows = _subjects()
    rows[0] = (rows[0][0], rows[0][1], "f", rows[0][3])
    np.savez(tmp_path / "tc.npz", tc=courses, subjects=np.array(ids))
    with pytest.raises(data.DataFileError, match=r"target column 'sex' .* 'f' ×1 \('F' spelled differently\)"):
        data.from_files(tmp_path / "tc.npz", _phenotype(tmp_path / "p.csv", rows), "diagnosis", target="sex")


def test_components_first_time_courses_need_a_layout(tmp_path):
    courses, ids, rows = _subjects()  # [12 subjects, 40 time points, 5 components]
    phenotype = _phenotype(tmp_path / "p.csv", rows)
    np.savez(tmp_path / "ct.npz", tc=np.swapaxes(courses, 1, 2), subjects=np.array(ids))
    with pytest.raises(data.DataFileError, match=r"'tc' 12×5×40: cannot tell time from components \(5 × 40 per "
                       r"subject: fewer rows than columns.*layout='components_time' \(--layout components_time\)"):
        data.from_files(tmp_path / "ct.npz", phenotype, "diagnosis")
    loaded = data.from_files(tmp_path / "ct.npz", phenotype, "diagnosis", layout="components_time")
    np.testing.assert_allclose(loaded.x, courses, atol=1e-6)
    assert (loaded.info["kind"], loaded.info["layout"]) == ("timecourses", "components_time")
    assert loaded.info["read_as"] == ("'tc' 12×5×40 read as [subjects, components, time] (given by layout), "
                                      "transposed to [subjects, time, components]")
    as_features = data.from_files(tmp_path / "ct.npz", phenotype, "diagnosis", layout="features")
    assert as_features.x.shape == (12, 200) and as_features.info["kind"] == "features"
    np.savez(tmp_path / "tc.npz", tc=courses, subjects=np.array(ids))
    assert "(more rows than columns: ICA gives at most as many components as time points)" in data.from_files(
        tmp_path / "tc.npz", phenotype, "diagnosis").info["read_as"]


@pytest.mark.parametrize("layout, match", [
    (None, r"'m' 12×5×5: cannot tell time from components \(5 × 5 per subject: square but not symmetric\)"),
    ("fnc", "is not square symmetric matrices .* so layout 'fnc' does not fit; use layout='features'"),
    ("sideways", r"layout must be one of \('time_components', 'components_time', 'fnc', 'features'\)"),
])
def test_square_matrices_that_are_not_symmetric_need_a_layout(tmp_path, layout, match):
    courses, ids, rows = _subjects()
    np.savez(tmp_path / "m.npz", m=courses[:, :5, :], subjects=np.array(ids))
    with pytest.raises(data.DataFileError, match=match):
        data.from_files(tmp_path / "m.npz", _phenotype(tmp_path / "p.csv", rows), "diagnosis", layout=layout)


def test_ids_under_another_name_are_refused_until_named(tmp_path):
    courses, ids, rows = _subjects()
    order = np.random.default_rng(1).permutation(12)
    np.savez(tmp_path / "tc.npz", tc=courses[order], subj_ids=np.array(ids)[order])
    phenotype = _phenotype(tmp_path / "p.csv", rows)  # in the original order
    with pytest.raises(data.DataFileError, match=r"holds 'subj_ids' \(12 distinct values such as \['0\d\d', .*may be "
                       r"the subject IDs.*subject_variable='subj_ids' \(--subject-variable subj_ids\).*"
                       r"match_by_row=True \(--match-by-row\)"):
        data.from_files(tmp_path / "tc.npz", phenotype, "diagnosis")
    loaded = data.from_files(tmp_path / "tc.npz", phenotype, "diagnosis", subject_variable="subj_ids")
    np.testing.assert_array_equal(loaded.labels, [1 if int(ids[i]) % 3 == 1 else 0 for i in order])
    assert loaded.info["matched"] == "by ID ('subj_ids')"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for: no warning
        by_row = data.from_files(tmp_path / "tc.npz", phenotype, "diagnosis", match_by_row=True)
    assert by_row.info["matched"] == "row by row, as asked (match_by_row)"
    np.savez(tmp_path / "named.npz", tc=courses, subjects=np.array(ids))
    with pytest.raises(data.DataFileError, match="holds subject IDs \\('subjects'\\), and they are used; drop "
                       "match_by_row"):
        data.from_files(tmp_path / "named.npz", phenotype, "diagnosis", match_by_row=True)


def test_matlab_struct_fields_are_reached_with_dotted_names(tmp_path):
    courses, ids, rows = _subjects()
    phenotype = _phenotype(tmp_path / "p.csv", rows)
    io.savemat(tmp_path / "v5.mat", {"ica": {"tc": courses, "subjects": np.array(ids, dtype=object)},
                                    "mask": np.ones((3, 3, 3))})
    v5 = data.from_files(tmp_path / "v5.mat", phenotype, "diagnosis", variable="ica.tc")
    np.testing.assert_allclose(v5.x, courses, atol=1e-6)
    assert v5.info["variable"] == "ica.tc" and v5.info["matched"] == "by ID ('ica.subjects')"
    with pytest.raises(data.DataFileError, match=r"holds 2 numeric arrays .*\['ica.tc', 'mask'\].*'struct.field'"):
        data.from_files(tmp_path / "v5.mat", phenotype, "diagnosis")
    path = tmp_path / "v73.mat"  # MATLAB v7.3: a struct is an HDF5 group; axes stored reversed
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_group("ica").attrs["MATLAB_class"] = np.bytes_("struct")
        f["ica/tc"] = courses.T
        f["ica/subjects"] = np.array([[float(i) for i in ids]])
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    v73 = data.from_files(path, phenotype, "diagnosis", variable="ica/tc")
    np.testing.assert_allclose(v73.x, courses, atol=1e-6)
    assert v73.info["matched"] == "by ID ('ica.subjects')"


def test_ids_that_do_not_match_show_both_sides_and_the_right_column(tmp_path):
    courses, ids, rows = _subjects()
    np.savez(tmp_path / "tc.npz", tc=courses, subjects=np.array([f"Sub-{i}" for i in ids]))
    with pytest.raises(data.DataFileError, match=r"12 of 12 subjects of .* are missing from .* \(column 'subject'\): "
                       r"\['Sub-001', 'Sub-002', .*\.\.\.; that column holds \['001', '002', .*make them agree"):
        data.from_files(tmp_path / "tc.npz", _phenotype(tmp_path / "p.csv", rows), "diagnosis")
    np.savez(tmp_path / "tc.npz", tc=courses, subjects=np.array(ids))
    site_first = [(k % 4, *row) for k, row in enumerate(rows)]
    phenotype = _phenotype(tmp_path / "q.csv", site_first, header=("site", "participant", "diagnosis", "sex", "age"))
    with pytest.raises(data.DataFileError, match=r"Subject '0' appears twice in .* \(column 'site'\).*Column "
                       r"'participant' holds the data's IDs: pass subject_column='participant' \(--subject-column "
                       r"participant\)"):
        data.from_files(tmp_path / "tc.npz", phenotype, "diagnosis")
    index_first = [(k + 100, *row) for k, row in enumerate(rows)]
    phenotype = _phenotype(tmp_path / "r.csv", index_first, header=("index", "participant", "diagnosis", "sex", "age"))
    with pytest.raises(data.DataFileError, match="are missing from .*Column 'participant' holds the data's IDs"):
        data.from_files(tmp_path / "tc.npz", phenotype, "diagnosis")
    assert len(data.from_files(tmp_path / "tc.npz", phenotype, "diagnosis", subject_column="participant").x) == 12


@pytest.mark.parametrize("name", ["participants.tsv", "tabs.csv"])
def test_tab_separated_phenotypes_are_read(tmp_path, name):
    courses, ids, rows = _subjects()
    np.savez(tmp_path / "tc.npz", tc=courses, subjects=np.array([f"sub-{i}" for i in ids]))
    with open(tmp_path / name, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(("participant_id", "diagnosis", "sex", "age"))
        writer.writerows((f"sub-{i}", d, s, "n/a" if k == 0 else a) for k, (i, d, s, a) in enumerate(rows))
    loaded = data.from_files(tmp_path / "tc.npz", tmp_path / name, "diagnosis")
    assert loaded.group_names == ("HC", "SZ") and loaded.info["subjects"][:2] == ["1", "2"]


def test_nifti_file_names_without_sub_need_a_subject_pattern(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    courses, ids, rows = _subjects(n=6)
    for course, subject in zip(courses, ids):
        nibabel.save(nibabel.Nifti1Image(course, np.eye(4)), tmp_path / f"{subject}_timecourses.nii")
    phenotype = _phenotype(tmp_path / "p.csv", rows)
    with pytest.raises(data.DataFileError, match=r"Cannot read a subject ID from '001_timecourses.nii'.*"
                       r"--subject-pattern"):
        data.from_files(tmp_path / "*.nii", phenotype, "sex")
    loaded = data.from_files(tmp_path / "*.nii", phenotype, "sex", subject_pattern=r"^(\d+)_")
    np.testing.assert_allclose(loaded.x, courses, atol=1e-6)
