"""Analysis: functions from a campaign (or one study, or one trial) to a plotly figure, plus findings in words.

The paper's open questions, each a figure:

    sensitivity_surface   Q3: test accuracy over q_s x q_e, one panel per noise setting and schedule shape
                          (shapes are pooled in a panel only when no single shape has enough points, and the
                          panel's title says so); every sampled point is drawn with its mean over seeds and
                          spread, and the best point, chosen on the campaign's selection metric (noisy
                          validation by default), is starred with its test accuracy beside it
    schedule_comparison   Q1: accuracy by schedule shape per noise setting (every seed of every trial, as boxes)
    learned_schedules     Q1, learned: the q(t), lambda(t) that PBT's best members learned (search/tune.py) beside
                          the fixed shapes, and the best learned vs the best fixed-shape trial over seeds
    arm_comparison        DAL vs the baselines across noise kinds and rates (best trial per study by the
                          study's own metric, i.e. noisy validation; bars are mean ± std over its seeds,
                          drawn only where a bar has more than one seed)
    importances           which knobs matter (fANOVA over the study's complete trials)
    trial_curves          one trial: q(t) and lambda(t) beside its accuracy and memorisation curves

Every comparison in words (`findings`, and the tables of search/tables.py) is made by search/stats.py over
seeds, paired by seed: n, the mean difference, its 95 % interval and a verdict. The structured results behind
them are `arm_results`, `shape_results` and `surface_results`.

Selection never looks at test labels unless the campaign asked for it (`metric: test_acc`): a study's best
trial is the one with the best value (the mean over seeds of the campaign's metric), the best baseline is
the baseline whose best trial has the best value, and the best q_s x q_e point is the one whose trials have
the best mean value.

Studies that cannot support a figure (0, 1 or 2 complete trials; all failed) raise `NotEnoughTrials` with a
sentence saying so; the report and the dashboard show that sentence instead of the figure.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from dal_search.objectives.registry import NameView, TitleView
from dal_search.search import stats
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

# How a finding names what a selection rests on, and what a compared number is.
SELECTED_ON = {
    "val_acc": "noisy validation accuracy",
    "best_val_acc": "best-epoch noisy validation accuracy",
    "test_acc": "clean TEST accuracy (selection on test labels, so optimistic)",
    "best_test_acc": "best-epoch clean TEST accuracy (selection on test labels, so optimistic)",
}
KEY_WORDS = {
    "test_acc": "test accuracy",
    "best_test_acc": "best-epoch test accuracy",
    "test_acc_at_best_val": "test accuracy at the best noisy-validation epoch",
    "val_acc": "noisy validation accuracy",
    "best_val_acc": "best-epoch noisy validation accuracy",
    "noisy_fit": "noisy fit",
    "clean_fit": "clean fit",
}


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


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's best COMPLETE trial by its own metric (noisy validation by default), or None.
    Ties go to the earlier trial."""
    done = _complete(study)
    return max(done, key=lambda t: t.value) if done else None


def selection_metric(studies: Iterable[optuna.Study]) -> str:
    """The metric the studies select on (their `metric` attr; val_acc when unset). Mixed metrics are
    joined with ' / ' so a sentence never hides that they differ."""
    metrics = sorted({s.user_attrs.get("metric", "val_acc") for s in studies}) or ["val_acc"]
    return " / ".join(metrics)


# Under partial labels a validation accuracy is covering accuracy: the prediction falls in the candidate set.
SELECTED_ON_PARTIAL = {
    "val_acc": "covering accuracy on the validation split (candidate sets)",
    "best_val_acc": "best-epoch covering accuracy on the validation split (candidate sets)",
}


def selected_on(studies: Iterable[optuna.Study]) -> str:
    """Words for what the studies' selections rest on, e.g. 'noisy validation accuracy' (for partial labels:
    'covering accuracy on the validation split'); different words of different studies are joined by ' / '."""
    words: list[str] = []
    for s in studies:
        m = s.user_attrs.get("metric", "val_acc")
        w = (SELECTED_ON_PARTIAL if s.user_attrs.get("noise") == "partial" else SELECTED_ON).get(m) \
            or SELECTED_ON.get(m, m)
        if w not in words:
            words.append(w)
    return " / ".join(words) or SELECTED_ON["val_acc"]


