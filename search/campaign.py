"""Campaigns: datasets x noise kinds x noise rates x arms, one Optuna study per condition.

A campaign file (YAML):

    name: quick                       # prefixes every study name
    datasets: [digits]
    noise:                            # kind -> nominal rates
      symmetric: [0.2, 0.4]
      asymmetric: [0.4]
    arms:                             # losses compared, each with its search space (see search/space.py);
      dal: {q_start: {low: 0.2, high: 1.0}, q_end: {low: 1.0, high: 2.0}}
      gce: {q: 0.7}                   # a scalar is fixed; `arm: default` takes the loss's registered space
      ce: {}
    budget: {trials: 8, seeds: [0, 1]}   # trials per study; each trial trains once per seed (value = mean)
    train: {epochs: 30, lr: 0.05}     # the base TrainConfig of every trial
    sampler: tpe                      # tpe (multivariate, constant liar) | random | grid
    pruner: none                      # none | median | hyperband
    metric: val_acc                   # val_acc (noisy validation: honest selection) | test_acc | ...

Each condition is the study `{name}/{arm}/{dataset}/{noise}-{rate}`, its condition and the whole campaign
in the study's user_attrs, so a worker can join from the storage alone. The trial budget is laid down as
WAITING trials ("slots", a window at a time, see `top_up`): workers only ever pop a slot, never create a
trial, so a study ends with exactly `trials` slots run however many workers race for them. A slot that a
dead worker held goes stale and is re-queued by the heartbeat retry callback; it keeps its place in the
budget.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from dal_search.objectives.config import METRICS, ConfigError, TrainConfig
from dal_search.search.space import SpaceError, all_grid_points, default_space, grid_size, validate_space

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "hyperband")
_KEYS = {"name", "datasets", "noise", "arms", "budget", "train", "sampler", "pruner", "metric", "description"}


class CampaignError(ValueError):
    """A campaign file or spec is invalid; the message is one line naming the field and the fix."""


@dataclass(frozen=True)
class Condition:
    campaign: str
    arm: str
    dataset: str
    noise: str
    noise_rate: float

    @property
    def study_name(self) -> str:
        return f"{self.campaign}/{self.arm}/{self.dataset}/{self.noise}-{self.noise_rate:g}"


@dataclass
class Campaign:
    name: str
    datasets: list[str]
    noise: dict[str, list[float]]
    arms: dict[str, dict[str, Any]]
    trials: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    train: dict[str, Any] = field(default_factory=dict)
    sampler: str = "tpe"
    pruner: str = "none"
    metric: str = "val_acc"
    description: str = ""

    def conditions(self) -> list[Condition]:
        return [Condition(self.name, arm, ds, kind, float(rate))
                for ds in self.datasets for kind, rates in self.noise.items() for rate in rates
                for arm in self.arms]

    def base_config(self, c: Condition) -> TrainConfig:
        return TrainConfig.from_dict({**self.train, "dataset": c.dataset, "noise": c.noise,
                                      "noise_rate": c.noise_rate, "loss": c.arm, "seed": self.seeds[0]})

    def budget(self, arm: str) -> int:
        """Trials (slots) of each study of `arm`; each trial trains once per seed, so a trial that repeats a
        parameter set already run would train the very same runs again. Hence:

        - nothing to search (every knob fixed, e.g. `gce: {q: 0.7}`, `ce: {}`): 1 trial;
        - the grid sampler: each grid point once, whatever `trials` says;
        - a space of choices only (lists): min(trials, combinations), all combinations when trials is unset,
          each laid as its own slot so none runs twice (see `_lay_slots`);
        - otherwise: `trials` (20 when unset)."""
        from dal_search.search.space import distributions

        space = self.arms[arm]
        if not distributions(space):
            return 1
        if self.sampler == "grid":
            return grid_size(space)
        if _choices_only(space):
            combos = grid_size(space)
            return min(int(self.trials or combos), combos)
        return int(self.trials or 20)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["budget"] = {"trials": d.pop("trials"), "seeds": d.pop("seeds")}
        return d


BUILTIN = Path(__file__).parent / "campaigns"


def builtin_campaigns() -> list[str]:
    return sorted(p.stem for p in BUILTIN.glob("*.yaml"))


MAX_CAMPAIGN_BYTES = 1_000_000  # a campaign is a page of YAML; more is a mistake or an attack
MAX_CAMPAIGN_VALUES = 100_000  # values once YAML aliases are expanded (a "billion laughs" file stops here)
MAX_TRIALS = 100_000  # per study: every sampler call re-reads a study's trials, so more would never finish
MAX_SEEDS = 1_000


def load_campaign(path: str | Path) -> Campaign:
    """A campaign from a YAML file, or a built-in one by name (`quick`, `paper`, ...).

    Refused with one line: a folder or anything but a regular file, a file over 1 MB, one that is not UTF-8
    text, invalid or too deeply nested YAML, and YAML whose aliases expand past MAX_CAMPAIGN_VALUES values."""
    p = Path(path)
    if not p.exists() and (BUILTIN / f"{path}.yaml").exists():
        p = BUILTIN / f"{path}.yaml"
    if not p.exists():
        raise CampaignError(f"campaign file {p} not found; give a YAML file or a built-in campaign: "
                            f"{', '.join(builtin_campaigns())}")
    if p.is_dir():
        raise CampaignError(f"campaign {p} is a folder; give a campaign YAML file (e.g. {p / 'campaign.yaml'})")
    if not p.is_file():
        raise CampaignError(f"campaign {p} is not a regular file; give a campaign YAML file")
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_CAMPAIGN_BYTES + 1)
    except OSError as e:
        raise CampaignError(f"cannot read the campaign file {p}: {e.strerror or e}") from None
    if len(raw) > MAX_CAMPAIGN_BYTES:
        raise CampaignError(f"campaign file {p} is over {MAX_CAMPAIGN_BYTES // 1_000_000} MB; a campaign is a "
                            f"short YAML file (see search/campaigns/quick.yaml)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CampaignError(f"campaign file {p} is not a text (UTF-8) file; give a campaign YAML file") from None
    try:
        spec = yaml.safe_load(text)
        _check_expanded_size(spec, p)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CampaignError(f"campaign file {p} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    except RecursionError:
        raise CampaignError(f"campaign file {p} nests lists or mappings too deeply; a campaign needs a few "
                            f"levels only") from None
    return parse_campaign(spec, source=str(p))


def _check_expanded_size(doc: Any, source: Path) -> None:
    """Refuse a document that holds more than MAX_CAMPAIGN_VALUES values once its aliases are expanded, or
    that refers to itself through one. PyYAML builds an aliased value once and shares it, so loading is
    cheap; everything that walks the spec afterwards (validation, the copy stored with each study) would
    walk every expansion. Sizes are memoised per shared object: linear in the file, whatever it expands to."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(x: Any) -> int:
        if not isinstance(x, (dict, list)):
            return 1
        key = id(x)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise CampaignError(f"campaign file {source} refers to itself through a YAML alias; write the "
                                f"values out instead")
        open_.add(key)
        items = list(x.keys()) + list(x.values()) if isinstance(x, dict) else x
        n = 1
        for item in items:
            n += size(item)
            if n > MAX_CAMPAIGN_VALUES:
                break
        open_.discard(key)
        sizes[key] = n
        return n

    if size(doc) > MAX_CAMPAIGN_VALUES:
        raise CampaignError(f"campaign file {source} expands to more than {MAX_CAMPAIGN_VALUES:,} values through "
                            f"its YAML aliases (&name / *name); a campaign is a short file: write it out plainly")


