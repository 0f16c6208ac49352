"""Drawing: each function takes studies (or a study, or a trial) and returns a plotly figure, drawn from the data
of _data.py; a figure the trials cannot support raises NotEnoughTrials with a sentence saying why.

The report and the dashboard draw, in order, what FIGURES holds: a new figure is one function here under
`@figure(title)` (or `@figures_of` for a varying number of figures, e.g. one per study)."""

from __future__ import annotations

import statistics
from typing import Callable

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial
from plotly.subplots import make_subplots

from dal_search.search import stats
from dal_search.search.analysis._data import (ARM_NAMES, LEARNED, SHAPE_ORDER, NotEnoughTrials, Point, arm_data,
                                              arm_order, best_of, complete_trials, dal_studies, has_learned,
                                              learned_results, max_points, need, param, schedule_data,
                                              schedule_point, seed_values, shape_of, shape_sort, surface_panels,
                                              trial_history)
from dal_search.search.analysis._words import KEY_WORDS, labeller, mean_sd, selected_on

Items = list[tuple[str, Callable[[], go.Figure]]]  # (title, draw): drawn lazily, so one failure costs one figure
FIGURES: list[Callable[[list[optuna.Study]], Items]] = []


def figure(title: str, when: Callable[[list[optuna.Study]], bool] | None = None):
    """Register `fn(studies) -> go.Figure` under `title`, drawn for every campaign (or where `when(studies)`)."""
    def add(fn):
        FIGURES.append(lambda studies: [(title, lambda: fn(studies))] if when is None or when(studies) else [])
        return fn
    return add


def figures_of(fn: Callable[[list[optuna.Study]], Items]):
    """Register `fn(studies) -> [(title, draw), ...]`: figures whose number and titles depend on the studies."""
    FIGURES.append(fn)
    return fn


def figure_items(studies: list[optuna.Study]) -> Items:
    """(title, draw) of every registered figure that applies to `studies`, in registration order."""
    return [item for items in FIGURES for item in items(studies)]


@figure("DAL vs baselines")
def arm_comparison(studies: list[optuna.Study], key: str = "test_acc") -> go.Figure:
    data = arm_data(studies, key)
    if not data:
        names = ", ".join(s.study_name for s in studies) or "the campaign"
        raise NotEnoughTrials(f"not enough trials: {names} has no completed trial to compare")
    conds = sorted({c for d in data.values() for c in d})
    label = labeller(studies)
    labels = [label(c) for c in conds]
    fig = go.Figure()
    single = False
    for arm in sorted(data, key=arm_order):
        vals = [data[arm].get(c) or [] for c in conds]
        means = [statistics.fmean(v) if v else None for v in vals]
        sds = [stats.spread(v)[1] if v else None for v in vals]
        single |= any(len(v) == 1 for v in vals)
        fig.add_trace(go.Bar(x=labels, y=means, name=ARM_NAMES.get(arm, arm),
                             error_y={"type": "data", "array": sds, "visible": any(sd is not None for sd in sds)},
                             hovertext=[f"{ARM_NAMES.get(arm, arm)}, {lab}: {mean_sd(v)}" if v else ""
                                        for lab, v in zip(labels, vals)], hoverinfo="text"))
    fig.update_layout(barmode="group",
                      title=f"DAL vs baselines: {key} of each study's best trial on {selected_on(studies)} "
                            f"(mean ± std over seeds" + ("; a bar of n=1 seed has no error bar" if single else "")
                            + ")",
                      yaxis_title=key, xaxis_title="noise", height=440, width=950)
    return fig


@figure("Sensitivity to q_s x q_e (open question 3)")
def sensitivity_surface(studies: list[optuna.Study], key: str = "test_acc") -> go.Figure:
    names = ", ".join(s.study_name for s in dal_studies(studies)) or "the campaign (no DAL study)"
    panels = surface_panels(studies)
    if not panels:
        need(list(range(max_points(studies))), names,
              what="a q_s x q_e surface (distinct points per noise setting)")
    label = labeller(studies)
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
                      f"{KEY_WORDS.get(key, key)} {mean_sd(pts[b])}"], hoverinfo="text"), row=1, col=col)
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
    return (f"q_s {p[0]:g}, q_e {p[1]:g}<br>{key} {mean_sd(values)}"
            + (f"<br>{k} trials averaged per seed" if k > 1 else ""))


