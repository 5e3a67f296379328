"""What every layer family's capture provides, and the recording of one forward pass."""

import functools

import tensorflow as tf

from tf_autospec import spectra


class LayerCapture:
    """How one layer family exposes its product ``Y = A·W`` to the tape.

    A family module subclasses this, registers it for its layer classes with
    `tf_autospec.capture.register`, and says how to read the recorded layer input
    and product as rows: ``A`` as ``[N, rows_per_sample, fan_in]`` and ``Y`` (and so
    ``Δ = ∂L/∂Y``) as ``[N, rows_per_sample, fan_out]``.

    The default interception wraps the layer's ``call`` (to see its input) and its
    ``activation`` (to see the pre-activation, i.e. the product plus bias, whose
    gradient equals ``∂L/∂Y``). It is installed only while a training step is traced.
    """

    kernel_attribute = "kernel"
    input_factor_type = spectra.DenseRows  # the class `factor` returns

    def kernels(self, layer):
        """``[(name, capture), ...]``: each tracked kernel of the layer and the capture that
        reads its factors. Most families have one kernel, read by the family's capture."""
        return [(self.kernel_attribute, self)]

    def kernel(self, layer):
        """The kernel variable (the stored one, not a LoRA-merged view)."""
        stored = getattr(layer, "_" + self.kernel_attribute, None)
        return stored if stored is not None else getattr(layer, self.kernel_attribute)

    def matrix_shape(self, layer):
        """``(fan_in, fan_out)``: the kernel read as a matrix."""
        raise NotImplementedError

    def check_supported(self, layer):
        """Returns ``None`` when tracked exactly, or a reason to skip the layer."""
        return None

    def input_rows(self, layer, inputs):
        """The layer input as factor rows (`spectra.DenseRows`-ready ``[N, s, fan_in]``)."""
        raise NotImplementedError

    def output_rows(self, layer, product):
        """A product-shaped tensor (``Y`` or ``Δ``) as ``[N, s, fan_out]``."""
        raise NotImplementedError

    def factor(self, layer, rows):
        """Wraps grouped input rows ``[G, R, fan_in]`` for `spectra.group_spectra`."""
        return spectra.DenseRows(rows)

    def fill_value(self):
        """The value of an empty input row after grouping."""
        return 0

    def intercept(self, layer, recording):
        """Installs wrappers that give each product to ``recording``; returns an undo."""
        original_call = layer.call
        original_activation = layer.activation
        pending_inputs = []

        @functools.wraps(original_call)
        def call(*args, **kwargs):
            pending_inputs.append(args[0] if args else kwargs["inputs"])
            try:
                return original_call(*args, **kwargs)
            finally:
                pending_inputs.pop()

        def activation(product):
            if pending_inputs:
                product = recording.record(layer, pending_inputs[-1], product, self.kernel_attribute)
            return original_activation(product)

        undo_call = replace_attribute(layer, "call", call)
        undo_activation = replace_attribute(layer, "activation", activation)

        def undo():
            undo_call()
            undo_activation()

        return undo


def replace_attribute(layer, name, replacement):
    """Sets ``layer.<name>`` on the instance, bypassing Keras's attribute tracking, and
    returns the function that restores what was there (the class's or the instance's)."""
    had_own = name in layer.__dict__
    original = layer.__dict__.get(name)
    object.__setattr__(layer, name, replacement)

    def undo():
        if had_own:
            object.__setattr__(layer, name, original)
        else:
            del layer.__dict__[name]

    return undo


class Recording:
    """The layer inputs and products seen during one traced forward pass.

    Args:
        tape: the `tf.GradientTape` of the training step; each product is watched
            so that one ``tape.gradient`` call also returns every ``Δ``.
    """

    def __init__(self, tape):
        self.tape = tape
        self.calls = {}

    def record(self, layer, inputs, product, kernel):
        """Watches ``product`` and files it with its layer input under the layer's kernel."""
        self.add(layer, inputs, self.watch(product), kernel)
        return product

    def watch(self, product):
        """Watches a product before it is used (its inputs may be known only later)."""
        self.tape.watch(product)
        return product

    def add(self, layer, inputs, product, kernel):
        """Files a watched product with its factor input rows."""
        self.calls.setdefault((id(layer), kernel), []).append((inputs, product))

    def calls_of(self, layer, kernel):
        """``[(inputs, product), ...]`` for each use of the layer's ``kernel`` in this pass."""
        return self.calls.get((id(layer), kernel), [])


def as_rows(tensor, width=None):
    """``tensor`` ``[N, ...]`` as factor rows ``[N, s, width]`` (``[N, s]`` without a
    width). ``s`` is static when the per-sample shape is, so that each kernel's route is
    chosen while the step is traced rather than by a ``tf.cond`` at every step."""
    tail = [] if width is None else [width]
    per_sample = tensor.shape[1:]
    if per_sample.is_fully_defined():
        return tf.reshape(tensor, [-1, per_sample.num_elements() // (width or 1), *tail])
    return tf.reshape(tensor, [tf.shape(tensor)[0], -1, *tail])
