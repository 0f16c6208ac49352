"""Datasets as normalised tensors: the embedded `digits` and torchvision's MNIST, Fashion-MNIST, CIFAR-10/100
read from a local folder (downloaded only when asked).

Labels here are always the clean ones; the trainer draws the label noise. `digits` (scikit-learn's bundled
8x8 digits, 1,797 images) is split once, stratified with a fixed seed, into an 80 % training pool and a 20 %
test set, so every run and every seed is scored on the same clean test images. The torchvision sets keep
their official train/test split. A process keeps what it loaded, so a worker running many trials reads
each dataset once.

Missing or unreadable files raise `DataError`: one line naming the folder and the fix, never torchvision's
traceback. CIFAR files are checked by existence and then by content (unpickling, shapes, label ranges)
rather than by the official md5s, so converted or re-packed copies load too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_FOLDERS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py",
            "cifar100": "cifar-100-python"}
_CACHE: dict[tuple[str, str], "Dataset"] = {}


class DataError(ValueError):
    """A dataset cannot be loaded; the message is one line naming the folder and the fix."""


@dataclass
class Dataset:
    name: str
    num_classes: int
    train_x: torch.Tensor  # float32, normalised; (N, C, H, W) images or (N, 64) for digits
    train_y: torch.Tensor  # int64, clean
    test_x: torch.Tensor
    test_y: torch.Tensor  # int64, clean
    classes: list[str]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def load_dataset(name: str, root: str | Path = "./data", download: bool = False) -> Dataset:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    key = (name, str(Path(root).resolve()) if name != "digits" else "")
    if key not in _CACHE:
        _CACHE[key] = _digits() if name == "digits" else _torchvision(name, Path(root), download)
    return _CACHE[key]


def split_train_val(labels, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (by `labels`) random split of indices into train and validation, deterministic."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed + 7919)  # not the noise stream of the same seed
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-3
    norm = lambda a: torch.from_numpy((a - mean) / std).float()  # noqa: E731
    return Dataset("digits", 10, norm(x_tr), torch.from_numpy(y_tr), norm(x_te), torch.from_numpy(y_te),
                   [str(i) for i in range(10)])


def _torchvision(name: str, root: Path, download: bool) -> Dataset:
    folder = root / _FOLDERS[name]
    if not download and not folder.is_dir():
        raise DataError(f"{name} not found: expected the torchvision files under {folder}; put them there, "
                        f"pass --data-dir to their folder, or --download on a machine with internet")
    try:
        train, test = (_tv_dataset(name, root, t, download) for t in (True, False))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - torchvision's many ways of failing mean one thing to a user
        raise DataError(f"{name} under {folder} is missing files or corrupt ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else ''}); replace the folder with a fresh "
                        f"copy or pass --download") from None
    mean, std = _STATS[name]
    xs = []
    for ds in (train, test):
        data = torch.as_tensor(np.asarray(ds.data))
        if data.dim() == 3:  # (N, H, W) grey
            data = data.unsqueeze(1)
        else:  # CIFAR (N, H, W, C)
            data = data.permute(0, 3, 1, 2)
        x = data.float().div_(255.0)
        x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        xs.append(x.contiguous())
    ys = [torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64) for ds in (train, test)]
    k = len(train.classes)
    for y, split in zip(ys, ("train", "test")):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise DataError(f"{name} under {folder}: {split} labels outside [0, {k}); the files are corrupt")
    for x, y, split in zip(xs, ys, ("train", "test")):
        if len(x) != len(y) or len(x) == 0:
            raise DataError(f"{name} under {folder}: {split} split has {len(x)} images and {len(y)} labels; "
                            f"the files are corrupt")
    return Dataset(name, k, xs[0], ys[0], xs[1], ys[1], list(map(str, train.classes)))


def _tv_dataset(name: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tvd

    if name == "mnist":
        return tvd.MNIST(str(root), train=train, download=download)
    if name == "fashion-mnist":
        return tvd.FashionMNIST(str(root), train=train, download=download)
    base = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    cls = type(f"_Local{base.__name__}", (base,), {"_check_integrity": _files_exist, "_load_meta": _load_meta})
    return cls(str(root), train=train, download=download)


def _files_exist(self) -> bool:
    base = Path(self.root) / self.base_folder
    missing = [f for f, _ in self.train_list + self.test_list if not (base / f).is_file()]
    if missing:
        raise DataError(f"{base} lacks {', '.join(missing)}; put the complete python version of the dataset "
                        f"there or pass --download")
    return True


def _load_meta(self) -> None:
    import pickle

    path = Path(self.root) / self.base_folder / self.meta["filename"]
    if not path.is_file():
        raise DataError(f"{path} is missing; put the complete python version of the dataset there")
    with open(path, "rb") as fh:
        data = pickle.load(fh, encoding="latin1")
    self.classes = data[self.meta["key"]]
    self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
