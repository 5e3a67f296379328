"""Exact per-group singular values of a kernel gradient and of its two factors.

For a kernel used as ``Y = A @ W`` the gradient is ``∇W = Aᵀ Δ``; group ``g`` with
row mask ``M_g`` has ``G_g = Aᵀ M_g Δ``. For every group this module returns

* ``grad``  = σ(G_g)
* ``act``   = σ(M_g A)
* ``delta`` = σ(M_g Δ)

without ever decomposing a matrix larger than the rank bound requires. Two routes,
picked per kernel from the shapes (at run time when the batch size is dynamic):

* **rows** (a group has fewer rows ``R`` than ``min(fan_in, fan_out)``, e.g. Dense):
  ``K_A = A_g A_gᵀ = U Λ Uᵀ`` gives σ(A_g) = √Λ; ``K_Δ = Δ_g Δ_gᵀ`` gives σ(Δ_g);
  and σ(G_g)² = eig(Λ^½ Uᵀ K_Δ U Λ^½), because ``G_g G_gᵀ = A_gᵀ K_Δ A_g``.
  Three eigen-problems of size ``R × R``.
* **fan** (``R`` large, e.g. convolutions with rows = samples × positions):
  ``G_g = A_gᵀ Δ_g`` is formed (one extra weight gradient over the group's rows) and
  the smaller of its two Gram matrices is decomposed; σ(A_g), σ(Δ_g) come from the
  smaller of their Gram matrices.

Gram matrices of the factors and all eigen-problems are float64: a Gram matrix squares
the condition number, and float64 keeps the small singular values accurate to ~1e-8 ×
σ_max. ``G_g`` itself is formed in float32: by Weyl's inequality a perturbation ``E``
moves each singular value by at most ``‖E‖₂`` (~1e-6 × σ_max here), so only its Gram
matrix needs float64.

**Precision.** ``precision="float32"`` (`AutoSpecModel`'s opt-in) forms the Gram matrices
of the factors and of ``G_g`` in float32, about twice as fast; their eigen-problems stay
float64. Each singular value is then within ``√(w·ε₃₂)·σ_1`` of the exact one (``w`` the
matrix's width, as in `_rank_tolerances`), and values at or below that are stored as 0.
The sums exchanged under `tf.distribute` and the randomized route stay float64.

Both routes are exact for any ``R``; the choice only sets the cost. When ``R`` is not
known while tracing, a hint (rows of a whole batch, an upper bound of ``R``) picks the
route; without one, ``tf.cond`` picks it at run time.

A singular value that is zero in exact arithmetic (a rank-deficient gradient or factor: a
softmax's ``Δ``, dead units, constant or duplicated inputs) comes out of float32 factors
as round-off, ~1e-9..4e-7 × σ_1, whose size follows σ_1. Every route therefore stores the
values at or below a numerical-rank tolerance as exactly 0 (`_rank_tolerances`). Digits
lost before the factors (a confident softmax's ``Δ = p − y``) are beyond its reach: see
docs/method.md, "Numerical rank".

Groups are laid out side by side, ``[G, R, ...]``, so each step is one batched call
for all groups of a kernel. Outside XLA the rows of each group are gathered (``R`` =
largest group); under XLA they are masked (``R`` = batch) so that shapes stay static.
On the rows route, where that is cheaper (`batch_gram_cheaper`: null partitions, two
groups with their pair), their Gram matrices are gathered from one of the whole batch
instead (`BatchGramRows`). The
eigen-problems are posed to `tf_autospec.solvers`, which solves those of all kernels of
a step together.
"""

import numpy as np
import tensorflow as tf

from tf_autospec import geometry as geometry_module
from tf_autospec import solvers

KINDS = ("grad", "act", "delta")
COMPUTE_DTYPE = tf.float64
PRECISIONS = {"float64": tf.float64, "float32": tf.float32}  # dtype of the Gram matrices
FACTOR_DTYPE = tf.float32
FACTOR_EPSILON = float(np.finfo(FACTOR_DTYPE.as_numpy_dtype).eps)
RANDOMIZED_OVERSAMPLING = 10
RANDOMIZED_POWER_ITERATIONS = 2


