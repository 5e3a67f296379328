"""Conv1D/2D/3D: ``A`` = im2col patches, one row per sample × output position.

Patches are read with the layer's own strides, padding and dilation, so that
``Aᵀ Δ`` is exactly the kernel gradient reshaped to
``(prod(kernel_size) · C_in, filters)``.
"""

import keras
import numpy as np
import tensorflow as tf

from tf_autospec import spectra
from tf_autospec.capture import LayerCapture, register
from tf_autospec.capture.base import as_rows


def _channels_last(layer, tensor):
    if layer.data_format == "channels_last":
        return tensor
    rank = tensor.shape.rank
    return tf.transpose(tensor, [0] + list(range(2, rank)) + [1])


def _same_padding(size, kernel, stride, dilation):
    """TensorFlow's "SAME" padding of one spatial axis: ``[before, after]``."""
    extent = (kernel - 1) * dilation + 1
    total = tf.maximum((-(-size // stride) - 1) * stride + extent - size, 0)
    return [total // 2, total - total // 2]


def _patches(layer, inputs):
    """im2col patches ``[N, positions, kernel_volume · C_in]``, in the kernel's order.

    One strided slice of the (padded) input per kernel offset, concatenated offset-major
    and channel-minor as the kernel reshapes to ``(kernel_volume · C_in, filters)``: a
    copy of the patches, faster than ``tf.image.extract_patches`` and for any rank.
    """
    if layer.padding == "causal":
        inputs = tf.pad(inputs, layer._compute_causal_padding())
    x = _channels_last(layer, inputs)
    axes = list(zip(layer.kernel_size, layer.strides, layer.dilation_rate))
    if layer.padding == "same":
        x = tf.pad(x, [[0, 0], *[_same_padding(spectra.dim(x, i + 1), *axis) for i, axis in enumerate(axes)], [0, 0]])
    windows = []  # per axis: (positions, stride, dilation)
    for i, (kernel, stride, dilation) in enumerate(axes):
        windows.append(((spectra.dim(x, i + 1) - (kernel - 1) * dilation - 1) // stride + 1, stride, dilation))
    slices = []
    for offset in np.ndindex(*layer.kernel_size):
        window = tuple(
            slice(o * dilation, o * dilation + (positions - 1) * stride + 1, stride)
            for o, (positions, stride, dilation) in zip(offset, windows)
        )
        slices.append(x[(slice(None), *window)])
    patches = tf.concat(slices, axis=-1)
    return as_rows(patches, patches.shape[-1])


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
        return as_rows(product, layer.filters)
