"""Choosing results from studies: each function takes studies (or a study, or a trial) and returns data (trials,
per-seed values, comparisons), never a figure or a sentence."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from dal_search.objectives.registry import NameView, TitleView
from dal_search.search import stats
from dal_search.search.analysis._words import selected_on
from dal_search.search.stats import Comparison

MIN_TRIALS = 3


def _losses():
    from dal_search.objectives.losses import LOSSES

    return LOSSES


def _shapes():
    from dal_search.objectives.schedules import SCHEDULES

    return SCHEDULES


# Titles and order come from the registries, read when first used (a loss registered later shows up too).
ARM_NAMES = TitleView(_losses)
SHAPE_ORDER = NameView(_shapes)


class NotEnoughTrials(ValueError):
    """A figure needs more complete trials than the study has; the message says how many."""


def campaign_studies(storage: optuna.storages.BaseStorage, campaign: str | None = None) -> list[optuna.Study]:
    """The dal-search studies of `campaign` (all of them when None), ordered by condition."""
    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        a = s.user_attrs
        if "campaign" in a and (campaign is None or a["campaign"] == campaign):
            out.append(optuna.load_study(study_name=s.study_name, storage=storage))
    return sorted(out, key=lambda st: (st.user_attrs.get("dataset", ""), st.user_attrs.get("noise", ""),
                                       st.user_attrs.get("noise_rate", 0), st.user_attrs.get("arm", "")))


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's best COMPLETE trial by its own metric (noisy validation by default), or None.
    Ties go to the earlier trial."""
    done = complete_trials(study)
    return max(done, key=lambda t: t.value) if done else None


def best_of(studies: Iterable[optuna.Study]) -> tuple[optuna.Study, FrozenTrial] | None:
    """(study, trial) of the best trial across `studies` on their values, or None."""
    best = [(s, t) for s in studies if (t := best_trial(s)) is not None]
    return max(best, key=lambda st: st[1].value, default=None)


def selection_metric(studies: Iterable[optuna.Study]) -> str:
    """The metric the studies select on (their `metric` attr; val_acc when unset). Mixed metrics are
    joined with ' / ' so a sentence never hides that they differ."""
    metrics = sorted({s.user_attrs.get("metric", "val_acc") for s in studies}) or ["val_acc"]
    return " / ".join(metrics)


def trial_history(trial: FrozenTrial) -> dict[str, list[float]] | None:
    """A trial's per-epoch curves (its first seed): the system attr `dal:curves`, or the user attr `history`
    of trials written before the curves moved out of the printed record."""
    return trial.system_attrs.get("dal:curves") or trial.user_attrs.get("history")


def need(trials: list, study_names: str, at_least: int = MIN_TRIALS, what: str = "this figure") -> None:
    if len(trials) < at_least:
        raise NotEnoughTrials(f"not enough trials: {study_names} has {len(trials)} completed trial"
                              f"{'s' if len(trials) != 1 else ''}, {what} needs at least {at_least}")


def seed_map(t: FrozenTrial, key: str) -> dict[int, float]:
    """{seed: value of `key`} of one trial, from its per-seed rows (a failed or NaN seed is left out).
    A trial without per-seed rows that trained one seed gives that seed its mean; with several seeds and
    no rows, nothing (a mean cannot be split back into seeds)."""
    rows = t.user_attrs.get("per_seed") or []
    if rows:
        return {int(r.get("seed", i)): float(r[key]) for i, r in enumerate(rows)
                if r.get(key) is not None and not _nan(r[key])}
    seeds = t.user_attrs.get("seeds") or [0]
    value = t.user_attrs.get(key)
    return {int(seeds[0]): float(value)} if value is not None and not _nan(value) and len(seeds) == 1 else {}


def seed_means(trials: Iterable[FrozenTrial], key: str) -> dict[int, float]:
    """{seed: mean over `trials` of that seed's value}: several trials of one arm, shape or point become one
    value per seed, so a comparison pairs seeds (the same noise draw), not trials."""
    acc: dict[int, list[float]] = defaultdict(list)
    for t in trials:
        for s, v in seed_map(t, key).items():
            acc[s].append(v)
    return {s: statistics.fmean(v) for s, v in sorted(acc.items())}


