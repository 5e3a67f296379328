"""Scalar summaries of singular-value spectra, along the last axis (NaN entries ignored).

For the singular values σ_1 ≥ σ_2 ≥ … of one spectrum:

| name | formula |
|---|---|
| ``spectral_norm`` | σ_1 |
| ``nuclear_norm`` | Σ σ_i |
| ``frobenius_norm`` | (Σ σ_i²)^½ |
| ``effective_rank`` | exp(−Σ p_i log p_i), p_i = σ_i / Σ σ_j (Roy & Vetterli, 2007): 1 for rank one, n for n equal values |
| ``stable_rank`` | Σ σ_i² / σ_1² |
| ``top_energy`` | Σ_{i≤k} σ_i² / Σ σ_i², the fraction of energy in the top ``k`` (default 1) |
| ``sigma_<i>`` | σ_i, the i-th singular value (1-based), e.g. ``sigma_1`` |

A spectrum with nothing recorded (all NaN) or only zeros gives NaN for ratios and NaN for
the norms of an all-NaN spectrum.
"""

import re

import numpy as np

NAMES = (
    "spectral_norm",
    "nuclear_norm",
    "frobenius_norm",
    "effective_rank",
    "stable_rank",
    "top_energy",
)


def _parts(values):
    values = np.asarray(values, dtype=np.float64)
    recorded = ~np.all(np.isnan(values), axis=-1) if values.shape[-1] else np.zeros(values.shape[:-1], bool)
    return np.where(np.isfinite(values), values, 0.0), recorded


def _ratio(numerator, denominator, recorded):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(recorded & (denominator > 0), numerator / denominator, np.nan)


def spectral_norm(values):
    clean, recorded = _parts(values)
    return np.where(recorded, clean.max(axis=-1, initial=0.0), np.nan)


def top(values):
    """Alias of `spectral_norm` (σ_1)."""
    return spectral_norm(values)


def nuclear_norm(values):
    clean, recorded = _parts(values)
    return np.where(recorded, clean.sum(axis=-1), np.nan)


def frobenius_norm(values):
    clean, recorded = _parts(values)
    return np.where(recorded, np.sqrt((clean**2).sum(axis=-1)), np.nan)


def effective_rank(values):
    clean, recorded = _parts(values)
    total = clean.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(total > 0, clean / total, 0.0)
        entropy = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=-1)
    return np.where(recorded & (total[..., 0] > 0), np.exp(entropy), np.nan)


def stable_rank(values):
    clean, recorded = _parts(values)
    return _ratio((clean**2).sum(axis=-1), clean.max(axis=-1, initial=0.0) ** 2, recorded)


def top_energy(values, k=1):
    clean, recorded = _parts(values)
    energy = clean**2
    return _ratio(energy[..., :k].sum(axis=-1), energy.sum(axis=-1), recorded)


def index(name):
    """The 0-based singular-value index of a ``"sigma_<i>"`` name, else ``None``."""
    match = re.fullmatch(r"sigma_(\d+)", name)
    return int(match.group(1)) - 1 if match else None


def summarize(values, name):
    """Applies the summary called ``name`` (see the module docstring) along the last axis.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    position = index(name)
    if position is not None:
        values = np.asarray(values, dtype=np.float64)
        if position < 0 or position >= values.shape[-1]:
            raise ValueError(f"{name} is outside the spectrum's {values.shape[-1]} values.")
        return values[..., position]
    match = re.fullmatch(r"top_energy_(\d+)", name)
    if match:
        return top_energy(values, int(match.group(1)))
    functions = {n: globals()[n] for n in NAMES}
    if name not in functions:
        raise ValueError(
            f"Unknown summary {name!r}; choose from {list(NAMES)}, 'top_energy_<k>' or 'sigma_<i>'."
        )
    return functions[name](values)
