"""Under tf.distribute the spectra are those of the global batch, as on one device.

Each strategy runs in subprocesses (`distributed_scenario.py`): logical devices must be
set before TensorFlow starts, and a multi-worker cluster needs one process per worker.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import distributed_scenario as scenario
import tf_autospec as ts
from tf_autospec import load

SCENARIO = os.path.join(os.path.dirname(__file__), "distributed_scenario.py")


def _environment(**extra):
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _assert_same_spectra(distributed_steps, single_steps):
    """Same steps, counts and NaN pattern; values within 1e-4 × σ_max of each step, group,
    kernel and kind."""
    np.testing.assert_array_equal(distributed_steps["step"], single_steps["step"])
    np.testing.assert_array_equal(distributed_steps["counts"], single_steps["counts"])
    keys = [k for k in single_steps if "|" in k and not k.startswith(("null:", "geometry:"))]
    assert sorted(k for k in distributed_steps if "|" in k and not k.startswith(("null:", "geometry:"))) == sorted(keys)
    for key in keys:
        got, want = distributed_steps[key], single_steps[key]  # [steps, groups, width]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=key)
        # The absent group (3) is NaN; the others have their largest value first.
        assert np.isnan(want[:, 3]).all() and np.isfinite(want[:, :3, 0]).all(), key
        scale = want[:, :3, :1]
        assert (np.nan_to_num(np.abs(got[:, :3] - want[:, :3])) <= 1e-4 * scale).all(), key


def _assert_same_null_spectra(distributed_steps, single_steps, partitions):
    """The null partitions' spectra ``[steps, P, groups, width]`` as on one device: same
    counts (those of `tf_autospec.null_partitions`' relabelings, batch by batch) and NaN
    pattern, values within 1e-4 × σ_max of each step, partition, group, kernel and kind."""
    counts = single_steps["null_counts"]
    np.testing.assert_array_equal(distributed_steps["null_counts"], counts)
    relabeled = ts.null_partitions(scenario.labels(), partitions)[:, 1:]
    batches = relabeled.reshape(-1, scenario.GLOBAL_BATCH, partitions)  # shuffle=False: batch by batch
    expected = [[np.bincount(batch[:, p][batch[:, p] >= 0], minlength=len(scenario.GROUPS)) for p in range(partitions)]
                for batch in batches]
    np.testing.assert_array_equal(counts, np.concatenate([expected] * scenario.EPOCHS))
    keys = [k for k in single_steps if k.startswith("null:")]
    assert keys and sorted(k for k in distributed_steps if k.startswith("null:")) == sorted(keys)
    for key in keys:
        got, want = distributed_steps[key], single_steps[key]  # [steps, P, groups, width]
        assert want.shape[1] == partitions, key
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=key)
        # A group of a partition is NaN exactly where it has no sample in the batch.
        np.testing.assert_array_equal(np.isnan(want[..., 0]), counts == 0, err_msg=key)
        scale = np.nan_to_num(want[..., :1])
        assert (np.nan_to_num(np.abs(got - want)) <= 1e-4 * scale).all(), key


def test_mirrored_strategy_gives_the_global_batch_spectra(tmp_path):
    result = subprocess.run(
        [sys.executable, SCENARIO, "mirrored", str(tmp_path)],
        env=_environment(), capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    single = dict(np.load(tmp_path / "single.npz"))
    assert list(single["step"]) == [0, 1, 2, 3]  # every step
    assert (single["counts"][:, 2] > 0).all()  # group "c", on one replica only, is recorded
    mirrored = dict(np.load(tmp_path / "mirrored.npz"))
    _assert_same_spectra(mirrored, single)
    # Each group's loss from the per-sample losses of both replicas, as on one device.
    assert np.isfinite(single["group_loss"]).any()
    np.testing.assert_allclose(mirrored["group_loss"], single["group_loss"], rtol=1e-5)
    # The null partitions' groups, recorded beside the real ones, also as on one device.
    _assert_same_null_spectra(mirrored, single, scenario.NULL_PARTITIONS)
    _assert_same_geometry(mirrored, single)
    _assert_exchanges(json.loads((tmp_path / "exchange.json").read_text()),
                      recorded_groups=len(scenario.GROUPS) * (1 + scenario.NULL_PARTITIONS))


def _assert_same_geometry(distributed_steps, single_steps):
    """Cosines within 1e-5 and overlaps within 1e-4 of one device's, for the groups and the
    null partitions, with the same NaN pattern (whichever exchange each kernel used)."""
    keys = [k for k in single_steps if k.startswith("geometry:")]
    assert {k.split("|")[1] for k in keys} == {"cosine", "batch_cosine", "overlap"}
    assert sorted(k for k in distributed_steps if k.startswith("geometry:")) == sorted(keys)
    for key in keys:
        got, want = distributed_steps[key], single_steps[key]  # [steps, 1 + P, ...]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=key)
        # A 3-class softmax's Δ has rank 2: out/kernel's top-3 subspace is undefined (NaN).
        assert np.isfinite(want).any() or key == "geometry:out~kernel|overlap", key
        tolerance = 1e-4 if key.endswith("overlap") else 1e-5
        assert (np.nan_to_num(np.abs(got - want)) <= tolerance).all(), key


def _assert_exchanges(exchange, recorded_groups=len(scenario.GROUPS)):
    """Both exchanges ran, each where it moves fewer values (16 samples; the sums grow with
    the recorded groups: 4 groups, and 4 × 3 with two null partitions; the gradient geometry
    adds the unassigned samples' gradient and a float64 flag)."""
    g = recorded_groups
    assert exchange["conv/kernel"] == {"exchange": "sums",
                                       "values": g * (2 + 18 * 4 + 2 * 18**2 + 2 * 4**2) + 18 * 4 + 2}
    assert exchange["hidden/kernel"] == {"exchange": "rows", "values": 16 * (10 * 10 * 4 + 5)}
    assert exchange["lstm/lstm_cell/recurrent_kernel"]["exchange"] == "sums"
    assert exchange["out/kernel"]["exchange"] == "rows"
    if g == len(scenario.GROUPS):
        # An Embedding's AᵀA is diagonal: 20 float64 per group, fewer than 16 × (10 ids + 10 × 4 Δ).
        assert exchange["embedding/embeddings"] == {"exchange": "sums",
                                                    "values": g * (2 + 20 * 4 + 2 * 20 + 2 * 4**2) + 20 * 4 + 2}
        assert exchange["lstm/lstm_cell/kernel"]["exchange"] == "sums"
    else:
        # With 12 recorded groups, the rows of 16 samples are fewer values than the sums.
        assert exchange["embedding/embeddings"] == {"exchange": "rows", "values": 16 * (10 + 10 * 4)}
        assert exchange["lstm/lstm_cell/kernel"] == {"exchange": "rows", "values": 16 * 10 * (4 + 12)}


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_multi_worker_strategy_gives_the_global_batch_spectra_and_only_the_chief_writes(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(2)]}
    logs = [open(tmp_path / f"worker{index}.log", "w") for index in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, SCENARIO, "worker", str(tmp_path)],
            env=_environment(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})),
            stdout=log, stderr=subprocess.STDOUT,
        )
        for index, log in enumerate(logs)
    ]
    try:
        codes = [worker.wait(timeout=300) for worker in workers]
    finally:
        for worker, log in zip(workers, logs):
            worker.kill()
            log.close()
    assert codes == [0, 0], "\n".join((tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(2))
    assert not (tmp_path / "worker1.h5").exists()

    run = load(tmp_path / "worker0.h5")
    written = {"step": run.records["step"], "counts": np.stack([run.counts(g) for g in run.groups], axis=1)}
    for kernel in run.layers:
        for kind in run.kinds:
            written[f"{kernel.replace('/', '~')}|{kind}"] = np.stack(
                [run.spectrum(kernel, kind, g) for g in run.groups], axis=1
            )
    assert list(written["step"]) == [0, 2]  # every 2 steps
    # From a tf.data.Dataset the batch is unknown while tracing; its first batch chose the
    # same exchanges as arrays.
    for index in range(2):
        _assert_exchanges(json.loads((tmp_path / f"exchange{index}.json").read_text()))
    collect = scenario.Collect()
    model = scenario.build(every_n_steps=2)
    scenario.fit(model, [collect])
    _assert_same_spectra(written, scenario.as_arrays(collect.steps))
    # evaluate runs on every worker and gives the trained model's loss on one device.
    x, y = scenario.data()
    loss = model.evaluate(x, y, batch_size=scenario.GLOBAL_BATCH, verbose=0)
    for index in range(2):
        assert json.loads((tmp_path / f"evaluate{index}.json").read_text()) == pytest.approx(loss, rel=1e-5)
