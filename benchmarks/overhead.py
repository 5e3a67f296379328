"""Overhead of AutoSpecModel.fit against plain keras.Model.fit, side by side in one process.

For each architecture the same data is trained by: plain `keras.Model.fit`;
`AutoSpecModel.fit` with all kinds at every step; the same without the loss per group;
the same writing every step to HDF5
with `AutoSpecCallback`; the same every 10 steps; `grad` spectra only (what
`peer_backpack.py` computes in PyTorch); and the paper's route (a full SVD of
every group gradient and factor matrix). Runs alternate,
the first epoch of each (tracing) is excluded, and the median seconds per epoch and
its ratio to plain are reported.

Usage:
    python benchmarks/overhead.py [--models mlp cnn] [--batch 128] [--groups 2] [--repeats 5]
"""

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tf_autospec as ts  # noqa: E402
from tf_autospec import models  # noqa: E402


def transformer_outputs(inputs, blocks=2, heads=4, key_dim=32, dense=128, outputs=10):
    """A Transformer encoder over ``[time, features]``: a projection to ``heads·key_dim``,
    ``blocks`` post-LN blocks (MultiHeadAttention, then a ReLU feed-forward layer), mean
    pooling over time and a Dense head. The LayerNormalization weights are not tracked."""
    width = heads * key_dim
    h = keras.layers.Dense(width)(inputs)
    for _ in range(blocks):
        attended = keras.layers.MultiHeadAttention(heads, key_dim)(h, h)
        h = keras.layers.LayerNormalization()(h + attended)
        fed = keras.layers.Dense(width)(keras.layers.Dense(dense, activation="relu")(h))
        h = keras.layers.LayerNormalization()(h + fed)
    return keras.layers.Dense(outputs)(keras.layers.GlobalAveragePooling1D()(h))


ARCHITECTURES = {
    "mlp": (models.mlp_outputs, (28, 28, 1)),
    "cnn": (models.cnn2d_outputs, (28, 28, 1)),
    "lstm": (functools.partial(models.recurrent_outputs, cell="lstm", units=128, outputs=10), (50, 32)),
    "transformer": (transformer_outputs, (50, 32)),
    # ICA time courses: 150 time points of 53 components (the COBRE-style layout).
    "cnn1d": (functools.partial(models.cnn1d_outputs, outputs=10), (150, 53)),
}


class PaperRouteModel(ts.AutoSpecModel):
    """The paper's way: every G_g formed and fully decomposed with an SVD, per group."""

    def _kernel_spectra(self, kernel, kernel_calls, kernel_deltas, grouping, kinds):
        layer, capture = kernel.layer, kernel.capture
        a = tf.concat([capture.input_rows(layer, i) for i, _ in kernel_calls], axis=1)
        d = tf.concat([capture.output_rows(layer, g) for g in kernel_deltas], axis=1)
        out = {kind: [] for kind in kinds}
        for g in range(len(self.groups)):
            member = tf.cast(grouping.one_hot[:, g], a.dtype)[:, None, None]
            a_g = tf.reshape(a * member, [-1, kernel.fan_in])
            d_g = tf.reshape(d * member, [-1, kernel.fan_out])
            matrices = {"grad": tf.matmul(a_g, d_g, transpose_a=True), "act": a_g, "delta": d_g}
            for kind in kinds:
                values = tf.linalg.svd(matrices[kind], compute_uv=False)[: kernel.widths[kind]]
                out[kind].append(tf.pad(values, [[0, kernel.widths[kind] - tf.shape(values)[0]]]))
        return {kind: tf.stack(v) for kind, v in out.items()}, tf.fill([len(self.groups)], True)


class WithoutGroupLossModel(ts.AutoSpecModel):
    """AutoSpecModel that drops the loss per group (NaN), to time what recording it costs."""

    def _record(self, step, calls, deltas, labels, sample_losses):
        super()._record(step, calls, deltas, labels, None)


class TimedCallback(ts.AutoSpecCallback):
    """AutoSpecCallback that adds up its own time: the hook in the training thread and
    the writes in its background thread (the writer's cost, free of epoch-timing noise)."""

    def __init__(self, path):
        super().__init__(path)
        self.seconds = 0.0
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        start = time.perf_counter()
        super().on_train_batch_end(batch, logs)
        self.seconds += time.perf_counter() - start
        self.steps += 1

    def _write(self, *args):  # runs in the writer thread
        start = time.perf_counter()
        super()._write(*args)
        self.seconds += time.perf_counter() - start


