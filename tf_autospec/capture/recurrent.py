"""Recurrent layers: SimpleRNN, LSTM and GRU (and each direction of a `Bidirectional`).

Keras runs the cell inside a loop, which hides its products from the tape. While a
training step is traced, the layer's inner loop is re-expressed with the same arithmetic:

* the input projections of all time steps are one product ``X·W`` outside the loop:
  the ``kernel``'s ``A`` rows are the inputs ``x_t`` and its ``Δ = ∂L/∂(x_t·W)``;
* the ``recurrent_kernel``'s ``Δ`` rows are ``∂L/∂(h_{t-1}·U)``. SimpleRNN and LSTM add
  ``x_t·W`` and ``h_{t-1}·U`` before anything else, so this is the ``kernel``'s ``Δ``
  (computed once). A GRU uses part of ``h_{t-1}·U`` apart: inside its loop a zero
  "probe" ``P_t`` is added to ``h_{t-1}·U``, and ``∂L/∂P_t = ∂L/∂(h_{t-1}·U)`` comes from
  the same single ``tape.gradient`` call. The loop also returns ``h_{t-1}``, the
  recurrent kernel's ``A`` rows (``h_{-1}`` is the initial state).

Each kernel's gradient sums over every sample × time step, so the rows of a sample are
its time steps. A GRU with ``reset_after=False`` multiplies ``r_t ⊙ h_{t-1}`` by the
candidate's columns of ``U``: its recurrent gradient ``[Hᵀ Δ_zr, (R⊙H)ᵀ Δ_h]`` is written
as one product ``Ãᵀ Δ̃`` with two rows per step, ``Ã = (h_{t-1}; r_t ⊙ h_{t-1})`` and
``Δ̃ = ((Δ_zr, 0); (0, Δ_h))``. Masked steps contribute no rows: their ``A`` rows are
zeroed, and their ``Δ`` is zero because the loop discards their products.
"""

import keras
import tensorflow as tf
from keras import ops
from keras.src import backend, tree

from tf_autospec.capture import LayerCapture, register
from tf_autospec.capture.base import as_rows, replace_attribute


def _stacked_rows(layer):
    """Whether the recurrent kernel's factors have two rows per step (GRU, reset before)."""
    return isinstance(layer, keras.layers.GRU) and not layer.cell.reset_after


class _CellKernel(LayerCapture):
    """One of the cell's kernels, named by ``kernel_attribute``."""

    def kernel(self, layer):
        return getattr(layer.cell, self.kernel_attribute)

    def matrix_shape(self, layer):
        return tuple(self.kernel(layer).shape)


class _InputKernel(_CellKernel):
    """``kernel``: A = the input rows ``x_t``, Δ = ∂L/∂(x_t·W)."""

    def input_rows(self, layer, inputs):
        return inputs

    def output_rows(self, layer, product):
        return product


class _StateKernel(_CellKernel):
    """``recurrent_kernel``: A = the previous-state rows ``h_{t-1}``, Δ = ∂L/∂(h_{t-1}·U)."""

    kernel_attribute = "recurrent_kernel"

    def input_rows(self, layer, inputs):
        return as_rows(inputs, layer.cell.units)

    def output_rows(self, layer, product):
        if not _stacked_rows(layer):
            return product
        units = layer.cell.units
        gates, candidate = product[..., : 2 * units], product[..., 2 * units :]
        rows = tf.stack([tf.pad(gates, [[0, 0], [0, 0], [0, units]]),
                         tf.pad(candidate, [[0, 0], [0, 0], [2 * units, 0]])], axis=2)
        return as_rows(rows, 3 * units)


_INPUT_KERNEL, _STATE_KERNEL = _InputKernel(), _StateKernel()


def _simple_rnn_step(cell, dtype):
    recurrent = ops.cast(cell.recurrent_kernel, dtype)
    bias = ops.cast(cell.bias, dtype) if cell.use_bias else 0

    def step(projected, states):
        h_tm1 = states[0]
        h = projected + bias + ops.matmul(h_tm1, recurrent)
        if cell.activation is not None:
            h = cell.activation(h)
        return (h, h_tm1[:, None]), [h]

    return step


def _lstm_step(cell, dtype):
    recurrent = ops.cast(cell.recurrent_kernel, dtype)
    bias = ops.cast(cell.bias, dtype) if cell.use_bias else 0

    def step(projected, states):
        h_tm1, c_tm1 = states
        z = projected + ops.matmul(h_tm1, recurrent) + bias
        z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
        c = cell.recurrent_activation(z_f) * c_tm1 + cell.recurrent_activation(z_i) * cell.activation(z_c)
        h = cell.recurrent_activation(z_o) * cell.activation(c)
        return (h, h_tm1[:, None]), [h, c]

    return step


