"""Analysis and report: figures carry the numbers of the trials (computed here independently), tiny or failed
studies give a "not enough trials" sentence instead of a crash, and the report/dashboard push round-trip."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from scipy import stats as sp

from dal_search.search import analysis, report
from dal_search.search.analysis import NotEnoughTrials

KEYS = ("test_acc", "best_test_acc", "val_acc", "best_val_acc", "test_acc_at_best_val", "noisy_fit", "clean_fit")


def _attrs(test_accs: list[float], val: float | None = None, hashes: list[str] | None = None) -> dict:
    """User attrs in the shape the worker writes (search/worker.py): per-seed rows plus seed means."""
    rows = [{"seed": i, "status": "ok", **{k: a for k in KEYS}} for i, a in enumerate(test_accs)]
    for row, h in zip(rows, hashes or []):
        row["label_hash"] = h
    out = {"per_seed": rows, "seeds": list(range(len(test_accs)))}
    for k in KEYS:
        out[k] = statistics.fmean(test_accs)
    if val is not None:
        out["val_acc"] = val
    return out


def make_study(storage, arm: str, rate: float, trials: list[tuple[dict, list[float]]], *, noise="symmetric",
               campaign="fab", state=TrialState.COMPLETE, values=None, hashes=None) -> optuna.Study:
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
                                     user_attrs=_attrs(accs, hashes=hashes) if state == TrialState.COMPLETE else
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
            sd = (sum((v - sum(vals) / 3) ** 2 for v in vals) / 2) ** 0.5  # sample std over the 3 seeds
            assert f"{100 * sum(vals) / 3:.1f} % ± {100 * sd:.1f} (n=3 seeds)" in h.text[i][j]
    assert "n=1-3 seeds per point" in fig.layout.title.text  # the 80 % study trained one seed
    # the best point is starred: chosen on the studies' value (the selection metric), here (1.0, 2.0)
    stars = [t for t in fig.data if t.type == "scatter" and t.marker.symbol == "star"]
    assert len(stars) == 2 and (stars[0].x[0], stars[0].y[0]) == (1.0, 2.0)
    assert "star: the best point on noisy validation accuracy" in fig.layout.title.text
    # both panels share one colour scale so that rates compare by colour
    assert heat[0].zmin == heat[1].zmin and heat[0].zmax == heat[1].zmax
    assert heat[1].zmin == pytest.approx(min(v[0] - 0.3 for v in grid.values()))


def test_surface_of_scattered_tpe_points_is_a_contour_with_every_point_drawn(storage):
    pts = [({"q_start": 0.1 * i + 0.15, "q_end": 1.0 + 0.13 * i}, [0.6 + 0.01 * i]) for i in range(7)]
    make_study(storage, "dal", 0.4, pts)
    fig = analysis.sensitivity_surface(analysis.campaign_studies(storage))
    assert [t.type for t in fig.data] == ["contour", "scatter", "scatter"]  # surface, points, the best point
    assert len(fig.data[1].x) == 7
    # one seed per point: the figure says there is no spread rather than drawing a zero one
    assert "n=1 seed per point: no spread" in fig.layout.title.text
    assert all("(n=1 seed, no spread)" in t for t in fig.data[1].text)


def test_surface_shows_one_shape_per_panel_and_says_when_shapes_are_pooled(storage):
    many = [({"q_start": 0.1 * i + 0.15, "q_end": 1.5, "schedule": sh}, [0.6 + 0.01 * i, 0.62, 0.6])
            for i in range(4) for sh in ("linear", "cosine")]
    make_study(storage, "dal", 0.4, many)
    few = [({"q_start": 0.2, "q_end": 1.2, "schedule": "linear"}, [0.5, 0.5, 0.5]),
           ({"q_start": 0.4, "q_end": 1.4, "schedule": "cosine"}, [0.6, 0.6, 0.6]),
           ({"q_start": 0.6, "q_end": 1.6, "schedule": "linear"}, [0.7, 0.7, 0.7])]
    make_study(storage, "dal", 0.8, few)
    fig = analysis.sensitivity_surface(analysis.campaign_studies(storage))
    titles = [a.text for a in fig.layout.annotations]
    # 40 %: 4 points per shape, one panel each; 80 %: 2 + 1 points, so only a pooled panel, titled so
    assert titles == ["symmetric 40 %, linear", "symmetric 40 %, cosine",
                      "symmetric 80 %, shapes pooled: linear, cosine"]
    assert "mix schedule shapes" in fig.layout.title.text


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


def test_report_png_dir_without_a_renderer_is_one_line_before_any_work(tmp_path):
    # no kaleido is installed here; a chromium path that does not exist leaves no renderer at all
    db = tmp_path / "empty.db"
    optuna.create_study(storage=f"sqlite:///{db}", study_name="unrelated")
    r = subprocess.run([sys.executable, "-m", "dal_search", "report", "--storage", f"sqlite:///{db}", "--out",
                        str(tmp_path / "r.html"), "--png-dir", str(tmp_path / "png")], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "DAL_SEARCH_CHROMIUM": str(tmp_path / "none")})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no PNG renderer" in lines[0] and "apt-get install chromium" in lines[0]
    assert not (tmp_path / "r.html").exists() and not any((tmp_path / "png").glob("*.png"))


# ------------------------------------------------------------------ schedules, arms, findings

def test_schedule_comparison_boxes_hold_every_seed(storage):
    acc = {"linear": [0.70, 0.72], "cosine": [0.75, 0.74], "adaptive": [0.60, 0.61]}
    make_study(storage, "dal", 0.4, [({"q_start": 0.6, "q_end": 1.5, "schedule": sh}, v) for sh, v in acc.items()])
    fig = analysis.schedule_comparison(analysis.campaign_studies(storage))
    boxes = {t.name: list(t.y) for t in fig.data}
    assert list(boxes) == ["linear", "cosine", "adaptive"]  # the documented order, not sampling order
    assert boxes == acc
    text = analysis.findings(analysis.campaign_studies(storage))
    line = next(f for f in text if "schedule shapes by" in f)
    # two seeds: an interval, but no verdict either way
    ci = sp.ttest_rel(acc["cosine"], acc["linear"]).confidence_interval()
    assert (f"cosine vs linear: +3.5 points of test accuracy, 95 % CI [{100 * ci.low:+.1f}, {100 * ci.high:+.1f}], "
            f"n=2 seeds paired: too few seeds to tell") in line
    assert "each shape at q_end=1.5, q_start=0.6" in line and "no shape is detectably better than linear" in line


def test_shapes_compare_per_seed_means_over_each_shapes_trials(storage):
    """Two cosine trials and one linear trial per seed: each shape's seed value is the mean over its
    trials, and the comparison pairs seeds (not trials); the sampler's q choices are said to be pooled."""
    lin = [0.80, 0.82, 0.79, 0.81]
    cos_a, cos_b = [0.84, 0.86, 0.83, 0.86], [0.86, 0.86, 0.85, 0.84]
    make_study(storage, "dal", 0.4, [({"q_start": 0.5, "q_end": 1.5, "schedule": "linear"}, lin),
                                     ({"q_start": 0.6, "q_end": 1.5, "schedule": "cosine"}, cos_a),
                                     ({"q_start": 0.7, "q_end": 1.9, "schedule": "cosine"}, cos_b)])
    (r,) = analysis.shape_results(analysis.campaign_studies(storage))
    cos = [(x + y) / 2 for x, y in zip(cos_a, cos_b)]
    assert r.seeds["cosine"] == pytest.approx(dict(enumerate(cos)))
    ci = sp.ttest_rel(cos, lin).confidence_interval()
    c = r.comparisons["cosine"]
    assert (c.n, c.paired, c.low, c.high) == (4, True, pytest.approx(ci.low), pytest.approx(ci.high))
    assert c.verdict == ("better" if ci.low > 0 else "no detectable difference")
    line = next(f for f in analysis.findings(analysis.campaign_studies(storage)) if "schedule shapes by" in f)
    assert "q_end, q_start pooled over what the sampler chose for each shape" in line
    assert f"linear {100 * statistics.fmean(lin):.1f} % (1 trial), cosine {100 * statistics.fmean(cos):.1f} % (2 trials)" \
        in line


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
    assert bars["DAL"].error_y.array[0] == pytest.approx(0.02 * 2 ** 0.5)  # sample std of 0.70, 0.74
    assert bars["CE"].y[1] == pytest.approx(0.25)


