"""Datasets: the embedded digits, and torchvision's real CIFAR/MNIST readers on small files written here in
the exact on-disk formats torchvision reads (pickled CIFAR batches, idx-ubyte MNIST files)."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from dal_search.objectives import data as data_mod
from dal_search.objectives.data import DataError, clear_cache, load_dataset, split_train_val

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_cache()
    yield
    clear_cache()


# ---------------------------------------------------------------- digits


def test_digits_shapes_and_classes():
    d = load_dataset("digits")
    assert d.name == "digits" and d.num_classes == 10 and d.classes == [str(i) for i in range(10)]
    assert d.input_shape == (64,) and d.train_x.shape == (1437, 64) and d.test_x.shape == (360, 64)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64 and d.test_y.dtype == torch.int64
    assert set(d.train_y.tolist()) == set(range(10))


def test_digits_test_set_is_fixed_stratified_and_standardised():
    d = load_dataset("digits")
    assert np.all(np.abs(np.bincount(d.test_y.numpy(), minlength=10) - 36) <= 1)  # 20 % of ~180 per class
    clear_cache()
    again = load_dataset("digits")
    assert again is not d and torch.equal(d.test_x, again.test_x) and torch.equal(d.test_y, again.test_y)
    assert torch.equal(d.train_x, again.train_x)
    varying = d.train_x.std(dim=0) > 0
    assert d.train_x[:, varying].mean(dim=0).abs().max() < 1e-4
    stds = d.train_x[:, varying].std(dim=0, unbiased=False)  # 1, a little less for nearly blank pixels
    assert float(stds.max()) <= 1.0 + 1e-5 and float(stds.median()) > 0.98
    # a pixel blank in every training image must not blow a stray test pixel up to a huge value
    assert float(d.test_x[:, ~varying].abs().max()) <= 1.0


def test_the_cache_serves_one_load_per_name_and_root(tmp_path):
    assert load_dataset("digits") is load_dataset("digits", root=tmp_path)  # digits ignores the root
    _write_cifar(tmp_path / "a")
    _write_cifar(tmp_path / "b")
    a = load_dataset("cifar10", root=tmp_path / "a")
    assert load_dataset("cifar10", root=str(tmp_path / "a")) is a
    assert load_dataset("cifar10", root=tmp_path / "b") is not a


def test_split_train_val_is_stratified_and_deterministic():
    y = np.repeat(np.arange(5), 100)
    tr, va = split_train_val(y, 0.2, seed=3)
    assert len(va) == 100 and np.all(np.bincount(y[va]) == 20)
    assert set(tr).isdisjoint(va) and sorted(np.concatenate([tr, va])) == list(range(500))
    assert np.array_equal(va, split_train_val(y, 0.2, seed=3)[1])
    assert not np.array_equal(va, split_train_val(y, 0.2, seed=4)[1])
    with pytest.raises(DataError, match="val_fraction"):
        split_train_val(y, 1.0, seed=0)


# ---------------------------------------------------------------- CIFAR through torchvision


def _write_cifar(root, name="cifar10", n_train=20, n_test=10, seed=0):
    """The python version of CIFAR as torchvision reads it: pickled dicts whose 'data' is uint8 (n, 3072),
    each row the R, G and B planes of a 32x32 image in turn; labels a list of ints."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, test_files = root / "cifar-10-batches-py", ["test_batch"]
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        k, key, meta = 10, "labels", ("batches.meta", {"label_names": [f"c{i}" for i in range(10)],
                                                        "num_cases_per_batch": n_train, "num_vis": 3072})
    else:
        folder, train_files, test_files = root / "cifar-100-python", ["train"], ["test"]
        k, key, meta = 100, "fine_labels", ("meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                                                      "coarse_label_names": [f"s{i}" for i in range(20)]})
    folder.mkdir(parents=True)
    written = {}
    for f in train_files + test_files:
        n = n_test if f in test_files else n_train
        entry = {"batch_label": f, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 key: [int(v) for v in rng.integers(0, k, n)], "filenames": [f"{f}_{i}.png" for i in range(n)]}
        if name == "cifar100":
            entry["coarse_labels"] = [0] * n
        with open(folder / f, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
        written[f] = entry
    with open(folder / meta[0], "wb") as fh:
        pickle.dump(meta[1], fh, protocol=2)
    return folder, written


def test_cifar10_read_by_torchvision(tmp_path):
    _, written = _write_cifar(tmp_path)
    d = load_dataset("cifar10", root=tmp_path)
    assert d.num_classes == 10 and d.input_shape == (3, 32, 32) and d.classes == [f"c{i}" for i in range(10)]
    assert d.train_x.shape == (100, 3, 32, 32) and d.test_x.shape == (10, 3, 32, 32)
    assert d.train_x.dtype == torch.float32 and d.train_x.is_contiguous()
    batches = [written[f"data_batch_{i}"] for i in range(1, 6)]
    assert d.train_y.tolist() == sum((b["labels"] for b in batches), [])  # batches 1..5, in order
    assert d.test_y.tolist() == written["test_batch"]["labels"]
    # pixel (channel c, row h, column w) of image i is byte c*1024 + h*32 + w of its row, normalised
    raw = np.concatenate([b["data"] for b in batches])
    for i, c, h, w in [(0, 0, 0, 0), (7, 1, 5, 30), (99, 2, 31, 31), (42, 2, 17, 3)]:
        expected = (raw[i, c * 1024 + h * 32 + w] / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
        assert float(d.train_x[i, c, h, w]) == pytest.approx(expected, abs=1e-5)


def test_cifar100_read_by_torchvision(tmp_path):
    _, written = _write_cifar(tmp_path, "cifar100", n_train=30)
    d = load_dataset("cifar100", root=tmp_path)
    assert d.num_classes == 100 and d.input_shape == (3, 32, 32) and len(d.classes) == 100
    assert d.train_y.tolist() == written["train"]["fine_labels"]  # fine labels, not the superclasses
    assert len(d.test_y) == 10


def test_download_fetches_only_what_is_missing(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    calls = []

    def fake_download(url, root, filename=None, md5=None):  # stands in for the network
        calls.append(url)
        _write_cifar(tmp_path / "fresh")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fake_download)
    d = load_dataset("cifar10", root=tmp_path / "fresh", download=True)
    assert len(calls) == 1 and "cifar-10-python.tar.gz" in calls[0] and len(d.train_y) == 100
    _write_cifar(tmp_path / "present")
    load_dataset("cifar10", root=tmp_path / "present", download=True)
    assert len(calls) == 1  # files present: nothing fetched


def test_a_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*a, **k):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="could not download CIFAR-10 into .*cifar-10-batches-py .*name resolution"):
        load_dataset("cifar10", root=tmp_path, download=True)


# ---------------------------------------------------------------- MNIST through torchvision


def _idx(path, arr, magic):
    """An idx-ubyte file: big-endian magic (0x0803 images, 0x0801 labels), the dims, then the bytes."""
    data = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data += arr.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def _write_mnist(root, folder="MNIST", n=(30, 12), gz=False):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for split, m in zip(("train", "t10k"), n):
        images, labels = rng.integers(0, 256, (m, 28, 28)), rng.integers(0, 10, m)
        ext = ".gz" if gz else ""
        _idx(raw / f"{split}-images-idx3-ubyte{ext}", images, 2051)
        _idx(raw / f"{split}-labels-idx1-ubyte{ext}", labels, 2049)
        out[split] = (images, labels)
    return raw, out


@pytest.mark.parametrize("name, folder, mean, std", [("mnist", "MNIST", 0.1307, 0.3081),
                                                      ("fashion-mnist", "FashionMNIST", 0.2860, 0.3530)])
def test_mnist_read_by_torchvision(tmp_path, name, folder, mean, std):
    _, written = _write_mnist(tmp_path, folder)
    d = load_dataset(name, root=tmp_path)
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10 and len(d.classes) == 10
    assert len(d.train_y) == 30 and len(d.test_y) == 12
    assert d.train_y.tolist() == written["train"][1].tolist() and d.test_y.tolist() == written["t10k"][1].tolist()
    images = written["train"][0]
    assert float(d.train_x[3, 0, 10, 20]) == pytest.approx((images[3, 10, 20] / 255 - mean) / std, abs=1e-5)


def test_mnist_shipped_as_gz_only_is_unpacked(tmp_path):
    raw, written = _write_mnist(tmp_path, gz=True)
    d = load_dataset("mnist", root=tmp_path)
    assert d.test_y.tolist() == written["t10k"][1].tolist()
    assert (raw / "train-images-idx3-ubyte").is_file()


# ---------------------------------------------------------------- errors a user meets


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'svhn'; choose one of: digits, mnist"):
        load_dataset("svhn")


@pytest.mark.parametrize("name, sub", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                       ("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")])
def test_missing_folder_names_the_folder_and_the_fix(tmp_path, name, sub):
    with pytest.raises(DataError) as e:
        load_dataset(name, root=tmp_path)
    msg = str(e.value)
    assert f"not found under {tmp_path / sub}" in msg and "--download" in msg and "\n" not in msg


