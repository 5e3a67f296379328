"""Group gradient geometry: do two groups' gradients move a layer the same way?

Singular values say how strongly and in how many directions each group's share of a
gradient, ``G_g = Aᵀ M_g Δ``, moves a layer; they do not say whether two groups move it
the same way. At every recorded step, for every tracked kernel and every pair of groups
``(a, b)`` (``itertools.combinations`` order, `tf_autospec.pairs.group_pairs`), this module gives:

* ``cosine``: ``⟨G_a, G_b⟩_F / (‖G_a‖_F ‖G_b‖_F)``: +1 the groups push the weights the
  same way, 0 unrelated directions, −1 opposed (a compromise between the groups, the
  "gradient conflict" of multi-task learning). Beside it, ``batch_cosine``: each group's
  cosine with the whole batch's gradient ``G = Σ_g G_g + G_unassigned`` (samples in no
  group count in ``G``), which says whether the step follows that group.
* ``overlap``: ``‖U_aᵀ U_b‖_F² / k`` of the groups' top-``k`` left singular vectors (the
  directions of the layer's input space that each group's gradient uses most): 1 when
  they use the same ``k`` directions, about ``k / fan_in`` for unrelated directions.

The inner products never need ``G_g`` where the rows route applies:
``⟨G_a, G_b⟩_F = Σ_ij (A_a A_bᵀ)_ij (Δ_a Δ_bᵀ)_ij``, row-Gram matrices between the two
groups' rows (float64, or the Gram dtype of ``precision="float32"``). On the fan route
they are read from the formed ``G_g``. The left singular vectors come from the same
eigen-problems as the spectra (see `tf_autospec.spectra`).

**Undefined values are NaN**: a cosine whose group is absent, whose gradient is exactly
zero, or whose factors held NaN or Inf; a ``batch_cosine`` when any group's factors (or
those of the samples in no group) held NaN or Inf; an ``overlap`` unless both groups'
``k``-th singular value stands out of the next one by more than the numerical-rank
tolerance (``σ_k − σ_{k+1} > tol · σ_1``, `spectra._rank_tolerances`): below that the
top-``k`` subspace is not determined by the data but by round-off (this includes a
gradient of numerical rank below ``k``). ``k`` is ``min(overlap_k, fan_in, fan_out)``
per kernel (`overlap_width`).
"""

import copy
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tf_autospec.pairs import group_pairs

MEASURES = ("cosine", "overlap")
# What a step records per kernel for each measure (batch_cosine goes with cosine).
RECORDED = {"cosine": ("cosine", "batch_cosine"), "overlap": ("overlap",)}
DEFAULT_OVERLAP_K = 3
COMPUTE_DTYPE = tf.float64


def check_geometry(geometry):
    """The measures to record, as a tuple (a subset of `MEASURES`, in its order).

    Args:
        geometry: ``True`` (every measure), ``False`` or ``None`` (none), or a measure
            name or a list of them.
    """
    if geometry is True:
        return MEASURES
    if geometry is False or geometry is None:
        return ()
    if not isinstance(geometry, (str, list, tuple)):
        raise ValueError(
            f"geometry takes True, False or a subset of {list(MEASURES)}; received {geometry!r}."
        )
    chosen = (geometry,) if isinstance(geometry, str) else tuple(geometry)
    unknown = [m for m in chosen if m not in MEASURES]
    if unknown:
        raise ValueError(
            f"Unknown geometry measure(s) {unknown}: geometry takes True, False or a subset of "
            f"{list(MEASURES)}, e.g. geometry=['cosine']."
        )
    return tuple(m for m in MEASURES if m in chosen)


def check_overlap_k(overlap_k):
    if isinstance(overlap_k, bool) or int(overlap_k) != overlap_k or overlap_k < 1:
        raise ValueError(f"overlap_k must be a positive whole number; received {overlap_k!r}.")
    return int(overlap_k)


def overlap_width(overlap_k, fan_in, fan_out):
    """The ``k`` of a kernel's overlap: no more directions than the gradient has."""
    return min(overlap_k, fan_in, fan_out)


