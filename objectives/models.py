"""Networks: an MLP and a small CNN for the small datasets, and PAPER.md's CIFAR ResNet-18/34.

The MLP is sized so that cross-entropy on digits visibly memorises noisy labels within 100 epochs (the
phenomenon DAL exists to fight); the ResNets are the CIFAR variant of the paper's protocol: a 3x3 stride-1
stem and no max-pool, so 32x32 inputs keep their resolution into the first stage.

A user's own network is `py:MODULE:FACTORY`: `factory(input_shape, num_classes) -> torch.nn.Module`, called
with one sample's shape without the batch axis ((C, H, W) for images, (D,) for vectors) and returning logits
of shape (batch, num_classes). The trainer treats it exactly as a built-in network (moved to the device,
channels_last for images on CUDA, bf16 autocast on CUDA) and checks it with one forward pass of two training
samples before the first step (`check_output`). A missing module or factory, a factory that raises or returns
something other than a Module, and a wrong output shape each raise `ModelError`: one line, exit status 2 from
the CLI; in a campaign the trial fails with that line as its reason.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from dal_search.objectives.config import ConfigError
from dal_search.objectives.pyref import check_ref, import_ref
from dal_search.objectives.registry import Registry

# Every network, in the order lists show them: a factory `fn(input_shape, num_classes) -> nn.Module`, the
# input shape without the batch axis. `auto` in a TrainConfig means the dataset's default (data.DATASETS).
MODELS = Registry("model")


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, width: int = 256, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
            d = width
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head; for MNIST-sized images (and digits viewed as 1x8x8)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 32):
        super().__init__()
        self.shape = _as_image(input_shape)
        c, h, w = self.shape
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(inplace=True),
                                  nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(x.shape[0], *self.shape)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stride-1 stem, no max-pool, four stages of 64..512 channels."""

    def __init__(self, blocks: tuple[int, int, int, int], input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.shape = _as_image(input_shape)
        self.in_planes = 64
        self.conv1 = nn.Conv2d(self.shape[0], 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._stage(64, blocks[0], 1)
        self.layer2 = self._stage(128, blocks[1], 2)
        self.layer3 = self._stage(256, blocks[2], 2)
        self.layer4 = self._stage(512, blocks[3], 2)
        self.linear = nn.Linear(512, num_classes)

    def _stage(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.shape)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _as_image(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Images stay (C, H, W); a flat square vector (digits' 64 pixels) is viewed as one 8x8 channel."""
    if len(shape) == 3:
        return tuple(shape)  # type: ignore[return-value]
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        return (1, side, side)
    raise ValueError(f"a convolutional model needs image inputs (C, H, W), got shape {tuple(shape)}")


@MODELS.register("mlp", help="2 hidden layers of 256 (digits' default)")
def _mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(input_shape), num_classes)


@MODELS.register("cnn", help="3 conv layers and a 2-layer head (MNIST's default)")
def _cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return SmallCNN(input_shape, num_classes)


@MODELS.register("resnet18", help="CIFAR ResNet-18, PAPER.md's network (CIFAR's default)")
def _resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return CifarResNet((2, 2, 2, 2), input_shape, num_classes)


@MODELS.register("resnet34", help="CIFAR ResNet-34")
def _resnet34(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return CifarResNet((3, 4, 6, 3), input_shape, num_classes)


class ModelError(ConfigError):
    """A network cannot be built or gives the wrong output; the message is one line naming the fix."""


def _check_py_model(arg: str) -> None:
    check_ref(arg, "model", ModelError, "py:MODULE:FACTORY")


@MODELS.register("py", prefix=True, form="py:MODULE:FACTORY", check=_check_py_model,
                 help="your own network: factory(input_shape, num_classes) -> torch.nn.Module, importable from "
                      "PYTHONPATH")
def _py_model(arg: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    factory = import_ref(arg, "model", ModelError)
    try:
        model = factory(tuple(input_shape), num_classes)
    except Exception as e:  # noqa: BLE001 - the user's factory failed: one line naming it, not our traceback
        text = " ".join(str(e).split())[:160]
        raise ModelError(f"model 'py:{arg}': the factory raised {type(e).__name__}" + (f": {text}" if text else "")
                         + f" when called as factory({tuple(input_shape)}, {num_classes}); fix the factory") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model 'py:{arg}': the factory returned a {type(model).__name__}, not a torch.nn.Module; "
                         f"return the network itself")
    return model


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The network `name` (see MODELS) for inputs of `input_shape` (without the batch axis), `num_classes`
    outputs. Raises ValueError (UnknownName) for a name no entry answers to, ModelError for a `py:` network
    that cannot be built."""
    entry, arg = MODELS.resolve(name)
    if arg is None:
        return entry.obj(tuple(input_shape), num_classes)
    return entry.obj(arg, tuple(input_shape), num_classes)


@torch.no_grad()
def check_output(model: nn.Module, sample: torch.Tensor, num_classes: int, name: str) -> None:
    """One forward pass of `sample` (a small batch, on the model's device) in eval mode: the output must be a
    float tensor of shape (batch, num_classes). Raises ModelError otherwise; changes no weights, no running
    statistics and no random state (dropout is off in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        out = model(sample)
    except Exception as e:  # noqa: BLE001 - a network that cannot take the data's shape: say which shape
        text = " ".join(str(e).split())[:160]
        raise ModelError(f"model {name!r} fails on a batch of shape {tuple(sample.shape)} ({type(e).__name__}: "
                         f"{text}); it must accept (batch, *input_shape) and return (batch, num_classes)") from None
    finally:
        model.train(was_training)
    want = (len(sample), num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want or not out.is_floating_point():
        got = (f"shape {tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}")
        raise ModelError(f"model {name!r} returns {got} for a batch of {len(sample)}; it must return float logits "
                         f"of shape (batch, num_classes) = {want}")


__all__ = ["MODELS", "build_model", "check_output", "ModelError", "MLP", "SmallCNN", "CifarResNet"]
