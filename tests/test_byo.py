"""A user's own data and network: folder:PATH (an ImageFolder written here with PIL), npz:PATH, py:MODULE:FUNCTION
datasets and py:MODULE:FACTORY models, validated with one line each, trained through the trainer and through
`dal-search run` campaigns, exported and re-run with `dal-search train --config`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import optuna
import pytest
import torch
import yaml
from PIL import Image

from dal_search.objectives.data import _user as data_user  # where the memory budget is read
from dal_search.objectives.config import ConfigError, TrainConfig
from dal_search.objectives.data import DataError, clear_cache, has_clean_test_labels, load_dataset
from dal_search.objectives.models import ModelError, build_model
from dal_search.objectives.train import train


USER_MODULES = ("mydata", "sources", "nets", "absent_nets", "no_such_module")


@pytest.fixture(autouse=True)
def fresh_cache():
    """No dataset and no user module of another test: each test writes its own mydata.py / nets.py."""
    for name in USER_MODULES:
        sys.modules.pop(name, None)
    clear_cache()
    yield
    clear_cache()
    for name in USER_MODULES:
        sys.modules.pop(name, None)


def _write_images(root, classes=("cat", "dog", "emu"), n=12, size=(10, 10), mode="RGB", seed=0, sizes=None):
    """One sub-folder of PNGs per class; a class's images are brighter the later it comes, so a net can learn it."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = sizes[i % len(sizes)] if sizes else size
            shape = (h, w, 3) if mode == "RGB" else (h, w)
            pixels = np.clip(rng.normal(40 + 80 * c, 25, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode).save(folder / f"{name}_{i:03d}.png")


def _arrays(n=240, d=12, k=3, seed=0):
    """Learnable vectors: the class is the argmax of the first k features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, x[:, :k].argmax(axis=1)


def _cli(args, cwd, env_extra=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "DAL_SEARCH_STORAGE"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "dal_search", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------- folder:PATH


def test_image_folder_layouts_sizes_and_the_held_out_split(tmp_path):
    _write_images(tmp_path / "split" / "train", n=10)
    _write_images(tmp_path / "split" / "test", n=4, seed=1)
    d = load_dataset(f"folder:{tmp_path / 'split'}")
    assert d.classes == ["cat", "dog", "emu"] and d.num_classes == 3 and d.input_shape == (3, 10, 10)
    assert len(d.train_y) == 30 and d.test_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert d.clean_test_labels("none") is not None  # a test/ folder's labels are taken as correct
    assert d.clean_train_labels("none") is None and d.clean_train_labels("symmetric") is d.train_y
    assert abs(float(d.train_x.mean())) < 1e-4  # standardised per channel on the training images

    # no train/: the class folders themselves, 20 % of each held out as the test set, always the same images
    _write_images(tmp_path / "flat", n=10, mode="L", size=(6, 9))
    d = load_dataset(f"folder:{tmp_path / 'flat'}")
    assert d.input_shape == (1, 9, 6) and len(d.test_y) == 6 and np.bincount(d.test_y.numpy()).tolist() == [2, 2, 2]
    clear_cache()
    assert torch.equal(load_dataset(f"folder:{tmp_path / 'flat'}").test_x, d.test_x)
    # held out of the user's own labels: clean only under synthetic noise (the premise of adding it)
    assert d.clean_test_labels("none") is None and d.clean_test_labels("symmetric") is not None
    assert not has_clean_test_labels(f"folder:{tmp_path / 'flat'}", noise="none")
    assert has_clean_test_labels(f"folder:{tmp_path / 'split'}", noise="none") and has_clean_test_labels("mnist")

    # mixed sizes: refused without image_size, squashed to S x S with it
    _write_images(tmp_path / "mixed", n=6, sizes=[(10, 10), (14, 8)])
    with pytest.raises(DataError, match=r"different sizes \(.*cat_000.png is 10x10, .*cat_001.png is 14x8\): set "
                                        r"image_size"):
        load_dataset(f"folder:{tmp_path / 'mixed'}")
    assert load_dataset(f"folder:{tmp_path / 'mixed'}", image_size=8).input_shape == (3, 8, 8)
    with pytest.raises(DataError, match="image_size applies to folder: datasets only"):
        load_dataset("digits", image_size=8)
    with pytest.raises(ConfigError, match="image_size applies to folder: datasets only"):
        TrainConfig(image_size=8)


@pytest.mark.parametrize("damage, message", [
    ("unreadable", r"cannot read image .*dog/dog_003.png \(UnidentifiedImageError.*\): replace or delete the file"),
    ("empty_class", r"class folder .*/emu holds no images \(.png, .jpg, .jpeg, .bmp, ...\)"),
    ("stray_test_class", r"test/yak is not a class of .*/train \(cat, dog, emu\)"),
    ("one_class", r"has 1 class sub-folder\(s\): .*\(at least 2 classes\)"),
    ("missing", r"image folder .*/nowhere not found"),
    ("budget", r"would take .* GiB as float32 \(36 samples of 300 values\), over the 0.0 GiB budget: set a smaller "
               r"image_size or use fewer images, or raise DAL_SEARCH_DATA_BUDGET_GB"),
], ids=lambda v: v if " " not in v and "\\" not in v else "")
def test_a_bad_image_folder_is_one_line(tmp_path, monkeypatch, damage, message):
    top = tmp_path / "imgs"
    _write_images(top / "train", n=12)
    if damage == "unreadable":
        (top / "train" / "dog" / "dog_003.png").write_bytes(b"not a png at all")
    elif damage == "empty_class":
        for f in (top / "train" / "emu").iterdir():
            f.unlink()
        (top / "train" / "emu" / "notes.txt").write_text("not an image")
    elif damage == "stray_test_class":
        _write_images(top / "test", classes=("cat", "yak"), n=2)
    elif damage == "one_class":
        top = tmp_path / "one"
        _write_images(top, classes=("cat",), n=3)
    elif damage == "missing":
        top = tmp_path / "nowhere"
    else:
        monkeypatch.setattr(data_user, "MEMORY_BUDGET_BYTES", 1000)
    with pytest.raises(DataError) as e:
        load_dataset(f"folder:{top}")
    assert "\n" not in str(e.value) and e.value.__cause__ is None
    assert __import__("re").search(message, str(e.value)), str(e.value)


# ---------------------------------------------------------------- npz:PATH and py:MODULE:FUNCTION


def _bad(case, x, y):
    """A dict of arrays with one mistake, and the message it must give."""
    good = {"x_train": x[:200], "y_train": y[:200], "x_test": x[200:], "y_test": y[200:]}
    return {
        "short_labels": ({**good, "y_train": y[:199]}, r"y_train has shape \(199,\), expected \(200,\)"),
        "label_beyond_k": ({**good, "y_test": np.full(40, 3)}, r"y_test holds label 3, outside 0..2 \(K = 3 from "
                                                                 r"y_train\)"),
        "negative_label": ({**good, "y_train": np.where(y[:200] == 0, -1, y[:200])}, "y_train holds label -1"),
        "names_fix_k": ({**good, "classes": np.array(["a", "b"])}, r"y_train holds label 2, outside 0..1 \(K = 2 "
                                                                   r"from classes\)"),
        "empty_class": ({**good, "classes": np.array(["a", "b", "c", "d"])}, r"class 3 \('d'\) has no sample in "
                                                                             r"y_train"),
        "test_shape": ({**good, "x_test": x[200:, :5]}, r"x_test has shape \(40, 5\) but x_train \(200, 12\)"),
        "not_finite": ({**good, "x_train": np.where(x[:200] > 2, np.nan, x[:200])}, "x_train must hold finite numbers"),
        "float_labels": ({**good, "y_train": y[:200] + 0.5}, "y_train must hold integer class indices"),
        "one_d_x": ({**good, "x_train": x[:200, 0]}, r"x_train has shape \(200,\); give \(N, D\) vectors"),
        "y_test_alone": ({k: v for k, v in good.items() if k != "x_test"}, "has y_test but no x_test"),
        "unknown_key": ({**good, "ytest": y[200:]}, "'ytest' that dal-search does not read"),
        "no_labels": ({"x_train": x}, "has no y_train"),
    }[case]


CASES = ["short_labels", "label_beyond_k", "negative_label", "names_fix_k", "empty_class", "test_shape", "not_finite",
         "float_labels", "one_d_x", "y_test_alone", "unknown_key", "no_labels"]


@pytest.mark.parametrize("case", CASES)
def test_bad_arrays_are_one_line_from_npz_and_from_python(tmp_path, monkeypatch, case):
    arrays, message = _bad(case, *_arrays())
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=f"npz file {tmp_path / 'bad.npz'}.*{message}"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    (tmp_path / "mydata.py").write_text(textwrap.dedent("""
        import numpy as np
        def load():
            return {k: v for k, v in np.load(__file__[:-len("mydata.py")] + "bad.npz").items()}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DataError, match=f"dataset 'py:mydata:load'.*{message}"):
        load_dataset("py:mydata:load")


