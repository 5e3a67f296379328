"""Group declarations and per-sample group labels.

A model declares its groups once (static shapes). Each training sample carries a
label: an integer ``0..G-1``, one of the declared names, or ``-1`` for "in no
group" (the sample is trained on but enters no spectrum).
"""

import re

import numpy as np
import tensorflow as tf

GROUP_KEY = "group"
UNASSIGNED = -1
# Keys users write for the group entry by mistake; they get an error naming GROUP_KEY.
_NEAR_MISSES = re.compile(r"groups?|grps?|group_?(labels?|ids?|names?|index|indices)|labels?_?groups?|cohorts?",
                          re.IGNORECASE)


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def looks_like_number(name):
    """Whether a group name would read as a number (``1``, ``"2"``, ``"0.5"``, ``"nan"``)."""
    return not isinstance(name, str) or bool(_NUMBER.fullmatch(name.strip()))


def validate_group_names(groups):
    """Checks a group declaration and returns it as a tuple of strings.

    One rule makes every label mean one thing: **integer labels are indices** (``0..G-1``,
    ``-1`` = in no group) and **text labels are names**. So a name must not look like a
    number: with ``groups=[1, 2]``, is the label ``1`` the group named 1 or the second
    group? Such declarations are refused, with the fix (``["site 1", "site 2"]``).

    Args:
        groups: sequence of distinct, non-empty group names (text).

    Returns:
        Tuple of the names, in declaration order (label ``i`` is ``groups[i]``).

    Raises:
        ValueError: when no group is declared, a name is not text, is empty, looks like a
            number, or is repeated.
    """
    if isinstance(groups, (set, frozenset, dict, type({}.keys()))):
        raise ValueError(
            f"Declare the groups in a list or tuple; received a {type(groups).__name__} "
            f"{sorted(map(str, groups))}, whose order can change from one process to the next, "
            "so that the label 0 could name another group in another run. E.g. "
            f"groups={sorted(map(str, groups))}."
        )
    if groups is None or isinstance(groups, (str, bytes)) or len(groups) == 0:
        raise ValueError(
            "AutoSpecModel needs the set of groups up front, e.g. "
            "`groups=['HC', 'SZ']`; received "
            f"groups={groups!r}."
        )
    names = tuple(g.decode() if isinstance(g, bytes) else g for g in groups)
    numeric = [n for n in names if looks_like_number(n)]
    if numeric:
        examples = [f"group {n}" for n in names[:3]]
        raise ValueError(
            f"Group names must be text that does not look like a number; received {list(names)}. "
            "Integer labels are always read as group indices (0..G-1, -1 = in no group), so a "
            f"group named {numeric[0]!r} could be read two ways. Name the groups, e.g. "
            f"groups={examples}, and give labels as indices 0..{len(names) - 1} or as those names."
        )
    if any(not n.strip() for n in names):
        raise ValueError(f"Group names must be non-empty strings; received {names!r}.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"Group names must be distinct; {duplicates} appear more than once "
            f"in groups={names!r}."
        )
    return names


def missing_labels_error(x, group_names):
    """The error for training inputs without group labels, naming a misspelt key if any."""
    found = f" The inputs are a dict with keys {sorted(x)}." if isinstance(x, dict) else ""
    return ValueError(
        "AutoSpecModel.fit needs a group label per sample: call "
        "`fit(x, y, groups=labels)`, or give the inputs as a dict with a "
        f"'{GROUP_KEY}' entry (`fit({{'x': x, '{GROUP_KEY}': labels}}, y)`, also from a "
        f"tf.data.Dataset).{found} Declared groups: {list(group_names)}."
    )


def check_group_entry(x, group_names, required, input_names=()):
    """Refuses inputs whose group labels sit under another key than ``"group"``, and
    (when ``required``) inputs without labels.

    Args:
        x: the inputs of one entry point, or a dataset's element spec of them.
        group_names: the declared names.
        required: whether the labels must be there (training).
        input_names: the model's own input names (never taken for a misspelt key).

    Raises:
        ValueError: naming the key found and the reserved key ``"group"``.
    """
    if isinstance(x, dict) and GROUP_KEY not in x:
        misspelt = sorted(k for k in x if isinstance(k, str) and _NEAR_MISSES.fullmatch(k) and k not in input_names)
        if misspelt:
            raise ValueError(
                f"The inputs have an entry {misspelt[0]!r}, and no '{GROUP_KEY}' entry: AutoSpec "
                f"reads group labels from the key '{GROUP_KEY}' only (e.g. "
                f"{{'x': x, '{GROUP_KEY}': labels}}). Rename the key, or pass `groups=labels`."
            )
    if required and not (isinstance(x, dict) and GROUP_KEY in x):
        raise missing_labels_error(x, group_names)


def refuse_group_input(model):
    """Refuses a model with an input named ``"group"``: that key carries the group labels.

    Args:
        model: a built functional or Sequential `keras.Model`.
    """
    if GROUP_KEY in input_names(model):
        raise ValueError(
            f"Model '{model.name}' has an input named '{GROUP_KEY}', the key AutoSpec reserves "
            "for the group labels of each sample. Rename that input, e.g. "
            f"keras.Input(..., name='{GROUP_KEY}_input')."
        )


