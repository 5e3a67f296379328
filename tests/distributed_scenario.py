"""Models and data shared by the tf.distribute tests, and the script their subprocesses run.

``python distributed_scenario.py mirrored OUT``: two logical CPU devices; the model,
recorded every step with ``NULL_PARTITIONS`` null partitions, is fitted under
`MirroredStrategy` and on one device; every recorded step of each (the groups' and the null
partitions' spectra) goes to ``OUT/<mirrored|single>.npz``, and what the replicas exchanged
to ``OUT/exchange.json``.

``python distributed_scenario.py worker OUT`` (with ``TF_CONFIG`` set): one worker of a
`MultiWorkerMirroredStrategy`; it fits the model, recorded every 2 steps, from a
`tf.data.Dataset` with an
`AutoSpecCallback` writing ``OUT/worker<index>.h5``, then evaluates it (the loss goes to
``OUT/evaluate<index>.json``).
"""

import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf

import tf_autospec as ts

GROUPS = ["a", "b", "c", "absent"]
GLOBAL_BATCH = 16
SAMPLES = 32
EPOCHS = 2
NULL_PARTITIONS = 2  # in the MirroredStrategy case


def labels():
    """Imbalanced groups, unassigned samples (-1), a group ("c") only in the first half of
    each batch (one replica's share), and a declared group that never occurs."""
    return np.array([0, 0, 0, 1, 2, -1, 0, 1, 0, 0, 1, 0, -1, 1, 0, 0] * 2, dtype=np.int32)


def build(every_n_steps, null_partitions=0):
    """A compiled AutoSpecModel with deterministic weights (build it in the strategy's scope).

    An image branch, Conv2D over 12×12×2 (its sums, ~3k values, are exchanged rather than
    its rows, ~11k) → Dense (rows exchanged), and a token branch, Embedding (sums: its
    ``AᵀA`` is diagonal) → LSTM over 10 steps (sums, both kernels sharing Δ), joined by
    the output Dense (rows).
    """
    image = keras.Input((12, 12, 2), name="image")
    tokens = keras.Input((10,), dtype="int32", name="tokens")
    seen = keras.layers.Conv2D(4, 3, activation="tanh", name="conv")(image)
    seen = keras.layers.Dense(5, activation="relu", name="hidden")(keras.layers.Flatten()(seen))
    read = keras.layers.LSTM(3, name="lstm")(keras.layers.Embedding(20, 4, name="embedding")(tokens))
    outputs = keras.layers.Dense(3, name="out")(keras.layers.Concatenate()([seen, read]))
    model = ts.AutoSpecModel(
        inputs=[image, tokens], outputs=outputs, groups=GROUPS, every_n_steps=every_n_steps,
        null_partitions=null_partitions,
    )
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(scale=0.4, size=w.shape).astype("float32") for w in model.get_weights()])
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def data():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(SAMPLES, 12, 12, 2)).astype("float32")
    tokens = rng.integers(0, 20, size=(SAMPLES, 10)).astype("int32")
    return [image, tokens], rng.integers(0, 3, size=SAMPLES)


class Collect(keras.callbacks.Callback):
    """Keeps every recorded step's spectra."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        spectra = self.model.last_spectra
        if spectra is not None:
            self.steps.append(spectra)


def fit(model, callbacks, dataset=False):
    """Fits on `data`, from arrays or from an equivalent `tf.data.Dataset` whose batch
    dimension is unknown while tracing."""
    x, y = data()
    if dataset:
        pipeline = tf.data.Dataset.from_tensor_slices(({"image": x[0], "tokens": x[1], "group": labels()}, y))
        model.fit(pipeline.batch(GLOBAL_BATCH), epochs=EPOCHS, verbose=0, callbacks=callbacks)
    else:
        model.fit(x, y, groups=labels(), batch_size=GLOBAL_BATCH, epochs=EPOCHS, shuffle=False,
                  verbose=0, callbacks=callbacks)


def as_arrays(steps):
    """``{"step": [n], "counts": [n, G], "group_loss": [n, G], "<kernel path, / as ~>|<kind>": [n, G, width]}``, and
    with null partitions ``"null_counts": [n, P, G]``, ``"null:<kernel path>|<kind>": [n, P, G, width]``; the
    gradient geometry as ``"geometry:<kernel path>|<name>": [n, 1 + P, ...]`` (the real groups first)."""
    out = {"step": np.array([s.step for s in steps]), "counts": np.stack([s.counts for s in steps]),
           "group_loss": np.stack([s.group_loss for s in steps])}
    for key in steps[0].spectra:
        out["|".join(key).replace("/", "~")] = np.stack([s.spectra[key] for s in steps])
    if len(steps[0].null_counts):
        out["null_counts"] = np.stack([s.null_counts for s in steps])
        for key in steps[0].null_spectra:
            out["null:" + "|".join(key).replace("/", "~")] = np.stack([s.null_spectra[key] for s in steps])
    for key in steps[0].geometry:
        out["geometry:" + "|".join(key).replace("/", "~")] = np.stack(
            [np.concatenate([s.geometry[key][None], s.null_geometry.get(key, np.zeros((0, *s.geometry[key].shape)))])
             for s in steps])
    return out


def run_mirrored(out):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for where in ("mirrored", "single"):
        collect = Collect()
        if where == "mirrored":
            with strategy.scope():
                model = build(every_n_steps=1, null_partitions=NULL_PARTITIONS)
            fit(model, [collect])
            with open(os.path.join(out, "exchange.json"), "w") as f:
                json.dump(model.distributed_exchange, f)
        else:
            fit(build(every_n_steps=1, null_partitions=NULL_PARTITIONS), [collect])
        np.savez(os.path.join(out, f"{where}.npz"), **as_arrays(collect.steps))


def run_worker(out):
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build(every_n_steps=2)
    fit(model, [ts.AutoSpecCallback(os.path.join(out, f"worker{index}.h5"))], dataset=True)
    with open(os.path.join(out, f"exchange{index}.json"), "w") as f:
        json.dump(model.distributed_exchange, f)
    x, y = data()
    with open(os.path.join(out, f"evaluate{index}.json"), "w") as f:
        json.dump(model.evaluate(x, y, batch_size=GLOBAL_BATCH, verbose=0), f)


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    {"mirrored": run_mirrored, "worker": run_worker}[mode](out)
