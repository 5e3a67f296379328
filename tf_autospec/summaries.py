"""Scalar summaries of singular-value spectra (NaN entries are ignored).

For singular values σ_1 ≥ σ_2 ≥ … of one spectrum:

* ``top``: σ_1, the spectral norm.
* ``nuclear_norm``: Σ σ_i.
* ``effective_rank``: exp(−Σ p_i log p_i) with p_i = σ_i / Σ σ_j (Roy & Vetterli, 2007):
  1 for a rank-one matrix, n for n equal singular values.
"""

import numpy as np


def _finite(values):
    return np.where(np.isfinite(values), values, 0.0)


def top(values):
    """σ_1 along the last axis; NaN where nothing was recorded."""
    values = np.asarray(values, dtype=np.float64)
    return values[..., 0] if values.shape[-1] else np.full(values.shape[:-1], np.nan)


def nuclear_norm(values):
    """Σ σ_i along the last axis; NaN where nothing was recorded."""
    values = np.asarray(values, dtype=np.float64)
    total = _finite(values).sum(axis=-1)
    return np.where(np.isnan(top(values)), np.nan, total)


def effective_rank(values):
    """exp of the entropy of σ / Σσ along the last axis; NaN where nothing was recorded."""
    values = np.asarray(values, dtype=np.float64)
    finite = _finite(values)
    total = finite.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(total > 0, finite / total, 0.0)
        entropy = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=-1)
    return np.where(np.isnan(top(values)) | (total[..., 0] <= 0), np.nan, np.exp(entropy))
