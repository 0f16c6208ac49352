"""The Ray pool on a local Ray cluster with the real PostgreSQL: exact budgets, a SIGKILLed actor process,
Ctrl-C of the driver. (Each test's driver starts and shuts down its own Ray.)"""

from __future__ import annotations

import os
import signal
import time

import pytest
from optuna.trial import TrialState

from tests.test_search import _wait_for_running, cli, spawn, trials_of

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
ENV = {"RAY_AUTH_MODE": "disabled", "DAL_SEARCH_HEARTBEAT": "1", "DAL_SEARCH_GRACE": "4"}


def test_two_actor_pool_finishes_the_budget_exactly(pg_url, campaign_file):
    path = campaign_file(name="pool2", trials=6, epochs=3)
    proc = cli("pool", path, "--storage", pg_url, "--workers", "2", "--num-cpus", "1", "--quiet", env=ENV)
    assert "pool done: 6 trials by 2 workers" in proc.stderr
    assert "(heartbeat 1 s, grace 4 s)" in proc.stderr  # the actors run with the pool's DAL_SEARCH_* settings
    (trials,) = trials_of(pg_url, "pool2").values()
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both actors took trials


def test_sigkill_of_an_actor_process_mid_trial(pg_url, campaign_file):
    path = campaign_file(name="poolkill", trials=4, epochs=20)
    driver = spawn("pool", path, "--storage", pg_url, "--workers", "2", "--quiet", env=ENV)
    try:
        running = _wait_for_running(pg_url, "poolkill")
        deadline = time.time() + 30
        while "worker" not in running.user_attrs and time.time() < deadline:
            time.sleep(0.2)
            running = next(t for t in next(iter(trials_of(pg_url, "poolkill").values())) if t.number == running.number)
        pid = int(running.user_attrs["worker"].rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        assert driver.wait(timeout=300) == 0, driver.stderr.read()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    (trials,) = trials_of(pg_url, "poolkill").values()
    killed = next(t for t in trials if t.number == running.number)
    assert killed.state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == killed.params
    # re-queued after the pool's grace period (4 s), not Optuna's default (120 s): the actors use DAL_SEARCH_GRACE
    assert retry[0].datetime_start.timestamp() - killed_at < 60
    completes = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(completes) == 4 and len({t.number for t in completes}) == 4


def test_ctrl_c_of_the_driver_requeues_running_trials(pg_url, campaign_file):
    path = campaign_file(name="poolint", trials=4, epochs=80)
    driver = spawn("pool", path, "--storage", pg_url, "--workers", "2", "--quiet", env=ENV)
    _wait_for_running(pg_url, "poolint")
    time.sleep(1.0)
    driver.send_signal(signal.SIGINT)  # the driver only: it must stop the actors itself
    assert driver.wait(timeout=180) == 130, driver.stderr.read()[-3000:]
    (trials,) = trials_of(pg_url, "poolint").values()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    slots = [t for t in trials if "failed_trial" not in t.system_attrs]
    assert len(slots) == 4
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert waiting  # the interrupted work is queued again
    cli("pool", "--campaign", "poolint", "--storage", pg_url, "--workers", "2", "--quiet", env=ENV)
    (trials,) = trials_of(pg_url, "poolint").values()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4


@pytest.mark.skipif(__import__("tests.pgserver", fromlist=["available"]).available() is not None,
                    reason="cannot start a private PostgreSQL here")
def test_database_restart_mid_campaign_workers_reconnect_and_finish(campaign_file):
    from tests.pgserver import private_postgres

    with private_postgres() as server:
        path = campaign_file(name="pgrestart", trials=4, epochs=40)
        env = {**ENV, "DAL_SEARCH_GRACE": "20"}  # the outage is shorter than the grace: no trial goes stale
        driver = spawn("pool", path, "--storage", server.url, "--workers", "2", "--quiet", env=env)
        try:
            _wait_for_running(server.url, "pgrestart")
            server.restart(downtime=3.0)  # every connection in every worker is cut
            assert driver.wait(timeout=300) == 0, driver.stderr.read()[-3000:]
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
        (trials,) = trials_of(server.url, "pgrestart").values()
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
        assert len([t for t in trials if "failed_trial" not in t.system_attrs]) == 4
