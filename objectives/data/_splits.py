"""Index splits of a training pool: the validation split of each seed, and train_size's fixed subset."""

from __future__ import annotations

import numpy as np

from dal_search.objectives.data._dataset import DataError

TRAIN_SUBSET_SEED = 0  # train_size's subset: one fixed draw, the same for every seed


def split_train_val(labels, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), each sorted: a stratified random split by `labels`, deterministic for `seed`.

    Each class gives round(n_c * val_fraction) samples to validation.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed + 7919)  # not the noise stream of the same seed
    train, val = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def subset_indices(labels, size: int | None, seed: int = TRAIN_SUBSET_SEED) -> np.ndarray | None:
    """Sorted indices of a stratified random subset of `size` samples (None: None, meaning all).

    Class c gets its share size * n_c / N rounded down, and the samples still missing go to the classes
    with the largest remainders (ties: lower class first), so the total is exactly `size`.  The draw depends
    on `labels`, `size` and `seed` only, never on a run's seed: every seed of a trial trains on the same
    images.  A size above the number of samples raises DataError.
    """
    if size is None:
        return None
    labels = np.asarray(labels)
    n = len(labels)
    if size > n:
        raise DataError(f"train_size {size} is more than the {n} images of the training pool; use at most {n}, "
                        f"or leave train_size empty for all of them")
    classes, counts = np.unique(labels, return_counts=True)
    quota = size * counts / n
    take = np.floor(quota).astype(np.int64)
    short = size - int(take.sum())
    if short:
        order = sorted(range(len(classes)), key=lambda i: (-(quota[i] - take[i]), i))
        for i in order[:short]:
            take[i] += 1
    rng = np.random.default_rng(seed + 104729)  # its own stream: not the noise or the split of any seed
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)