def null_partitions(labels, partitions, seed=0, subjects=None):
    """Group labels with ``partitions`` null partitions: random relabelings of the
    subjects that keep every group's size (and the subjects in no group).

    Each partition's groups are what the real groups would be if the labels had been
    dealt to the subjects at random. `AutoSpecModel(null_partitions=P)` records their
    spectra beside the real ones, from the same rows of the same steps, and
    `tf_autospec.stats` compares the real groups with them (``docs/analysis.md``). Draw
    them once per dataset, before any split into folds, so that every run of an
    experiment (every seed and fold) sees the same partitions of the same subjects.

    Args:
        labels: int group indices per sample, ``-1`` for samples in no group (e.g. from
            `labels_to_indices`, or a dataset's ``labels``).
        partitions: how many null partitions ``P``.
        seed: the partitions are a function of the labels, subjects and seed.
        subjects: a subject ID per sample (any hashable values), when a subject has
            several samples (sessions, windows, augmentations): its samples keep one
            label in every partition. Default: every sample is a subject.

    Returns:
        int32 ``[N, 1 + P]``: column 0 the labels, column ``p`` the ``p``-th relabeling;
        pass it as the group labels (``fit(x, y, groups=...)`` or a ``"group"`` entry).

    Raises:
        ValueError: a subject's samples are in different groups.
    """
    labels = np.asarray(labels, dtype=np.int32)
    if labels.ndim != 1:
        raise ValueError(f"null_partitions takes one label per sample; received shape {labels.shape}.")
    ids = np.arange(len(labels)) if subjects is None else np.asarray(subjects)
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} subject IDs for {len(labels)} labels; give one per sample.")
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    per_subject = labels[first]
    mixed = np.flatnonzero(per_subject[inverse] != labels)
    if mixed.size:
        raise ValueError(
            f"Subject {str(ids[mixed[0]])!r} has samples in different groups; a subject belongs to "
            "one group (or to none, -1) in all its samples."
        )
    grouped = np.flatnonzero(per_subject >= 0)
    rng = np.random.default_rng(seed)
    out = np.empty((len(labels), 1 + partitions), dtype=np.int32)
    out[:, 0] = labels
    for column in range(1, 1 + partitions):
        relabeled = per_subject.copy()
        relabeled[grouped] = rng.permutation(per_subject[grouped])
        out[:, column] = relabeled[inverse]
    return out


def follows_the_target(y, labels):
    """Whether the groups are the classes the model is taught, or one follows from the
    other: no class is shared by two groups (digits as groups), or each group holds one
    class (the diagnosis predicted). Their gradients then differ by construction.

    Args:
        y: class per sample (ints, or one-hot rows).
        labels: group index per sample (``-1``: in no group, left out).

    Returns:
        bool, or ``None`` when ``y`` is not classes (regression targets).
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1 and np.all((y == 0) | (y == 1)):
        y = y.argmax(axis=1)
    y = y.reshape(len(y), -1)[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or not (y.dtype.kind in "iub" or np.all(y == np.round(y))):
        return None
    grouped = labels >= 0
    pairs = set(zip(y[grouped].tolist(), labels[grouped].tolist()))
    classes, groups = [c for c, _ in pairs], [g for _, g in pairs]
    return len(set(classes)) == len(classes) or len(set(groups)) == len(groups)


def partitions_error(columns, partitions):
    """The error for labels whose columns do not match the model's null partitions."""
    if partitions == 0:
        return ValueError(
            f"The group labels have {columns} columns (labels and null partitions), but the "
            "model records no null partitions. Pass one label per sample, or build the model "
            f"with null_partitions={columns - 1}."
        )
    return ValueError(
        f"The model records {partitions} null partitions, so its group labels need "
        f"1 + {partitions} columns; received {columns}. Give one label per sample as arrays "
        "(the partitions are then drawn in fit), or draw them for the whole dataset: "
        f"groups=tf_autospec.null_partitions(labels, {partitions}) (also as the 'group' entry "
        "of a tf.data.Dataset)."
    )


def input_names(model):
    """The names of a model's inputs (dict keys and input tensors' names); empty for a
    subclassed or unbuilt model."""
    structure = getattr(model, "_inputs_struct", None)
    names = list(structure) if isinstance(structure, dict) else []
    try:
        inputs = model.inputs or []
    except (AttributeError, ValueError):  # a subclassed or unbuilt model: no inputs yet
        inputs = []
    return names + [getattr(i, "name", None) for i in inputs]


