"""Loaders of real data: MNIST (mocked TFDS), scikit-learn digits, users' neuroimaging files."""

import csv
import time

import h5py
import numpy as np
import pytest
from scipy import io

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
    assert mnist.group_names == ("0", "1", "2", "3")
    np.testing.assert_array_equal(mnist.labels, np.where(mnist.y < 4, mnist.y, -1))
    with tfds.testing.mock_data(num_examples=60):
        chosen = data.mnist(groups=[7, 2], data_dir="/nonexistent", n_samples=30)
    assert chosen.group_names == ("7", "2") and len(chosen.y) == 30
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
    assert digits.group_names == ("0", "1", "2")
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


def test_hdf5_and_fnc_matrices_and_a_numeric_target(tmp_path):
    courses, ids, rows = _subjects()
    fnc = np.stack([np.corrcoef(c.T) for c in courses])
    with h5py.File(tmp_path / "fnc.h5", "w") as f:
        f["fnc"] = fnc
    loaded = data.from_files(tmp_path / "fnc.h5", _phenotype(tmp_path / "p.csv", rows), "sex", target="age",
                             group_names=["M", "F"])
    assert loaded.info["kind"] == "fnc" and loaded.group_names == ("M", "F")
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
    pattern = data.from_files(str(folder / "*sub00[12]*.nii"), _phenotype(tmp_path / "q.csv", rows), "sex")
    assert len(pattern.x) == 2


def test_numeric_group_column_is_binned(tmp_path):
    courses, ids, rows = _subjects()
    np.savez(tmp_path / "tc.npz", tc=courses)  # no IDs: matched to the CSV row by row
    loaded = data.from_files(tmp_path / "tc.npz", _phenotype(tmp_path / "p.csv", rows), "age", bins=2)
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
    ("missing_subject", "1 subjects of .* are missing from"),
    ("no_column", "has no column 'dx'; its columns are"),
    ("unknown_value", r"values \['SZ'\] that are not among the group names"),
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
