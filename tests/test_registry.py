"""Registries: one registration adds a loss, a schedule shape, a noise kind, a dataset or a model everywhere:
config validation, the CLI's help, default search spaces, campaigns, the trainer, the analysis titles."""

from __future__ import annotations

import doctest

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F

import dal_search.objectives.registry as registry_module
from dal_search.objectives.config import ConfigError, TrainConfig
from dal_search.objectives.data import DATASETS, Dataset, load_dataset
from dal_search.objectives.losses import LOSSES, make_loss
from dal_search.objectives.models import MODELS, build_model
from dal_search.objectives.noise import NOISE_KINDS, corrupt_labels
from dal_search.objectives.registry import Registry, UnknownName
from dal_search.objectives.schedules import SCHEDULES, Progress, dal_schedule


def test_registry_basics():
    reg = Registry("thing")
    reg.register("a", 1, title="A", help="first")
    reg.register("path", 2, prefix=True, help="path:FILE", form="path:FILE")
    assert reg.names() == ("a",) and reg.names(prefixes=True) == ("a", "path:...")
    assert reg["a"].obj == 1 and reg["a"].title == "A"
    assert reg.resolve("a") == (reg["a"], None)
    entry, arg = reg.resolve("path:/x/y:z")
    assert entry.obj == 2 and arg == "/x/y:z"  # everything after the first ':' is the argument
    assert "a" in reg and "path:/x" in reg and "path" not in reg and "path:" not in reg and "b" not in reg
    with pytest.raises(UnknownName, match=r"unknown thing 'b'; choose one of: a, or path:FILE"):
        reg.resolve("b")
    with pytest.raises(UnknownName, match="needs something after 'path:'"):
        reg.resolve("path:")
    with pytest.raises(ValueError, match="registered already"):
        reg.register("a", 3)
    reg.register("a", 3, replace=True)
    assert reg["a"].obj == 3
    reg.unregister("a")
    assert "a" not in reg
    with pytest.raises(ValueError, match="without spaces"):
        reg.register("two words", 1)


def test_docstring_examples_run():
    assert doctest.testmod(registry_module).failed == 0


@pytest.fixture
def focal_loss():
    """A loss a user adds in one place: focal loss (Lin et al. 2017), gamma taken from GCE's q field."""

    @LOSSES.register("focal", title="Focal", help="focal loss -(1 - p_y)^gamma log p_y (gamma from --q)",
                     params=("q",), space={"q": {"low": 0.5, "high": 3.0}})
    def focal(logits, y, q):
        log_p_y = F.log_softmax(logits.float(), dim=1).gather(1, y.view(-1, 1)).squeeze(1)
        return (-(1 - log_p_y.exp()) ** q * log_p_y).mean()

    yield focal
    LOSSES.unregister("focal")


def test_one_registration_adds_a_loss_everywhere(focal_loss, tmp_path):
    from dal_search.objectives.train import train
    from dal_search.search.analysis import ARM_NAMES
    from dal_search.search.campaign import create_studies, parse_campaign
    from dal_search.search.cli import build_parser
    from dal_search.search.space import default_space
    from dal_search.search.worker import run_worker

    # config, the loss function the trainer builds, and a short real training run
    config = TrainConfig(loss="focal", q=2.0, epochs=2, threads=1)
    z, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    assert make_loss(config)(z, y, 1.3, 0.5).item() == pytest.approx(focal_loss(z, y, 2.0).item())
    assert train(config)["status"] == "ok"
    # the CLI's help, the default search space, the analysis titles
    helps = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "focal" in " ".join(helps.split())
    assert default_space("focal") == {"q": {"low": 0.5, "high": 3.0}}
    assert ARM_NAMES["focal"] == "Focal"
    # a campaign that names it as an arm, run to its budget by an in-process worker
    camp = parse_campaign({"name": "reg", "datasets": ["digits"], "noise": {"symmetric": [0.4]},
                           "arms": {"focal": "default"}, "budget": {"trials": 2},
                           "train": {"epochs": 2, "threads": 1}})
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/r.db")
    (name,) = create_studies(storage, camp)
    stats = run_worker(storage, "reg", worker_seed=0)
    assert stats.complete == 2
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert all(0.5 <= t.params["q"] <= 3.0 for t in trials)


def test_unknown_names_list_what_is_registered():
    with pytest.raises(ConfigError, match="unknown loss 'focal'; choose one of: ce, mae, gce, sce, nce_rce, dal"):
        TrainConfig(loss="focal")
    with pytest.raises(ConfigError, match="unknown schedule 'zigzag'; choose one of: linear, cosine"):
        TrainConfig(schedule="zigzag")
    with pytest.raises(ConfigError, match="unknown model 'vit'"):
        TrainConfig(model="vit")


def test_one_registration_adds_a_schedule_shape():
    # the square-root shape: q rises fast, then slowly; f^-1(c) = c^2
    SCHEDULES.register("sqrt", lambda: Progress(lambda x: x ** 0.5, inverse=lambda c: c * c),
                       help="fast start: f(x) = sqrt(x)")
    try:
        assert TrainConfig(schedule="sqrt").schedule == "sqrt"
        pairs = dal_schedule(0.5, 1.5, 100, "sqrt")
        assert pairs[25][0] == pytest.approx(0.5 + 1.0 * 0.5)  # sqrt(0.25) = 0.5
        # q crosses 1 at f(x) = 0.5, x = 0.25: t0 = 25, so lambda(26) = 1/75
        assert pairs[26][1] == pytest.approx(1 / 75)
        from dal_search.search.space import default_space

        assert "sqrt" in default_space("dal")["schedule"]
    finally:
        SCHEDULES.unregister("sqrt")


def test_one_registration_adds_a_noise_kind_a_model_and_a_dataset():
    @NOISE_KINDS.register("reverse", help="with probability r, label c becomes K-1-c")
    def reverse(y, rate, num_classes, rng, **_):
        flip = rng.random(len(y)) < rate
        y[flip] = num_classes - 1 - y[flip]
        return y

    @MODELS.register("linear", help="a single linear layer")
    def linear(input_shape, num_classes):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), num_classes))

    @DATASETS.register("blobs", title="blobs", help="two Gaussian blobs", model="linear", lr=0.1, files=False)
    def blobs(arg, root, download):
        g = torch.Generator().manual_seed(0)
        x = torch.cat([torch.randn(200, 2, generator=g) - 2, torch.randn(200, 2, generator=g) + 2])
        y = torch.cat([torch.zeros(200, dtype=torch.long), torch.ones(200, dtype=torch.long)])
        return Dataset("blobs", 2, x[::2].contiguous(), y[::2].contiguous(), x[1::2].contiguous(),
                       y[1::2].contiguous(), ["a", "b"])

    try:
        clean = np.repeat(np.arange(4), 50)
        noisy = corrupt_labels(clean, "reverse", 1 - 1e-9, 4, seed=0)
        assert (noisy == 3 - clean).all()
        assert isinstance(build_model("linear", (2,), 2), torch.nn.Sequential)
        assert load_dataset("blobs").num_classes == 2
        config = TrainConfig(dataset="blobs", noise="reverse", noise_rate=0.2, epochs=20, threads=1)
        assert config.resolved_model() == "linear" and config.resolved_lr() == 0.1
        from dal_search.objectives.train import train

        result = train(config)
        assert result["status"] == "ok" and result["test_acc"] > 0.9  # blobs 4 sigma apart
    finally:
        NOISE_KINDS.unregister("reverse")
        MODELS.unregister("linear")
        DATASETS.unregister("blobs")
