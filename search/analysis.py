"""Analysis: functions from a campaign (or one study, or one trial) to a plotly figure, plus findings in words.

The paper's open questions, each a figure:

    sensitivity_surface   Q3: test accuracy over q_s x q_e, one panel per noise rate; trials with the same
                          (q_s, q_e) and all their seeds are averaged, the spread is in the hover text and
                          every sampled point is drawn, so a smooth colour never hides how thin the data is
    schedule_comparison   Q1: accuracy by schedule shape per noise rate (every seed of every trial, as boxes)
    arm_comparison        DAL vs the baselines across noise kinds and rates (best trial per study by the
                          study's own metric, i.e. noisy validation; bars are mean ± std over its seeds)
    importances           which knobs matter (fANOVA over the study's complete trials)
    trial_curves          one trial: q(t) and lambda(t) beside its accuracy and memorisation curves

Studies that cannot support a figure (0, 1 or 2 complete trials; all failed) raise `NotEnoughTrials` with a
sentence saying so; the report and the dashboard show that sentence instead of the figure.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Iterable

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

MIN_TRIALS = 3
ARM_NAMES = {"ce": "CE", "mae": "MAE", "gce": "GCE", "sce": "SCE", "nce_rce": "NCE+RCE", "dal": "DAL"}
SHAPE_ORDER = ["linear", "cosine", "exponential", "step", "adaptive"]


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
    """The study's best COMPLETE trial by its own metric (noisy validation by default), or None."""
    done = _complete(study)
    return max(done, key=lambda t: t.value) if done else None


def _need(trials: list, study_names: str, at_least: int = MIN_TRIALS, what: str = "this figure") -> None:
    if len(trials) < at_least:
        raise NotEnoughTrials(f"not enough trials: {study_names} has {len(trials)} completed trial"
                              f"{'s' if len(trials) != 1 else ''}, {what} needs at least {at_least}")


def _seed_values(t: FrozenTrial, key: str) -> list[float]:
    rows = t.user_attrs.get("per_seed") or []
    vals = [r[key] for r in rows if r.get(key) is not None and not _nan(r[key])]
    if not vals and t.user_attrs.get(key) is not None:
        vals = [t.user_attrs[key]]
    return vals


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _param(t: FrozenTrial, name: str) -> Any:
    if name in t.params:
        return t.params[name]
    return (t.user_attrs.get("train_config") or {}).get(name)


def _rate_label(r: float) -> str:
    return f"{100 * r:g} %"


def _dal_studies(studies: Iterable[optuna.Study]) -> list[optuna.Study]:
    return [s for s in studies if s.user_attrs.get("arm") == "dal"]


# ---------------------------------------------------------------- Q3: q_s x q_e surfaces

def surface_data(studies: Iterable[optuna.Study], key: str = "test_acc") -> dict[tuple[str, float], dict]:
    """Per (noise kind, rate): {(q_s, q_e): [values over seeds and repeated trials]}."""
    out: dict[tuple[str, float], dict] = defaultdict(lambda: defaultdict(list))
    for s in _dal_studies(studies):
        cond = (s.user_attrs["noise"], float(s.user_attrs["noise_rate"]))
        for t in _complete(s):
            qs, qe = _param(t, "q_start"), _param(t, "q_end")
            if qs is None or qe is None:
                continue
            out[cond][(round(float(qs), 4), round(float(qe), 4))].extend(_seed_values(t, key))
    return out


