"""Datasets for AutoSpec experiments: each returns inputs, targets and group labels.

Only the simulated datasets exist so far (see `simulated`); loaders for MNIST, the
scikit-learn digits and users' own neuroimaging files are to come (issue 6).
"""

from tf_autospec.data.simulated import GroupedData, random_groups, simulated_fmri, sinusoids

__all__ = ["GroupedData", "random_groups", "simulated_fmri", "sinusoids"]
