"""The one train config: a flat set of named values used by the CLI, campaigns, export and tests.

A `TrainConfig` names everything one training run depends on, so a config written to YAML and read back
re-runs the same trial. Unknown keys and out-of-range values raise `ConfigError` with a message that names
the field and the fix; the CLI turns that into one line and a non-zero exit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# Datasets, losses, schedule shapes, noise kinds and models are checked against their registries (each in the
# module that defines them: data.DATASETS, losses.LOSSES, schedules.SCHEDULES, noise.NOISE_KINDS,
# models.MODELS), imported on first validation so that reading this module costs nothing.
DEVICES = ("auto", "cpu", "cuda")
GRAPHS = ("auto", "on", "off")  # the training step as a CUDA graph: where possible / required / never
METRICS = ("val_acc", "test_acc", "best_test_acc", "best_val_acc")


class ConfigError(ValueError):
    """A user's config is wrong; the message is one line naming the field and the fix."""


@dataclass
class TrainConfig:
    # data
    dataset: str = "digits"
    data_dir: str = "./data"
    download: bool = False
    val_fraction: float = 0.1
    # None: the whole training pool; N: a stratified random subset of N images of it, the same for every seed
    # (drawn with a fixed seed before the noise), so all seeds of a trial see the same images
    train_size: int | None = None
    # folder: datasets only: every image resized (squashed) to image_size x image_size; None: the images must
    # all have one size already
    image_size: int | None = None
    # label noise, applied to train and validation labels; test labels stay clean
    noise: str = "symmetric"
    noise_rate: float = 0.4
    noise_file: str | None = None  # .npy of labels, or CIFAR-N .pt as "path.pt:worse_label"
    # model
    model: str = "auto"  # auto: the dataset's default (mlp for digits, cnn for (fashion-)mnist, resnet18 for cifar,
    # cnn for a user's images, mlp for a user's vectors); or py:MODULE:FACTORY, a user's own network
    # loss
    loss: str = "dal"
    q: float = 0.7  # GCE's q
    alpha: float = 1.0  # SCE / NCE+RCE
    beta: float = 1.0
    q_start: float = 0.6  # DAL
    q_end: float = 1.5
    schedule: str = "linear"
    # schedule "explicit" only: q(i) and lambda(i) for every epoch i = 0..E-1 (e.g. a schedule learned by PBT);
    # q_start and q_end are then unused
    q_schedule: list[float] | None = None
    lam_schedule: list[float] | None = None
    bootstrap: str = "soft"
    bootstrap_scale: float = 1.0  # multiplies lambda(i); 1.0 is the paper
    # optimisation (the paper's protocol, scaled to the dataset by `epochs`)
    epochs: int = 100
    batch_size: int = 128
    lr: float | None = None  # None: the paper's 0.01 (CIFAR, MNIST); 0.05 for digits' small MLP
    momentum: float = 0.9
    weight_decay: float = 1e-4
    augment: bool | None = None  # None: crop+flip for CIFAR, none otherwise
    # run
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None  # None: bf16 autocast on CUDA, off on CPU
    # auto: the training step captured as a CUDA graph and replayed on CUDA, eager elsewhere or where capture is
    # impossible (one log line says why); on: the same, but a step that cannot be captured is an error; off:
    # always eager (objectives/graphs.py)
    graphs: str = "auto"
    threads: int | None = None  # torch CPU threads; None leaves torch's default

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"unknown config field {unknown[0]!r}; known fields: {', '.join(sorted(names))}"
            )
        return cls(**{k: _coerce(k, v) for k, v in values.items()})

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def resolved_model(self, input_shape: tuple[int, ...] | None = None) -> str:
        """The model name: `model`, or for "auto" the dataset's default (which may depend on the input shape,
        e.g. for a user's own data: pass it once the data is loaded)."""
        if self.model != "auto":
            return self.model
        default = _dataset_entry(self.dataset).get("model", "mlp")
        if callable(default):
            return default(input_shape) if input_shape is not None else "auto"
        return default

    def resolved_lr(self) -> float:
        """`lr`, or the dataset's default (the paper's 0.01; 0.05 for digits' small MLP)."""
        if self.lr is not None:
            return self.lr
        return float(_dataset_entry(self.dataset).get("lr", 0.01))

    def resolved_augment(self) -> bool:
        """`augment`, or the dataset's default (random crop + flip for CIFAR, none otherwise)."""
        if self.augment is not None:
            return self.augment
        return bool(_dataset_entry(self.dataset).get("augment", False))


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Accept what YAML/CLI give (ints for floats, '0.4' strings) and reject what cannot be meant."""
    kind = _FIELD_TYPES[name]
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"config field {name!r} cannot be empty")
    try:
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind.startswith("bool"):
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind.startswith("str"):
            if not isinstance(value, str):
                raise TypeError
            return value
        if kind.startswith("list[float]"):  # a YAML/JSON list, or a CLI string "0.6,0.7,0.8"
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or any(isinstance(v, bool) for v in items):
                raise TypeError
            return [float(v) for v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"config field {name!r} = {value!r} is not a valid {kind.split(' ')[0]}") from None
    return value


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _registered(value: str, registry) -> None:
    try:
        entry, arg = registry.resolve(value)
        check = entry.get("check")  # a prefix entry's syntax check of its argument ('py:' needs MODULE:NAME)
        if check is not None and arg is not None:
            check(arg)
    except ValueError as e:  # the registry's message lists what exists
        raise ConfigError(str(e)) from None


def _dataset_entry(name: str):
    from dal_search.objectives.data import DATASETS

    try:
        return DATASETS.resolve(name)[0]
    except ValueError as e:
        raise ConfigError(str(e)) from None


def validate(c: TrainConfig) -> None:
    from dal_search.objectives.registry import load_all
    from dal_search.objectives.losses import BOOTSTRAPS

    registries = load_all()
    for name in ("dataset", "loss", "schedule", "noise"):
        _registered(getattr(c, name), registries[name])
    if c.model != "auto":
        _registered(c.model, registries["model"])
    _choice("bootstrap", c.bootstrap, BOOTSTRAPS)
    _choice("device", c.device, DEVICES)
    _choice("graphs", c.graphs, GRAPHS)
    if c.graphs == "on" and c.device == "cpu":
        raise ConfigError("graphs 'on' needs a CUDA device (CUDA graphs); use graphs auto or off with device cpu")
    for name in ("noise_rate", "q", "alpha", "beta", "q_start", "q_end", "bootstrap_scale", "resolved_lr",
                 "momentum", "weight_decay", "val_fraction"):
        v = getattr(c, name)
        v = v() if callable(v) else v
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ConfigError(f"config field {name.replace('resolved_', '')!r} must be a finite number, got {v!r}")
    if not 0.0 <= c.noise_rate < 1.0:
        raise ConfigError(f"noise_rate must be in [0, 1), got {c.noise_rate}")
    if "path" in registries["noise"][c.noise].get("needs", ()) and not c.noise_file:
        raise ConfigError("noise 'file' needs noise_file (a .npy of labels or a CIFAR-N .pt as PATH.pt:KEY)")
    if registries["noise"][c.noise].get("candidate_sets") and not registries["loss"][c.loss].get("candidate_sets"):
        takes = [e.name for e in registries["loss"] if e.get("candidate_sets")]
        raise ConfigError(f"loss {c.loss!r} cannot learn from the candidate sets of noise {c.noise!r}; choose a loss "
                          f"that takes them: {', '.join(takes)}")
    _check_explicit_schedule(c)
    if c.q <= 0:
        raise ConfigError(f"q must be > 0 (GCE's exponent), got {c.q}")
    if c.q_start <= 0:
        raise ConfigError(f"q_start must be > 0, got {c.q_start}")
    if c.q_end < c.q_start:
        raise ConfigError(f"q_end ({c.q_end}) must be >= q_start ({c.q_start})")
    if c.alpha < 0 or c.beta < 0 or c.bootstrap_scale < 0:
        raise ConfigError("alpha, beta and bootstrap_scale must be >= 0")
    if c.epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {c.epochs}")
    if c.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {c.batch_size}")
    if c.resolved_lr() <= 0:
        raise ConfigError(f"lr must be > 0, got {c.lr}")
    if not 0.0 < c.val_fraction < 0.5:
        raise ConfigError(f"val_fraction must be in (0, 0.5), got {c.val_fraction}")
    if c.threads is not None and c.threads < 1:
        raise ConfigError(f"threads must be >= 1, got {c.threads}")
    if c.train_size is not None and c.train_size < 1:
        raise ConfigError(f"train_size must be a positive number of images (or empty for all), got {c.train_size}")
    if c.image_size is not None:
        if not 4 <= c.image_size <= 1024:
            raise ConfigError(f"image_size must be 4 to 1024 pixels (or empty to keep the images' own size), "
                              f"got {c.image_size}")
        if not _dataset_entry(c.dataset).get("resizes", False):
            raise ConfigError(f"image_size applies to folder: datasets only; remove it for dataset {c.dataset!r}")


def _check_explicit_schedule(c: TrainConfig) -> None:
    """schedule 'explicit' needs q_schedule and lam_schedule, one value per epoch (q finite > 0, lambda finite
    >= 0); any other shape must have neither."""
    lists = {"q_schedule": c.q_schedule, "lam_schedule": c.lam_schedule}
    if c.schedule != "explicit":
        given = [k for k, v in lists.items() if v is not None]
        if given:
            raise ConfigError(f"{given[0]} applies to schedule 'explicit' only; remove it or set schedule: explicit")
        return
    for name, values in lists.items():
        if values is None:
            raise ConfigError(f"schedule 'explicit' needs {name}: a list of {c.epochs} values, one per epoch")
        if not isinstance(values, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                              for v in values):
            raise ConfigError(f"{name} must be a list of numbers, one per epoch")
        if len(values) != c.epochs:
            raise ConfigError(f"{name} has {len(values)} values but epochs is {c.epochs}; give one value per epoch")
        low = 0.0 if name == "lam_schedule" else None
        for i, v in enumerate(values):
            if not math.isfinite(v) or (v < 0 if low is not None else v <= 0):
                need = "a finite number >= 0" if low is not None else "a finite number > 0"
                raise ConfigError(f"{name}[{i}] = {v} must be {need}")


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


__all__ = ["TrainConfig", "ConfigError", "validate", "config_fields", "DEVICES", "GRAPHS", "METRICS"]
