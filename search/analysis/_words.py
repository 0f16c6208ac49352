"""Words shared by the figures and the findings: what a number is, what a selection rests on, a noise setting's
label, a mean over seeds with its spread."""

from __future__ import annotations

from typing import Iterable

import optuna

from dal_search.search import stats

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


def rate_label(r: float) -> str:
    return f"{100 * r:g} %"


def labeller(studies: Iterable[optuna.Study]):
    """'symmetric 40 %' (a noise kind's registered title: 'partial labels 30 %'), with the dataset in front when
    the studies span more than one dataset."""
    from dal_search.objectives.noise import NOISE_KINDS

    several = len({s.user_attrs.get("dataset", "") for s in studies}) > 1
    titles = NOISE_KINDS.titles()

    def label(c: tuple[str, str, float]) -> str:
        return (f"{c[0]} " if several else "") + f"{titles.get(c[1], c[1])} {rate_label(c[2])}"
    return label


def pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def mean_sd(values: list[float]) -> str:
    """'95.1 % ± 0.9 (n=3 seeds)', or '95.1 % (n=1 seed, no spread)'."""
    if not values:
        return "no value"
    mean, sd = stats.spread(values)
    if sd is None:
        return f"{pct(mean)} (n=1 seed, no spread)"
    return f"{pct(mean)} ± {100 * sd:.1f} (n={len(values)} seeds)"

