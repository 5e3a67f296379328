"""The parts of Keras's private ``keras.src`` that tf_autospec uses, in one place.

Keras has no public name for these. Each was checked from Keras 3.8 (the oldest
supported version, see ``docs/api.md``) to 3.15; a Keras release that moves one breaks
this module's import, not code deep inside a training step.
"""

import sys

from keras.src import backend, tree  # noqa: F401  (backend.rnn: the recurrent loop)
from keras.src.backend import get_keras_mask  # noqa: F401
from keras.src.losses.loss import unscale_loss_for_distribution  # noqa: F401
from keras.src.models.functional import Functional, functional_from_config  # noqa: F401
from keras.src.trainers.compile_utils import get_loss  # noqa: F401  (a compiled loss's name, as compile reads it)
from keras.src.trainers.data_adapters.data_adapter_utils import unpack_x_y_sample_weight  # noqa: F401
from keras.src.utils.naming import to_snake_case  # noqa: F401
from keras.src.utils.python_utils import default as keras_default  # noqa: F401  (get_config Keras may auto-fill)


def functional_model_being_cloned():
    """The model that `keras.models.clone_model` is cloning, when it is constructing the
    clone of a functional model right now; else ``None``.

    Keras builds that clone with ``model.__class__(inputs, outputs, name=...)`` and no
    other argument, so a functional `AutoSpecModel` reads its options from the original.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_clone_functional_model" and frame.f_globals.get("__name__") == _CLONING:
            return frame.f_locals.get("model")
        frame = frame.f_back
    return None


_CLONING = "keras.src.models.cloning"
