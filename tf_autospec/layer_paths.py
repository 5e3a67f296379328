"""Names of layers and kernels by their place in the model, not by Keras's counters.

Keras names a layer it was not given a name for after its class and a counter shared by
the whole process: the second model built in a loop has ``dense_3`` where the first had
``dense``. Spectra recorded under such names could not be compared between runs of one
architecture. Here a generated name keeps its class part and its counter is replaced by
its rank among the counters of that class in the model: ``dense_3, dense_4`` become
``dense, dense_1``. The first model built in a process thus keeps Keras's own names, and
every model of the same architecture gets the same ones (in a loop, in a new process,
after ``load_model`` and ``clone_model``, which keep the saved names). A name its author
gave a layer (``"encoder"``) is kept; a name of the generated form (``"dense_1"``) is read
as generated. A path joins the names of the containers down to the layer
(``"sequential/dense/kernel"``).
"""

import re

from tf_autospec.keras_internals import to_snake_case

# Bidirectional names its two copies of a layer "forward_<name>" and "backward_<name>".
_COPY_PREFIX = "(?:forward_|backward_)?"


def _generated(layer):
    """``(base, counter)`` when the layer's name is one Keras generated for its class
    (``"dense_7"`` -> ``("dense", 7)``, ``"forward_lstm"`` -> ``("forward_lstm", 0)``);
    ``None`` for a name its author chose."""
    base = to_snake_case(type(layer).__name__)
    match = re.fullmatch(f"({_COPY_PREFIX}{re.escape(base)})(?:_(\\d+))?", layer.name)
    return None if match is None else (match.group(1), int(match.group(2) or 0))


class LayerPaths:
    """Stable paths of every layer below ``root``.

    Args:
        root: the model (for a wrapped model, the model it wraps).

    Example:
        >>> paths = LayerPaths(model)
        >>> paths.variable_path(model.get_layer("dense_1").kernel)
        'dense_1/kernel'
    """

    def __init__(self, root):
        self._parents = {}  # id(layer) -> the container it was found in (None: root)
        self._layers = []
        self._walk(root, None)
        names = self._stable_names()
        self._paths = {}
        for layer in self._layers:
            parent = self._parents[id(layer)]
            prefix = "" if parent is None else self._paths[id(parent)] + "/"
            self._paths[id(layer)] = prefix + names[id(layer)]

    def _walk(self, container, parent):
        for layer in container._flatten_layers(include_self=False, recursive=False):
            if id(layer) in self._parents:  # a layer shared by several sub-models: its first place
                continue
            self._parents[id(layer)] = parent
            self._layers.append(layer)
            self._walk(layer, layer)

    def _stable_names(self):
        generated = {id(layer): _generated(layer) for layer in self._layers}
        chosen = {layer.name for layer in self._layers if generated[id(layer)] is None}
        counters = {}
        for base_and_counter in filter(None, generated.values()):
            counters.setdefault(base_and_counter[0], set()).add(base_and_counter[1])
        renamed = {}
        for base, numbers in counters.items():
            rank = 0
            for number in sorted(numbers):
                # A name an author chose is never given to another layer.
                while (name := base if rank == 0 else f"{base}_{rank}") in chosen:
                    rank += 1
                renamed[(base, number)] = name
                rank += 1
        return {id(layer): layer.name if generated[id(layer)] is None else renamed[generated[id(layer)]]
                for layer in self._layers}

    def layer_path(self, layer):
        """The layer's path, e.g. ``"sequential/dense_1"``."""
        return self._paths[id(layer)]

    def containers(self, layer):
        """The layers that hold ``layer``, innermost first (the model itself excluded)."""
        out, parent = [], self._parents[id(layer)]
        while parent is not None:
            out.append(parent)
            parent = self._parents[id(parent)]
        return out

    def variable_path(self, variable):
        """The path of ``variable``, owned by a layer or by one of its sub-layers (an
        LSTM's cell): ``"lstm/lstm_cell/kernel"``."""
        for owner in self._layers:
            if any(own is variable for own in owner._trainable_variables + owner._non_trainable_variables):
                return f"{self.layer_path(owner)}/{variable.name}"
        raise ValueError(f"Variable '{variable.path}' belongs to no layer of this model.")
