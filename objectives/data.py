"""Datasets as normalised tensors: the embedded `digits`; MNIST, Fashion-MNIST, CIFAR-10/100 read from local
files (downloaded only when asked); and a user's own data (`folder:PATH`, `npz:PATH`, `py:MODULE:FUNCTION`).

Labels: for the built-in sets, `train_y` are the clean labels and the trainer draws the label noise.  For a
user's data, `train_y` are the labels AS GIVEN (usually noisy already): `noise: none` trains on them unchanged,
and any other noise kind is drawn on top of them (see Dataset.clean_train_labels for what counts as clean).

- `digits`: scikit-learn's bundled 8x8 digits (1,797 images, no download), as (N, 64) pixels scaled to [0, 1]
  and then standardised per pixel with the training pool's mean and std.  It is split ONCE, stratified with a
  fixed seed (0), into an 80 % training pool and a 20 % test set, so every run and every seed is scored on
  the same 360 clean test images.
- the torchvision sets keep their official train/test split, as (N, C, H, W) float32 normalised with the
  usual per-channel mean and std.  On-disk formats are exactly torchvision's:
      root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
      root/cifar-100-python/{train, test, meta}
      root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte         (each file raw, or as .gz)
      root/FashionMNIST/raw/...                                          (the same names)
- MNIST and Fashion-MNIST are parsed here from the idx files, raw or gzipped, without unpacking them: nothing
  is ever written beside them, so a read-only folder works.  The magic numbers, dimensions (N x 28 x 28),
  byte counts, image/label counts and the label range are checked; any mismatch is one DataError line.
  Search order: root (= --data-dir, torchvision's layout above, or torchvision's legacy processed/*.pt), then
  the system folder a Debian package installs (`apt install dataset-fashion-mnist` puts the four .gz files
  flat in /usr/share/datasets/fashion-mnist/; see SYSTEM_DIRS), then --download into root.  A root folder
  that holds only some of the four files is an error (it is not silently replaced by the system copy).
- CIFAR integrity: torchvision checks the md5 of every official file on each load; here a file counts as
  present when it exists, and its content is then checked (unpickling, uint8 images of the right shape, as
  many labels as images, labels in range, K class names), so a re-packed copy loads too.  `--download`
  still fetches the md5-checked official archive when files are missing.  The pickles are read by a restricted
  unpickler that admits only plain containers, str, bytes, numbers and numpy arrays: a crafted file that
  would run code on loading is refused as corrupt, and nothing of it runs.
- A process keeps what it loaded, keyed by (name, resolved root or path, image_size): a worker running many
  trials reads each dataset once.  The cached tensors are shared between callers: treat them as read-only.

A user's own data (every path is read where the trainer runs: give absolute paths to a pool's workers):
- `folder:PATH`: images in torchvision's ImageFolder layout, one sub-folder per class (class index = position
  of the folder name in sorted order).  With PATH/train/ the classes are train/'s sub-folders and PATH/test/
  (optional) holds test images in sub-folders of the same names; without train/, PATH's own sub-folders are
  the classes and FOLDER_TEST_FRACTION (20 %) of each class, drawn with the fixed seed FOLDER_SPLIT_SEED (0),
  is held out as the test set, the same for every run.  Images are the files with an image extension
  (IMAGE_EXTENSIONS, any depth, hidden files skipped); all greyscale -> 1 channel, else RGB (alpha dropped).
  They must all have one size, or the config's `image_size` S resizes (squashes, no crop) each to S x S.
- `npz:PATH`: a numpy .npz with arrays x_train, y_train and optionally x_test, y_test, y_train_clean,
  classes (names; their count fixes K); written with numpy.savez, no pickled objects.
- `py:MODULE:FUNCTION`: FUNCTION() (no arguments) returns the same arrays, numpy or torch, as a dict with
  those keys, or a tuple (x_train, y_train[, x_test[, y_test[, y_train_clean]]]).  MODULE is imported from
  PYTHONPATH (see pyref).
  Arrays: x is (N, D) vectors, (N, H, W) greyscale, or images (N, C, H, W) or (N, H, W, C) (channels last
  when the last axis is 1, 3 or 4 and the second is not); any numeric dtype.  Vectors are standardised per
  feature, images per channel, with the training pool's mean and std.  Labels are integers 0..K-1, K =
  len(classes) or max(y_train) + 1, every class present in y_train.  y_test are taken as correct labels;
  without them there is no clean test set.
- Clean labels: `y_train_clean`, when given, are what memorisation (noisy_fit, clean_fit) and realized_rate
  are measured against.  Without it, under synthetic noise the labels as given count as clean (that is the
  premise of adding noise); under `noise: none` they are unknown and those metrics are NaN.  Test labels
  held out of a folder without test/ are the folder's own labels: clean only under synthetic noise, likewise.
- Memory: a dataset whose float32 tensors (train + test) would exceed MEMORY_BUDGET_BYTES (8 GiB, or
  DAL_SEARCH_DATA_BUDGET_GB) is refused before it is read in full.

Everything a user can get wrong (unknown name, missing folder or file, corrupt file, failed download, wrong
shapes, labels outside 0..K-1, an empty class, an unreadable image, mixed image sizes without image_size,
too much data, a missing module or function) raises `DataError`: one line naming the folder or file and the
fix, never a library's traceback.

Example:
    >>> d = load_dataset("digits")
    >>> d.input_shape, d.num_classes, len(d.train_y), len(d.test_y)
    ((64,), 10, 1437, 360)
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import pickle
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from dal_search.objectives.pyref import check_ref, import_ref
from dal_search.objectives.registry import Registry

# Every dataset, in the order lists show them. An entry is a loader `fn(arg, root, download) -> Dataset` (arg is
# the text after the prefix for a prefix entry such as `npz:PATH`, else None) and records what a TrainConfig
# resolves from the dataset: `model` (the default network: a name, or a function of the input shape),
# `lr` (the default learning rate) and `augment` (random crop + flip by default), and `files` (what the cache
# key includes: True the resolved data_dir, False nothing, "arg" the resolved path after the prefix); a prefix
# entry may add `check` (a syntax check of its argument, run by config validation) and `resizes` (the loader
# takes image_size=).
DATASETS = Registry("dataset")

_FOLDER = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py",
           "cifar100": "cifar-100-python"}
_NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}
_IMAGE_SHAPE = {"mnist": (28, 28), "fashion-mnist": (28, 28), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3)}
_STATS = {  # per-channel mean and std of the training images, in [0, 1]
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# torchvision's class names (MNIST.classes, FashionMNIST.classes), here so that reading the idx files needs no
# torchvision import (seconds on a busy machine)
_IDX_CLASSES = {
    "mnist": tuple(f"{i} - {w}" for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven",
                                                       "eight", "nine"))),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
}
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
# Where Debian's packages put datasets (searched after --data-dir): `dataset-fashion-mnist` installs the four
# original .gz files flat in this folder, read-only for users.
SYSTEM_DIRS = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"), "dataset-fashion-mnist")}
FOLDER_TEST_FRACTION = 0.2  # a folder: dataset without test/ holds out this share of each class as its test set
FOLDER_SPLIT_SEED = 0
TRAIN_SUBSET_SEED = 0  # train_size's subset: one fixed draw, the same for every seed
# The most a dataset may take as float32 tensors (train + test), checked before it is read in full.
MEMORY_BUDGET_BYTES = int(float(os.environ.get("DAL_SEARCH_DATA_BUDGET_GB", "8")) * 2**30)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")
_USER_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "y_train_clean", "classes")

_CACHE: dict[tuple[str, str], "Dataset"] = {}
_CACHE_LOCK = threading.RLock()  # re-entrant: a loader may build on another dataset (load_dataset inside)


class DataError(ValueError):
    """A dataset cannot be loaded; the message is one line naming the folder and the fix."""


@dataclass(frozen=True)
class Dataset:
    """One dataset in memory.

    `train_y` (int64) are the training labels as the source gives them: clean for the built-in sets
    (`train_labels_clean` True), a user's labels as given otherwise.  `test_y` is None when the source has
    no test labels; `test_x` may then be empty.  `train_y_clean` are a user's clean training labels when
    given.  `test_labels_clean` is False when the test labels were held out of the user's own (possibly
    noisy) labels.  Use `clean_train_labels(noise)` and `clean_test_labels(noise)` rather than these flags.
    """

    name: str
    num_classes: int
    train_x: torch.Tensor  # float32, normalised; (N, C, H, W) images, or (N, D) vectors (digits: 64)
    train_y: torch.Tensor  # int64
    test_x: torch.Tensor
    test_y: torch.Tensor | None  # int64; None: no test labels
    classes: list[str]
    train_y_clean: torch.Tensor | None = None
    train_labels_clean: bool = True
    test_labels_clean: bool = True
    source: str = ""  # the folder or file read ("" for embedded data)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, without the batch axis: (64,), (1, 28, 28) or (3, 32, 32)."""
        return tuple(self.train_x.shape[1:])

    def clean_train_labels(self, noise: str) -> torch.Tensor | None:
        """The training labels that memorisation is measured against, or None when unknown: `train_y_clean`
        if given; else `train_y` when they are clean, or when `noise` draws synthetic noise on top of them
        (its premise: the labels as given are the clean ones); None for a user's labels under noise 'none'."""
        if self.train_y_clean is not None:
            return self.train_y_clean
        return self.train_y if self.train_labels_clean or noise != "none" else None

    def clean_test_labels(self, noise: str) -> torch.Tensor | None:
        """The test labels, or None when there are no clean ones: none given, or held out of a user's own
        labels under noise 'none' (then they are as noisy as the training labels)."""
        if self.test_y is None:
            return None
        return self.test_y if self.test_labels_clean or noise != "none" else None


