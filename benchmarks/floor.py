"""The floor of the exact spectra: the work the chosen routes cannot avoid, timed alone.

For each tracked kernel of a model, `kernel_plans` reads from one traced recording step
what `tf_autospec.spectra.group_spectra` is given: the kernel as a matrix (``fan_in`` ×
``fan_out``), the rows each sample contributes (positions of a convolution, time steps
of a recurrent kernel, 1 for a Dense layer on vectors) and the kinds computed (an LSTM's
two kernels share one ``Δ``, whose spectrum is computed once). With ``G`` groups of equal
size in a batch of ``B`` a group has ``R = B/G × rows_per_sample`` rows, and the route is
the one `group_spectra` picks:

* rows route (``R < min(fan_in, fan_out)``): per group the row Gram matrices ``A Aᵀ`` and
  ``Δ Δᵀ`` (``R × R``, float64), ``eigh`` of ``A Aᵀ`` (``eigvalsh`` when only ``act`` is
  recorded), ``eigvalsh`` of ``Δ Δᵀ``, and for ``grad`` the core ``Λ^½ Uᵀ (Δ Δᵀ) U Λ^½``
  (two ``R × R`` products) and its ``eigvalsh``;
* fan route: per factor kind the smaller of its two Gram matrices (``min(R, fan)``
  square, float64) and its ``eigvalsh``; for ``grad`` the group gradient ``Aᵀ Δ``
  (float32, ``fan_in × fan_out`` from ``R`` rows), cast to float64, its smaller Gram
  matrix and its ``eigvalsh``.

`floor_function` builds exactly these operations on random float32 factors of those
shapes, batched over the groups ``[G, R, d]`` as the library does, in one `tf.function`;
`FloorTimer` lets `overhead.py` time it beside the models (first call excluded, median
over the same repeats). Nothing else is in it: no gathering of group rows, no
convolution patches, no masking, casting of results, tolerances or writing.

Also here: the eigen-solver ops in a model's traced training step
(`solver_ops_in_graph`), the FLOPs of the floor and of the plain step (`floor_flops`,
`plain_step_flops`), GPU estimates from them (`gpu_estimates`, assumptions in
`GPU_CLASSES` and `SOLVER_LATENCY_MS`), and an op-level profile of one recording step
against the plain one (`profile_step`, `profile_difference`).
"""

import collections
import dataclasses
import glob
import shutil
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import tf_autospec as ts

COMPUTE_DTYPE = tf.float64
FACTOR_DTYPE = tf.float32
SOLVER_OP_TYPES = ("SelfAdjointEigV2", "Svd", "Qr")

# Flops of a symmetric n × n eigen-problem (Golub & Van Loan, Matrix Computations, 4th ed.,
# §8.3: the symmetric QR algorithm costs about 4n³/3 flops for the eigenvalues only, the
# tridiagonal reduction dominating, and about 9n³ with the eigenvectors accumulated).
EIGVALSH_FLOPS_PER_N3 = 4.0 / 3.0
EIGH_FLOPS_PER_N3 = 9.0

# Assumed GPU rates in TFLOP/s (vendor peak figures) and the fraction of peak the small,
# batched Gram products reach (an assumption: these are skinny [G, R, d] products).
GPU_CLASSES = {
    "H100 SXM (data centre)": {"float64_gemm": 67.0, "float64_vector": 34.0, "float32": 67.0},
    "RTX 4090 (consumer, float64 = 1/64 of float32)": {
        "float64_gemm": 1.29, "float64_vector": 1.29, "float32": 82.6,
    },
}
GEMM_EFFICIENCY = 0.5
# Assumed wall time of one cuSOLVER syevd call on a small matrix (launches, host
# synchronisation of its workspace query and info check): low and high end.
SOLVER_LATENCY_MS = (0.1, 1.0)


@dataclasses.dataclass
class KernelPlan:
    """What `group_spectra` gets for one kernel, read while the recording step is traced."""

    path: str
    layer_class: str
    fan_in: int
    fan_out: int
    rows_per_sample: int
    kinds: tuple
    factor: str  # "DenseRows" or "OneHotRows"
    layer_id: int = dataclasses.field(default=0, repr=False, compare=False)

    def as_dict(self):
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "layer_id"}

    def rows(self, batch, groups):
        """Rows of one group when the ``groups`` groups are of equal size."""
        return batch // groups * self.rows_per_sample

    def route(self, rows):
        return "rows" if rows < min(self.fan_in, self.fan_out) else "fan"


