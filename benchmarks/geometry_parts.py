"""What each gradient-geometry measure costs on a benchmark model (the MLP 784-512-256-10
by default, or another of `overhead.ARCHITECTURES`; batch 128, 2 groups, all kinds, every
step), side by side in one process: plain `keras.Model`,
AutoSpec with ``geometry=False``, ``["cosine"]``, ``["overlap"]`` and both (the default).
Prints each variant's median, first quartile and fastest epoch, and per round the
difference from ``geometry=False`` (median, quartiles, and in % of that round's plain
step); writes the per-epoch ms/step to ``--json`` (docs/benchmarks.md, "Gradient geometry:
cost").

Usage:
    python benchmarks/geometry_parts.py --repeats 101 --json benchmarks/results/geometry_parts_2026-11-30.json
    python benchmarks/geometry_parts.py --model cnn --steps 10 --repeats 41
"""

import argparse
import json
import statistics

import keras

import overhead
import tf_autospec as ts

VARIANTS = {"plain": None, "no_geometry": False, "cosine": ["cosine"], "overlap": ["overlap"], "both": True}


def build(architecture, geometry):
    make, shape = overhead.ARCHITECTURES[architecture]
    inputs = keras.Input(shape)
    outputs = make(inputs)
    if geometry is None:
        model = keras.Model(inputs, outputs)
    else:
        model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=["g0", "g1"], geometry=geometry)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=list(overhead.ARCHITECTURES))
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", help="also write the per-epoch ms/step here")
    args = parser.parse_args()
    models = {name: build(args.model, geometry) for name, geometry in VARIANTS.items()}
    data = overhead.synthetic_data(overhead.ARCHITECTURES[args.model][1], 128, args.steps, 2)
    times = overhead.ms_per_step_samples(models, data, 128, args.repeats)
    for name, values in times.items():
        quartiles = statistics.quantiles(values, n=4)
        print(f"{name:12s} median {statistics.median(values):6.2f} Q1 {quartiles[0]:6.2f} fastest {min(values):6.2f} ms/step")
    for name in ("cosine", "overlap", "both"):
        added = [a - b for a, b in zip(times[name], times["no_geometry"])]
        quartiles = statistics.quantiles(added, n=4)
        share = statistics.median(a / p for a, p in zip(added, times["plain"]))
        print(f"{name} - no_geometry: median {statistics.median(added):+.2f} ms [Q1 {quartiles[0]:+.2f}, "
              f"Q3 {quartiles[2]:+.2f}]; per round, of plain: {100 * share:+.0f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(times, f, indent=1)


if __name__ == "__main__":
    main()