def seed_values(t: FrozenTrial, key: str) -> list[float]:
    return list(seed_map(t, key).values())


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def param(t: FrozenTrial, name: str) -> Any:
    if name in t.params:
        return t.params[name]
    return (t.user_attrs.get("train_config") or {}).get(name)


def shape_of(t: FrozenTrial) -> str:
    return param(t, "schedule") or "linear"


def paper_default() -> tuple[float, float]:
    """The paper's (q_s, q_e): TrainConfig's defaults, read from its fields (the one place they are written)."""
    from dal_search.objectives.config import TrainConfig

    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return float(defaults["q_start"]), float(defaults["q_end"])


def schedule_point(t: FrozenTrial | None) -> tuple[float, float]:
    """(q_s, q_e) of a trial (its params, else its train config); the paper's default for None or a missing one."""
    default = paper_default()
    if t is None:
        return default
    qs, qe = param(t, "q_start"), param(t, "q_end")
    return (float(qs) if qs is not None else default[0]), (float(qe) if qe is not None else default[1])


def dal_studies(studies: Iterable[optuna.Study]) -> list[optuna.Study]:
    return [s for s in studies if s.user_attrs.get("arm") == "dal"]


Cond = tuple[str, str, float]  # (dataset, noise kind, noise rate)


def condition(s: optuna.Study) -> Cond:
    a = s.user_attrs
    return a.get("dataset", ""), a["noise"], float(a["noise_rate"])


@dataclass
class Point:
    """One q_s x q_e point of a panel: every complete trial there (a grid repeat, or several shapes pooled)."""

    q_start: float
    q_end: float
    trials: list[FrozenTrial] = field(default_factory=list)

    @property
    def selection(self) -> float:
        """Mean over the point's trials of their value (the study's metric, a mean over seeds)."""
        return statistics.fmean(t.value for t in self.trials)

    def seeds(self, key: str) -> dict[int, float]:
        return seed_means(self.trials, key)


@dataclass
class Panel:
    """The points of one noise setting and one schedule shape (`shape` None: shapes pooled)."""

    cond: Cond
    shape: str | None
    shapes: list[str]
    points: dict[tuple[float, float], Point]
    study_names: list[str]
    metric: str

    def title(self, label) -> str:
        what = self.shape if self.shape else "shapes pooled: " + ", ".join(self.shapes)
        return f"{label(self.cond)}, {what}"

    def ranked(self) -> list[Point]:
        """Points by selection value, best first (ties: the earlier-sampled point first)."""
        return sorted(self.points.values(), key=lambda p: -p.selection)


def shape_sort(shapes: Iterable[str]) -> list[str]:
    return sorted(set(shapes), key=lambda s: (SHAPE_ORDER.index(s) if s in SHAPE_ORDER else 99, s))


def _points(trials: Iterable[FrozenTrial]) -> dict[tuple[float, float], Point]:
    pts: dict[tuple[float, float], Point] = {}
    for t in trials:
        qs, qe = param(t, "q_start"), param(t, "q_end")
        if qs is None or qe is None:
            continue
        p = (round(float(qs), 4), round(float(qe), 4))
        pts.setdefault(p, Point(*p)).trials.append(t)
    return pts


def surface_panels(studies: Iterable[optuna.Study]) -> list[Panel]:
    """The DAL studies' q_s x q_e points, one panel per noise setting and schedule shape with at least
    MIN_TRIALS distinct points. A setting whose shapes each have fewer gets one pooled panel
    (`shape` None) if the pooled points reach MIN_TRIALS; a setting with one shape gets that shape's panel."""
    by_cond: dict[Cond, list[optuna.Study]] = defaultdict(list)
    for s in dal_studies(studies):
        by_cond[condition(s)].append(s)
    panels = []
    for cond in sorted(by_cond):
        group = by_cond[cond]
        trials = [t for s in group for t in complete_trials(s)]
        names = [s.study_name for s in group]
        metric = selection_metric(group)
        shapes = shape_sort(shape_of(t) for t in trials)
        split = [Panel(cond, sh, shapes, _points(t for t in trials if shape_of(t) == sh), names, metric)
                 for sh in shapes]
        split = [p for p in split if len(p.points) >= MIN_TRIALS]
        if split:
            panels += split
            continue
        pooled = _points(trials)
        if len(pooled) >= MIN_TRIALS:
            panels.append(Panel(cond, None, shapes, pooled, names, metric))
    return panels