def trial_history(trial: FrozenTrial) -> dict[str, list[float]] | None:
    """A trial's per-epoch curves (its first seed): the system attr `dal:curves`, or the user attr `history`
    of trials written before the curves moved out of the printed record."""
    return trial.system_attrs.get("dal:curves") or trial.user_attrs.get("history")


def _need(trials: list, study_names: str, at_least: int = MIN_TRIALS, what: str = "this figure") -> None:
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


def _seed_values(t: FrozenTrial, key: str) -> list[float]:
    return list(seed_map(t, key).values())


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _param(t: FrozenTrial, name: str) -> Any:
    if name in t.params:
        return t.params[name]
    return (t.user_attrs.get("train_config") or {}).get(name)


def _shape(t: FrozenTrial) -> str:
    return _param(t, "schedule") or "linear"


def _rate_label(r: float) -> str:
    return f"{100 * r:g} %"


def _dal_studies(studies: Iterable[optuna.Study]) -> list[optuna.Study]:
    return [s for s in studies if s.user_attrs.get("arm") == "dal"]


Cond = tuple[str, str, float]  # (dataset, noise kind, noise rate)


def _cond(s: optuna.Study) -> Cond:
    a = s.user_attrs
    return a.get("dataset", ""), a["noise"], float(a["noise_rate"])


def _labeller(studies: Iterable[optuna.Study]):
    """'symmetric 40 %' (a noise kind's registered title: 'partial labels 30 %'), with the dataset in front when
    the studies span more than one dataset."""
    from dal_search.objectives.noise import NOISE_KINDS

    several = len({s.user_attrs.get("dataset", "") for s in studies}) > 1
    titles = NOISE_KINDS.titles()

    def label(c: Cond) -> str:
        return (f"{c[0]} " if several else "") + f"{titles.get(c[1], c[1])} {_rate_label(c[2])}"
    return label


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def _mean_sd(values: list[float]) -> str:
    """'95.1 % ± 0.9 (n=3 seeds)', or '95.1 % (n=1 seed, no spread)'."""
    if not values:
        return "no value"
    mean, sd = stats.spread(values)
    if sd is None:
        return f"{_pct(mean)} (n=1 seed, no spread)"
    return f"{_pct(mean)} ± {100 * sd:.1f} (n={len(values)} seeds)"


# ---------------------------------------------------------------- Q3: q_s x q_e surfaces

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


def _shape_sort(shapes: Iterable[str]) -> list[str]:
    return sorted(set(shapes), key=lambda s: (SHAPE_ORDER.index(s) if s in SHAPE_ORDER else 99, s))


def _points(trials: Iterable[FrozenTrial]) -> dict[tuple[float, float], Point]:
    pts: dict[tuple[float, float], Point] = {}
    for t in trials:
        qs, qe = _param(t, "q_start"), _param(t, "q_end")
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
    for s in _dal_studies(studies):
        by_cond[_cond(s)].append(s)
    panels = []
    for cond in sorted(by_cond):
        group = by_cond[cond]
        trials = [t for s in group for t in _complete(s)]
        names = [s.study_name for s in group]
        metric = selection_metric(group)
        shapes = _shape_sort(_shape(t) for t in trials)
        split = [Panel(cond, sh, shapes, _points(t for t in trials if _shape(t) == sh), names, metric)
                 for sh in shapes]
        split = [p for p in split if len(p.points) >= MIN_TRIALS]
        if split:
            panels += split
            continue
        pooled = _points(trials)
        if len(pooled) >= MIN_TRIALS:
            panels.append(Panel(cond, None, shapes, pooled, names, metric))
    return panels


def _max_points(studies: list[optuna.Study]) -> int:
    by_cond: dict[Cond, list[FrozenTrial]] = defaultdict(list)
    for s in _dal_studies(studies):
        by_cond[_cond(s)] += _complete(s)
    return max((len(_points(ts)) for ts in by_cond.values()), default=0)


