"""tf_autospec: exact per-group gradient spectra for TensorFlow/Keras, recorded during `fit`."""

import importlib
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_autospec.native_log import startup_lines_filtered as _startup_lines_filtered  # noqa: E402

with _startup_lines_filtered():  # TensorFlow's C++ start-up notices (native_log.py)
    import keras as _keras  # noqa: E402

if _keras.backend.backend() != "tensorflow":
    # The capture of products and the spectra are TensorFlow code (tf.GradientTape,
    # tf.linalg): under another backend, fit would fail deep inside Keras.
    raise ImportError(
        f"tf_autospec needs Keras's TensorFlow backend; KERAS_BACKEND is "
        f"'{_keras.backend.backend()}'. Set KERAS_BACKEND=tensorflow (or unset it) before "
        "importing keras and tf_autospec."
    )

from tf_autospec.callback import AutoSpecCallback  # noqa: E402
from tf_autospec.capture import LayerCapture, register  # noqa: E402
from tf_autospec.groups import null_partitions  # noqa: E402
from tf_autospec.model import AutoSpecModel  # noqa: E402
from tf_autospec.functional import FunctionalAutoSpecModel  # noqa: E402, F401  (registered with Keras)
from tf_autospec.wrapped import wrap  # noqa: E402
from tf_autospec.results import StepSpectra  # noqa: E402
from tf_autospec.spectra import KINDS  # noqa: E402
from tf_autospec.store import Run, StoreError, load  # noqa: E402
from tf_autospec.tracking import AutoSpecWarning  # noqa: E402
from tf_autospec import report, schedules, stats, summaries  # noqa: E402

__version__ = "0.1.0"

_IMPORTED_WHEN_FIRST_USED = ("data", "models", "plot")


def __getattr__(name):
    # `plot` selects matplotlib's Agg backend and `data` imports scikit-learn: a training
    # script that uses neither does not pay for them.
    if name in _IMPORTED_WHEN_FIRST_USED:
        return importlib.import_module(f"tf_autospec.{name}")
    raise AttributeError(f"module 'tf_autospec' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_IMPORTED_WHEN_FIRST_USED))


__all__ = [
    "AutoSpecCallback",
    "AutoSpecModel",
    "AutoSpecWarning",
    "KINDS",
    "LayerCapture",
    "Run",
    "StepSpectra",
    "StoreError",
    "load",
    "null_partitions",
    "register",
    "wrap",
]