def parse_campaign(spec: Any, source: str = "campaign") -> Campaign:
    if not isinstance(spec, dict):
        raise CampaignError(f"{source}: a campaign must be a YAML mapping with name, datasets, noise, arms, budget")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise CampaignError(f"{source}: unknown key {unknown[0]!r}; campaign keys are {', '.join(sorted(_KEYS))}")
    name = spec.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise CampaignError(f"{source}: 'name' must be a non-empty string without '/'")
    datasets = _as_list(spec.get("datasets", ["digits"]), "datasets", source)
    noise = spec.get("noise", {"symmetric": [0.4]})
    if not isinstance(noise, dict) or not noise:
        raise CampaignError(f"{source}: 'noise' must map noise kinds to lists of rates, e.g. symmetric: [0.2, 0.4]")
    from dal_search.objectives.losses import LOSSES
    from dal_search.objectives.noise import NOISE_KINDS

    noise_rates: dict[str, list[float]] = {}
    for kind, rates in noise.items():
        if kind not in NOISE_KINDS:
            raise CampaignError(f"{source}: unknown noise kind {kind!r}; choose from {NOISE_KINDS.choices()}")
        rates = _as_list(rates, f"noise.{kind}", source)
        for r in rates:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
                raise CampaignError(f"{source}: noise.{kind} rate {r!r} must be a number in [0, 1)")
        noise_rates[kind] = [float(r) for r in rates]
    arms_spec = spec.get("arms", {"dal": "default"})
    if isinstance(arms_spec, list):
        arms_spec = {a: "default" for a in arms_spec}
    if not isinstance(arms_spec, dict) or not arms_spec:
        raise CampaignError(f"{source}: 'arms' must map loss names to search spaces, e.g. dal: default")
    budget = spec.get("budget", {}) or {}
    if not isinstance(budget, dict) or set(budget) - {"trials", "seeds"}:
        raise CampaignError(f"{source}: 'budget' takes trials (per study) and seeds (list), e.g. {{trials: 8, seeds: [0, 1]}}")
    trials = budget.get("trials")
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        raise CampaignError(f"{source}: budget.trials must be a positive integer, got {trials!r}")
    if trials is not None and trials > MAX_TRIALS:
        raise CampaignError(f"{source}: budget.trials is {trials:,}; at most {MAX_TRIALS:,} trials per study "
                            f"(split the search into several campaigns, or narrow its space)")
    seeds = budget.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if not 1 <= seeds <= MAX_SEEDS:
            raise CampaignError(f"{source}: budget.seeds as a count must be 1 to {MAX_SEEDS:,}, got {seeds:,}")
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise CampaignError(f"{source}: budget.seeds must be a list of integers or a count, got {seeds!r}")
    train = spec.get("train", {}) or {}
    if not isinstance(train, dict):
        raise CampaignError(f"{source}: 'train' must be a mapping of TrainConfig fields")
    for k in ("dataset", "noise", "noise_rate", "loss", "seed"):
        if k in train:
            raise CampaignError(f"{source}: train.{k} is set by the campaign's conditions; remove it from 'train'")
    sampler = spec.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise CampaignError(f"{source}: unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    pruner = str(spec.get("pruner", "none")).lower()
    if pruner not in PRUNERS:
        raise CampaignError(f"{source}: unknown pruner {pruner!r}; choose one of {', '.join(PRUNERS)}")
    metric = spec.get("metric", "val_acc")
    if metric not in METRICS:
        raise CampaignError(f"{source}: unknown metric {metric!r}; choose one of {', '.join(METRICS)}")

    arms: dict[str, dict[str, Any]] = {}
    for arm, space in arms_spec.items():
        if arm not in LOSSES:
            raise CampaignError(f"{source}: unknown arm {arm!r}; arms are losses: {LOSSES.choices()}")
        if space in ("default", None):
            space = default_space(arm)
        arms[arm] = space
    camp = Campaign(name=name, datasets=[str(d) for d in datasets], noise=noise_rates, arms=arms, trials=trials,
                    seeds=[int(s) for s in seeds], train=train, sampler=sampler, pruner=pruner, metric=metric,
                    description=str(spec.get("description", "")))
    # Every condition's base config and space must be valid before anything is written.
    for c in camp.conditions():
        try:
            base = camp.base_config(c)
        except ConfigError as e:
            raise CampaignError(f"{source}: condition {c.study_name}: {e}") from None
        try:
            validate_space(camp.arms[c.arm], f"{source}: arms.{c.arm}", base)
            if sampler == "grid":
                _check_grid(camp.arms[c.arm], f"{source}: arms.{c.arm}")
                grid_size(camp.arms[c.arm])
        except SpaceError as e:
            raise CampaignError(str(e)) from None
        _check_metric_is_measurable(camp, base, source)
    return camp


def _check_metric_is_measurable(camp: Campaign, base: TrainConfig, source: str) -> None:
    """A test-accuracy metric needs clean test labels: a user's data may have none (then its test accuracy
    is unknown, NaN), and a campaign must select on the noisy validation split instead."""
    if "test" not in camp.metric:
        return
    from dal_search.objectives.data import DataError, has_clean_test_labels

    try:
        known = has_clean_test_labels(base.dataset, base.data_dir, base.noise, base.image_size)
    except DataError as e:
        raise CampaignError(f"{source}: {e}") from None
    if not known:
        raise CampaignError(f"{source}: metric {camp.metric!r} needs clean test labels, and {base.dataset} has "
                            f"none under noise {base.noise!r}; select on the noisy validation split: metric: val_acc")


def _check_grid(space: dict[str, Any], where: str) -> None:
    """A grid's size from its spec alone (building it would be the bomb): every step positive, and at most
    MAX_TRIALS points, since each point is one trial."""
    points = 1
    for name, spec in space.items():
        if isinstance(spec, list):
            points *= len(spec)
        elif isinstance(spec, dict) and "step" in spec:
            try:
                low, high, step = float(spec["low"]), float(spec["high"]), float(spec["step"])
            except (TypeError, ValueError):
                raise CampaignError(f"{where}: {name!r} step must be a number") from None
            if not step > 0 or not math.isfinite(step):
                raise CampaignError(f"{where}: {name!r} step must be a positive number, got {spec['step']!r}")
            points *= int(math.floor((high - low) / step + 1e-9)) + 1
        if points > MAX_TRIALS:
            raise CampaignError(f"{where}: the grid has more than {MAX_TRIALS:,} points (one trial each); "
                                f"use larger steps or fewer choices")


def _as_list(value: Any, name: str, source: str) -> list[Any]:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, list) or not value:
        raise CampaignError(f"{source}: {name!r} must be a non-empty list")
    return value


