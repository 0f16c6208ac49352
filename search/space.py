"""Search spaces: which TrainConfig fields a study explores, and how.

A space is a mapping from a TrainConfig field to one of
    a scalar                          fixed value (not searched)
    [a, b, c]                         categorical choice (a grid axis for the grid sampler)
    {low: x, high: y}                 float range; `log: true` for a log scale, `step: s` for a grid
    {low: x, high: y, int: true}      integer range

Spaces are checked before any trial runs: unknown fields, empty choices, low > high, values a TrainConfig
would reject, and a q_start range that reaches above the q_end range (a trial could draw q_s > q_e) all
raise `SpaceError` naming the field.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from dal_search.objectives.config import ConfigError, TrainConfig, config_fields


class SpaceError(ValueError):
    """A search space is invalid; the message names the field."""


def default_space(arm: str) -> dict[str, Any]:
    """The knobs arm `arm` (a loss name) explores when a campaign names it without a space of its own: the
    `space` its loss registered (objectives.losses.LOSSES). Raises SpaceError for an unknown loss."""
    from dal_search.objectives.losses import LOSSES

    try:
        space = LOSSES[arm].get("space", {})
    except ValueError as e:
        raise SpaceError(f"{e} (an arm is a loss)") from None
    return dict(space() if callable(space) else space)


_FIELDS = {f.name: str(f.type) for f in config_fields()}
_NOT_SEARCHABLE = {"seed", "dataset", "noise", "noise_rate", "noise_file", "data_dir", "download", "device", "loss"}


def distributions(space: dict[str, Any]) -> dict[str, BaseDistribution]:
    """The Optuna distributions of the searched (non-fixed) fields."""
    out: dict[str, BaseDistribution] = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            out[name] = CategoricalDistribution(spec)
        elif isinstance(spec, dict):
            if spec.get("int"):
                out[name] = IntDistribution(int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)),
                                            log=bool(spec.get("log", False)))
            else:
                out[name] = FloatDistribution(float(spec["low"]), float(spec["high"]),
                                              log=bool(spec.get("log", False)),
                                              step=float(spec["step"]) if spec.get("step") else None)
    return out


def fixed_values(space: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in space.items() if not isinstance(v, (list, dict))}


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """Draw the trial's values for every searched field (fixed ones are added as they are)."""
    values = dict(fixed_values(space))
    for name, dist in distributions(space).items():
        if isinstance(dist, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, IntDistribution):
            values[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return values


def grid(space: dict[str, Any]) -> dict[str, list[Any]]:
    """The axes of a grid search: categorical lists, and float/int ranges that carry a `step`."""
    axes: dict[str, list[Any]] = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            axes[name] = list(spec)
        elif isinstance(spec, dict):
            if "step" not in spec:
                raise SpaceError(f"space field {name!r}: the grid sampler needs a list of values or a 'step'")
            low, high, step = float(spec["low"]), float(spec["high"]), float(spec["step"])
            n = int(math.floor((high - low) / step + 1e-9)) + 1
            axes[name] = [round(low + i * step, 10) for i in range(n)]
            if spec.get("int"):
                axes[name] = [int(v) for v in axes[name]]
    return axes


def grid_size(space: dict[str, Any]) -> int:
    return math.prod(len(v) for v in grid(space).values()) if grid(space) else 1


def validate_space(space: Any, where: str, base: TrainConfig) -> dict[str, Any]:
    """Check a space against TrainConfig and the DAL constraints; returns it unchanged."""
    if space is None:
        return {}
    if not isinstance(space, dict):
        raise SpaceError(f"{where}: a search space must be a mapping of config fields, got {type(space).__name__}")
    for name, spec in space.items():
        if name not in _FIELDS:
            raise SpaceError(f"{where}: unknown field {name!r} in the search space; "
                             f"searchable fields: {', '.join(sorted(set(_FIELDS) - _NOT_SEARCHABLE))}")
        if name in _NOT_SEARCHABLE:
            raise SpaceError(f"{where}: {name!r} is part of the campaign's conditions or budget, not of a search space")
        if isinstance(spec, list):
            if not spec:
                raise SpaceError(f"{where}: {name!r} has an empty list of choices")
            for v in spec:
                _check_value(base, name, v, where)
        elif isinstance(spec, dict):
            extra = set(spec) - {"low", "high", "log", "step", "int"}
            if extra or "low" not in spec or "high" not in spec:
                raise SpaceError(f"{where}: {name!r} range needs 'low' and 'high' (optional: log, step, int)"
                                 + (f"; unknown key {sorted(extra)[0]!r}" if extra else ""))
            try:
                low, high = float(spec["low"]), float(spec["high"])
            except (TypeError, ValueError):
                raise SpaceError(f"{where}: {name!r} low/high must be numbers") from None
            if low > high:
                raise SpaceError(f"{where}: {name!r} has low {low} > high {high}")
            if spec.get("log") and low <= 0:
                raise SpaceError(f"{where}: {name!r} is on a log scale, so low must be > 0")
            if not _FIELDS[name].startswith(("float", "int")):
                raise SpaceError(f"{where}: {name!r} is not numeric; give a list of choices instead")
            for v in (low, high):
                _check_value(base, name, int(v) if spec.get("int") else v, where)
        else:
            _check_value(base, name, spec, where)
    lo_s, hi_s = _bounds(space.get("q_start", base.q_start))
    lo_e, hi_e = _bounds(space.get("q_end", base.q_end))
    if hi_s > lo_e:
        raise SpaceError(f"{where}: q_start can reach {hi_s} but q_end can be as low as {lo_e}; "
                         f"keep q_start's range at or below q_end's (q_s <= q_e)")
    return space


def _bounds(spec: Any) -> tuple[float, float]:
    if isinstance(spec, list):
        return min(spec), max(spec)
    if isinstance(spec, dict):
        return float(spec["low"]), float(spec["high"])
    return float(spec), float(spec)


def _check_value(base: TrainConfig, name: str, value: Any, where: str) -> None:
    try:
        # q_start/q_end are checked as a pair by the caller, so do not trip on the partner's default here.
        probe = {name: value}
        if name == "q_start":
            probe["q_end"] = max(float(value), base.q_end)
        if name == "q_end":
            probe["q_start"] = min(float(value), base.q_start)
        base.replace(**probe)
    except ConfigError as e:
        raise SpaceError(f"{where}: {name!r} = {value!r} is not valid: {e}") from None
    except (TypeError, ValueError) as e:
        raise SpaceError(f"{where}: {name!r} = {value!r} is not valid: {e}") from None


def all_grid_points(space: dict[str, Any]) -> list[dict[str, Any]]:
    axes = grid(space)
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]
