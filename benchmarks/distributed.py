"""AutoSpecModel.fit under tf.distribute.MirroredStrategy, against plain keras.Model.fit.

Splits the CPU into logical devices (default 2) and trains, side by side in one process
with alternating runs and the tracing epoch excluded: plain `keras.Model.fit` and
`AutoSpecModel.fit` (all kinds, every step), each under `MirroredStrategy` and on one
device. Reports the median ms per step, the ratios, and what the replicas exchange per
step for the spectra (`AutoSpecModel.distributed_exchange`).

Usage:
    python benchmarks/distributed.py [--models mlp cnn] [--batch 128] [--devices 2] [--repeats 5]
"""

import argparse
import json
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from overhead import ARCHITECTURES, build, median_ms_per_step, synthetic_data  # noqa: E402


def run(architecture, batch, groups, steps, repeats, strategy):
    data = synthetic_data(ARCHITECTURES[architecture][1], batch, steps, groups)
    models = {}
    for kind in ("plain", "autospec"):
        with strategy.scope():
            models[f"{kind}_mirrored"] = build(kind, architecture, groups, every=1)
        models[f"{kind}_one_device"] = build(kind, architecture, groups, every=1)
    ms = median_ms_per_step(models, data, batch, repeats)
    exchange = models["autospec_mirrored"].distributed_exchange
    return {
        "ms_per_step": ms,
        "autospec_over_plain_mirrored": ms["autospec_mirrored"] / ms["plain_mirrored"],
        "autospec_over_plain_one_device": ms["autospec_one_device"] / ms["plain_one_device"],
        "exchange": exchange,
        "exchanged_megabytes_per_step": 4e-6 * (batch + sum(e["values"] for e in exchange.values())),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=list(ARCHITECTURES))
    parser.add_argument("--batch", type=int, default=128, help="global batch")
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--devices", type=int, default=2, help="logical CPU devices")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices)
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.devices)])
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores as {args.devices} "
               f"logical devices, TF {tf.__version__}, Keras {keras.__version__}")
    print(f"# {machine}; global batch {args.batch}, {args.groups} groups, median of {args.repeats}")
    results = {}
    for architecture in args.models:
        r = results[architecture] = run(architecture, args.batch, args.groups, args.steps, args.repeats, strategy)
        for name, value in r["ms_per_step"].items():
            print(f"{architecture:5s} {name:20s} {value:8.2f} ms/step")
        print(f"{architecture:5s} AutoSpec/plain: mirrored {r['autospec_over_plain_mirrored']:.2f}x, "
              f"one device {r['autospec_over_plain_one_device']:.2f}x; exchanged "
              f"{r['exchanged_megabytes_per_step']:.2f} MB/step: "
              + ", ".join(f"{k} {e['exchange']} {4e-6 * e['values']:.2f} MB" for k, e in r["exchange"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