def max_points(studies: list[optuna.Study]) -> int:
    by_cond: dict[Cond, list[FrozenTrial]] = defaultdict(list)
    for s in dal_studies(studies):
        by_cond[condition(s)] += complete_trials(s)
    return max((len(_points(ts)) for ts in by_cond.values()), default=0)


# ---------------------------------------------------------------- Q1: schedule shapes

def schedule_data(studies: Iterable[optuna.Study], key: str = "test_acc") -> dict[Cond, dict[str, list[float]]]:
    """Per noise setting: {shape: every seed's value of every complete DAL trial of that shape}."""
    out: dict[Cond, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in dal_studies(studies):
        for t in complete_trials(s):
            out[condition(s)][shape_of(t)].extend(seed_values(t, key))
    return out


@dataclass
class ShapeResult:
    """Shapes at one noise setting: per-seed means over each shape's trials, each shape vs `reference`."""

    cond: Cond
    reference: str
    seeds: dict[str, dict[int, float]]
    trials: dict[str, int]
    pooling: str
    comparisons: dict[str, Comparison]


def _pooling(trials_by_shape: dict[str, list[FrozenTrial]]) -> str:
    """Words for what else varied between the trials of the shapes being compared."""
    settings = {sh: {tuple(sorted((k, round(v, 4) if isinstance(v, float) else v) for k, v in t.params.items()
                                  if k != "schedule")) for t in ts} for sh, ts in trials_by_shape.items()}
    knobs = sorted({k for ss in settings.values() for s in ss for k, _ in s})
    if not knobs:
        return "every other knob fixed"
    names = ", ".join(knobs)
    if len({frozenset(s) for s in settings.values()}) == 1:
        (one,) = {frozenset(s) for s in settings.values()}
        if len(one) == 1:
            return "each shape at " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in next(iter(one)))
        return f"each shape at the same {len(one)} settings of {names}"
    return f"{names} pooled over what the sampler chose for each shape, not the same points"


def shape_results(studies: Iterable[optuna.Study], key: str = "test_acc") -> list[ShapeResult]:
    """Per noise setting with at least two shapes: each shape vs linear (the paper's shape; the first shape in
    SHAPE_ORDER when linear was not tried), paired by seed over per-seed means of each shape's trials."""
    by_cond: dict[Cond, dict[str, list[FrozenTrial]]] = defaultdict(lambda: defaultdict(list))
    for s in dal_studies(studies):
        for t in complete_trials(s):
            by_cond[condition(s)][shape_of(t)].append(t)
    out = []
    for cond in sorted(by_cond):
        groups = by_cond[cond]
        shapes = shape_sort(groups)
        if len(shapes) < 2:
            continue
        ref = "linear" if "linear" in shapes else shapes[0]
        seeds = {sh: seed_means(groups[sh], key) for sh in shapes}
        out.append(ShapeResult(cond, ref, seeds, {sh: len(groups[sh]) for sh in shapes},
                               _pooling(groups),
                               {sh: stats.compare(seeds[sh], seeds[ref]) for sh in shapes if sh != ref}))
    return out


# ---------------------------------------------------------------- DAL vs baselines

def arm_data(studies: Iterable[optuna.Study], key: str = "test_acc") -> dict[str, dict[Cond, list]]:
    """arm -> noise setting -> per-seed values of the study's best trial (by the study's metric)."""
    out: dict[str, dict] = defaultdict(dict)
    for s in studies:
        best = best_trial(s)
        if best is None:
            continue
        out[s.user_attrs["arm"]][condition(s)] = seed_values(best, key)
    return out


def arm_order(arm: str) -> int:
    return list(ARM_NAMES).index(arm) if arm in ARM_NAMES else 99


@dataclass
class ArmResult:
    """DAL's best trial vs the best baseline's at one noise setting, and vs every baseline."""

    cond: Cond
    dal: FrozenTrial
    dal_trials: int
    baseline: str
    baseline_trial: FrozenTrial
    comparison: Comparison
    each: dict[str, Comparison]
    selected_on: str