class SampleGrouping:
    """Lays per-sample tensors out per group: ``[N, ...] -> [G', S, ...]``.

    With null partitions (random relabelings of the subjects, see
    `tf_autospec.groups.null_partitions`) each sample belongs to one group of every
    partition: partition ``c`` has the recorded groups ``c·G .. c·G + G - 1``, so
    ``G' = G · partitions``; partition 0 holds the real groups.

    Args:
        labels: int32 ``[N]`` group indices, ``-1`` for samples in no group; or
            ``[N, partitions]``, one column per partition.
        num_groups: number of declared groups ``G``.
        static_shapes: mask instead of gather, so that ``S = N`` is static (XLA).
    """

    def __init__(self, labels, num_groups, static_shapes):
        if labels.shape.rank == 1:
            labels = labels[:, None]
        partitions = labels.shape[1]
        self.labels = labels
        self.num_groups = num_groups * partitions
        self.static_shapes = static_shapes
        recorded = tf.where(labels >= 0, labels + num_groups * tf.range(partitions)[None, :], -1)
        # [N, G']: 1 where the sample is in the group; -1 -> no group.
        self.one_hot = tf.reduce_sum(tf.one_hot(recorded, self.num_groups, dtype=tf.int32), axis=1)
        self.counts = tf.reduce_sum(self.one_hot, axis=0)
        if static_shapes:
            self.members = tf.cast(tf.transpose(self.one_hot), tf.bool)  # [G', N]
            return
        slot = tf.cumsum(self.one_hot, axis=0, exclusive=True)
        membership = tf.where(self.one_hot > 0)  # [M, 2]: (sample, group)
        positions = tf.stack([tf.cast(membership[:, 1], tf.int32), tf.gather_nd(slot, membership)], axis=1)
        largest = tf.reduce_max(self.counts)
        # Index 0 of the extended tensor is the fill row; sample i sits at i + 1.
        self.sample_index = tf.scatter_nd(
            positions, tf.cast(membership[:, 0], tf.int32) + 1,
            tf.stack([self.num_groups, largest]),
        )

    def row_membership(self, rows_per_sample):
        """float64 ``[N · rows_per_sample, G' + 1]``: 1 where a row's sample is in the group;
        the last column for the samples in no group."""
        unassigned = tf.cast(self.labels[:, :1] < 0, tf.int32)
        return tf.repeat(tf.cast(tf.concat([self.one_hot, unassigned], 1), COMPUTE_DTYPE), rows_per_sample, axis=0)

    def row_index(self, rows_per_sample):
        """int32 ``[G', S · rows_per_sample]``: where each group's rows sit among the whole
        batch's rows (sample ``i``'s are ``i · rows_per_sample`` to ``i · rows_per_sample +
        rows_per_sample − 1``, as `BatchGramRows` lays them out), in the order `apply` lays
        the group's rows out; ``N · rows_per_sample`` for an empty slot."""
        samples = (self.sample_index - 1)[:, :, None]  # -1: an empty slot
        rows = samples * rows_per_sample + tf.range(rows_per_sample)[None, None, :]
        empty = tf.shape(self.labels)[0] * rows_per_sample
        return tf.reshape(tf.where(samples >= 0, rows, empty), [self.num_groups, -1])

    def has_unassigned(self):
        """bool scalar: some sample is in no group."""
        return tf.reduce_any(self.labels[:, 0] < 0)

    def unassigned(self):
        """The samples in no group, as a `SampleGrouping` of one group (a new one at each
        call: it may be built inside a ``tf.cond`` branch, whose tensors stay there)."""
        return SampleGrouping(tf.where(self.labels[:, 0] < 0, 0, -1), 1, self.static_shapes)

    def apply(self, values, fill):
        """Returns ``values`` laid out as ``[G', S, ...]``; empty slots hold ``fill``."""
        if self.static_shapes:
            members = tf.reshape(
                self.members, [self.num_groups, -1] + [1] * (values.shape.rank - 1)
            )
            return tf.where(members, values[None], tf.cast(fill, values.dtype))
        fill_row = tf.ensure_shape(  # a static per-sample shape survives the concat below
            tf.fill(tf.concat([[1], tf.shape(values)[1:]], 0), tf.cast(fill, values.dtype)), [1, *values.shape[1:]])
        return tf.gather(tf.concat([fill_row, values], axis=0), self.sample_index)


class DenseRows:
    """A factor given by its rows: float ``[G, R, d]``."""

    def __init__(self, values):
        self.values = tf.cast(values, FACTOR_DTYPE)
        self.width = values.shape[-1]

    @property
    def num_rows(self):
        return dim(self.values, 1)

    def finite_groups(self):
        """bool ``[G]``: the group's rows hold no NaN or Inf."""
        return tf.reduce_all(self.finite_rows(), axis=1)

    def zeroed(self, keep):
        """The same factor with the rows of groups not in ``keep`` set to zero."""
        return DenseRows(_where_groups(keep, self.values, 0.0))

    def take(self, groups):
        """The factor of the groups at indices ``groups``, in that order."""
        return DenseRows(tf.gather(self.values, groups))

    def finite_rows(self):
        """bool ``[G, R]``: the row holds no NaN or Inf."""
        return tf.reduce_all(tf.math.is_finite(self.values), axis=-1)

    def zeroed_rows(self, keep):
        """The same factor with the rows not in ``keep`` (bool ``[G, R]``) set to zero."""
        return DenseRows(tf.where(keep[:, :, None], self.values, 0.0))

    def cross_gram(self, other, gram_dtype=COMPUTE_DTYPE):
        """``A Bᵀ`` between the rows of two factors, per group (broadcast), float64 ``[G, R, R_other]``."""
        return tf.cast(
            tf.matmul(tf.cast(self.values, gram_dtype), tf.cast(other.values, gram_dtype), transpose_b=True),
            COMPUTE_DTYPE,
        )

    def row_gram(self, gram_dtype=COMPUTE_DTYPE):
        """``AAᵀ`` per group, formed in ``gram_dtype``, float64 ``[G, R, R]``."""
        return self.cross_gram(self, gram_dtype)

    def column_gram(self, gram_dtype=COMPUTE_DTYPE):
        """``AᵀA`` per group, formed in ``gram_dtype``, float64 ``[G, d, d]``: a sum over rows."""
        values = tf.cast(self.values, gram_dtype)
        return tf.cast(tf.matmul(values, values, transpose_a=True), COMPUTE_DTYPE)

    @staticmethod
    def column_gram_shape(width):
        return [width, width]

    @staticmethod
    def eigenvalues_of_column_gram(gram):
        """A `solvers` computation of the eigenvalues (or, where none is needed, the values)."""
        return solvers.solution(solvers.eigvalsh(gram))

    def column_gram_eigenvalues(self, gram_dtype=COMPUTE_DTYPE):
        return self.eigenvalues_of_column_gram(self.column_gram(gram_dtype))

    def transpose_matmul(self, other):
        return tf.matmul(tf.cast(self.values, other.dtype), other, transpose_a=True)