def sensitivity_surface(studies: list[optuna.Study], key: str = "test_acc") -> go.Figure:
    raw = surface_data(studies, key)
    names = ", ".join(s.study_name for s in _dal_studies(studies)) or "the campaign (no DAL study)"
    _need(max(raw.values(), key=len, default=[]), names, what="a q_s x q_e surface (distinct points per noise setting)")
    data = {c: pts for c, pts in raw.items() if len(pts) >= MIN_TRIALS}
    conds = sorted(data)
    fig = make_subplots(rows=1, cols=len(conds), subplot_titles=[f"{k} {_rate_label(r)}" for k, r in conds],
                        horizontal_spacing=0.06)
    all_means = [statistics.fmean(v) for pts in data.values() for v in pts.values() if v]
    zmin, zmax = min(all_means), max(all_means)
    for col, cond in enumerate(conds, start=1):
        pts = data[cond]
        q_s = sorted({p[0] for p in pts})
        q_e = sorted({p[1] for p in pts})
        is_grid = len(pts) == len(q_s) * len(q_e)
        mean = {p: statistics.fmean(v) for p, v in pts.items() if v}
        sd = {p: statistics.pstdev(v) if len(v) > 1 else 0.0 for p, v in pts.items() if v}
        n = {p: len(v) for p, v in pts.items()}
        if is_grid:
            z = [[mean.get((a, b)) for a in q_s] for b in q_e]
            text = [[f"q_s {a:g}, q_e {b:g}<br>acc {mean[(a, b)]:.3f} ± {sd[(a, b)]:.3f} (n={n[(a, b)]})"
                     if (a, b) in mean else "" for a in q_s] for b in q_e]
            fig.add_trace(go.Heatmap(x=q_s, y=q_e, z=z, text=text, hoverinfo="text", zmin=zmin, zmax=zmax,
                                     colorscale="Viridis", showscale=col == len(conds),
                                     colorbar={"title": key}), row=1, col=col)
        else:  # scattered (TPE) points: an interpolated contour under the sampled points
            xs, ys = zip(*mean)
            fig.add_trace(go.Contour(x=list(xs), y=list(ys), z=[mean[p] for p in mean], zmin=zmin, zmax=zmax,
                                     colorscale="Viridis", showscale=col == len(conds), connectgaps=True,
                                     contours={"coloring": "heatmap"}, hoverinfo="skip", opacity=0.85,
                                     colorbar={"title": key}), row=1, col=col)
        fig.add_trace(go.Scatter(
            x=[p[0] for p in mean], y=[p[1] for p in mean], mode="markers", showlegend=False,
            marker={"size": 6, "color": "white", "line": {"width": 1, "color": "black"}},
            text=[f"q_s {p[0]:g}, q_e {p[1]:g}<br>{key} {mean[p]:.3f} ± {sd[p]:.3f} (n={n[p]})" for p in mean],
            hoverinfo="text"), row=1, col=col)
        fig.update_xaxes(title_text="q_s (q_start)", row=1, col=col)
        fig.update_yaxes(title_text="q_e (q_end)" if col == 1 else None, row=1, col=col)
    fig.update_layout(title=f"Sensitivity of DAL to q_s x q_e ({key}, mean over seeds)", height=420,
                      width=max(500, 360 * len(conds)))
    return fig


# ---------------------------------------------------------------- Q1: schedule shapes

def schedule_data(studies: Iterable[optuna.Study], key: str = "test_acc") -> dict[tuple[str, float], dict]:
    out: dict[tuple[str, float], dict] = defaultdict(lambda: defaultdict(list))
    for s in _dal_studies(studies):
        cond = (s.user_attrs["noise"], float(s.user_attrs["noise_rate"]))
        for t in _complete(s):
            shape = _param(t, "schedule") or "linear"
            out[cond][shape].extend(_seed_values(t, key))
    return out


def schedule_comparison(studies: list[optuna.Study], key: str = "test_acc") -> go.Figure:
    data = schedule_data(studies, key)
    shapes = sorted({sh for d in data.values() for sh in d}, key=lambda s: SHAPE_ORDER.index(s)
                    if s in SHAPE_ORDER else 99)
    n_values = sum(len(v) for d in data.values() for v in d.values())
    names = ", ".join(s.study_name for s in _dal_studies(studies)) or "the campaign (no DAL study)"
    _need(list(range(n_values)), names, what="a schedule comparison")
    if len(shapes) < 2:
        raise NotEnoughTrials(f"not enough trials: {names} tried only the {shapes[0]!r} schedule; a comparison "
                              f"needs at least two shapes")
    fig = go.Figure()
    conds = sorted(data)
    for shape in shapes:
        xs, ys = [], []
        for cond in conds:
            vals = data[cond].get(shape, [])
            xs += [f"{cond[0]} {_rate_label(cond[1])}"] * len(vals)
            ys += vals
        fig.add_trace(go.Box(x=xs, y=ys, name=shape, boxpoints="all", jitter=0.3, pointpos=0))
    fig.update_layout(boxmode="group", title=f"Schedule shape vs {key} per noise setting (every seed)",
                      yaxis_title=key, xaxis_title="noise", height=420, width=900)
    return fig