def load_dataset(name: str, root: str | Path = "./data", download: bool = False,
                 image_size: int | None = None) -> Dataset:
    """The dataset `name` (see DATASETS) from `root`, loaded once per process and then served from memory.
    `image_size` is passed to the datasets that resize (folder:); it is an error for the others."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {DATASETS.choices()}")
    entry, arg = DATASETS.resolve(name)
    resizes = entry.get("resizes", False)
    if image_size is not None and not resizes:
        raise DataError(f"image_size applies to folder: datasets only; remove it for dataset {name!r}")
    files = entry.get("files", True)
    where = (str(Path(root).expanduser().resolve()) if files is True
             else str(Path(arg).expanduser().resolve()) if files == "arg" and arg else "")
    key = (name, where, image_size)
    with _CACHE_LOCK:  # one load per key even when threads of one worker ask at once
        if key not in _CACHE:
            folder = Path(where) if files is True else Path(root)
            extra = {"image_size": image_size} if resizes else {}
            _CACHE[key] = entry.obj(arg, folder, download, **extra)
        return _CACHE[key]


def has_clean_test_labels(name: str, root: str | Path = "./data", noise: str = "symmetric",
                          image_size: int | None = None) -> bool:
    """Whether a run on `name` under `noise` has clean test labels to score (so `test_acc` can select a
    trial): always for the built-in sets; for a user's data, this loads it (through the cache) and asks."""
    if DATASETS.resolve(name)[1] is None:
        return True
    return load_dataset(name, root, image_size=image_size).clean_test_labels(noise) is not None


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


