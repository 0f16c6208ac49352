"""`dal-search`: train one config, run campaigns of Optuna studies, join them as a worker or a Ray pool,
inspect, export, report and browse them.

Every user mistake (a bad config, storage URL, data folder or flag) ends as ONE line on stderr naming the
fix, and exit status 2; nothing already stored is touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from dal_search.search._cli_common import UserError, check_port, check_writable


def _user_errors() -> tuple[type[BaseException], ...]:
    """Every exception type that means 'the input is wrong', from all three rooms."""
    from dal_search.objectives.config import ConfigError

    kinds: list[type[BaseException]] = [UserError, ConfigError]
    for module, name in (("dal_search.objectives.data", "DataError"), ("dal_search.objectives.noise", "NoiseError"),
                         ("dal_search.storage", "StorageError"), ("dal_search.search.campaign", "CampaignError"),
                         ("dal_search.search.analysis", "NotEnoughTrials")):
        try:
            kinds.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(kinds)


# ---------------------------------------------------------------- train

# Help of the flags whose values are not registry names (those list their registry: see _flag_help).
_FLAG_HELP = {
    "data_dir": "folder holding the torchvision datasets",
    "download": "let torchvision download the dataset into --data-dir",
    "val_fraction": "share of the (noisy) training pool held out as the noisy validation split",
    "noise_rate": "nominal noise rate r in [0, 1)",
    "noise_file": "labels for --noise file: a .npy, or a CIFAR-N .pt as PATH.pt:KEY (e.g. :worse_label)",
    "q": "GCE's q",
    "alpha": "SCE / NCE+RCE alpha",
    "beta": "SCE / NCE+RCE beta",
    "q_start": "DAL q_s (q at the first epoch)",
    "q_end": "DAL q_e (q approached at the last epoch)",
    "bootstrap": "DAL bootstrap term: soft (entropy, paper's final form) or hard (argmax label)",
    "bootstrap_scale": "multiplies lambda(i); 1 is the paper",
    "threads": "torch CPU threads (default: torch's own, usually one per core)",
    "amp": "bf16 autocast (default: on for CUDA, off on CPU)",
    "augment": "random crop + flip (default: the dataset's: on for CIFAR, off otherwise)",
    "lr": "SGD learning rate (default: the dataset's: 0.05 for digits, 0.01 otherwise, the paper's)",
    "epochs": "training epochs",
    "batch_size": "minibatch size",
    "seed": "seed of the noise draw, the split, the initialisation and the batch order",
    "device": "auto (CUDA when visible), cpu or cuda",
    "train_size": "train on a stratified subset of this many images of the training pool, the same images for "
                  "every seed (default: None, all)",
    "graphs": "auto (CUDA graphs on a GPU, eager elsewhere), on (refused where they cannot run) or off: capture "
              "the whole training step once and replay it (default: auto)",
    "image_size": "resize the images of a folder:PATH dataset to this many pixels per side (default: None, "
                  "they must all have one size)",
}


def _flag_help(name: str, default: Any) -> str:
    """A train flag's help; flags whose values are registry names list the registry (loaded here: torch)."""
    from dal_search.objectives.registry import load_all

    registries = load_all()
    kinds = {"dataset": "dataset", "loss": "loss", "schedule": "schedule", "noise": "noise", "model": "model"}
    if name in kinds:
        registry = registries[kinds[name]]
        text = f"{registry.kind}: {registry.choices()}"
        if name == "model":
            text = "auto (the dataset's default), or " + text
        return f"{text} (default: {default})"
    text = _FLAG_HELP.get(name, name.replace("_", " "))
    return text if "(default:" in text else f"{text} (default: {default})"


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    from dal_search.objectives.config import config_fields

    g = p.add_argument_group("train config (each overrides --config)")
    for f in config_fields():
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        help_text = _flag_help(f.name, f.default)
        if kind.startswith("bool"):
            g.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            g.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose arguments may be added on first use (`lazy(fn)`): the train flags list the
    registries, which imports torch, so they are added only when `train` is parsed or its help is shown and
    `dal-search --help` and the other commands stay fast."""

    _pending: Callable[["_Parser"], None] | None = None

    def lazy(self, add: Callable[["_Parser"], None]) -> None:
        self._pending = add

    def _complete(self) -> None:
        if self._pending is not None:
            add, self._pending = self._pending, None
            add(self)

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def _config_from_args(args: argparse.Namespace):
    from dal_search.objectives.config import TrainConfig, config_fields

    values: dict[str, Any] = {}
    if args.config:
        from dal_search.storage.export import load_train_config

        values = load_train_config(args.config).to_dict()
    for f in config_fields():
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return TrainConfig.from_dict(values)


def cmd_train(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    if args.json:
        check_writable(args.json, "--json output")  # before training, not after it
    if args.seeds:
        return _train_seeds(config, args)
    from dal_search.objectives.train import train

    bar = None

    def report(epoch: int, m: dict[str, float]) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:  # made at the first epoch, so a data or noise error prints nothing but its line
            from tqdm import tqdm

            bar = tqdm(total=config.epochs, desc=f"{config.loss} {config.dataset} {config.noise}-{config.noise_rate}",
                       unit="ep", file=sys.stderr, dynamic_ncols=True)
        bar.set_postfix(q=f"{m['q']:.2f}", lam=f"{m['lam']:.2f}", test=f"{m['test_acc']:.3f}",
                        noisy_fit=f"{m['noisy_fit']:.2f}", refresh=False)
        bar.update(1)

    try:
        result = train(config, report=report)
    finally:
        if bar is not None:
            bar.close()
    summary = {k: v for k, v in result.items() if k not in ("history", "config")}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    print(json.dumps(summary, indent=2))
    return 0 if result["status"] == "ok" else 3


def _train_seeds(config, args: argparse.Namespace) -> int:
    """The config once per seed; prints each seed's summary and the mean and std over seeds."""
    import statistics

    from dal_search.objectives.train import train

    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UserError(f"--seeds takes a comma-separated list of integers, got {args.seeds!r}") from None
    keys = ("test_acc", "best_test_acc", "test_acc_at_best_val", "val_acc", "noisy_fit", "clean_fit",
            "realized_rate", "wall_time")
    rows = []
    for seed in seeds:
        r = train(config.replace(seed=seed))
        rows.append({"seed": seed, "status": r["status"], **{k: r[k] for k in keys}})
        if not args.quiet:
            print(f"seed {seed}: test {r['test_acc']:.4f} (best {r['best_test_acc']:.4f}), "
                  f"noisy fit {r['noisy_fit']:.3f}, {r['wall_time']:.1f} s", file=sys.stderr)
    summary = {"config": config.to_dict(), "seeds": rows,
               "mean": {k: statistics.fmean(r[k] for r in rows) for k in keys},
               "std": {k: statistics.pstdev([r[k] for r in rows]) for k in keys}}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)
    print(json.dumps({"mean": summary["mean"], "std": summary["std"], "seeds": seeds}, indent=2))
    return 0 if all(r["status"] == "ok" for r in rows) else 3


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dal-search",
        description="Tune the Dynamics-Aware Loss (DAL) on noisy labels: one-off training runs, campaigns of "
                    "Optuna studies on SQL storage, local or Ray workers, the dashboard, reports and "
                    "exports of the best configs.",
        epilog="Storage URLs: sqlite:///runs/x.db (default), postgresql+psycopg://user:pw@host/db, "
               "journal:./runs/x.log, redis://host:6379/0, grpc://host:13000. "
               "Run 'dal-search COMMAND --help' for each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train one config and print a JSON summary",
                       description="Train one config (digits by default: no download, seconds on a CPU) and "
                                   "print a JSON summary: final and best test accuracy, how much of the noisy "
                                   "part of the training set the net memorised, wall time and device.")
    p.add_argument("--config", help="YAML/JSON train config, or a file written by 'dal-search export' "
                                    "(PATH#STUDY picks one study of a campaign export)")
    p.add_argument("--json", metavar="OUT", help="also write the full result (per-epoch history) to OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--seeds", metavar="S1,S2,...", help="train once per seed and print mean and std over seeds")
    p.lazy(_add_train_flags)
    p.set_defaults(func=cmd_train)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[Any], None]]:
    """Commands of the search room, registered by their own modules."""
    from dal_search.search import commands

    return commands.REGISTER


def _storage_unavailable() -> type[BaseException]:
    from dal_search.search.worker import StorageUnavailable  # imported only once something went wrong

    return StorageUnavailable


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_port(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dal-search: interrupted; the storage is consistent (running trials were re-queued)",
              file=sys.stderr)
        return 130
    except _storage_unavailable() as e:  # from a pool actor it arrives wrapped by Ray, its cause inside
        print(f"dal-search: error: {getattr(e, 'cause', None) or e}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: try again later
    except _user_errors() as e:
        print(f"dal-search: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