def test_best_baseline_is_chosen_on_validation_and_dal_is_compared_over_paired_seeds(storage):
    # SCE has the best TEST accuracy but GCE the best validation value: GCE is the baseline to beat.
    dal = [0.90, 0.93, 0.91, 0.94, 0.92]
    gce = [0.89, 0.90, 0.90, 0.91, 0.90]
    make_study(storage, "dal", 0.4, [({"q_start": 0.5, "q_end": 1.5}, dal)], values=[0.62])
    make_study(storage, "gce", 0.4, [({}, gce)], values=[0.61])
    make_study(storage, "sce", 0.4, [({}, [0.95] * 5)], values=[0.55])
    make_study(storage, "ce", 0.4, [({}, [0.5, 0.6, 0.55])], values=[0.4])
    studies = analysis.campaign_studies(storage)
    (r,) = analysis.arm_results(studies)
    assert r.baseline == "gce" and set(r.each) == {"ce", "gce", "sce"}
    ci = sp.ttest_rel(dal, gce).confidence_interval()
    words = analysis.findings(studies)
    assert (f"symmetric 40 %: DAL vs GCE (the best baseline on noisy validation accuracy; each study's best trial "
            f"chosen on it, DAL's among 1 trial): +2.0 points of test accuracy, 95 % CI [{100 * ci.low:+.1f}, "
            f"{100 * ci.high:+.1f}], n=5 seeds paired: better.") in words
    assert r.each["sce"].verdict == "worse"  # shown in the tables, never the finding's headline
    # CE trained 3 of the 5 seeds: paired over those 3
    ce = r.each["ce"]
    assert ce.paired and ce.n == 3


