"""Datasets: the embedded digits, and torchvision's real CIFAR/MNIST readers on small files written here in
the exact on-disk formats torchvision reads (pickled CIFAR batches, idx-ubyte MNIST files)."""

import gzip
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

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


def test_mnist_shipped_as_gz_only_is_read_without_writing_anything(tmp_path):
    raw, written = _write_mnist(tmp_path, gz=True)
    before = sorted(p.name for p in raw.iterdir())
    d = load_dataset("mnist", root=tmp_path)
    assert d.test_y.tolist() == written["t10k"][1].tolist()
    assert d.train_y.tolist() == written["train"][1].tolist()
    assert sorted(p.name for p in raw.iterdir()) == before  # nothing unpacked beside the .gz


# ---------------------------------------------------------------- errors a user meets


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'svhn'; choose one of: digits, mnist"):
        load_dataset("svhn")


@pytest.mark.parametrize("name, sub", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                       ("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")])
def test_missing_folder_names_the_folder_and_the_fix(tmp_path, monkeypatch, name, sub):
    nowhere = tmp_path / "no-system-copy"  # as on a machine without Debian's dataset-fashion-mnist
    monkeypatch.setitem(data_mod.SYSTEM_DIRS, "fashion-mnist", (nowhere, "dataset-fashion-mnist"))
    with pytest.raises(DataError) as e:
        load_dataset(name, root=tmp_path)
    msg = str(e.value)
    assert f"not found under {tmp_path / sub}" in msg and "--download" in msg and "\n" not in msg
    if name == "fashion-mnist":
        assert f"nor in {nowhere} (apt-get install dataset-fashion-mnist puts it there)" in msg


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


# ---------------------------------------------------------------- Fashion-MNIST: --data-dir, then Debian's package