# ------------------------------------------------------------------ studies in a storage

def study_attrs(camp: Campaign, c: Condition) -> dict[str, Any]:
    return {
        "campaign": camp.name, "arm": c.arm, "dataset": c.dataset, "noise": c.noise,
        "noise_rate": c.noise_rate, "metric": camp.metric, "seeds": camp.seeds,
        "base_config": camp.base_config(c).to_dict(), "space": camp.arms[c.arm], "budget": camp.budget(c.arm),
        "sampler": camp.sampler, "pruner": camp.pruner, "requested_trials": camp.trials,
    }


CAMPAIGN_SPEC_ATTR = "dal:campaign_spec"  # the whole campaign, a study SYSTEM attr: kept out of what Optuna prints


def create_studies(storage: optuna.storages.BaseStorage, camp: Campaign) -> list[str]:
    """Create (or find) the campaign's studies and lay down their trial slots. Idempotent.

    A study that exists with a different condition, space, budget or base config is an error: its trials
    would not be comparable. Rename the campaign to start afresh. One exception: a study laid down under an
    earlier budget rule (e.g. 10 identical trials for an arm with nothing to search, before such arms ran
    once) whose campaign asked for the same `budget.trials` keeps the budget it was created with, so
    re-running the same campaign file resumes it; nothing stored is rewritten.
    """
    names = []
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    for c in camp.conditions():
        attrs = study_attrs(camp, c)
        budget = attrs["budget"]
        if c.study_name in existing:
            old = existing[c.study_name].user_attrs
            for key in ("base_config", "space", "seeds", "metric", "sampler"):
                if _canon(old.get(key)) != _canon(attrs[key]):
                    raise CampaignError(
                        f"study {c.study_name} already exists with a different {key}; "
                        f"give the campaign a new name to start a new search (nothing was changed)")
            if _canon(old.get("budget")) != _canon(budget):
                if _requested_trials(old) != camp.trials:
                    raise CampaignError(
                        f"study {c.study_name} already exists with a different budget; "
                        f"give the campaign a new name to start a new search (nothing was changed)")
                budget = int(old["budget"])  # laid under an earlier budget rule: resume it as it was
        study = optuna.create_study(storage=storage, study_name=c.study_name, direction="maximize",
                                    load_if_exists=True)
        if c.study_name not in existing:
            for k, v in attrs.items():
                study.set_user_attr(k, v)
            study._storage.set_study_system_attr(study._study_id, CAMPAIGN_SPEC_ATTR, camp.to_dict())
        _lay_slots(study, camp, c, budget)
        names.append(c.study_name)
    return names