def test_arm_bars_of_one_seed_have_no_error_bar_and_say_so(storage):
    make_study(storage, "dal", 0.4, [({"q_start": 0.5, "q_end": 1.5}, [0.9])])
    make_study(storage, "ce", 0.4, [({}, [0.5, 0.6, 0.55])])
    fig = analysis.arm_comparison(analysis.campaign_studies(storage))
    bars = {t.name: t for t in fig.data}
    assert bars["DAL"].error_y.array == (None,) and not bars["DAL"].error_y.visible
    assert bars["CE"].error_y.array[0] == pytest.approx(0.05)
    assert "a bar of n=1 seed has no error bar" in fig.layout.title.text
    (line,) = analysis.findings(analysis.campaign_studies(storage))
    assert line.endswith("no interval (one seed), n=1 vs 3 seeds, unpaired (Welch: the two sides share too few "
                         "seeds to pair): too few seeds to tell.")


def test_the_best_surface_point_is_chosen_on_validation_and_compared_over_seeds(storage):
    # (1.0, 2.5) has the best TEST accuracy but the worst validation value: the finding must not pick it.
    pts = {(0.2, 1.0): ([0.50, 0.60, 0.55], 0.40), (0.6, 1.5): ([0.80, 0.90, 0.86], 0.62),
           (0.8, 1.5): ([0.78, 0.85, 0.80], 0.60), (1.0, 2.5): ([0.95, 0.96, 0.97], 0.30)}
    make_study(storage, "dal", 0.6, [({"q_start": qs, "q_end": qe}, acc) for (qs, qe), (acc, _) in pts.items()],
               values=[v for _, v in pts.values()])
    make_study(storage, "gce", 0.6, [({}, [0.9, 0.9, 0.9])])
    text = analysis.findings(analysis.campaign_studies(storage))
    line = next(f for f in text if "best q_s x q_e point" in f)
    best, runner, worst = pts[(0.6, 1.5)][0], pts[(0.8, 1.5)][0], pts[(1.0, 2.5)][0]
    ci_r = sp.ttest_rel(best, runner).confidence_interval()
    ci_w = sp.ttest_rel(best, worst).confidence_interval()
    sd = statistics.stdev(best)
    assert line.startswith(f"symmetric 60 %, linear schedule: the best q_s x q_e point on noisy validation accuracy "
                           f"is q_s=0.6, q_e=1.5 (val_acc 0.620; test accuracy 85.3 % ± {100 * sd:.1f} (n=3 seeds)), "
                           f"of 4 points.")
    d_r, d_w = statistics.fmean(best) - statistics.fmean(runner), statistics.fmean(best) - statistics.fmean(worst)
    assert (f"Best point vs the runner-up on validation (q_s=0.8, q_e=1.5): {100 * d_r:+.1f} points of test "
            f"accuracy, 95 % CI [{100 * ci_r.low:+.1f}, {100 * ci_r.high:+.1f}], n=3 seeds paired: no detectable "
            f"difference;") in line
    assert (f"best point vs the worst on validation (q_s=1, q_e=2.5): {100 * d_w:+.1f} points of test accuracy, "
            f"95 % CI [{100 * ci_w.low:+.1f}, {100 * ci_w.high:+.1f}], n=3 seeds paired: no detectable "
            f"difference.") in line
    assert ci_r.low < 0 < ci_r.high and ci_w.low < 0 < ci_w.high  # the verdicts above, as scipy sees them


