"""The campaign commands of `dal-search`: run, worker, pool, tune, studies, export, report, dashboard, storage-proxy."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dal_search.search._cli_common import UserError, check_writable, check_writable_dir
from dal_search.search._cli_common import default_storage as _default_storage
from dal_search.search._cli_common import open_from_args as _open
from dal_search.search._cli_common import storage_arg as _storage_arg


# ------------------------------------------------------------------ run

def cmd_run(args: argparse.Namespace) -> int:
    from dal_search.search.campaign import create_studies, load_campaign

    camp = load_campaign(args.campaign)  # every error in the file surfaces before the storage is touched
    if args.workers < 1:
        raise UserError("--workers must be >= 1")
    _check_fuse(args)
    storage = _open(args)
    names = create_studies(storage, camp)
    url = args.storage or _default_storage()
    if args.create_only:
        print(f"campaign {camp.name}: {len(names)} studies ready; join with: dal-search worker --storage URL "
              f"--campaign {camp.name}", file=sys.stderr)
        return 0
    total = sum(camp.budget(c.arm) for c in camp.conditions())
    print(f"campaign {camp.name}: {len(names)} studies, {total} trials "
          f"x {len(camp.seeds)} seed(s), {args.workers} worker(s) on {_describe(url)}", file=sys.stderr)
    from dal_search.search.runner import WorkersFailed, run_here, run_processes

    threads = args.threads or _threads_for(args.workers)
    if args.workers == 1:
        run_here(storage, camp.name, names, threads=threads, seed=args.seed, fuse=args.fuse)
    else:
        try:
            run_processes(url, storage, camp.name, names, args.workers, threads=threads, seed=args.seed,
                          fuse=args.fuse)
        except WorkersFailed as e:
            raise UserError(str(e)) from None
    _print_table(storage, camp.name)
    return 0


def _threads_for(workers: int) -> int:
    from dal_search.search.worker import default_threads

    return default_threads(workers)


def _describe(url: str) -> str:
    try:
        from dal_search.storage import describe_storage

        return describe_storage(url)
    except ImportError:
        return url


# ------------------------------------------------------------------ worker

def cmd_worker(args: argparse.Namespace) -> int:
    import torch

    from dal_search.search.worker import default_threads, run_worker

    _check_fuse(args)
    storage = _open(args)
    torch.set_num_threads(args.threads or default_threads(1))
    bar = None

    def on_trial(study_name, frozen):
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=args.max_trials or 0, desc="trials", unit="trial", file=sys.stderr, dynamic_ncols=True)
        bar.update(1)
        bar.set_postfix_str(f"{study_name} #{frozen.number} {frozen.state.name}", refresh=False)

    try:
        stats = run_worker(storage, args.campaign, max_trials=args.max_trials, worker_seed=args.seed,
                           on_trial=on_trial, fuse=args.fuse)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        print(f"worker done: {stats.complete} complete, {stats.pruned} pruned, {stats.failed} failed",
              file=sys.stderr)
    return 0


def _fuse_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fuse", type=int, default=1, metavar="K",
                   help="train up to K trials of one study at once as one batched network (horizontal fusion; "
                        "trials whose configs differ beyond the loss's and the optimiser's knobs train one at a "
                        "time); default 1")


def _check_fuse(args: argparse.Namespace) -> None:
    if not 1 <= args.fuse <= 64:
        raise UserError(f"--fuse {args.fuse} is not a number of trials to fuse; use 1 (no fusion) to 64")


# ------------------------------------------------------------------ studies / export / report / dashboard / proxy

def _print_table(storage, campaign: str | None, as_json: bool = False) -> None:
    from dal_search.storage.export import study_summaries

    rows = study_summaries(storage)
    if campaign:
        rows = [r for r in rows if r.get("campaign") == campaign]
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        print("no dal-search studies in this storage")
        return
    cols = ("name", "complete", "running", "pruned", "failed", "waiting", "best_value", "best_trial")
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def cmd_studies(args: argparse.Namespace) -> int:
    _print_table(_open(args), args.campaign, as_json=args.json)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dal_search.storage.export import export_best

    if not args.study and not args.campaign:
        raise UserError("export needs --study NAME or --campaign NAME ('dal-search studies' lists them)")
    docs = export_best(_open(args), [args.study] if args.study else None, args.campaign, args.out)
    print(f"wrote {len(docs)} best config(s) to {args.out}; re-run one with: dal-search train --config {args.out}"
          + ("#STUDY" if len(docs) > 1 else ""), file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dal_search.search.analysis import NotEnoughTrials
    from dal_search.search.report import figures, push_to_dashboard, write_report

    check_writable(args.out, "report file")  # before drawing, not after it
    if args.png_dir:
        check_writable_dir(args.png_dir, "--png-dir")
        from dal_search.search.report import NoRenderer, png_renderer

        try:  # before any drawing: a missing renderer is the user's to fix, not a silent "no PNGs"
            png_renderer()
        except NoRenderer as e:
            raise UserError(str(e)) from None
    storage = _open(args)
    try:
        figs = figures(storage, args.campaign)
    except NotEnoughTrials as e:  # no study of that campaign: nothing to draw
        raise UserError(f"{e} (see 'dal-search studies' for what the storage holds)") from None
    path = write_report(storage, args.campaign, args.out, png_dir=args.png_dir, figs=figs)
    drawn = sum(not isinstance(f, str) for _, f in figs)
    if not args.no_dashboard:
        push_to_dashboard(storage, args.campaign, figs=figs)
    print(f"report written to {path} ({drawn} of {len(figs)} figures drawn; the rest say why not)", file=sys.stderr)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dal_search.search.dashboard import announce_line, make_dashboard_server, public_url, resolve_token

    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a TCP port; use a number from 1 to 65535 (e.g. 8080)")
    url = args.storage or _default_storage()
    _open(args)  # a bad URL fails here with one line, before the server starts
    token, generated = resolve_token(args.token)
    try:
        server = make_dashboard_server(url, args.host, args.port, token, allow_writes=args.allow_writes)
    except OSError as e:
        raise UserError(f"cannot serve the dashboard on {args.host}:{args.port} ({e.strerror or e}); choose another "
                        f"--port, or a --host this machine has") from None
    print(announce_line(public_url(args.host, server.server_address[1]), token, generated, args.allow_writes),
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def cmd_storage_proxy(args: argparse.Namespace) -> int:
    from dal_search.storage import run_storage_proxy

    url = args.storage or _default_storage()
    print(f"Optuna gRPC storage proxy for {_describe(url)} on {args.host}:{args.port}", file=sys.stderr)
    run_storage_proxy(url, host=args.host, port=args.port)
    return 0


def register(sub) -> None:
    p = sub.add_parser("run", help="create a campaign's studies and run them with local worker processes",
                       description="Create one Optuna study per condition of CAMPAIGN (datasets x noise kinds x "
                                   "rates x arms), lay down its trial budget, and run it with --workers local "
                                   "processes. Re-running resumes: finished trials are kept, the rest run.")
    p.add_argument("campaign", metavar="CAMPAIGN.yaml", help="campaign file, or a built-in campaign name (quick, paper, ...)")
    _storage_arg(p)
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / workers)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed of the first worker (others: +1, +2...)")
    _fuse_arg(p)
    p.add_argument("--create-only", action="store_true", help="create the studies and their budget, run nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("worker", help="join a campaign in a storage and run its trials until none are left",
                       description="Join the campaign's studies in --storage (from any shell or machine) and run "
                                   "trial slots until none is waiting or running.")
    _storage_arg(p)
    p.add_argument("--campaign", default=None, help="campaign name (default: every dal-search study)")
    p.add_argument("--max-trials", type=int, default=None, help="stop after this many trials")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (default: random, distinct per worker)")
    _fuse_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("studies", help="table of studies: trials done/running/failed, best value",
                       description="One row per dal-search study in --storage: its trials by state (complete, "
                                   "running, pruned, failed, waiting), the best value (the campaign's selection "
                                   "metric, the noisy validation accuracy by default) and the trial that has it. "
                                   "Reads only: a storage that does not exist is an error, never created.")
    _storage_arg(p)
    p.add_argument("--campaign", default=None, metavar="NAME", help="only this campaign's studies (default: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output: every column, one object per study")
    p.set_defaults(func=cmd_studies)

    p = sub.add_parser("export", help="write the best trial(s) as YAML/JSON configs with provenance",
                       description="Export the best trial of --study, or of every study of --campaign, as a file "
                                   "that 'dal-search train --config FILE' re-runs exactly.")
    _storage_arg(p)
    p.add_argument("--study", default=None, metavar="NAME",
                   help="one study, e.g. quick/dal/digits/symmetric-0.4 ('dal-search studies' lists them)")
    p.add_argument("--campaign", default=None, metavar="NAME", help="every study of this campaign, one document each")
    p.add_argument("--out", "-o", required=True, help="output file (.yaml, .yml or .json)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="standalone HTML report (+PNGs) of a campaign; also pushed to the dashboard",
                       description="Draw a campaign's figures (DAL vs the baselines, q_s x q_e surfaces, schedule "
                                   "shapes, importances, the best trial's curves) and its findings, each "
                                   "comparison with n seeds, a 95 % interval and a verdict, into one HTML file "
                                   "that opens with no network; optionally PNGs (kaleido, or Debian's chromium "
                                   "driven by playwright); and save them into the studies so optuna-dashboard "
                                   "shows them. A figure the trials cannot support says why instead.")
    _storage_arg(p)
    p.add_argument("--campaign", default=None, metavar="NAME", help="the campaign to report on (default: all studies)")
    p.add_argument("--out", "-o", default="runs/report.html", help="the HTML file (default: runs/report.html)")
    p.add_argument("--png-dir", default=None, metavar="DIR",
                   help="also write each figure as a PNG here (needs kaleido, or playwright and Debian's chromium)")
    p.add_argument("--no-dashboard", action="store_true", help="do not save the figures into the studies")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("dashboard", help="serve optuna-dashboard for a storage (127.0.0.1 by default), behind a token",
                       description="Serve optuna-dashboard for --storage. Every request needs the token: "
                                   "'Authorization: Bearer TOKEN', HTTP Basic with any user name and the token as "
                                   "the password, or /?token=TOKEN opened once (a cookie keeps the browser in). "
                                   "Read-only unless --allow-writes: any request but GET/HEAD is refused (403).")
    _storage_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8080, help="TCP port, 1..65535 (default: 8080)")
    p.add_argument("--token", default=None,
                   help="the token clients must send (default: $DAL_SEARCH_DASHBOARD_TOKEN, else a fresh one printed "
                        "in the start-up URL); prefer the variable, a command line is visible to 'ps'")
    p.add_argument("--allow-writes", action="store_true",
                   help="let clients with the token write: notes, renaming, deleting studies (default: read-only)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("storage-proxy", help="serve a storage over Optuna's gRPC proxy (grpc://HOST:PORT) for large pools",
                       description="Serve --storage over Optuna's gRPC storage proxy, so that many workers share one "
                                   "small database connection pool: point them at --storage grpc://HOST:PORT. The "
                                   "proxy has no authentication: keep it on 127.0.0.1 or a private network (see "
                                   "the README's Security section).")
    _storage_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=13000, help="TCP port, 1..65535 (default: 13000)")
    p.set_defaults(func=cmd_storage_proxy)


def _register_pool(sub) -> None:
    from dal_search.search.pool import register as register_pool

    register_pool(sub)


def _register_tune(sub) -> None:
    from dal_search.search.tune import register as register_tune

    register_tune(sub)


REGISTER = [register, _register_pool, _register_tune]
