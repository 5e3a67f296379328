"""Embedding: ``Y = onehot(ids) · E``, one row per sample × token; ``A`` stays implicit."""

import functools

import keras
import tensorflow as tf

from tf_autospec import spectra
from tf_autospec.capture import LayerCapture, register
from tf_autospec.capture.base import as_rows, replace_attribute


@register(keras.layers.Embedding)
class EmbeddingCapture(LayerCapture):
    kernel_attribute = "embeddings"
    input_factor_type = spectra.OneHotRows

    def matrix_shape(self, layer):
        return (layer.input_dim, layer.output_dim)

    def check_supported(self, layer):
        if getattr(layer, "quantization_mode", None):
            return f"quantized ({layer.quantization_mode}) embeddings are not a plain lookup"
        return None

    def input_rows(self, layer, inputs):
        return as_rows(inputs)

    def output_rows(self, layer, product):
        return as_rows(product, layer.output_dim)

    def factor(self, layer, rows):
        return spectra.OneHotRows(rows, layer.input_dim)

    def fill_value(self):
        return -1

    def intercept(self, layer, recording):
        original_call = layer.call

        @functools.wraps(original_call)
        def call(*args, **kwargs):
            inputs = args[0] if args else kwargs["inputs"]
            # int32 ids, so that -1 can mark the empty rows of a group.
            product = original_call(*args, **kwargs)
            return recording.record(layer, tf.cast(inputs, tf.int32), product, self.kernel_attribute)

        return replace_attribute(layer, "call", call)
