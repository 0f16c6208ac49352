"""MNIST, Fashion-MNIST and CIFAR-10/100 through torchvision, in its on-disk layout:

    root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    root/cifar-100-python/{train, test, meta}
    root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte       (each raw or .gz; FashionMNIST/raw alike)

Official train/test splits, as (N, C, H, W) float32 normalised with the usual per-channel mean and std. A
CIFAR file counts as present when it exists (torchvision checks md5s; a re-packed copy loads here) and its
content is then checked. The pickles are read by a restricted unpickler that admits only plain containers,
str, bytes, numbers and numpy arrays: a crafted file that would run code is refused as corrupt and nothing of
it runs. `--download` fetches torchvision's md5-checked archives.
"""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from dal_search.objectives.data._dataset import DATASETS, Dataset, DataError, brief

FOLDERS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py",
           "cifar100": "cifar-100-python"}
NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}
_IMAGE_SHAPE = {"mnist": (28, 28), "fashion-mnist": (28, 28), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3)}
_STATS = {  # per-channel mean and std of the training images, in [0, 1]
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


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
        return list(MNIST_FILES)
    cls = _tv_class(name)
    return [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def missing_files(name: str, root: Path) -> list[str]:
    """The files of `name` that `root` lacks ([] also when only torchvision's legacy processed/*.pt are there)."""
    folder = root / FOLDERS[name]
    if name in ("mnist", "fashion-mnist"):
        processed = folder.parent / "processed"
        if (processed / "training.pt").is_file() and (processed / "test.pt").is_file():
            return []  # torchvision's legacy layout, which it still reads
        return [f for f in MNIST_FILES if not (folder / f).is_file() and not (folder / f"{f}.gz").is_file()]
    return [f for f in _required_files(name) if not (folder / f).is_file()]


def download_files(name: str, root: Path) -> None:
    """Fetch what is missing with torchvision's own downloader (md5-checked archives)."""
    from torchvision.datasets.vision import VisionDataset

    cls = _tv_class(name)
    fetcher = cls.__new__(cls)
    VisionDataset.__init__(fetcher, str(root))
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetcher.download()
    except Exception as e:  # noqa: BLE001 - no network, a proxy, a full disk: one message for the user
        raise DataError(f"could not download {DATASETS[name].title} into {root / FOLDERS[name]} ({brief(e)}): "
                        f"check the internet connection, or put the files there by hand and drop --download") from None


def load_torchvision(name: str, root: Path, download: bool) -> Dataset:
    """`name` read by torchvision's classes from `root` (fetching what is missing first with `download`)."""
    title, folder = DATASETS[name].title, root / FOLDERS[name]
    if download and missing_files(name, root):
        download_files(name, root)
    missing = missing_files(name, root)
    if missing and not folder.is_dir():
        what = ("the python version of the dataset (what cifar-10-python.tar.gz unpacks to)" if name == "cifar10"
                else "the python version of the dataset (what cifar-100-python.tar.gz unpacks to)"
                if name == "cifar100" else f"the raw files {', '.join(MNIST_FILES)} (or their .gz)")
        raise DataError(f"{title} not found under {folder}: put {what} there, point --data-dir at the folder "
                        f"that holds {FOLDERS[name].split('/')[0]}, or pass --download")
    if missing:
        raise DataError(f"{title} under {folder} lacks {', '.join(missing)}: put the complete dataset there "
                        f"or pass --download")
    cls = _tv_class(name)
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
        xs = [normalise_images(name, ds.data) for ds in (train, test)]
        ys = [torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64).reshape(-1) for ds in (train, test)]
        classes = [str(c) for c in train.classes]
    except Exception as e:  # noqa: BLE001 - torchvision's many ways of failing mean one thing to a user
        raise DataError(_corrupt(title, folder, brief(e))) from None
    k = NUM_CLASSES[name]
    if len(classes) != k:
        raise DataError(_corrupt(title, folder, f"{len(classes)} class names, expected {k}"))
    for x, y, split in zip(xs, ys, ("train", "test")):
        if len(x) == 0 or len(x) != len(y):
            raise DataError(_corrupt(title, folder, f"the {split} split has {len(x)} images and {len(y)} labels"))
        if int(y.min()) < 0 or int(y.max()) >= k:
            raise DataError(_corrupt(title, folder, f"{split} labels outside [0, {k})"))
    return Dataset(name, k, xs[0], ys[0], xs[1], ys[1], classes)


def normalise_images(name: str, data) -> torch.Tensor:
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