class OneHotRows:
    """A factor whose rows are one-hot vectors (Embedding): ids ``[G, R]``, ``-1`` = empty row."""

    def __init__(self, ids, depth):
        self.ids = ids
        self.width = depth

    @property
    def num_rows(self):
        return dim(self.ids, 1)

    def finite_groups(self):
        return tf.ones([tf.shape(self.ids)[0]], tf.bool)

    def zeroed(self, keep):
        return OneHotRows(tf.where(keep[:, None], self.ids, -1), self.width)

    def take(self, groups):
        return OneHotRows(tf.gather(self.ids, groups), self.width)

    def finite_rows(self):
        return tf.ones(tf.shape(self.ids), tf.bool)

    def zeroed_rows(self, keep):
        return OneHotRows(tf.where(keep, self.ids, -1), self.width)

    def cross_gram(self, other, gram_dtype=None):
        """Whether a row of one factor holds the same token as a row of the other (exact)."""
        same = tf.equal(self.ids[:, :, None], other.ids[:, None, :])
        present = (self.ids >= 0)[:, :, None] & (other.ids >= 0)[:, None, :]
        return tf.cast(same & present, COMPUTE_DTYPE)

    def row_gram(self, gram_dtype=None):
        """Whether two rows hold the same token: exact, whatever ``gram_dtype``."""
        return self.cross_gram(self)

    def column_gram(self, gram_dtype=None):
        """The diagonal of ``AᵀA`` (which is diagonal): rows per token, float64 ``[G, d]``
        (counts: exact, whatever ``gram_dtype``)."""
        ones = tf.ones(tf.concat([tf.shape(self.ids), [1]], 0), COMPUTE_DTYPE)
        return self.transpose_matmul(ones)[..., 0]

    @staticmethod
    def column_gram_shape(width):
        return [width]

    @staticmethod
    def eigenvalues_of_column_gram(diagonal):
        return tf.sort(diagonal, axis=-1)

    def column_gram_eigenvalues(self, gram_dtype=None):
        return self.eigenvalues_of_column_gram(self.column_gram())

    def transpose_matmul(self, other):
        """``Aᵀ other`` per group: rows of ``other`` summed by token id."""
        groups = tf.shape(self.ids)[0]
        segment = tf.where(
            self.ids >= 0,
            self.ids + self.width * tf.range(groups)[:, None],
            groups * self.width,
        )
        summed = tf.math.unsorted_segment_sum(
            tf.reshape(other, [-1, other.shape[-1]]),
            tf.reshape(segment, [-1]),
            groups * self.width + 1,
        )
        return tf.reshape(summed[:-1], [groups, self.width, other.shape[-1]])


class BatchGramRows:
    """A factor on the rows route, read from one row-Gram matrix of the whole batch.

    The rows route needs each group's ``X_g X_gᵀ``, the geometry also ``X_a X_bᵀ`` of the
    pairs. Where that is cheaper (`batch_gram_cheaper`: null partitions, two groups with
    their pair), one ``X Xᵀ`` over the batch's ``M`` rows is formed and each block is
    gathered from it.

    Args:
        gram: float64 ``[M + 1, M + 1]``, ``X Xᵀ`` with the rows that hold NaN or Inf
            zeroed, and a last zero row and column for the empty slots.
        finite: bool ``[M + 1]``, the row held no NaN or Inf (the last: True).
        row_index: int32 ``[G', R]``, each group's rows in the batch (`SampleGrouping.row_index`).
        width: the factor's width ``d``.
    """

    def __init__(self, gram, finite, row_index, width):
        self.gram = gram
        self.finite = finite
        self.row_index = row_index
        self.width = width

    @classmethod
    def of(cls, factor, row_index, gram_dtype=COMPUTE_DTYPE):
        """From the whole batch's rows as one group (`DenseRows` or `OneHotRows` ``[1, M, d]``),
        the Gram matrix formed in ``gram_dtype``."""
        if gram_dtype == COMPUTE_DTYPE:
            # A float64 sum of float32 squares cannot overflow, so a diagonal entry is NaN
            # or Inf exactly where its row holds NaN or Inf; and each entry depends on its
            # two rows only. The factor is then neither scanned nor copied.
            gram = factor.row_gram(gram_dtype)[0]
            finite = tf.math.is_finite(tf.linalg.diag_part(gram))
            gram = tf.where(finite[:, None] & finite[None, :], gram, 0.0)
        else:  # a float32 square can overflow: the rows themselves tell NaN or Inf from that
            finite = factor.finite_rows()[0]
            gram = factor.zeroed_rows(finite[None]).row_gram(gram_dtype)[0]
        return cls(tf.pad(gram, [[0, 1], [0, 1]]), tf.concat([finite, [True]], 0), row_index, factor.width)

    @property
    def num_rows(self):
        return dim(self.row_index, 1)

    def finite_groups(self):
        return tf.reduce_all(tf.gather(self.finite, self.row_index), axis=1)

    def zeroed(self, keep):
        """The same factor with the groups not in ``keep`` empty (their rows point to the
        zero row), as `DenseRows.zeroed` zeroes them."""
        empty = tf.shape(self.gram)[0] - 1
        return BatchGramRows(self.gram, self.finite, tf.where(keep[:, None], self.row_index, empty), self.width)

    def take(self, groups):
        return BatchGramRows(self.gram, self.finite, tf.gather(self.row_index, groups), self.width)

    def cross_gram(self, other, gram_dtype=None):
        """``X_a X_bᵀ`` of group ``i`` of each with group ``i`` of ``other`` (as many
        groups), gathered: float64 ``[G, R, R_other]``."""
        size = tf.shape(self.gram)[0]
        # One gather of the flat matrix: no [G, R, M + 1] intermediate.
        index = self.row_index[:, :, None] * size + other.row_index[:, None, :]
        return tf.gather(tf.reshape(self.gram, [-1]), index)

    def row_gram(self, gram_dtype=None):
        return self.cross_gram(self)


