"""Names of layers and kernels by their place in the model, not by Keras's counters.

Keras names a layer it was not given a name for after its class and a counter shared by
the whole process: the second model built in a loop has ``dense_3`` where the first had
``dense``, and a model loaded from a file or cloned gets new numbers again. Spectra
recorded under such names could not be compared between runs of one architecture, nor
continued after a reload. Here a generated name is replaced by the class name numbered
in its container's own order (``dense``, ``dense_1``, ...; the layers of a nested model
are numbered inside it), as Keras's saving format does; a name its author gave a layer
(``"encoder"``) is kept.
"""

import re

from tf_autospec.keras_internals import to_snake_case

# Bidirectional names its two copies of a layer "forward_<name>" and "backward_<name>".
_COPY_PREFIX = "(?:forward_|backward_)?"


def _generated_base(layer):
    """The name without its counter when the layer's name is one Keras generated for its
    class (``"dense_7"`` -> ``"dense"``, ``"forward_lstm_2"`` -> ``"forward_lstm"``);
    ``None`` for a name its author chose."""
    base = to_snake_case(type(layer).__name__)
    match = re.fullmatch(f"({_COPY_PREFIX}{re.escape(base)})(?:_\\d+)?", layer.name)
    return None if match is None else match.group(1)


class LayerPaths:
    """Stable paths of every layer below ``root``.

    Args:
        root: the model (for a wrapped model, the model it wraps).

    Example:
        >>> paths = LayerPaths(model)
        >>> paths.variable_path(model.layers[1].kernel)
        'dense_1/kernel'
    """

    def __init__(self, root):
        self._paths = {}
        self._layers = []
        self._walk(root, "")

    def _walk(self, container, prefix):
        counts = {}
        for layer in container._flatten_layers(include_self=False, recursive=False):
            if id(layer) in self._paths:  # a layer shared by several sub-models: its first place
                continue
            base = _generated_base(layer)
            if base is None:
                name = layer.name
            else:
                number = counts.get(base, 0)
                counts[base] = number + 1
                name = base if number == 0 else f"{base}_{number}"
            self._paths[id(layer)] = prefix + name
            self._layers.append(layer)
            self._walk(layer, prefix + name + "/")

    def layer_path(self, layer):
        """The layer's path, e.g. ``"sequential/dense_1"``."""
        return self._paths[id(layer)]

    def variable_path(self, variable):
        """The path of ``variable``, owned by a layer or by one of its sub-layers (an
        LSTM's cell): ``"lstm/lstm_cell/kernel"``."""
        for owner in self._layers:
            if any(own is variable for own in owner._trainable_variables + owner._non_trainable_variables):
                return f"{self.layer_path(owner)}/{variable.name}"
        raise ValueError(f"Variable '{variable.path}' belongs to no layer of this model.")