@figure("Schedule shapes (open question 1)")
def schedule_comparison(studies: list[optuna.Study], key: str = "test_acc") -> go.Figure:
    data = schedule_data(studies, key)
    shapes = shape_sort(sh for d in data.values() for sh in d)
    n_values = sum(len(v) for d in data.values() for v in d.values())
    names = ", ".join(s.study_name for s in dal_studies(studies)) or "the campaign (no DAL study)"
    need(list(range(n_values)), names, what="a schedule comparison")
    if len(shapes) < 2:
        raise NotEnoughTrials(f"not enough trials: {names} tried only the {shapes[0]!r} schedule; a comparison "
                              f"needs at least two shapes")
    fig = go.Figure()
    conds = sorted(data)
    label = labeller(studies)
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


_SHAPE_COLOURS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#bcbd22"]  # fixed shapes
_LEARNED_COLOURS = ["#000000", "#d62728", "#e377c2"]  # the best learned schedule, then the next two


@figure("Learned schedules (PBT, open question 1)", when=has_learned)
def learned_schedules(studies: list[optuna.Study], key: str = "test_acc", top: int = 3) -> go.Figure:
    """The q(t) and lambda(t) (times bootstrap_scale: the weight the loss applies) of each setting's `top`
    learned schedules (the best solid and thick), beside the fixed shapes drawn at the q_s, q_e and epochs of
    the best fixed-shape trial (the paper's, `paper_default()`, when the setting has none). Each q(t) panel's title holds
    the comparison of the best learned schedule with the best fixed-shape trial."""
    from dal_search.objectives.schedules import dal_schedule

    results = learned_results(studies, key)
    if not results:
        raise NotEnoughTrials("not enough trials: no completed trial with a learned (explicit) schedule; run "
                              "'dal-search tune CAMPAIGN --scheduler pbt'")
    label = labeller(studies)
    titles = []
    for r in results:
        if r.comparison is None:
            verdict = "no fixed-shape trial to compare with"
        else:
            verdict = (f"learned - best fixed ({shape_of(r.fixed)}): {stats.cell(r.comparison)} points of "
                       f"{KEY_WORDS.get(key, key)}<br>n={r.comparison.n} seeds: {r.comparison.verdict}")
        q_s, q_e = schedule_point(r.fixed)
        where = (f"fixed shapes at the best fixed trial's<br>q_s {q_s:.3g}, q_e {q_e:.3g}" if r.fixed else
                 f"fixed shapes at the paper's<br>q_s {q_s:.3g}, q_e {q_e:.3g}")
        titles += [f"{label(r.cond)}: q(t)<br><sup>{verdict}</sup>",
                   f"{label(r.cond)}: lambda(t) x bootstrap_scale<br><sup>{where}</sup>"]
    fig = make_subplots(rows=len(results), cols=2, subplot_titles=titles, vertical_spacing=0.35 / len(results),
                        horizontal_spacing=0.08)
    for row, r in enumerate(results, start=1):
        q_s, q_e = schedule_point(r.fixed)
        epochs = len(trial_history(r.members[0])["epoch"])
        scale = float(param(r.fixed, "bootstrap_scale") or 1.0) if r.fixed else 1.0
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
                    f"{mean_sd(seed_values(m, key))})")
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


def importances(study: optuna.Study) -> go.Figure:
    done = complete_trials(study)
    need(done, study.study_name, at_least=4, what="parameter importances")
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


@figures_of
def best_dal_trial(studies: list[optuna.Study]) -> Items:
    """The best DAL trial's curves (across the DAL studies, on the selection metric)."""
    best = best_of(dal_studies(studies))
    if best is None:
        return []
    study, trial = best
    title = (f"{study.study_name} trial {trial.number} (best on {selected_on([study])}): q(t), lambda(t), learning "
             f"and memorisation (first seed, n=1)")
    return [(f"Best DAL trial: {study.study_name} #{trial.number}", lambda: trial_curves(trial, title))]


@figures_of
def searched_importances(studies: list[optuna.Study]) -> Items:
    """Parameter importances of each DAL study that searches more than one knob."""
    return [(f"Importances: {s.study_name}", lambda s=s: importances(s)) for s in dal_studies(studies)
            if len(s.user_attrs.get("space") or {}) > 1]