def batch_gram_cheaper(num_groups, recorded_groups, pairs):
    """Whether one row-Gram matrix of the batch (``M²`` products per factor) costs less
    than the groups' own and the pairs' cross ones (``(G' + pairs) · R²``, with ``R ≥ M /
    G`` rows in the largest group): measured on this CPU, one ``[M, d] × [d, M]`` product
    runs as fast as 4/3 of its multiply-adds spread over the groups' smaller products (the
    groups are padded to the largest, and small products run slower; docs/benchmarks.md,
    "Gradient geometry: cost"). True for 2 groups with their pair, and with null
    partitions; False for 2 groups without the geometry, and for one group alone (whose
    Gram matrix is the batch's)."""
    return recorded_groups > 1 and 3 * num_groups ** 2 <= 4 * (recorded_groups + pairs)


def dim(tensor, axis):
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def _select(condition, if_true, if_false):
    """A `solvers` computation: the Python branch when ``condition`` is static, else
    ``tf.cond`` (whose branches solve their own eigen-problems, apart from the step's)."""
    if not tf.is_tensor(condition):
        return (yield from solvers.result(if_true() if condition else if_false()))
    return tf.cond(condition, lambda: solvers.run([if_true()])[0], lambda: solvers.run([if_false()])[0])


def _singular_values(eigenvalues, width):
    """Ascending Gram eigenvalues -> descending singular values, cut or NaN-padded to ``width``."""
    values = tf.sqrt(tf.maximum(tf.reverse(eigenvalues, axis=[-1]), 0.0))
    missing = tf.maximum(width - tf.shape(values)[-1], 0)
    values = tf.pad(values, [[0, 0], [0, missing]], constant_values=float("nan"))
    return tf.ensure_shape(values[:, :width], [None, width])


def _smaller_gram_eigenvalues(factor, rows, gram_dtype, rows_size):
    """A `solvers` computation of the eigenvalues of the smaller Gram matrix of a factor
    (its squared singular values); ``rows_size`` is the `solvers.Eigen` size of its rows."""
    return _select(
        rows <= factor.width,
        lambda: solvers.solution(solvers.eigvalsh(factor.row_gram(gram_dtype), rows_size)),
        lambda: factor.column_gram_eigenvalues(gram_dtype),
    )


def _rows_route(a, delta, kinds, widths, gram_dtype, geometry, rows_size):
    """A `solvers` computation: two rounds of eigen-problems (the factors', then the
    core's), all ``R × R`` (``rows_size`` as for `solvers.Eigen`)."""
    gram_a = a.row_gram(gram_dtype)
    out = {}
    gradient_needed = "grad" in kinds or geometry is not None
    problems = {}
    if gradient_needed:
        problems["act"] = solvers.eigh(gram_a, rows_size)
    elif "act" in kinds:
        problems["act"] = solvers.eigvalsh(gram_a, rows_size)
    if gradient_needed or "delta" in kinds:
        gram_delta = delta.row_gram(gram_dtype)
    if "delta" in kinds:
        problems["delta"] = solvers.eigvalsh(gram_delta, rows_size)
    solved = yield from solvers.solutions(problems)
    if gradient_needed:
        eig_a, vectors_a = solved["act"]
    elif "act" in kinds:
        eig_a = solved["act"]
    if "act" in kinds:
        out["act"] = _singular_values(eig_a, widths["act"])
    if "delta" in kinds:
        out["delta"] = _singular_values(solved["delta"], widths["delta"])
    if gradient_needed:
        scale = tf.sqrt(tf.maximum(eig_a, 0.0))
        projected = tf.matmul(vectors_a, tf.matmul(gram_delta, vectors_a), transpose_a=True)
        core = scale[:, :, None] * projected * scale[:, None, :]
        wants_vectors = geometry is not None and geometry.wants_vectors
        if wants_vectors:
            eig_core, vectors_core = yield solvers.eigh(core, rows_size)
        else:
            eig_core, vectors_core = (yield solvers.eigvalsh(core, rows_size)), None
        if "grad" in kinds:
            out["grad"] = _singular_values(eig_core, widths["grad"])
        if geometry is not None:
            with tf.name_scope("geometry"):
                top_values = row_vectors = None
                if wants_vectors:
                    top_values, top_core = geometry_module.top_left_vectors(eig_core, vectors_core, geometry.overlap_k)
                    row_vectors = _rows_left_weights(vectors_a, projected, scale, top_values, top_core)
                out["geometry"] = geometry.rows_pieces(a, delta, gram_a, gram_delta, top_values, row_vectors,
                                                       gram_dtype)
    return out


