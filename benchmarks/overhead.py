"""Overhead of AutoSpecModel.fit against plain keras.Model.fit, side by side in one process.

For each architecture the same data is trained by: plain `keras.Model.fit`;
`AutoSpecModel.fit` with all kinds and the gradient geometry at every step; the same
without the loss per group; the same without the geometry (``geometry=False``);
the same writing every step to HDF5
with `AutoSpecCallback`; the same every 10 steps; `grad` spectra only (what
`peer_backpack.py` computes in PyTorch); and the paper's route (a full SVD of
every group gradient and factor matrix). Epochs alternate, the first epoch of each
(tracing) is excluded, and each epoch's steps are timed without the epoch's own setup
(`StepClock`); the median ms per step and its ratio to plain are reported.

With plain and autospec among the variants, the floor of each model (`floor.py`: the
float64 Gram matrices and eigen-problems its routes must do, and on the fan route the
group gradients, on random factors of the same shapes) is timed in the same alternation,
and ``(AutoSpec − plain) / floor`` is reported with the eigen-solver calls per recorded
step, the floor's FLOPs and GPU estimates from them (``--no-floor`` to skip).
``--profile`` also profiles one epoch of plain and AutoSpec op by op and reports where
AutoSpec's extra time goes, by op category.

Usage:
    python benchmarks/overhead.py [--models mlp cnn] [--batch 128] [--groups 2] [--repeats 5]
        [--no-floor] [--profile] [--null-partitions P]
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floor as floor_module  # noqa: E402


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
    """The paper's way: every G_g formed and fully decomposed with an SVD, per group (the
    spectra only: no gradient geometry)."""

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
        # Written every 50 ms rather than every 30 s, so that the writes fall inside the
        # timed steps of a short epoch (StepClock leaves the epoch's end out).
        super().__init__(path, flush_every_seconds=0.05)
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


def build(kind, architecture, groups, every, jit_compile=False, null_partitions=0):
    """A compiled model of ``kind`` (plain, autospec, autospec_no_group_loss, autospec_no_geometry,
    autospec_float32, autospec_float32_no_geometry, autospec_grad, paper); ``architecture``
    is a name of `ARCHITECTURES` or a ``(make_outputs, input_shape)`` pair."""
    make, shape = ARCHITECTURES[architecture] if isinstance(architecture, str) else architecture
    inputs = keras.Input(shape)
    outputs = make(inputs)
    names = [f"g{i}" for i in range(groups)]
    if kind == "plain":
        model = keras.Model(inputs, outputs)
    elif kind == "paper":
        model = PaperRouteModel(inputs=inputs, outputs=outputs, groups=names, geometry=False)
    elif kind == "autospec_no_group_loss":
        model = WithoutGroupLossModel(inputs=inputs, outputs=outputs, groups=names, every_n_steps=every,
                                      null_partitions=null_partitions)
    else:
        kinds = ("grad",) if kind == "autospec_grad" else ts.KINDS
        precision = "float32" if kind.startswith("autospec_float32") else "float64"
        model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=names, kinds=kinds, every_n_steps=every,
                                 precision=precision, geometry=not kind.endswith("no_geometry"),
                                 null_partitions=null_partitions)
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


class StepClock(keras.callbacks.Callback):
    """Times an epoch's steps: from the end of its first step to the end of its last.

    What an epoch does once is left out: Keras builds a dataset and an iterator from the
    arrays (~50 ms for the plain MLP on this project's VM, 14 of its steps), and the first
    step fetches the first batch (~2 ms more than the others). A real run's long epochs
    spread that over hundreds of steps; divided over a short timed epoch it added ~2.5 ms
    to every model's ms/step (20 steps) and made every ratio to plain look smaller
    (docs/benchmarks.md, "How steps are timed").

    The timed window is the epoch's steps after the first: a recording schedule of every
    ``n`` steps is timed fairly when an epoch has ``k·n + 1`` steps (``overhead.py``'s
    default 21: every window of 20 consecutive steps holds 2 of ``every(10)``'s).
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    @property
    def ms_per_step(self):
        if len(self.ends) < 2:
            raise ValueError("StepClock needs at least 2 steps per epoch (--steps 2 or more).")
        return 1e3 * (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)


def epoch_seconds(model, x, y, labels, batch, callbacks=()):
    extra = {} if not isinstance(model, ts.AutoSpecModel) else {"groups": labels}
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=list(callbacks), **extra)
    return time.perf_counter() - start


def step_ms(model, x, y, labels, batch, callbacks=()):
    """ms per step of one epoch of ``model`` (`StepClock`: the epoch's setup left out)."""
    clock = StepClock()
    epoch_seconds(model, x, y, labels, batch, [*callbacks, clock])
    return clock.ms_per_step


def synthetic_data(shape, batch, steps, groups, null_partitions=0):
    """``(x, y, labels)``: ``steps`` batches of Gaussian inputs, 10 classes, random groups
    (with ``null_partitions``, the ``[N, 1 + P]`` labels of `tf_autospec.null_partitions`)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * steps, *shape)).astype("float32")
    labels = rng.integers(0, groups, size=len(x))
    if null_partitions:
        labels = ts.null_partitions(labels, null_partitions)
    return x, rng.integers(0, 10, size=len(x)), labels


def ms_per_step_samples(models, data, batch, repeats, callbacks=None):
    """Trains ``models`` side by side: one tracing epoch each (excluded), then ``repeats``
    epochs alternating between them. Returns the ms per step of each epoch (`step_ms`),
    per model."""
    callbacks = callbacks or {}
    for name, model in models.items():
        epoch_seconds(model, *data, batch, callbacks.get(name, ()))
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(step_ms(model, *data, batch, callbacks.get(name, ())))
    return times


def median_ms_per_step(models, data, batch, repeats, callbacks=None):
    """As `ms_per_step_samples`, the median ms per step of each model."""
    samples = ms_per_step_samples(models, data, batch, repeats, callbacks)
    return {name: statistics.median(t) for name, t in samples.items()}


def run(architecture, batch, groups, steps, repeats, variants, extra=None, null_partitions=0):
    """Times ``variants`` (and the ``extra`` objects with a ``fit``, e.g. the floor) side
    by side; per name: ms/step (median, min, max over the repeats), ratio to plain and
    the per-repeat samples."""
    data = synthetic_data(ARCHITECTURES[architecture][1], batch, steps, groups, null_partitions)
    trained = {
        name: build(kind, architecture, groups, every, null_partitions=null_partitions)
        for name, (kind, every) in variants.items()
    }
    trained.update(extra or {})
    scratch = tempfile.mkdtemp()
    callbacks = {
        name: [TimedCallback(os.path.join(scratch, f"{name}.h5"))]
        if name.endswith("_writer") else []
        for name in trained
    }
    samples = ms_per_step_samples(trained, data, batch, repeats, callbacks)
    ms = {name: statistics.median(t) for name, t in samples.items()}
    shutil.rmtree(scratch)
    results = {
        name: {"ms_per_step": ms[name], "ratio": ms[name] / ms["plain"],
               "ms_min": min(samples[name]), "ms_max": max(samples[name]), "samples_ms": samples[name]}
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
    "autospec_no_geometry": ("autospec_no_geometry", 1),
    "autospec_float32": ("autospec_float32", 1),
    "autospec_float32_no_geometry": ("autospec_float32_no_geometry", 1),
    "autospec_writer": ("autospec", 1),
    "autospec_every10": ("autospec", 10),
    "autospec_grad_only": ("autospec_grad", 1),
    "paper_svd": ("paper", 1),
}


def print_floor(architecture, report):
    """The floor lines of one architecture's report."""
    per_repeat = report["over_floor_per_repeat"]
    graph = report["solver_ops_in_graph"]
    print(f"{architecture:5s} floor {report['floor_ms']:.2f} ms/step [{report['floor_ms_min']:.2f}-"
          f"{report['floor_ms_max']:.2f}]; (AutoSpec - plain) / floor = {report['over_floor']:.2f} "
          f"(per repeat: median {per_repeat['median']:.2f}, {per_repeat['min']:.2f}-{per_repeat['max']:.2f}; target <= "
          f"{floor_module.TARGET_OVER_FLOOR}: {'met' if report['target_over_floor_met'] else 'not met'}); "
          f"rest {report['rest_ms']:.2f} ms/step")
    print(f"{architecture:5s} eigen-problems per recorded step (one per kernel and kind): "
          f"{report['solver_calls_per_step']} ({report['solver_matrices_per_step']} matrices); solver calls in the "
          f"traced graph (stacked per size, `tf_autospec.solvers`): {graph['total']} {graph['by_type']} "
          f"({graph['eigh']} with vectors; both branches of run-time conds)")
    flops = report["flops"]
    print(f"{architecture:5s} floor FLOPs/step: float64 Gram+core {flops['gram_and_core_float64_flops'] / 1e9:.3f} G, "
          f"float32 group gradients {flops['gradient_float32_flops'] / 1e9:.3f} G, eigen {flops['eigen_float64_flops'] / 1e9:.3f} G; "
          f"plain step ~{report['plain_step_flops'] / 1e9:.2f} G")
    for path, t in (report["floor_per_kernel_ms"] or {}).items():
        kernel = next(k for k in report["kernels"] if k["path"] == path)
        print(f"{architecture:5s}   {path:40s} {kernel['route']:4s} R={kernel['rows_per_group']:6d} "
              f"{kernel['fan_in']}x{kernel['fan_out']} {'/'.join(kernel['kinds'])}: {t['median']:.2f} ms "
              f"[{t['min']:.2f}-{t['max']:.2f}]")
    for gpu, e in report["gpu"].items():
        print(f"{architecture:5s}   {gpu}: now {e['now'][0]:.2f}-{e['now'][1]:.2f} ms, float32 Grams "
              f"{e['float32_grams'][0]:.2f}-{e['float32_grams'][1]:.2f}, batched solver calls "
              f"{e['batched'][0]:.2f}-{e['batched'][1]:.2f}, both {e['float32_grams_batched'][0]:.2f}-"
              f"{e['float32_grams_batched'][1]:.2f} ms/step")


def print_profile(architecture, difference):
    wall, ops = difference["wall_ms_per_step"], difference["op_ms_per_step"]
    print(f"{architecture:5s} profile (median of the profiled epochs): wall plain {wall['plain']:.1f}, AutoSpec {wall['autospec']:.1f}, "
          f"floor {wall['floor']:.1f} ms/step; op self time {ops['plain']:.1f} / {ops['autospec']:.1f} / "
          f"{ops['floor']:.1f} ms/step; eigen-solver ops run per step: {difference['solver_calls_per_step']:.1f}")
    print(f"{architecture:5s}   {'op category':40s} {'plain':>8s} {'AutoSpec':>9s} {'extra':>8s} {'floor':>8s} {'rest':>8s}")
    for category, t in difference["by_category"].items():
        print(f"{architecture:5s}   {category:40s} {t['plain']:8.2f} {t['autospec']:9.2f} {t['extra']:+8.2f} "
              f"{t['floor']:8.2f} {t['rest']:+8.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=list(ARCHITECTURES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--steps", type=int, default=21,
                        help="steps per timed epoch (timed: all but the first; see StepClock)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], help="variants to leave out")
    parser.add_argument("--no-floor", action="store_true", help="do not time the floor of the exact spectra")
    parser.add_argument("--profile", action="store_true",
                        help="profile plain, AutoSpec and the floor op by op: where the rest goes")
    parser.add_argument("--profile-repeats", type=int, default=3, help="profiled epochs of each (medians)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--null-partitions", type=int, default=0,
                        help="null partitions recorded by every AutoSpec variant (the paper's route is then left out, "
                        "and the floor ignores them)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: each epoch's first step is not timed (StepClock).")
    variants = {k: v for k, v in VARIANTS.items() if k not in args.skip and not (args.null_partitions and k == "paper_svd")}
    with_floor = not args.no_floor and {"plain", "autospec"} <= set(variants)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}, Keras {keras.__version__}"
    print(f"# {machine}; batch {args.batch}, {args.groups} groups, {args.null_partitions} null partitions, "
          f"{args.steps} steps/epoch, median of {args.repeats}")
    results, floors, profiles = {}, {}, {}
    for architecture in args.models:
        extra = None
        if with_floor:
            plans, probe = floor_module.kernel_plans(*ARCHITECTURES[architecture], args.batch, args.groups)
            extra = {"floor": floor_module.FloorTimer(plans, args.batch, args.groups)}
        results[architecture] = run(architecture, args.batch, args.groups, args.steps, args.repeats, variants, extra,
                                    args.null_partitions)
        for name, r in results[architecture].items():
            writer = (f"  (writer {r['writer_ms_per_step']:.2f} ms/step = "
                      f"{100 * r['writer_share_of_step']:.1f}% of the step)" if "writer_ms_per_step" in r else "")
            print(f"{architecture:5s} {name:18s} {r['ms_per_step']:8.2f} ms/step [{r['ms_min']:.2f}-{r['ms_max']:.2f}]"
                  f"  {r['ratio']:6.2f}x plain{writer}")
        if with_floor:
            per_kernel = floor_module.time_per_kernel(plans, args.batch, args.groups, args.repeats)
            floors[architecture] = floor_module.analysis(
                plans, probe, args.batch, args.groups, results[architecture], per_kernel, xla_rows=True
            )
            print_floor(architecture, floors[architecture])
        if args.profile:
            data = synthetic_data(ARCHITECTURES[architecture][1], args.batch, args.steps, args.groups)
            profiled = {kind: build(kind, architecture, args.groups, 1) for kind in ("plain", "autospec")}
            if with_floor:
                profiled["floor"] = extra["floor"]
            steps = floor_module.profile_models(profiled, data, args.batch, args.steps, args.profile_repeats)
            profiles[architecture] = floor_module.profile_difference(steps["plain"], steps["autospec"], steps.get("floor"))
            print_profile(architecture, profiles[architecture])
        sys.stdout.flush()
        if args.json:  # after every architecture, so that a long run keeps what it measured
            with open(args.json, "w") as f:
                json.dump({"machine": machine, "args": vars(args), "results": results, "floor": floors,
                           "profile": profiles}, f, indent=2)


if __name__ == "__main__":
    main()