def sensitivity_surface(studies: list[optuna.Study], key: str = "test_acc") -> go.Figure:
    names = ", ".join(s.study_name for s in _dal_studies(studies)) or "the campaign (no DAL study)"
    panels = surface_panels(studies)
    if not panels:
        _need(list(range(_max_points(studies))), names,
              what="a q_s x q_e surface (distinct points per noise setting)")
    label = _labeller(studies)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p.title(label) for p in panels],
                        horizontal_spacing=0.06)
    values = {(i, q): list(pt.seeds(key).values()) for i, p in enumerate(panels) for q, pt in p.points.items()}
    all_means = [statistics.fmean(v) for v in values.values() if v]
    if not all_means:
        raise NotEnoughTrials(f"not enough trials: {names} has no per-seed {key} to draw")
    zmin, zmax = min(all_means), max(all_means)
    sel = selected_on(studies)
    for col, panel in enumerate(panels, start=1):
        i = col - 1
        pts = {q: values[(i, q)] for q in panel.points if values[(i, q)]}
        q_s = sorted({p[0] for p in pts})
        q_e = sorted({p[1] for p in pts})
        mean = {p: statistics.fmean(v) for p, v in pts.items()}
        text = {p: _hover(p, key, pts[p], panel.points[p]) for p in pts}
        if len(pts) == len(q_s) * len(q_e):
            z = [[mean.get((a, b)) for a in q_s] for b in q_e]
            fig.add_trace(go.Heatmap(x=q_s, y=q_e, z=z, text=[[text.get((a, b), "") for a in q_s] for b in q_e],
                                     hoverinfo="text", zmin=zmin, zmax=zmax, colorscale="Viridis",
                                     showscale=col == len(panels), colorbar={"title": key}), row=1, col=col)
        else:  # scattered (TPE) points: an interpolated contour under the sampled points
            xs, ys = zip(*mean)
            fig.add_trace(go.Contour(x=list(xs), y=list(ys), z=[mean[p] for p in mean], zmin=zmin, zmax=zmax,
                                     colorscale="Viridis", showscale=col == len(panels), connectgaps=True,
                                     contours={"coloring": "heatmap"}, hoverinfo="skip", opacity=0.85,
                                     colorbar={"title": key}), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=[p[0] for p in mean], y=[p[1] for p in mean], mode="markers", showlegend=False,
            marker={"size": 6, "color": "white", "line": {"width": 1, "color": "black"}},
            text=[text[p] for p in mean], hoverinfo="text"), row=1, col=col)
        best = panel.ranked()[0]
        b = (best.q_start, best.q_end)
        if b in pts:
            fig.add_trace(go.Scatter(
                x=[b[0]], y=[b[1]], mode="markers", name=f"best on {sel}", showlegend=col == 1,
                marker={"size": 16, "symbol": "star", "color": "gold", "line": {"width": 1, "color": "black"}},
                text=[f"best point on {sel}: q_s {b[0]:g}, q_e {b[1]:g}<br>{panel.metric} {best.selection:.3f}; "
                      f"{KEY_WORDS.get(key, key)} {_mean_sd(pts[b])}"], hoverinfo="text"), row=1, col=col)
        fig.update_xaxes(title_text="q_s (q_start)", row=1, col=col)
        fig.update_yaxes(title_text="q_e (q_end)" if col == 1 else None, row=1, col=col)
    counts = [len(v) for v in values.values() if v]
    lo, hi = min(counts), max(counts)
    seeds = ("n=1 seed per point: no spread" if hi == 1 else
             f"n={hi} seeds per point" if lo == hi else f"n={lo}-{hi} seeds per point")
    pooled = any(p.shape is None for p in panels)
    fig.update_layout(
        title=f"Sensitivity of DAL to q_s x q_e ({key}, mean over seeds)<br><sup>{seeds}; star: the best point "
              f"on {sel}" + ("; panels marked 'shapes pooled' mix schedule shapes" if pooled else "") + "</sup>",
        legend={"orientation": "h", "x": 0, "y": -0.22}, margin={"t": 90},
        height=480, width=max(500, 360 * len(panels)))
    return fig


def _hover(p: tuple[float, float], key: str, values: list[float], point: Point) -> str:
    k = len(point.trials)
    return (f"q_s {p[0]:g}, q_e {p[1]:g}<br>{key} {_mean_sd(values)}"
            + (f"<br>{k} trials averaged per seed" if k > 1 else ""))


# ---------------------------------------------------------------- Q1: schedule shapes