def _rows_left_weights(vectors_a, projected, scale, top_values, top_core):
    """``Y`` ``[G, R, k]`` such that ``A_gᵀ Y`` are the top-``k`` left singular vectors of
    ``G_g = A_gᵀ Δ_g`` (rows route; never formed, see `geometry.Request.rows_pieces`).

    With ``A_g A_gᵀ = U Λ Uᵀ``, ``P = Uᵀ Δ_g Δ_gᵀ U`` and the core ``Λ^½ P Λ^½ = W Σ² Wᵀ``,
    the vectors are ``A_gᵀ U Λ^-½ W``; ``Λ^-½ W = P Λ^½ W Σ^-2`` avoids dividing by the small
    eigenvalues of ``Λ``.
    """
    k = top_core.shape[-1]
    squared = top_values[:, :k] ** 2
    weights = tf.matmul(projected, scale[:, :, None] * top_core) / tf.where(squared > 0, squared, 1.0)[:, None, :]
    return tf.matmul(vectors_a, weights)


def _fan_route(a, delta, kinds, widths, rows, randomized, gram_dtype, geometry, rows_size):
    """A `solvers` computation; the factors' and the gradient's eigen-problems are posed together."""
    def cheaper_randomized(width, size):
        return randomized and width + RANDOMIZED_OVERSAMPLING < size

    def factor_spectrum(kind, factor):
        gram_size = factor.width if tf.is_tensor(rows) else min(rows, factor.width)
        if isinstance(factor, DenseRows) and cheaper_randomized(widths[kind], gram_size):
            values, _, _, _ = yield from _randomized(factor.values, widths[kind], vectors=0)
            return {kind: values}
        eigenvalues = yield from _smaller_gram_eigenvalues(factor, rows, gram_dtype, rows_size)
        return {kind: _singular_values(eigenvalues, widths[kind])}

    def gradient_spectrum():
        gradient = a.transpose_matmul(delta.values)
        width = widths.get("grad", 0)
        k = geometry.overlap_k if geometry is not None and geometry.wants_vectors else 0
        if cheaper_randomized(max(width, k), min(a.width, delta.width)):
            values, _, top_values, left = yield from _randomized(gradient, max(width, k), vectors=k)
        else:
            values, top_values, left = yield from _gradient_singular_values(gradient, width, gram_dtype, vectors=k)
        out = {}
        if "grad" in kinds:
            out["grad"] = values[:, :width]
        if geometry is not None:
            out["geometry"] = geometry.gradient_pieces(gradient, top_values, left)
        return out

    computations = [factor_spectrum(kind, factor) for kind, factor in (("act", a), ("delta", delta)) if kind in kinds]
    if "grad" in kinds or geometry is not None:
        computations.append(gradient_spectrum())
    parts = yield from solvers.lockstep(computations)
    return {kind: values for part in parts for kind, values in part.items()}


def randomized_top_singular_values(matrices, width):
    """The ``width`` largest singular values of each ``[G, m, n]`` matrix, by randomized
    subspace iteration (Halko, Martinsson & Tropp 2011; Gu 2015).

    A Gaussian sketch of ``l = width + RANDOMIZED_OVERSAMPLING`` columns, refined by
    ``RANDOMIZED_POWER_ITERATIONS`` power iterations, gives an orthonormal ``Q`` (m × l)
    and ``B = Qᵀ M``. Then, for every ``j ≤ width``, deterministically:

        σ_j(B) ≤ σ_j(M) ≤ σ_j(B) + ‖M − Q B‖₂,   ‖M − Q B‖₂ ≤ √(‖M‖_F² − ‖B‖_F²)

    (interlacing, and Weyl's inequality; up to float32 rounding of the products, ~1e-6 ×
    σ_max). A priori the residual shrinks as the spectrum decays past ``l`` and with each
    power iteration (Halko, Martinsson & Tropp 2011, §10.4); the bound above holds at
    every call, whatever the spectrum. Cost per matrix: ``(2q + 2)`` products with
    ``m·n·l`` multiply-adds, QR of ``m × l`` blocks and an ``l × l`` eigen-problem, instead
    of a Gram matrix of ``min(m, n)²·max(m, n)`` and a ``min(m, n)³`` eigen-problem.

    Args:
        matrices: float ``[G, m, n]``.
        width: how many singular values to return.

    Returns:
        ``(values, residual)``: float64 ``[G, width]``, descending, a lower bound of each
        true singular value; and float64 ``[G]``, the a-posteriori bound
        ``√(‖M‖_F² − ‖B‖_F²)`` on how far each may lie below the truth.
    """
    values, residual, _, _ = solvers.run([_randomized(matrices, width, vectors=0)])[0]
    return values, residual


def _randomized(matrices, width, vectors):
    """A `solvers` computation of `randomized_top_singular_values`, and with ``vectors > 0``
    the top ``vectors + 1`` values and the top-``vectors`` left singular vectors of ``B``
    lifted by ``Q`` (as `geometry_module.top_left_vectors` gives them; ``None`` otherwise)."""
    matrices, overflow = _without_overflow(tf.cast(matrices, FACTOR_DTYPE))
    sketch = tf.random.normal(tf.stack([tf.shape(matrices)[0], dim(matrices, 2), width + RANDOMIZED_OVERSAMPLING]))
    basis = tf.linalg.qr(tf.matmul(matrices, sketch))[0]
    for _ in range(RANDOMIZED_POWER_ITERATIONS):
        back = tf.linalg.qr(tf.matmul(matrices, basis, transpose_a=True))[0]
        basis = tf.linalg.qr(tf.matmul(matrices, back))[0]
    projected = tf.cast(tf.matmul(basis, matrices, transpose_a=True), COMPUTE_DTYPE)  # B = Qᵀ M
    gram = tf.matmul(projected, projected, transpose_b=True)
    exact = tf.cast(matrices, COMPUTE_DTYPE)
    missing = tf.reduce_sum(exact * exact, axis=[1, 2]) - tf.linalg.trace(gram)
    residual = _nan_where(overflow, tf.sqrt(tf.maximum(missing, 0.0)))
    values, top_values, top = yield from _gram_spectrum(gram, width, vectors, overflow)
    left = None if top is None else tf.matmul(tf.cast(basis, COMPUTE_DTYPE), top)
    return values, residual, top_values, left


