"""EinsumDense (and so MultiHeadAttention's projections).

The kernel is read as a matrix whose rows are the kernel axes contracted with the
input and whose columns are the kernel axes that reach the output. The remaining
input axes (batch first) index the rows of ``A`` and ``Δ``.
"""

import string

import keras
import numpy as np
import tensorflow as tf

from tf_autospec.capture import LayerCapture, register
from tf_autospec.capture.base import as_rows


class _Layout:
    """The axes of ``layer.equation`` sorted into rows, contracted and produced axes.

    Args:
        layer: the EinsumDense layer.
        spread: how many axes an ellipsis stands for (at least one: the batch).
    """

    def __init__(self, layer, spread=1):
        equation = layer.equation.replace(" ", "")
        inputs, rest = equation.split(",")
        kernel, output = rest.split("->")
        free = "".join(c for c in string.ascii_letters if c not in equation)[:spread]
        self.inputs = inputs.replace("...", free)
        self.output = output.replace("...", free)
        self.kernel = kernel.replace("...", "")
        stored = getattr(layer, "_kernel", None)
        shape = dict(zip(self.kernel, (stored if stored is not None else layer.kernel).shape))
        self.contracted = [c for c in self.kernel if c in self.inputs and c not in self.output]
        self.produced = [c for c in self.kernel if c in self.output and c not in self.inputs]
        self.rows = [c for c in self.inputs if c in self.output and c not in self.kernel]
        self.fan_in = int(np.prod([shape[c] for c in self.contracted]))
        self.fan_out = int(np.prod([shape[c] for c in self.produced]))

    @classmethod
    def for_tensor(cls, layer, tensor, side):
        """The layout whose ``side`` ("inputs" or "output") matches ``tensor``'s rank."""
        explicit = len(getattr(cls(layer, 0), side))
        return cls(layer, max(tensor.shape.rank - explicit, 0))

    def problem(self):
        if len(self.contracted) + len(self.produced) != len(self.kernel):
            return f"kernel axes of '{self.kernel}' are shared by input and output"
        if set(self.inputs) - set(self.contracted) - set(self.rows):
            return "the equation sums over input axes that are not kernel axes"
        if not self.rows or self.rows[0] != self.inputs[0]:
            return "the batch axis is not a free axis of the equation"
        return None


@register(keras.layers.EinsumDense)
class EinsumDenseCapture(LayerCapture):
    def matrix_shape(self, layer):
        layout = _Layout(layer)
        return (layout.fan_in, layout.fan_out)

    def check_supported(self, layer):
        if getattr(layer, "quantization_mode", None):
            return f"quantized ({layer.quantization_mode}) kernels are not a plain product"
        return _Layout(layer).problem()

    def input_rows(self, layer, inputs):
        layout = _Layout.for_tensor(layer, inputs, "inputs")
        order = [layout.inputs.index(c) for c in layout.rows + layout.contracted]
        return as_rows(tf.transpose(inputs, order), layout.fan_in)

    def output_rows(self, layer, product):
        layout = _Layout.for_tensor(layer, product, "output")
        order = [layout.output.index(c) for c in layout.rows + layout.produced]
        return as_rows(tf.transpose(product, order), layout.fan_out)