def _write_flat(folder, n=(30, 12), seed=1):
    """The four .gz files flat in one folder, as Debian's dataset-fashion-mnist installs them."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, m in zip(("train", "t10k"), n):
        images, labels = rng.integers(0, 256, (m, 28, 28)), rng.integers(0, 10, m)
        _idx(folder / f"{split}-images-idx3-ubyte.gz", images, 2051)
        _idx(folder / f"{split}-labels-idx1-ubyte.gz", labels, 2049)
        out[split] = (images, labels)
    return out


@pytest.fixture
def system_dir(tmp_path, monkeypatch):
    """A stand-in for /usr/share/datasets/fashion-mnist holding small synthetic files."""
    folder = tmp_path / "usr-share-datasets-fashion-mnist"
    written = _write_flat(folder)
    monkeypatch.setitem(data_mod.SYSTEM_DIRS, "fashion-mnist", (folder, "dataset-fashion-mnist"))
    return folder, written


def test_fashion_mnist_search_order_data_dir_then_the_system_folder(tmp_path, system_dir):
    folder, written = system_dir
    d = load_dataset("fashion-mnist", root=tmp_path / "empty")  # nothing under --data-dir: the system copy
    assert d.source == str(folder) and d.train_y.tolist() == written["train"][1].tolist()
    assert d.classes[:3] == ["T-shirt/top", "Trouser", "Pullover"]
    raw, mine = _write_mnist(tmp_path / "mine", "FashionMNIST", n=(20, 5), gz=True)
    d = load_dataset("fashion-mnist", root=tmp_path / "mine")  # --data-dir's copy wins
    assert d.source == str(raw) and d.train_y.tolist() == mine["train"][1].tolist()
    partial, _ = _write_mnist(tmp_path / "partial", "FashionMNIST")
    (partial / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match=r"Fashion-MNIST under .*partial/FashionMNIST/raw lacks t10k-images-idx3-ubyte"):
        load_dataset("fashion-mnist", root=tmp_path / "partial")  # a broken folder is not silently replaced


@pytest.mark.parametrize("damage, detail", [
    ("magic", "train-images-idx3-ubyte.gz: magic number 0x00000801, expected 0x00000803"),
    ("dims", "train-images-idx3-ubyte.gz: images of 27x28 pixels, expected 28x28"),
    ("truncated", r"t10k-images-idx3-ubyte.gz: 9000 bytes of images data for 12 x 28 x 28 = 9408: truncated"),
    ("counts", "train: 30 images but 29 labels"),
    ("labels", "t10k-labels-idx1-ubyte: label 10 outside 0..9"),
    ("gzip", r"train-labels-idx1-ubyte.gz: (EOFError|BadGzipFile)"),
], ids=lambda v: v if " " not in v else "")
def test_corrupt_idx_files_are_one_line_naming_the_file(tmp_path, system_dir, damage, detail):
    folder, written = system_dir
    images, labels = written["train"]
    if damage == "magic":
        _idx(folder / "train-images-idx3-ubyte.gz", images, 2049)
    elif damage == "dims":
        _idx(folder / "train-images-idx3-ubyte.gz", images[:, :27], 2051)
    elif damage == "truncated":
        data = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
        (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data[:16 + 9000]))
    elif damage == "counts":
        _idx(folder / "train-labels-idx1-ubyte.gz", labels[:-1], 2049)
    elif damage == "labels":
        _idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(12, 10), 2049)
    else:
        _truncate(folder / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", root=tmp_path / "empty")
    msg = str(e.value)
    assert msg.startswith(f"Fashion-MNIST under {folder} is corrupt (") and "\n" not in msg
    assert re.search(detail, msg), msg
    assert "apt-get install --reinstall dataset-fashion-mnist" in msg  # the fix for the system copy


REAL = data_mod.SYSTEM_DIRS["fashion-mnist"][0]
needs_real = pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").is_file(),
                                reason=f"Debian's dataset-fashion-mnist is not installed ({REAL} absent): "
                                       f"apt-get install dataset-fashion-mnist")


@needs_real
def test_real_fashion_mnist_from_the_debian_package_loads_and_trains(tmp_path):
    from dal_search.objectives.config import TrainConfig
    from dal_search.objectives.train import train

    d = load_dataset("fashion-mnist", root=tmp_path)  # an empty --data-dir: the package's files
    assert d.source == str(REAL) and d.num_classes == 10 and d.input_shape == (1, 28, 28)
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(d.train_y.numpy()).tolist() == [6000] * 10
    assert np.bincount(d.test_y.numpy()).tolist() == [1000] * 10
    assert d.classes == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
    # pixels 0..255 normalised with Fashion-MNIST's mean 0.2860 and std 0.3530; both ends occur
    assert float(d.train_x.min()) == pytest.approx((0 - 0.2860) / 0.3530, abs=1e-5)
    assert float(d.train_x.max()) == pytest.approx((1 - 0.2860) / 0.3530, abs=1e-5)
    assert abs(float(d.train_x.mean())) < 0.01 and float(d.train_x.std()) == pytest.approx(1.0, abs=0.01)
    r = train(TrainConfig(dataset="fashion-mnist", data_dir=str(tmp_path), train_size=2000, model="mlp", epochs=1,
                          loss="ce", batch_size=32, lr=0.05, noise="asymmetric", noise_rate=0.4, threads=1))
    assert r["status"] == "ok" and r["train_size"] == 2000 and r["data_source"] == str(REAL)
    assert r["has_test_labels"] and r["has_clean_labels"] and r["test_acc"] > 0.4  # chance is 0.1; 0.60 measured
    assert r["realized_rate"] == pytest.approx(0.4 * 0.4, abs=0.04)  # 4 of 10 classes flip (GCE's mapping)


NOBODY = 65534


@needs_real
def test_read_only_folders_work_and_nothing_is_written_there():
    """As a real non-root user (tests run as root, who writes anywhere): a copy of the package's .gz files in
    --data-dir's layout, made read-only, loads, and gets no file (nor does the package's own folder)."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as a non-root user")
    top = Path(tempfile.mkdtemp(prefix="dal-ro-", dir="/tmp"))
    try:
        top.chmod(0o755)
        raw = top / "data" / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for f in REAL.glob("*.gz"):
            shutil.copy(f, raw / f.name)
        for folder in (raw, raw.parent, raw.parent.parent):
            for f in folder.iterdir():
                f.chmod(0o444 if f.is_file() else 0o555)
            folder.chmod(0o555)
        before = {p: sorted(os.listdir(p)) for p in (REAL, raw)}
        script = textwrap.dedent(f"""
            import json, os
            from dal_search.objectives.data import load_dataset
            d = load_dataset("fashion-mnist", root={str(top / "data")!r})
            out = {{"loaded": [d.source, len(d.train_y), len(d.test_y)]}}
            try:  # the guarantee is tested for real: this user cannot write in either folder
                open(os.path.join({str(raw)!r}, "probe"), "w")
                out["writable"] = True
            except PermissionError:
                out["writable"] = False
            print(json.dumps(out))
        """)
        env = {**os.environ, "HOME": str(top)}
        r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable,
                            "-c", script], cwd=top, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["loaded"] == [str(raw), 60000, 10000]
        assert out["writable"] is False
        assert {p: sorted(os.listdir(p)) for p in before} == before  # nothing written anywhere
    finally:
        for folder in (top / "data", top / "data" / "FashionMNIST", top / "data" / "FashionMNIST" / "raw"):
            if folder.exists():
                folder.chmod(0o755)
        shutil.rmtree(top, ignore_errors=True)