def _gram_spectrum(gram, width, vectors, overflow):
    """A `solvers` computation of ``(values, top_values, top)`` from a Gram matrix
    ``[G, n, n]``: its singular values as `_singular_values` gives them (NaN for the
    ``overflow`` groups), and with ``vectors > 0`` the top ``vectors + 1`` values and
    ``vectors`` eigenvectors (`geometry_module.top_left_vectors`; ``None`` otherwise)."""
    if not vectors:
        eigenvalues = yield solvers.eigvalsh(gram)
        return _nan_where(overflow, _singular_values(eigenvalues, width)), None, None
    eigenvalues, eigenvectors = yield solvers.eigh(gram)
    top_values, top = geometry_module.top_left_vectors(eigenvalues, eigenvectors, vectors)
    return _nan_where(overflow, _singular_values(eigenvalues, width)), top_values, top


def _without_overflow(matrices):
    """``[G, m, n]`` matrices with the groups holding Inf or NaN (float32 overflow of huge,
    finite factors) set to zero, so that no solver sees them; and those groups, bool ``[G]``."""
    overflow = ~tf.reduce_all(tf.math.is_finite(matrices), axis=[1, 2])
    return _where_groups(~overflow, matrices, 0.0), overflow


def _where_groups(keep, values, fill):
    """``values`` ``[G, ...]`` with the groups not in ``keep`` set to ``fill``: a copy of the
    whole tensor only at the steps where some group is not kept (NaN or Inf is rare)."""
    mask = tf.reshape(keep, [-1] + [1] * (values.shape.rank - 1))
    return tf.cond(tf.reduce_all(keep), lambda: values,
                   lambda: tf.where(mask, values, tf.cast(fill, values.dtype)))


def _nan_where(groups, values):
    """``values`` (``[G, ...]``) with the rows of ``groups`` set to NaN."""
    mask = tf.reshape(groups, [-1] + [1] * (values.shape.rank - 1))
    return tf.where(mask, tf.constant(float("nan"), values.dtype), values)


def _gradient_singular_values(gradient, width, gram_dtype=COMPUTE_DTYPE, vectors=0):
    """A `solvers` computation of σ of float32 group gradients ``[G, fan_in, fan_out]``,
    from the smaller Gram matrix (formed in ``gram_dtype``).

    Returns:
        ``(values, top_values, left)``: ``[G, width]`` as `_singular_values` gives them;
        with ``vectors > 0`` the top ``vectors + 1`` values and ``[G, fan_in, vectors]``
        left singular vectors (`geometry_module.top_left_vectors`), ``None`` otherwise.
    """
    gradient, overflow = _without_overflow(tf.cast(gradient, gram_dtype))
    tall = gradient.shape[1] >= gradient.shape[2]
    gram = tf.cast(tf.matmul(gradient, gradient, transpose_a=tall, transpose_b=not tall), COMPUTE_DTYPE)
    values, top_values, top = yield from _gram_spectrum(gram, width, vectors, overflow)
    if top is not None and tall:  # eigenvectors of GᵀG are right singular vectors: u = G v / σ
        safe = tf.where(top_values[:, :vectors] > 0, top_values[:, :vectors], 1.0)
        top = tf.matmul(tf.cast(gradient, COMPUTE_DTYPE), top) / safe[:, None, :]
    return values, top_values, top


def group_spectra(a, delta, rows_per_sample, counts, kinds, widths, rows_hint=None, randomized=False,
                  precision="float64", geometry=None):
    """Singular values of each group's gradient and factors for one kernel: the result of
    `group_spectra_computation`, with the same arguments, whose eigen-problems are solved
    on their own (`AutoSpecModel` solves those of all its kernels together)."""
    return solvers.run([group_spectra_computation(a, delta, rows_per_sample, counts, kinds, widths, rows_hint,
                                                  randomized, precision, geometry)])[0]


