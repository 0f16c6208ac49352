"""Label noise: PAPER.md's generators, deterministic for a seed, plus labels read from a file.

    none                 labels unchanged (a copy)
    symmetric            the paper's convention: each sample, with probability r, gets a label drawn uniformly
                         from ALL K classes, its own included, so the realised rate is about r (K-1)/K
                         (CIFAR-10 at r = 0.4: about 36 % of the labels are actually wrong)
    symmetric-exclusive  each sample, with probability r, flips to a uniformly drawn OTHER class: realised ~ r
    asymmetric           class-dependent flips, each with probability r:
                           cifar10   9->1, 2->0, 4->7, 3<->5 (truck->automobile, bird->airplane, deer->horse,
                                     cat<->dog); other classes untouched, so the realised rate is about r/2
                           cifar100  to the next fine class of the TRUE superclass, in index order, cyclically
                                     (the real superclasses, not the index blocks [5i, 5i+5) of older code)
                           mnist     7->1, 2->7, 5<->6, 3->8
                           fashion-mnist  Ankle boot->Sneaker, Sneaker->Sandal, Pullover->Shirt, Coat->Dress
                                     (9->7, 7->5, 2->6, 4->3): the look-alike flips of Zhang & Sabuncu 2018
                                     (GCE, NeurIPS), the Fashion-MNIST class-dependent noise that GCE, one of
                                     our baselines, was published with; 4 of 10 classes flip, so the
                                     realised rate is about 0.4 r
                           others    digits, anything else: the pair flip c -> (c + 1) mod K
    instance             Xia et al. 2020 (part-dependent): per-sample flip rate q_i ~ TruncNormal(r, 0.1) on
                         [0, 1]; W ~ N(0, 1) of shape (K, D, K); a = x_i @ W[y_i], a[y_i] = -inf,
                         a = q_i softmax(a), a[y_i] += 1 - q_i; the noisy label is drawn from a.  Needs the
                         samples' features (N, D); realised rate about r.
    file                 labels read from a .npy, or from a CIFAR-N .pt given as PATH.pt:KEY (e.g.
                         CIFAR-10_human.pt:worse_label); `rate` and `seed` play no part
    partial              partial labels (PAPER.md's open question 2), the uniform candidate sets of Feng et al.
                         2020 and Lv et al. 2020: every false class joins a sample's candidate set S
                         independently with probability r, the true class always does.  The result is an
                         (N, K) boolean mask, not labels; its mean set size is 1 + r (K - 1), and
                         `realized_rate` is the fraction of false classes that joined (about r)

Conventions (edge behaviour a user will meet):
- Every random flip is a per-sample Bernoulli(r) draw, not an exact count of round(r N) samples: the labels
  are one draw of the transition matrix T the literature states, and the realised rate varies around its
  expectation by about sqrt(r (1 - r) / N) (0.2 points on CIFAR's 50,000 labels).  Always record
  `realized_rate`, which is what was actually trained on.
- `symmetric` and `symmetric-exclusive` of the same seed pick the same samples; they differ only in the label
  those samples get.
- rate 0 returns the clean labels for every generated kind (also `instance`, whose TruncNormal(0, 0.1) would
  otherwise still flip about 8 %); for `partial`, as one-entry candidate sets.
- The truncated normal is drawn by rejection from numpy's normal (exact, and needs no scipy), so its stream
  differs from Xia et al.'s scipy.stats.truncnorm; the distribution is the same.
- A CIFAR-N .pt file is read with torch's weights-only unpickler, allowing plain arrays only, so a label
  file cannot run code.  When the file holds `clean_label`, it must equal the dataset's labels: that catches
  a file made for another dataset.

Example:
    >>> import numpy as np
    >>> clean = np.repeat(np.arange(10), 2000)
    >>> noisy = corrupt_labels(clean, "symmetric", 0.4, 10, seed=0)
    >>> abs(realized_rate(clean, noisy) - 0.4 * 9 / 10) < 0.02  # some samples redraw their own label
    True
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from dal_search.objectives.registry import Registry

# Every noise kind, in the order lists show them. A kind registers its generator `fn(y, rate, num_classes,
# rng, features=None, dataset=None, path=None) -> labels` (y a fresh int64 copy it may modify) and records
# `needs` (which of features / dataset / path it reads) and `random` (False: rate and seed play no part, e.g.
# labels read from a file). A random kind at rate 0 returns the clean labels without being called.
# `candidate_sets=True`: the kind gives an (N, K) boolean mask of candidate sets instead of labels (partial
# labels; rate 0 gives the one-entry masks), which only losses registered with candidate_sets=True can take.
NOISE_KINDS = Registry("noise kind")

# CIFAR-100 fine class -> superclass (coarse) index, fine classes 0..99, as PAPER.md gives it.
CIFAR100_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11,
    1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17, 10, 3,
    2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2,
    15, 6, 0, 17, 8, 14, 13])
CIFAR10_FLIPS = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
MNIST_FLIPS = {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}
# Fashion-MNIST (0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag,
# 9 Ankle boot): "BOOT -> SNEAKER, SNEAKER -> SANDALS, PULLOVER -> SHIRT, COAT -> DRESS", Zhang & Sabuncu,
# "Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels", NeurIPS 2018, Sec. 4
# (class-dependent noise); Kim et al., "NLNL: Negative Learning for Noisy Labels", ICCV 2019, reuse it.
FASHION_MNIST_FLIPS = {9: 7, 7: 5, 2: 6, 4: 3}
_FIXED_K = {"cifar10": 10, "cifar100": 100, "mnist": 10, "fashion-mnist": 10}
_INSTANCE_SD = 0.1  # Xia et al.'s spread of the per-sample flip rate


class NoiseError(ValueError):
    """Bad noise settings or a bad label file; the message is one line naming the fix."""


def asymmetric_map(dataset: str | None, num_classes: int) -> np.ndarray:
    """target[c]: the class that c flips to under asymmetric noise (c itself for a class that never flips)."""
    if dataset in _FIXED_K and num_classes != _FIXED_K[dataset]:
        raise NoiseError(f"asymmetric noise for {dataset} needs {_FIXED_K[dataset]} classes, got {num_classes}; "
                         f"pass the dataset's own number of classes")
    target = np.arange(num_classes)
    if dataset == "cifar10":
        for src, dst in CIFAR10_FLIPS.items():
            target[src] = dst
    elif dataset == "cifar100":
        for c in range(100):
            same = np.flatnonzero(CIFAR100_COARSE == CIFAR100_COARSE[c])  # ascending fine indices
            target[c] = same[(np.searchsorted(same, c) + 1) % len(same)]
    elif dataset in ("mnist", "fashion-mnist"):
        for src, dst in (MNIST_FLIPS if dataset == "mnist" else FASHION_MNIST_FLIPS).items():
            target[src] = dst
    else:
        target = (target + 1) % num_classes
    return target


def corrupt_labels(labels, kind: str, rate: float, num_classes: int, seed: int, features=None,
                   dataset: str | None = None, path: str | None = None) -> np.ndarray:
    """Noisy labels (a new int64 array) from the clean `labels`, or for a kind registered with candidate_sets
    (`partial`) a new (N, num_classes) bool mask of candidate sets; the input is never modified.

    Deterministic for `seed` (numpy's default_rng).  `features` (N, D) only for `instance`, `dataset` only for
    `asymmetric`, `path` only for `file`.  Raises NoiseError for an unknown kind, a rate outside [0, 1),
    labels outside [0, num_classes), and a missing or unusable label file.
    """
    if kind not in NOISE_KINDS:
        raise NoiseError(f"unknown noise kind {kind!r}; choose one of: {NOISE_KINDS.choices()}")
    entry = NOISE_KINDS[kind]
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)) or not 0 <= rate < 1:
        raise NoiseError(f"noise rate must be a number in [0, 1), got {rate!r}; e.g. 0.4 for 40 %")
    y = _as_labels(labels, num_classes, "labels")
    if entry.get("random", True):
        if rate == 0:
            return np.eye(num_classes, dtype=bool)[y] if entry.get("candidate_sets") else y
        if num_classes < 2:
            raise NoiseError(f"label noise needs at least 2 classes, got num_classes={num_classes}")
    return entry.obj(y, float(rate), num_classes, np.random.default_rng(seed), features=features, dataset=dataset,
                     path=path)


@NOISE_KINDS.register("none", help="the labels as given", random=False)
def _none(y: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator, **_) -> np.ndarray:
    return y


@NOISE_KINDS.register("symmetric", help="the paper's: with probability r a label is redrawn from ALL K classes "
                      "(realised rate about r (K-1)/K)")
def _symmetric(y: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator, **_) -> np.ndarray:
    flip = rng.random(len(y)) < rate
    y[flip] = rng.integers(0, num_classes, size=int(flip.sum()))
    return y


@NOISE_KINDS.register("symmetric-exclusive", help="with probability r a label flips to another class (realised ~ r)")
def _symmetric_exclusive(y: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator,
                         **_) -> np.ndarray:
    flip = rng.random(len(y)) < rate  # the same samples as `symmetric` of the same seed
    # a uniform non-zero offset is a uniform draw among the K-1 other classes
    y[flip] = (y[flip] + rng.integers(1, num_classes, size=int(flip.sum()))) % num_classes
    return y


@NOISE_KINDS.register("asymmetric", help="class-dependent flips with probability r (the dataset's mapping)",
                      needs=("dataset",))
def _asymmetric(y: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator, dataset=None,
                **_) -> np.ndarray:
    target = asymmetric_map(dataset, num_classes)
    flip = rng.random(len(y)) < rate
    y[flip] = target[y[flip]]
    return y


@NOISE_KINDS.register("instance", help="Xia et al. 2020 instance-dependent flips (realised ~ r)",
                      needs=("features",))
def _instance_kind(y: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator, features=None,
                   **_) -> np.ndarray:
    return _instance(y, rate, num_classes, rng, features)


@NOISE_KINDS.register("file", help="labels read from --noise-file (.npy, or a CIFAR-N .pt as PATH.pt:KEY)",
                      needs=("path",), random=False)
def _file(y: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator, path=None, **_) -> np.ndarray:
    return read_label_file(path, y, num_classes)


@NOISE_KINDS.register("partial", title="partial labels", help="partial labels: every false class joins the "
                      "candidate set with probability r, the true class always does (mean set size 1 + r (K-1))",
                      candidate_sets=True)
def _partial(y: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator, **_) -> np.ndarray:
    # one uniform draw per (sample, class) pair, the true class's overwritten: the same draw decides a false
    # class at every rate, so a higher rate's sets contain a lower rate's (same seed)
    mask = rng.random((len(y), num_classes)) < rate
    mask[np.arange(len(y)), y] = True
    return mask


def _as_labels(labels, num_classes: int, what: str) -> np.ndarray:
    """A fresh 1-D int64 copy of integer-valued `labels`, checked against [0, num_classes)."""
    if hasattr(labels, "detach"):  # a torch tensor, possibly on a GPU
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise NoiseError(f"{what} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(np.mod(arr, 1) == 0):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise NoiseError(f"{what} must hold integer class indices, found dtype {arr.dtype}")
    y = arr.astype(np.int64, copy=True)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise NoiseError(f"{what} must lie in [0, {num_classes}), found {y.min()}..{y.max()}; "
                         f"check num_classes and the dataset")
    return y


def _instance(y: np.ndarray, rate: float, k: int, rng: np.random.Generator, features) -> np.ndarray:
    if features is None:
        raise NoiseError("instance-dependent noise needs the samples' features (N, D); pass features=")
    if hasattr(features, "detach"):
        features = features.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float32)
    if len(x) != len(y):
        raise NoiseError(f"instance noise: {len(x)} feature rows for {len(y)} labels; pass the features of the "
                         f"same samples, in the same order")
    x = x.reshape(len(y), -1)  # a view for C-contiguous input: CIFAR's 50,000 x 3072 is not copied
    if not np.isfinite(x).all():
        raise NoiseError("instance noise: the features contain NaN or infinity; pass finite features")
    n, d = x.shape
    q = _trunc_normal(rng, rate, _INSTANCE_SD, n)
    # float32 keeps CIFAR-100's W (100 x 3072 x 100) at 123 MB; one projection per true class.
    w = rng.standard_normal((k, d, k), dtype=np.float32)
    u = rng.random(n)
    noisy = y.copy()
    for c in range(k):  # all samples of one true class share W[c]: one matrix product per class
        idx = np.flatnonzero(y == c)
        if not len(idx):
            continue
        a = (x[idx] @ w[c]).astype(np.float64)  # (n_c, K)
        a[:, c] = -np.inf
        a -= a.max(axis=1, keepdims=True)
        np.exp(a, out=a)
        a /= a.sum(axis=1, keepdims=True)
        a *= q[idx, None]
        a[:, c] += 1.0 - q[idx]
        cdf = np.cumsum(a, axis=1)
        # class j owns [cdf[j-1], cdf[j]): a zero-probability class owns nothing, so it is never drawn
        pick = (cdf <= (u[idx] * cdf[:, -1])[:, None]).sum(axis=1)
        noisy[idx] = np.minimum(pick, k - 1)
    return noisy


def _trunc_normal(rng: np.random.Generator, mean: float, sd: float, n: int) -> np.ndarray:
    """N(mean, sd) truncated to [0, 1], by rejection: for a mean in [0, 1) at least half the mass is inside."""
    out = rng.normal(mean, sd, n)
    bad = (out < 0) | (out > 1)
    while bad.any():
        out[bad] = rng.normal(mean, sd, int(bad.sum()))
        bad = (out < 0) | (out > 1)
    return out


def _split_path(path: str) -> tuple[Path, str]:
    """'file.pt:KEY' -> (file.pt, KEY); a path that exists as given (even with a ':' in it) has no key."""
    if Path(path).exists() or ":" not in path:
        return Path(path), ""
    file, _, key = path.rpartition(":")
    if not file or "/" in key or "\\" in key:  # 'C:\\labels.npy' style: the ':' is part of the path
        return Path(path), ""
    return Path(file), key


def read_label_file(path: str | None, clean, num_classes: int) -> np.ndarray:
    """Labels from `path` (a .npy, or PATH.pt[:KEY] for a CIFAR-N file), checked against the clean `labels`.

    `clean` is the training set's clean labels (or just its length).  Every problem is a NoiseError naming
    the file and the fix.
    """
    if not path:
        raise NoiseError("noise 'file' needs a label file: --noise-file labels.npy or "
                         "--noise-file CIFAR-10_human.pt:worse_label")
    p, key = _split_path(str(path))
    if not p.is_file():
        raise NoiseError(f"label file {p} not found; give the path of a .npy or CIFAR-N .pt file")
    clean = np.arange(clean) if isinstance(clean, (int, np.integer)) else np.asarray(clean)
    if p.suffix == ".npy":
        if key:
            raise NoiseError(f"label file {p} is a .npy holding one array; drop the ':{key}' suffix")
        try:
            raw = np.load(p, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same mistake for the user
            raise NoiseError(f"label file {p} cannot be read as a .npy array ({type(e).__name__}); save the "
                             f"labels with numpy.save") from None
        found = {"": raw}
    else:
        found = _read_torch_labels(p)
        if not key:
            if len(found) != 1:
                what = "no label arrays" if not found else "several label sets"
                raise NoiseError(f"label file {p} holds {what}; pick one as {p}:KEY with KEY one of: "
                                 f"{', '.join(found) or '(none)'}")
            key = next(iter(found))
        elif key not in found:
            raise NoiseError(f"label file {p} has no label array {key!r}; use {p}:KEY with KEY one of: "
                             f"{', '.join(found) or '(none)'}")
    where = f"label file {p}" + (f" key {key!r}" if key else "")
    raw = np.asarray(found[key])
    if raw.ndim != 1:
        raw = raw.reshape(-1) if raw.ndim == 2 and 1 in raw.shape else raw
    if raw.ndim != 1:
        raise NoiseError(f"{where} must hold a 1-D array of labels, found shape {raw.shape}")
    if len(raw) != len(clean):
        raise NoiseError(f"{where} has {len(raw)} labels but the training set has {len(clean)}; "
                         f"use the file made for this dataset")
    try:
        labels = _as_labels(raw, num_classes, where)
    except NoiseError as e:
        raise NoiseError(f"{e}; use the file made for this dataset") from None
    file_clean = found.get("clean_label") if key != "clean_label" else None
    if file_clean is not None and len(np.asarray(file_clean).reshape(-1)) == len(clean):
        if not np.array_equal(np.asarray(file_clean).reshape(-1), clean):
            raise NoiseError(f"label file {p}: its clean_label differs from this dataset's training labels; "
                             f"it was made for another dataset (CIFAR-10N vs CIFAR-100N?) or another order")
    return labels


def _read_torch_labels(p: Path) -> dict[str, np.ndarray]:
    """The array-like values of a torch-saved dict (or a lone array, under key ''), without running code."""
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unreadable, or holds objects that are not plain arrays
        raise NoiseError(f"label file {p} cannot be read as a torch-saved dict of label arrays "
                         f"({type(e).__name__}); give a CIFAR-N .pt file or labels saved with numpy.save") from None
    if not isinstance(obj, dict):
        obj = {"": obj}
    found = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        if isinstance(v, (list, tuple)) or isinstance(v, np.ndarray):
            found[str(k)] = np.asarray(v)
    return found


def _numpy_safe_globals() -> list:
    """The globals a pickled numeric numpy array needs, under numpy 1's and numpy 2's module names (CIFAR-N's
    files were written with numpy 1)."""
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    allowed = [np.ndarray, np.dtype, (reconstruct, "numpy.core.multiarray._reconstruct"),
               (reconstruct, "numpy._core.multiarray._reconstruct")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType", "UInt16DType",
                     "UInt32DType", "UInt64DType", "Float32DType", "Float64DType", "LongDType", "ULongDType",
                     "LongLongDType", "ULongLongDType", "BoolDType"):
            if hasattr(dtypes, name):
                allowed.append(getattr(dtypes, name))
    return allowed


def realized_rate(clean, noisy) -> float:
    """Fraction of samples whose noisy label differs from the clean one (0.0 for no samples). For candidate
    sets `noisy` (an (N, K) bool mask): the fraction of the N (K - 1) false classes that are in their sample's
    set, which partial labels of rate r draw with probability r."""
    noisy = np.asarray(noisy)
    if noisy.ndim == 2 and noisy.dtype == bool:
        clean = np.asarray(clean).reshape(-1)
        n, k = noisy.shape
        if len(clean) != n:
            raise NoiseError(f"realized_rate: {len(clean)} clean labels but {n} candidate sets")
        if n == 0 or k < 2:
            return 0.0
        false_in = int(noisy.sum()) - int(noisy[np.arange(n), clean].sum())
        return false_in / (n * (k - 1))
    clean, noisy = np.asarray(clean).reshape(-1), noisy.reshape(-1)
    if len(clean) != len(noisy):
        raise NoiseError(f"realized_rate: {len(clean)} clean labels but {len(noisy)} noisy ones")
    return float(np.mean(clean != noisy)) if len(clean) else 0.0


def transition_matrix(clean, noisy, num_classes: int) -> np.ndarray:
    """Empirical T[i, j] = P(noisy = j | clean = i), rows normalised; a class with no samples has a zero row."""
    clean = _as_labels(clean, num_classes, "clean labels")
    noisy = _as_labels(noisy, num_classes, "noisy labels")
    if len(clean) != len(noisy):
        raise NoiseError(f"transition_matrix: {len(clean)} clean labels but {len(noisy)} noisy ones")
    t = np.bincount(clean * num_classes + noisy, minlength=num_classes * num_classes).astype(np.float64)
    t = t.reshape(num_classes, num_classes)
    rows = t.sum(axis=1, keepdims=True)
    return np.divide(t, rows, out=np.zeros_like(t), where=rows > 0)


def candidate_set_size(labels) -> float:
    """Mean size of the candidate sets of an (N, K) bool mask; 1.0 for class labels (N,) and for no samples."""
    arr = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    if arr.ndim == 2 and arr.dtype == bool and len(arr):
        return float(arr.sum(axis=1).mean())
    return 1.0


def label_hash(labels) -> str:
    """First 16 hex characters of the sha256 of the labels as little-endian int64: equal labels, equal hash.
    Candidate sets hash their (N, K) entries the same way (row by row, 0 or 1)."""
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(labels).reshape(-1), dtype="<i8")
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]


__all__ = ["corrupt_labels", "realized_rate", "candidate_set_size", "transition_matrix", "label_hash", "asymmetric_map",
           "read_label_file", "NoiseError", "NOISE_KINDS", "CIFAR100_COARSE", "CIFAR10_FLIPS", "MNIST_FLIPS",
           "FASHION_MNIST_FLIPS"]