def _requested_trials(attrs: dict[str, Any]) -> Any:
    """The `budget.trials` the campaign that created a study asked for ('missing' when not recorded)."""
    if "requested_trials" in attrs:
        return attrs["requested_trials"]
    spec = attrs.get("campaign_spec")  # studies created before the spec moved out of the user attrs
    if not isinstance(spec, dict) or not isinstance(spec.get("budget"), dict):
        return "missing"
    return spec["budget"].get("trials")


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


SLOT_WINDOW = 8  # WAITING slots kept ahead of the workers when the storage can lock


def _choices_only(space: dict[str, Any]) -> bool:
    """True when every searched field of `space` is a list of choices (and at least one is searched)."""
    from optuna.distributions import CategoricalDistribution

    from dal_search.search.space import distributions

    dists = distributions(space)
    return bool(dists) and all(isinstance(d, CategoricalDistribution) for d in dists.values())


def _lay_slots(study: optuna.Study, camp: Campaign, c: Condition, budget: int | None = None) -> None:
    """Lay the study's slots: grid points for the grid sampler; for a space of choices only, every slot
    its own distinct combination, all laid now (workers top up without knowing the combinations, and a
    sampler left to draw from a handful of choices repeats them); else open slots a window at a time."""
    space = camp.arms[c.arm]
    budget = camp.budget(c.arm) if budget is None else budget
    if camp.sampler == "grid":
        top_up(study, budget, all_grid_points(space))
    elif _choices_only(space) and budget == camp.budget(c.arm):
        _lay_combinations(study, space, budget)
    else:
        top_up(study, budget)


