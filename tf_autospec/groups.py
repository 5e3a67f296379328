"""Group declarations and per-sample group labels.

A model declares its groups once (static shapes). Each training sample carries a
label: an integer ``0..G-1``, one of the declared names, or ``-1`` for "in no
group" (the sample is trained on but enters no spectrum).
"""

import numpy as np
import tensorflow as tf

GROUP_KEY = "group"
UNASSIGNED = -1


def validate_group_names(groups):
    """Checks a group declaration and returns it as a tuple of strings.

    Args:
        groups: sequence of distinct, non-empty group names.

    Returns:
        Tuple of the names, in declaration order (label ``i`` is ``groups[i]``).

    Raises:
        ValueError: when no group is declared, a name is empty or repeated.
    """
    if groups is None or isinstance(groups, (str, bytes)) or len(groups) == 0:
        raise ValueError(
            "AutoSpecModel needs the set of groups up front, e.g. "
            "`groups=['HC', 'SZ']`; received "
            f"groups={groups!r}."
        )
    names = tuple(str(g) for g in groups)
    if any(not n for n in names):
        raise ValueError(f"Group names must be non-empty strings; received {names!r}.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"Group names must be distinct; {duplicates} appear more than once "
            f"in groups={names!r}."
        )
    return names


def labels_to_indices(labels, group_names):
    """Converts user labels (NumPy side) to int32 group indices.

    Args:
        labels: 1-D array-like of ints in ``-1..G-1`` or of declared group names.
        group_names: the declared names (from `validate_group_names`).

    Returns:
        int32 NumPy array of the same length, ``-1`` for unassigned samples.

    Raises:
        ValueError: with the offending values and how to fix them.
    """
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(
            "Group labels must be a 1-D array with one label per sample; received "
            f"shape {array.shape}."
        )
    if array.dtype.kind in "USO":
        lookup = {name: i for i, name in enumerate(group_names)}
        as_text = [v.decode() if isinstance(v, bytes) else v for v in array.tolist()]
        unknown = sorted({str(v) for v in as_text if v not in lookup and str(v) != str(UNASSIGNED)})
        if unknown:
            raise ValueError(
                f"Unknown group labels {unknown[:5]}; declared groups are "
                f"{list(group_names)}. Use a declared name, its index, or -1 for "
                "'in no group'."
            )
        return np.array([lookup.get(v, UNASSIGNED) for v in as_text], dtype=np.int32)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise ValueError(
                "Group labels contain NaN or Inf; give every sample a group index, "
                "or -1 for 'in no group'."
            )
        if not np.all(array == np.round(array)):
            raise ValueError("Group labels must be whole numbers (group indices).")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"Group labels must be integers or group names; got dtype {array.dtype}.")
    indices = array.astype(np.int64)
    bad = sorted(set(indices[(indices < UNASSIGNED) | (indices >= len(group_names))].tolist()))
    if bad:
        raise ValueError(
            f"Group labels {bad[:5]} are outside 0..{len(group_names) - 1} "
            f"(groups {list(group_names)}); use -1 for samples in no group."
        )
    return indices.astype(np.int32)


def labels_to_indices_tensor(labels, group_names, check=True):
    """Converts labels arriving inside a training step to int32 indices.

    Args:
        labels: tensor of shape ``[N]`` or ``[N, 1]``, integer or string.
        group_names: the declared names.
        check: add graph assertions on the values (not under XLA).

    Returns:
        int32 tensor ``[N]`` with values in ``-1..G-1``.
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2:
        labels = tf.squeeze(labels, axis=1)
    if labels.dtype == tf.string:
        matches = tf.equal(labels[:, None], tf.constant(group_names)[None, :])
        known = tf.reduce_any(matches, axis=1)
        unassigned = tf.equal(labels, str(UNASSIGNED))
        if check:
            tf.debugging.Assert(
                tf.reduce_all(known | unassigned),
                ["Unknown group label; declared groups are", tf.constant(group_names), labels],
            )
        index = tf.cast(tf.argmax(tf.cast(matches, tf.int32), axis=1), tf.int32)
        return tf.where(known, index, UNASSIGNED)
    if labels.dtype.is_floating and check:
        tf.debugging.Assert(
            tf.reduce_all(tf.equal(labels, tf.round(labels))),
            ["Group labels must be whole numbers (group indices, -1 = in no group)."],
        )
    labels = tf.cast(labels, tf.int32)
    if check:
        tf.debugging.assert_greater_equal(
            labels, UNASSIGNED, message="Group labels must be >= -1 (-1 = in no group)."
        )
        tf.debugging.assert_less(
            labels,
            len(group_names),
            message=f"Group labels must be < {len(group_names)} (groups {list(group_names)}).",
        )
    return labels