def recorded_shapes(measures, num_groups):
    """name -> shape per partition of each recorded geometry value."""
    pairs = len(group_pairs(range(num_groups)))
    shapes = {"cosine": [pairs], "batch_cosine": [num_groups], "overlap": [pairs]}
    return {name: shapes[name] for measure in measures for name in RECORDED[measure]}


class InnerProducts(NamedTuple):
    """The Frobenius inner products between a kernel's group gradients, float64.

    Attributes:
        diagonal: ``[G']``, ``‖G_g‖²`` of every recorded group (partition-major).
        pairs: ``[partitions · n_pairs]``, ``⟨G_a, G_b⟩`` of each pair in each partition.
        with_unassigned: ``[G']``, ``⟨G_g, G_unassigned⟩``.
        unassigned: scalar, ``‖G_unassigned‖²``.
        unassigned_finite: bool scalar, False where the unassigned samples' factors held
            NaN or Inf.
    """

    diagonal: tf.Tensor
    pairs: tf.Tensor
    with_unassigned: tf.Tensor
    unassigned: tf.Tensor
    unassigned_finite: tf.Tensor


class Pieces(NamedTuple):
    """What one kernel's step gives `measures`: its `InnerProducts`, and per pair and group
    what its overlap needs.

    Attributes:
        inner: `InnerProducts`.
        overlap: float64 ``[partitions · n_pairs]``, ``‖U_aᵀ U_b‖_F² / k`` (0 without overlap).
        determined: bool ``[G']``, the group's top-``k`` subspace stands out of round-off
            (``σ_k − σ_{k+1} > tol · σ_1``).
        finite: bool ``[G']``, False where the group's factors held NaN or Inf.
    """

    inner: InnerProducts
    overlap: tf.Tensor
    determined: tf.Tensor
    finite: tf.Tensor


class Layout:
    """The recorded pairs of a model's groups, in every partition.

    Args:
        num_groups: declared groups ``G``.
        partitions: ``1 +`` null partitions; the recorded groups are partition-major.
    """

    def __init__(self, num_groups, partitions):
        self.num_groups = num_groups
        self.partitions = partitions
        self.recorded_groups = num_groups * partitions
        pairs = group_pairs(range(num_groups))
        # int32 arrays: an empty list (one group) would gather as float32 indices.
        self.first = np.array([p * num_groups + a for p in range(partitions) for a, _ in pairs], np.int32)
        self.second = np.array([p * num_groups + b for p in range(partitions) for _, b in pairs], np.int32)
        # incidence[g, j] = 1 where group g is in pair j: ⟨G_g, Σ_h G_h⟩ from the pairs' products.
        incidence = np.zeros([self.recorded_groups, len(self.first)])
        incidence[self.first, range(len(self.first))] = 1
        incidence[self.second, range(len(self.first))] = 1
        self.incidence = incidence

    def of_pairs(self, values, axis=0):
        """``values`` of each pair's first group and of its second, gathered along ``axis``."""
        return tf.gather(values, self.first, axis=axis), tf.gather(values, self.second, axis=axis)


