"""The Ray pool: one actor per worker slot, each running the same worker loop against the shared storage.

Every actor asks Ray for `num_cpus` and `num_gpus` (a fraction such as 0.25 lets four small trials share a
GPU; 0 runs the same code path on CPU-only machines) and runs `search.worker.run_worker` with its own
sampler seed. Nothing is kept in Ray: the storage is the only state, so

- an actor whose process dies (OOM, SIGKILL, a lost node) is restarted by Ray and re-joins; the trial it
  held goes stale via its heartbeat and is re-queued for whichever worker is free;
- Ctrl-C of the driver asks every actor to stop: each re-queues its running trial, then the driver leaves;
- a database restart costs the actors a few failed connections, which the worker loop retries.

A pool without `--address` starts a private Ray cluster on this machine that listens on 127.0.0.1 only and
requires Ray's token auth (`RAY_AUTH_TOKEN` when set, else a fresh random token that only its own processes
know), whatever `RAY_AUTH_MODE` says: an open Ray cluster runs any code that anyone who reaches it submits.
With `--address` the pool joins that cluster as it is; the cluster must use token auth (compose does).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import threading
import time
from typing import Any, Iterator


def _actor_class():
    import ray

    @ray.remote(max_restarts=-1, max_task_retries=-1, max_concurrency=2)
    class PoolWorker:
        """Runs the worker loop; `stop()` runs on a second thread so it can interrupt `run()`."""

        def __init__(self) -> None:
            self._stop = threading.Event()

        def run(self, storage_url: str, campaign: str | None, seed: int, threads: int,
                heartbeat: tuple[int, int]) -> dict[str, Any]:
            import torch

            from dal_search.search.worker import retrying, run_worker
            from dal_search.storage import StorageError, open_storage

            torch.set_num_threads(max(1, threads))
            # The driver has opened this URL already: an error here is the database restarting under a
            # (re)started actor, so it is waited out like any other outage. The heartbeat settings are the
            # driver's: an actor on another node does not see the driver's environment.
            interval, grace = heartbeat
            storage = retrying(open_storage, storage_url, heartbeat_interval=interval, grace_period=grace,
                               retry_on=(StorageError,))
            stats = run_worker(storage, campaign, worker_seed=seed, should_stop=self._stop.is_set)
            return {"pid": os.getpid(), "complete": stats.complete, "pruned": stats.pruned,
                    "failed": stats.failed, "stopped": self._stop.is_set(),
                    "heartbeat": [storage.get_heartbeat_interval(), grace]}

        def stop(self) -> None:
            self._stop.set()

        def pid(self) -> int:
            return os.getpid()

    return PoolWorker


def run_pool(storage_url: str, campaign: str | None, *, workers: int = 2, num_gpus: float = 0.0,
             num_cpus: float = 1.0, address: str | None = None, seed: int = 0,
             progress: bool = True, poll: float = 1.0) -> list[dict[str, Any]]:
    """Run the campaign's remaining trials on `workers` Ray actors; returns each actor's counts."""
    import ray

    from dal_search.search.campaign import campaign_study_names
    from dal_search.search.campaign import progress as count
    from dal_search.storage import open_storage
    from dal_search.storage._url import heartbeat_settings

    heartbeat = heartbeat_settings()  # DAL_SEARCH_HEARTBEAT / _GRACE, handed to every actor
    storage = open_storage(storage_url, heartbeat_interval=heartbeat[0], grace_period=heartbeat[1])
    names = campaign_study_names(storage, campaign)
    cluster = contextlib.ExitStack()
    cluster.enter_context(ray_cluster(address))
    bar = None
    try:
        Worker = _actor_class().options(num_cpus=num_cpus, num_gpus=num_gpus)
        actors = [Worker.remote() for _ in range(workers)]
        runs = [a.run.remote(storage_url, campaign, seed + i, int(max(1, num_cpus)), heartbeat)
                for i, a in enumerate(actors)]
        if progress:
            from tqdm import tqdm

            c = count(storage, names)
            bar = tqdm(total=c["budget"], initial=c["done"], desc="trials", unit="trial", file=sys.stderr,
                       dynamic_ncols=True)
        pending = list(runs)
        try:
            while pending:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=poll)
                if bar is not None:
                    c = count(storage, names)
                    bar.update(c["done"] - bar.n)
                    bar.set_postfix(running=c["running"], failed=c["failed"], refresh=False)
        except KeyboardInterrupt:
            for a in actors:
                a.stop.remote()
            ray.wait(runs, num_returns=len(runs), timeout=120)
            raise
        return ray.get(runs)
    finally:
        if bar is not None:
            bar.close()
        cluster.close()


@contextlib.contextmanager
def ray_cluster(address: str | None, env_vars: dict[str, str] | None = None,
                num_cpus: float | None = None) -> Iterator[None]:
    """Ray for one command (the pool, `dal-search tune`), shut down when the block ends: without `address` a
    private cluster on 127.0.0.1 with token auth (see the module docstring), never one found through
    RAY_ADDRESS or a `ray start` file; with `address` ("HOST:PORT" or "auto") that cluster, joined as it is.
    A Ray this process started already is used as it is and left running. `env_vars` reach every Ray worker
    process, beside a PYTHONPATH that holds this code. `num_cpus` caps a private cluster's CPUs (default: the
    machine's)."""
    import ray

    if ray.is_initialized():
        yield
        return
    with contextlib.ExitStack() as secured:
        if address is None:
            secured.enter_context(_private_cluster_env())
        try:
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=True,
                     **({"num_cpus": num_cpus} if num_cpus is not None and address is None else {}),
                     runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [
                         _project_root(), os.environ.get("PYTHONPATH")])), **(env_vars or {})}})
            if address is None:
                _check_loopback(ray.get_runtime_context().gcs_address)
            yield
        finally:
            if ray.is_initialized():
                ray.shutdown()


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@contextlib.contextmanager
def _private_cluster_env():
    """The environment under which this process starts its own Ray: token auth with RAY_AUTH_TOKEN or a fresh
    256-bit token, and every Ray process of the cluster on 127.0.0.1. Restored afterwards.

    Ray (2.60) binds its gRPC servers (GCS, raylet, object manager, workers) to every interface unless the
    node IP is loopback, and then binds them and its agents to 127.0.0.1; it takes 127.0.0.1 as the node IP
    only when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (a `_node_ip_address` of 127.0.0.1 is replaced by the
    machine's routable address). The variables reach the GCS, raylet and workers because they inherit this
    process's environment; Ray's cached copies in this process are refreshed in case `ray` was imported before.
    """
    import ray._private.ray_constants as ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    wanted = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32),
              "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    before = {k: os.environ.get(k) for k in wanted}
    cluster_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(wanted)
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import from the variable above
    Config.initialize("")  # Ray's C++ config caches RAY_AUTH_MODE
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        ray_constants.ENABLE_RAY_CLUSTER = cluster_flag
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def _check_loopback(gcs_address: str) -> None:
    """Refuse to run on a cluster this process started if Ray advertised it beyond this machine after all."""
    host = gcs_address.rsplit(":", 1)[0].strip("[]")
    if host not in LOOPBACK:
        raise RuntimeError(f"the local Ray cluster came up on {gcs_address}, not 127.0.0.1: this Ray version "
                           f"ignores RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; refusing to run on an exposed cluster")


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cmd_pool(args) -> int:
    from dal_search.search._cli_common import ray_campaign

    url, campaign = ray_campaign(args)
    t0 = time.perf_counter()
    results = run_pool(url, campaign, workers=args.workers, num_gpus=args.num_gpus, num_cpus=args.num_cpus,
                       address=args.address, seed=args.seed, progress=not args.quiet)
    done = sum(r["complete"] + r["pruned"] + r["failed"] for r in results)
    beats = sorted({tuple(r["heartbeat"]) for r in results})  # what the actors ran with: one setting, normally
    print(f"pool done: {done} trials by {len(results)} workers in {time.perf_counter() - t0:.1f} s "
          f"(heartbeat {', '.join(f'{i} s, grace {g} s' for i, g in beats)})", file=sys.stderr)
    return 0


def register(sub) -> None:
    from dal_search.search._cli_common import storage_arg as _storage_arg

    p = sub.add_parser("pool", help="run a campaign's trials on a Ray cluster (one actor per worker slot)",
                       description="Run the trials of a campaign on Ray actors that each request --num-gpus "
                                   "(fractions share a GPU) and --num-cpus. Give a campaign file to create its "
                                   "studies first, or --campaign NAME to join studies already in the storage.")
    p.add_argument("campaign_file", nargs="?", metavar="CAMPAIGN.yaml", help="campaign file or built-in name")
    _storage_arg(p)
    p.add_argument("--campaign", default=None, help="name of a campaign already in the storage")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: HOST:PORT of a running head, or 'auto' ($RAY_ADDRESS, or the cluster "
                        "'ray start' made here); it must use token auth. Default: start a private cluster on "
                        "127.0.0.1 with a fresh token")
    p.add_argument("--workers", type=int, default=2, help="actors (worker slots), default 2")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor; 0.25 = four actors per GPU")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor (also its torch threads)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed of the first actor (others +1, +2...)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_pool)