def _as_label_array(labels):
    """Labels as a 1-D NumPy array of integers, floats or text (bytes decoded)."""
    if isinstance(labels, tf.Tensor):
        labels = labels.numpy()
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim == 2 and array.dtype.kind in "iu":
        return array  # labels and null partitions (`null_partitions`): indices
    if array.ndim != 1:
        raise ValueError(
            "Group labels must be a 1-D array with one label per sample (or, with null "
            "partitions, the integer array tf_autospec.null_partitions returns); received "
            f"shape {array.shape}."
        )
    if array.dtype.kind == "S":
        return np.array([v.decode() for v in array.tolist()], dtype=object)
    if array.dtype.kind != "O":
        return array
    values = [v.decode() if isinstance(v, bytes) else v for v in array.tolist()]
    text = [isinstance(v, str) for v in values]
    if all(text):
        return np.array(values, dtype=object)
    numbers = [isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
               for v in values]
    if all(numbers):
        return np.array(values, dtype=np.float64)
    examples = [v for v, t, n in zip(values, text, numbers) if not t][:3]
    raise ValueError(
        "Group labels must be all integers (group indices) or all text (group names); "
        f"received a mix, e.g. {examples} beside text. Convert them to one form."
    )


def labels_to_indices(labels, group_names):
    """Converts user labels (NumPy side) to int32 group indices.

    Integer labels are indices (``-1`` = in no group); text labels (str, bytes, object
    arrays of text, pandas columns, ``tf.string`` tensors) are names (``"-1"`` = in no
    group). See `validate_group_names` for why the two never mix.

    Args:
        labels: 1-D array-like of ints in ``-1..G-1`` or of declared group names.
        group_names: the declared names (from `validate_group_names`).

    Returns:
        int32 NumPy array of the same length, ``-1`` for unassigned samples.

    Raises:
        ValueError: with the offending values and how to fix them.
    """
    array = _as_label_array(labels)
    if array.dtype.kind in "UO":
        lookup = {name: i for i, name in enumerate(group_names)}
        as_text = array.tolist()
        unknown = sorted({v for v in as_text if v not in lookup and v != str(UNASSIGNED)})
        if unknown:
            hint = ""
            if any(looks_like_number(v) for v in unknown):
                hint = (" Text labels are read as names only; give indices as integers "
                        "(e.g. labels.astype(int)).")
            raise ValueError(
                f"Unknown group labels {unknown[:5]}; declared groups are "
                f"{list(group_names)}. Use a declared name, its index, or -1 for "
                f"'in no group'.{hint}"
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
    # Checked before the cast: a uint64 2**64 - 1 would wrap to -1, "in no group".
    bad = sorted(set(array[(array < UNASSIGNED) | (array >= len(group_names))].tolist()))
    if bad:
        raise ValueError(
            f"Group labels {bad[:5]} are outside 0..{len(group_names) - 1} "
            f"(groups {list(group_names)}); use -1 for samples in no group."
        )
    return array.astype(np.int32)


def labels_to_indices_tensor(labels, group_names, check=True):
    """Converts labels arriving inside a training step to int32 indices, by the rule of
    `labels_to_indices`.

    Args:
        labels: tensor of shape ``[N]`` or ``[N, 1]``, integer, float or string.
        group_names: the declared names.
        check: add graph assertions on the values, naming the offending ones (not under XLA).

    Returns:
        int32 tensor ``[N]`` with values in ``-1..G-1``.
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2 and labels.shape[1] == 1:
        labels = tf.squeeze(labels, axis=1)
    if labels.dtype == tf.bool:
        raise ValueError("Group labels must be integers (group indices) or group names; received bool.")
    if labels.dtype.is_unsigned:
        labels = tf.cast(labels, tf.int64)  # so that -1 compares as -1
    if labels.dtype == tf.string:
        matches = tf.equal(labels[:, None], tf.constant(group_names)[None, :])
        known = tf.reduce_any(matches, axis=1)
        unassigned = tf.equal(labels, str(UNASSIGNED))
        index = tf.cast(tf.argmax(tf.cast(matches, tf.int32), axis=1), tf.int32)
        indices = tf.where(known, index, UNASSIGNED)
        message = f"Unknown group labels (declared groups {list(group_names)}; -1 = in no group):"
        return _checked(indices, known | unassigned, labels, message) if check else indices
    indices = tf.cast(labels, tf.int32)
    if not check:
        return indices
    valid = (labels >= UNASSIGNED) & (labels < len(group_names))
    if labels.dtype.is_floating:
        valid &= tf.equal(labels, tf.round(labels))
    message = (f"Group labels must be whole numbers in -1..{len(group_names) - 1} "
               f"(groups {list(group_names)}; -1 = in no group); these are not:")
    return _checked(indices, valid, labels, message)


def _checked(indices, valid, labels, message):
    """``indices``, once an assertion naming the labels that are not ``valid`` has passed
    (the control dependency runs it before anything uses the indices)."""
    # Flat, so that labels of a rank unknown while tracing (Keras retraces with it) work.
    offending = tf.boolean_mask(tf.reshape(labels, [-1]), tf.reshape(~valid, [-1]))
    check = tf.debugging.Assert(tf.reduce_all(valid), [message, offending], summarize=10)
    with tf.control_dependencies([check]):
        return tf.identity(indices)
