"""dal-search: tune the Dynamics-Aware Loss (DAL) on noisy labels.

The small public API (everything else lives in the three rooms and may change):

    DALLoss            DAL as a torch.nn.Module for your own training loop (`set_epoch(i)`, `loss(logits, y)`)
    dal_schedule       the per-epoch (q, lambda) of a schedule shape (PAPER.md's linear rule and others)
    corrupt_labels     label noise as PAPER.md defines it (symmetric, asymmetric, instance, ...), per seed
    TrainConfig        the one flat train config; `train(config)` runs it and returns the result dict
    run_campaign       create a campaign's Optuna studies in a storage and run their trials
    export_best        write the best configs with provenance, re-runnable by `dal-search train --config`
    LOSSES, SCHEDULES, NOISE_KINDS, DATASETS, MODELS
                       the registries: `@LOSSES.register("name", ...)` adds a loss everywhere

The three rooms live under this one package:

    dal_search.objectives   what ONE trial computes (losses, schedules, noise, data, models, the trainer)
    dal_search.storage      where results live (storage URLs, heartbeats, exports)
    dal_search.search       how studies explore (campaigns, workers, the Ray pool, analysis, the CLI)

In the repository the rooms are the top-level folders `objectives/`, `storage/` and `search/`; the build
configuration (pyproject.toml) maps them under `dal_search`, so an installed copy has only `dal_search` at
the top level of site-packages. Names are imported on first use, so `import dal_search` costs nothing until
one of them is touched (torch loads with the first objectives name).
"""

from __future__ import annotations

import importlib as _importlib
import os as _os
from typing import TYPE_CHECKING

# A source checkout used without installing (PYTHONPATH=checkout, e.g. on a GPU box or a Ray node): the rooms
# sit beside this folder rather than inside it, so look for subpackages there too. An installed copy has them
# inside and never takes this branch.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "objectives")) and _os.path.isfile(
        _os.path.join(_root, "objectives", "__init__.py")):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821

_API = {
    "DALLoss": "dal_search.objectives.dal_loss",
    "dal_schedule": "dal_search.objectives.schedules",
    "corrupt_labels": "dal_search.objectives.noise",
    "TrainConfig": "dal_search.objectives.config",
    "train": "dal_search.objectives.train",
    "run_campaign": "dal_search.search.api",
    "export_best": "dal_search.search.api",
    "LOSSES": "dal_search.objectives.losses",
    "SCHEDULES": "dal_search.objectives.schedules",
    "NOISE_KINDS": "dal_search.objectives.noise",
    "DATASETS": "dal_search.objectives.data",
    "MODELS": "dal_search.objectives.models",
}
__all__ = list(_API)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily (below)
    from dal_search.objectives.config import TrainConfig
    from dal_search.objectives.dal_loss import DALLoss
    from dal_search.objectives.data import DATASETS
    from dal_search.objectives.losses import LOSSES
    from dal_search.objectives.models import MODELS
    from dal_search.objectives.noise import NOISE_KINDS, corrupt_labels
    from dal_search.objectives.schedules import SCHEDULES, dal_schedule
    from dal_search.objectives.train import train
    from dal_search.search.api import export_best, run_campaign


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'dal_search' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