class PlanProbeModel(ts.AutoSpecModel):
    """AutoSpecModel that notes, while its recording step is traced, each kernel's plan."""

    def _kernel_spectra(self, kernel, kernel_calls, kernel_deltas, grouping, kinds):
        if kernel_calls:
            rows_per_sample = 0
            for delta in kernel_deltas:
                rows = kernel.capture.output_rows(kernel.layer, delta).shape[1]
                if rows is None:
                    raise ValueError(f"{kernel.path}: rows per sample unknown while tracing")
                rows_per_sample += rows
            self.plans[kernel.path] = KernelPlan(
                kernel.path, type(kernel.layer).__name__, kernel.fan_in, kernel.fan_out,
                rows_per_sample, tuple(kinds), kernel.capture.input_factor_type.__name__, id(kernel.layer),
            )
        return super()._kernel_spectra(kernel, kernel_calls, kernel_deltas, grouping, kinds)


def kernel_plans(make_outputs, input_shape, batch, groups):
    """Traces one recording step of the architecture and returns ``(plans, probe)``:
    a `KernelPlan` per tracked kernel, in model order, and the trained probe model (whose
    graph holds the same eigen-solver ops as an `AutoSpecModel`'s)."""
    inputs = keras.Input(input_shape)
    probe = PlanProbeModel(inputs=inputs, outputs=make_outputs(inputs), groups=[f"g{i}" for i in range(groups)])
    probe.plans = {}
    probe.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *input_shape)).astype("float32")
    probe.fit(x, rng.integers(0, 10, size=batch), groups=np.arange(batch) % groups,
              batch_size=batch, epochs=1, verbose=0)
    return [probe.plans[k.path] for k in probe.tracked_kernels if k.path in probe.plans], probe


# ------------------------------------------------------------------ the floor's operations

@dataclasses.dataclass
class FloorOp:
    """One operation of the floor, batched over ``groups``."""

    kernel: str
    kind: str  # the kind it serves ("act", "delta", "grad"; "act+grad" when shared)
    op: str  # "gram64", "core64", "gradient32", "eigvalsh", "eigh"
    shape: tuple  # gram: (rows summed over, columns); core: (n,); gradient: (R, fan_in, fan_out); eig: (n,)
    groups: int

    @property
    def flops(self):
        g = self.groups
        if self.op == "gram64":
            rows, cols = self.shape
            return 2.0 * g * rows * cols * cols
        if self.op == "core64":
            (n,) = self.shape
            return 2.0 * 2.0 * g * n ** 3
        if self.op == "gradient32":
            rows, fan_in, fan_out = self.shape
            return 2.0 * g * rows * fan_in * fan_out
        (n,) = self.shape
        return g * n ** 3 * (EIGH_FLOPS_PER_N3 if self.op == "eigh" else EIGVALSH_FLOPS_PER_N3)

    @property
    def dtype(self):
        return "float32" if self.op == "gradient32" else "float64"

    @property
    def is_solver(self):
        return self.op in ("eigh", "eigvalsh")


def floor_ops(plan, batch, groups, rows=None):
    """The floor's operations for one kernel (``rows``: rows per group, default
    ``B/G × rows_per_sample``)."""
    rows = plan.rows(batch, groups) if rows is None else rows
    kinds, ops = plan.kinds, []

    def add(kind, op, *shape):
        ops.append(FloorOp(plan.path, kind, op, tuple(shape), groups))

    if plan.route(rows) == "rows":
        if "grad" in kinds or "act" in kinds:
            add("act+grad" if "grad" in kinds else "act", "gram64", plan.fan_in, rows)
            add("act+grad" if "grad" in kinds else "act", "eigh" if "grad" in kinds else "eigvalsh", rows)
        if "grad" in kinds or "delta" in kinds:
            add("delta+grad" if "grad" in kinds else "delta", "gram64", plan.fan_out, rows)
        if "delta" in kinds:
            add("delta", "eigvalsh", rows)
        if "grad" in kinds:
            add("grad", "core64", rows)
            add("grad", "eigvalsh", rows)
        return ops
    for kind, width in (("act", plan.fan_in), ("delta", plan.fan_out)):
        if kind in kinds:
            n = min(rows, width)
            add(kind, "gram64", max(rows, width), n)
            add(kind, "eigvalsh", n)
    if "grad" in kinds:
        add("grad", "gradient32", rows, plan.fan_in, plan.fan_out)
        n = min(plan.fan_in, plan.fan_out)
        add("grad", "gram64", max(plan.fan_in, plan.fan_out), n)
        add("grad", "eigvalsh", n)
    return ops


