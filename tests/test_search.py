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
        assert len(t.system_attrs["dal:curves"]["q"]) == 3  # the curves, out of the printed user attrs
        assert "history" not in t.user_attrs
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
                         arms={"ce": {"lr": {"low": 1e6, "high": 2e6}}, "gce": {"q": 0.7}})
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
    (["train", "--noise", "pairflip"], "unknown noise kind 'pairflip'"),
    (["train", "--dataset", "cifar10", "--data-dir", "/nonexistent/data"], "/nonexistent/data/cifar-10-batches-py"),
    (["train", "--noise", "file", "--noise-file", "SHORT.npy"], "labels but the training set has"),
    (["train", "--config", "/nonexistent/best.yaml"], "not found"),
    (["export", "--storage", "STORE", "--study", "nope", "--out", "x.yaml"], "no study 'nope'"),
    (["export", "--storage", "MISSING.db", "--study", "nope", "--out", "x.yaml"], "no SQLite storage at"),
    (["worker", "--storage", "STORE", "--campaign", "ghost"], "no studies of campaign 'ghost'"),
])
def test_bad_input_is_one_line_and_a_nonzero_exit(args, fragment, campaign_file, tmp_path):
    import numpy as np

    np.save(tmp_path / "short.npy", np.zeros(10, dtype=np.int64))
    subs = {"CAMPAIGN": lambda: campaign_file(name="bad"), "SHORT.npy": lambda: str(tmp_path / "short.npy"),
            "STORE": lambda: _empty_storage(tmp_path), "MISSING.db": lambda: str(tmp_path / "missing.db")}
    args = [subs[a]() if a in subs else a for a in args]
    proc = cli(*args, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dal-search: error:"), proc.stderr
    assert fragment in lines[0]


def _empty_storage(tmp_path: Path) -> str:
    from dal_search.storage import open_storage

    url = f"sqlite:///{tmp_path}/empty.db"
    open_storage(url, heartbeat_interval=None)  # exists, holds no study (readers refuse a missing file)
    return url


def test_malformed_campaign_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**tiny_campaign("bad"), "sampler": "bayes"}))
    db = tmp_path / "never.db"
    proc = cli("run", str(bad), "--storage", f"sqlite:///{db}", check=False)
    assert proc.returncode == 2 and "unknown sampler 'bayes'" in proc.stderr
    assert not db.exists()


# ---------------------------------------------------------------- liveness: no trial stuck, no slot lost

@pytest.mark.parametrize("backend", ["sqlite", "journal"])
def test_worker_killed_between_claim_and_first_heartbeat_loses_nothing(backend, tmp_path):
    """Fault injection: a `dal-search worker` SIGKILLs itself right after claiming a slot, before its first
    beat. The trial still goes stale (counted from its start) and the campaign ends at its exact budget."""
    from dal_search.search.campaign import create_studies, parse_campaign
    from dal_search.search.worker import run_worker
    from dal_search.storage import open_storage

    url = f"sqlite:///{tmp_path}/k.db" if backend == "sqlite" else f"journal:{tmp_path}/k.log"
    storage = open_storage(url, heartbeat_interval=1, grace_period=2)
    (name,) = create_studies(storage, parse_campaign(tiny_campaign("claim", trials=3, epochs=2)))
    victim = cli("worker", "--storage", url, "--campaign", "claim", "--quiet", check=False,
                 env={"DAL_SEARCH_HEARTBEAT": "1", "DAL_SEARCH_GRACE": "2", "DAL_SEARCH_TEST_FAULT": "kill-after-claim"})
    assert victim.returncode == -signal.SIGKILL
    (claimed,) = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
    assert "worker" not in claimed.user_attrs  # it died before doing anything with the trial
    from tests.test_worker import fake_train

    deadline = time.monotonic() + 60  # a trial that cannot go stale would keep the worker waiting for ever
    stats = run_worker(storage, "claim", worker_seed=0, train_fn=fake_train,
                       should_stop=lambda: time.monotonic() > deadline)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert stats.complete == 3 and sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert {t.number: t for t in trials}[claimed.number].state == TrialState.FAIL
    assert [t.state for t in trials if t.system_attrs.get("failed_trial") == claimed.number] == [TrialState.COMPLETE]
    assert len([t for t in trials if "failed_trial" not in t.system_attrs]) == 3


@pytest.mark.skipif(__import__("tests.pgserver", fromlist=["available"]).available() is not None,
                    reason="cannot start a private PostgreSQL here")
