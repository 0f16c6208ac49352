"""Datasets as normalised tensors: the embedded `digits`, and MNIST, Fashion-MNIST, CIFAR-10/100 read by
torchvision from a local folder (downloaded only when asked).

Labels here are always the clean ones; the trainer draws the label noise.

- `digits`: scikit-learn's bundled 8x8 digits (1,797 images, no download), as (N, 64) pixels scaled to [0, 1]
  and then standardised per pixel with the training pool's mean and std.  It is split ONCE, stratified with a
  fixed seed (0), into an 80 % training pool and a 20 % test set, so every run and every seed is scored on
  the same 360 clean test images.
- the torchvision sets keep their official train/test split, as (N, C, H, W) float32 normalised with the
  usual per-channel mean and std.  They are read through torchvision's own classes, from their `.data` and
  `.targets` arrays (no PIL images), so the on-disk formats are exactly torchvision's:
      root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
      root/cifar-100-python/{train, test, meta}
      root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte         (.gz alone is unpacked here once)
      root/FashionMNIST/raw/...                                          (the same names)
- CIFAR integrity: torchvision checks the md5 of every official file on each load; here a file counts as
  present when it exists, and its content is then checked (unpickling, uint8 images of the right shape, as
  many labels as images, labels in range, K class names), so a re-packed copy loads too.  `--download`
  still fetches the md5-checked official archive when files are missing.  The pickles are read by a restricted
  unpickler that admits only plain containers, str, bytes, numbers and numpy arrays: a crafted file that
  would run code on loading is refused as corrupt, and nothing of it runs.
- A process keeps what it loaded, keyed by (name, resolved root): a worker running many trials reads each
  dataset once.  The cached tensors are shared between callers: treat them as read-only.

Everything a user can get wrong (unknown name, missing folder or file, corrupt file, failed download) raises
`DataError`: one line naming the folder and the fix, never torchvision's traceback.

Example:
    >>> d = load_dataset("digits")
    >>> d.input_shape, d.num_classes, len(d.train_y), len(d.test_y)
    ((64,), 10, 1437, 360)
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dal_search.objectives.registry import Registry

# Every dataset, in the order lists show them. An entry is a loader `fn(arg, root, download) -> Dataset` (arg is
# the text after the prefix for a prefix entry such as `npz:PATH`, else None) and records what a TrainConfig
# resolves from the dataset: `model` (the default network: a name, or a function of the input shape),
# `lr` (the default learning rate) and `augment` (random crop + flip by default), and `files` (whether it
# reads files under data_dir, so the cache key includes the folder).
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
    """One dataset in memory.  `train_y` and `test_y` are the clean labels (int64)."""

    name: str
    num_classes: int
    train_x: torch.Tensor  # float32, normalised; (N, C, H, W) images, or (N, 64) for digits
    train_y: torch.Tensor  # int64, clean
    test_x: torch.Tensor
    test_y: torch.Tensor  # int64, clean
    classes: list[str]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, without the batch axis: (64,), (1, 28, 28) or (3, 32, 32)."""
        return tuple(self.train_x.shape[1:])


def load_dataset(name: str, root: str | Path = "./data", download: bool = False) -> Dataset:
    """The dataset `name` (see DATASETS) from `root`, loaded once per process and then served from memory."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {DATASETS.choices()}")
    entry, arg = DATASETS.resolve(name)
    key = (name, str(Path(root).expanduser().resolve()) if entry.get("files", True) else "")
    with _CACHE_LOCK:  # one load per key even when threads of one worker ask at once
        if key not in _CACHE:
            _CACHE[key] = entry.obj(arg, Path(key[1] or root), download)
        return _CACHE[key]


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
    return _torchvision("mnist", root, download)


@DATASETS.register("fashion-mnist", title="Fashion-MNIST", help="Fashion-MNIST from --data-dir (torchvision layout)",
                   model="cnn", lr=0.01, augment=False)
def _fashion_mnist(arg, root: Path, download: bool) -> Dataset:
    return _torchvision("fashion-mnist", root, download)


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


def _unpack_gz(title: str, folder: Path) -> None:
    """MNIST files shipped as .gz only: unpack them next to the archive, as torchvision's download would."""
    for f in _MNIST_FILES:
        target, packed = folder / f, folder / f"{f}.gz"
        if target.is_file() or not packed.is_file():
            continue
        tmp = folder / f".{f}.{os.getpid()}.tmp"
        try:
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)  # atomic: a worker beside this one never reads half a file
        except Exception as e:  # noqa: BLE001
            tmp.unlink(missing_ok=True)
            raise DataError(f"{title} under {folder}: {packed.name} cannot be unpacked "
                            f"({_brief(e)}); replace it with a fresh copy or pass --download") from None


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
    if name in ("mnist", "fashion-mnist"):
        _unpack_gz(title, folder)
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


def _images(name: str, data) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1], normalised per channel."""
    data = torch.as_tensor(np.asarray(data))
    if data.dtype != torch.uint8 or tuple(data.shape[1:]) != _IMAGE_SHAPE[name]:
        raise ValueError(f"images are {tuple(data.shape)} {data.dtype}, expected (N, "
                        f"{', '.join(map(str, _IMAGE_SHAPE[name]))}) uint8")
    data = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in _STATS[name])
    return data.contiguous().float().div_(255.0).sub_(mean).div_(std)


def _corrupt(title: str, folder: Path, detail: str) -> str:
    return (f"{title} under {folder} is corrupt ({detail}): replace the folder with a fresh copy, or delete it "
            f"and pass --download")


def _brief(e: Exception) -> str:
    text = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
    if isinstance(e, DataError):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


__all__ = ["Dataset", "DataError", "load_dataset", "split_train_val", "clear_cache", "dataset_title", "DATASETS"]