def test_the_surface_table_compares_the_paper_default_point_with_the_best(storage):
    from dal_search.search import tables

    # best on validation: (0.8, 1.5); the paper's default (0.6, 1.5) is worse on test by 0.05-0.07 per seed
    pts = {(0.6, 1.5): ([0.80, 0.84, 0.81], 0.55), (0.8, 1.5): ([0.86, 0.90, 0.88], 0.62),
           (0.4, 2.0): ([0.70, 0.72, 0.71], 0.50)}
    make_study(storage, "dal", 0.6, [({"q_start": qs, "q_end": qe}, acc) for (qs, qe), (acc, _) in pts.items()],
               values=[v for _, v in pts.values()])
    make_study(storage, "dal", 0.4, [({"q_start": qs, "q_end": qe}, acc) for (qs, qe), acc in
                                     [((0.4, 2.0), [0.9, 0.9, 0.91]), ((0.8, 2.0), [0.8, 0.8, 0.81]),
                                      ((0.4, 1.25), [0.85, 0.86, 0.84])]])
    d, b = pts[(0.6, 1.5)][0], pts[(0.8, 1.5)][0]
    ci = sp.ttest_rel(d, b).confidence_interval()
    rows = tables.surface_table(storage, "fab").splitlines()
    assert rows[0].endswith("| paper default − best [95 % CI], verdict |")
    assert rows[2].startswith("| symmetric 40 % |") and rows[2].endswith("| not on the grid |")
    mean = statistics.fmean(d) - statistics.fmean(b)
    assert rows[3].endswith(f"| (0.6, 1.5): {100 * mean:+.1f} [{100 * ci.low:+.1f}, {100 * ci.high:+.1f}], "
                            f"n=3: worse |") and ci.high < 0
    line = next(f for f in analysis.findings(analysis.campaign_studies(storage)) if f.startswith("symmetric 60 %"))
    assert line.endswith(f"The paper's default (q_s=0.6, q_e=1.5) vs the best point: {100 * mean:+.1f} points of "
                         f"test accuracy, 95 % CI [{100 * ci.low:+.1f}, {100 * ci.high:+.1f}], n=3 seeds paired: "
                         f"worse.")


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
        note = get_note(s)
        assert "the best q_s x q_e point on noisy validation accuracy is q_s=1, q_e=2" in note
        assert report.HOW_TO_READ in note
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
    assert lines[0] == "| last epoch (n=2 seeds) | symmetric 20 % | symmetric 40 % |"
    assert lines[2] == "| CE | 60.0 ± 0.0 | 51.0 ± 1.4 |"  # sample std over seeds
    assert lines[3] == "| DAL | - | 72.0 ± 2.8 |"  # the trial chosen on validation, not the test-best one
    grid = tables.grid_table(storage, "fab", 0.4).splitlines()
    assert grid[0] == "| q_s \\ q_e (n=2 seeds) | 1.5 |" and grid[2] == "| 0.5 | 85.0 ± 7.1 |"


