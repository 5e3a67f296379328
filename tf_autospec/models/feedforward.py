"""Feed-forward reference bodies: MLP and 1D, 2D and 3D CNNs. Each function builds the
layers on an input tensor and returns the output tensor of ``task``'s head."""

import keras

from tf_autospec.models.heads import head


def mlp_outputs(inputs, task="classification", outputs=10, hidden=(512, 256)):
    """Flatten, Dense layers with ReLU, then the head (the paper's 784-512-256-10)."""
    h = keras.layers.Flatten()(inputs)
    for width in hidden:
        h = keras.layers.Dense(width, activation="relu")(h)
    return head(h, task, outputs, inputs.shape[1:])


def cnn2d_outputs(inputs, task="classification", outputs=10, filters=(32, 64), dense=128, padding=None):
    """Conv 32 → pool → Conv 64 → pool → Dense 128 → head (3×3 kernels; MNIST size).
    ``padding``: ``"valid"`` for images of at least 16 × 16 pixels (MNIST), ``"same"`` for
    smaller ones such as the 8×8 digits, unless given."""
    if padding is None:
        padding = "valid" if min(inputs.shape[1:3]) >= 16 else "same"
    h = inputs
    for count in filters:
        h = keras.layers.Conv2D(count, 3, activation="relu", padding=padding)(h)
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Dense(dense, activation="relu")(keras.layers.Flatten()(h))
    return head(h, task, outputs, inputs.shape[1:])


def cnn1d_outputs(inputs, task="classification", outputs=2, filters=(32, 64), kernel_size=5, dense=64):
    """Temporal CNN over ICA time courses ``[time, components]``: Conv1D 32 → pool →
    Conv1D 64 → global average over time → Dense 64 → head."""
    h = keras.layers.Conv1D(filters[0], kernel_size, activation="relu")(inputs)
    for count in filters[1:]:
        h = keras.layers.MaxPooling1D()(h)
        h = keras.layers.Conv1D(count, kernel_size, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    h = keras.layers.Dense(dense, activation="relu")(h)
    return head(h, task, outputs, inputs.shape[1:])


def cnn3d_outputs(inputs, task="classification", outputs=2, filters=(8, 16), dense=32):
    """Small 3D CNN for volumes ``[x, y, z, channels]``: (Conv3D 3³ same → pool 2³) per
    entry of ``filters`` → Dense → head."""
    h = inputs
    for count in filters:
        h = keras.layers.Conv3D(count, 3, activation="relu", padding="same")(h)
        h = keras.layers.MaxPooling3D()(h)
    h = keras.layers.Dense(dense, activation="relu")(keras.layers.Flatten()(h))
    return head(h, task, outputs, inputs.shape[1:])