def _gru_step(cell, dtype):
    units = cell.units
    recurrent = ops.cast(cell.recurrent_kernel, dtype)
    input_bias = recurrent_bias = 0
    if cell.use_bias:
        bias = ops.cast(cell.bias, dtype)
        input_bias, recurrent_bias = (bias[0], bias[1]) if cell.reset_after else (bias, 0)

    def step(inputs, states):
        projected, probe = inputs
        h_tm1 = states[0]
        x_z, x_r, x_h = ops.split(projected + input_bias, 3, axis=-1)
        if cell.reset_after:
            inner = ops.matmul(h_tm1, recurrent) + probe + recurrent_bias
            r_z, r_r, r_h = ops.split(inner, 3, axis=-1)
            z = cell.recurrent_activation(x_z + r_z)
            r = cell.recurrent_activation(x_r + r_r)
            candidate = cell.activation(x_h + r * r_h)
            rows = h_tm1[:, None]
        else:
            inner = ops.matmul(h_tm1, recurrent[:, : 2 * units]) + probe[:, : 2 * units]
            r_z, r_r = ops.split(inner, 2, axis=-1)
            z = cell.recurrent_activation(x_z + r_z)
            r = cell.recurrent_activation(x_r + r_r)
            reset = r * h_tm1
            candidate = cell.activation(x_h + ops.matmul(reset, recurrent[:, 2 * units :]) + probe[:, 2 * units :])
            rows = ops.stack([h_tm1, reset], axis=1)
        h = z * h_tm1 + (1 - z) * candidate
        return (h, rows), [h]

    return step


_STEPS = {keras.layers.SimpleRNN: _simple_rnn_step, keras.layers.LSTM: _lstm_step, keras.layers.GRU: _gru_step}


def _recorded_loop(layer, recording, sequences, initial_state, mask):
    """The layer's inner loop with both kernels' products exposed to ``recording``."""
    if tree.is_nested(mask):
        mask = mask[0]
    dtype = sequences.dtype
    step_mask = None if mask is None else ops.cast(mask, dtype)[:, :, None]
    projected = ops.matmul(sequences, ops.cast(layer.cell.kernel, dtype))
    input_rows = sequences if mask is None else sequences * step_mask
    projected = recording.record(layer, input_rows, projected, _INPUT_KERNEL.kernel_attribute)
    if isinstance(layer, keras.layers.GRU):
        recurrent_product = recording.watch(tf.zeros_like(projected))  # the probe
        loop_inputs = (projected, recurrent_product)
    else:
        # x_t·W and h_{t-1}·U enter the cell as one sum: their Δ is the same tensor.
        recurrent_product = loop_inputs = projected
    step = _STEPS[type(layer)](layer.cell, dtype)
    units, rows_per_step = layer.cell.units, 2 if _stacked_rows(layer) else 1

    def packed_step(inputs, states):
        # One output tensor per step (Keras's unrolled loop takes no nested outputs):
        # the new state, then the step's A rows of the recurrent kernel.
        (h, rows), new_states = step(inputs, states)
        return ops.concatenate([h, ops.reshape(rows, [-1, rows_per_step * units])], axis=-1), new_states

    last, packed, states = backend.rnn(
        packed_step,
        loop_inputs,
        list(initial_state) if tree.is_nested(initial_state) else [initial_state],
        go_backwards=layer.go_backwards,
        mask=mask,
        unroll=layer.unroll,
        input_length=sequences.shape[1],
        zero_output_for_mask=layer.zero_output_for_mask,
        return_all_outputs=True,
    )
    outputs = packed[..., :units]
    state_rows = ops.reshape(packed[..., units:], [-1, packed.shape[1] or tf.shape(packed)[1], rows_per_step, units])
    if layer.go_backwards:  # the loop's outputs run backwards in time; the probe's rows do not
        state_rows = ops.flip(state_rows, axis=1)
    if mask is not None:
        state_rows = state_rows * step_mask[..., None]
    recording.add(layer, state_rows, recurrent_product, _STATE_KERNEL.kernel_attribute)
    return last[..., :units], outputs, states


@register(keras.layers.SimpleRNN, keras.layers.LSTM, keras.layers.GRU)
class RecurrentCapture(LayerCapture):
    """Both kernels of a recurrent layer, through a re-expressed inner loop."""

    def kernels(self, layer):
        return [(part.kernel_attribute, part) for part in (_INPUT_KERNEL, _STATE_KERNEL)]

    def check_supported(self, layer):
        cell = layer.cell
        if cell.dropout or cell.recurrent_dropout:
            return ("dropout and recurrent_dropout change the factors at random; set them to 0 "
                    "(a Dropout layer before the recurrent layer is fine)")
        return None

    def intercept(self, layer, recording):
        def inner_loop(sequences, initial_state, mask, training=False):
            return _recorded_loop(layer, recording, sequences, initial_state, mask)

        return replace_attribute(layer, "inner_loop", inner_loop)
