"""Quickstart: record per-group gradient spectra of an MLP on built-in synthetic data.

Two groups ("HC", "SZ") of 20-feature samples; the SZ group's features are shifted
and rescaled, so the network sees it differently. Trains a small MLP with
`AutoSpecModel`, collects the spectra of every step through `model.last_spectra`,
and prints, per layer, how the top gradient singular value of each group evolved.

Run:
    python examples/quickstart.py [--epochs 3]
"""

import argparse

import keras
import numpy as np

import tf_autospec as ts


def synthetic_groups(n=1024, features=20, seed=0):
    """Two labelled groups whose inputs differ in mean and scale."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 2, size=n)
    x = rng.normal(size=(n, features)).astype("float32")
    x[groups == 1] = 1.5 * x[groups == 1] + 0.5
    w = rng.normal(size=(features,))
    y = (x @ w + 0.3 * rng.normal(size=n) > 0).astype("int32")
    return x, y, groups


class History(keras.callbacks.Callback):
    """Keeps the spectra handed over after every training step."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        spectra = self.model.last_spectra
        if spectra is not None:
            self.steps.append(spectra)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    x, y, groups = synthetic_groups()
    inputs = keras.Input((x.shape[1],))
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(2, name="logits")(hidden)
    model = ts.AutoSpecModel(inputs=inputs, outputs=outputs, groups=["HC", "SZ"])
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = History()
    model.fit(x, y, groups=groups, batch_size=64, epochs=args.epochs, callbacks=[history])

    print(f"\nRecorded {len(history.steps)} steps; top singular value of each group's gradient:")
    for kernel in history.steps[0].kernels:
        for group in ("HC", "SZ"):
            top = np.array([s.spectrum(kernel, "grad", group)[0] for s in history.steps])
            print(f"  {kernel:16s} {group}: first {top[0]:.4f}  last {top[-1]:.4f}  mean {top.mean():.4f}")


if __name__ == "__main__":
    main()
