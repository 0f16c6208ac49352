"""Partial labels end to end: candidate sets through the trainer (covering accuracy, the fit metrics, PRODEN's
per-sample state), config refusals, the CLI, a campaign, and the campaign files of open question 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from dal_search.objectives.config import ConfigError, TrainConfig
from dal_search.objectives.data import load_dataset, split_train_val
from dal_search.objectives.losses import LOSSES, SampleWeights, cc
from dal_search.objectives.noise import corrupt_labels
from dal_search.objectives.train import _accuracy, train

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(dataset="digits", noise="partial", noise_rate=0.3, threads=1, seed=1)


def _train_masks(rate: float, seed: int) -> np.ndarray:
    """The training split's candidate sets, rebuilt here from the noise kind and the split (stratified by the
    true class, as candidate sets name no one class)."""
    clean = load_dataset("digits").train_y.numpy()
    masks = corrupt_labels(clean, "partial", rate, 10, seed=seed)
    train_idx, _ = split_train_val(clean, 0.1, seed)
    return masks[train_idx]


def test_a_partial_label_run_reports_covering_accuracy_and_what_it_fitted():
    seen = []
    r = train(TrainConfig(loss="cc", epochs=10, **BASE), report=lambda e, m: seen.append(m))
    masks = _train_masks(0.3, 1)
    n, n_ambiguous = len(masks), int((masks.sum(axis=1) > 1).sum())
    assert r["status"] == "ok"
    assert r["realized_rate"] == pytest.approx(0.3, abs=0.02)
    assert r["candidate_set_size"] == pytest.approx(1 + 9 * r["realized_rate"], rel=1e-12)
    for m in seen:
        # a prediction in S is the true class or a false candidate: covering = clean fit + false-candidate fit
        assert m["train_acc"] * n == pytest.approx(m["clean_fit"] * n + m["noisy_fit"] * n_ambiguous, abs=0.01)  # counts
        assert m["train_acc"] >= m["clean_fit"]
    assert r["clean_fit"] > 0.8 and r["noisy_fit"] < 0.1 and r["test_acc"] > 0.8  # CC learns digits at 30 %


def test_covering_accuracy_counts_a_prediction_anywhere_in_the_candidate_set():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4)
    x = torch.randn(300, 5)
    pred = model(x).argmax(1).numpy()
    masks = np.random.default_rng(0).random((300, 4)) < 0.4
    expected = masks[np.arange(300), pred].mean()
    got = _accuracy(model, x, torch.tensor(masks), False, torch.device("cpu"))
    assert got == pytest.approx(expected, abs=1e-12) and 0.2 < got < 0.8
    labels = torch.tensor(np.random.default_rng(1).integers(0, 4, 300))
    assert _accuracy(model, x, labels, False, torch.device("cpu")) == pytest.approx((pred == labels.numpy()).mean())


def test_partial_labels_at_rate_zero_train_exactly_like_clean_labels():
    """A class label is the mask with one entry: candidate-mass DAL on one-entry sets is today's DAL bit for
    bit, so the whole run (split, batches, every metric of every epoch) is the same."""
    dal = dict(BASE, loss="dal", epochs=4, q_start=0.3, q_end=2.0, noise_rate=0.0)
    clean = train(TrainConfig(**{**dal, "noise": "none"}))
    partial = train(TrainConfig(**dal))
    assert max(partial["history"]["lam"]) > 0  # the bootstrap term ran too
    assert partial["history"] == clean["history"]
    assert partial["candidate_set_size"] == 1.0 and partial["realized_rate"] == 0.0


def test_proden_runs_through_the_registry_state():
    r = train(TrainConfig(loss="proden", epochs=6, **BASE))
    assert r["status"] == "ok" and r["test_acc"] > 0.6  # chance is 0.1


def test_a_stateful_loss_is_fed_every_row_once_per_epoch_and_moved_on_at_its_end():
    """The trainer knows no loss by name: a loss registered with a `state` class gets the training labels,
    each batch's rows, and one end_epoch per epoch."""
    log: dict[str, list] = {"rows": [], "ends": 0}

    class Recorder(SampleWeights):
        def __init__(self, labels):
            super().__init__(labels)
            log["labels"] = labels.clone()

        def observe(self, logits, y, idx):
            assert torch.equal(y, log["labels"][idx])  # the rows named are the rows passed
            log["rows"].append(idx.clone())
            super().observe(logits, y, idx)

        def end_epoch(self):
            log["ends"] += 1
            super().end_epoch()

    LOSSES.register("recorded", LOSSES["proden"].obj, help="PRODEN, recorded", candidate_sets=True, state=Recorder)
    try:
        train(TrainConfig(loss="recorded", epochs=3, **BASE))
    finally:
        LOSSES.unregister("recorded")
    n = len(log["labels"])
    assert log["labels"].shape == (n, 10) and log["labels"].dtype == torch.bool and log["ends"] == 3
    per_epoch = len(log["rows"]) // 3
    for e in range(3):
        rows = torch.cat(log["rows"][e * per_epoch:(e + 1) * per_epoch])
        assert torch.equal(rows.sort().values, torch.arange(n))


