"""Dense: one row per sample (per sample × position for inputs of rank > 2)."""

import keras
import tensorflow as tf

from tf_autospec.capture import LayerCapture, register
from tf_autospec.capture.base import as_rows


@register(keras.layers.Dense)
class DenseCapture(LayerCapture):
    def matrix_shape(self, layer):
        return tuple(self.kernel(layer).shape)

    def check_supported(self, layer):
        if getattr(layer, "quantization_mode", None):
            return f"quantized ({layer.quantization_mode}) kernels are not a plain product"
        return None

    def input_rows(self, layer, inputs):
        return as_rows(inputs, self.matrix_shape(layer)[0])

    def output_rows(self, layer, product):
        return as_rows(product, self.matrix_shape(layer)[1])
