"""How AutoSpec's overhead grows with batch, groups, layer width and sequence length.

Each point trains a plain `keras.Model` and an `AutoSpecModel` (all kinds, every step)
of the same architecture side by side in one process (alternating runs, tracing epoch
excluded, median of the repeats) and reports the ratio of their step times:

* batch 32 / 128 / 512: MLP 784-512-256-10, 2 groups;
* groups 2 / 4 / 16: the same MLP, batch 128;
* width 512 … 4096: a square Dense ``W × W`` layer (input W → Dense(W) → Dense(10)),
  batch 128, 2 groups;
* sequence length 10 / 25 / 50: LSTM(128) over 32 features, batch 128, 2 groups;
* ``batch: NAME`` and ``groups: NAME``: the batch and groups sweeps above for the other
  architectures of `overhead.ARCHITECTURES` (CNN, LSTM, Transformer, 1D CNN); not run
  unless named, since they take long.

Usage:
    python benchmarks/scaling.py [--repeats 3] [--json out.json] [--plot out.png]
    python benchmarks/scaling.py --sweeps "batch: cnn" "groups: cnn" --steps 5 --repeats 2
"""

import argparse
import functools
import json
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tf_autospec import models  # noqa: E402
from overhead import ARCHITECTURES, build, median_ms_per_step, synthetic_data  # noqa: E402


def square_dense_outputs(inputs, outputs=10):
    return keras.layers.Dense(outputs)(keras.layers.Dense(inputs.shape[-1], activation="relu")(inputs))


MLP = (models.mlp_outputs, (28, 28, 1))
LSTM = functools.partial(models.recurrent_outputs, cell="lstm", units=128, outputs=10)

SWEEPS = {
    "batch": [(batch, MLP, batch, 2) for batch in (32, 128, 512)],
    "groups": [(groups, MLP, 128, groups) for groups in (2, 4, 16)],
    "width": [(width, (square_dense_outputs, (width,)), 128, 2) for width in (512, 1024, 2048, 4096)],
    "sequence length": [(steps, (LSTM, (steps, 32)), 128, 2) for steps in (10, 25, 50)],
}
DEFAULT_SWEEPS = list(SWEEPS)
for _name in ("cnn", "lstm", "transformer", "cnn1d"):
    SWEEPS[f"batch: {_name}"] = [(batch, ARCHITECTURES[_name], batch, 2) for batch in (32, 128, 512)]
    SWEEPS[f"groups: {_name}"] = [(groups, ARCHITECTURES[_name], 128, groups) for groups in (2, 4, 16)]


def ratio(architecture, batch, groups, steps, repeats):
    models = {kind: build(kind, architecture, groups, every=1) for kind in ("plain", "autospec")}
    ms = median_ms_per_step(models, synthetic_data(architecture[1], batch, steps, groups), batch, repeats)
    return {"plain_ms": ms["plain"], "autospec_ms": ms["autospec"], "ratio": ms["autospec"] / ms["plain"]}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # "batch" and "batch: cnn" share a panel, one line per architecture.
    panels = {}
    for sweep, points in results.items():
        panel, _, label = sweep.partition(": ")
        panels.setdefault(panel, []).append((label or ("mlp" if panel in ("batch", "groups") else None), points))
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for axis, (panel, lines) in zip(axes[0], panels.items()):
        axis.set_xscale("log", base=2)
        for label, points in lines:
            values = [p["value"] for p in points]
            axis.plot(values, [p["ratio"] for p in points], "o-", label=label)
            axis.set_xticks(values, [str(v) for v in values])
        axis.set_xlabel(panel)
        axis.set_ylabel("AutoSpec / plain step time")
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_ylim(bottom=0)
        if any(label for label, _ in lines):
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", nargs="+", default=DEFAULT_SWEEPS, choices=list(SWEEPS))
    parser.add_argument("--steps", type=int, default=10, help="steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--plot", help="also draw the ratios here (PNG)")
    args = parser.parse_args()
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"TF {tf.__version__}, Keras {keras.__version__}")
    print(f"# {machine}; all kinds, every step, {args.steps} steps/epoch, median of {args.repeats}")
    results = {}
    for sweep in args.sweeps:
        results[sweep] = []
        for value, architecture, batch, groups in SWEEPS[sweep]:
            point = {"value": value, **ratio(architecture, batch, groups, args.steps, args.repeats)}
            results[sweep].append(point)
            print(f"{sweep:20s} {value:5d}  plain {point['plain_ms']:8.2f} ms  autospec {point['autospec_ms']:8.2f} ms"
                  f"  {point['ratio']:5.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