def test_npz_and_python_sources_refusals(tmp_path, monkeypatch):
    x, y = _arrays()
    np.savez(tmp_path / "objects.npz", x_train=np.array([{"a": 1}] * 3, dtype=object), y_train=np.arange(3))
    with pytest.raises(DataError, match=r"cannot be read \(ValueError: Object arrays cannot be loaded"):
        load_dataset(f"npz:{tmp_path / 'objects.npz'}")
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(DataError, match="cannot be read as a .npz"):
        load_dataset(f"npz:{tmp_path / 'plain.txt'}")
    np.savez(tmp_path / "big.npz", x_train=x, y_train=y)
    monkeypatch.setattr(data_user, "MEMORY_BUDGET_BYTES", 240 * 12 * 4 - 1)  # one byte short
    with pytest.raises(DataError, match=r"over the 0.0 GiB budget: use fewer or smaller samples"):
        load_dataset(f"npz:{tmp_path / 'big.npz'}")
    monkeypatch.undo()
    (tmp_path / "sources.py").write_text(textwrap.dedent("""
        def raises():
            raise OSError("the share is not mounted")
        def text():
            return "x_train.csv"
        CONSTANT = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for ref, message in [("sources:raises", r"the function raised OSError: the share is not mounted; fix it"),
                         ("sources:text", "returned a str; return a dict with x_train, y_train"),
                         ("sources:CONSTANT", "sources.CONSTANT is a int, not a function"),
                         ("sources:absent", "module 'sources' has no attribute 'absent'"),
                         ("no_such_module:load", "no module named 'no_such_module' can be imported; put the folder "
                                                 "that holds no_such_module.py on PYTHONPATH")]:
        with pytest.raises(DataError, match=message):
            load_dataset(f"py:{ref}")
    with pytest.raises(ConfigError, match="'py:sources' is not of the form py:MODULE:FUNCTION"):
        TrainConfig(dataset="py:sources")


def test_labels_as_given_clean_labels_when_known_and_nan_when_not(tmp_path):
    x, clean = _arrays(n=300)
    given = clean.copy()
    flip = np.random.default_rng(5).random(300) < 0.3
    given[flip] = (given[flip] + 1) % 3  # the user's labels: 30 % wrong, as a noisy source gives them
    np.savez(tmp_path / "unknown.npz", x_train=x, y_train=given)  # no test set, no clean labels
    np.savez(tmp_path / "known.npz", x_train=x[:240], y_train=given[:240], y_train_clean=clean[:240],
             x_test=x[240:], y_test=clean[240:])
    base = dict(noise="none", epochs=2, threads=1)

    r = train(TrainConfig(dataset=f"npz:{tmp_path / 'unknown.npz'}", **base))
    assert r["status"] == "ok" and not r["has_test_labels"] and not r["has_clean_labels"]
    for key in ("test_acc", "best_test_acc", "test_acc_at_best_val", "noisy_fit", "clean_fit", "realized_rate"):
        assert math.isnan(r[key]), key  # unknown, never invented
    assert r["best_epoch"] == -1 and all(math.isnan(v) for v in r["history"]["test_acc"])
    assert 0 <= r["val_acc"] <= 1 and r["best_val_acc"] >= r["val_acc"]  # selection has the noisy split
    assert not has_clean_test_labels(f"npz:{tmp_path / 'unknown.npz'}", noise="none")

    r = train(TrainConfig(dataset=f"npz:{tmp_path / 'known.npz'}", **base))
    assert r["has_test_labels"] and r["has_clean_labels"] and 0 <= r["test_acc"] <= 1
    assert r["realized_rate"] == pytest.approx(float(np.mean(given[:240] != clean[:240])))  # the labels as given
    assert 0 <= r["noisy_fit"] <= 1 and 0 <= r["clean_fit"] <= 1
    # synthetic noise on top: drawn on the given labels, measured against the clean ones
    r2 = train(TrainConfig(dataset=f"npz:{tmp_path / 'known.npz'}", noise="symmetric", noise_rate=0.4, epochs=2,
                           threads=1))
    assert r2["realized_rate"] > r["realized_rate"] + 0.15 and r2["label_hash"] != r["label_hash"]
    # default network for vectors is the MLP, for images the small CNN
    assert TrainConfig(dataset=f"npz:{tmp_path / 'known.npz'}").resolved_model((12,)) == "mlp"
    assert TrainConfig(dataset="folder:/x").resolved_model((3, 8, 8)) == "cnn"


# ---------------------------------------------------------------- py:MODULE:FACTORY


NETS = """
import torch
CALLS = []

def factory(input_shape, num_classes):
    CALLS.append((tuple(input_shape), num_classes))
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(input_shape).prod()), 16),
                               torch.nn.ReLU(), torch.nn.Linear(16, num_classes))

