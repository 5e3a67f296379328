"""Soak test: 2,000 recorded steps while another process polls the file.

Trains a small MLP recording every step with `AutoSpecCallback` (flushing every second),
while a reader process loads the file in a loop (SWMR). Afterwards it checks that every
step is in the file exactly once, that every snapshot the reader saw was consistent, and
that the closed file is plain HDF5.

Usage:
    python benchmarks/soak.py [--steps 2000] [--path soak.h5]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import tf_autospec as ts  # noqa: E402

READER = """
import importlib.util, json, sys, time
import numpy as np
spec = importlib.util.spec_from_file_location("store", sys.argv[1])
store = importlib.util.module_from_spec(spec); spec.loader.exec_module(store)
path, stop = sys.argv[2], sys.argv[3]
polls = missing = errors = inconsistent = largest = 0
import os
while not os.path.exists(stop):
    try:
        run = store.load(path)
        steps = run.records["step"]
        polls += 1
        largest = max(largest, len(run))
        sizes = {len(v) for v in run.records.values()}
        if len(sizes) > 1 or np.any(np.diff(steps) <= 0) or run.spectrum(run.layers[0], "grad", 0).shape[0] != len(run):
            inconsistent += 1
    except store.StoreError as error:
        if polls == 0 and "No run file" in str(error):
            missing += 1  # training has not flushed yet
        else:
            errors += 1
            print(error, file=sys.stderr)
    time.sleep(0.05)
print(json.dumps({"polls": polls, "before_first_flush": missing, "errors": errors,
                  "inconsistent": inconsistent, "largest_snapshot": largest}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--path", default=None)
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    path = args.path or os.path.join(folder, "soak.h5")
    stop = os.path.join(folder, "stop")
    batch, per_epoch = 16, 200
    epochs = args.steps // per_epoch
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * per_epoch, 20)).astype("float32")
    y = rng.integers(0, 2, size=len(x))
    labels = rng.integers(-1, 3, size=len(x))
    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2)(hidden), groups=["a", "b", "c"])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    store_module = os.path.join(os.path.dirname(ts.__file__), "store.py")
    reader = subprocess.Popen([sys.executable, "-c", READER, store_module, path, stop],
                              stdout=subprocess.PIPE, text=True)
    start = time.perf_counter()
    model.fit(x, y, groups=labels, batch_size=batch, epochs=epochs, verbose=0,
              callbacks=[ts.AutoSpecCallback(path, flush_every_seconds=1.0)])
    seconds = time.perf_counter() - start
    open(stop, "w").close()
    polled = json.loads(reader.communicate(timeout=120)[0])

    run = ts.load(path)
    steps = run.records["step"]
    counts = np.stack([run.counts(g) for g in run.groups], axis=1)
    with h5py.File(path, "r") as f:  # closed normally: plain HDF5
        plain_rows = f["records/step"].shape[0]
    report = {
        "steps_trained": int(model.optimizer.iterations.numpy()),
        "rows": len(run),
        "every_step_once": bool(np.array_equal(steps, np.arange(epochs * per_epoch))),
        "counts_consistent": bool(np.all(counts.sum(axis=1) <= batch)),
        "plain_hdf5_rows": plain_rows,
        "epochs_logged": len(run.epochs["epoch"]),
        "train_seconds": round(seconds, 1),
        "file_kb": os.path.getsize(path) // 1024,
        "reader": polled,
    }
    print(json.dumps(report, indent=2))
    ok = (report["every_step_once"] and report["rows"] == args.steps and plain_rows == args.steps
          and polled["inconsistent"] == 0 and polled["errors"] == 0 and polled["polls"] > 0)
    print("SOAK", "PASSED" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
