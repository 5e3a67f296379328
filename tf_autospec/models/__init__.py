"""Reference architectures, each built by `build` as a compiled `AutoSpecModel`.

    model = models.build("lstm", groups=["HC", "SZ"], input_shape=(150, 53), outputs=2)

Names (`ARCHITECTURES`): ``mlp``; ``cnn2d`` (MNIST size); ``simple_rnn``, ``lstm``, ``gru``
and ``bilstm`` for sequences (an LSTM over ICA time courses is ``lstm`` on
``[time, components]``); ``cnn1d`` over ICA time courses; ``cnn3d`` for volumes. Each
``*_outputs`` function builds the same layers on an input tensor, so benchmarks can train
them as a plain `keras.Model` too.
"""

import functools

import keras

import tf_autospec as ts
from tf_autospec.models.feedforward import cnn1d_outputs, cnn2d_outputs, cnn3d_outputs, mlp_outputs
from tf_autospec.models.heads import TASKS, compile_options, head
from tf_autospec.models.recurrent import recurrent_outputs

ARCHITECTURES = {
    "mlp": mlp_outputs,
    "cnn2d": cnn2d_outputs,
    "cnn1d": cnn1d_outputs,
    "cnn3d": cnn3d_outputs,
    "simple_rnn": functools.partial(recurrent_outputs, cell="simple_rnn"),
    "lstm": functools.partial(recurrent_outputs, cell="lstm"),
    "gru": functools.partial(recurrent_outputs, cell="gru"),
    "bilstm": functools.partial(recurrent_outputs, cell="lstm", bidirectional=True),
}


def build(name, groups, input_shape, task="classification", outputs=2, optimizer="adam", options=None, **sizes):
    """A compiled `AutoSpecModel` of a reference architecture.

    Args:
        name: one of `ARCHITECTURES`.
        groups: group names.
        input_shape: shape of one sample.
        task: ``"classification"``, ``"regression"`` or ``"autoencoding"``.
        outputs: classes (classification) or targets (regression).
        optimizer: Keras optimizer or its name.
        options: `AutoSpecModel` options (``kinds``, ``top_k``, ``every_n_steps``...).
        **sizes: size arguments of the architecture (``hidden``, ``filters``, ``units``...).

    Returns:
        The compiled model.

    Example:
        >>> model = build("mlp", ["HC", "SZ"], (1378,), hidden=(64,))
        >>> model.fit(x, y, groups=labels, epochs=5)
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}.")
    inputs = keras.Input(tuple(input_shape))
    try:
        outputs_tensor = ARCHITECTURES[name](inputs, task=task, outputs=outputs, **sizes)
    except TypeError as error:
        raise ValueError(f"Architecture {name!r} does not take the sizes {sorted(sizes)} ({error}).") from None
    model = ts.AutoSpecModel(inputs=inputs, outputs=outputs_tensor, groups=list(groups), **(options or {}))
    model.compile(optimizer=optimizer, **compile_options(task))
    return model


__all__ = ["ARCHITECTURES", "TASKS", "build", "compile_options", "head"] + [
    "cnn1d_outputs", "cnn2d_outputs", "cnn3d_outputs", "mlp_outputs", "recurrent_outputs"]
