"""Campaigns end to end through the real CLI, real training on digits, and real storages (SQLite, journal,
PostgreSQL): budgets finish exactly, killed workers lose nothing, exports re-run exactly, bad input is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import tiny_campaign

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def cli(*args: str, env: dict | None = None, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dal_search", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"dal-search {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dal_search", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def trials_of(url: str, campaign: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    from dal_search.storage import open_storage

    storage = open_storage(url)
    return {s.study_name: s.get_trials() for s in
            (optuna.load_study(study_name=n, storage=storage) for n in optuna.get_all_study_names(storage))
            if s.user_attrs.get("campaign") == campaign}


@pytest.fixture(params=["sqlite", "journal", "postgres"])
def any_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    if request.param == "journal":
        return f"journal:{tmp_path}/s.log"
    return request.getfixturevalue("pg_url")


def test_two_workers_finish_the_budget_exactly(any_url, campaign_file):
    path = campaign_file(name="two", trials=6, epochs=3)
    cli("run", path, "--storage", any_url, "--workers", "2", "--seed", "1")
    (trials,) = trials_of(any_url, "two").values()
    assert sorted(t.number for t in trials) == list(range(6))  # no lost, no extra, no duplicated numbers
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert 0.0 <= t.value <= 1.0
        assert t.value == pytest.approx(t.user_attrs["val_acc"])
        assert t.params["q_start"] <= t.params["q_end"]
        assert len(t.user_attrs["history"]["q"]) == 3
    # a second run of a finished campaign trains nothing and changes nothing
    cli("run", path, "--storage", any_url, "--workers", "2")
    assert len(next(iter(trials_of(any_url, "two").values()))) == 6


def _wait_for_running(url: str, campaign: str, timeout: float = 120) -> optuna.trial.FrozenTrial:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            for trials in trials_of(url, campaign).values():
                running = [t for t in trials if t.state == TrialState.RUNNING and t.params]
                if running:
                    return running[0]
        except Exception:  # noqa: BLE001 - the study may not exist yet
            pass
        time.sleep(0.3)
    raise AssertionError("no trial started running")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkilled_worker_trial_is_retried_and_nothing_is_lost(backend, tmp_path, request, campaign_file):
    url = f"sqlite:///{tmp_path}/k.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    env = {"DAL_SEARCH_HEARTBEAT": "1", "DAL_SEARCH_GRACE": "3"}
    path = campaign_file(name="kill", trials=3, epochs=40)
    cli("run", path, "--storage", url, "--create-only")
    victim = spawn("worker", "--storage", url, "--campaign", "kill", "--quiet", "--threads", "1", env=env)
    running = _wait_for_running(url, "kill")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    cli("worker", "--storage", url, "--campaign", "kill", "--quiet", "--threads", "1", env=env)

    (trials,) = trials_of(url, "kill").values()
    by_number = {t.number: t for t in trials}
    killed = by_number[running.number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params  # the same config, re-run
    slots = [t for t in trials if "failed_trial" not in t.system_attrs]
    assert len(slots) == 3  # the budget: three slots, one of them run twice
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


def test_export_then_train_config_reproduces_the_value(tmp_path, campaign_file):
    url = f"sqlite:///{tmp_path}/e.db"
    path = campaign_file(name="exp", trials=3, epochs=4)
    cli("run", path, "--storage", url, "--workers", "1", "--seed", "3")
    out = tmp_path / "best.yaml"
    cli("export", "--storage", url, "--campaign", "exp", "--out", str(out))
    doc = yaml.safe_load(out.read_text())
    doc = doc[0] if isinstance(doc, list) else doc
    (trials,) = trials_of(url, "exp").values()
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert doc["provenance"]["trial_number"] == best.number
    result_file = tmp_path / "r.json"
    cli("train", "--config", str(out), "--quiet", "--json", str(result_file))
    result = json.loads(result_file.read_text())
    assert result["val_acc"] == best.value  # bit-for-bit on CPU
    assert result["test_acc"] == best.user_attrs["test_acc"]


def test_non_finite_loss_fails_the_trial_with_its_reason_and_the_worker_goes_on(tmp_path, campaign_file):
    url = f"sqlite:///{tmp_path}/n.db"
    path = campaign_file(name="nan", trials=2, epochs=3,
                         arms={"ce": {"lr": [1e6]}, "gce": {"q": 0.7}})
    cli("run", path, "--storage", url)
    studies = trials_of(url, "nan")
    ce = studies["nan/ce/digits/symmetric-0.4"]
    assert [t.state for t in ce] == [TrialState.FAIL, TrialState.FAIL]
    assert all("loss became" in t.user_attrs["fail_reason"] for t in ce)
    assert all(t.state == TrialState.COMPLETE for t in studies["nan/gce/digits/symmetric-0.4"])


def test_ctrl_c_leaves_the_storage_consistent_and_a_rerun_finishes(tmp_path, campaign_file):
    url = f"sqlite:///{tmp_path}/c.db"
    path = campaign_file(name="intr", trials=4, epochs=60)
    driver = spawn("run", path, "--storage", url, "--workers", "2")
    _wait_for_running(url, "intr")
    time.sleep(1.0)
    os.killpg(driver.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    assert driver.wait(timeout=120) == 130, driver.stderr.read()
    (trials,) = trials_of(url, "intr").values()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert interrupted and all("interrupted" in t.user_attrs["fail_reason"] for t in interrupted)
    cli("run", path, "--storage", url, "--workers", "2")
    (trials,) = trials_of(url, "intr").values()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    assert len([t for t in trials if "failed_trial" not in t.system_attrs]) == 4


@pytest.mark.parametrize("args, fragment", [
    (["run", "CAMPAIGN", "--storage", "mysql://u@h/db"], "storage"),
    (["run", "CAMPAIGN", "--storage", "postgresql+psycopg://postgres@127.0.0.1:1/x"], "127.0.0.1:1"),
    (["run", "MISSING.yaml"], "not found"),
    (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["train", "--noise-rate", "1.5"], "noise_rate must be in [0, 1)"),
    (["train", "--q-start", "0"], "q_start must be > 0"),
    (["train", "--epochs", "0"], "epochs must be >= 1"),
    (["train", "--loss", "focal"], "unknown loss 'focal'"),
    (["train", "--noise", "pairflip"], "unknown noise 'pairflip'"),
    (["train", "--dataset", "cifar10", "--data-dir", "/nonexistent/data"], "/nonexistent/data/cifar-10-batches-py"),
    (["train", "--noise", "file", "--noise-file", "SHORT.npy"], "labels but the training set has"),
    (["train", "--config", "/nonexistent/best.yaml"], "not found"),
    (["export", "--storage", "STORE", "--study", "nope", "--out", "x.yaml"], "no study 'nope'"),
    (["worker", "--storage", "STORE", "--campaign", "ghost"], "no studies of campaign 'ghost'"),
])
def test_bad_input_is_one_line_and_a_nonzero_exit(args, fragment, campaign_file, tmp_path):
    import numpy as np

    np.save(tmp_path / "short.npy", np.zeros(10, dtype=np.int64))
    subs = {"CAMPAIGN": lambda: campaign_file(name="bad"), "SHORT.npy": lambda: str(tmp_path / "short.npy"),
            "STORE": lambda: f"sqlite:///{tmp_path}/empty.db"}
    args = [subs[a]() if a in subs else a for a in args]
    proc = cli(*args, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dal-search: error:"), proc.stderr
    assert fragment in lines[0]


def test_malformed_campaign_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**tiny_campaign("bad"), "sampler": "bayes"}))
    db = tmp_path / "never.db"
    proc = cli("run", str(bad), "--storage", f"sqlite:///{db}", check=False)
    assert proc.returncode == 2 and "unknown sampler 'bayes'" in proc.stderr
    assert not db.exists()