def group_spectra_computation(a, delta, rows_per_sample, counts, kinds, widths, rows_hint=None, randomized=False,
                              precision="float64", geometry=None):
    """A `solvers` computation of the singular values of each group's gradient and
    factors for one kernel.

    Args:
        a: `DenseRows` or `OneHotRows`, the group-laid-out layer inputs ``[G, R, fan_in]``;
            or, for a kernel known to be on the rows route, `BatchGramRows`.
        delta: `DenseRows`, the group-laid-out ``∂L/∂Y`` rows ``[G, R, fan_out]`` (or
            `BatchGramRows`, with ``a``).
        rows_per_sample: rows each sample contributes (positions, time steps, tokens).
        counts: int32 ``[G]`` samples per group.
        kinds: subset of `KINDS` to compute.
        widths: dict kind -> fixed output width.
        rows_hint: used to pick the routes when ``R`` is only known at run time.
        randomized: on the fan route, compute the top ``width`` singular values of a
            dense factor or gradient by `randomized_top_singular_values` where that is
            cheaper than its Gram matrix (widths well below the matrix's size).
        precision: ``"float64"`` (default) or ``"float32"``: the dtype in which the Gram
            matrices are formed (see the module docstring).
        geometry: a `tf_autospec.geometry.Request` to compute the groups' gradient
            geometry too, or ``None``.

    Returns:
        ``(spectra, finite)``: dict kind -> float32 ``[G, width]``, singular values in
        descending order, 0 at or below the numerical-rank tolerance (`_rank_tolerances`),
        NaN beyond the group's rank bound ``min(rows_g, ...)``, for groups with no
        sample and for groups whose factors hold NaN or Inf; with ``geometry``, also
        ``"geometry"``: the kernel's `tf_autospec.geometry.Pieces`, from which
        `tf_autospec.geometry.measures` computes the recorded values; and bool
        ``[G]``, False for the groups whose factors hold NaN or Inf. Non-finite rows never
        reach an eigen-solver.
    """
    finite = a.finite_groups() & delta.finite_groups()
    if not kinds and geometry is None:
        return {}, finite
    a, delta = a.zeroed(finite), delta.zeroed(finite)
    rows = a.num_rows
    # Every kernel laid out by the same grouping has R = largest group × rows per sample:
    # equal R, equal key, so that their R × R eigen-problems are solved in one call.
    keyed = tf.is_tensor(counts) and not tf.is_tensor(rows_per_sample)
    rows_size = rows if not tf.is_tensor(rows) else ("rows", counts.ref(), rows_per_sample) if keyed else None
    if tf.is_tensor(rows) and rows_hint is not None:
        rows = rows_hint
    smallest_fan = min(a.width, delta.width)
    gram_dtype = PRECISIONS[precision]
    if geometry is not None:
        geometry = geometry.for_step(finite, _rank_tolerances(a.width, delta.width, precision)["grad"])
    values = yield from _select(
        rows < smallest_fan,
        lambda: _rows_route(a, delta, kinds, widths, gram_dtype, geometry, rows_size),
        lambda: _fan_route(a, delta, kinds, widths, rows, randomized, gram_dtype, geometry, rows_size),
    )
    spectra = {kind: v for kind, v in values.items() if kind in KINDS}
    bounded = _within_bounds(spectra, finite, counts * rows_per_sample, a.width, delta.width, widths, precision)
    if geometry is not None:
        bounded["geometry"] = values["geometry"]
    return bounded, finite


def _rank_tolerances(fan_in, fan_out, precision="float64"):
    """Per kind, the numerical-rank tolerance relative to σ_1 of the same matrix.

    In the spirit of ``numpy.linalg.matrix_rank`` (``σ_1 · max(m, n) · ε``), with the
    precision of the data: the factors are float32 (`FACTOR_DTYPE`), so ε is float32's,
    although Gram matrices and eigen-problems are float64. ``max(m, n)`` is the matrix's
    width on the kernel's side: ``max(fan_in, fan_out)`` for ``grad`` (``G_g`` is
    ``fan_in × fan_out``), ``fan_in`` for ``act`` and ``fan_out`` for ``delta``. A group's
    row count does not enter: rows beyond the width add no singular value, and the
    rounding of float32 rows, at most ``ε·‖X‖_F ≤ ε·√width·σ_1``, does not grow with them
    (a 2-logit softmax's zero σ_2 stays below 3e-7 × σ_1 from 4 to 400 000 rows).

    With ``precision="float32"`` the Gram matrices themselves are float32: an eigenvalue
    moves by up to ``‖E‖₂`` (the Gram matrix's rounding), a zero singular value comes out
    as ``√‖E‖₂``, up to ~3e-4 × σ_1 measured (CNN-size factors with a large common
    component). The tolerance is then the square root of the float64 one,
    ``√(max(m, n)·ε)``: 3e-3 × σ_1 at width 64, 6e-3 at 288, 2e-2 at 4096. It is also the
    documented bound of every value's error in that mode.
    """
    widths = {"act": fan_in, "delta": fan_out, "grad": max(fan_in, fan_out)}
    if precision == "float32":
        return {kind: float(np.sqrt(width * FACTOR_EPSILON)) for kind, width in widths.items()}
    return {kind: width * FACTOR_EPSILON for kind, width in widths.items()}


def _within_bounds(spectra, finite, group_rows, fan_in, fan_out, widths, precision="float64"):
    """float32 spectra: values at or below the numerical-rank tolerance (`_rank_tolerances`)
    set to 0, NaN beyond each group's rank bound and for non-finite groups.

    Every route ends here, so all of them apply the same rule; a NaN σ_1 (an overflowed
    group) leaves its values NaN.
    """
    bounds = {
        "act": tf.minimum(group_rows, fan_in),
        "delta": tf.minimum(group_rows, fan_out),
        "grad": tf.minimum(group_rows, min(fan_in, fan_out)),
    }
    tolerances = _rank_tolerances(fan_in, fan_out, precision)
    out = {}
    for kind, values in spectra.items():
        # Descending: σ_1 is each group's first value (a lower bound when randomized).
        zero = values <= values[:, :1] * tolerances[kind]
        values = tf.where(zero, tf.zeros_like(values), values)
        index = tf.range(widths[kind])[None, :]
        defined = (index < bounds[kind][:, None]) & finite[:, None]
        out[kind] = tf.cast(tf.where(defined, values, float("nan")), tf.float32)
    return out


