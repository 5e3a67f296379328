"""Which kernels of a model are tracked, and the fixed width of each spectrum."""

import dataclasses
import os
import sys
import warnings

import keras
import tensorflow as tf

import tf_autospec as tf_autospec_package
from tf_autospec import capture, layer_paths, spectra


class AutoSpecWarning(UserWarning):
    """A layer is not tracked, or its spectra need a caveat."""


@dataclasses.dataclass(frozen=True)
class TrackedKernel:
    """One kernel whose group spectra are recorded.

    Attributes:
        path: the kernel's place in the model, e.g. ``"dense_1/kernel"`` or
            ``"encoder/lstm/lstm_cell/recurrent_kernel"`` (`layer_paths.LayerPaths`: the
            same for the same architecture wherever and whenever it is built).
        layer: the layer that owns it.
        name: which of the layer's kernels (``"kernel"``, ``"recurrent_kernel"``).
        capture: the `capture.LayerCapture` that reads this kernel's factors.
        fan_in: rows of the kernel read as a matrix.
        fan_out: columns of the kernel read as a matrix.
        widths: kind -> number of singular values stored per group and step.
    """

    path: str
    layer: keras.layers.Layer
    name: str
    capture: capture.LayerCapture
    fan_in: int
    fan_out: int
    widths: dict


def spectrum_widths(fan_in, fan_out, kinds, top_k):
    """Widths per kind: every singular value up to the matrix's bound, capped at ``top_k``."""
    bounds = {"grad": min(fan_in, fan_out), "act": fan_in, "delta": fan_out}
    return {kind: bounds[kind] if top_k is None else min(bounds[kind], top_k) for kind in kinds}


def _own_trainable_variables(layer):
    return [v for v in getattr(layer, "_trainable_variables", []) if v.trainable]


def _has_registered_descendant(layer):
    return any(
        capture.capture_for(sub) is not None
        for sub in layer._flatten_layers(include_self=False, recursive=True)
    )


_LIBRARY_DIRECTORIES = tuple(
    os.path.dirname(module.__file__) + os.sep for module in (tf_autospec_package, keras, tf)
)


def user_stacklevel():
    """The ``stacklevel`` of `warnings.warn` that names the first caller outside
    tf_autospec, Keras and TensorFlow: the user's line (``fit``, ``wrap``...), wherever
    in the library the warning is raised."""
    frame, level = sys._getframe(1), 1
    while frame is not None and _in_library(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return level


def _in_library(filename):
    # Code traced by tf.function runs from autograph's generated copies of library code.
    return filename.startswith(_LIBRARY_DIRECTORIES) or "__autograph_generated" in filename


def warn(message):
    """Raises an `AutoSpecWarning` that points at the user's line."""
    warnings.warn(message, AutoSpecWarning, stacklevel=user_stacklevel())


def _candidates(container):
    """Yields ``(layer, capture)`` for registered layers below ``container``; warns on the rest."""
    for layer in container._flatten_layers(include_self=False, recursive=False):
        if not layer.trainable:
            continue
        layer_capture = capture.capture_for(layer)
        if layer_capture is not None:
            reason = layer_capture.check_supported(layer)
            if reason is None:
                yield layer, layer_capture
            else:
                warn(f"AutoSpec skips layer '{layer.name}' ({type(layer).__name__}): {reason}.")
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            warn(
                f"Layer '{layer.name}' (BatchNormalization) couples the samples of a batch "
                "in training mode: group gradients then differ from the gradient of the "
                "group-masked loss. Its own weights are not tracked."
            )
            continue
        descend = _has_registered_descendant(layer)
        if _own_trainable_variables(layer) or (not descend and layer.trainable_weights):
            warn(
                f"AutoSpec does not support layer '{layer.name}' ({type(layer).__name__}); "
                "its weights are trained but get no spectra. Register a LayerCapture for "
                "its class to track it."
            )
        if descend:
            yield from _candidates(layer)


def _chosen(found, layers, paths):
    """The kernels that ``layers`` names: each entry is read as a path (of a kernel, of its
    layer or of a container holding it) and as a Keras layer name (of its layer or of a
    container); an entry whose two readings name different kernels is refused."""
    chosen = set()
    for entry in layers:
        by_path = {k.path for k in found if k.path == entry or f"{k.path}/".startswith(f"{entry}/")}
        by_name = {k.path for k in found
                   if entry in {k.layer.name, *(c.name for c in paths.containers(k.layer))}}
        if by_path and by_name and by_path != by_name:
            raise ValueError(
                f"layers=[{entry!r}] can be read two ways: as a path it selects {sorted(by_path)}; as the "
                f"Keras name of a layer it selects {sorted(by_name)}. Give kernel paths instead, e.g. "
                f"layers={sorted(by_path)[:1]} (model.tracked_kernels lists them)."
            )
        if not (by_path or by_name):
            raise ValueError(
                f"layers=[{entry!r}] is not a tracked layer of this model; choose among "
                f"{[k.path for k in found]} (kernel paths, the paths of their layers or containers, "
                "or Keras layer names)."
            )
        chosen |= by_path or by_name
    return [k for k in found if k.path in chosen]


def find_tracked_kernels(model, root, layers, kinds, top_k):
    """Lists the kernels to track, warning once for each trainable layer that is skipped.

    Args:
        model: a built Keras model.
        root: the model whose layers name the paths (``model``, or the model it wraps).
        layers: ``None`` for every supported layer, or kernel paths, paths of layers or
            containers, or Keras layer names (see `_chosen`).
        kinds: kinds to record (subset of ``spectra.KINDS``).
        top_k: ``None`` or the largest number of singular values stored per spectrum.

    Returns:
        List of `TrackedKernel` in model order.

    Raises:
        ValueError: when ``layers`` names something the model does not have, or
            nothing is left to track.
    """
    found, seen = [], set()
    paths = layer_paths.LayerPaths(root)
    for layer, layer_capture in _candidates(model):
        if id(layer) in seen:  # a layer shared by several sub-models
            continue
        seen.add(id(layer))
        for name, kernel_capture in layer_capture.kernels(layer):
            fan_in, fan_out = kernel_capture.matrix_shape(layer)
            found.append(
                TrackedKernel(
                    path=paths.variable_path(kernel_capture.kernel(layer)),
                    layer=layer,
                    name=name,
                    capture=kernel_capture,
                    fan_in=int(fan_in),
                    fan_out=int(fan_out),
                    widths=spectrum_widths(int(fan_in), int(fan_out), kinds, top_k),
                )
            )
    kernel_paths = [k.path for k in found]
    repeated = sorted({p for p in kernel_paths if kernel_paths.count(p) > 1})
    if repeated:
        raise ValueError(
            f"Several tracked kernels share the paths {repeated}; give their layers "
            "distinct names so that their spectra can be told apart."
        )
    if layers is not None:
        found = _chosen(found, layers, paths)
    if not found:
        raise ValueError(
            "This model has no layer that AutoSpec can track (supported: "
            f"{sorted(c.__name__ for c in capture.registered_classes())}). "
            "Add one, or register a LayerCapture for your layer class."
        )
    return found


def check_kinds(kinds):
    """Validates the ``kinds`` option and returns it as a tuple in canonical order."""
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in spectra.KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {spectra.KINDS}; received {kinds}.")
    return tuple(k for k in spectra.KINDS if k in kinds)