def dataset_title(name: str) -> str:
    """A dataset's name as people write it ('Fashion-MNIST'), for figures and messages."""
    try:
        entry, arg = DATASETS.resolve(name)
    except ValueError:
        return name
    return entry.title if arg is None else name


def clear_cache() -> None:
    """Forget every loaded dataset (tests; a long-lived process that must re-read changed files)."""
    with _CACHE_LOCK:
        _CACHE.clear()


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


@DATASETS.register("digits", title="digits", help="scikit-learn's 8x8 digits, embedded: no download, seconds on "
                   "a CPU", model="mlp", lr=0.05, augment=False, files=False)
def _digits(arg=None, root=None, download=False) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=DIGITS_TEST_FRACTION, stratify=y,
                                              random_state=DIGITS_SPLIT_SEED)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    # A pixel blank in every training image keeps its raw value: dividing by a tiny std would turn one
    # stray test pixel into a feature of size ~60 that the net never saw.  The +1e-3 elsewhere is kept so
    # that results stay identical to earlier runs.
    std = np.where(std > 0, std + 1e-3, 1.0).astype(np.float32)
    norm = lambda a: torch.from_numpy((a - mean) / std).float()  # noqa: E731
    return Dataset("digits", 10, norm(x_tr), torch.from_numpy(y_tr), norm(x_te), torch.from_numpy(y_te),
                   [str(i) for i in range(10)])


# ---------------------------------------------------------------- torchvision sets

@DATASETS.register("mnist", title="MNIST", help="MNIST from --data-dir (torchvision layout)", model="cnn", lr=0.01,
                   augment=False)
def _mnist(arg, root: Path, download: bool) -> Dataset:
    return _idx_dataset("mnist", root, download)


@DATASETS.register("fashion-mnist", title="Fashion-MNIST", help="Fashion-MNIST from --data-dir (torchvision "
                   "layout), else from Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)",
                   model="cnn", lr=0.01, augment=False)
def _fashion_mnist(arg, root: Path, download: bool) -> Dataset:
    return _idx_dataset("fashion-mnist", root, download)


@DATASETS.register("cifar10", title="CIFAR-10", help="CIFAR-10 python version from --data-dir", model="resnet18",
                   lr=0.01, augment=True)
def _cifar10(arg, root: Path, download: bool) -> Dataset:
    return _torchvision("cifar10", root, download)


@DATASETS.register("cifar100", title="CIFAR-100", help="CIFAR-100 python version from --data-dir", model="resnet18",
                   lr=0.01, augment=True)
def _cifar100(arg, root: Path, download: bool) -> Dataset:
    return _torchvision("cifar100", root, download)



