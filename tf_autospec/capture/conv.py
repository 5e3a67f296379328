"""Conv1D/2D/3D: ``A`` = im2col patches, one row per sample × output position.

Patches are read with the layer's own strides, padding and dilation, so that
``Aᵀ Δ`` is exactly the kernel gradient reshaped to
``(prod(kernel_size) · C_in, filters)``.
"""

import keras
import numpy as np
import tensorflow as tf

from tf_autospec.capture import LayerCapture, register


def _channels_last(layer, tensor):
    if layer.data_format == "channels_last":
        return tensor
    rank = tensor.shape.rank
    return tf.transpose(tensor, [0] + list(range(2, rank)) + [1])


def _patches(layer, inputs):
    """im2col patches ``[N, positions, kernel_volume · C_in]``, in the kernel's order."""
    if layer.padding == "causal":
        inputs = tf.pad(inputs, layer._compute_causal_padding())
    x = _channels_last(layer, inputs)
    padding = "SAME" if layer.padding == "same" else "VALID"
    if layer.rank <= 2:
        # 1-D convolutions are 2-D ones over a height of 1.
        if layer.rank == 1:
            x = x[:, None]
        sizes = [1] * (2 - layer.rank)
        patches = tf.image.extract_patches(
            x,
            sizes=[1, *sizes, *layer.kernel_size, 1],
            strides=[1, *sizes, *layer.strides, 1],
            rates=[1, *sizes, *layer.dilation_rate, 1],
            padding=padding,
        )
    else:
        # No dilated volume-patch op exists: convolve with an identity kernel instead.
        width = int(np.prod(layer.kernel_size)) * x.shape[-1]
        identity = tf.reshape(
            tf.eye(width, dtype=x.dtype), [*layer.kernel_size, x.shape[-1], width]
        )
        patches = tf.nn.convolution(
            x, identity, strides=layer.strides, padding=padding, dilations=layer.dilation_rate
        )
    return tf.reshape(patches, [tf.shape(x)[0], -1, patches.shape[-1]])


@register(keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
class ConvCapture(LayerCapture):
    def matrix_shape(self, layer):
        shape = self.kernel(layer).shape
        return (int(np.prod(shape[:-1])), int(shape[-1]))

    def check_supported(self, layer):
        if layer.groups != 1:
            return f"grouped convolution (groups={layer.groups}) is not one product A·W"
        if getattr(layer, "quantization_mode", None):
            return f"quantized ({layer.quantization_mode}) kernels are not a plain product"
        return None

    def input_rows(self, layer, inputs):
        return _patches(layer, inputs)

    def output_rows(self, layer, product):
        product = _channels_last(layer, product)
        return tf.reshape(product, [tf.shape(product)[0], -1, layer.filters])