def test_worker_out_of_storage_patience_exits_with_one_line_and_its_trial_is_requeued():
    from dal_search.search.campaign import create_studies, parse_campaign
    from dal_search.search.worker import run_worker
    from dal_search.storage import open_storage
    from tests.pgserver import private_postgres
    from tests.test_worker import fake_train

    env = {"DAL_SEARCH_HEARTBEAT": "1", "DAL_SEARCH_GRACE": "2", "DAL_SEARCH_STORAGE_PATIENCE": "2"}
    with private_postgres() as server:
        create_studies(open_storage(server.url), parse_campaign(tiny_campaign("patience", trials=2, epochs=15)))
        worker = spawn("worker", "--storage", server.url, "--campaign", "patience", "--quiet", "--threads", "1",
                       env=env)
        try:
            running = _wait_for_running(server.url, "patience")
            server.stop()  # for longer than the worker's patience
            assert worker.wait(timeout=120) == 75
            err = worker.stderr.read()
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
        assert "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("dal-search: error: the storage stayed unreachable for 2 s") and "re-queued" in last
        server.start()
        storage = open_storage(server.url, heartbeat_interval=1, grace_period=2)
        assert run_worker(storage, "patience", worker_seed=0, train_fn=fake_train).complete == 2
        (trials,) = trials_of(server.url, "patience").values()
        abandoned = next(t for t in trials if t.number == running.number)
        assert abandoned.state == TrialState.FAIL and abandoned.user_attrs["fail_reason"].startswith("stale")
        assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
        assert len([t for t in trials if "failed_trial" not in t.system_attrs]) == 2


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing touched

def _main(capsys, *argv: str) -> tuple[int, str]:
    """The CLI's main() in this process: the real code path, without a Python start-up per case. Commands that
    serve until stopped run as a process with a timeout instead, so a regression fails rather than hangs."""
    if argv[0] in ("dashboard", "storage-proxy"):
        proc = cli(*argv, check=False, timeout=60)
        return proc.returncode, proc.stderr
    from dal_search.search.cli import main

    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dal-search: error:"), err
    return lines[0]


def _bad_campaigns(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = tiny_campaign("bad")
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "huge.yaml").write_text(yaml.safe_dump({**good, "description": "x" * 1_100_000}))
    # a "billion laughs": 10 strings, each level 10 aliases of the one before, 10**9 strings in all
    levels = ["&l0 [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (tmp_path / "laughs.yaml").write_text(yaml.safe_dump(good)
                                          + "description: [" + ", ".join(levels) + "]\n")
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(good) + "description: &d [*d]\n")
    (tmp_path / "trials.yaml").write_text(yaml.safe_dump({**good, "budget": {"trials": 1_000_000_000}}))
    (tmp_path / "seeds.yaml").write_text(yaml.safe_dump({**good, "budget": {"trials": 2, "seeds": 10**9}}))
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({**good, "sampler": "grid", "arms": {"dal": {
        "q_start": {"low": 0.1, "high": 1.0, "step": 1e-9}, "q_end": 1.5}}}))
    return {"folder": (tmp_path / "folder.yaml", "is a folder"),
            "binary": (tmp_path / "binary.yaml", "is not a text (UTF-8) file"),
            "huge": (tmp_path / "huge.yaml", "is over 1 MB"),
            "laughs": (tmp_path / "laughs.yaml", "expands to more than 100,000 values through its YAML aliases"),
            "loop": (tmp_path / "loop.yaml", "refers to itself through a YAML alias"),
            "trials": (tmp_path / "trials.yaml", "budget.trials is 1,000,000,000; at most 100,000 trials per study"),
            "seeds": (tmp_path / "seeds.yaml", "budget.seeds as a count must be 1 to 1,000"),
            "grid": (tmp_path / "grid.yaml", "the grid has more than 100,000 points")}


@pytest.mark.parametrize("case", ["folder", "binary", "huge", "laughs", "loop", "trials", "seeds", "grid"])
def test_a_bad_campaign_file_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    path, fragment = _bad_campaigns(tmp_path)[case]
    db = tmp_path / "never.db"
    code, err = _main(capsys, "run", str(path), "--storage", f"sqlite:///{db}")
    assert code == 2 and fragment in _one_line(err)
    assert not db.exists()


@pytest.mark.parametrize("command", [["worker", "--campaign", "x"], ["run", "CAMPAIGN", "--create-only"],
                                     ["pool", "--campaign", "x"]])
