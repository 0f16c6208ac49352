"""Label noise: the generators of PAPER.md, deterministic for a seed, plus labels read from a file.

    none                 labels unchanged
    symmetric            paper convention: each sample, with probability r, gets a label drawn uniformly from
                         ALL K classes (its own included): realised rate about r (K-1)/K
    symmetric-exclusive  each sample, with probability r, flips to a uniformly drawn OTHER class: realised ~ r
    asymmetric           class-dependent flips, each with probability r:
                           cifar10   9->1, 2->0, 4->7, 3<->5 (truck->automobile, bird->airplane, deer->horse,
                                     cat<->dog); others untouched
                           cifar100  to the next fine class of the same superclass, cyclically, in index order
                           mnist     7->1, 2->7, 5<->6, 3->8
                           others    (digits, fashion-mnist, ...) the pair flip c -> (c + 1) mod K
    instance             Xia et al. 2020 (part-dependent): per-sample flip rate q_i ~ TruncNormal(r, 0.1) on
                         [0, 1]; W ~ N(0, 1) of shape (K, D, K); a = x @ W[y], a[y] = -inf, a = q_i softmax(a),
                         a[y] += 1 - q_i; the noisy label is drawn from a.  Needs the features (N, D).
    file                 labels read from a .npy, or a CIFAR-N .pt given as PATH.pt:KEY (e.g. :worse_label)

Every flip is drawn per sample with probability r (not an exact count), so the realised rate varies around
its expectation; `realized_rate` reports it and `transition_matrix` the empirical T[i, j] = P(noisy j | i).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

KINDS = ("none", "symmetric", "symmetric-exclusive", "asymmetric", "instance", "file")

# CIFAR-100 fine class -> superclass (coarse) index, fine classes 0..99 (PAPER.md).
CIFAR100_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11,
    1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17, 10, 3,
    2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2,
    15, 6, 0, 17, 8, 14, 13])
CIFAR10_FLIPS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
MNIST_FLIPS = {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}


class NoiseError(ValueError):
    """Bad noise settings or label file; the message is one line naming the fix."""


def asymmetric_map(dataset: str | None, num_classes: int) -> np.ndarray:
    """target[c]: the class that c flips to under asymmetric noise (c itself when it never flips)."""
    target = np.arange(num_classes)
    if dataset == "cifar10" and num_classes == 10:
        for src, dst in CIFAR10_FLIPS.items():
            target[src] = dst
    elif dataset == "cifar100" and num_classes == 100:
        for c in range(100):
            same = np.flatnonzero(CIFAR100_COARSE == CIFAR100_COARSE[c])  # ascending fine indices
            target[c] = same[(np.searchsorted(same, c) + 1) % len(same)]
    elif dataset == "mnist" and num_classes == 10:
        for src, dst in MNIST_FLIPS.items():
            target[src] = dst
    else:
        target = (np.arange(num_classes) + 1) % num_classes
    return target


def corrupt_labels(labels, kind: str, rate: float, num_classes: int, seed: int, features=None,
                   dataset: str | None = None, path: str | None = None) -> np.ndarray:
    """Noisy labels (a new int64 array) from clean `labels`; deterministic for `seed`."""
    y = np.asarray(labels, dtype=np.int64).copy()
    if kind not in KINDS:
        raise NoiseError(f"unknown noise kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if not 0.0 <= rate < 1.0:
        raise NoiseError(f"noise rate must be in [0, 1), got {rate}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise NoiseError(f"labels must lie in [0, {num_classes})")
    rng = np.random.default_rng(seed)
    n = len(y)
    if kind == "none" or (rate == 0 and kind != "file"):
        return y
    if kind == "symmetric":
        flip = rng.random(n) < rate
        y[flip] = rng.integers(0, num_classes, size=int(flip.sum()))
        return y
    if kind == "symmetric-exclusive":
        flip = rng.random(n) < rate
        offset = rng.integers(1, num_classes, size=int(flip.sum()))
        y[flip] = (y[flip] + offset) % num_classes
        return y
    if kind == "asymmetric":
        target = asymmetric_map(dataset, num_classes)
        flip = rng.random(n) < rate
        y[flip] = target[y[flip]]
        return y
    if kind == "instance":
        return _instance(y, rate, num_classes, rng, features)
    return read_label_file(path, n, num_classes)


def _instance(y: np.ndarray, rate: float, k: int, rng: np.random.Generator, features) -> np.ndarray:
    if features is None:
        raise NoiseError("instance-dependent noise needs the samples' features (N, D)")
    x = np.asarray(features, dtype=np.float32).reshape(len(y), -1)
    n, d = x.shape
    q = _trunc_normal(rng, rate, 0.1, n)
    w = rng.standard_normal((k, d, k)).astype(np.float32)
    noisy = y.copy()
    u = rng.random(n)
    for c in range(k):
        idx = np.flatnonzero(y == c)
        if not len(idx):
            continue
        a = x[idx] @ w[c]  # (n_c, K)
        a[:, c] = -np.inf
        a = a - a.max(axis=1, keepdims=True)
        np.exp(a, out=a)
        a /= a.sum(axis=1, keepdims=True)
        a *= q[idx, None]
        a[:, c] += 1.0 - q[idx]
        cdf = np.cumsum(a, axis=1)
        noisy[idx] = np.minimum((u[idx, None] > cdf).sum(axis=1), k - 1)
    return noisy


def _trunc_normal(rng: np.random.Generator, mean: float, sd: float, n: int) -> np.ndarray:
    """N(mean, sd) truncated to [0, 1], by rejection (the mass inside is large for mean in [0, 1))."""
    out = rng.normal(mean, sd, n)
    bad = (out < 0) | (out > 1)
    while bad.any():
        out[bad] = rng.normal(mean, sd, int(bad.sum()))
        bad = (out < 0) | (out > 1)
    return out


def read_label_file(path: str | None, n: int, num_classes: int) -> np.ndarray:
    """Labels from `path` (.npy, or PATH.pt:KEY for a CIFAR-N file), checked against the training set."""
    if not path:
        raise NoiseError("noise 'file' needs a label file: --noise-file labels.npy or CIFAR-10_human.pt:worse_label")
    file, key = str(path), ""
    if not Path(file).exists() and ":" in file:
        file, _, key = file.rpartition(":")
    p = Path(file)
    if not p.is_file():
        raise NoiseError(f"label file {p} not found; give the path of a .npy or CIFAR-N .pt file")
    try:
        if p.suffix == ".npy":
            labels = np.load(p, allow_pickle=False)
        else:
            import torch

            obj = torch.load(p, map_location="cpu", weights_only=False)
            if isinstance(obj, dict):
                keys = [k for k, v in obj.items() if hasattr(v, "__len__") and not isinstance(v, str)]
                if not key:
                    if len(keys) != 1:
                        raise NoiseError(f"label file {p} holds several label sets; pick one as {p}:KEY "
                                         f"with KEY one of: {', '.join(map(str, keys))}")
                    key = keys[0]
                if key not in obj:
                    raise NoiseError(f"label file {p} has no key {key!r}; keys: {', '.join(map(str, keys))}")
                labels = obj[key]
            else:
                labels = obj
            labels = np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels)
    except NoiseError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same mistake for the user
        raise NoiseError(f"label file {p} cannot be read ({type(e).__name__}); it must be a .npy array or a "
                         f"torch-saved CIFAR-N dict") from None
    labels = np.asarray(labels).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise NoiseError(f"label file {p} must hold integer class labels, found {labels.dtype}")
    if len(labels) != n:
        raise NoiseError(f"label file {p} has {len(labels)} labels but the training set has {n}; "
                         f"use the file made for this dataset")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise NoiseError(f"label file {p} has labels outside [0, {num_classes})")
    return labels.astype(np.int64)


def realized_rate(clean, noisy) -> float:
    clean, noisy = np.asarray(clean), np.asarray(noisy)
    return float(np.mean(clean != noisy)) if len(clean) else 0.0


def transition_matrix(clean, noisy, num_classes: int) -> np.ndarray:
    t = np.zeros((num_classes, num_classes))
    np.add.at(t, (np.asarray(clean), np.asarray(noisy)), 1.0)
    rows = t.sum(axis=1, keepdims=True)
    return np.divide(t, rows, out=np.zeros_like(t), where=rows > 0)


def label_hash(labels) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).tobytes()).hexdigest()[:16]
