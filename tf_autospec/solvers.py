"""The eigen-problems of a recorded step, solved together: one solver call per matrix size.

Each kernel's spectra need a few symmetric eigen-problems (its groups' Gram matrices, the
rows route's core), some of which depend on others. The computations are written as
generators that yield the eigen-problems they need (`eigh`, `eigvalsh`) and receive the
solutions. `run` advances the computations of all kernels in lockstep: at each round it
stacks every pending problem by matrix size, dtype and whether eigenvectors are wanted,
and makes one solver call per stack. A step of the MLP benchmark makes 5 solver calls
instead of 9, a Transformer's 7 instead of 42 (`docs/benchmarks.md`). Each matrix of a
stack is decomposed on its own, so the values are those of one call per matrix.

On a GPU the number of calls, not their arithmetic, sets the cost of these small
problems (one cuSOLVER call per matrix); on the CPU the stacked call spreads the
matrices over the threads and saves the per-call overhead.

Example:

```python
def spectrum(gram):
    eigenvalues = yield solvers.eigvalsh(gram)
    return tf.sqrt(tf.maximum(eigenvalues, 0.0))

first, second = solvers.run([spectrum(gram_1), spectrum(gram_2)])  # one call if same size
```
"""

import inspect

import tensorflow as tf


class Eigen:
    """An eigen-problem: symmetric matrices ``[B, n, n]``; its solution is what
    `tf.linalg.eigh` returns (``vectors``) or `tf.linalg.eigvalsh` returns.

    Args:
        matrices: float ``[B, n, n]``.
        vectors: whether the eigenvectors are wanted.
        size: where ``n`` is only known at run time (rows of the largest group), a
            hashable that is equal for exactly the problems whose ``n`` is equal at run
            time; ``None``: the static ``n``, or solved alone.
    """

    __slots__ = ("matrices", "vectors", "size")

    def __init__(self, matrices, vectors, size=None):
        self.matrices = matrices
        self.vectors = vectors
        self.size = size

    @property
    def stack_key(self):
        """What problems must share to be solved in one call, or ``None`` (solved alone)."""
        shape = self.matrices.shape
        size = shape[-1] if shape[-1] is not None else self.size
        if shape.rank != 3 or shape[0] is None or size is None:
            return None
        return size, self.matrices.dtype, self.vectors


def eigh(matrices, size=None):
    """The problem whose solution is ``tf.linalg.eigh(matrices)``: ``(eigenvalues,
    eigenvectors)``; ``size`` as for `Eigen`."""
    return Eigen(matrices, vectors=True, size=size)


def eigvalsh(matrices, size=None):
    """The problem whose solution is ``tf.linalg.eigvalsh(matrices)``; ``size`` as for `Eigen`."""
    return Eigen(matrices, vectors=False, size=size)


def solve(problems):
    """Solutions of ``problems`` (a list of `Eigen`), with one solver call per
    (size, dtype, vectors)."""
    solutions = [None] * len(problems)
    stacks = {}
    for index, problem in enumerate(problems):
        key = problem.stack_key
        stacks.setdefault(key if key is not None else ("alone", index), []).append(index)
    for members in stacks.values():
        matrices = [problems[i].matrices for i in members]
        stacked = matrices[0] if len(matrices) == 1 else tf.concat(matrices, axis=0)
        solved = tf.linalg.eigh(stacked) if problems[members[0]].vectors else (tf.linalg.eigvalsh(stacked),)
        if len(members) > 1:
            sizes = [m.shape[0] for m in matrices]
            solved = tuple(tf.split(part, sizes, axis=0) for part in solved)
            for position, index in enumerate(members):
                solutions[index] = tuple(part[position] for part in solved)
        else:
            solutions[members[0]] = solved
    return [s if problem.vectors else s[0] for s, problem in zip(solutions, problems)]


def lockstep(computations):
    """A computation (generator) that runs ``computations`` side by side: at each round it
    yields the list of every pending problem of theirs, and it returns their results.

    Args:
        computations: generators that yield an `Eigen` (and receive its solution) or a
            list or tuple of them (and receive the list of solutions); anything else is
            taken as an already finished computation's result.

    Returns:
        The list of the computations' return values, in order.
    """
    results = [None] * len(computations)
    pending = {}  # index -> (generator, what it yielded)

    def advance(index, generator, answer):
        try:
            pending[index] = (generator, generator.send(answer))
        except StopIteration as stop:
            pending.pop(index, None)
            results[index] = stop.value

    for index, computation in enumerate(computations):
        if inspect.isgenerator(computation):
            advance(index, computation, None)
        else:
            results[index] = computation
    while pending:
        asked = {index: _as_list(request) for index, (_, request) in pending.items()}
        solutions = yield [problem for problems in asked.values() for problem in problems]
        start = 0
        for index, problems in asked.items():
            answer = solutions[start:start + len(problems)]
            start += len(problems)
            generator, request = pending[index]
            advance(index, generator, answer[0] if isinstance(request, Eigen) else answer)
    return results


def run(computations):
    """The results of ``computations`` (as for `lockstep`), their problems solved round by
    round with one solver call per matrix size (`solve`)."""
    driver = lockstep(list(computations))
    try:
        problems = next(driver)
        while True:
            problems = driver.send(solve(problems))
    except StopIteration as stop:
        return stop.value


def solution(problem):
    """The computation (generator) of one problem: ``values = yield from solvers.solution(eigvalsh(m))``."""
    return (yield problem)


def solutions(problems):
    """The computation (generator) of a dict name -> `Eigen`; returns name -> solution."""
    solved = yield list(problems.values())
    return dict(zip(problems, solved))


def result(computation):
    """A computation (generator) that finishes ``computation``, whether it is a generator
    or already a value: ``value = yield from solvers.result(x)``."""
    if inspect.isgenerator(computation):
        return (yield from computation)
    return computation


def _as_list(request):
    if isinstance(request, Eigen):
        return [request]
    if isinstance(request, (list, tuple)) and all(isinstance(p, Eigen) for p in request):
        return list(request)
    raise TypeError(f"A spectra computation yielded {request!r}; it must yield an Eigen problem or a list of them.")