@pytest.mark.parametrize("var, value", [("DAL_SEARCH_HEARTBEAT", "soon"), ("DAL_SEARCH_GRACE", "-3")])
def test_a_bad_heartbeat_setting_is_one_line(command, var, value, tmp_path, capsys, monkeypatch, campaign_file):
    monkeypatch.setenv(var, value)
    argv = [campaign_file(name="hb") if a == "CAMPAIGN" else a for a in command]
    code, err = _main(capsys, *argv, "--storage", f"sqlite:///{tmp_path}/s.db")
    line = _one_line(err)
    assert code == 2 and f"{var}={value!r} is not a positive number of seconds" in line


@pytest.mark.parametrize("command", [["studies"], ["export", "--study", "s", "--out", "OUT.yaml"],
                                     ["report", "--out", "OUT.html"], ["dashboard"]])
@pytest.mark.parametrize("typo", ["TMP/runs/dal-serch.db", "journal:TMP/runs/dal-serch.log"])
def test_readers_refuse_a_missing_storage_and_create_nothing(command, typo, tmp_path, capsys):
    argv = [str(tmp_path / a) if a.startswith("OUT") else a for a in command]
    code, err = _main(capsys, *argv, "--storage", typo.replace("TMP", str(tmp_path)))
    line = _one_line(err)
    assert code == 2 and "runs/dal-serch" in line and "check the path" in line
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("OUT*"))


@pytest.mark.parametrize("command", [["dashboard", "--port", "99999"], ["storage-proxy", "--port", "0"]])
def test_a_port_out_of_range_is_one_line(command, tmp_path, capsys):
    code, err = _main(capsys, *command, "--storage", f"sqlite:///{tmp_path}/s.db")
    assert code == 2 and "is not a TCP port; use a number from 1 to 65535" in _one_line(err)


# ---------------------------------------------------------------- outputs into a folder this user cannot write

NOBODY = 65534


def _as_nobody(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI as a real non-root user (uid 65534): the tests run as root, who writes anywhere."""
    env = {k: v for k, v in os.environ.items() if k != "DAL_SEARCH_STORAGE"}
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable,
                           "-m", "dal_search", *args], cwd=cwd, env={**env, "HOME": str(cwd)}, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def readonly_dir():
    """(a folder `nobody` may write, a root-owned folder `nobody` may only read) under /tmp."""
    import shutil
    import tempfile

    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the CLI as a non-root user")
    top = Path(tempfile.mkdtemp(prefix="dal-ro-", dir="/tmp"))
    top.chmod(0o755)
    mine, theirs = top / "mine", top / "theirs"
    mine.mkdir()
    theirs.mkdir(mode=0o755)
    os.chown(mine, NOBODY, NOBODY)
    yield mine, theirs
    shutil.rmtree(top, ignore_errors=True)


def test_train_json_into_a_read_only_folder_fails_before_training(readonly_dir, tmp_path, capsys):
    mine, theirs = readonly_dir
    out = theirs / "result.json"
    r = _as_nobody(mine, "train", "--epochs", "1", "--json", str(out))
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert f"cannot write --json output {out}: Permission denied" in _one_line(r.stderr)
    assert list(theirs.iterdir()) == []
    # checked before the data is even loaded (a missing dataset folder would otherwise be the error); as
    # root, a path under a regular file is one that cannot be written
    (tmp_path / "file").write_text("")
    code, err = _main(capsys, "train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nothing"),
                      "--json", str(tmp_path / "file" / "result.json"))
    assert code == 2 and "cannot write --json output" in _one_line(err)


def test_report_into_a_read_only_folder_fails_before_drawing(readonly_dir, tmp_path, capsys):
    from dal_search.storage import open_storage
    from tests.test_export import _study

    mine, theirs = readonly_dir
    _study(open_storage(f"sqlite:///{mine}/r.db", heartbeat_interval=None), values=(0.5, 0.8, 0.7))
    for p in mine.iterdir():
        os.chown(p, NOBODY, NOBODY)
    r = _as_nobody(mine, "report", "--storage", "r.db", "--campaign", "c", "--out", str(theirs / "r.html"),
                   "--no-dashboard")
    assert r.returncode == 2, r.stderr
    assert f"cannot write report file {theirs / 'r.html'}: Permission denied" in _one_line(r.stderr)
    assert list(theirs.iterdir()) == []
    (tmp_path / "file").write_text("")
    code, err = _main(capsys, "report", "--storage", f"{mine}/r.db", "--campaign", "c", "--out",
                      str(tmp_path / "r.html"), "--png-dir", str(tmp_path / "file" / "png"), "--no-dashboard")
    assert code == 2 and "cannot write --png-dir" in _one_line(err) and not (tmp_path / "r.html").exists()
