"""Simulated datasets with a documented, controllable group difference (no download).

* `simulated_fmri`: SimTB-style ICA time courses. Per subject, ``n_components`` latent
  neural signals are drawn as AR(1) processes (coefficient 0.7) whose cross-component
  correlation is the group's functional network connectivity (FNC): components are split
  into ``n_domains`` domains, correlation ``within`` inside a domain and 0 between domains.
  In the second group (40 % of the subjects by default) the correlation between the first
  two domains is raised by ``effect_size`` (0 gives a dataset with no group effect); in the
  second level of an independent, balanced condition the correlation between the third
  and fourth domains is raised by ``condition_effect``. ``conflict`` plants a gradient
  conflict: the condition raises the correlation between the fifth and sixth domains by
  ``conflict`` in the first group and lowers it by as much in the second, so that the two
  groups pull the weights that read those connections opposite ways (0, the default,
  plants none). Each signal is convolved with a
  canonical double-gamma HRF (TR = 2 s), scaled by a subject-specific amplitude
  (lognormal, σ 0.2) and given Gaussian noise (``noise`` × its standard deviation).
  Target: the condition (or the group).
* `sinusoids`: sequences ``a·sin(2π f t + φ) + noise`` whose frequency, phase or
  amplitude differs between groups; targets for next-step regression or classification.
* `random_groups`: group labels assigned at random, a null control for any dataset.
"""

import dataclasses
import math
import numbers

import numpy as np


@dataclasses.dataclass(frozen=True)
class GroupedData:
    """A dataset ready for ``model.fit(x, y, groups=labels)``.

    Attributes:
        x: inputs, ``[samples, ...]`` float32.
        y: targets.
        labels: int32 group index per sample (``-1`` for none).
        group_names: names of the groups, in label order.
        info: how the data were made (parameters, seed).
    """

    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray
    group_names: tuple
    info: dict


def _hrf(tr=2.0, length=32.0):
    """Canonical double-gamma haemodynamic response (peak 6 s, undershoot 16 s), sampled every TR."""
    t = np.arange(0.0, length, tr)
    peak = t**5 * np.exp(-t) / math.gamma(6)
    undershoot = t**15 * np.exp(-t) / math.gamma(16)
    response = peak - undershoot / 6.0
    return response / response.sum()


def _between(domain, first, second):
    """bool ``[C, C]``: the pairs of components of two domains (both orders)."""
    return ((domain[:, None] == first) & (domain[None, :] == second)) | (
        (domain[:, None] == second) & (domain[None, :] == first)
    )


def _fnc(n_components, n_domains, within, group_effect, condition_effect, pattern, conflict_effect):
    """The FNC of one cell of the design: ``group_effect`` added between the first two
    domains (``pattern="domains"``) or to one edge between the first and the last
    component (``"one_edge"``, components of two domains that are otherwise uncorrelated);
    ``condition_effect`` added between the third and fourth domains; ``conflict_effect``
    (signed: the groups' conditions move it opposite ways) between the fifth and sixth."""
    domain = np.arange(n_components) * n_domains // n_components
    correlation = np.where(domain[:, None] == domain[None, :], within, 0.0)
    if pattern == "domains":
        correlation = correlation + group_effect * _between(domain, 0, 1)
    else:
        correlation[0, -1] = correlation[-1, 0] = correlation[0, -1] + group_effect
    correlation = correlation + condition_effect * _between(domain, 2, 3)
    correlation = correlation + conflict_effect * _between(domain, 4, 5)
    np.fill_diagonal(correlation, 1.0)
    if np.linalg.eigvalsh(correlation)[0] <= 0:
        raise ValueError(
            f"effect_size={group_effect}, condition_effect={condition_effect}, conflict={abs(conflict_effect)} with "
            f"within={within} make the connectivity matrix not positive definite; use smaller effects."
        )
    return correlation


TARGETS = ("condition", "group")
EFFECT_PATTERNS = ("domains", "one_edge")


