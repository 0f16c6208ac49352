"""Datasets as normalised tensors: `load_dataset(name)` for a registered name (`DATASETS`).

A Dataset holds float32 tensors, (N, C, H, W) images or (N, D) vectors, normalised with the training pool's
statistics, and int64 labels. `train_y` are clean for the built-in sets (the trainer draws the noise) and a
user's labels as given for `folder:`, `npz:` and `py:` data (see `Dataset.clean_train_labels`). A process
loads each (name, folder, image_size) once and shares the tensors: treat them as read-only. Everything a
user can get wrong raises `DataError`: one line naming the folder or file and the fix.

    >>> d = load_dataset("digits")
    >>> d.input_shape, d.num_classes, len(d.train_y), len(d.test_y)
    ((64,), 10, 1437, 360)
"""

from dal_search.objectives.data._dataset import (DATASETS, Dataset, DataError, clear_cache, dataset_title,
                                                 has_clean_test_labels, load_dataset)
from dal_search.objectives.data._splits import split_train_val, subset_indices

# The loaders register themselves on import, in the order lists show them: the built-in sets, then a user's own.
from dal_search.objectives.data import _builtin, _user  # noqa: F401  isort: skip
from dal_search.objectives.data._idx import SYSTEM_DIRS
from dal_search.objectives.data._user import MEMORY_BUDGET_BYTES

__all__ = ["Dataset", "DataError", "load_dataset", "split_train_val", "subset_indices", "has_clean_test_labels",
           "clear_cache", "dataset_title", "DATASETS", "MEMORY_BUDGET_BYTES", "SYSTEM_DIRS"]