class Request:
    """What one kernel's geometry needs besides its groups' factors.

    Args:
        measures: subset of `MEASURES`.
        overlap_k: ``k`` of the overlap for this kernel (`overlap_width`).
        layout: the `Layout` of the model's groups.
        has_unassigned: bool scalar, whether some sample of the batch is in no group.
        unassigned_factors: ``() -> (a, delta)``, the factors of the samples in no group
            laid out as one group ``[1, R_u, ...]``; called only inside a ``tf.cond`` on
            ``has_unassigned``, so that a batch whose samples all have a group pays nothing
            for them.
        membership: ``None``, or where the kernel's factors are `spectra.BatchGramRows`
            (one row-Gram matrix of the whole batch), which groups each of its rows is in:
            float64 ``[M, G' + 1]``, the last column for no group
            (`SampleGrouping.row_membership`); the inner products are then read from the
            batch's Gram matrices, the samples in no group included.
    """

    def __init__(self, measures, overlap_k, layout, has_unassigned, unassigned_factors, membership=None):
        self.measures = measures
        self.overlap_k = overlap_k
        self.layout = layout
        self.first, self.second = layout.first, layout.second
        self.has_unassigned = has_unassigned
        self.unassigned_factors = unassigned_factors
        self.membership = membership

    def for_step(self, finite, tolerance):
        """This request with what `rows_pieces` and `gradient_pieces` need from the step's spectra.

        Args:
            finite: bool ``[G']``, False where a group's factors held NaN or Inf.
            tolerance: the numerical-rank tolerance of ``grad``, relative to σ_1.
        """
        step = copy.copy(self)
        step.finite, step.tolerance = finite, tolerance
        return step

    @property
    def wants_vectors(self):
        return "overlap" in self.measures

    def _zeroed_unassigned(self):
        """The unassigned factors, zero where they hold NaN or Inf, and whether they did not."""
        a, delta = self.unassigned_factors()
        finite = a.finite_groups() & delta.finite_groups()
        return a.zeroed(finite), delta.zeroed(finite), tf.reduce_all(finite)

    def _unassigned_or_none(self, compute, none):
        return tf.cond(self.has_unassigned, compute, none)

    def unassigned_gradient(self, fan_in, fan_out):
        """``(G_unassigned, finite)``: float32 ``[1, fan_in, fan_out]`` (zero when every
        sample has a group) and a bool scalar."""
        def compute():
            a, delta, finite = self._zeroed_unassigned()
            return a.transpose_matmul(delta.values), finite

        return self._unassigned_or_none(compute, lambda: (tf.zeros([1, fan_in, fan_out]), tf.constant(True)))

    def rows_pieces(self, a, delta, gram_a, gram_delta, top_values, row_vectors, gram_dtype):
        """The kernel's `Pieces` on the rows route, without forming any ``G_g``.

        ``⟨G_a, G_b⟩ = Σ (A_a A_bᵀ) ∘ (Δ_a Δ_bᵀ)``; the left singular vectors are
        ``L_g = A_gᵀ Y_g``, so that ``L_aᵀ L_b = Y_aᵀ (A_a A_bᵀ) Y_b`` reuses the same cross
        Gram matrix.

        Args:
            a, delta: the (finite-zeroed) factors ``[G', R, ...]``, `spectra.BatchGramRows`
                where this request has a ``membership``.
            gram_a, gram_delta: their row Gram matrices (float64 ``[G', R, R]``).
            top_values: float64 ``[G', k + 1]``, each group gradient's largest singular
                values, descending, 0-padded (``None`` without overlap).
            row_vectors: float64 ``[G', R, k]``, the ``Y_g`` of its top-``k`` left singular
                vectors (``None`` without overlap).
            gram_dtype: the dtype the cross Gram matrices are formed in.
        """
        batch = self.membership is not None
        pairs = len(self.first) > 0
        cross_a = self._pair_cross_gram(a, gram_dtype) if pairs and (self.wants_vectors or not batch) else None
        inner = None
        if "cosine" in self.measures and batch:
            inner = self._batch_inner_products(a, delta)
        elif "cosine" in self.measures:
            diagonal = tf.reduce_sum(gram_a * gram_delta, axis=[1, 2])
            if pairs:
                cross_delta = self._pair_cross_gram(delta, gram_dtype)
                pair_products = tf.reduce_sum(cross_a * cross_delta, axis=[1, 2])
            else:
                pair_products = tf.zeros([0], COMPUTE_DTYPE)

            def compute():
                other_a, other_delta, finite = self._zeroed_unassigned()
                with_unassigned = tf.reduce_sum(
                    a.cross_gram(other_a, gram_dtype) * delta.cross_gram(other_delta, gram_dtype), axis=[1, 2]
                )
                unassigned = tf.reduce_sum(other_a.row_gram(gram_dtype) * other_delta.row_gram(gram_dtype))
                return with_unassigned, unassigned, finite

            def none():
                return tf.zeros_like(diagonal), tf.zeros([], COMPUTE_DTYPE), tf.constant(True)

            inner = InnerProducts(diagonal, pair_products, *self._unassigned_or_none(compute, none))
        products = None
        if self.wants_vectors and pairs:
            first, second = self.layout.of_pairs(row_vectors)
            products = tf.matmul(first, tf.matmul(cross_a, second), transpose_a=True)
        return self._pieces(inner, top_values, products)

    def _pair_cross_gram(self, factor, gram_dtype):
        """``X_a X_bᵀ`` of each pair's two groups' rows, float64 ``[partitions · n_pairs, R, R]``."""
        return factor.take(self.first).cross_gram(factor.take(self.second), gram_dtype)

    def _left_products(self, left):
        """``L_aᵀ L_b`` of each pair, from the groups' left singular vectors ``[G', fan_in, k]``."""
        first, second = self.layout.of_pairs(left)
        return tf.matmul(first, second, transpose_a=True)

    def _batch_inner_products(self, a, delta):
        """`InnerProducts` from the row-Gram matrices of the whole batch (`spectra.BatchGramRows`):
        with ``P = (A Aᵀ) ∘ (Δ Δᵀ)`` over all rows and the membership ``M``, ``Mᵀ P M``
        holds every group's ``‖G_g‖²``, every pair's ``⟨G_a, G_b⟩`` in every partition and
        the unassigned samples' terms. Rows holding NaN or Inf are zero there (their
        groups are reported NaN by `measures`)."""
        membership = self.membership
        products = (a.gram * delta.gram)[:-1, :-1]  # without the empty slots' zero row and column
        totals = tf.matmul(membership, tf.matmul(products, membership), transpose_a=True)  # [G' + 1, G' + 1]
        groups = self.layout.recorded_groups
        finite_rows = (a.finite & delta.finite)[:-1]
        return InnerProducts(
            tf.linalg.diag_part(totals)[:groups],
            tf.gather_nd(totals, np.stack([self.first, self.second], axis=1)),
            totals[:groups, groups],
            totals[groups, groups],
            tf.reduce_all(finite_rows | tf.equal(membership[:, groups], 0.0)),
        )

    def gradient_pieces(self, gradient, top_values, left, unassigned=None):
        """The kernel's `Pieces` from formed gradients.

        Args:
            gradient: float32 ``[G', fan_in, fan_out]``.
            top_values: as for `rows_pieces`.
            left: float64 ``[G', fan_in, k]``, the top-``k`` left singular vectors
                (``None`` without overlap).
            unassigned: ``(G_unassigned, finite)`` as `unassigned_gradient` returns them
                (e.g. summed over replicas); by default computed from this request's samples.
        """
        inner = None
        if "cosine" in self.measures:
            if unassigned is None:
                unassigned = self.unassigned_gradient(*gradient.shape[1:])
            unassigned_gradient, unassigned_finite = unassigned
            flat = tf.reshape(tf.cast(gradient, COMPUTE_DTYPE), [tf.shape(gradient)[0], -1])
            other = tf.reshape(tf.cast(unassigned_gradient, COMPUTE_DTYPE), [-1])
            first, second = self.layout.of_pairs(flat)
            pair_products = tf.reduce_sum(first * second, axis=1) if len(self.first) else tf.zeros([0], COMPUTE_DTYPE)
            inner = InnerProducts(
                tf.reduce_sum(flat * flat, axis=1), pair_products, tf.linalg.matvec(flat, other),
                tf.reduce_sum(other * other), unassigned_finite,
            )
        products = self._left_products(left) if self.wants_vectors and len(self.first) else None
        return self._pieces(inner, top_values, products)

    def _pieces(self, inner, top_values, products):
        """`Pieces` from the inner products (``None`` without cosine) and each pair's
        ``L_aᵀ L_b`` (``None`` without overlap or pairs). Uses what `for_step` set."""
        groups = self.layout.recorded_groups
        if inner is None:  # the same structure for every kernel: zeros, never read
            zeros = tf.zeros([groups], COMPUTE_DTYPE)
            inner = InnerProducts(zeros, tf.zeros([len(self.first)], COMPUTE_DTYPE), zeros,
                                  tf.zeros([], COMPUTE_DTYPE), tf.constant(True))
        if products is None:
            return Pieces(inner, tf.zeros([len(self.first)], COMPUTE_DTYPE), tf.zeros([groups], tf.bool), self.finite)
        k = self.overlap_k
        determined = (top_values[:, k - 1] - top_values[:, k] > self.tolerance * top_values[:, 0]) & self.finite
        return Pieces(inner, tf.reduce_sum(products * products, axis=[1, 2]) / k, determined, self.finite)