def _kernel_floor(plan, a, delta, rows):
    """The floor's operations on float32 factors ``a`` ``[G, R, fan_in]``, ``delta``
    ``[G, R, fan_out]``; returns the eigenvalues (the outputs that keep them alive)."""
    out = []
    kinds = plan.kinds
    if plan.route(rows) == "rows":
        if "grad" in kinds or "act" in kinds:
            a64 = tf.cast(a, COMPUTE_DTYPE)
            gram_a = tf.matmul(a64, a64, transpose_b=True)
            if "grad" in kinds:
                eig_a, vectors = tf.linalg.eigh(gram_a)
            else:
                eig_a = tf.linalg.eigvalsh(gram_a)
            out.append(eig_a)
        if "grad" in kinds or "delta" in kinds:
            d64 = tf.cast(delta, COMPUTE_DTYPE)
            gram_d = tf.matmul(d64, d64, transpose_b=True)
        if "delta" in kinds:
            out.append(tf.linalg.eigvalsh(gram_d))
        if "grad" in kinds:
            scale = tf.sqrt(tf.maximum(eig_a, 0.0))
            core = tf.matmul(vectors, tf.matmul(gram_d, vectors), transpose_a=True)
            out.append(tf.linalg.eigvalsh(scale[:, :, None] * core * scale[:, None, :]))
        return out
    for kind, factor in (("act", a), ("delta", delta)):
        if kind in kinds:
            exact = tf.cast(factor, COMPUTE_DTYPE)
            by_rows = rows <= factor.shape[-1]
            out.append(tf.linalg.eigvalsh(tf.matmul(exact, exact, transpose_a=not by_rows, transpose_b=by_rows)))
    if "grad" in kinds:
        gradient = tf.cast(tf.matmul(a, delta, transpose_a=True), COMPUTE_DTYPE)
        tall = plan.fan_in >= plan.fan_out
        out.append(tf.linalg.eigvalsh(tf.matmul(gradient, gradient, transpose_a=tall, transpose_b=not tall)))
    return out


def floor_function(plans, batch, groups, seed=0):
    """``(function, inputs)``: a `tf.function` doing the floor's operations of ``plans``
    (all kernels of a step), and the random float32 factors it is called with."""
    rng = np.random.default_rng(seed)
    inputs = []
    for plan in plans:
        rows = plan.rows(batch, groups)
        inputs.append((
            tf.constant(rng.normal(size=(groups, rows, plan.fan_in)).astype("float32")),
            tf.constant(rng.normal(size=(groups, rows, plan.fan_out)).astype("float32")),
        ))

    @tf.function
    def floor(factors):
        return [
            _kernel_floor(plan, a, delta, plan.rows(batch, groups))
            for plan, (a, delta) in zip(plans, factors)
        ]

    return floor, inputs


def call_seconds(function, inputs, calls=1):
    start = time.perf_counter()
    for _ in range(calls):
        out = function(inputs)
    tf.nest.flatten(out)[0].numpy()
    return time.perf_counter() - start


