"""A user's own data: `folder:PATH` (images), `npz:PATH` (arrays), `py:MODULE:FUNCTION` (arrays from code).

Paths are read where the trainer runs (give a pool's workers absolute paths). `train_y` are the labels AS
GIVEN, usually noisy already: `noise: none` trains on them unchanged and any other kind is drawn on top of
them. `y_train_clean`, when given, is what memorisation (noisy_fit, clean_fit) and realized_rate are measured
against; without it, under synthetic noise the labels as given count as clean (the premise of adding noise)
and under `noise: none` they are unknown (those metrics NaN). Vectors are standardised per feature, images per
channel, with the training pool's mean and std. A dataset whose float32 tensors (train + test) would exceed
MEMORY_BUDGET_BYTES (8 GiB, or DAL_SEARCH_DATA_BUDGET_GB) is refused before it is read in full.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from dal_search.objectives.data._dataset import DATASETS, Dataset, DataError, brief
from dal_search.objectives.pyref import check_ref, import_ref

FOLDER_TEST_FRACTION = 0.2  # a folder: dataset without test/ holds out this share of each class as its test set
FOLDER_SPLIT_SEED = 0
# The most a dataset may take as float32 tensors (train + test), checked before it is read in full.
MEMORY_BUDGET_BYTES = int(float(os.environ.get("DAL_SEARCH_DATA_BUDGET_GB", "8")) * 2**30)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")
_USER_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "y_train_clean", "classes")


def _user_model(input_shape) -> str:
    """The default network for a user's data: the small CNN for images, the MLP for vectors."""
    return "cnn" if input_shape is not None and len(input_shape) == 3 else "mlp"


def _check_py_data(arg: str) -> None:
    check_ref(arg, "dataset", DataError)


@DATASETS.register("folder", prefix=True, form="folder:PATH", title="image folder", files="arg", resizes=True,
                   help="your images, one sub-folder per class (ImageFolder layout; train/ and test/ optional)",
                   model=_user_model, lr=0.01, augment=False)
def _folder(arg: str, root: Path, download: bool, image_size: int | None = None) -> Dataset:
    """Images in torchvision's ImageFolder layout, one sub-folder per class (class index: the folder name's
    position in sorted order). With PATH/train/ the classes are train/'s sub-folders and PATH/test/ (optional)
    holds test images in sub-folders of the same names; without train/, PATH's own sub-folders are the classes
    and FOLDER_TEST_FRACTION of each class, drawn with FOLDER_SPLIT_SEED, is held out as the test set, the same
    for every run (its labels are the folder's own: clean only under synthetic noise). Images are the files
    with an image extension (IMAGE_EXTENSIONS, any depth, hidden names skipped); all greyscale gives 1 channel,
    else RGB (alpha dropped). They must all have one size, or `image_size` S resizes (squashes) each to S x S."""
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
            raise DataError(f"cannot read image {f} ({brief(e)}): replace or delete the file") from None
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
        raise DataError(f"cannot read image {path} ({brief(e)}): replace or delete the file") from None


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
    """A numpy .npz written with numpy.savez (no pickled objects) holding the arrays of `_from_arrays`."""
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
        raise DataError(f"npz file {path} cannot be read ({brief(e)}): save plain arrays with numpy.savez "
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
        raise DataError(f"npz file {path} cannot be read as a .npz ({brief(e)}): write it with numpy.savez") from None
    return shapes


@DATASETS.register("py", prefix=True, form="py:MODULE:FUNCTION", title="Python data", files=False,
                   check=_check_py_data, model=_user_model, lr=0.01, augment=False,
                   help="your function returning x_train, y_train [, x_test, y_test, y_train_clean] (dict or tuple), "
                        "importable from PYTHONPATH")
def _py(arg: str, root: Path, download: bool) -> Dataset:
    """FUNCTION() (no arguments, MODULE imported from PYTHONPATH) returns the arrays of `_from_arrays`, numpy or
    torch, as a dict with those keys or a tuple (x_train, y_train[, x_test[, y_test[, y_train_clean]]])."""
    fn = import_ref(arg, "dataset", DataError)
    where = f"dataset 'py:{arg}'"
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - the user's function failed: one line naming it
        raise DataError(f"{where}: the function raised {brief(e)}; fix it (it is called with no arguments)") from None
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
    """A Dataset from a user's arrays, every shape, dtype and label checked: x_train, y_train and optionally
    x_test, y_test, y_train_clean, classes (names; their count fixes K). x is (N, D) vectors, (N, H, W)
    greyscale, or images (N, C, H, W) or (N, H, W, C) (see `_layout`), any numeric dtype. Labels are integers
    0..K-1, K = len(classes) or max(y_train) + 1, every class present in y_train. y_test are taken as correct
    labels; without them there is no clean test set."""
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
