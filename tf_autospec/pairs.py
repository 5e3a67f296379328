"""The pairs of groups that the gradient geometry measures compare, in their stored order."""

import itertools


def group_pairs(groups):
    """The pairs of group indices that ``cosine`` and ``overlap`` compare, in the order
    of their pair axis (in the run file and in `StepSpectra.geometry`).

    Args:
        groups: the group names (only their number matters).

    Returns:
        list of ``(a, b)`` index tuples with ``a < b``: ``(0, 1), (0, 2), ..., (1, 2), ...``;
        ``G (G - 1) / 2`` of them, none for one group.

    Example:
        >>> group_pairs(["HC", "SZ", "BP"])
        [(0, 1), (0, 2), (1, 2)]
    """
    return list(itertools.combinations(range(len(groups)), 2))