def test_tables_against_another_campaign_pair_by_seed_only_where_the_noisy_labels_agree(storage):
    import math

    from scipy.stats import t as student

    from dal_search.search import tables

    # campaign "tpe": two searched DAL trials (the second wins on validation); campaign "fab": CE and GCE
    make_study(storage, "dal", 0.4, [({"q_start": 0.5}, [0.70, 0.71, 0.72]), ({"q_start": 0.7}, [0.80, 0.84, 0.82])],
               campaign="tpe", values=[0.5, 0.6])
    make_study(storage, "ce", 0.4, [({}, [0.75, 0.78, 0.76])])
    make_study(storage, "gce", 0.4, [({}, [0.81, 0.80, 0.83])])
    d = [0.80 - 0.75, 0.84 - 0.78, 0.82 - 0.76]  # paired by seed against CE
    mean = sum(d) / 3
    half = student.ppf(0.975, 2) * math.sqrt(sum((x - mean) ** 2 for x in d) / 2) / math.sqrt(3)
    row = tables.against_table(storage, "tpe", "fab").splitlines()[2]
    assert row.startswith("| symmetric 40 % | ")
    assert f"{100 * mean:+.1f} [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}], n=3: better" in row
    assert mean - half > 0 and "n=3: no detectable difference" in row  # GCE: +0.7 [-6.5, +7.8]

    # seeds whose noisy labels differ between the campaigns are not pairs: a campaign with other labels is refused
    make_study(storage, "dal", 0.4, [({"q_start": 0.7}, [0.80, 0.84, 0.82])], campaign="tpe2", hashes=["a", "b", "c"])
    make_study(storage, "ce", 0.4, [({}, [0.75, 0.78, 0.76])], campaign="fab2", hashes=["x", "y", "z"])
    make_study(storage, "gce", 0.4, [({}, [0.81, 0.80, 0.83])], campaign="fab2", hashes=["a", "b", "c"])
    row = tables.against_table(storage, "tpe2", "fab2").splitlines()[2]
    assert "not comparable: different noisy labels for every shared seed" in row
    assert "n=3: no detectable difference" in row


# ------------------------------------------------------------------ a real small campaign, end to end

@pytest.fixture(scope="module")
def real_campaign(tmp_path_factory):
    """A real campaign trained to the end (2 epochs, 3 seeds): DAL over 3 q_s x 2 shapes (a space of choices,
    so 6 distinct trials), GCE and CE fixed (one trial each)."""
    from dal_search.search.campaign import create_studies, parse_campaign
    from dal_search.search.worker import run_worker
    from dal_search.storage import open_storage

    spec = {"name": "real", "datasets": ["digits"], "noise": {"symmetric": [0.4]},
            "arms": {"dal": {"q_start": [0.3, 0.6, 0.9], "q_end": 1.5, "schedule": ["linear", "cosine"]},
                     "gce": {"q": 0.7}, "ce": {}},
            "budget": {"trials": 10, "seeds": [0, 1, 2]}, "train": {"epochs": 2, "threads": 1}}
    url = f"sqlite:///{tmp_path_factory.mktemp('real') / 'real.db'}"
    storage = open_storage(url)
    create_studies(storage, parse_campaign(spec))
    run_worker(storage, "real", worker_seed=0)
    return storage


