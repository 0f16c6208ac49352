"""Analysis and report: figures carry the numbers of the trials (computed here independently), tiny or failed
studies give a "not enough trials" sentence instead of a crash, and the report/dashboard push round-trip."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from dal_search.search import analysis, report
from dal_search.search.analysis import NotEnoughTrials

KEYS = ("test_acc", "best_test_acc", "val_acc", "best_val_acc", "test_acc_at_best_val", "noisy_fit", "clean_fit")


def _attrs(test_accs: list[float], val: float | None = None) -> dict:
    """User attrs in the shape the worker writes (search/worker.py): per-seed rows plus seed means."""
    rows = [{"seed": i, "status": "ok", **{k: a for k in KEYS}} for i, a in enumerate(test_accs)]
    out = {"per_seed": rows, "seeds": list(range(len(test_accs)))}
    for k in KEYS:
        out[k] = statistics.fmean(test_accs)
    if val is not None:
        out["val_acc"] = val
    return out


def make_study(storage, arm: str, rate: float, trials: list[tuple[dict, list[float]]], *, noise="symmetric",
               campaign="fab", state=TrialState.COMPLETE, values=None) -> optuna.Study:
    name = f"{campaign}/{arm}/digits/{noise}-{rate}"
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    for k, v in {"campaign": campaign, "arm": arm, "dataset": "digits", "noise": noise, "noise_rate": rate,
                 "space": {p: None for p in (trials[0][0] if trials else {})}}.items():
        study.set_user_attr(k, v)
    for i, (params, accs) in enumerate(trials):
        dists = {p: CategoricalDistribution(["linear", "cosine", "exponential", "step", "adaptive"])
                 if isinstance(v, str) else FloatDistribution(0.0, 3.0) for p, v in params.items()}
        value = (values[i] if values else statistics.fmean(accs)) if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, value=value, params=params, distributions=dists,
                                     user_attrs=_attrs(accs) if state == TrialState.COMPLETE else
                                     {"fail_reason": "seed 0: non-finite loss"}))
    return study


@pytest.fixture
def storage():
    return optuna.storages.InMemoryStorage()


# ------------------------------------------------------------------ surfaces

def test_surface_grid_cells_are_seed_means_with_spread(storage):
    grid = {(qs, qe): [0.5 + qs / 10 + qe / 100 + d for d in (-0.02, 0.0, 0.05)]
            for qs in (0.2, 0.6, 1.0) for qe in (1.0, 1.5, 2.0)}
    make_study(storage, "dal", 0.4, [({"q_start": qs, "q_end": qe}, v) for (qs, qe), v in grid.items()])
    make_study(storage, "dal", 0.8, [({"q_start": qs, "q_end": qe}, [v[0] - 0.3]) for (qs, qe), v in grid.items()])
    studies = analysis.campaign_studies(storage, "fab")
    fig = analysis.sensitivity_surface(studies)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 2  # one panel per noise rate
    h = heat[0]
    assert list(h.x) == [0.2, 0.6, 1.0] and list(h.y) == [1.0, 1.5, 2.0]
    for i, qe in enumerate(h.y):
        for j, qs in enumerate(h.x):
            vals = grid[(qs, qe)]
            assert h.z[i][j] == pytest.approx(sum(vals) / 3)
            sd = (sum((v - sum(vals) / 3) ** 2 for v in vals) / 3) ** 0.5
            assert f"± {sd:.3f} (n=3)" in h.text[i][j]
    # both panels share one colour scale so that rates compare by colour
    assert heat[0].zmin == heat[1].zmin and heat[0].zmax == heat[1].zmax
    assert heat[1].zmin == pytest.approx(min(v[0] - 0.3 for v in grid.values()))


def test_surface_of_scattered_tpe_points_is_a_contour_with_every_point_drawn(storage):
    pts = [({"q_start": 0.1 * i + 0.15, "q_end": 1.0 + 0.13 * i}, [0.6 + 0.01 * i]) for i in range(7)]
    make_study(storage, "dal", 0.4, pts)
    fig = analysis.sensitivity_surface(analysis.campaign_studies(storage))
    assert [t.type for t in fig.data] == ["contour", "scatter"]
    assert len(fig.data[1].x) == 7


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_studies_say_not_enough_trials(storage, n):
    make_study(storage, "dal", 0.4, [({"q_start": 0.3 + 0.1 * i, "q_end": 1.5, "schedule": "linear"}, [0.7])
                                     for i in range(n)])
    make_study(storage, "ce", 0.4, [({}, [0.5])] if n else [])
    studies = analysis.campaign_studies(storage, "fab")
    for fn in (analysis.sensitivity_surface, analysis.schedule_comparison):
        with pytest.raises(NotEnoughTrials, match=rf"not enough trials: fab/dal/digits/symmetric-0.4 has {n} "):
            fn(studies)
    with pytest.raises(NotEnoughTrials, match="needs at least 4"):
        analysis.importances(studies[1])
    if n == 0:
        with pytest.raises(NotEnoughTrials, match="no completed trial"):
            analysis.arm_comparison(studies)
    else:
        analysis.arm_comparison(studies)  # one trial per study is enough to compare arms


def test_all_failed_study_is_not_enough_and_the_report_still_writes(storage, tmp_path):
    make_study(storage, "dal", 0.4, [({"q_start": 0.2 * i + 0.1, "q_end": 1.5}, [0.7]) for i in range(4)],
               state=TrialState.FAIL)
    studies = analysis.campaign_studies(storage)
    with pytest.raises(NotEnoughTrials, match="has 0 completed trials"):
        analysis.sensitivity_surface(studies)
    figs = report.figures(storage, "fab")
    assert figs and all(isinstance(f, str) and f.startswith("not enough") for _, f in figs)
    out = report.write_report(storage, "fab", tmp_path / "r.html", figs=figs)
    page = out.read_text()
    assert "js-plotly-plot" not in page and "plotly" not in page.lower().replace("dal-search", "")
    assert page.count("class='missing'") == len(figs)
    assert "Not enough trials for findings yet." in page
    assert report.push_to_dashboard(storage, "fab", figs=figs) == 0


def test_no_study_of_campaign_is_not_enough(storage):
    with pytest.raises(NotEnoughTrials, match="no studies of campaign 'nope'"):
        report.figures(storage, "nope")


def test_report_cli_on_empty_storage_is_one_line(tmp_path):
    db = tmp_path / "empty.db"
    optuna.create_study(storage=f"sqlite:///{db}", study_name="unrelated")
    r = subprocess.run([sys.executable, "-m", "dal_search", "report", "--storage", f"sqlite:///{db}", "--campaign",
                        "nope", "--out", str(tmp_path / "r.html")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not enough trials" in lines[0] and "dal-search studies" in lines[0]
    assert not (tmp_path / "r.html").exists()


# ------------------------------------------------------------------ schedules, arms, findings

def test_schedule_comparison_boxes_hold_every_seed(storage):
    acc = {"linear": [0.70, 0.72], "cosine": [0.75, 0.74], "adaptive": [0.60, 0.61]}
    make_study(storage, "dal", 0.4, [({"q_start": 0.6, "q_end": 1.5, "schedule": sh}, v) for sh, v in acc.items()])
    fig = analysis.schedule_comparison(analysis.campaign_studies(storage))
    boxes = {t.name: list(t.y) for t in fig.data}
    assert list(boxes) == ["linear", "cosine", "adaptive"]  # the documented order, not sampling order
    assert boxes == acc
    text = analysis.findings(analysis.campaign_studies(storage))
    line = next(f for f in text if "schedules by mean" in f)
    assert line.startswith("symmetric 40 %: schedules by mean test_acc: cosine 0.745, linear 0.710, adaptive 0.605")
    assert "(+3.5 points over linear)" in line


def test_only_one_shape_is_not_a_comparison(storage):
    make_study(storage, "dal", 0.4, [({"q_start": 0.1 * i + 0.2, "q_end": 1.5, "schedule": "linear"}, [0.7])
                                     for i in range(5)])
    with pytest.raises(NotEnoughTrials, match="only the 'linear' schedule"):
        analysis.schedule_comparison(analysis.campaign_studies(storage))


def test_arm_comparison_uses_each_studys_best_trial_by_its_own_metric(storage):
    # DAL's second trial has the best validation value (the study's objective) but not the best test accuracy:
    # the bar must show the selected trial's test accuracy, not the test-optimal one (no test-set selection).
    make_study(storage, "dal", 0.4, [({"q_start": 0.5, "q_end": 1.5}, [0.9, 0.8]),
                                     ({"q_start": 0.7, "q_end": 1.5}, [0.7, 0.74])], values=[0.5, 0.6])
    make_study(storage, "gce", 0.4, [({}, [0.6, 0.7, 0.65])])
    make_study(storage, "ce", 0.4, [({}, [0.5, 0.52])])
    make_study(storage, "ce", 0.8, [({}, [0.2, 0.3])])
    studies = analysis.campaign_studies(storage)
    fig = analysis.arm_comparison(studies)
    bars = {t.name: t for t in fig.data}
    assert list(bars) == ["CE", "GCE", "DAL"]
    assert list(bars["DAL"].x) == ["symmetric 40 %", "symmetric 80 %"]
    assert bars["DAL"].y[0] == pytest.approx(0.72) and bars["DAL"].y[1] is None
    assert bars["DAL"].error_y.array[0] == pytest.approx(0.02)
    assert bars["CE"].y[1] == pytest.approx(0.25)
    words = analysis.findings(studies)
    assert "symmetric 40 %: DAL beats the best baseline (GCE) by +7.0 points of test_acc." in words


def test_findings_name_the_best_and_worst_surface_points(storage):
    make_study(storage, "dal", 0.6, [({"q_start": 0.2, "q_end": 1.0}, [0.5, 0.6]),
                                     ({"q_start": 0.6, "q_end": 1.5}, [0.8, 0.9]),
                                     ({"q_start": 1.0, "q_end": 2.5}, [0.3, 0.3])])
    make_study(storage, "gce", 0.6, [({}, [0.9, 0.9])])
    text = analysis.findings(analysis.campaign_studies(storage))
    assert ("symmetric 60 %: the best q_s x q_e point is q_s=0.6, q_e=1.5 with test_acc 0.850 ± 0.050 (n=2); "
            "the worst, q_s=1, q_e=2.5, gives 0.300 (3 points).") in text
    assert "symmetric 60 %: DAL does not beat the best baseline (GCE) by -5.0 points of test_acc." in text


def test_importances_rank_the_knob_that_moves_accuracy(storage):
    import random

    rng = random.Random(0)
    trials = []
    for _ in range(30):
        qs, qe = rng.uniform(0.1, 1.0), rng.uniform(1.0, 2.5)
        trials.append(({"q_start": qs, "q_end": qe}, [0.3 + 0.6 * qs + 0.001 * qe]))
    study = make_study(storage, "dal", 0.4, trials)
    fig = analysis.importances(study)
    bar = fig.data[0]
    imp = dict(zip(bar.y, bar.x))
    assert imp["q_start"] > 0.75 and imp["q_end"] < 0.25  # fANOVA (a random forest) is not exact


# ------------------------------------------------------------------ one trial, from a real training run

@pytest.mark.slow
def test_trial_curves_plot_the_trainers_schedule_and_memorisation():
    from dal_search.objectives.config import TrainConfig
    from dal_search.objectives.schedules import dal_schedule
    from dal_search.objectives.train import train

    cfg = TrainConfig(dataset="digits", loss="dal", q_start=0.6, q_end=1.5, epochs=6, noise="symmetric",
                      noise_rate=0.4, seed=0, threads=1)
    res = train(cfg)
    t = create_trial(value=res["val_acc"], user_attrs={"history": res["history"]})
    fig = analysis.trial_curves(t)
    by = {tr.name: list(tr.y) for tr in fig.data}
    expected = dal_schedule(0.6, 1.5, 6)
    assert by["q"] == pytest.approx([q for q, _ in expected])
    assert by["lambda"] == pytest.approx([lam for _, lam in expected])
    assert by["noisy fit (wrong labels memorised)"] == res["history"]["noisy_fit"]
    with pytest.raises(NotEnoughTrials, match="no per-epoch history"):
        analysis.trial_curves(create_trial(value=0.5))


# ------------------------------------------------------------------ the dashboard push round-trip

def test_push_to_dashboard_stores_figures_the_dashboard_reads(storage):
    from optuna_dashboard import get_note
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    make_study(storage, "dal", 0.4, [({"q_start": qs, "q_end": qe, "schedule": sh}, [0.5 + qs / 4 + qe / 10])
                                     for qs in (0.2, 0.6, 1.0) for qe in (1.0, 2.0)
                                     for sh in ("linear", "cosine")])
    make_study(storage, "ce", 0.4, [({}, [0.5])])
    figs = report.figures(storage, "fab")
    saved = report.push_to_dashboard(storage, "fab", figs=figs)
    assert saved > 0
    for s in analysis.campaign_studies(storage, "fab"):
        objs = get_plotly_graph_objects(storage.get_study_system_attrs(s._study_id))
        assert "dal-sensitivity-to-q-s-x-q-e-open-question-3" in objs
        surface = json.loads(objs["dal-sensitivity-to-q-s-x-q-e-open-question-3"])
        assert surface["data"][0]["type"] == "heatmap"
        assert "best q_s x q_e point is q_s=1, q_e=2" in get_note(s)
    # pushing again replaces the figures (fixed ids) rather than piling up copies
    report.push_to_dashboard(storage, "fab", figs=figs)
    objs = get_plotly_graph_objects(storage.get_study_system_attrs(analysis.campaign_studies(storage, "fab")[0]._study_id))
    assert len(objs) == sum(not isinstance(f, str) and not t.startswith("Importances: ") for t, f in figs)


# ------------------------------------------------------------------ the Markdown tables of docs/RESULTS.md

def test_tables_report_the_selected_trial_mean_and_std_in_percent(storage):
    from dal_search.search import tables

    make_study(storage, "dal", 0.4, [({"q_start": 0.5, "q_end": 1.5}, [0.9, 0.8]),
                                     ({"q_start": 0.7, "q_end": 1.5}, [0.7, 0.74])], values=[0.5, 0.6])
    make_study(storage, "ce", 0.4, [({}, [0.5, 0.52])])
    make_study(storage, "ce", 0.2, [({}, [0.6, 0.6])])
    lines = tables.arm_table(storage, "fab", "test_acc", "last epoch").splitlines()
    assert lines[0] == "| last epoch | symmetric 20 % | symmetric 40 % |"
    assert lines[2] == "| CE | 60.0 ± 0.0 | 51.0 ± 1.0 |"
    assert lines[3] == "| DAL | - | 72.0 ± 2.0 |"  # the trial chosen on validation, not the test-best one
    grid = tables.grid_table(storage, "fab", 0.4).splitlines()
    assert grid[0] == "| q_s \\ q_e | 1.5 |" and grid[2] == "| 0.5 | 85.0 ± 5.0 |"