def test_losses_without_a_candidate_form_are_refused_with_partial_labels():
    for loss in ("ce", "mae", "sce", "nce_rce"):
        with pytest.raises(ConfigError, match=f"loss '{loss}' cannot learn from the candidate sets of noise "
                                              f"'partial'; choose a loss that takes them: gce, dal, cc, proden"):
            TrainConfig(loss=loss, noise="partial")
    assert TrainConfig(loss="cc", noise="symmetric").loss == "cc"  # class labels: CC is CE


def test_cli_trains_partial_labels_and_refuses_a_loss_in_one_line(tmp_path, capsys):
    from dal_search.search.cli import main

    out = tmp_path / "r.json"
    code = main(["train", "--noise", "partial", "--noise-rate", "0.3", "--loss", "dal", "--epochs", "2",
                 "--threads", "1", "--quiet", "--json", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    assert r["status"] == "ok" and r["config"]["noise"] == "partial" and r["epochs_run"] == 2
    assert r["candidate_set_size"] == pytest.approx(1 + 9 * 0.3, abs=0.2)
    capsys.readouterr()
    code = main(["train", "--noise", "partial", "--loss", "sce", "--epochs", "2"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1
    assert err[0].startswith("dal-search: error: loss 'sce' cannot learn from the candidate sets")


def test_a_partial_label_campaign_runs_and_its_studies_carry_the_kind(tmp_path, capsys):
    import yaml

    from dal_search.search.cli import main

    spec = {"name": "pll", "datasets": ["digits"], "noise": {"partial": [0.3]},
            "arms": {"cc": {}, "proden": {}, "dal": {"q_start": 0.6, "q_end": 1.5}},
            "budget": {"trials": 1, "seeds": [0]}, "train": {"epochs": 2, "threads": 1}, "metric": "val_acc"}
    path = tmp_path / "pll.yaml"
    path.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp_path}/pll.db"
    assert main(["run", str(path), "--storage", url]) == 0
    capsys.readouterr()
    storage = optuna.storages.RDBStorage(url)
    studies = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    assert set(studies) == {f"pll/{arm}/digits/partial-0.3" for arm in ("cc", "proden", "dal")}
    for name in studies:
        (trial,) = optuna.load_study(study_name=name, storage=storage).get_trials()
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.value == trial.user_attrs["val_acc"]  # selection on covering accuracy of the val split
        assert trial.user_attrs["realized_rate"] == pytest.approx(0.3, abs=0.02)


CAMPAIGNS = sorted((ROOT / "docs" / "campaigns").glob("*partial*.yaml"))


def test_the_open_question_2_campaigns_pose_the_issue():
    """docs/campaigns/*partial*.yaml: digits at 0.1-0.7 and Fashion-MNIST at 0.1-0.5, at least 3 seeds, CC,
    PRODEN, candidate-mass GCE and DAL at the paper defaults, and DAL searched by TPE on covering accuracy."""
    from dal_search.search.campaign import load_campaign

    camps = [load_campaign(p) for p in CAMPAIGNS]
    assert len({c.name for c in camps}) == len(camps)  # distinct study names
    rates = {"digits": [0.1, 0.3, 0.5, 0.7], "fashion-mnist": [0.1, 0.3, 0.5]}
    for dataset, want in rates.items():
        mine = [c for c in camps if c.datasets == [dataset]]
        assert all(c.noise == {"partial": want} and len(c.seeds) >= 3 and c.metric == "val_acc" for c in mine)
        fixed = next(c for c in mine if "cc" in c.arms)
        assert set(fixed.arms) >= {"cc", "proden", "gce", "dal"}
        assert fixed.arms["dal"] == {"q_start": 0.6, "q_end": 1.5} and fixed.arms["gce"] == {"q": 0.7}
        searched = next(c for c in mine if c.sampler == "tpe")
        assert set(searched.arms) == {"dal"} and {"q_start", "q_end", "schedule", "bootstrap"} <= set(searched.arms["dal"])
        assert searched.budget("dal") >= 8  # Fashion-MNIST affords 8 trials of 3 seeds on 2 cores; digits 20
        assert len({json.dumps(c.train, sort_keys=True) for c in mine}) == 1  # every arm trains alike


def test_the_adaptive_schedule_under_partial_labels_warns_and_static_shapes_do_not():
    # adaptive reads the covering accuracy, high from the first epoch under candidate sets (docs/RESULTS.md 7)
    with pytest.warns(UserWarning, match="covering accuracy"):
        train(TrainConfig(loss="dal", schedule="adaptive", epochs=1, **BASE))
    from dal_search.objectives.fused import train_fused
    with pytest.warns(UserWarning, match="covering accuracy"):  # a fused trial builds its schedule the same way
        train_fused([TrainConfig(loss="dal", schedule=s, epochs=1, **BASE) for s in ("linear", "adaptive")])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train(TrainConfig(loss="dal", schedule="linear", epochs=1, **BASE))
        train(TrainConfig(loss="dal", schedule="adaptive", epochs=1, **{**BASE, "noise": "symmetric"}))
