"""Group gradient geometry in the run file: RunWriter writes it, Run reads back exactly
what was written, resumes and cuts keep it aligned with records/step."""

import subprocess
import sys
import textwrap
import types
import warnings

import h5py
import numpy as np
import pytest

from tf_autospec import store
from tf_autospec.pairs import group_pairs

GROUPS = ["HC", "SZ", "BP"]
PAIRS = [("HC", "SZ"), ("HC", "BP"), ("SZ", "BP")]
LAYERS = ["hidden/kernel", "out/kernel"]
P = 2


def _layout(groups=GROUPS, geometry=("cosine", "overlap"), partitions=P, overlap_k=3):
    kernels = [{"path": path, "layer": path.split("/")[0], "layer_class": "Dense", "fan_in": 4, "fan_out": 3,
                "widths": {"grad": 3}} for path in LAYERS]
    layout = {"groups": list(groups), "kinds": ["grad"], "kernels": kernels, "log_keys": ["loss"],
              "null_partitions": partitions, "overlap_k": overlap_k}
    if geometry is not None:
        layout["geometry"] = list(geometry)
    return layout


def _rows(layout, n, first_step=0, epochs_of=None, seed=0):
    """``n`` recorded rows of hand-made values for ``layout``: (records, spectra, counts,
    null_spectra, null_counts, group_loss, geometry, null_geometry)."""
    rng = np.random.default_rng(seed)
    g, partitions = len(layout["groups"]), layout["null_partitions"]
    pairs = len(group_pairs(layout["groups"]))
    steps = np.arange(first_step, first_step + n)
    records = {"epoch": steps // 3 if epochs_of is None else epochs_of, "batch": steps % 3,
               "wall_time": steps.astype(float), "step": steps, "loss": rng.normal(size=n)}
    spectra = {(k["path"], "grad"): rng.uniform(size=(n, g, 3)).astype("f4") for k in layout["kernels"]}
    null_spectra = {key: rng.uniform(size=(n, partitions, g, 3)).astype("f4") for key in spectra}
    counts, null_counts = np.ones((n, g), "i4"), np.ones((n, partitions, g), "i4")
    geometry, null_geometry = {}, {}
    widths = {"cosine": pairs, "batch_cosine": g, "overlap": pairs}
    for measure in layout.get("geometry", []):
        for name in store.GEOMETRY_DATASETS[measure]:
            for kernel in layout["kernels"]:
                values = rng.uniform(-1, 1, size=(n, widths[name])).astype("f4")
                values[0, :1] = np.nan  # undefined somewhere (an absent group)
                geometry[(kernel["path"], name)] = values
                null_geometry[(kernel["path"], name)] = rng.uniform(
                    -1, 1, size=(n, partitions, widths[name])).astype("f4")
    return records, spectra, counts, null_spectra, null_counts, np.zeros((n, g)), geometry, null_geometry


def _write(path, layout, batches):
    """Writes ``batches`` (lists of `_rows` tuples) as successive appends; returns the rows
    concatenated."""
    writer = store.RunWriter(str(path), layout, {"options": {}}, resume=False)
    for rows in batches:
        writer.append(*rows)
    writer.close()
    return _concatenate(batches)


def _concatenate(batches):
    records = {key: np.concatenate([b[0][key] for b in batches]) for key in batches[0][0]}
    geometry = {key: np.concatenate([b[6][key] for b in batches]) for key in batches[0][6]}
    null_geometry = {key: np.concatenate([b[7][key] for b in batches]) for key in batches[0][7]}
    return records, geometry, null_geometry


@pytest.fixture
def written(tmp_path):
    layout = _layout()
    path = tmp_path / "run.h5"
    records, geometry, null_geometry = _write(path, layout, [_rows(layout, 4), _rows(layout, 2, 4, seed=1)])
    return path, records, geometry, null_geometry


def test_the_file_names_the_measures_pairs_and_k(written):
    path = written[0]
    run = store.load(path)
    assert run.geometry == ("cosine", "overlap")
    assert run.pairs == PAIRS and run.overlap_k == 3
    with h5py.File(path, "r") as f:  # readable without tf_autospec
        assert f["kernels/hidden/kernel/cosine"].shape == (6, 3)
        assert f["kernels/hidden/kernel/batch_cosine"].shape == (6, 3)
        assert f["null/out/kernel/overlap"].shape == (6, P, 3)


