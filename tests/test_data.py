"""Datasets: the embedded digits, and torchvision's real CIFAR/MNIST readers on small files written here."""

import pickle

import numpy as np
import pytest
import torch

from objectives import data as data_mod
from objectives.data import DataError, load_dataset, split_train_val


@pytest.fixture(autouse=True)
def fresh_cache():
    data_mod._CACHE.clear()
    yield
    data_mod._CACHE.clear()


def test_digits_fixed_stratified_split():
    d = load_dataset("digits")
    assert d.num_classes == 10 and d.input_shape == (64,)
    assert len(d.train_y) + len(d.test_y) == 1797 and len(d.test_y) == 360
    counts = np.bincount(d.test_y.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    d2 = (data_mod._CACHE.clear(), load_dataset("digits"))[1]
    assert torch.equal(d.test_x, d2.test_x)
    assert abs(float(d.train_x.mean())) < 1e-3


def test_split_train_val_is_stratified_and_deterministic():
    y = np.repeat(np.arange(5), 100)
    tr, va = split_train_val(y, 0.2, seed=3)
    assert len(va) == 100 and np.all(np.bincount(y[va]) == 20)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == 500
    assert np.array_equal(va, split_train_val(y, 0.2, seed=3)[1])


def _write_cifar(root, name="cifar10", n_train=20, n_test=10, corrupt=False):
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, files, key, meta, k = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "labels", ("batches.meta", "label_names"), 10
        test_files = ["test_batch"]
    else:
        folder, files, key, meta, k = root / "cifar-100-python", ["train"], "fine_labels", ("meta", "fine_label_names"), 100
        test_files = ["test"]
    folder.mkdir(parents=True)
    for f in files + test_files:
        n = n_test if f in test_files else n_train
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: list(rng.integers(0, k, n))}
        with open(folder / f, "wb") as fh:
            pickle.dump(entry, fh)
    with open(folder / meta[0], "wb") as fh:
        pickle.dump({meta[1]: [f"c{i}" for i in range(k)]}, fh)
    if corrupt:
        (folder / files[0]).write_bytes(b"\x80\x04truncated")
    return folder


@pytest.mark.parametrize("name, k, n_train", [("cifar10", 10, 100), ("cifar100", 100, 20)])
def test_cifar_read_by_torchvision(tmp_path, name, k, n_train):
    _write_cifar(tmp_path, name)
    d = load_dataset(name, root=tmp_path)
    assert d.num_classes == k and d.input_shape == (3, 32, 32)
    assert len(d.train_y) == n_train and len(d.test_y) == 10
    assert d.train_x.dtype == torch.float32


def test_mnist_read_by_torchvision(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def idx(path, arr, magic):
        with open(path, "wb") as fh:
            fh.write(magic.to_bytes(4, "big"))
            for s in arr.shape:
                fh.write(int(s).to_bytes(4, "big"))
            fh.write(arr.astype(np.uint8).tobytes())

    for split, n in (("train", 30), ("t10k", 12)):
        idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n), 2049)
    d = load_dataset("mnist", root=tmp_path)
    assert d.input_shape == (1, 28, 28) and len(d.train_y) == 30 and len(d.test_y) == 12


def test_missing_folder_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", root=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value) and "--download" in str(e.value)


def test_missing_file_and_corrupt_file(tmp_path):
    folder = _write_cifar(tmp_path / "a")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path / "a")
    _write_cifar(tmp_path / "b", corrupt=True)
    with pytest.raises(DataError, match="corrupt"):
        load_dataset("cifar10", root=tmp_path / "b")


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")
