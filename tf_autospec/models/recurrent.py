"""Recurrent reference bodies for sequences ``[time, features]`` (sinusoids, ICA time courses)."""

import keras

from tf_autospec.models.heads import head

CELLS = {"simple_rnn": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


def recurrent_outputs(inputs, task="classification", outputs=2, cell="lstm", units=64, stacked=1,
                      bidirectional=False, per_step=False):
    """Stacked recurrent layers, then the head.

    Args:
        cell: ``"simple_rnn"``, ``"lstm"`` or ``"gru"``.
        units: state size of each layer.
        stacked: number of recurrent layers.
        bidirectional: wrap each layer in `Bidirectional`.
        per_step: one prediction per time step (next-step regression); autoencoding
            always reconstructs step by step.
    """
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}; received {cell!r}.")
    h = inputs
    for index in range(stacked):
        last = index == stacked - 1
        layer = CELLS[cell](units, return_sequences=not last or per_step or task == "autoencoding")
        h = (keras.layers.Bidirectional(layer) if bidirectional else layer)(h)
    return head(h, task, outputs, inputs.shape[1:])