def test_every_method_returns_what_was_written(written):
    path, records, geometry, null_geometry = written
    run = store.load(path)
    for layer in LAYERS:
        for pair, (a, b) in enumerate(group_pairs(GROUPS)):
            for first, second in [(a, b), (b, a), (GROUPS[a], GROUPS[b]), (GROUPS[b], GROUPS[a])]:
                cosine = run.cosine(layer, first, second)
                assert cosine.dtype == np.float32 and cosine.shape == (6,)
                np.testing.assert_array_equal(cosine, geometry[(layer, "cosine")][:, pair])
                np.testing.assert_array_equal(run.overlap(layer, first, second),
                                              geometry[(layer, "overlap")][:, pair])
                np.testing.assert_array_equal(run.null_cosine(layer, first, second),
                                              null_geometry[(layer, "cosine")][:, :, pair])
                np.testing.assert_array_equal(run.null_overlap(layer, first, second),
                                              null_geometry[(layer, "overlap")][:, :, pair])
        for g, group in enumerate(GROUPS):
            np.testing.assert_array_equal(run.cosine(layer, group), geometry[(layer, "batch_cosine")][:, g])
            np.testing.assert_array_equal(run.cosine(layer, g, None), geometry[(layer, "batch_cosine")][:, g])
            null = run.null_cosine(layer, group)
            assert null.shape == (6, P)
            np.testing.assert_array_equal(null, null_geometry[(layer, "batch_cosine")][:, :, g])
    # An undefined value stays NaN.
    assert np.isnan(run.cosine("hidden/kernel", "HC", "SZ")[0])


@pytest.mark.parametrize("reduce", ["mean", "median"])
def test_per_epoch_aggregates_the_epochs_records(written, reduce):
    path, records, geometry, _ = written
    run = store.load(path)
    function = {"mean": np.nanmean, "median": np.nanmedian}[reduce]
    epochs, values = run.epoch_cosine("out/kernel", "BP", "HC", reduce=reduce)
    np.testing.assert_array_equal(epochs, [0, 1])
    cosine = geometry[("out/kernel", "cosine")][:, 1].astype(np.float64)
    np.testing.assert_allclose(values, [function(cosine[records["epoch"] == e]) for e in (0, 1)])
    _, batch = run.epoch_cosine("out/kernel", "SZ", reduce=reduce)
    np.testing.assert_allclose(batch, [function(geometry[("out/kernel", "batch_cosine")][:, 1][
        records["epoch"] == e].astype(np.float64)) for e in (0, 1)])
    _, overlap = run.epoch_overlap("out/kernel", "SZ", "BP", reduce=reduce)
    np.testing.assert_allclose(overlap, [function(geometry[("out/kernel", "overlap")][:, 2][
        records["epoch"] == e].astype(np.float64)) for e in (0, 1)])
    with pytest.raises(ValueError, match="reduce must be one of"):
        run.epoch_overlap("out/kernel", "SZ", "BP", reduce="max")


def test_errors_name_the_problem_and_the_fix(written, tmp_path):
    run = store.load(written[0])
    with pytest.raises(ValueError, match="'SZ' with itself.*b=None"):
        run.cosine("hidden/kernel", "SZ", 1)
    with pytest.raises(ValueError, match="overlap of group 'HC' with itself"):
        run.overlap("hidden/kernel", 0, "HC")
    with pytest.raises(KeyError, match="Unknown layer"):
        run.cosine("nope/kernel", "HC", "SZ")
    with pytest.raises(KeyError, match="Unknown group 'XX'"):
        run.overlap("hidden/kernel", "HC", "XX")
    # Only the cosine recorded, and no null partitions.
    layout = _layout(geometry=("cosine",), partitions=0)
    path = tmp_path / "cosine_only.h5"
    records, geometry, _ = _write(path, layout, [_rows(layout, 3)])
    run = store.load(path)
    assert run.geometry == ("cosine",) and run.overlap_k is None and run.null_partitions == 0
    np.testing.assert_array_equal(run.cosine("out/kernel", "SZ", "BP"), geometry[("out/kernel", "cosine")][:, 2])
    with pytest.raises(KeyError, match=r"no gradient overlap.*geometry=True"):
        run.overlap("out/kernel", "SZ", "BP")
    with pytest.raises(KeyError, match=r"no null partitions.*null_partitions=P"):
        run.null_cosine("out/kernel", "SZ", "BP")
    with h5py.File(path, "r") as f:
        assert "overlap" not in f["kernels/out/kernel"] and "overlap_k" not in f.attrs


def test_append_without_the_geometry_the_layout_records_is_refused(tmp_path):
    layout = _layout()
    writer = store.RunWriter(str(tmp_path / "run.h5"), layout, {}, resume=False)
    try:
        with pytest.raises(ValueError, match="pass geometry="):
            writer.append(*_rows(layout, 1)[:6])
    finally:
        writer.close()