# ---------------------------------------------------------------- DAL vs baselines

def arm_data(studies: Iterable[optuna.Study], key: str = "test_acc") -> dict[str, dict[tuple[str, float], list]]:
    """arm -> (noise kind, rate) -> per-seed values of the study's best trial (by the study's metric)."""
    out: dict[str, dict] = defaultdict(dict)
    for s in studies:
        best = best_trial(s)
        if best is None:
            continue
        out[s.user_attrs["arm"]][(s.user_attrs["noise"], float(s.user_attrs["noise_rate"]))] = _seed_values(best, key)
    return out


def arm_comparison(studies: list[optuna.Study], key: str = "test_acc") -> go.Figure:
    data = arm_data(studies, key)
    if not data:
        names = ", ".join(s.study_name for s in studies) or "the campaign"
        raise NotEnoughTrials(f"not enough trials: {names} has no completed trial to compare")
    conds = sorted({c for d in data.values() for c in d})
    labels = [f"{k} {_rate_label(r)}" for k, r in conds]
    fig = go.Figure()
    for arm in sorted(data, key=lambda a: list(ARM_NAMES).index(a) if a in ARM_NAMES else 99):
        means = [statistics.fmean(data[arm][c]) if data[arm].get(c) else None for c in conds]
        sds = [statistics.pstdev(data[arm][c]) if len(data[arm].get(c, [])) > 1 else 0 for c in conds]
        fig.add_trace(go.Bar(x=labels, y=means, name=ARM_NAMES.get(arm, arm),
                             error_y={"type": "data", "array": sds, "visible": True}))
    fig.update_layout(barmode="group", title=f"DAL vs baselines: {key} of each study's best trial (mean ± std over seeds)",
                      yaxis_title=key, xaxis_title="noise", height=440, width=950)
    return fig


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
    h = trial.user_attrs.get("history")
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


# ---------------------------------------------------------------- findings in words

def findings(studies: list[optuna.Study], key: str = "test_acc") -> list[str]:
    """Short sentences stating what each figure shows, numbers computed from the trials."""
    out = []
    for (kind, rate), pts in sorted(surface_data(studies, key).items()):
        means = {p: statistics.fmean(v) for p, v in pts.items() if v}
        if len(means) < MIN_TRIALS:
            continue
        (qs, qe), best = max(means.items(), key=lambda kv: kv[1])
        (wqs, wqe), worst = min(means.items(), key=lambda kv: kv[1])
        vals = pts[(qs, qe)]
        sd = statistics.pstdev(vals) if len(vals) > 1 else 0.0
        out.append(f"{kind} {_rate_label(rate)}: the best q_s x q_e point is q_s={qs:g}, q_e={qe:g} with {key} "
                   f"{best:.3f} ± {sd:.3f} (n={len(vals)}); the worst, q_s={wqs:g}, q_e={wqe:g}, gives {worst:.3f} "
                   f"({len(means)} points).")
    for (kind, rate), by_shape in sorted(schedule_data(studies, key).items()):
        means = {sh: statistics.fmean(v) for sh, v in by_shape.items() if v}
        if len(means) < 2:
            continue
        ranked = sorted(means.items(), key=lambda kv: -kv[1])
        lin = means.get("linear")
        tail = "" if lin is None or ranked[0][0] == "linear" else \
            f" ({100 * (ranked[0][1] - lin):+.1f} points over linear)"
        out.append(f"{kind} {_rate_label(rate)}: schedules by mean {key}: "
                   + ", ".join(f"{sh} {m:.3f}" for sh, m in ranked) + tail + ".")
    arms = arm_data(studies, key)
    if "dal" in arms and len(arms) > 1:
        for cond in sorted(arms["dal"]):
            d = arms["dal"][cond]
            others = {a: statistics.fmean(v[cond]) for a, v in arms.items() if a != "dal" and v.get(cond)}
            if not d or not others:
                continue
            best_other, bo = max(others.items(), key=lambda kv: kv[1])
            diff = 100 * (statistics.fmean(d) - bo)
            verdict = "beats" if diff > 0 else "does not beat"
            out.append(f"{cond[0]} {_rate_label(cond[1])}: DAL {verdict} the best baseline "
                       f"({ARM_NAMES.get(best_other, best_other)}) by {diff:+.1f} points of {key}.")
    return out