def _expected_dal_vs_best_baseline(storage) -> tuple[str, str]:
    """The headline comparison recomputed here from the stored per-seed rows, with scipy."""
    studies = {s.user_attrs["arm"]: s for s in analysis.campaign_studies(storage, "real")}
    best = {a: max(s.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.value) for a, s in studies.items()}
    base = max(("gce", "ce"), key=lambda a: best[a].value)  # on the noisy validation value, not on test
    dal = [r["test_acc"] for r in sorted(best["dal"].user_attrs["per_seed"], key=lambda r: r["seed"])]
    other = [r["test_acc"] for r in sorted(best[base].user_attrs["per_seed"], key=lambda r: r["seed"])]
    ci = sp.ttest_rel(dal, other).confidence_interval()
    verdict = "better" if ci.low > 0 else "worse" if ci.high < 0 else "no detectable difference"
    diff = statistics.fmean(dal) - statistics.fmean(other)
    return base.upper(), (f"{100 * diff:+.1f} points of test accuracy, 95 % CI [{100 * ci.low:+.1f}, "
                          f"{100 * ci.high:+.1f}], n=3 seeds paired: {verdict}")


@pytest.mark.slow
def test_a_real_campaigns_findings_tables_report_and_note_carry_n_intervals_and_verdicts(real_campaign, tmp_path):
    import re

    from optuna_dashboard import get_note

    from dal_search.search import tables

    storage = real_campaign
    studies = analysis.campaign_studies(storage, "real")
    assert [len(s.get_trials()) for s in studies] == [1, 6, 1]  # ce, dal, gce: no repeated parameter set
    found = analysis.findings(studies)
    base, headline = _expected_dal_vs_best_baseline(storage)
    assert f"symmetric 40 %: DAL vs {base} (the best baseline on noisy validation accuracy; each study's best " \
           f"trial chosen on it, DAL's among 6 trials): {headline}." in found
    comparison = re.compile(r"[+-]\d+\.\d points of test accuracy, 95 % CI \[[+-]\d+\.\d, [+-]\d+\.\d\], "
                            r"n=3 seeds paired: (better|worse|no detectable difference)")
    assert len(found) == 4  # DAL vs best baseline; best point per shape (2); shapes
    for f in found:
        assert comparison.search(f), f
    assert any("the best q_s x q_e point on noisy validation accuracy" in f for f in found)
    assert any(f.startswith("symmetric 40 %: schedule shapes by test accuracy") and
               "each shape at the same 3 settings of q_start" in f for f in found)

    # tables: the same comparison, cell by cell
    table = tables.comparison_table(storage, "real", "test_acc", "last epoch").splitlines()
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    diff, ci_and_verdict = headline.split(" points of test accuracy, 95 % CI ")
    assert cells[0] == "symmetric 40 %" and cells[1] == base
    assert cells[4] == f"{diff} {ci_and_verdict.split(', n=')[0]}"
    assert cells[5] == "3" and cells[6] == headline.rsplit(": ", 1)[1]
    everything = tables.campaign_tables(storage, "real")
    for heading in ("DAL vs the best baseline", "DAL vs each baseline", "Schedule shapes", "q_s x q_e"):
        assert f"### {heading}" in everything

    # the HTML report and the dashboard note state the very same sentences
    page = report.write_report(storage, "real", tmp_path / "r.html").read_text()
    import html as _html

    for f in found:
        assert f"<li>{_html.escape(f)}</li>" in page
    assert _html.escape(report.HOW_TO_READ) in page
    report.push_to_dashboard(storage, "real")
    for s in studies:
        note = get_note(s)
        assert all(f"- {f}" in note for f in found)