class FloorTimer:
    """Stands in for a model in `overhead.median_ms_per_step`: its ``fit`` calls the
    floor function once per step of the epoch (``len(x) // batch_size`` calls, at least
    2), each call finished before the callbacks' ``on_train_batch_end``."""

    def __init__(self, plans, batch, groups):
        self.function, self.inputs = floor_function(plans, batch, groups)

    def fit(self, x, y=None, batch_size=32, callbacks=(), **_):
        for callback in callbacks:
            callback.on_epoch_begin(0)
        for step in range(max(2, len(x) // batch_size)):
            call_seconds(self.function, self.inputs)
            for callback in callbacks:
                callback.on_train_batch_end(step)


def time_per_kernel(plans, batch, groups, repeats):
    """Median [min, max] ms of each kernel's floor alone (first call excluded)."""
    out = {}
    level = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")  # one tf.function per kernel: no retracing to warn about
    for plan in plans:
        function, inputs = floor_function([plan], batch, groups)
        call_seconds(function, inputs)
        times = [1e3 * call_seconds(function, inputs) for _ in range(repeats)]
        out[plan.path] = spread(times)
    tf.get_logger().setLevel(level)
    return out


def spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ------------------------------------------------------------------ counts and FLOPs

def _polymorphic_functions(function, seen=None, depth=0):
    """The `tf.function`s reachable from ``function`` through closures and wrappers."""
    seen = set() if seen is None else seen
    if id(function) in seen or depth > 8:
        return []
    seen.add(id(function))
    found = [function] if isinstance(function, tf.types.experimental.PolymorphicFunction) else []
    for cell in getattr(function, "__closure__", None) or ():
        try:
            found += _polymorphic_functions(cell.cell_contents, seen, depth + 1)
        except ValueError:  # an empty cell
            pass
    for attribute in ("__wrapped__", "recording", "_recording"):
        inner = getattr(function, attribute, None)
        if inner is not None and callable(inner):
            found += _polymorphic_functions(inner, seen, depth + 1)
    return found


def solver_ops_in_graph(model):
    """Eigen-solver ops (``SelfAdjointEigV2``, ``Svd``, ``Qr``) in the traced training
    step of ``model``: its ``one_step_on_data`` concrete function and every function in
    that graph's library, so both branches of run-time conditionals count. Returns the
    count by op type, the number with eigenvectors (``eigh``) and how many traces of the
    step were found (the counts are those of the largest)."""
    best, traces = {"by_type": {}, "total": 0, "eigh": 0}, 0
    for function in _polymorphic_functions(model.train_function):
        for concrete in function._list_all_concrete_functions():
            name = concrete.name.decode() if isinstance(concrete.name, bytes) else str(concrete.name)
            if "one_step_on_data" not in name:
                continue
            traces += 1
            graph_def = concrete.graph.as_graph_def()
            counts, with_vectors = collections.Counter(), 0
            for nodes in [graph_def.node] + [f.node_def for f in graph_def.library.function]:
                for node in nodes:
                    if node.op in SOLVER_OP_TYPES:
                        counts[node.op] += 1
                        with_vectors += node.op == "SelfAdjointEigV2" and node.attr["compute_v"].b
            if sum(counts.values()) > best["total"]:
                best = {"by_type": dict(counts), "total": sum(counts.values()), "eigh": int(with_vectors)}
    return {**best, "traces": traces}


def floor_summary(plans, batch, groups, rows_per_group=None):
    """FLOPs, solver calls and matrix sizes of the floor of one step.

    ``rows_per_group``: a function ``plan -> rows`` (default ``B/G × rows_per_sample``);
    XLA's masked layout has ``B × rows_per_sample`` rows per group.
    """
    ops = [op for plan in plans
           for op in floor_ops(plan, batch, groups, None if rows_per_group is None else rows_per_group(plan))]
    solver = [op for op in ops if op.is_solver]
    gemm64 = sum(op.flops for op in ops if op.op in ("gram64", "core64"))
    return {
        "gram_and_core_float64_flops": gemm64,
        "gradient_float32_flops": sum(op.flops for op in ops if op.op == "gradient32"),
        "eigen_float64_flops": sum(op.flops for op in solver),
        "solver_ops": len(solver),  # batched over the groups: one op per kernel and kind
        "solver_matrices": sum(op.groups for op in solver),  # one cuSOLVER call each in TF's GPU kernel
        "solver_sizes": sorted({op.shape[0] for op in solver}),
        "largest_eigen_problem": max((op.shape[0] for op in solver), default=0),
        "routes": {plan.path: plan.route(plan.rows(batch, groups) if rows_per_group is None else rows_per_group(plan))
                   for plan in plans},
    }


def attention_macs_per_sample(model, plans):
    """Multiply-adds per sample of attention scores and weighted values (no kernel of
    their own): ``heads·T_q·T_k·(key_dim + value_dim)`` per MultiHeadAttention layer,
    with ``T`` the rows per sample of its query and key projections."""
    by_layer = {plan.layer_id: plan for plan in plans}
    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, keras.layers.MultiHeadAttention):
            continue
        query, key = by_layer.get(id(layer._query_dense)), by_layer.get(id(layer._key_dense))
        if query is not None and key is not None:
            total += layer._num_heads * query.rows_per_sample * key.rows_per_sample * (layer._key_dim + layer._value_dim)
    return total


def plain_step_flops(plans, batch, extra_macs_per_sample=0):
    """≈ 3 × 2 × multiply-adds per sample × batch (forward, and backward twice as much):
    the tracked kernels' ``fan_in·fan_out`` per row (per output position of a
    convolution, per time step of a recurrent kernel) plus ``extra_macs_per_sample``."""
    macs = sum(p.fan_in * p.fan_out * p.rows_per_sample for p in plans) + extra_macs_per_sample
    return 3.0 * 2.0 * macs * batch


def gpu_estimates(summary, plain_flops):
    """Estimated ms per recorded step of the floor on each `GPU_CLASSES` entry.

    ``now``: float64 Gram matrices, TensorFlow's GPU eigen-solver kernel (one cuSOLVER
    ``syevd`` per matrix of a batch); ``float32_grams``: Gram matrices in float32,
    eigen-problems in float64; ``batched``: as ``now`` with one batched eigen-solver call
    per matrix size and step. Each as ``[low, high]`` for `SOLVER_LATENCY_MS`.
    """
    out = {}
    gemm64 = summary["gram_and_core_float64_flops"]
    gemm32 = summary["gradient_float32_flops"]
    eigen = summary["eigen_float64_flops"]
    for name, rate in GPU_CLASSES.items():
        def ms(flops, tflops):
            return 1e3 * flops / (tflops * 1e12)

        eigen_ms = ms(eigen, rate["float64_vector"])
        gemm_now = ms(gemm64, GEMM_EFFICIENCY * rate["float64_gemm"]) + ms(gemm32, GEMM_EFFICIENCY * rate["float32"])
        gemm_32 = ms(gemm64 + gemm32, GEMM_EFFICIENCY * rate["float32"])
        calls_now = summary["solver_matrices"]
        calls_batched = len(summary["solver_sizes"])
        out[name] = {
            "gemm_ms_float64": gemm_now,
            "gemm_ms_float32": gemm_32,
            "eigen_flops_ms": eigen_ms,
            "now": [gemm_now + eigen_ms + calls_now * lat for lat in SOLVER_LATENCY_MS],
            "float32_grams": [gemm_32 + eigen_ms + calls_now * lat for lat in SOLVER_LATENCY_MS],
            "batched": [gemm_now + eigen_ms + calls_batched * lat for lat in SOLVER_LATENCY_MS],
            "float32_grams_batched": [gemm_32 + eigen_ms + calls_batched * lat for lat in SOLVER_LATENCY_MS],
            "plain_flops_ms": ms(plain_flops, GEMM_EFFICIENCY * rate["float32"]),
        }
    return out


# ------------------------------------------------------------------ where the rest goes

CATEGORIES = (
    ("tf.data and eager ops (once per fit call)", (" ",)),
    ("eigen-solver", ("SelfAdjointEigV2", "Svd", "Qr")),
    ("matmul, Eigen (float64: Gram, core)", ("BatchMatMulV2", "BatchMatMulV3", "BatchMatMul", "MatMul")),
    ("oneDNN ops (float32 matmul, conv, ...)", ("_Mkl",)),
    ("gather/scatter/where", ("Gather", "Scatter", "Where", "OneHot", "Cumsum", "UnsortedSegment", "DynamicPartition")),
    ("cast", ("Cast",)),
    ("select/mask/compare", ("Select", "IsFinite", "All", "Any", "Logical", "Greater", "Less", "Equal", "NotEqual")),
    ("copy/slice/concat/pad/transpose", ("StridedSlice", "Slice", "Concat", "Pad", "Transpose", "Pack", "Unpack",
                                         "Tile", "Split", "Reverse", "Reshape", "Squeeze", "ExpandDims", "Fill",
                                         "BroadcastTo", "MirrorPad", "Identity", "Snapshot")),
    ("recurrent loop (While, TensorList)", ("While", "TensorList", "Enter", "Exit", "NextIteration", "LoopCond")),
    ("control flow (Switch/Merge)", ("Switch", "Merge", "_SwitchN", "ControlTrigger", "NoOp")),
    ("variables/state", ("Variable", "Assign", "ResourceApply", "ResourceScatter", "ResourceGather")),
    ("reductions", ("Sum", "Max", "Min", "Mean", "Prod", "ArgMax", "ArgMin")),
    ("asserts/checks", ("Assert", "CheckNumerics")),
)


def op_category(op_type):
    for name, prefixes in CATEGORIES:
        if any(op_type.startswith(p) for p in prefixes):
            return name
    return "elementwise and other"


def _self_times(events):
    """``[(name, self_ps)]`` for nested ``(start, end, name)`` events of one thread."""
    events = sorted(events, key=lambda e: (e[0], -e[1]))
    out, stack = [], []  # stack of [end, name, child_ps, start]
    for start, end, name in events:
        while stack and stack[-1][0] <= start:
            done = stack.pop()
            out.append((done[1], done[0] - done[3] - done[2]))
        if stack:
            stack[-1][2] += end - start
        stack.append([end, name, 0, start])
    while stack:
        done = stack.pop()
        out.append((done[1], done[0] - done[3] - done[2]))
    return out


def profile_step(model, data, batch, steps, warm=True):
    """One epoch of ``steps`` steps under TensorFlow's profiler (host tracing of every op
    kernel), after a warm epoch when ``warm``. Returns ``{"wall_ms_per_step",
    "op_ms_per_step": {type: self ms per step}, "op_calls_per_step": {type: calls per
    step}, "top_ops_ms_per_step": {node: self ms per step}}``: the op kernels' self times
    (nested ops minus what runs inside them), summed over the threads that run op kernels
    (they overlap on several cores)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    x, y, labels = data
    extra = {"groups": labels} if isinstance(model, ts.AutoSpecModel) else {}

    def epoch():
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, **extra)

    if warm:
        epoch()
    folder = tempfile.mkdtemp()
    options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=3, python_tracer_level=0, device_tracer_level=0)
    tf.profiler.experimental.start(folder, options=options)
    start = time.perf_counter()
    epoch()
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    shutil.rmtree(folder, ignore_errors=True)
    total_ps, calls, by_name = collections.Counter(), collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            events = []
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name or "__inference" in name:
                    continue  # op kernels are "node name:OpType"; not function-call wrappers
                begin = event.offset_ps
                events.append((begin, begin + event.duration_ps, name))
            for name, self_ps in _self_times(events):
                op_type = name.rsplit(":", 1)[1]
                total_ps[op_type] += self_ps
                calls[op_type] += 1
                by_name[name.rsplit(":", 1)[0].split("/", 1)[-1] + ":" + op_type] += self_ps
    return {
        "wall_ms_per_step": 1e3 * wall / steps,
        "op_ms_per_step": {t: ps * 1e-9 / steps for t, ps in total_ps.items()},
        "op_calls_per_step": {t: c / steps for t, c in calls.items()},
        "top_ops_ms_per_step": {n: ps * 1e-9 / steps for n, ps in by_name.most_common(40)},
    }


def profile_models(models, data, batch, steps, repeats):
    """`profile_step` of each of ``models`` (name -> model), ``repeats`` epochs each,
    alternating between them after one warm epoch each; the per-op-type medians over
    the epochs (and the walls' median, min and max)."""
    for model in models.values():
        profile_step(model, data, batch, steps, warm=False)  # traces; discarded
    epochs = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            epochs[name].append(profile_step(model, data, batch, steps, warm=False))
    out = {}
    for name, runs in epochs.items():
        types = set().union(*(r["op_ms_per_step"] for r in runs))
        names = set().union(*(r["top_ops_ms_per_step"] for r in runs))
        out[name] = {
            "wall_ms_per_step": statistics.median(r["wall_ms_per_step"] for r in runs),
            "wall_spread": spread([r["wall_ms_per_step"] for r in runs]),
            "op_ms_per_step": {t: statistics.median(r["op_ms_per_step"].get(t, 0.0) for r in runs) for t in types},
            "op_calls_per_step": {t: statistics.median(r["op_calls_per_step"].get(t, 0.0) for r in runs) for t in types},
            "top_ops_ms_per_step": dict(sorted(
                ((n, statistics.median(r["top_ops_ms_per_step"].get(n, 0.0) for r in runs)) for n in names),
                key=lambda kv: -kv[1])[:40]),
        }
    return out


def profile_difference(plain, autospec, floor=None):
    """AutoSpec's op self time minus plain's (and minus the floor's, when profiled alone
    the same way: the rest), per category and per op type, in ms per step."""
    floor = floor or {"op_ms_per_step": {}, "op_calls_per_step": {}, "wall_ms_per_step": 0.0}
    types = set(plain["op_ms_per_step"]) | set(autospec["op_ms_per_step"]) | set(floor["op_ms_per_step"])

    def by_category(times):
        out = collections.Counter()
        for t in types:
            out[op_category(t)] += times.get(t, 0.0)
        return out

    extra = {t: autospec["op_ms_per_step"].get(t, 0.0) - plain["op_ms_per_step"].get(t, 0.0) for t in types}
    rest = {t: extra[t] - floor["op_ms_per_step"].get(t, 0.0) for t in types}
    categories = {name: by_category(p["op_ms_per_step"]) for name, p in
                  (("plain", plain), ("autospec", autospec), ("floor", floor))}
    table = {
        category: {
            "plain": categories["plain"][category],
            "autospec": categories["autospec"][category],
            "extra": categories["autospec"][category] - categories["plain"][category],
            "floor": categories["floor"][category],
            "rest": categories["autospec"][category] - categories["plain"][category] - categories["floor"][category],
        }
        for category in sorted(set().union(*categories.values()), key=lambda c: -(categories["autospec"][c] - categories["plain"][c]))
    }
    return {
        "wall_ms_per_step": {"plain": plain["wall_ms_per_step"], "autospec": autospec["wall_ms_per_step"],
                             "floor": floor["wall_ms_per_step"]},
        "op_ms_per_step": {name: sum(p["op_ms_per_step"].values()) for name, p in
                           (("plain", plain), ("autospec", autospec), ("floor", floor))},
        "by_category": table,
        "top_extra_types": dict(sorted(extra.items(), key=lambda kv: -kv[1])[:20]),
        "top_rest_types": dict(sorted(rest.items(), key=lambda kv: -kv[1])[:20]),
        "solver_calls_per_step": sum(autospec["op_calls_per_step"].get(t, 0.0) for t in SOLVER_OP_TYPES),
        "calls_per_step": {name: sum(p["op_calls_per_step"].values()) for name, p in
                           (("plain", plain), ("autospec", autospec), ("floor", floor))},
        "raw": {"plain": plain, "autospec": autospec, "floor": floor},
    }


# ------------------------------------------------------------------ the report

TARGET_OVER_FLOOR = 1.3  # issue 16: AutoSpec − plain ≤ 1.3 × floor


def analysis(plans, probe, batch, groups, timed, per_kernel_ms=None, xla_rows=False):
    """The floor report of one architecture.

    Args:
        plans, probe: from `kernel_plans`.
        timed: `overhead.run`'s results, with ``"plain"``, ``"autospec"`` and ``"floor"``.
        per_kernel_ms: from `time_per_kernel`, or ``None``.
        xla_rows: also give the FLOPs and GPU estimates for XLA's masked layout
            (``B × rows_per_sample`` rows per group).
    """
    plain, autospec, floor = timed["plain"], timed["autospec"], timed["floor"]
    paired = [
        (a - p) / f for a, p, f in zip(autospec["samples_ms"], plain["samples_ms"], floor["samples_ms"])
    ]
    summary = floor_summary(plans, batch, groups)
    extra_macs = attention_macs_per_sample(probe, plans)
    plain_flops = plain_step_flops(plans, batch, extra_macs)
    out = {
        "kernels": [dict(plan.as_dict(), route=plan.route(plan.rows(batch, groups)), rows_per_group=plan.rows(batch, groups))
                    for plan in plans],
        "plain_ms": plain["ms_per_step"],
        "autospec_ms": autospec["ms_per_step"],
        "floor_ms": floor["ms_per_step"],
        "floor_ms_min": floor["ms_min"],
        "floor_ms_max": floor["ms_max"],
        "autospec_minus_plain_ms": autospec["ms_per_step"] - plain["ms_per_step"],
        "over_floor": (autospec["ms_per_step"] - plain["ms_per_step"]) / floor["ms_per_step"],
        "over_floor_per_repeat": spread(paired),
        "rest_ms": autospec["ms_per_step"] - plain["ms_per_step"] - floor["ms_per_step"],
        "target_over_floor_met": (autospec["ms_per_step"] - plain["ms_per_step"]) <= TARGET_OVER_FLOOR * floor["ms_per_step"],
        "autospec_over_plain": autospec["ms_per_step"] / plain["ms_per_step"],
        "floor_per_kernel_ms": per_kernel_ms,
        "solver_calls_per_step": summary["solver_ops"],
        "solver_matrices_per_step": summary["solver_matrices"],
        "solver_ops_in_graph": solver_ops_in_graph(probe),
        "flops": summary,
        "plain_step_flops": plain_flops,
        "attention_macs_per_sample": extra_macs,
        "gpu": gpu_estimates(summary, plain_flops),
        "assumptions": {
            "eigvalsh_flops_per_n3": EIGVALSH_FLOPS_PER_N3, "eigh_flops_per_n3": EIGH_FLOPS_PER_N3,
            "gpu_tflops": GPU_CLASSES, "gemm_efficiency": GEMM_EFFICIENCY, "solver_latency_ms": SOLVER_LATENCY_MS,
        },
    }
    if xla_rows:
        masked = floor_summary(plans, batch, groups, rows_per_group=lambda plan: batch * plan.rows_per_sample)
        out["flops_xla_masked"] = masked
        out["gpu_xla_masked"] = gpu_estimates(masked, plain_flops)
    return out


# ------------------------------------------------------------------ markdown for docs/benchmarks.md

NAMES = {
    "mlp": "MLP 784-512-256-10", "cnn": "CNN (Conv32-pool-Conv64-pool-Dense128-10)", "lstm": "LSTM(128) × 50 steps",
    "transformer": "Transformer (2 MHA blocks)", "cnn1d": "1D CNN over ICA time courses",
}


def markdown(runs):
    """The docs' tables from the JSON files of `overhead.py --json` runs (same settings):
    per run the medians [min–max] over its repeats; pooled over the runs, the per-repeat
    ratios ``(AutoSpec − plain) / floor`` of the epochs timed one after the other, and the
    ratio from each run's fastest epochs."""
    lines = ["| model | plain ms/step | AutoSpec ms/step | floor ms/step | (AutoSpec − plain) / floor, "
             "from the medians | from the fastest epochs | per repeat, pooled: median [min–max] | "
             "AutoSpec / plain | eigen-solver ops run per step (matrices) | in the graph |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model in runs[0]["floor"]:
        cells = {key: [] for key in ("plain", "autospec", "floor", "over", "fastest")}
        pooled, ratios = [], []
        for run in runs:
            f = run["floor"].get(model)
            if f is None:
                continue
            r = run["results"][model]
            cells["plain"].append(f"{f['plain_ms']:.1f} [{r['plain']['ms_min']:.1f}–{r['plain']['ms_max']:.1f}]")
            cells["autospec"].append(f"{f['autospec_ms']:.1f} [{r['autospec']['ms_min']:.1f}–{r['autospec']['ms_max']:.1f}]")
            cells["floor"].append(f"{f['floor_ms']:.1f} [{f['floor_ms_min']:.1f}–{f['floor_ms_max']:.1f}]")
            cells["over"].append(f"{f['over_floor']:.2f}")
            cells["fastest"].append(
                f"{(r['autospec']['ms_min'] - r['plain']['ms_min']) / r['floor']['ms_min']:.2f}")
            pooled += [(a - p) / fl for a, p, fl in zip(
                r["autospec"]["samples_ms"], r["plain"]["samples_ms"], r["floor"]["samples_ms"])]
            ratios.append(f"{f['autospec_over_plain']:.2f}×")
        last = runs[0]["floor"][model]
        graph = last["solver_ops_in_graph"]
        p = spread(pooled)
        lines.append(
            f"| {NAMES.get(model, model)} | " + " | ".join("; ".join(v) for v in cells.values())
            + f" | {p['median']:.2f} [{p['min']:.2f}–{p['max']:.2f}] | {'; '.join(ratios)}"
            + f" | {last['solver_calls_per_step']} ({last['solver_matrices_per_step']}) | {graph['total']} |"
        )
    lines += ["", "| model | floor GFLOP/step: float64 Gram + core / float32 group gradients / eigen | "
              "eigen-problem sizes | plain step GFLOP | H100: now | H100: batched | RTX 4090: now | "
              "RTX 4090: float32 Grams | RTX 4090: batched | RTX 4090: both |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for model, f in runs[0]["floor"].items():
        s, gpu = f["flops"], f["gpu"]
        h100, rtx = (gpu[k] for k in GPU_CLASSES)

        def rng(values):
            return f"{values[0]:.1f}–{values[1]:.1f}"

        lines.append(
            f"| {NAMES.get(model, model)} | {s['gram_and_core_float64_flops'] / 1e9:.2f} / "
            f"{s['gradient_float32_flops'] / 1e9:.2f} / {s['eigen_float64_flops'] / 1e9:.2f} | "
            f"{', '.join(map(str, s['solver_sizes']))} | {f['plain_step_flops'] / 1e9:.2f} | {rng(h100['now'])} | "
            f"{rng(h100['batched'])} | {rng(rtx['now'])} | {rng(rtx['float32_grams'])} | {rng(rtx['batched'])} | "
            f"{rng(rtx['float32_grams_batched'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    print(markdown([json.load(open(path)) for path in sys.argv[1:]]))
