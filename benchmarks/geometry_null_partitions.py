"""The rows route with 20 null partitions, for `autospec run`'s MLP (1378-512-256-2,
batch 32, 2 groups), side by side in one process: plain `keras.Model`, AutoSpec without
and with the geometry, each with its Gram matrices read from one row-Gram matrix of the
whole batch (`spectra.BatchGramRows`, the default where `spectra.batch_gram_cheaper`) and
formed per group (and per pair: ``_per_group``, `batch_gram_cheaper` False while that
model is traced). Prints medians and quartiles of 9 epochs of 20 steps, each timed
without the epoch's setup (`overhead.step_ms`; docs/benchmarks.md, "Gradient geometry:
cost").

Usage:
    python benchmarks/geometry_null_partitions.py
"""

import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import overhead  # noqa: E402
import tf_autospec as ts  # noqa: E402
from tf_autospec import spectra  # noqa: E402

BATCH, STEPS, PARTITIONS, REPEATS = 32, 20, 20, 9
VARIANTS = ("plain", "no_geometry", "no_geometry_per_group", "geometry", "geometry_per_group")


def build(variant):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((1378,))
    hidden = keras.layers.Dense(256, activation="relu")(keras.layers.Dense(512, activation="relu")(inputs))
    outputs = keras.layers.Dense(2)(hidden)
    if variant == "plain":
        model = keras.Model(inputs, outputs)
    else:
        model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=["HC", "SZ"], null_partitions=PARTITIONS,
                                 geometry=not variant.startswith("no_geometry"))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def main():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * STEPS, 1378)).astype("float32")
    y = rng.integers(0, 2, BATCH * STEPS)
    labels = ts.null_partitions(rng.integers(0, 2, BATCH * STEPS), PARTITIONS)

    models = {variant: build(variant) for variant in VARIANTS}
    cheaper = spectra.batch_gram_cheaper
    for variant, model in models.items():  # traces (excluded); the route is chosen then
        spectra.batch_gram_cheaper = (lambda *_: False) if variant.endswith("_per_group") else cheaper
        overhead.epoch_seconds(model, x, y, labels, BATCH)
    spectra.batch_gram_cheaper = cheaper
    samples = {variant: [] for variant in models}
    for _ in range(REPEATS):
        for variant, model in models.items():
            samples[variant].append(overhead.step_ms(model, x, y, labels, BATCH))
    for variant, values in samples.items():
        print(f"P={PARTITIONS} batch {BATCH} MLP 1378-512-256-2 {variant:22s} median {statistics.median(values):7.2f} ms"
              f"  quartiles {np.percentile(values, 25):.2f}-{np.percentile(values, 75):.2f}")


if __name__ == "__main__":
    main()