def test_missing_file_is_named(tmp_path):
    folder, _ = _write_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    (folder / "batches.meta").unlink()
    with pytest.raises(DataError, match=f"CIFAR-10 under {folder} lacks data_batch_3, batches.meta: .*--download"):
        load_dataset("cifar10", root=tmp_path)
    raw, _ = _write_mnist(tmp_path / "m")
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="MNIST under .* lacks t10k-labels-idx1-ubyte"):
        load_dataset("mnist", root=tmp_path / "m")


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize("damage", ["truncated_batch", "truncated_meta", "wrong_shape", "too_few_labels",
                                    "label_out_of_range", "wrong_class_names"])
def test_corrupt_cifar_is_one_clear_error(tmp_path, damage):
    folder, written = _write_cifar(tmp_path)
    entry = dict(written["data_batch_2"])
    if damage == "truncated_batch":
        _truncate(folder / "data_batch_2")
    elif damage == "truncated_meta":
        _truncate(folder / "batches.meta")
    elif damage == "wrong_shape":
        entry["data"] = entry["data"][:, :1000]
    elif damage == "too_few_labels":
        entry["labels"] = entry["labels"][:-1]
    elif damage == "label_out_of_range":
        entry["labels"] = [10] * len(entry["labels"])
    else:
        with open(folder / "batches.meta", "wb") as fh:
            pickle.dump({"label_names": ["a", "b"]}, fh)
    if damage in ("wrong_shape", "too_few_labels", "label_out_of_range"):
        with open(folder / "data_batch_2", "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", root=tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"CIFAR-10 under {folder} is corrupt (") and "fresh copy" in msg and "\n" not in msg
    # no torchvision traceback chained on
    assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)


def test_truncated_mnist_file_is_one_clear_error(tmp_path):
    raw, _ = _write_mnist(tmp_path)
    _truncate(raw / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match=f"MNIST under {raw} is corrupt .*fresh copy"):
        load_dataset("mnist", root=tmp_path)


def test_a_failed_load_is_not_cached(tmp_path):
    with pytest.raises(DataError):
        load_dataset("cifar10", root=tmp_path)
    _write_cifar(tmp_path)
    assert len(load_dataset("cifar10", root=tmp_path).train_y) == 100
    assert data_mod.Dataset.__dataclass_params__.frozen
