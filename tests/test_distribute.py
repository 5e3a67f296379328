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
from tf_autospec import load

SCENARIO = os.path.join(os.path.dirname(__file__), "distributed_scenario.py")


def _environment(**extra):
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _assert_same_spectra(distributed_steps, single_steps):
    """Same steps, counts and NaN pattern; values within 1e-4 × σ_max of each step, group,
    kernel and kind."""
    np.testing.assert_array_equal(distributed_steps["step"], single_steps["step"])
    np.testing.assert_array_equal(distributed_steps["counts"], single_steps["counts"])
    keys = [k for k in single_steps if "|" in k]
    assert sorted(k for k in distributed_steps if "|" in k) == sorted(keys)
    for key in keys:
        got, want = distributed_steps[key], single_steps[key]  # [steps, groups, width]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=key)
        # The absent group (3) is NaN; the others have their largest value first.
        assert np.isnan(want[:, 3]).all() and np.isfinite(want[:, :3, 0]).all(), key
        scale = want[:, :3, :1]
        assert (np.nan_to_num(np.abs(got[:, :3] - want[:, :3])) <= 1e-4 * scale).all(), key


def test_mirrored_strategy_gives_the_global_batch_spectra(tmp_path):
    result = subprocess.run(
        [sys.executable, SCENARIO, "mirrored", str(tmp_path)],
        env=_environment(), capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    single = dict(np.load(tmp_path / "single.npz"))
    assert list(single["step"]) == [0, 1, 2, 3]  # every step
    assert (single["counts"][:, 2] > 0).all()  # group "c", on one replica only, is recorded
    _assert_same_spectra(dict(np.load(tmp_path / "mirrored.npz")), single)
    _assert_exchanges(json.loads((tmp_path / "exchange.json").read_text()))


def _assert_exchanges(exchange):
    """Both exchanges ran, each where it moves fewer values (16 samples, 4 groups)."""
    assert exchange["conv/kernel"] == {"exchange": "sums", "values": 4 * (2 + 18 * 4 + 2 * 18**2 + 2 * 4**2)}
    assert exchange["hidden/kernel"] == {"exchange": "rows", "values": 16 * (10 * 10 * 4 + 5)}
    # An Embedding's AᵀA is diagonal: 20 float64 per group, fewer than 16 × (10 ids + 10 × 4 Δ).
    assert exchange["embedding/embeddings"] == {"exchange": "sums", "values": 4 * (2 + 20 * 4 + 2 * 20 + 2 * 4**2)}
    assert exchange["lstm/lstm_cell/kernel"]["exchange"] == "sums"
    assert exchange["lstm/lstm_cell/recurrent_kernel"]["exchange"] == "sums"
    assert exchange["out/kernel"]["exchange"] == "rows"


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
