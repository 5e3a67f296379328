"""The functional form: ``AutoSpecModel(inputs=..., outputs=..., groups=...)``."""

import functools

from tf_autospec import serialization
from tf_autospec.keras_internals import Functional, functional_from_config, functional_model_being_cloned
from tf_autospec.model import AutoSpecModel


@serialization.register
class FunctionalAutoSpecModel(AutoSpecModel, Functional):
    """What ``AutoSpecModel(inputs=..., outputs=..., groups=...)`` builds.

    Its config is Keras's functional config with the AutoSpec options under
    ``"autospec"`` (Keras's config has a ``"layers"`` entry of its own), read back by
    `keras.models.load_model` and `keras.models.clone_model`.
    """

    def __init__(self, *args, **kwargs):
        original = functional_model_being_cloned()
        if isinstance(original, AutoSpecModel) and "groups" not in kwargs:
            kwargs = {**serialization.options_config(original), **kwargs}
        super().__init__(*args, **kwargs)

    def get_config(self):
        return {**Functional.get_config(self), "autospec": serialization.options_config(self)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        options = config.pop("autospec")
        return functional_from_config(functools.partial(cls, **options), config, custom_objects=custom_objects)