@pytest.mark.parametrize("older", [True, False], ids=["written-before-geometry", "geometry-off"])
def test_a_file_without_geometry_loads_and_says_how_to_record_it(tmp_path, older):
    layout = _layout(geometry=None)
    path = tmp_path / "run.h5"
    _write(path, layout, [_rows(layout, 3)])
    if older:  # as a writer before geometry existed left it
        with h5py.File(path, "a") as f:
            for name in ("geometry", "pairs"):
                del f.attrs[name]
    run = store.load(path)
    assert run.geometry == () and run.overlap_k is None
    assert run.pairs == PAIRS  # the order the pair axis would have
    with pytest.raises(KeyError, match=r"no gradient cosine.*AutoSpecModel\(\.\.\., geometry=True\)"):
        run.cosine("hidden/kernel", "HC", "SZ")
    with pytest.raises(KeyError, match="geometry=True"):
        run.epoch_cosine("hidden/kernel", "HC")
    with h5py.File(path, "r") as f:
        assert "cosine" not in f["kernels/hidden/kernel"]


def test_one_group_has_no_pairs_but_its_batch_cosine(tmp_path):
    layout = _layout(groups=["all"])
    path = tmp_path / "run.h5"
    _, geometry, null_geometry = _write(path, layout, [_rows(layout, 3)])
    run = store.load(path)
    assert run.pairs == []
    np.testing.assert_array_equal(run.cosine("out/kernel", "all"), geometry[("out/kernel", "batch_cosine")][:, 0])
    np.testing.assert_array_equal(run.null_cosine("out/kernel", 0),
                                  null_geometry[("out/kernel", "batch_cosine")][:, :, 0])
    with h5py.File(path, "r") as f:
        assert f["kernels/out/kernel/cosine"].shape == (3, 0)
    with pytest.raises(ValueError, match="with itself"):
        run.cosine("out/kernel", "all", "all")


def _assert_aligned(path, records, geometry, null_geometry):
    """Every geometry dataset has exactly the rows of records/step, equal to ``geometry``."""
    run = store.load(path)
    np.testing.assert_array_equal(run.records["step"], records["step"])
    with h5py.File(path, "r") as f:
        rows = f["records/step"].shape[0]
        for (layer, name), values in geometry.items():
            np.testing.assert_array_equal(f[f"kernels/{layer}/{name}"][:], values)
            np.testing.assert_array_equal(f[f"null/{layer}/{name}"][:], null_geometry[(layer, name)])
            assert f[f"kernels/{layer}/{name}"].shape[0] == f[f"null/{layer}/{name}"].shape[0] == rows
    for pair, (a, b) in enumerate(group_pairs(GROUPS)):
        np.testing.assert_array_equal(run.cosine("out/kernel", a, b), geometry[("out/kernel", "cosine")][:, pair])


def _resume(path, layout, rows, keep=None):
    writer = store.RunWriter(str(path), layout, {}, resume={"reasons": ["resume=True"]}, keep=keep)
    writer.append(*rows)
    writer.close()


def test_a_resume_that_cuts_rows_cuts_the_geometry_with_them(written):
    path, records, geometry, null_geometry = written
    layout = _layout()
    later = _rows(layout, 2, first_step=10, epochs_of=np.array([3, 3]), seed=7)
    _resume(path, layout, later, keep={"records": 3, "epochs": 0})
    kept = ({key: v[:3] for key, v in records.items()}, {key: v[:3] for key, v in geometry.items()},
            {key: v[:3] for key, v in null_geometry.items()})
    _assert_aligned(path, *_concatenate([(kept[0], None, None, None, None, None, kept[1], kept[2]), later]))


