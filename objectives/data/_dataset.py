"""The dataset registry, the Dataset record, and load_dataset's per-process cache."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from dal_search.objectives.registry import Registry

# Every dataset, in the order lists show them. An entry is a loader `fn(arg, root, download) -> Dataset` (arg is
# the text after the prefix for a prefix entry such as `npz:PATH`, else None) and records what a TrainConfig
# resolves from the dataset: `model` (the default network: a name, or a function of the input shape),
# `lr` (the default learning rate) and `augment` (random crop + flip by default), and `files` (what the cache
# key includes: True the resolved data_dir, False nothing, "arg" the resolved path after the prefix); a prefix
# entry may add `check` (a syntax check of its argument, run by config validation) and `resizes` (the loader
# takes image_size=).
DATASETS = Registry("dataset")

_CACHE: dict[tuple[str, str, int | None], "Dataset"] = {}  # (name, resolved folder or file, image_size)
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
    """The dataset `name`, loaded once per process and then served from memory.

    Parameters
    ----------
    name : str
        A registered dataset (`DATASETS`): `digits`, `mnist`, `fashion-mnist`, `cifar10`, `cifar100`, or a
        user's own data as `folder:PATH`, `npz:PATH` or `py:MODULE:FUNCTION`.
    root : str or Path, default "./data"
        The folder that holds the torchvision sets (`--data-dir`); the embedded and the user's sets ignore it.
    download : bool, default False
        Fetch a torchvision set's md5-checked archive into `root` when files are missing.
    image_size : int or None, default None
        Resize every image of a `folder:` dataset to image_size x image_size; an error for the others.

    Returns
    -------
    Dataset
        Float32 tensors, normalised, shared with every other caller of the same (name, root, image_size):
        treat them as read-only.

    Raises
    ------
    DataError
        Anything a user can get wrong (an unknown name, a missing or corrupt file, bad shapes or labels),
        as one line naming the folder or file and the fix.
    """
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


def brief(e: BaseException) -> str:
    """An exception as a few words for a one-line DataError: its type and first line (a DataError's own text)."""
    text = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
    if isinstance(e, DataError):
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__