@functools.lru_cache(maxsize=None)
def _tv_class(name: str):
    """torchvision's class for `name`; for CIFAR, with the md5 checks replaced by "the file exists"."""
    import torchvision.datasets as tvd

    if name == "mnist":
        return tvd.MNIST
    if name == "fashion-mnist":
        return tvd.FashionMNIST
    base = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100

    def __init__(self, root: str, train: bool = True) -> None:  # torchvision's, with _load_pickle
        tvd.VisionDataset.__init__(self, root)
        self.train = train
        if not self._check_integrity():
            raise RuntimeError("Dataset not found")
        folder = os.path.join(self.root, self.base_folder)
        entries = [_load_pickle(os.path.join(folder, f)) for f, _ in (self.train_list if train else self.test_list)]
        self.data = np.vstack([e["data"] for e in entries]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self.targets = [t for e in entries for t in (e["labels"] if "labels" in e else e["fine_labels"])]
        self._load_meta()

    def _check_integrity(self) -> bool:  # torchvision: md5 of each official file; here: each file exists
        folder = os.path.join(self.root, self.base_folder)
        return all(os.path.isfile(os.path.join(folder, f)) for f, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:  # torchvision's, minus the md5 check of the meta file
        self.classes = _load_pickle(os.path.join(self.root, self.base_folder, self.meta["filename"]))[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return type(f"Local{base.__name__}", (base,), {"__init__": __init__, "_check_integrity": _check_integrity,
                                                    "_load_meta": _load_meta})


def _load_pickle(path: str):
    """A CIFAR pickle (python 2's or a re-pack's, any protocol) read without running code from the file: only
    plain containers, str, bytes, numbers and numpy arrays come out; anything else raises UnpicklingError."""
    with open(path, "rb") as fh:
        try:
            return _CifarUnpickler(fh, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"{os.path.basename(path)}: {e}") from None


def _numpy_rebuilders() -> dict[tuple[str, str], object]:
    """The functions numpy's own pickles call to rebuild arrays, dtypes and scalars, under the module names that
    numpy 1 and numpy 2 write, taken from numpy itself (numpy.core is deprecated under numpy 2)."""
    arr, num = np.zeros(1, np.uint8), np.float64(0)
    found = {"_reconstruct": arr.__reduce__()[0], "_frombuffer": arr.__reduce_ex__(5)[0],
             "scalar": num.__reduce__()[0]}
    table: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = found["_reconstruct"]
        table[(f"{core}.multiarray", "scalar")] = found["scalar"]
        table[(f"{core}.numeric", "_frombuffer")] = found["_frombuffer"]
    return table


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What python 3 pickles of bytes at protocols 0-2 call (`_codecs.encode(text, 'latin1')`), and no other codec."""
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError("a bytes value with an unexpected codec")
    return text.encode("latin-1")


class _CifarUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose every global is looked up in a fixed table: a file that names anything else
    (os.system, builtins.eval, a class with a __reduce__) is refused before any of it runs."""

    _ALLOWED: dict[tuple[str, str], object] = {}

    def find_class(self, module: str, name: str):
        if not self._ALLOWED:
            table = _numpy_rebuilders()
            for builtins in ("builtins", "__builtin__"):  # python 2 pickles name the module __builtin__
                for kind in (set, frozenset, bytearray, bytes, complex):
                    table[(builtins, kind.__name__)] = kind
            table[("_codecs", "encode")] = _latin1_bytes
            type(self)._ALLOWED = table
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"asks to run {module}.{name}; a dataset file holds only data") from None


def _required_files(name: str) -> list[str]:
    if name in ("mnist", "fashion-mnist"):
        return list(_MNIST_FILES)
    cls = _tv_class(name)
    return [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def _missing_files(name: str, root: Path) -> list[str]:
    folder = root / _FOLDER[name]
    if name in ("mnist", "fashion-mnist"):
        processed = folder.parent / "processed"
        if (processed / "training.pt").is_file() and (processed / "test.pt").is_file():
            return []  # torchvision's legacy layout, which it still reads
        return [f for f in _MNIST_FILES if not (folder / f).is_file() and not (folder / f"{f}.gz").is_file()]
    return [f for f in _required_files(name) if not (folder / f).is_file()]


def _download(name: str, root: Path) -> None:
    """Fetch what is missing with torchvision's own downloader (md5-checked archives)."""
    from torchvision.datasets.vision import VisionDataset

    cls = _tv_class(name)
    fetcher = cls.__new__(cls)
    VisionDataset.__init__(fetcher, str(root))
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetcher.download()
    except Exception as e:  # noqa: BLE001 - no network, a proxy, a full disk: one message for the user
        raise DataError(f"could not download {DATASETS[name].title} into {root / _FOLDER[name]} ({_brief(e)}): "
                        f"check the internet connection, or put the files there by hand and drop --download") from None


def _torchvision(name: str, root: Path, download: bool) -> Dataset:
    title, folder = DATASETS[name].title, root / _FOLDER[name]
    if download and _missing_files(name, root):
        _download(name, root)
    missing = _missing_files(name, root)
    if missing and not folder.is_dir():
        what = ("the python version of the dataset (what cifar-10-python.tar.gz unpacks to)" if name == "cifar10"
                else "the python version of the dataset (what cifar-100-python.tar.gz unpacks to)"
                if name == "cifar100" else f"the raw files {', '.join(_MNIST_FILES)} (or their .gz)")
        raise DataError(f"{title} not found under {folder}: put {what} there, point --data-dir at the folder "
                        f"that holds {_FOLDER[name].split('/')[0]}, or pass --download")
    if missing:
        raise DataError(f"{title} under {folder} lacks {', '.join(missing)}: put the complete dataset there "
                        f"or pass --download")
    cls = _tv_class(name)
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
        xs = [_images(name, ds.data) for ds in (train, test)]
        ys = [torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64).reshape(-1) for ds in (train, test)]
        classes = [str(c) for c in train.classes]
    except Exception as e:  # noqa: BLE001 - torchvision's many ways of failing mean one thing to a user
        raise DataError(_corrupt(title, folder, _brief(e))) from None
    k = _NUM_CLASSES[name]
    if len(classes) != k:
        raise DataError(_corrupt(title, folder, f"{len(classes)} class names, expected {k}"))
    for x, y, split in zip(xs, ys, ("train", "test")):
        if len(x) == 0 or len(x) != len(y):
            raise DataError(_corrupt(title, folder, f"the {split} split has {len(x)} images and {len(y)} labels"))
        if int(y.min()) < 0 or int(y.max()) >= k:
            raise DataError(_corrupt(title, folder, f"{split} labels outside [0, {k})"))
    return Dataset(name, k, xs[0], ys[0], xs[1], ys[1], classes)


# ---------------------------------------------------------------- MNIST and Fashion-MNIST: idx files, raw or .gz

def _idx_files(folder: Path) -> dict[str, Path]:
    """The idx files present in `folder`, by their raw name: the raw file, else its .gz."""
    found = {}
    for f in _MNIST_FILES:
        for candidate in (folder / f, folder / f"{f}.gz"):
            if candidate.is_file():
                found[f] = candidate
                break
    return found


def _idx_dataset(name: str, root: Path, download: bool) -> Dataset:
    """MNIST / Fashion-MNIST: root's torchvision layout, then the system folder, then --download (see the module
    docstring); the idx files are parsed in memory, never unpacked to disk."""
    title, folder = DATASETS[name].title, root / _FOLDER[name]
    found = _idx_files(folder)
    if not found and _missing_files(name, root) == []:
        return _torchvision(name, root, False)  # only torchvision's legacy processed/*.pt are there
    system, package = SYSTEM_DIRS.get(name, (None, None))
    if not found and system is not None:
        from_system = _idx_files(system)
        if len(from_system) == len(_MNIST_FILES):
            return _read_idx_set(name, system, from_system, fix=f"reinstall the package (apt-get install "
                                                                f"--reinstall {package}) or pass --data-dir")
    if len(found) < len(_MNIST_FILES) and download:
        _download(name, root)
        found = _idx_files(folder)
    missing = [f for f in _MNIST_FILES if f not in found]
    if missing and not found:
        also = (f" nor in {system} (apt-get install {package} puts it there)" if system is not None else "")
        raise DataError(f"{title} not found under {folder}{also}: put the raw files {', '.join(_MNIST_FILES)} (or "
                        f"their .gz) there, point --data-dir at the folder that holds {_FOLDER[name].split('/')[0]}, "
                        f"or pass --download")
    if missing:
        raise DataError(f"{title} under {folder} lacks {', '.join(missing)}: put the complete dataset there "
                        f"or pass --download")
    return _read_idx_set(name, folder, found, fix="replace the folder with a fresh copy, or delete it and pass "
                                                  "--download")


def _read_idx_set(name: str, folder: Path, files: dict[str, Path], fix: str) -> Dataset:
    title, k = DATASETS[name].title, _NUM_CLASSES[name]

    def bad(detail: str) -> DataError:
        return DataError(f"{title} under {folder} is corrupt ({detail}): {fix}")

    arrays = {}
    for f, path in files.items():
        try:
            arrays[f] = _read_idx(path, images="images" in f)
        except DataError as e:
            raise bad(f"{path.name}: {e}") from None
        except Exception as e:  # noqa: BLE001 - a truncated or damaged .gz: one line
            raise bad(f"{path.name}: {_brief(e)}") from None
    xs, ys = [], []
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        if len(images) == 0 or len(images) != len(labels):
            raise bad(f"{split}: {len(images)} images but {len(labels)} labels")
        if int(labels.max()) >= k:
            raise bad(f"{split}-labels-idx1-ubyte: label {int(labels.max())} outside 0..{k - 1}")
        xs.append(_images(name, images))
        ys.append(torch.from_numpy(labels.astype(np.int64)))
    return Dataset(name, k, xs[0], ys[0], xs[1], ys[1], list(_IDX_CLASSES[name]), source=str(folder))


def _read_idx(path: Path, images: bool) -> np.ndarray:
    """One idx-ubyte file (raw, or .gz decompressed in memory) as uint8: images (N, 28, 28), labels (N,).
    Raises DataError for a wrong magic number, shape or byte count."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    want_magic, ndim = (0x803, 3) if images else (0x801, 1)
    what = "images" if images else "labels"
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{len(raw)} bytes, too short for an idx header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != want_magic:
        raise DataError(f"magic number 0x{magic:08x}, expected 0x{want_magic:08x} (idx {what}, unsigned bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if images and dims[1:] != (28, 28):
        raise DataError(f"images of {dims[1]}x{dims[2]} pixels, expected 28x28")
    body = len(raw) - 4 - 4 * ndim
    if body != math.prod(dims):
        raise DataError(f"{body} bytes of {what} data for {' x '.join(map(str, dims))} = {math.prod(dims)}: "
                        f"{'truncated' if body < math.prod(dims) else 'trailing bytes'}")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def _images(name: str, data) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1], normalised per channel."""
    data = torch.as_tensor(np.asarray(data))
    if data.dtype != torch.uint8 or tuple(data.shape[1:]) != _IMAGE_SHAPE[name]:
        raise ValueError(f"images are {tuple(data.shape)} {data.dtype}, expected (N, "
                        f"{', '.join(map(str, _IMAGE_SHAPE[name]))}) uint8")
    data = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in _STATS[name])
    return data.contiguous().float().div_(255.0).sub_(mean).div_(std)


# ---------------------------------------------------------------- a user's own data: folder:, npz:, py:

def _user_model(input_shape) -> str:
    """The default network for a user's data: the small CNN for images, the MLP for vectors."""
    return "cnn" if input_shape is not None and len(input_shape) == 3 else "mlp"


def _check_py_data(arg: str) -> None:
    check_ref(arg, "dataset", DataError)


@DATASETS.register("folder", prefix=True, form="folder:PATH", title="image folder", files="arg", resizes=True,
                   help="your images, one sub-folder per class (ImageFolder layout; train/ and test/ optional)",
                   model=_user_model, lr=0.01, augment=False)
def _folder(arg: str, root: Path, download: bool, image_size: int | None = None) -> Dataset:
    name, top = f"folder:{arg}", Path(arg).expanduser()
    if not top.is_dir():
        raise DataError(f"image folder {top} not found: give a folder with one sub-folder of images per class "
                        f"(or train/ and test/ folders of those)")
    if (top / "train").is_dir():
        train_dir, test_dir = top / "train", (top / "test" if (top / "test").is_dir() else None)
    elif (top / "test").is_dir():
        raise DataError(f"image folder {top} has test/ but no train/: put the training class folders under "
                        f"{top / 'train'}")
    else:
        train_dir, test_dir = top, None
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"image folder {train_dir} has {len(classes)} class sub-folder(s): put each class's images "
                        f"in a sub-folder named for the class (at least 2 classes)")
    train_files, train_y = _image_files(train_dir, classes, empty_ok=False)
    test_files, test_y = [], []
    if test_dir is not None:
        strays = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and p.name not in classes)
        if strays:
            raise DataError(f"{test_dir / strays[0]} is not a class of {train_dir} ({', '.join(classes[:5])}"
                            f"{', ...' if len(classes) > 5 else ''}): name test sub-folders as the training ones")
        test_files, test_y = _image_files(test_dir, classes, empty_ok=True)
        if not test_files:
            raise DataError(f"{test_dir} holds no images in class sub-folders; add them, or remove test/ to hold out "
                            f"{FOLDER_TEST_FRACTION:.0%} of each class instead")
    files = train_files + test_files
    sizes, modes = _image_headers(files)
    grey = all(m in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") for m in modes)
    if image_size is None and len(set(sizes)) > 1:
        first = sizes[0]
        other = next(i for i, s in enumerate(sizes) if s != first)
        raise DataError(f"images in {top} have different sizes ({files[0]} is {first[0]}x{first[1]}, {files[other]} "
                        f"is {sizes[other][0]}x{sizes[other][1]}): set image_size (e.g. --image-size 32) to resize "
                        f"them all")
    w, h = (image_size, image_size) if image_size is not None else sizes[0]
    channels = 1 if grey else 3
    _check_budget(name, len(files), channels * w * h, "set a smaller image_size or use fewer images")
    pixels = np.stack([_decode(f, "L" if grey else "RGB", image_size) for f in files])  # (N, H, W[, 3]) uint8
    if grey:
        pixels = pixels[:, None]
    else:
        pixels = pixels.transpose(0, 3, 1, 2)
    y = np.asarray(train_y + test_y, dtype=np.int64)
    n_train = len(train_files)
    if test_dir is not None:
        train_idx, test_idx = np.arange(n_train), np.arange(n_train, len(files))
    else:
        train_idx, test_idx = _hold_out(y, FOLDER_TEST_FRACTION, FOLDER_SPLIT_SEED)
    x_train, x_test = _standardise(pixels[train_idx], pixels[test_idx])
    return Dataset(name, len(classes), x_train, torch.from_numpy(y[train_idx]), x_test,
                   torch.from_numpy(y[test_idx]), classes, train_labels_clean=False,
                   test_labels_clean=test_dir is not None, source=str(top))


def _image_files(folder: Path, classes: list[str], empty_ok: bool) -> tuple[list[Path], list[int]]:
    """The image files under each class sub-folder of `folder` (any depth, sorted; hidden names skipped)."""
    files, labels = [], []
    for c, cls in enumerate(classes):
        sub = folder / cls
        found = []
        if sub.is_dir():
            for dirpath, dirnames, filenames in os.walk(sub, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [Path(dirpath) / f for f in sorted(filenames)
                          if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found and not empty_ok:
            raise DataError(f"class folder {sub} holds no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...): add its "
                            f"images, or remove the folder")
        files += found
        labels += [c] * len(found)
    return files, labels


def _image_headers(files: list[Path]) -> tuple[list[tuple[int, int]], list[str]]:
    """(width, height) and mode of every image, from the file headers (no pixels decoded yet)."""
    from PIL import Image

    sizes, modes = [], []
    for f in files:
        try:
            with Image.open(f) as im:
                sizes.append(im.size)
                modes.append(im.mode)
        except Exception as e:  # noqa: BLE001 - not an image, or a damaged one: name the file
            raise DataError(f"cannot read image {f} ({_brief(e)}): replace or delete the file") from None
    return sizes, modes


def _decode(path: Path, mode: str, size: int | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - a truncated or damaged image: name the file
        raise DataError(f"cannot read image {path} ({_brief(e)}): replace or delete the file") from None


def _hold_out(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices, sorted: round(n_c * fraction) of each class drawn with `seed` go to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@DATASETS.register("npz", prefix=True, form="npz:PATH", title="npz arrays", files="arg",
                   help="your arrays in a .npz: x_train, y_train [, x_test, y_test, y_train_clean, classes]",
                   model=_user_model, lr=0.01, augment=False)
def _npz(arg: str, root: Path, download: bool) -> Dataset:
    name, path = f"npz:{arg}", Path(arg).expanduser()
    if not path.is_file():
        raise DataError(f"npz file {path} not found: give the path of a file written with numpy.savez(PATH, "
                        f"x_train=..., y_train=..., x_test=..., y_test=...)")
    shapes = _npz_shapes(path)
    unknown = sorted(set(shapes) - set(_USER_ARRAYS))
    if unknown:
        raise DataError(f"npz file {path} holds an array {unknown[0]!r} that dal-search does not read; its arrays "
                        f"are {', '.join(_USER_ARRAYS)} (rename or drop the others)")
    if shapes.get("x_train"):  # before reading a byte of the arrays: a compressed member can be huge unpacked
        n = shapes["x_train"][0] + (shapes["x_test"][0] if shapes.get("x_test") else 0)
        _check_budget(name, n, math.prod(shapes["x_train"][1:]), "use fewer or smaller samples")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - pickled objects, a damaged member: one line
        raise DataError(f"npz file {path} cannot be read ({_brief(e)}): save plain arrays with numpy.savez "
                        f"(no Python objects)") from None
    return _from_arrays(name, arrays, f"npz file {path}", str(path))


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each member's shape, read from the .npy headers inside the zip (no array data is read)."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)(fh)
                shapes[info.filename[:-4]] = tuple(header[0])
    except Exception as e:  # noqa: BLE001 - not a zip, or a damaged one
        raise DataError(f"npz file {path} cannot be read as a .npz ({_brief(e)}): write it with numpy.savez") from None
    return shapes


@DATASETS.register("py", prefix=True, form="py:MODULE:FUNCTION", title="Python data", files=False,
                   check=_check_py_data, model=_user_model, lr=0.01, augment=False,
                   help="your function returning x_train, y_train [, x_test, y_test, y_train_clean] (dict or tuple), "
                        "importable from PYTHONPATH")
def _py(arg: str, root: Path, download: bool) -> Dataset:
    fn = import_ref(arg, "dataset", DataError)
    where = f"dataset 'py:{arg}'"
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - the user's function failed: one line naming it
        raise DataError(f"{where}: the function raised {_brief(e)}; fix it (it is called with no arguments)") from None
    if isinstance(out, (tuple, list)) and 2 <= len(out) <= 5:
        out = dict(zip(_USER_ARRAYS, out))
    if not isinstance(out, Mapping):
        raise DataError(f"{where} returned a {type(out).__name__}; return a dict with x_train, y_train (and "
                        f"optionally x_test, y_test, y_train_clean, classes) or a tuple (x_train, y_train, x_test, "
                        f"y_test)")
    unknown = sorted(str(k) for k in set(out) - set(_USER_ARRAYS))
    if unknown:
        raise DataError(f"{where} returned a key {unknown[0]!r} that dal-search does not read; the keys are "
                        f"{', '.join(_USER_ARRAYS)}")
    arrays = {k: _as_numpy(v) for k, v in out.items() if v is not None}
    return _from_arrays(f"py:{arg}", arrays, where, f"py:{arg}")


def _as_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor, possibly on a GPU
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _from_arrays(name: str, a: dict[str, np.ndarray], where: str, source: str) -> Dataset:
    """A Dataset from a user's arrays (see the module docstring), every shape, dtype and label checked."""
    for key in ("x_train", "y_train"):
        if key not in a:
            raise DataError(f"{where} has no {key}; give x_train and y_train (x_test, y_test, y_train_clean and "
                            f"classes are optional)")
    if "y_test" in a and "x_test" not in a:
        raise DataError(f"{where} has y_test but no x_test; give the test images too, or drop y_test")
    x_train = a["x_train"]
    if x_train.ndim not in (2, 3, 4) or len(x_train) == 0:
        raise DataError(f"{where}: x_train has shape {x_train.shape}; give (N, D) vectors, (N, H, W) greyscale or "
                        f"(N, C, H, W) / (N, H, W, C) images, N >= 1")
    x_test = a.get("x_test")
    if x_test is not None and (x_test.ndim != x_train.ndim or x_test.shape[1:] != x_train.shape[1:]):
        raise DataError(f"{where}: x_test has shape {x_test.shape} but x_train {x_train.shape}; one sample must have "
                        f"the same shape in both")
    n_test = 0 if x_test is None else len(x_test)
    _check_budget(name, len(x_train) + n_test, math.prod(x_train.shape[1:]), "use fewer or smaller samples")
    for key in ("x_train", "x_test"):
        if key in a and (a[key].dtype.kind not in "uif" or not np.isfinite(a[key]).all()):
            raise DataError(f"{where}: {key} must hold finite numbers, found dtype {a[key].dtype}"
                            + ("" if a[key].dtype.kind not in "uif" else " with NaN or infinity"))
    names = None
    if "classes" in a:
        names = [str(c) for c in np.asarray(a["classes"]).reshape(-1)]
    y_train = _user_labels(a["y_train"], "y_train", len(x_train), where)
    k = len(names) if names is not None else int(y_train.max()) + 1
    if k < 2:
        raise DataError(f"{where}: {k} class; label noise and classification need at least 2 classes (0..K-1)")
    labels = {"y_train": y_train}
    for key, n in (("y_train_clean", len(x_train)), ("y_test", n_test)):
        if key in a:
            labels[key] = _user_labels(a[key], key, n, where)
    for key, y in labels.items():
        if len(y) and (y.min() < 0 or y.max() >= k):
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise DataError(f"{where}: {key} holds label {bad}, outside 0..{k - 1} (K = {k}"
                            f"{' from classes' if names is not None else ' from y_train'}); labels are 0..K-1")
    empty = np.flatnonzero(np.bincount(y_train, minlength=k) == 0)
    if len(empty):
        c = int(empty[0])
        label = f"class {c}" + (f" ({names[c]!r})" if names is not None else "")
        raise DataError(f"{where}: {label} has no sample in y_train; number the classes 0..K-1 without gaps"
                        + (" or drop it from classes" if names is not None else ""))
    x_train, x_test = _layout(x_train), _layout(x_test) if x_test is not None else None
    x_train_t, x_test_t = _standardise(x_train, x_test if x_test is not None else x_train[:0])
    return Dataset(name, k, x_train_t, torch.from_numpy(y_train), x_test_t,
                   torch.from_numpy(labels["y_test"]) if "y_test" in labels else None,
                   names if names is not None else [str(i) for i in range(k)],
                   train_y_clean=torch.from_numpy(labels["y_train_clean"]) if "y_train_clean" in labels else None,
                   train_labels_clean=False, test_labels_clean=True, source=source)


def _user_labels(y: np.ndarray, key: str, n: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and 1 in y.shape:
        y = y.reshape(-1)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{where}: {key} has shape {y.shape}, expected ({n},): one integer label per sample")
    if y.dtype.kind == "f" and np.isfinite(y).all() and (np.mod(y, 1) == 0).all():
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: {key} must hold integer class indices 0..K-1, found dtype {y.dtype}")
    return y.astype(np.int64)


def _layout(x: np.ndarray) -> np.ndarray:
    """(N, D) stays; (N, H, W) -> (N, 1, H, W); (N, H, W, C) -> (N, C, H, W) when the last axis is 1, 3 or 4
    and the second is not (else the array is taken as channels first already)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return x.transpose(0, 3, 1, 2)
    return x


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 tensors standardised with the training pool's mean and std: per channel for images (N, C, H, W),
    per feature for vectors (N, D); a constant channel or feature keeps std 1 (no division by ~0)."""
    tr = torch.from_numpy(np.ascontiguousarray(train)).float()
    te = torch.from_numpy(np.ascontiguousarray(test)).float()
    dims = (0, 2, 3) if tr.dim() == 4 else (0,)
    mean = tr.double().mean(dim=dims, keepdim=True)
    std = tr.double().std(dim=dims, keepdim=True, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    mean, std = mean.float(), std.float()
    return tr.sub_(mean).div_(std).contiguous(), te.sub_(mean).div_(std).contiguous()


def _check_budget(name: str, n: int, per_sample: int, fix: str) -> None:
    need = n * per_sample * 4
    if need > MEMORY_BUDGET_BYTES:
        raise DataError(f"dataset {name!r} would take {need / 2**30:.1f} GiB as float32 ({n:,} samples of "
                        f"{per_sample:,} values), over the {MEMORY_BUDGET_BYTES / 2**30:.1f} GiB budget: {fix}, or "
                        f"raise DAL_SEARCH_DATA_BUDGET_GB")


def _corrupt(title: str, folder: Path, detail: str) -> str:
    return (f"{title} under {folder} is corrupt ({detail}): replace the folder with a fresh copy, or delete it "
            f"and pass --download")


def _brief(e: Exception) -> str:
    text = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
    if isinstance(e, DataError):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


__all__ = ["Dataset", "DataError", "load_dataset", "split_train_val", "subset_indices", "has_clean_test_labels",
           "clear_cache", "dataset_title", "DATASETS", "MEMORY_BUDGET_BYTES", "SYSTEM_DIRS"]