def arm_results(studies: Iterable[optuna.Study], key: str = "test_acc") -> list[ArmResult]:
    """Per noise setting with a DAL study and at least one baseline, each with a complete trial. The best
    baseline is the one whose best trial has the best value (the campaign's selection metric, noisy
    validation by default): never chosen on `key`. Ties go to the earlier arm in ARM_NAMES."""
    by_cond: dict[Cond, dict[str, optuna.Study]] = defaultdict(dict)
    for s in studies:
        by_cond[condition(s)][s.user_attrs["arm"]] = s
    out = []
    for cond in sorted(by_cond):
        arms = by_cond[cond]
        if "dal" not in arms or (dal := best_trial(arms["dal"])) is None:
            continue
        bests = {a: t for a, s in sorted(arms.items(), key=lambda kv: arm_order(kv[0]))
                 if a != "dal" and (t := best_trial(s)) is not None}
        if not bests:
            continue
        top = max(bests, key=lambda a: bests[a].value)
        d = seed_map(dal, key)
        each = {a: stats.compare(d, seed_map(t, key)) for a, t in bests.items()}
        out.append(ArmResult(cond, dal, len(complete_trials(arms["dal"])), top, bests[top], each[top], each,
                             selected_on(arms.values())))
    return out


# ---------------------------------------------------------------- Q3 in words: the best point

@dataclass
class SurfaceResult:
    """A panel's best point on the selection metric, compared on `key` with the runner-up and the worst."""

    panel: Panel
    best: Point
    runner_up: Point
    worst: Point
    vs_runner_up: Comparison
    vs_worst: Comparison
    default: Point | None = None  # the paper's (q_s, q_e), `paper_default()`, where the panel has it
    default_vs_best: Comparison | None = None  # default − best on `key`; None where absent or it is the best


def surface_results(studies: Iterable[optuna.Study], key: str = "test_acc") -> list[SurfaceResult]:
    q_s, q_e = paper_default()
    out = []
    for panel in surface_panels(studies):
        ranked = panel.ranked()
        best, runner, worst = ranked[0], ranked[1], ranked[-1]
        b = best.seeds(key)
        default = next((p for p in ranked if math.isclose(p.q_start, q_s) and math.isclose(p.q_end, q_e)), None)
        out.append(SurfaceResult(panel, best, runner, worst, stats.compare(b, runner.seeds(key)),
                                 stats.compare(b, worst.seeds(key)), default,
                                 stats.compare(default.seeds(key), b) if default not in (None, best) else None))
    return out


# ---------------------------------------------------------------- Q1, learned: schedules found by PBT

LEARNED = "explicit"  # the shape of a schedule given epoch by epoch, as PBT's members carry theirs


@dataclass
class LearnedResult:
    """One noise setting's learned schedules (trials with schedule explicit, e.g. PBT's members, best first on
    the selection metric) and the best fixed-shape DAL trial on it, compared on `key` (None: no fixed one)."""

    cond: Cond
    members: list[FrozenTrial]
    fixed: FrozenTrial | None
    fixed_trials: int
    comparison: Comparison | None
    selected_on: str


def has_learned(studies: Iterable[optuna.Study]) -> bool:
    return any(shape_of(t) == LEARNED for s in dal_studies(studies) for t in complete_trials(s))


def learned_results(studies: Iterable[optuna.Study], key: str = "test_acc") -> list[LearnedResult]:
    """Per noise setting with a learned schedule: its members best first, and the best learned one vs the best
    fixed-shape trial (both chosen on the selection metric, in any of `studies`), paired by seed on `key`."""
    learned: dict[Cond, list[FrozenTrial]] = defaultdict(list)
    fixed: dict[Cond, list[FrozenTrial]] = defaultdict(list)
    studies_of: dict[Cond, list[optuna.Study]] = defaultdict(list)
    for s in dal_studies(studies):
        studies_of[condition(s)].append(s)
        for t in complete_trials(s):
            (learned if shape_of(t) == LEARNED else fixed)[condition(s)].append(t)
    out = []
    for cond in sorted(learned):
        members = sorted(learned[cond], key=lambda t: -t.value)
        best = max(fixed[cond], key=lambda t: t.value) if fixed[cond] else None
        comparison = stats.compare(seed_map(members[0], key), seed_map(best, key)) if best is not None else None
        out.append(LearnedResult(cond, members, best, len(fixed[cond]), comparison, selected_on(studies_of[cond])))
    return out
