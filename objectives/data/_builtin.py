"""The built-in datasets, in the order lists show them: the embedded `digits`, then the torchvision sets.

`digits` is scikit-learn's bundled 8x8 digits (1,797 images, no download), as (N, 64) pixels scaled to [0, 1]
and standardised per pixel with the training pool's mean and std. It is split ONCE, stratified with a fixed
seed, into an 80 % training pool and a 20 % test set: every run and every seed is scored on the same 360 clean
test images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dal_search.objectives.data._dataset import DATASETS, Dataset
from dal_search.objectives.data._idx import load_idx
from dal_search.objectives.data._torchvision import load_torchvision

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


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


@DATASETS.register("mnist", title="MNIST", help="MNIST from --data-dir (torchvision layout)", model="cnn", lr=0.01,
                   augment=False)
def _mnist(arg, root: Path, download: bool) -> Dataset:
    return load_idx("mnist", root, download)


@DATASETS.register("fashion-mnist", title="Fashion-MNIST", help="Fashion-MNIST from --data-dir (torchvision "
                   "layout), else from Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)",
                   model="cnn", lr=0.01, augment=False)
def _fashion_mnist(arg, root: Path, download: bool) -> Dataset:
    return load_idx("fashion-mnist", root, download)


@DATASETS.register("cifar10", title="CIFAR-10", help="CIFAR-10 python version from --data-dir", model="resnet18",
                   lr=0.01, augment=True)
def _cifar10(arg, root: Path, download: bool) -> Dataset:
    return load_torchvision("cifar10", root, download)


@DATASETS.register("cifar100", title="CIFAR-100", help="CIFAR-100 python version from --data-dir", model="resnet18",
                   lr=0.01, augment=True)
def _cifar100(arg, root: Path, download: bool) -> Dataset:
    return load_torchvision("cifar100", root, download)
