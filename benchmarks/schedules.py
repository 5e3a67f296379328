"""A whole training run under a recording schedule against plain `keras.Model.fit`.

The MNIST-size CNN of `overhead.py` trains for ``--epochs`` epochs of ``--steps`` steps
(default 20 × 469: MNIST at batch 128) as a plain `keras.Model` and as an
`AutoSpecModel` recording on ``log_spaced(10)`` (and optionally every step), side by side
in one process: the models take turns epoch by epoch, so both see the same machine load.
The first (tracing) epoch counts, as it does for a user. Reports the whole run's seconds
and its ratio to plain, and the recorded steps.

Usage:
    python benchmarks/schedules.py [--epochs 20] [--steps 469] [--json out.json]
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tf_autospec as ts  # noqa: E402
from benchmarks.overhead import ARCHITECTURES, synthetic_data  # noqa: E402


def build(schedule, architecture="cnn", groups=2):
    make, shape = ARCHITECTURES[architecture]
    inputs = keras.Input(shape)
    outputs = make(inputs)
    if schedule is None:
        model = keras.Model(inputs, outputs)
    else:
        model = ts.AutoSpecModel(inputs, outputs, groups=[f"g{i}" for i in range(groups)], schedule=schedule)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=469, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--per-decade", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    x, y, labels = synthetic_data(ARCHITECTURES["cnn"][1], args.batch, args.steps, 2)
    variants = {"plain": None, f"log_spaced({args.per_decade})": ts.schedules.log_spaced(args.per_decade)}
    models = {name: build(schedule) for name, schedule in variants.items()}
    seconds = {name: [] for name in models}
    for epoch in range(args.epochs):
        for name, model in models.items():
            extra = {"groups": labels} if isinstance(model, ts.AutoSpecModel) else {}
            start = time.perf_counter()
            model.fit(x, y, batch_size=args.batch, epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0,
                      **extra)
            seconds[name].append(time.perf_counter() - start)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}, "
               f"Keras {keras.__version__}")
    total_steps = args.epochs * args.steps
    recorded = len(variants[f"log_spaced({args.per_decade})"].recorded_steps(total_steps))
    results = {name: {"seconds": sum(s), "ratio": sum(s) / sum(seconds["plain"]),
                      "epoch_seconds": s} for name, s in seconds.items()}
    print(f"# {machine}; CNN, batch {args.batch}, {args.epochs} epochs x {args.steps} steps = {total_steps} steps; "
          f"{recorded} recorded under log_spaced({args.per_decade})")
    for name, r in results.items():
        print(f"{name:16s} {r['seconds']:8.1f} s  {r['ratio']:5.3f}x plain  "
              f"(epochs: median {np.median(r['epoch_seconds']):.2f} s, first {r['epoch_seconds'][0]:.2f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "recorded_steps": recorded, "results": results}, f,
                      indent=2)


if __name__ == "__main__":
    main()