def simulated_fmri(n_subjects=200, n_components=53, n_timepoints=150, group_names=("HC", "SZ"),
                   effect_size=0.3, group_fraction=0.4, target="condition", condition_effect=0.3,
                   effect_pattern="domains", n_domains=7, within=0.4, noise=0.5, conflict=0.0, seed=0):
    """SimTB-style ICA time courses of two groups whose FNC differs by ``effect_size``.

    Every subject has a group (``group_names``; a fraction ``group_fraction`` in the second)
    and, independently, a condition (two levels, balanced within each group, e.g. a task
    or a trait) that changes other connections. The model predicts the condition by
    default, so that how it learns can be compared between the groups without the groups
    being what it is taught to separate. With ``conflict`` the condition also changes the
    connections between the fifth and sixth domains, in opposite directions in the two
    groups: a gradient conflict, which shows as a negative cosine between the groups'
    gradients in the layers that read those connections (the MLP's first layer on FNC
    features).

    Args:
        n_subjects: subjects.
        n_components: ICA components (53, as in common fMRI ICA templates).
        n_timepoints: volumes per subject (TR = 2 s).
        group_names: names of the two groups; the second carries the effect.
        effect_size: added correlation in the second group (0 gives a dataset with no
            group effect), between the first two domains or on one edge (``effect_pattern``).
        group_fraction: fraction of the subjects in the second group (0.4: 60/40).
        target: ``"condition"`` (default) or ``"group"``: what ``y`` holds.
        condition_effect: added correlation between the third and fourth domains in the
            second condition.
        effect_pattern: ``"domains"`` (every edge between the first two domains) or
            ``"one_edge"`` (the edge between the first and the last component).
        n_domains: functional domains the components fall into.
        within: correlation between components of one domain.
        noise: Gaussian noise standard deviation relative to the signal's.
        conflict: correlation that the second condition adds between the fifth and sixth
            domains in the first group and removes in the second (0, the default: none;
            at most about 0.48 with ``within=0.4``). Needs ``n_domains >= 6`` and
            ``target="condition"``.
        seed: random seed; the same seed gives the same data.

    Returns:
        `GroupedData` with ``x`` float32 ``[subjects, timepoints, components]`` (each time
        course z-scored), ``labels`` the group index and ``y`` the condition (or the group).
    """
    if len(group_names) != 2:
        raise ValueError(f"simulated_fmri makes two groups; received {group_names}.")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}; received {target!r}.")
    if effect_pattern not in EFFECT_PATTERNS:
        raise ValueError(f"effect_pattern must be one of {EFFECT_PATTERNS}; received {effect_pattern!r}.")
    if not 0 < group_fraction < 1:
        raise ValueError(f"group_fraction must be between 0 and 1; received {group_fraction}.")
    if isinstance(conflict, bool) or not isinstance(conflict, numbers.Real) or not 0 <= conflict < 1:
        raise ValueError(f"conflict must be a number from 0 (no conflict, the default) up to below 1, the correlation "
                         f"the condition adds in one group and removes in the other; received {conflict!r}.")
    if conflict and not 6 <= n_domains <= n_components:
        raise ValueError(f"conflict acts between the fifth and sixth domains, which n_domains={n_domains} and "
                         f"n_components={n_components} do not make; use n_domains >= 6 (and n_components >= "
                         "n_domains), or conflict=0.")
    if conflict and target != "condition":
        raise ValueError(f"conflict makes the condition act with opposite signs in the two groups, which shows only "
                         f"when the model predicts the condition; with target={target!r} use conflict=0, or "
                         "target='condition'.")
    rng = np.random.default_rng(seed)
    labels = (np.arange(n_subjects) >= round(n_subjects * (1 - group_fraction))).astype(np.int32)
    rng.shuffle(labels)
    condition = np.empty(n_subjects, dtype=np.int32)
    for group in (0, 1):
        members = np.flatnonzero(labels == group)
        condition[members] = rng.permutation(np.arange(len(members)) % 2)
    factors = {
        (group, level): np.linalg.cholesky(_fnc(n_components, n_domains, within, effect_size * group,
                                                condition_effect * level, effect_pattern,
                                                conflict * level * (1 - 2 * group)))
        for group in (0, 1) for level in (0, 1)
    }
    hrf = _hrf()
    burn_in = 20
    x = np.empty((n_subjects, n_timepoints, n_components), dtype=np.float32)
    for subject, (group, level) in enumerate(zip(labels, condition)):
        innovations = rng.normal(size=(n_timepoints + burn_in, n_components)) @ factors[group, level].T
        neural = np.empty_like(innovations)
        neural[0] = innovations[0]
        for t in range(1, len(innovations)):
            neural[t] = 0.7 * neural[t - 1] + math.sqrt(1 - 0.49) * innovations[t]
        bold = np.stack([np.convolve(neural[:, c], hrf)[: len(neural)] for c in range(n_components)], axis=1)
        bold = bold[burn_in:] * rng.lognormal(0.0, 0.2, size=n_components)
        bold = bold + noise * bold.std(axis=0) * rng.normal(size=bold.shape)
        x[subject] = (bold - bold.mean(axis=0)) / bold.std(axis=0)
    info = dict(dataset="simulated_fmri", kind="timecourses", n_components=n_components, n_timepoints=n_timepoints,
                effect_size=effect_size, group_fraction=group_fraction, condition_effect=condition_effect,
                effect_pattern=effect_pattern, target=target, n_domains=n_domains, within=within, noise=noise,
                conflict=conflict, seed=seed, tr=2.0)
    y = condition if target == "condition" else labels.copy()
    return GroupedData(x, y, labels, tuple(group_names), info)


