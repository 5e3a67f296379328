"""What a user does in a new Python process with a model saved by another one.

Run by tests/test_keras_citizenship.py as ``python keras_citizen_scenario.py VERB FOLDER``:

* ``step``: loads every ``FOLDER/<form>.keras`` (no custom_objects; the user's subclass is
  registered by importing ``user_models.py`` from FOLDER), trains one step on
  ``FOLDER/batch.npz`` and writes the recorded spectra, the kernel paths and the
  options to ``FOLDER/<form>.npz``.
* ``continue``: loads ``FOLDER/checkpoint.keras`` and continues its run file
  ``FOLDER/run.h5`` for two more epochs (``initial_epoch=2``).
"""

import json
import sys

import keras
import numpy as np

import tf_autospec as ts

FORMS = ("functional", "wrapped", "subclassed")


def step(folder):
    sys.path.insert(0, folder)
    import user_models  # noqa: F401  (registers the user's subclass, as the user's code would)

    batch = np.load(f"{folder}/batch.npz")
    for form in FORMS:
        model = keras.models.load_model(f"{folder}/{form}.keras")
        model.fit(batch["x"], batch["y"], groups=batch["labels"], batch_size=len(batch["x"]), epochs=1,
                  shuffle=False, verbose=0)
        spectra = model.last_spectra
        values = {f"{kernel}|{kind}": spectra.spectra[(kernel, kind)] for kernel, kind in spectra.spectra}
        np.savez(f"{folder}/{form}.npz", **values,
                 about=json.dumps({"class": type(model).__name__, "step": spectra.step,
                                   "options": ts.serialization.options_config(model)}))


def continue_run(folder):
    batch = np.load(f"{folder}/batch.npz")
    model = keras.models.load_model(f"{folder}/checkpoint.keras")
    model.fit(batch["x"], batch["y"], groups=batch["labels"], batch_size=16, epochs=4, initial_epoch=2,
              verbose=0, callbacks=[ts.AutoSpecCallback(f"{folder}/run.h5", metadata={"seed": 0})])


if __name__ == "__main__":
    {"step": step, "continue": continue_run}[sys.argv[1]](sys.argv[2])
