"""Running a campaign's trials on this machine: in this process, or as local worker processes.

Both `dal-search run` and the Python `run_campaign` come here. Workers pop trial slots until none is left
(search.worker); this module only starts them, shows progress and hands a Ctrl-C on to them.

- `run_here`: one worker in this process (a notebook's own registered losses and datasets are visible).
- `run_processes`: N `python -m dal_search worker` processes on a storage URL (a fresh interpreter each, so
  only what is importable by name exists there: built-ins, `py:module:...` data and models).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any


class WorkersFailed(RuntimeError):
    """Some worker processes exited with an error; their own messages went to stderr."""


def _bar(total: int, done: int, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="trials", unit="trial", file=sys.stderr, dynamic_ncols=True)
    bar.update(done)
    return bar


def run_here(storage: Any, campaign: str, names: list[str], *, threads: int | None = None, seed: int | None = None,
             progress: bool = True, fuse: int = 1) -> Any:
    """Run the campaign's remaining trials with one worker in this process; returns its WorkerStats. `fuse` K
    trains up to K trials of a study at once as one batched network (search/fusion.py)."""
    import torch

    from dal_search.search.campaign import progress as count
    from dal_search.search.worker import run_worker

    if threads:
        torch.set_num_threads(threads)
    counts = count(storage, names)
    bar = _bar(counts["budget"], counts["done"], progress)

    def on_trial(study_name, frozen):
        if bar is not None:
            bar.update(1)
            if frozen.value is not None:
                bar.set_postfix_str(f"{study_name} #{frozen.number}: {frozen.value:.4f}", refresh=False)

    try:
        return run_worker(storage, campaign, worker_seed=seed, on_trial=on_trial, fuse=fuse)
    finally:
        if bar is not None:
            bar.close()


def run_processes(url: str, storage: Any, campaign: str, names: list[str], workers: int, *, threads: int,
                  seed: int | None = None, progress: bool = True, fuse: int = 1) -> None:
    """Run the campaign's remaining trials with `workers` local worker processes on the storage `url`.

    Ctrl-C: a terminal's reaches the workers too (same process group) and each re-queues its trial; workers
    that did not get it are sent SIGINT. Raises WorkersFailed if any worker exits non-zero."""
    from dal_search.search.campaign import progress
    from dal_search.search.worker import retrying

    def count(storage, names):  # a database restart costs the progress bar a few retries, not the run
        return retrying(progress, storage, names)

    cmd = [sys.executable, "-m", "dal_search", "worker", "--storage", url, "--campaign", campaign,
           "--threads", str(threads), "--fuse", str(fuse), "--quiet"]
    procs = [subprocess.Popen(cmd + (["--seed", str(seed + i)] if seed is not None else []))
             for i in range(workers)]
    counts = count(storage, names)
    bar = _bar(counts["budget"], counts["done"], progress)
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            if bar is not None:
                counts = count(storage, names)
                bar.update(counts["done"] - bar.n)
                bar.set_postfix(running=counts["running"], failed=counts["failed"], refresh=False)
        if bar is not None:
            bar.update(count(storage, names)["done"] - bar.n)
    except KeyboardInterrupt:
        deadline = time.time() + 3
        while time.time() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.1)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait(timeout=120)
        raise
    finally:
        if bar is not None:
            bar.close()
    bad = [p.returncode for p in procs if p.returncode != 0]
    if bad:
        raise WorkersFailed(f"{len(bad)} worker(s) exited with status {bad}; see their messages above")


__all__ = ["run_here", "run_processes", "WorkersFailed"]