# ---------------------------------------------------------------- train_size: one stratified subset for every seed


def test_subset_indices_are_stratified_exact_and_fixed():
    y = np.repeat(np.arange(4), [400, 300, 200, 100])
    idx = data_mod.subset_indices(y, 101)
    assert len(idx) == 101 and len(set(idx)) == 101 and np.all(np.diff(idx) > 0)
    assert np.bincount(y[idx]).tolist() == [41, 30, 20, 10]  # 40.4, 30.3, 20.2, 10.1: the largest remainder +1
    assert np.array_equal(idx, data_mod.subset_indices(y, 101))  # no run seed involved: the same every time
    assert data_mod.subset_indices(y, None) is None and len(data_mod.subset_indices(y, 1000)) == 1000
    with pytest.raises(DataError, match="train_size 1001 is more than the 1000 images of the training pool"):
        data_mod.subset_indices(y, 1001)


def test_train_size_is_the_same_images_for_every_seed_before_the_noise(tmp_path):
    from dal_search.objectives.config import ConfigError, TrainConfig
    from dal_search.objectives.train import train

    base = dict(train_size=300, epochs=1, threads=1)
    a = train(TrainConfig(noise="none", seed=0, **base))
    b = train(TrainConfig(noise="none", seed=1, **base))
    whole = train(TrainConfig(noise="none", seed=0, epochs=1, threads=1))
    assert a["train_size"] == b["train_size"] == 300 and whole["train_size"] == 1437
    assert a["label_hash"] == b["label_hash"] != whole["label_hash"]  # the same 300 labels under both seeds
    noisy = train(TrainConfig(noise="symmetric", noise_rate=0.4, seed=0, **base))
    assert noisy["realized_rate"] == pytest.approx(0.36, abs=0.09)  # drawn on the 300
    # a label file lines up with the whole pool: read whole, then the same subset taken
    labels = load_dataset("digits").train_y.numpy().copy()
    labels[::3] = (labels[::3] + 1) % 10
    np.save(tmp_path / "labels.npy", labels)
    filed = train(TrainConfig(noise="file", noise_file=str(tmp_path / "labels.npy"), **base))
    assert filed["status"] == "ok" and filed["realized_rate"] == pytest.approx(1 / 3, abs=0.06)
    assert TrainConfig.from_dict({"train_size": "300"}).train_size == 300
    with pytest.raises(ConfigError, match="train_size must be a positive number"):
        TrainConfig(train_size=0)
    with pytest.raises(DataError, match="train_size 5000 is more than the 1437 images"):
        train(TrainConfig(train_size=5000, epochs=1))
