"""Pool throughput and storage load. Prints figures, asserts nothing.

    python bench/bench_pool.py throughput [--trials 12] [--epochs 40]
    python bench/bench_pool.py load [--workers 32,64] [--seconds 20] [--via direct,proxy]

throughput  trials/minute of the Ray pool (`search.pool.run_pool`) with 1 and then 2 actors on the same
            campaign size, each actor one CPU and one torch thread; the ratio says how well two workers use
            this machine's two cores (ideal 2.0).
load        N concurrent light workers (processes) hammering one study on the local PostgreSQL, directly and
            through Optuna's gRPC storage proxy: each loops ask -> suggest one float -> tell with
            no training. Prints completions per second and the p50/p95 latency of one ask+tell. Target: 100
            completions/s, six-fold headroom for a 1,000-GPU pool with one-minute trials (about 17/s).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _scratch_db() -> tuple[str, str]:
    import psycopg

    name = f"dal_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG.replace("+psycopg", ""), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return name, PG.rsplit("/", 1)[0] + "/" + name


def _drop(name: str) -> None:
    import psycopg

    with psycopg.connect(PG.replace("+psycopg", ""), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def throughput(trials: int, epochs: int) -> None:
    import yaml

    from dal_search.search.campaign import create_studies, parse_campaign
    from dal_search.search.pool import run_pool
    from dal_search.storage import open_storage

    rates = {}
    for workers in (1, 2):
        name, url = _scratch_db()
        try:
            camp = parse_campaign({"name": f"tp{workers}", "datasets": ["digits"], "noise": {"symmetric": [0.4]},
                                   "arms": {"dal": "default"}, "budget": {"trials": trials},
                                   "train": {"epochs": epochs, "threads": 1}})
            create_studies(open_storage(url), camp)
            t = time.perf_counter()
            run_pool(url, camp.name, workers=workers, num_cpus=1, progress=False)
            dt = time.perf_counter() - t
        finally:
            _drop(name)
        rates[workers] = trials / dt * 60
        print(f"{workers} worker(s): {trials} trials of {epochs} epochs in {dt:.1f} s = {rates[workers]:.1f} trials/min")
    print(f"2 workers / 1 worker = {rates[2] / rates[1]:.2f} (ideal 2.0 on 2 cores; includes Ray start-up)")


def _light_worker(url: str, study: str, seconds: float, ready, go, out) -> None:
    import optuna

    from dal_search.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        storage = open_storage(url, heartbeat_interval=None)
        s = optuna.load_study(study_name=study, storage=storage, sampler=optuna.samplers.RandomSampler())
        s.get_trials(deepcopy=False)  # connect before the clock starts
    except Exception as e:  # noqa: BLE001 - e.g. the server's max_connections: report it, do not hang
        ready.put(f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}")
        return
    lat = []
    ready.put(None)
    go.wait()
    end = time.time() + seconds
    while time.time() < end:
        t = time.perf_counter()
        trial = s.ask()
        trial.suggest_float("x", 0, 1)
        s.tell(trial, 0.5)
        lat.append(time.perf_counter() - t)
    out.put(lat)


def load(counts: list[int], seconds: float, vias: list[str]) -> None:
    import optuna

    from dal_search.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    ctx = mp.get_context("spawn")
    for via in vias:
        for n in counts:
            name, url = _scratch_db()
            proxy_proc = None
            try:
                optuna.create_study(storage=open_storage(url, heartbeat_interval=None), study_name="load")
                client_url = url
                if via == "proxy":
                    with socket.socket() as sck:
                        sck.bind(("127.0.0.1", 0))
                        port = sck.getsockname()[1]
                    proxy_proc = subprocess.Popen([sys.executable, "-m", "dal_search", "storage-proxy", "--storage", url,
                                                   "--port", str(port)], stderr=subprocess.DEVNULL)
                    client_url = f"grpc://127.0.0.1:{port}"
                    for _ in range(100):
                        try:
                            open_storage(client_url)
                            break
                        except Exception:  # noqa: BLE001
                            time.sleep(0.2)
                q, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
                procs = [ctx.Process(target=_light_worker, args=(client_url, "load", seconds, ready, go, q))
                         for _ in range(n)]
                for p in procs:
                    p.start()
                errors = [e for e in (ready.get(timeout=600) for _ in procs) if e]
                go.set()  # every process has imported and connected (or failed to): start them together
                lats = []
                for _ in range(n - len(errors)):
                    lats.extend(q.get(timeout=seconds + 120))
                for p in procs:
                    p.join()
            finally:
                if proxy_proc:
                    proxy_proc.terminate()
                    proxy_proc.wait()
                _drop(name)
            if errors:
                print(f"{via:>6} {n:>3} workers: {len(errors)} could not connect ({errors[0]}); "
                      f"{len(lats) / seconds:.1f} completions/s from the rest")
                continue
            lats.sort()
            p50, p95 = lats[len(lats) // 2], lats[int(len(lats) * 0.95)]
            print(f"{via:>6} {n:>3} workers: {len(lats) / seconds:7.1f} completions/s, ask+tell p50 {p50 * 1e3:6.1f} ms, "
                  f"p95 {p95 * 1e3:6.1f} ms ({len(lats)} trials in {seconds:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--trials", type=int, default=12)
    t.add_argument("--epochs", type=int, default=40)
    lo = sub.add_parser("load")
    lo.add_argument("--workers", default="32,64")
    lo.add_argument("--seconds", type=float, default=20)
    lo.add_argument("--via", default="direct,proxy",
                    help="direct (each worker its own PostgreSQL connections), proxy (through `dal-search "
                         "storage-proxy`), or both")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    print(f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}")
    if args.what == "throughput":
        throughput(args.trials, args.epochs)
    else:
        load([int(x) for x in args.workers.split(",")], args.seconds, args.via.split(","))


if __name__ == "__main__":
    main()