def wrong_width(input_shape, num_classes):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(input_shape).prod()), 7))

def raises(input_shape, num_classes):
    raise RuntimeError("out of ideas")

def not_a_module(input_shape, num_classes):
    return "resnet"

def wrong_input(input_shape, num_classes):
    return torch.nn.Linear(3, num_classes)
"""


def test_py_model_is_built_trained_and_checked(tmp_path, monkeypatch):
    (tmp_path / "nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    r = train(TrainConfig(model="py:nets:factory", epochs=3, threads=1))
    import nets

    assert nets.CALLS == [((64,), 10)] and r["status"] == "ok" and r["test_acc"] > 0.3  # it learnt with it
    assert isinstance(build_model("py:nets:factory", (4,), 2), torch.nn.Module)
    for name, message in [
        ("py:nets:wrong_width", r"model 'py:nets:wrong_width' returns shape \(2, 7\) torch.float32 for a batch of 2; "
                                r"it must return float logits of shape \(batch, num_classes\) = \(2, 10\)"),
        ("py:nets:raises", r"the factory raised RuntimeError: out of ideas when called as factory\(\(64,\), 10\)"),
        ("py:nets:not_a_module", "the factory returned a str, not a torch.nn.Module"),
        ("py:nets:wrong_input", r"model 'py:nets:wrong_input' fails on a batch of shape \(2, 64\) \(RuntimeError"),
        ("py:absent_nets:factory", "no module named 'absent_nets' can be imported; put the folder"),
    ]:
        with pytest.raises(ModelError, match=message) as e:
            train(TrainConfig(model=name, epochs=1, threads=1))
        assert isinstance(e.value, ConfigError) and "\n" not in str(e.value)  # the CLI's exit 2
    with pytest.raises(ConfigError, match="'py:nets' is not of the form py:MODULE:FACTORY"):
        TrainConfig(model="py:nets")


def test_cli_a_wrong_model_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    r = _cli(["train", "--model", "py:nets:wrong_width", "--epochs", "1", "--quiet"], tmp_path,
             {"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("dal-search: error: model 'py:nets:wrong_width' returns shape (2, 7)") and r.stdout == ""


# ---------------------------------------------------------------- end to end through campaigns


def test_image_folder_dal_vs_gce_campaign_export_and_rerun(tmp_path):
    """A user's ImageFolder of mixed-size PNGs, DAL vs GCE through `dal-search run`, the best DAL config exported
    and re-run by `dal-search train --config`: the same numbers."""
    _write_images(tmp_path / "pets" / "train", n=14, sizes=[(12, 12), (16, 10)])
    _write_images(tmp_path / "pets" / "test", n=4, sizes=[(12, 12)], seed=3)
    dataset = f"folder:{tmp_path / 'pets'}"
    camp = {"name": "pets", "datasets": [dataset], "noise": {"symmetric": [0.2]},
            "arms": {"dal": {"q_start": {"low": 0.3, "high": 0.9}, "q_end": {"low": 1.0, "high": 1.8}},
                     "gce": {"q": 0.7}},
            "budget": {"trials": 2, "seeds": [0]}, "train": {"epochs": 3, "threads": 1, "image_size": 8}}
    (tmp_path / "pets.yaml").write_text(yaml.safe_dump(camp))
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    r = _cli(["run", "pets.yaml", "--storage", url], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    storage = optuna.storages.RDBStorage(url)
    dal_name, gce_name = (f"pets/{arm}/{dataset}/symmetric-0.2" for arm in ("dal", "gce"))
    dal = optuna.load_study(study_name=dal_name, storage=storage)
    gce = optuna.load_study(study_name=gce_name, storage=storage)
    done = [t for t in dal.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and len(gce.trials) == 1 and gce.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert all(t.user_attrs["train_config"]["image_size"] == 8 for t in done)

    r = _cli(["export", "--storage", url, "--campaign", "pets", "--out", "best.yaml"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli(["train", "--config", f"best.yaml#{dal_name}", "--json", "again.json", "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((tmp_path / "again.json").read_text())
    best = dal.best_trial
    assert again["config"]["dataset"] == dataset and again["config"]["q_start"] == best.params["q_start"]
    assert again["val_acc"] == best.user_attrs["val_acc"] and again["test_acc"] == best.user_attrs["test_acc"]
    assert again["label_hash"] == best.user_attrs["label_hash"] and again["has_test_labels"] is True


def test_npz_and_python_data_campaign_with_a_python_model(tmp_path):
    """Labels as given (noise none): an .npz without test labels and a py: function with them, both trained by a
    py: network through `dal-search run` (selection on the noisy validation split)."""
    x, clean = _arrays(n=300)
    given = clean.copy()
    given[::4] = (given[::4] + 1) % 3
    np.savez(tmp_path / "mine.npz", x_train=x, y_train=given, y_train_clean=clean)  # no test labels
    (tmp_path / "mydata.py").write_text(textwrap.dedent(f"""
        import numpy as np
        import torch

        def load():
            z = np.load({str(tmp_path / 'mine.npz')!r})
            x = torch.from_numpy(z["x_train"])
            # a tuple (x_train, y_train, x_test, y_test, y_train_clean), tensors and arrays mixed
            return x[:240], z["y_train"][:240], x[240:], z["y_train_clean"][240:], z["y_train_clean"][:240]
    """))
    (tmp_path / "nets.py").write_text(textwrap.dedent("""
        import torch

        def factory(input_shape, num_classes):
            with open(__file__ + ".calls", "a") as fh:  # what each worker's training built
                fh.write(f"{tuple(input_shape)} {num_classes}\\n")
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_shape[0], 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, num_classes))
    """))
    datasets = [f"npz:{tmp_path / 'mine.npz'}", "py:mydata:load"]
    camp = {"name": "own", "datasets": datasets, "noise": {"none": [0.0]},
            "arms": {"dal": {"q_start": {"low": 0.3, "high": 0.9}, "q_end": {"low": 1.0, "high": 1.8}},
                     "gce": {"q": 0.7}},
            "budget": {"trials": 2, "seeds": [0, 1]}, "metric": "val_acc",
            "train": {"epochs": 3, "threads": 1, "model": "py:nets:factory"}}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(camp))
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    # selecting on test accuracy is refused up front: the .npz has no clean test labels
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**camp, "name": "bad", "metric": "test_acc"}))
    r = _cli(["run", "bad.yaml", "--storage", url], tmp_path, {"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "needs clean test labels" in r.stderr and "metric: val_acc" in r.stderr
    r = _cli(["run", "own.yaml", "--storage", url], tmp_path, {"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    storage = optuna.storages.RDBStorage(url)
    for dataset, has_test in zip(datasets, (False, True)):
        for arm, n in (("dal", 2), ("gce", 1)):
            study = optuna.load_study(study_name=f"own/{arm}/{dataset}/none-0", storage=storage)
            trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            assert len(trials) == n, [t.user_attrs.get("fail_reason") for t in study.trials]
            for t in trials:
                assert t.value == t.user_attrs["val_acc"]  # selected on the noisy validation split
                # two seeds: an unknown test accuracy stays unknown (NaN mean and spread), never a number
                assert math.isnan(t.user_attrs["test_acc"]) != has_test
                assert math.isnan(t.user_attrs["test_acc_std"]) != has_test
                assert t.user_attrs["has_test_labels"] == has_test
                assert 0 <= t.user_attrs["noisy_fit"] <= 1  # y_train_clean given: memorisation is known
    calls = (tmp_path / "nets.py.calls").read_text().splitlines()
    assert len(calls) == 12 and set(calls) == {"(12,) 3"}  # every training built the user's network
