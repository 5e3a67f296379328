"""The eigen-problems of a step solved together (`tf_autospec.solvers`): the same values
as one call per problem (checked against NumPy), one solver call per matrix size."""

import numpy as np
import pytest
import tensorflow as tf

import tf_autospec as ts
from tf_autospec import solvers


def _symmetric(rng, batch, n):
    x = rng.normal(size=(batch, n, 2 * n))
    return x @ np.transpose(x, (0, 2, 1))


def _solver_ops(function, *args):
    graph = function.get_concrete_function(*args).graph
    return [op for op in graph.get_operations() if op.type == "SelfAdjointEigV2"]


def test_lockstep_solves_each_size_once_and_matches_numpy():
    rng = np.random.default_rng(0)
    small, large, other = _symmetric(rng, 2, 4), _symmetric(rng, 3, 6), _symmetric(rng, 2, 6)

    def spectrum(matrices):  # two rounds: values, then the vectors of the same matrices
        values = yield solvers.eigvalsh(matrices)
        both = yield [solvers.eigh(matrices), solvers.eigvalsh(matrices)]
        return values, both

    @tf.function
    def together(a, b, c):
        return solvers.run([spectrum(a), spectrum(b), spectrum(c), "finished"])

    results = together(small, large, other)
    assert results[3] == "finished"
    for matrices, (values, ((eigenvalues, vectors), again)) in zip((small, large, other), results[:3]):
        expected = np.linalg.eigvalsh(matrices)
        np.testing.assert_allclose(values.numpy(), expected, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(again.numpy(), expected, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(eigenvalues.numpy(), expected, rtol=1e-10, atol=1e-9)
        rebuilt = vectors.numpy() @ (eigenvalues.numpy()[..., None] * np.transpose(vectors.numpy(), (0, 2, 1)))
        np.testing.assert_allclose(rebuilt, matrices, rtol=1e-9, atol=1e-8)
    # round 1: values of n=4, values of n=6 (two problems); round 2: per size, one eigh and one eigvalsh
    assert len(_solver_ops(together, small, large, other)) == 2 + 4


def test_sizes_known_only_at_run_time_are_stacked_by_their_key():
    rng = np.random.default_rng(1)
    first, second = _symmetric(rng, 2, 5), _symmetric(rng, 2, 5)
    spec = tf.TensorSpec([2, None, None], tf.float64)

    @tf.function(input_signature=[spec, spec])
    def keyed(a, b):
        return solvers.run([solvers.solution(solvers.eigvalsh(a, "rows")),
                            solvers.solution(solvers.eigvalsh(b, "rows"))])

    @tf.function(input_signature=[spec, spec])
    def unkeyed(a, b):
        return solvers.run([solvers.solution(solvers.eigvalsh(a)), solvers.solution(solvers.eigvalsh(b))])

    for function, calls in ((keyed, 1), (unkeyed, 2)):
        values = function(first, second)
        np.testing.assert_allclose(values[0].numpy(), np.linalg.eigvalsh(first), rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(values[1].numpy(), np.linalg.eigvalsh(second), rtol=1e-10, atol=1e-9)
        assert len(_solver_ops(function, spec, spec)) == calls


def test_a_computation_yielding_something_else_is_refused():
    def wrong():
        yield tf.zeros([1, 2, 2])

    with pytest.raises(TypeError, match="must yield an Eigen problem"):
        solvers.run([wrong()])


def test_a_model_step_makes_one_solver_call_per_size_and_round(monkeypatch):
    """MLP 20-16-12-3, batch 8, 2 groups: the two hidden kernels are on the rows route
    (R ≤ 8 < fan), the output kernel on the fan route. Round 1: eigh of both rows
    routes' K_A, eigvalsh of their K_Δ and of the output's row Gram matrix (all R × R),
    the output's 3 × 3 column Gram matrix of Δ and its gradient's (eigh, for the
    overlap); round 2: the cores' eigh. 5 solver calls per step, where one per kernel,
    kind and round made 9."""
    import keras

    calls = []
    for name in ("eigh", "eigvalsh"):
        solver = getattr(tf.linalg, name)
        monkeypatch.setattr(tf.linalg, name, lambda m, _solver=solver, _name=name: calls.append(_name) or _solver(m))
    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(12, activation="tanh")(keras.layers.Dense(16, activation="tanh")(inputs))
    model = ts.AutoSpecModel(inputs, keras.layers.Dense(3)(hidden), groups=["a", "b"])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 20)).astype("float32"), rng.integers(0, 3, 8)
    model.fit(x, y, groups=np.array([0, 1] * 4), batch_size=8, epochs=1, verbose=0)  # one step: one trace
    assert sorted(calls) == ["eigh"] * 3 + ["eigvalsh"] * 2
    spectra = model.last_spectra
    for kernel in spectra.kernels:
        assert np.isfinite(spectra.spectrum(kernel, "grad", "a")[0]), kernel
