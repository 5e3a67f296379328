"""Output heads and losses for the reference models' tasks."""

import math

import keras

TASKS = ("classification", "regression", "autoencoding")


def head(h, task, outputs, input_shape):
    """The last layer(s) for a task.

    Args:
        h: the body's output tensor, ``[batch, features]`` or ``[batch, time, features]``
            (then one prediction per time step).
        task: ``"classification"`` (``outputs`` logits), ``"regression"`` (``outputs``
            values) or ``"autoencoding"`` (a reconstruction of the input).
        outputs: classes or regression targets.
        input_shape: shape of one input sample (for autoencoding).

    Returns:
        The output tensor.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; received {task!r}.")
    if task != "autoencoding":
        return keras.layers.Dense(outputs)(h)
    input_shape = tuple(input_shape)
    if len(h.shape) == 3 and len(input_shape) == 2 and h.shape[1] == input_shape[0]:
        return keras.layers.Dense(input_shape[-1])(h)  # a sequence reconstructed step by step
    flat = keras.layers.Flatten()(h) if len(h.shape) > 2 else h
    return keras.layers.Reshape(input_shape)(keras.layers.Dense(math.prod(input_shape))(flat))


def compile_options(task):
    """Loss and metrics for a task (classification heads output logits)."""
    if task == "classification":
        return dict(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return dict(loss="mse", metrics=["mae"])