def measures(chosen, layout, kernel_pieces):
    """The recorded geometry values of every kernel of a step, computed together (one set
    of small ops for all kernels).

    Args:
        chosen: subset of `MEASURES`.
        layout: the model's `Layout`.
        kernel_pieces: one `Pieces` per kernel.

    Returns:
        One dict per kernel: name (`RECORDED`) -> float32 ``[partitions, ...]``.
    """
    if not kernel_pieces:
        return []
    stacked = tf.nest.map_structure(lambda *values: tf.stack(values), *kernel_pieces)
    inner, groups, partitions = stacked.inner, layout.num_groups, layout.partitions
    kernels, pairs = len(kernel_pieces), len(layout.first) // partitions
    out = {}
    if "cosine" in chosen:
        norms = tf.sqrt(tf.maximum(inner.diagonal, 0.0))  # [K, G']
        first_norms, second_norms = layout.of_pairs(norms, axis=1)
        first_finite, second_finite = layout.of_pairs(stacked.finite, axis=1)
        pair_cosine = tf.where(first_finite & second_finite, _ratio(inner.pairs, first_norms * second_norms),
                               float("nan"))
        out["cosine"] = tf.reshape(pair_cosine, [kernels, partitions, pairs])
        # ⟨G_g, G⟩ = ‖G_g‖² + Σ_h≠g ⟨G_g, G_h⟩ + ⟨G_g, G_u⟩, h over g's partition; ‖G‖² sums them
        # with the unassigned's own terms.
        with_batch = inner.diagonal + tf.matmul(inner.pairs, tf.constant(layout.incidence.T)) + inner.with_unassigned
        per_partition = tf.reshape(with_batch, [kernels, partitions, groups])
        batch_norm2 = tf.reduce_sum(per_partition + tf.reshape(inner.with_unassigned, [kernels, partitions, groups]),
                                    axis=2) + inner.unassigned[:, None]
        batch_cosine = _ratio(per_partition, tf.reshape(norms, [kernels, partitions, groups])
                              * tf.sqrt(tf.maximum(batch_norm2, 0.0))[:, :, None])
        partition_finite = (tf.reduce_all(tf.reshape(stacked.finite, [kernels, partitions, groups]), axis=2)
                            & inner.unassigned_finite[:, None])
        out["batch_cosine"] = tf.where(partition_finite[:, :, None], batch_cosine, float("nan"))
    if "overlap" in chosen:
        first_determined, second_determined = layout.of_pairs(stacked.determined, axis=1)
        out["overlap"] = tf.reshape(tf.where(first_determined & second_determined, stacked.overlap, float("nan")),
                                    [kernels, partitions, pairs])
    out = {name: tf.unstack(tf.cast(values, tf.float32), num=kernels) for name, values in out.items()}
    return [{name: values[i] for name, values in out.items()} for i in range(kernels)]


def _ratio(numerator, denominator):
    """``numerator / denominator`` clipped to [-1, 1], NaN where the denominator is 0."""
    safe = tf.where(denominator > 0, denominator, 1.0)
    return tf.where(denominator > 0, tf.clip_by_value(numerator / safe, -1.0, 1.0), float("nan"))


def top_left_vectors(eigenvalues, vectors, k):
    """Top ``k + 1`` singular values and top-``k`` vectors from an ascending eigen-decomposition
    of a Gram matrix (``[G, n]``, ``[G, n, n]``), 0-padded when ``n ≤ k``."""
    values = tf.sqrt(tf.maximum(tf.reverse(eigenvalues, axis=[-1]), 0.0))
    missing = tf.maximum(k + 1 - tf.shape(values)[-1], 0)
    values = tf.pad(values, [[0, 0], [0, missing]])[:, : k + 1]
    top = tf.reverse(vectors[:, :, -k:], axis=[-1])  # reversing only the k columns kept
    top = tf.pad(top, [[0, 0], [0, 0], [0, tf.maximum(k - tf.shape(top)[-1], 0)]])
    return tf.ensure_shape(values, [None, k + 1]), tf.ensure_shape(top, [None, None, k])