def build(kind, architecture, groups, every, jit_compile=False):
    """A compiled model of ``kind`` (plain, autospec, autospec_no_group_loss, autospec_grad,
    paper); ``architecture``
    is a name of `ARCHITECTURES` or a ``(make_outputs, input_shape)`` pair."""
    make, shape = ARCHITECTURES[architecture] if isinstance(architecture, str) else architecture
    inputs = keras.Input(shape)
    outputs = make(inputs)
    names = [f"g{i}" for i in range(groups)]
    if kind == "plain":
        model = keras.Model(inputs, outputs)
    elif kind == "paper":
        model = PaperRouteModel(inputs=inputs, outputs=outputs, groups=names)
    elif kind == "autospec_no_group_loss":
        model = WithoutGroupLossModel(inputs=inputs, outputs=outputs, groups=names, every_n_steps=every)
    else:
        kinds = ("grad",) if kind == "autospec_grad" else ts.KINDS
        model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=names, kinds=kinds, every_n_steps=every)
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


def epoch_seconds(model, x, y, labels, batch, callbacks=()):
    extra = {} if not isinstance(model, ts.AutoSpecModel) else {"groups": labels}
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=list(callbacks), **extra)
    return time.perf_counter() - start


def synthetic_data(shape, batch, steps, groups):
    """``(x, y, labels)``: ``steps`` batches of Gaussian inputs, 10 classes, random groups."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * steps, *shape)).astype("float32")
    return x, rng.integers(0, 10, size=len(x)), rng.integers(0, groups, size=len(x))


def median_ms_per_step(models, data, batch, steps, repeats, callbacks=None):
    """Trains ``models`` side by side: one tracing epoch each (excluded), then ``repeats``
    epochs alternating between them. Returns the median ms per step of each."""
    callbacks = callbacks or {}
    for name, model in models.items():
        epoch_seconds(model, *data, batch, callbacks.get(name, ()))
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(epoch_seconds(model, *data, batch, callbacks.get(name, ())))
    return {name: 1e3 * statistics.median(t) / steps for name, t in times.items()}


def run(architecture, batch, groups, steps, repeats, variants):
    data = synthetic_data(ARCHITECTURES[architecture][1], batch, steps, groups)
    trained = {
        name: build(kind, architecture, groups, every)
        for name, (kind, every) in variants.items()
    }
    scratch = tempfile.mkdtemp()
    callbacks = {
        name: [TimedCallback(os.path.join(scratch, f"{name}.h5"))]
        if name.endswith("_writer") else []
        for name in trained
    }
    ms = median_ms_per_step(trained, data, batch, steps, repeats, callbacks)
    shutil.rmtree(scratch)
    results = {
        name: {"s_per_epoch": ms[name] * steps / 1e3, "ms_per_step": ms[name], "ratio": ms[name] / ms["plain"]}
        for name in trained
    }
    for name, (callback,) in ((n, c) for n, c in callbacks.items() if c):
        writer_ms = 1e3 * callback.seconds / callback.steps
        results[name]["writer_ms_per_step"] = writer_ms
        results[name]["writer_share_of_step"] = writer_ms / results[name]["ms_per_step"]
    return results


VARIANTS = {
    "plain": ("plain", 1),
    "autospec": ("autospec", 1),
    "autospec_no_group_loss": ("autospec_no_group_loss", 1),
    "autospec_writer": ("autospec", 1),
    "autospec_every10": ("autospec", 10),
    "autospec_grad_only": ("autospec_grad", 1),
    "paper_svd": ("paper", 1),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=list(ARCHITECTURES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], help="variants to leave out")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    variants = {k: v for k, v in VARIANTS.items() if k not in args.skip}
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}, Keras {keras.__version__}"
    print(f"# {machine}; batch {args.batch}, {args.groups} groups, {args.steps} steps/epoch, median of {args.repeats}")
    results = {}
    for architecture in args.models:
        results[architecture] = run(architecture, args.batch, args.groups, args.steps, args.repeats, variants)
        for name, r in results[architecture].items():
            writer = (f"  (writer {r['writer_ms_per_step']:.2f} ms/step = "
                      f"{100 * r['writer_share_of_step']:.1f}% of the step)" if "writer_ms_per_step" in r else "")
            print(f"{architecture:5s} {name:18s} {r['ms_per_step']:8.2f} ms/step  {r['ratio']:6.2f}x plain{writer}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