def test_a_resume_cuts_a_partial_row_a_failed_write_left(written):
    path, records, geometry, null_geometry = written
    with h5py.File(path, "a") as f:  # a write that failed before records/step: a row only in geometry
        for name in ("kernels/hidden/kernel/cosine", "null/out/kernel/overlap"):
            f[name].resize(f[name].shape[0] + 1, axis=0)
    layout = _layout()
    later = _rows(layout, 1, first_step=6, epochs_of=np.array([2]), seed=3)
    _resume(path, layout, later)
    _assert_aligned(path, *_concatenate([(records, None, None, None, None, None, geometry, null_geometry), later]))


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, h5py, numpy as np
    f = h5py.File(sys.argv[1], "a", libver="latest")
    f.swmr_mode = True
    for name in ("kernels/out/kernel/batch_cosine", "null/hidden/kernel/cosine"):  # a row half written
        f[name].resize(f[name].shape[0] + 1, axis=0)
    f.flush()
    os._exit(0)  # killed: the file stays marked open for SWMR writing
    """
)


def test_a_killed_writer_s_file_is_recovered_with_its_geometry(written, tmp_path):
    path, records, geometry, null_geometry = written
    script = tmp_path / "killed.py"
    script.write_text(KILLED_WRITER)
    subprocess.run([sys.executable, str(script), str(path)], check=True)
    run = store.load(path)  # read in SWMR mode, up to records/step
    np.testing.assert_array_equal(run.cosine("out/kernel", "BP"), geometry[("out/kernel", "batch_cosine")][:, 2])
    layout = _layout()
    later = _rows(layout, 2, first_step=6, epochs_of=np.array([2, 2]), seed=5)
    _resume(path, layout, later)
    _assert_aligned(path, *_concatenate([(records, None, None, None, None, None, geometry, null_geometry), later]))


def test_tensorboard_scalars_of_the_geometry(tmp_path):
    pytest.importorskip("tensorboard")
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tf_autospec.callback import AutoSpecCallback

    callback = AutoSpecCallback(tmp_path / "run.h5", tensorboard_dir=str(tmp_path / "tb"))
    callback.set_model(types.SimpleNamespace(groups=tuple(GROUPS)))
    callback._tensorboard = tf.summary.create_file_writer(str(tmp_path / "tb"))
    _, _, _, _, _, _, geometry, _ = _rows(_layout(), 3)
    callback._write_tensorboard(np.array([4, 5, 6]), {}, geometry)
    callback._tensorboard.flush()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    events.Reload()

    def scalars(tag):
        return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]

    cosine = geometry[("hidden/kernel", "cosine")][:, 0]  # NaN at the first step: not written
    assert scalars("hidden/kernel/HC~SZ/cosine") == [(5, pytest.approx(cosine[1])), (6, pytest.approx(cosine[2]))]
    batch = geometry[("out/kernel", "batch_cosine")][:, 2]
    assert scalars("out/kernel/BP/batch_cosine") == [(s, pytest.approx(v)) for s, v in zip([4, 5, 6], batch)]
    overlap = geometry[("out/kernel", "overlap")][:, 2]
    assert scalars("out/kernel/SZ~BP/overlap")[-1] == (6, pytest.approx(overlap[2]))


def test_a_resume_with_other_geometry_is_refused_with_the_fix(tmp_path):
    import keras

    import tf_autospec as ts
    from tf_autospec import callback as callback_module

    inputs = keras.Input((4,))
    model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(3)(inputs), groups=GROUPS)
    model.autospec_geometry, model.autospec_overlap_k = ("cosine", "overlap"), 3
    path = tmp_path / "run.h5"
    store.RunWriter(str(path), callback_module._layout(model, ["loss"]),
                    {"options": callback_module._options(model)}, resume=False).close()
    callback = ts.AutoSpecCallback(path)
    callback.set_model(model)
    callback._check_same_layout(store.load(path))  # the same geometry: continued
    model.autospec_overlap_k = 5
    with pytest.raises(store.StoreError, match=r"overlap_k: file has 3, model has 5.*overwrite=True.*"
                       r"AutoSpecModel\(\.\.\., geometry=\('cosine', 'overlap'\), overlap_k=3\)"):
        callback._check_same_layout(store.load(path))
    model.autospec_geometry = ()
    with pytest.raises(store.StoreError, match=r"geometry: file has \['cosine', 'overlap'\], model has \[\]"):
        callback._check_same_layout(store.load(path))


def test_a_file_without_geometry_is_continued_without_it_and_says_so(tmp_path):
    # Written before the geometry was recorded, or with geometry=False; continued by a model
    # that records it (e.g. loaded from a checkpoint of that time, which gets the default).
    import keras

    import tf_autospec as ts

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 3)).astype("float32")
    labels = np.arange(32) % 3
    path = tmp_path / "run.h5"
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3)(inputs)
    for geometry, epochs in ((False, 1), (True, 2)):
        model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=GROUPS, geometry=geometry)
        model.compile(optimizer="sgd", loss="mse")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, groups=labels, batch_size=16, epochs=epochs, initial_epoch=epochs - 1, verbose=0,
                      callbacks=[ts.AutoSpecCallback(path)])
    assert any("holds no gradient geometry" in str(w.message) and "write to a new file" in str(w.message)
               for w in caught)
    run = store.load(path)
    assert run.geometry == () and list(run.records["epoch"]) == [0, 0, 1, 1]
    assert np.isfinite(model.last_spectra.cosine("dense/kernel", "HC", "SZ"))