def row_sums(a, delta, kinds, geometry=None):
    """Per-group sums over rows from which `spectra_from_row_sums` gives the spectra.

    Sums over disjoint sets of rows add up: under `tf.distribute` each replica computes
    them on its own rows, and their all-reduced total is that of the global batch.

    Args:
        a, delta: the group-laid-out factors, as for `group_spectra`.
        kinds: subset of `KINDS`.
        geometry: a `tf_autospec.geometry.Request` (with this part's samples in no
            group) when the geometry is recorded, or ``None``.

    Returns:
        dict: ``"nonfinite"`` float64 ``[G]`` (1 where a group's rows hold NaN or Inf;
        such groups contribute zeros to the other sums), and per kind ``"grad"``
        ``AᵀΔ`` float32 ``[G, fan_in, fan_out]``, ``"act"`` the column Gram matrix of
        ``A``, ``"delta"`` that of ``Δ`` (float64). With ``geometry``, also ``"grad"``
        and the unassigned samples' ``"unassigned_grad"`` ``[1, fan_in, fan_out]`` and
        ``"unassigned_nonfinite"`` ``[1]``.
    """
    finite = a.finite_groups() & delta.finite_groups()
    a, delta = a.zeroed(finite), delta.zeroed(finite)
    sums = {"nonfinite": tf.cast(~finite, COMPUTE_DTYPE)}
    if "grad" in kinds or geometry is not None:
        sums["grad"] = a.transpose_matmul(delta.values)
    if geometry is not None:
        unassigned, unassigned_finite = geometry.unassigned_gradient(a.width, delta.width)
        sums["unassigned_grad"] = unassigned
        sums["unassigned_nonfinite"] = tf.cast(~unassigned_finite, COMPUTE_DTYPE)[None]
    if "act" in kinds:
        sums["act"] = a.column_gram()
    if "delta" in kinds:
        sums["delta"] = delta.column_gram()
    return sums


def row_sums_spec(input_factor_type, fan_in, fan_out, kinds, num_groups, geometry=False):
    """The `tf.TensorSpec` of each entry of `row_sums`, known before any data.

    Args:
        input_factor_type: the class of the ``A`` factor (`DenseRows`, `OneHotRows`).
        fan_in, fan_out: the kernel read as a matrix.
        kinds: subset of `KINDS`.
        num_groups: ``G``.
        geometry: whether the geometry is recorded.
    """
    spec = {"nonfinite": tf.TensorSpec([num_groups], COMPUTE_DTYPE)}
    if "grad" in kinds or geometry:
        spec["grad"] = tf.TensorSpec([num_groups, fan_in, fan_out], FACTOR_DTYPE)
    if geometry:
        spec["unassigned_grad"] = tf.TensorSpec([1, fan_in, fan_out], FACTOR_DTYPE)
        spec["unassigned_nonfinite"] = tf.TensorSpec([1], COMPUTE_DTYPE)
    if "act" in kinds:
        spec["act"] = tf.TensorSpec([num_groups, *input_factor_type.column_gram_shape(fan_in)], COMPUTE_DTYPE)
    if "delta" in kinds:
        spec["delta"] = tf.TensorSpec([num_groups, *DenseRows.column_gram_shape(fan_out)], COMPUTE_DTYPE)
    return spec


def spectra_from_row_sums(sums, input_factor_type, fan_in, fan_out, rows_per_sample, counts, widths, geometry=None):
    """A `solvers` computation of the spectra of `group_spectra` from (all-reduced) `row_sums`.

    Args:
        sums: the dict `row_sums` returned, summed over every part of the batch.
        input_factor_type: the class of the ``A`` factor (`DenseRows`, `OneHotRows`).
        fan_in, fan_out: the kernel read as a matrix.
        rows_per_sample: rows each sample contributes.
        counts: int32 ``[G]`` samples per group in the whole batch.
        widths: dict kind -> fixed output width.
        geometry: the `tf_autospec.geometry.Request` given to `row_sums`, or ``None``.

    Returns:
        ``(spectra, finite)`` as `group_spectra` returns them.
    """
    finite = tf.equal(sums["nonfinite"], 0.0)
    spectra, pieces = {}, {}

    def gradient_spectrum():
        k = geometry.overlap_k if geometry is not None and geometry.wants_vectors else 0
        values, top_values, left = yield from _gradient_singular_values(sums["grad"], widths.get("grad", 0), vectors=k)
        if "grad" in widths:
            spectra["grad"] = values
        if geometry is not None:
            unassigned_finite = tf.equal(sums["unassigned_nonfinite"][0], 0.0)
            step = geometry.for_step(finite, _rank_tolerances(fan_in, fan_out)["grad"])
            pieces["geometry"] = step.gradient_pieces(sums["grad"], top_values, left,
                                                      (sums["unassigned_grad"], unassigned_finite))

    def factor_spectrum(kind, factor_type):
        eigenvalues = yield from solvers.result(factor_type.eigenvalues_of_column_gram(sums[kind]))
        spectra[kind] = _singular_values(eigenvalues, widths[kind])

    computations = [gradient_spectrum()] if "grad" in sums else []
    computations += [factor_spectrum(kind, factor_type) for kind, factor_type in
                     (("act", input_factor_type), ("delta", DenseRows)) if kind in sums]
    yield from solvers.lockstep(computations)
    return {**_within_bounds(spectra, finite, counts * rows_per_sample, fan_in, fan_out, widths), **pieces}, finite
