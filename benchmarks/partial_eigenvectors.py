"""Can the overlap's top-k eigenvectors of the rows route's cores be had for less than
`tf.linalg.eigh`'s full decomposition? Times, on the CPU, float64 ``[4, n, n]`` cores with
singular values σ_i ∝ 1/i (eigenvalues ∝ i^-2; the MLP benchmark's step has four 64 × 64
cores): eigenvalues only (what the spectra need), all eigenvectors (what the overlap uses
now), and eigenvalues plus a Rayleigh–Ritz partial solver on ``k + 5`` vectors after
``q`` power iterations, with its subspace error bound (residual norm over the gap between
the k-th Ritz value and the exact (k+1)-th eigenvalue, Davis–Kahan) for each core.
docs/benchmarks.md, "Gradient geometry: cost".

Usage:
    python benchmarks/partial_eigenvectors.py [--n 64] [--k 3] [--iterations 2 6]
"""

import argparse
import statistics
import time

import numpy as np
import tensorflow as tf


def cores(count, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        basis, _ = np.linalg.qr(rng.normal(size=(n, n)))
        out.append((basis * (100.0 / np.arange(1, n + 1) ** 2)) @ basis.T)
    return tf.constant(np.array(out))


def rayleigh_ritz(matrices, k, iterations, seed=0):
    """``tf.function`` returning the top-``k`` Ritz vectors and each core's error bound."""
    start = tf.constant(np.random.default_rng(seed).normal(size=(1, matrices.shape[-1], k + 5)))

    @tf.function
    def solve():
        eigenvalues = tf.linalg.eigvalsh(matrices)
        block = tf.matmul(matrices, tf.tile(start, [matrices.shape[0], 1, 1]))
        for _ in range(iterations):
            block = tf.matmul(matrices, tf.linalg.qr(block)[0])
        basis = tf.linalg.qr(block)[0]
        ritz_values, ritz_vectors = tf.linalg.eigh(tf.matmul(basis, tf.matmul(matrices, basis), transpose_a=True))
        top = tf.matmul(basis, ritz_vectors[:, :, -k:])
        residual = tf.matmul(matrices, top) - top * ritz_values[:, None, -k:]
        return top, tf.norm(residual, axis=[1, 2]) / (ritz_values[:, -k] - eigenvalues[:, -k - 1])

    return solve


def median_ms(function, calls=200, repeats=9):
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--iterations", type=int, nargs="+", default=[2, 6])
    args = parser.parse_args()
    matrices = cores(4, args.n)
    print(f"[4, {args.n}, {args.n}] float64, {tf.config.threading.get_intra_op_parallelism_threads() or 'all'} threads")
    print(f"eigenvalues only        {median_ms(tf.function(lambda: tf.linalg.eigvalsh(matrices))):.3f} ms")
    print(f"all eigenvectors        {median_ms(tf.function(lambda: tf.linalg.eigh(matrices))):.3f} ms")
    for iterations in args.iterations:
        solve = rayleigh_ritz(matrices, args.k, iterations)
        bounds = solve()[1].numpy()
        print(f"values + Rayleigh-Ritz, {iterations} iterations {median_ms(solve):.3f} ms; "
              f"subspace error bound {bounds.min():.1e}-{bounds.max():.1e}")


if __name__ == "__main__":
    main()
