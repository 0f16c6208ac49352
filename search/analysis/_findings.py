"""Findings in words: each function takes studies and returns sentences built from the data of _data.py. Every
comparison is said with `stats.sentence` (n seeds, the mean difference in points, its 95 % interval, the verdict)
and every selection says what it rests on.

`findings(studies)` returns, in order, the sentences of every function in FINDINGS: a new finding is one
function here under `@finding`."""

from __future__ import annotations

import statistics
from typing import Callable, Iterable

import optuna

from dal_search.search import stats
from dal_search.search.analysis._data import (ARM_NAMES, Point, arm_results, learned_results, schedule_point,
                                              seed_values, shape_of, shape_results, surface_results)
from dal_search.search.analysis._words import KEY_WORDS, SELECTED_ON, labeller, mean_sd, pct

Finder = Callable[[list[optuna.Study], str], Iterable[str]]
FINDINGS: list[Finder] = []


def finding(fn: Finder) -> Finder:
    """Register `fn(studies, key) -> sentences`; `findings` says them after those registered before it."""
    FINDINGS.append(fn)
    return fn


def findings(studies: list[optuna.Study], key: str = "test_acc") -> list[str]:
    """Sentences stating what the figures show, on `key` (test accuracy by default)."""
    return [sentence for fn in FINDINGS for sentence in fn(studies, key)]


def _words(studies: list[optuna.Study], key: str):
    """(the studies' noise-setting labeller, the words for `key`)."""
    return labeller(studies), KEY_WORDS.get(key, key)


def _q(p: Point) -> str:
    return f"q_s={p.q_start:.3g}, q_e={p.q_end:.3g}"


@finding
def arm_findings(studies: list[optuna.Study], key: str = "test_acc") -> Iterable[str]:
    """Per noise setting: DAL vs the best baseline (chosen on the selection metric)."""
    label, what = _words(studies, key)
    for r in arm_results(studies, key):
        base = ARM_NAMES.get(r.baseline, r.baseline)
        note = (f"the best baseline on {r.selected_on}; each study's best trial chosen on it, DAL's among "
                f"{r.dal_trials} trial{'s' if r.dal_trials != 1 else ''}")
        yield f"{label(r.cond)}: " + stats.sentence("DAL", base, r.comparison, note, what=what) + "."


@finding
def surface_findings(studies: list[optuna.Study], key: str = "test_acc") -> Iterable[str]:
    """Per surface panel: the best q_s x q_e point against the runner-up, the worst and the paper's default."""
    label, what = _words(studies, key)
    for r in surface_results(studies, key):
        sel = SELECTED_ON.get(r.panel.metric, r.panel.metric)
        shape = f"{r.panel.shape} schedule" if r.panel.shape else "schedule shapes pooled (" + \
            ", ".join(r.panel.shapes) + ")"
        yield (
            f"{label(r.panel.cond)}, {shape}: the best q_s x q_e point on {sel} is {_q(r.best)} "
            f"({r.panel.metric} {r.best.selection:.3f}; {what} {mean_sd(list(r.best.seeds(key).values()))}), "
            f"of {len(r.panel.points)} points. "
            + stats.sentence("Best point", f"the runner-up on validation ({_q(r.runner_up)})", r.vs_runner_up,
                             what=what)
            + "; " + stats.sentence("best point", f"the worst on validation ({_q(r.worst)})", r.vs_worst,
                                    what=what) + "."
            + (" " + stats.sentence(f"The paper's default ({_q(r.default)})", "the best point", r.default_vs_best,
                                    what=what) + "." if r.default_vs_best is not None else ""))


@finding
def shape_findings(studies: list[optuna.Study], key: str = "test_acc") -> Iterable[str]:
    """Per noise setting with two shapes or more: each shape against linear."""
    label, what = _words(studies, key)
    for r in shape_results(studies, key):
        means = ", ".join(f"{sh} {pct(statistics.fmean(v.values()))} ({r.trials[sh]} trial"
                          f"{'s' if r.trials[sh] != 1 else ''})" if v else f"{sh} -" for sh, v in r.seeds.items())
        comps = "; ".join(stats.sentence(sh, r.reference, c, what=what) for sh, c in r.comparisons.items())
        better = [sh for sh, c in r.comparisons.items() if c.verdict == stats.BETTER]
        worse = [sh for sh, c in r.comparisons.items() if c.verdict == stats.WORSE]
        verdict = (f"detectably better than {r.reference}: {', '.join(better)}" if better else
                   f"no shape is detectably better than {r.reference}")
        if worse:
            verdict += f"; detectably worse: {', '.join(worse)}"
        yield (f"{label(r.cond)}: schedule shapes by {what}, per seed averaged over each shape's trials "
               f"({r.pooling}): {means}. {comps}. So {verdict}.")


@finding
def learned_findings(studies: list[optuna.Study], key: str = "test_acc") -> Iterable[str]:
    """One sentence per setting with a learned schedule: the best learned vs the best fixed-shape trial."""
    label, what = _words(studies, key)
    for r in learned_results(studies, key):
        head = (f"{label(r.cond)}: the schedule learned by PBT (the best of {len(r.members)} learned schedules on "
                f"{r.selected_on}: trial {r.members[0].number}, {what} {mean_sd(seed_values(r.members[0], key))})")
        if r.comparison is None:
            yield f"{head}; no fixed-shape DAL trial in this setting to compare it with."
            continue
        q_s, q_e = schedule_point(r.fixed)
        fixed = (f"the best fixed shape ({shape_of(r.fixed)}, q_s={q_s:.3g}, q_e={q_e:.3g}; best of "
                 f"{r.fixed_trials} fixed-shape trials)")
        yield f"{head}. " + stats.sentence("Learned", fixed, r.comparison, what=what) + "."
