"""Saving and loading AutoSpec models: their options in the Keras config.

The functional and the wrapped forms write their options (`OPTIONS`) into
``get_config()``; `register` makes their classes known to `keras.models.load_model`
once ``tf_autospec`` is imported, so no ``custom_objects`` are needed. A subclass of
`AutoSpecModel` is saved as any subclassed Keras model is: from the arguments of its
constructor (Keras records them when they are plain values), with the class registered
by its author.

What the state of the last recorded step and the run file hold is not saved with the
model: a loaded model records from its next step on, and `AutoSpecCallback` continues the
run file when the fit continues the training (``initial_epoch``, see ``docs/api.md``).
"""

import keras

OPTIONS = ("groups", "layers", "kinds", "top_k", "randomized", "every_n_steps", "null_partitions", "schedule",
           "precision", "geometry", "overlap_k")

# Options added after the first run files were written, with the value those files had.
LATER_OPTION_DEFAULTS = {"schedule": None, "precision": "float64", "geometry": [], "overlap_k": 3}

# Keyword arguments of keras.Model's functional constructor that AutoSpecModel passes on.
KERAS_ARGUMENTS = ("inputs", "outputs", "name", "trainable", "dtype")

register = keras.saving.register_keras_serializable(package="tf_autospec")


def options_config(model):
    """The AutoSpec options of ``model``, as `AutoSpecModel` takes them and as JSON can hold
    them.

    Example:
        >>> options_config(model)
        {'groups': ['HC', 'SZ'], 'layers': None, 'kinds': ['grad', 'act', 'delta'],
         'top_k': None, 'randomized': False, 'every_n_steps': 1, 'null_partitions': 0,
         'schedule': None, 'precision': 'float64', 'geometry': ['cosine', 'overlap'], 'overlap_k': 3}
    """
    from tf_autospec import schedules  # it registers its classes through this module

    given = model.autospec_schedule != schedules.Every(model.autospec_every_n_steps)
    return {
        "groups": list(model.groups),
        "layers": None if model.autospec_layers is None else list(model.autospec_layers),
        "kinds": list(model.autospec_kinds),
        "top_k": model.autospec_top_k,
        "randomized": model.autospec_randomized,
        "every_n_steps": model.autospec_every_n_steps,
        "null_partitions": model.autospec_null_partitions,
        "schedule": schedules.config(model.autospec_schedule) if given else None,
        "precision": model.autospec_precision,
        "geometry": list(model.autospec_geometry),
        "overlap_k": model.autospec_overlap_k,
    }


def unknown_options(unknown):
    """The error for options `AutoSpecModel` does not take."""
    return ValueError(
        f"Unknown option(s) {unknown} for AutoSpecModel. Its options are {list(OPTIONS)}, "
        f"besides Keras's {list(KERAS_ARGUMENTS)} (check the spelling, e.g. every_n_steps)."
    )
