"""Datasets for AutoSpec experiments: each returns a `GroupedData` (inputs, targets, group
labels and group names), ready for ``model.fit(data.x, data.y, groups=data.labels)``.

* `simulated_fmri`, `sinusoids`: simulated, seeded, no download.
* `mnist` (TensorFlow Datasets) and `digits` (scikit-learn, offline): classes as groups.
* `from_files`: users' ICA time courses or FNC matrices with a phenotype CSV.
* `random_groups`: random labels for any dataset, a null control; `fnc_features`: FNC
  vectors from time courses.
"""

from tf_autospec.data.files import DataFileError, fnc_features, from_files
from tf_autospec.data.images import DatasetUnavailableError, digits, mnist
from tf_autospec.data.simulated import GroupedData, random_groups, simulated_fmri, sinusoids

__all__ = [
    "DataFileError",
    "DatasetUnavailableError",
    "GroupedData",
    "digits",
    "fnc_features",
    "from_files",
    "mnist",
    "random_groups",
    "simulated_fmri",
    "sinusoids",
]
