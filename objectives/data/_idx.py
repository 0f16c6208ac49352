"""MNIST and Fashion-MNIST parsed from their idx files, raw or gzipped, in memory: nothing is ever written
beside them, so a read-only folder works. The magic numbers, dimensions (N x 28 x 28), byte counts,
image/label counts and the label range are checked; a mismatch is one DataError line.

Search order: root (= --data-dir: torchvision's layout, or its legacy processed/*.pt), then the folder a Debian
package installs (SYSTEM_DIRS), then --download into root. A root folder that holds only some of the four files
is an error (it is not silently replaced by the system copy).
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch

from dal_search.objectives.data._dataset import DATASETS, Dataset, DataError, brief
from dal_search.objectives.data._torchvision import (FOLDERS, MNIST_FILES, NUM_CLASSES, download_files,
                                                     load_torchvision, missing_files, normalise_images)

# torchvision's class names (MNIST.classes, FashionMNIST.classes), here so that reading the idx files needs no
# torchvision import (seconds on a busy machine)
_IDX_CLASSES = {
    "mnist": tuple(f"{i} - {w}" for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven",
                                                       "eight", "nine"))),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
}
# Where Debian's packages put datasets (searched after --data-dir): `dataset-fashion-mnist` installs the four
# original .gz files flat in this folder, read-only for users.
SYSTEM_DIRS = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"), "dataset-fashion-mnist")}


def _idx_files(folder: Path) -> dict[str, Path]:
    """The idx files present in `folder`, by their raw name: the raw file, else its .gz."""
    found = {}
    for f in MNIST_FILES:
        for candidate in (folder / f, folder / f"{f}.gz"):
            if candidate.is_file():
                found[f] = candidate
                break
    return found


def load_idx(name: str, root: Path, download: bool) -> Dataset:
    """MNIST / Fashion-MNIST: root's torchvision layout, then the system folder, then --download (see the module
    docstring); the idx files are parsed in memory, never unpacked to disk."""
    title, folder = DATASETS[name].title, root / FOLDERS[name]
    found = _idx_files(folder)
    if not found and missing_files(name, root) == []:
        return load_torchvision(name, root, False)  # only torchvision's legacy processed/*.pt are there
    system, package = SYSTEM_DIRS.get(name, (None, None))
    if not found and system is not None:
        from_system = _idx_files(system)
        if len(from_system) == len(MNIST_FILES):
            return _read_idx_set(name, system, from_system, fix=f"reinstall the package (apt-get install "
                                                                f"--reinstall {package}) or pass --data-dir")
    if len(found) < len(MNIST_FILES) and download:
        download_files(name, root)
        found = _idx_files(folder)
    missing = [f for f in MNIST_FILES if f not in found]
    if missing and not found:
        also = (f" nor in {system} (apt-get install {package} puts it there)" if system is not None else "")
        raise DataError(f"{title} not found under {folder}{also}: put the raw files {', '.join(MNIST_FILES)} (or "
                        f"their .gz) there, point --data-dir at the folder that holds {FOLDERS[name].split('/')[0]}, "
                        f"or pass --download")
    if missing:
        raise DataError(f"{title} under {folder} lacks {', '.join(missing)}: put the complete dataset there "
                        f"or pass --download")
    return _read_idx_set(name, folder, found, fix="replace the folder with a fresh copy, or delete it and pass "
                                                  "--download")


def _read_idx_set(name: str, folder: Path, files: dict[str, Path], fix: str) -> Dataset:
    title, k = DATASETS[name].title, NUM_CLASSES[name]

    def bad(detail: str) -> DataError:
        return DataError(f"{title} under {folder} is corrupt ({detail}): {fix}")

    arrays = {}
    for f, path in files.items():
        try:
            arrays[f] = _read_idx(path, images="images" in f)
        except DataError as e:
            raise bad(f"{path.name}: {e}") from None
        except Exception as e:  # noqa: BLE001 - a truncated or damaged .gz: one line
            raise bad(f"{path.name}: {brief(e)}") from None
    xs, ys = [], []
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        if len(images) == 0 or len(images) != len(labels):
            raise bad(f"{split}: {len(images)} images but {len(labels)} labels")
        if int(labels.max()) >= k:
            raise bad(f"{split}-labels-idx1-ubyte: label {int(labels.max())} outside 0..{k - 1}")
        xs.append(normalise_images(name, images))
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
