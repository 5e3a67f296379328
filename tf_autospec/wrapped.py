"""The wrapped form: an existing Keras model trained as an `AutoSpecModel`."""

import keras

from tf_autospec import groups as groups_module
from tf_autospec import serialization
from tf_autospec.model import AutoSpecModel


@serialization.register
class WrappedModel(AutoSpecModel):
    """An existing Keras model, unchanged, trained as an `AutoSpecModel`.

    Made by `wrap`; the wrapped model's layers and weights are shared, not copied. Kernel
    paths are named inside the wrapped model (``"dense/kernel"``, as for the model itself).

    Args:
        model: the wrapped `keras.Model`.
        name: the model's name (default ``"autospec_<model name>"``).
        **options: the `AutoSpecModel` options.
    """

    def __init__(self, model, name=None, **options):
        super().__init__(name=name or f"autospec_{model.name}", **options)
        groups_module.refuse_group_input(model)
        self.wrapped = model
        # Its own weights are the wrapped model's: built when that is (load_weights needs it).
        self.built = model.built

    def _layer_tree_root(self):
        return self.wrapped

    def _expects_dict_inputs(self):
        return isinstance(getattr(self.wrapped, "_inputs_struct", None), dict)

    def call(self, inputs, training=None):
        return self.wrapped(inputs, training=training)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.wrapped),
            **serialization.options_config(self),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"), custom_objects=custom_objects)
        return cls(model, **config)


def wrap(model, groups, **options):
    """Turns an existing Keras model into an `AutoSpecModel`, without a rewrite.

    Args:
        model: a Sequential, functional or subclassed `keras.Model` (also one loaded with
            `keras.models.load_model`). Its layers and weights are used as they are
            (shared, not copied).
        groups: the group names (see `AutoSpecModel`).
        **options: ``layers``, ``kinds``, ``top_k``, ``randomized``, ``every_n_steps``,
            ``null_partitions``, ``schedule``, ``precision``, ``geometry``, ``overlap_k`` as
            for `AutoSpecModel`.

    Returns:
        An `AutoSpecModel` to ``compile`` and ``fit`` in place of ``model``. It saves and
        loads as one (``.keras``, ``.weights.h5``); its weights are ``model``'s, so
        ``wrap(model, groups).load_weights(path)`` loads a wrapped model's weights file
        into ``model``.

    Example:

    ```python
    model = tf_autospec.wrap(keras.Sequential([...]), groups=["HC", "SZ"])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, groups=labels)
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"wrap() takes a keras.Model; received {type(model).__name__}.")
    if isinstance(model, AutoSpecModel):
        raise TypeError(f"Model '{model.name}' is already an AutoSpecModel; use it directly.")
    return WrappedModel(model, groups=groups, **options)