def _lay_combinations(study: optuna.Study, space: dict[str, Any], budget: int) -> int:
    """Lay slots 0..budget-1, slot i holding combination i of the space's choices. With fewer slots than
    combinations, which ones run is a shuffle seeded by the study name (random search without replacement,
    the same on every re-run). Retry slots of failed trials keep their params and do not count."""
    import random

    from dal_search.search.slots import slot_lock

    points = all_grid_points(space)
    if budget < len(points):
        random.Random(study.study_name).shuffle(points)
    with slot_lock(study):  # the lock top_up counts and lays under
        slots = [t for t in study.get_trials(deepcopy=False) if "failed_trial" not in t.system_attrs]
        for i in range(len(slots), budget):
            study.enqueue_trial(points[i], user_attrs={"slot": i}, skip_if_exists=False)
        return max(0, budget - len(slots))


def top_up(study: optuna.Study, budget: int, grid_points: list[dict[str, Any]] | None = None) -> int:
    """Queue the retries that a broken re-queue left missing (see search.slots), then lay WAITING slots until
    the study holds `budget` slots in all, at most SLOT_WINDOW of them waiting. Returns how many trials were
    added (retries and slots).

    Workers only ever pop slots, so a study never runs more than its budget. Slots are laid a window at a
    time because every unfinished trial is re-read by every sampler and pruner call: a budget of 1,000
    laid at once would make each trial read 1,000 rows. Counting and laying happen under the study's slot
    lock, which every storage dal-search opens has (a lock study through a gRPC proxy; none is needed in
    memory, where there is one process)."""
    from dal_search.search.slots import queue_retries, slot_lock

    with slot_lock(study):
        trials = study.get_trials(deepcopy=False)
        retries = queue_retries(study, trials)
        slots = [t for t in trials if "failed_trial" not in t.system_attrs]
        waiting = sum(t.state == TrialState.WAITING for t in slots)
        n = max(0, min(budget - len(slots), SLOT_WINDOW - waiting))
        for i in range(len(slots), len(slots) + n):
            params = grid_points[i % len(grid_points)] if grid_points else {}
            study.enqueue_trial(params, user_attrs={"slot": i}, skip_if_exists=False)
        return retries + n


def campaign_study_names(storage: optuna.storages.BaseStorage, campaign: str | None) -> list[str]:
    """The studies of `campaign` (all dal-search studies when None), in creation order."""
    out = []
    for s in storage.get_all_studies():  # names and attrs only: no study's trials are read
        name = s.user_attrs.get("campaign")
        if name is not None and (campaign is None or name == campaign):
            out.append(s.study_name)
    return out


def progress(storage: optuna.storages.BaseStorage, names: list[str]) -> dict[str, int]:
    """Counts over the campaign: slots done (complete, pruned, failed and not retried), running, waiting."""
    counts = {"done": 0, "running": 0, "waiting": 0, "complete": 0, "pruned": 0, "failed": 0, "budget": 0}
    for name in names:
        study_id = storage.get_study_id_from_name(name)
        counts["budget"] += int(storage.get_study_user_attrs(study_id).get("budget", 0))
        trials = storage.get_all_trials(study_id, deepcopy=False)
        retried = {t.system_attrs.get("failed_trial") for t in trials if "failed_trial" in t.system_attrs}
        for t in trials:
            if t.state == TrialState.COMPLETE:
                counts["complete"] += 1
            elif t.state == TrialState.PRUNED:
                counts["pruned"] += 1
            elif t.state == TrialState.RUNNING:
                counts["running"] += 1
            elif t.state == TrialState.WAITING:
                counts["waiting"] += 1
            elif t.state == TrialState.FAIL and t.number not in retried:
                counts["failed"] += 1
    counts["done"] = counts["complete"] + counts["pruned"] + counts["failed"]
    return counts