def schedule_data(studies: Iterable[optuna.Study], key: str = "test_acc") -> dict[Cond, dict[str, list[float]]]:
    """Per noise setting: {shape: every seed's value of every complete DAL trial of that shape}."""
    out: dict[Cond, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in _dal_studies(studies):
        for t in _complete(s):
            out[_cond(s)][_shape(t)].extend(_seed_values(t, key))
    return out


def schedule_comparison(studies: list[optuna.Study], key: str = "test_acc") -> go.Figure:
    data = schedule_data(studies, key)
    shapes = _shape_sort(sh for d in data.values() for sh in d)
    n_values = sum(len(v) for d in data.values() for v in d.values())
    names = ", ".join(s.study_name for s in _dal_studies(studies)) or "the campaign (no DAL study)"
    _need(list(range(n_values)), names, what="a schedule comparison")
    if len(shapes) < 2:
        raise NotEnoughTrials(f"not enough trials: {names} tried only the {shapes[0]!r} schedule; a comparison "
                              f"needs at least two shapes")
    fig = go.Figure()
    conds = sorted(data)
    label = _labeller(studies)
    single = False
    for shape in shapes:
        xs, ys, text = [], [], []
        for cond in conds:
            vals = data[cond].get(shape, [])
            single |= len(vals) == 1
            xs += [label(cond)] * len(vals)
            ys += vals
            text += [f"{shape}, {label(cond)}: {len(vals)} value{'s' if len(vals) != 1 else ''} "
                     f"(seeds x trials)"] * len(vals)
        fig.add_trace(go.Box(x=xs, y=ys, name=shape, boxpoints="all", jitter=0.3, pointpos=0, text=text))
    fig.update_layout(boxmode="group", title=f"Schedule shape vs {key} per noise setting (every seed of every trial"
                      + ("; a box of one value has no spread" if single else "") + ")",
                      yaxis_title=key, xaxis_title="noise", height=420, width=900)
    return fig


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
    for s in _dal_studies(studies):
        for t in _complete(s):
            by_cond[_cond(s)][_shape(t)].append(t)
    out = []
    for cond in sorted(by_cond):
        groups = by_cond[cond]
        shapes = _shape_sort(groups)
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
        out[s.user_attrs["arm"]][_cond(s)] = _seed_values(best, key)
    return out


def _arm_order(arm: str) -> int:
    return list(ARM_NAMES).index(arm) if arm in ARM_NAMES else 99


def arm_comparison(studies: list[optuna.Study], key: str = "test_acc") -> go.Figure:
    data = arm_data(studies, key)
    if not data:
        names = ", ".join(s.study_name for s in studies) or "the campaign"
        raise NotEnoughTrials(f"not enough trials: {names} has no completed trial to compare")
    conds = sorted({c for d in data.values() for c in d})
    label = _labeller(studies)
    labels = [label(c) for c in conds]
    fig = go.Figure()
    single = False
    for arm in sorted(data, key=_arm_order):
        vals = [data[arm].get(c) or [] for c in conds]
        means = [statistics.fmean(v) if v else None for v in vals]
        sds = [stats.spread(v)[1] if v else None for v in vals]
        single |= any(len(v) == 1 for v in vals)
        fig.add_trace(go.Bar(x=labels, y=means, name=ARM_NAMES.get(arm, arm),
                             error_y={"type": "data", "array": sds, "visible": any(sd is not None for sd in sds)},
                             hovertext=[f"{ARM_NAMES.get(arm, arm)}, {lab}: {_mean_sd(v)}" if v else ""
                                        for lab, v in zip(labels, vals)], hoverinfo="text"))
    fig.update_layout(barmode="group",
                      title=f"DAL vs baselines: {key} of each study's best trial on {selected_on(studies)} "
                            f"(mean ± std over seeds" + ("; a bar of n=1 seed has no error bar" if single else "")
                            + ")",
                      yaxis_title=key, xaxis_title="noise", height=440, width=950)
    return fig


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
        by_cond[_cond(s)][s.user_attrs["arm"]] = s
    out = []
    for cond in sorted(by_cond):
        arms = by_cond[cond]
        if "dal" not in arms or (dal := best_trial(arms["dal"])) is None:
            continue
        bests = {a: t for a, s in sorted(arms.items(), key=lambda kv: _arm_order(kv[0]))
                 if a != "dal" and (t := best_trial(s)) is not None}
        if not bests:
            continue
        top = max(bests, key=lambda a: bests[a].value)
        d = seed_map(dal, key)
        each = {a: stats.compare(d, seed_map(t, key)) for a, t in bests.items()}
        out.append(ArmResult(cond, dal, len(_complete(arms["dal"])), top, bests[top], each[top], each,
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
    default: Point | None = None  # the paper's (q_s, q_e), TrainConfig's defaults, where the panel has it
    default_vs_best: Comparison | None = None  # default − best on `key`; None where absent or it is the best


def surface_results(studies: Iterable[optuna.Study], key: str = "test_acc") -> list[SurfaceResult]:
    from dal_search.objectives.config import TrainConfig

    paper = TrainConfig()
    out = []
    for panel in surface_panels(studies):
        ranked = panel.ranked()
        best, runner, worst = ranked[0], ranked[1], ranked[-1]
        b = best.seeds(key)
        default = next((p for p in ranked if math.isclose(p.q_start, paper.q_start)
                        and math.isclose(p.q_end, paper.q_end)), None)
        out.append(SurfaceResult(panel, best, runner, worst, stats.compare(b, runner.seeds(key)),
                                 stats.compare(b, worst.seeds(key)), default,
                                 stats.compare(default.seeds(key), b) if default not in (None, best) else None))
    return out


# ---------------------------------------------------------------- importances and one trial

def importances(study: optuna.Study) -> go.Figure:
    done = _complete(study)
    _need(done, study.study_name, at_least=4, what="parameter importances")
    params = {k for t in done for k in t.params}
    if len(params) < 2:
        raise NotEnoughTrials(f"not enough parameters: {study.study_name} searches {len(params)}, importances "
                              f"need at least two")
    imp = optuna.importance.get_param_importances(study)
    names = list(imp)[::-1]
    fig = go.Figure(go.Bar(x=[imp[n] for n in names], y=names, orientation="h"))
    fig.update_layout(title=f"Parameter importances (fANOVA): {study.study_name}", xaxis_title="importance",
                      height=120 + 40 * len(names), width=700)
    return fig


def trial_curves(trial: FrozenTrial, title: str | None = None) -> go.Figure:
    h = trial_history(trial)
    if not h or not h.get("epoch"):
        raise NotEnoughTrials(f"trial {trial.number} has no per-epoch history to plot")
    fig = make_subplots(rows=1, cols=3, subplot_titles=["q(t) and lambda(t)", "accuracy", "memorisation"])
    ep = h["epoch"]
    fig.add_trace(go.Scatter(x=ep, y=h["q"], name="q"), row=1, col=1)
    fig.add_trace(go.Scatter(x=ep, y=h["lam"], name="lambda"), row=1, col=1)
    for k in ("train_acc", "val_acc", "test_acc"):
        fig.add_trace(go.Scatter(x=ep, y=h[k], name=k), row=1, col=2)
    fig.add_trace(go.Scatter(x=ep, y=h["noisy_fit"], name="noisy fit (wrong labels memorised)"), row=1, col=3)
    fig.add_trace(go.Scatter(x=ep, y=h["clean_fit"], name="clean fit"), row=1, col=3)
    for c in (1, 2, 3):
        fig.update_xaxes(title_text="epoch", row=1, col=c)
    fig.update_layout(title=title or f"Trial {trial.number}: schedule, learning and memorisation", height=380,
                      width=1150)
    return fig


# ---------------------------------------------------------------- Q1, learned: schedules found by PBT

LEARNED = "explicit"  # the shape of a schedule given epoch by epoch, as PBT's members carry theirs
_SHAPE_COLOURS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#bcbd22"]  # fixed shapes
_LEARNED_COLOURS = ["#000000", "#d62728", "#e377c2"]  # the best learned schedule, then the next two


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
    return any(_shape(t) == LEARNED for s in _dal_studies(studies) for t in _complete(s))


def learned_results(studies: Iterable[optuna.Study], key: str = "test_acc") -> list[LearnedResult]:
    """Per noise setting with a learned schedule: its members best first, and the best learned one vs the best
    fixed-shape trial (both chosen on the selection metric, in any of `studies`), paired by seed on `key`."""
    learned: dict[Cond, list[FrozenTrial]] = defaultdict(list)
    fixed: dict[Cond, list[FrozenTrial]] = defaultdict(list)
    studies_of: dict[Cond, list[optuna.Study]] = defaultdict(list)
    for s in _dal_studies(studies):
        studies_of[_cond(s)].append(s)
        for t in _complete(s):
            (learned if _shape(t) == LEARNED else fixed)[_cond(s)].append(t)
    out = []
    for cond in sorted(learned):
        members = sorted(learned[cond], key=lambda t: -t.value)
        best = max(fixed[cond], key=lambda t: t.value) if fixed[cond] else None
        comparison = stats.compare(seed_map(members[0], key), seed_map(best, key)) if best is not None else None
        out.append(LearnedResult(cond, members, best, len(fixed[cond]), comparison, selected_on(studies_of[cond])))
    return out


def learned_schedules(studies: list[optuna.Study], key: str = "test_acc", top: int = 3) -> go.Figure:
    """The q(t) and lambda(t) (times bootstrap_scale: the weight the loss applies) of each setting's `top`
    learned schedules (the best solid and thick), beside the fixed shapes drawn at the q_s, q_e and epochs of
    the best fixed-shape trial (the paper's 0.6, 1.5 when the setting has none). Each q(t) panel's title holds
    the comparison of the best learned schedule with the best fixed-shape trial."""
    from dal_search.objectives.schedules import dal_schedule

    results = learned_results(studies, key)
    if not results:
        raise NotEnoughTrials("not enough trials: no completed trial with a learned (explicit) schedule; run "
                              "'dal-search tune CAMPAIGN --scheduler pbt'")
    label = _labeller(studies)
    titles = []
    for r in results:
        if r.comparison is None:
            verdict = "no fixed-shape trial to compare with"
        else:
            verdict = (f"learned - best fixed ({_shape(r.fixed)}): {stats.cell(r.comparison)} points of "
                       f"{KEY_WORDS.get(key, key)}<br>n={r.comparison.n} seeds: {r.comparison.verdict}")
        cfg = (r.fixed.user_attrs.get("train_config") or {}) if r.fixed else {}
        where = (f"fixed shapes at the best fixed trial's<br>q_s {float(cfg.get('q_start', 0.6)):.3g}, "
                 f"q_e {float(cfg.get('q_end', 1.5)):.3g}" if r.fixed else "fixed shapes at the paper's<br>q_s 0.6, q_e 1.5")
        titles += [f"{label(r.cond)}: q(t)<br><sup>{verdict}</sup>",
                   f"{label(r.cond)}: lambda(t) x bootstrap_scale<br><sup>{where}</sup>"]
    fig = make_subplots(rows=len(results), cols=2, subplot_titles=titles, vertical_spacing=0.35 / len(results),
                        horizontal_spacing=0.08)
    for row, r in enumerate(results, start=1):
        cfg = (r.fixed or r.members[0]).user_attrs.get("train_config") or {}
        q_s, q_e = (float(cfg.get("q_start", 0.6)), float(cfg.get("q_end", 1.5))) if r.fixed else (0.6, 1.5)
        epochs = len(trial_history(r.members[0])["epoch"])
        scale = float(cfg.get("bootstrap_scale", 1.0)) if r.fixed else 1.0
        for k, shape in enumerate(sh for sh in SHAPE_ORDER if sh != LEARNED):
            pairs = dal_schedule(q_s, q_e, epochs, shape)
            for col, values in ((1, [q for q, _ in pairs]), (2, [scale * lam for _, lam in pairs])):
                fig.add_trace(go.Scatter(x=list(range(epochs)), y=values, mode="lines", name=f"{shape} (fixed)",
                                         legendgroup=shape, showlegend=row == 1 and col == 1,
                                         line={"dash": "dot", "width": 1.5, "color": _SHAPE_COLOURS[k % len(_SHAPE_COLOURS)]}),
                              row=row, col=col)
        for i, m in enumerate(r.members[:top]):
            h, mcfg = trial_history(m), m.user_attrs.get("train_config") or {}
            lam = [float(mcfg.get("bootstrap_scale", 1.0)) * v for v in h["lam"]]
            name = (f"learned #{i + 1}: trial {m.number} (selection value {m.value:.3f}; {KEY_WORDS.get(key, key)} "
                    f"{_mean_sd(_seed_values(m, key))})")
            for col, values in ((1, h["q"]), (2, lam)):
                fig.add_trace(go.Scatter(x=h["epoch"], y=values, mode="lines", name=name,
                                         legendgroup=f"learned-{row}-{i}", showlegend=col == 1,
                                         line={"width": 3.5 if i == 0 else 1.5, "dash": "solid" if i == 0 else "dash",
                                               "color": _LEARNED_COLOURS[min(i, 2)]}),
                              row=row, col=col)
        fig.update_xaxes(title_text="epoch", row=row)
    fig.update_layout(title=f"Schedules learned by PBT (best {min(top, max(len(r.members) for r in results))} members "
                            f"per setting on {selected_on(studies)}) beside the fixed shapes (dotted)",
                      height=140 + 360 * len(results), width=1150, legend={"font": {"size": 10}},
                      margin={"t": 130})
    return fig


def learned_findings(studies: list[optuna.Study], key: str = "test_acc") -> list[str]:
    """One sentence per setting with a learned schedule: the best learned vs the best fixed-shape trial."""
    out = []
    label = _labeller(studies)
    what = KEY_WORDS.get(key, key)
    for r in learned_results(studies, key):
        head = (f"{label(r.cond)}: the schedule learned by PBT (the best of {len(r.members)} learned schedules on "
                f"{r.selected_on}: trial {r.members[0].number}, {what} {_mean_sd(_seed_values(r.members[0], key))})")
        if r.comparison is None:
            out.append(f"{head}; no fixed-shape DAL trial in this setting to compare it with.")
            continue
        cfg = r.fixed.user_attrs.get("train_config") or {}
        fixed = (f"the best fixed shape ({_shape(r.fixed)}, q_s={float(cfg.get('q_start', 0)):.3g}, "
                 f"q_e={float(cfg.get('q_end', 0)):.3g}; best of {r.fixed_trials} fixed-shape trials)")
        out.append(f"{head}. " + stats.sentence("Learned", fixed, r.comparison, what=what) + ".")
    return out


# ---------------------------------------------------------------- findings in words

def _q(p: Point) -> str:
    return f"q_s={p.q_start:.3g}, q_e={p.q_end:.3g}"


def findings(studies: list[optuna.Study], key: str = "test_acc") -> list[str]:
    """Sentences stating what the figures show. Every comparison is `stats.sentence`: n seeds, the mean
    difference in points of `key`, its 95 % interval and the verdict; every selection says what it rests on."""
    out = []
    label = _labeller(studies)
    what = KEY_WORDS.get(key, key)
    for r in arm_results(studies, key):
        base = ARM_NAMES.get(r.baseline, r.baseline)
        note = (f"the best baseline on {r.selected_on}; each study's best trial chosen on it, DAL's among "
                f"{r.dal_trials} trial{'s' if r.dal_trials != 1 else ''}")
        out.append(f"{label(r.cond)}: " + stats.sentence("DAL", base, r.comparison, note, what=what) + ".")
    for r in surface_results(studies, key):
        sel = SELECTED_ON.get(r.panel.metric, r.panel.metric)
        shape = f"{r.panel.shape} schedule" if r.panel.shape else "schedule shapes pooled (" + \
            ", ".join(r.panel.shapes) + ")"
        out.append(
            f"{label(r.panel.cond)}, {shape}: the best q_s x q_e point on {sel} is {_q(r.best)} "
            f"({r.panel.metric} {r.best.selection:.3f}; {what} {_mean_sd(list(r.best.seeds(key).values()))}), "
            f"of {len(r.panel.points)} points. "
            + stats.sentence("Best point", f"the runner-up on validation ({_q(r.runner_up)})", r.vs_runner_up,
                             what=what)
            + "; " + stats.sentence("best point", f"the worst on validation ({_q(r.worst)})", r.vs_worst,
                                    what=what) + "."
            + (" " + stats.sentence(f"The paper's default ({_q(r.default)})", "the best point", r.default_vs_best,
                                    what=what) + "." if r.default_vs_best is not None else ""))
    for r in shape_results(studies, key):
        means = ", ".join(f"{sh} {_pct(statistics.fmean(v.values()))} ({r.trials[sh]} trial"
                          f"{'s' if r.trials[sh] != 1 else ''})" if v else f"{sh} -" for sh, v in r.seeds.items())
        comps = "; ".join(stats.sentence(sh, r.reference, c, what=what) for sh, c in r.comparisons.items())
        better = [sh for sh, c in r.comparisons.items() if c.verdict == stats.BETTER]
        worse = [sh for sh, c in r.comparisons.items() if c.verdict == stats.WORSE]
        verdict = (f"detectably better than {r.reference}: {', '.join(better)}" if better else
                   f"no shape is detectably better than {r.reference}")
        if worse:
            verdict += f"; detectably worse: {', '.join(worse)}"
        out.append(f"{label(r.cond)}: schedule shapes by {what}, per seed averaged over each shape's trials "
                   f"({r.pooling}): {means}. {comps}. So {verdict}.")
    return out + learned_findings(studies, key)