def sinusoids(n_sequences=512, length=50, group_names=("low", "high"), differ="frequency", task="next_step",
              noise=0.1, seed=0):
    """Noisy sinusoids whose frequency, phase or amplitude depends on the group.

    Args:
        n_sequences: sequences, alternating between the two groups (shuffled).
        length: time steps per sequence.
        group_names: the two groups.
        differ: ``"frequency"`` (0.05 vs 0.10 cycles per step), ``"phase"`` (0 vs π/2) or
            ``"amplitude"`` (1 vs 2); the other two are drawn alike for both groups.
        task: ``"next_step"`` (``y`` = the sequence shifted by one step, ``x`` the first
            ``length - 1`` steps) or ``"classification"`` (``y`` = the group).
        noise: Gaussian noise standard deviation.
        seed: random seed.

    Returns:
        `GroupedData` with ``x`` float32 ``[sequences, steps, 1]``.
    """
    choices = {"frequency": ((0.05, 0.10), None), "phase": (None, (0.0, math.pi / 2)), "amplitude": (None, None)}
    if differ not in choices:
        raise ValueError(f"differ must be one of {sorted(choices)}; received {differ!r}.")
    if task not in ("next_step", "classification"):
        raise ValueError(f"task must be 'next_step' or 'classification'; received {task!r}.")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_sequences) % 2).astype(np.int32)
    t = np.arange(length)
    frequency = np.where(labels == 1, 0.10, 0.05) if differ == "frequency" else rng.uniform(0.05, 0.10, n_sequences)
    phase = np.where(labels == 1, math.pi / 2, 0.0) if differ == "phase" else rng.uniform(0, 2 * math.pi, n_sequences)
    amplitude = np.where(labels == 1, 2.0, 1.0) if differ == "amplitude" else np.ones(n_sequences)
    waves = amplitude[:, None] * np.sin(2 * math.pi * frequency[:, None] * t[None] + phase[:, None])
    waves = (waves + noise * rng.normal(size=waves.shape)).astype(np.float32)[..., None]
    info = dict(dataset="sinusoids", differ=differ, task=task, length=length, noise=noise, seed=seed)
    if task == "next_step":
        return GroupedData(waves[:, :-1], waves[:, 1:], labels, tuple(group_names), info)
    return GroupedData(waves, labels.copy(), labels, tuple(group_names), info)


def random_groups(n_samples, group_names=("A", "B"), seed=0):
    """Group labels drawn uniformly at random: a null control (no true group difference)."""
    return np.random.default_rng(seed).integers(0, len(group_names), size=n_samples).astype(np.int32)
