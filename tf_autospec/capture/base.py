"""What every layer family's capture provides, and the recording of one forward pass."""

import functools

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

    def intercept(self, layer, record):
        """Installs wrappers that call ``record(layer, inputs, product)``; returns an undo."""
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
                product = record(layer, pending_inputs[-1], product)
            return original_activation(product)

        had_own_call = "call" in layer.__dict__
        object.__setattr__(layer, "call", call)
        object.__setattr__(layer, "activation", activation)

        def undo():
            if had_own_call:
                object.__setattr__(layer, "call", original_call)
            else:
                del layer.__dict__["call"]
            object.__setattr__(layer, "activation", original_activation)

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

    def record(self, layer, inputs, product):
        self.tape.watch(product)
        self.calls.setdefault(id(layer), []).append((inputs, product))
        return product

    def calls_of(self, layer):
        """``[(inputs, product), ...]`` for each call of ``layer`` in this pass."""
        return self.calls.get(id(layer), [])
