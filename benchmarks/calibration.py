"""Calibration of tf_autospec.stats.across_runs: false positives under the null, power
under a planted difference, and a null check on real AutoSpec trainings.

1. Simulated null: runs with no group difference; the fraction of repetitions with any
   FDR-significant test (= the FDR under the complete null) at alpha = 0.05.
2. Simulated planted difference: the second group's spectra of one layer scaled by
   1 + shift; how often that layer is found, and how often another one is.
3. Real trainings with random group labels (no true difference): an MLP trained with
   several seeds, groups assigned at random per seed; significant tests counted.

Usage:
    python benchmarks/calibration.py [--repetitions 200] [--runs 6] [--real-seeds 8]
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tf_autospec as ts  # noqa: E402
from tf_autospec import stats  # noqa: E402
from tf_autospec.calibration import simulated_run  # noqa: E402

SUMMARIES = ("spectral_norm", "nuclear_norm", "effective_rank", "sigma_2")


def simulated(repetitions, runs, shift, folder, rng):
    any_significant, found, elsewhere, proportions = 0, 0, 0, []
    for repetition in range(repetitions):
        files = [simulated_run(os.path.join(folder, f"s{repetition}_{i}.h5"), rng, shift=shift,
                               shift_layer="layer1/kernel" if shift else None) for i in range(runs)]
        rows = stats.across_runs(files, "HC", "SZ", summaries=SUMMARIES, permutations=500, seed=repetition)
        significant = {r["layer"] for r in rows if r["significant"]}
        discoveries = [r for r in rows if r["significant"]]
        if discoveries:  # false discovery proportion of this repetition
            proportions.append(np.mean([r["layer"] != "layer1/kernel" or not shift for r in discoveries]))
        any_significant += bool(significant)
        found += "layer1/kernel" in significant
        elsewhere += bool(significant - {"layer1/kernel"})
        for path in files:
            os.remove(path.path)
    fdr = float(np.sum(proportions) / repetitions)  # E[FDP], FDP = 0 without discoveries
    return any_significant / repetitions, found / repetitions, elsewhere / repetitions, fdr


def real_null(seeds, folder):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 16)).astype("float32")
    y = (x[:, :4].sum(axis=1) > 0).astype(int)
    files = []
    for seed in range(seeds):
        keras.utils.set_random_seed(seed)
        labels = np.random.default_rng(100 + seed).integers(0, 2, size=len(x))  # random groups
        inputs = keras.Input((16,))
        hidden = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
        model = ts.AutoSpecModel(inputs=inputs, outputs=keras.layers.Dense(2, name="out")(hidden),
                                 groups=["HC", "SZ"])
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        path = os.path.join(folder, f"real{seed}.h5")
        model.fit(x, y, groups=labels, batch_size=64, epochs=3, verbose=0, callbacks=[ts.AutoSpecCallback(path)])
        files.append(ts.load(path))
    rows = stats.across_runs(files, "HC", "SZ", summaries=SUMMARIES, permutations=1000)
    return len(rows), sum(r["significant"] for r in rows), min(r["q_welch"] for r in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=200)
    parser.add_argument("--runs", type=int, default=6, help="runs (seeds/folds) per repetition")
    parser.add_argument("--shift", type=float, default=0.3)
    parser.add_argument("--real-seeds", type=int, default=8)
    args = parser.parse_args()
    folder = tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    rate, _, _, _ = simulated(args.repetitions, args.runs, 0.0, folder, rng)
    print(f"simulated null: {args.repetitions} repetitions x {args.runs} runs; "
          f"FDR-corrected false-positive rate (any significant test) = {rate:.3f}")
    _, power, wrong, fdr = simulated(args.repetitions // 4, args.runs, args.shift, folder, rng)
    print(f"simulated planted difference (x{1 + args.shift} in layer1): found in {power:.2f} of repetitions; "
          f"another layer flagged in {wrong:.2f} of them; false discovery rate {fdr:.3f}")
    tests, significant, smallest_q = real_null(args.real_seeds, folder)
    print(f"real trainings, random groups: {args.real_seeds} seeds, {tests} tests, {significant} significant "
          f"(smallest Welch q {smallest_q:.3f})")


if __name__ == "__main__":
    main()
