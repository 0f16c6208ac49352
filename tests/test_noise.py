"""Label noise against PAPER.md's conventions; every expected mapping and rate is worked out here again,
independently of objectives.noise."""

import hashlib
import math

import numpy as np
import pytest
import torch

from dal_search.objectives.noise import (NoiseError, asymmetric_map, candidate_set_size, corrupt_labels, label_hash,
                                         realized_rate, transition_matrix)
from dal_search.objectives.noise import _trunc_normal

N = 20000
_rng = np.random.default_rng(1)
CLEAN10 = _rng.integers(0, 10, N)
CLEAN100 = np.repeat(np.arange(100), 200)  # 200 samples of every fine class

# PAPER.md's CIFAR-100 fine -> coarse table, copied again from the paper's text.
COARSE = [int(v) for v in """
4 1 14 8 0 6 7 7 18 3 3 14 9 18 7 11 3 9 7 11 6 11 5 10 7 6 13 15 3 15 0 11 1 10 12 14 16 9 11 5 5 19 8 8 15
13 14 17 18 10 16 4 17 4 2 0 17 4 18 17 10 3 2 12 12 16 12 1 9 19 2 10 0 1 16 12 9 13 15 13 16 19 2 4 6 19 5 5 8
19 18 1 2 15 6 0 17 8 14 13""".split()]


def _tol(p, n):  # five standard errors of a proportion p estimated from n draws
    return 5 * np.sqrt(p * (1 - p) / n) + 1e-9


# ---------------------------------------------------------------- symmetric


@pytest.mark.parametrize("r", [0.2, 0.4, 0.6, 0.8])
def test_symmetric_resamples_over_all_classes_so_fewer_labels_end_up_wrong(r):
    noisy = corrupt_labels(CLEAN10, "symmetric", r, 10, seed=0)
    assert realized_rate(CLEAN10, noisy) == pytest.approx(r * 9 / 10, abs=_tol(r * 0.9, N))
    t = transition_matrix(CLEAN10, noisy, 10)
    assert np.allclose(np.diag(t), 1 - r + r / 10, atol=0.04)
    assert np.allclose(t[~np.eye(10, dtype=bool)], r / 10, atol=0.02)


def test_symmetric_on_two_classes_keeps_half_of_the_resampled_labels():
    y = np.repeat([0, 1], N // 2)
    noisy = corrupt_labels(y, "symmetric", 0.8, 2, seed=4)
    assert realized_rate(y, noisy) == pytest.approx(0.4, abs=_tol(0.4, N))


def test_symmetric_exclusive_never_keeps_the_label_of_a_chosen_sample():
    # With two classes "another class" is the one other class: the realised rate is r itself, not r / 2.
    y = np.repeat([0, 1], N // 2)
    noisy = corrupt_labels(y, "symmetric-exclusive", 0.8, 2, seed=4)
    assert realized_rate(y, noisy) == pytest.approx(0.8, abs=_tol(0.8, N))
    noisy = corrupt_labels(CLEAN10, "symmetric-exclusive", 0.4, 10, seed=0)
    assert realized_rate(CLEAN10, noisy) == pytest.approx(0.4, abs=_tol(0.4, N))
    t = transition_matrix(CLEAN10, noisy, 10)
    assert np.allclose(t[~np.eye(10, dtype=bool)], 0.4 / 9, atol=0.015)
    # the same seed chooses the same samples as `symmetric`; exclusive changes every one of them
    sym = corrupt_labels(CLEAN10, "symmetric", 0.4, 10, seed=0)
    assert np.all(noisy[sym != CLEAN10] != CLEAN10[sym != CLEAN10])


# ---------------------------------------------------------------- asymmetric


def test_cifar10_asymmetric_transition_matrix():
    r = 0.4
    expected = np.eye(10)
    for src, dst in ((9, 1), (2, 0), (4, 7), (3, 5), (5, 3)):  # truck->auto, bird->plane, deer->horse, cat<->dog
        expected[src, src], expected[src, dst] = 1 - r, r
    noisy = corrupt_labels(CLEAN10, "asymmetric", r, 10, seed=0, dataset="cifar10")
    t = transition_matrix(CLEAN10, noisy, 10)
    assert np.all(t[expected == 0] == 0)  # no flip anywhere the mapping has none
    assert np.allclose(t, expected, atol=0.05)
    assert realized_rate(CLEAN10, noisy) == pytest.approx(r / 2, abs=_tol(r / 2, N))


def test_cifar100_flips_to_the_next_fine_class_of_the_true_superclass():
    assert len(COARSE) == 100 and all(COARSE.count(s) == 5 for s in range(20))
    noisy = corrupt_labels(CLEAN100, "asymmetric", 0.4, 100, seed=0, dataset="cifar100")
    targets = {}
    for c in range(100):
        changed = set(noisy[(CLEAN100 == c) & (noisy != c)].tolist())
        assert len(changed) == 1, f"class {c} flips to {changed}"
        targets[c] = changed.pop()
        assert COARSE[targets[c]] == COARSE[c]
    assert (targets[0], targets[1], targets[2]) == (51, 32, 11)  # apple->mushroom, fish->flatfish, baby->boy
    for s in range(20):  # within each superclass: index order, the last back to the first
        members = [f for f in range(100) if COARSE[f] == s]
        assert [targets[f] for f in members] == members[1:] + members[:1]
    assert realized_rate(CLEAN100, noisy) == pytest.approx(0.4, abs=_tol(0.4, len(CLEAN100)))


def test_cifar100_does_not_use_the_old_index_blocks():
    target = asymmetric_map("cifar100", 100)
    assert sum(int(target[c]) // 5 != c // 5 for c in range(100)) > 50


def test_mnist_and_pair_flip_mappings():
    noisy = corrupt_labels(CLEAN10, "asymmetric", 0.3, 10, seed=2, dataset="mnist")
    t = transition_matrix(CLEAN10, noisy, 10)
    expected = np.eye(10)
    for src, dst in ((7, 1), (2, 7), (5, 6), (6, 5), (3, 8)):
        expected[src, src], expected[src, dst] = 0.7, 0.3
    assert np.all(t[expected == 0] == 0) and np.allclose(t, expected, atol=0.05)
    # Fashion-MNIST: GCE's look-alike flips, boot->sneaker->sandal, pullover->shirt, coat->dress
    noisy = corrupt_labels(CLEAN10, "asymmetric", 0.3, 10, seed=2, dataset="fashion-mnist")
    t = transition_matrix(CLEAN10, noisy, 10)
    expected = np.eye(10)
    for src, dst in ((9, 7), (7, 5), (2, 6), (4, 3)):
        expected[src, src], expected[src, dst] = 0.7, 0.3
    assert np.all(t[expected == 0] == 0) and np.allclose(t, expected, atol=0.05)
    assert realized_rate(CLEAN10, noisy) == pytest.approx(0.4 * 0.3, abs=_tol(0.12, N))
    for dataset in ("digits", None):
        noisy = corrupt_labels(CLEAN10, "asymmetric", 0.3, 10, seed=2, dataset=dataset)
        flipped = noisy != CLEAN10
        assert np.array_equal(noisy[flipped], (CLEAN10[flipped] + 1) % 10)
        assert flipped.mean() == pytest.approx(0.3, abs=_tol(0.3, N))


def test_asymmetric_refuses_a_dataset_with_the_wrong_number_of_classes():
    with pytest.raises(NoiseError, match="cifar100 needs 100 classes"):
        corrupt_labels(CLEAN10, "asymmetric", 0.2, 10, 0, dataset="cifar100")


# ---------------------------------------------------------------- instance-dependent


def test_instance_dependent_noise():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6000, 48)).astype(np.float32)
    y = rng.integers(0, 10, 6000)
    for r in (0.2, 0.4):
        a = corrupt_labels(y, "instance", r, 10, seed=3, features=x)
        assert a.dtype == np.int64 and a.min() >= 0 and a.max() < 10
        # E[q] of N(r, 0.1) cut to [0, 1] is r plus a small upward pull at r = 0.2 (cut at -2 sd)
        assert realized_rate(y, a) == pytest.approx(r, abs=0.025)
        assert np.array_equal(a, corrupt_labels(y, "instance", r, 10, seed=3, features=x))
        assert not np.array_equal(a, corrupt_labels(y, "instance", r, 10, seed=4, features=x))
    # the flip target depends on the sample: samples of one class do not all flip the same way
    t = transition_matrix(y, a, 10)
    off = t * (1 - np.eye(10))
    assert (off > 0).sum(axis=1).min() >= 3
    # torch tensors are accepted, and give the same labels
    assert np.array_equal(a, corrupt_labels(torch.as_tensor(y), "instance", 0.4, 10, 3, features=torch.as_tensor(x)))


def test_instance_noise_depends_on_the_features():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    y = rng.integers(0, 5, 3000)
    a = corrupt_labels(y, "instance", 0.4, 5, seed=0, features=x)
    b = corrupt_labels(y, "instance", 0.4, 5, seed=0, features=-x)
    assert realized_rate(y, a) == pytest.approx(realized_rate(y, b), abs=0.04)  # the rate follows r ...
    flipped = (a != y) & (b != y)
    assert (a[flipped] != b[flipped]).mean() > 0.3  # ... the class a sample flips to follows its x


def test_instance_noise_errors():
    y = np.zeros(10, dtype=np.int64)
    with pytest.raises(NoiseError, match="needs the samples' features"):
        corrupt_labels(y, "instance", 0.4, 10, seed=3)
    with pytest.raises(NoiseError, match="9 feature rows for 10 labels"):
        corrupt_labels(y, "instance", 0.4, 10, seed=3, features=np.zeros((9, 4)))
    with pytest.raises(NoiseError, match="NaN"):
        corrupt_labels(y, "instance", 0.4, 10, seed=3, features=np.full((10, 4), np.nan))


def test_truncated_normal_stays_in_the_unit_interval():
    q = _trunc_normal(np.random.default_rng(0), 0.0, 0.1, 100000)
    assert q.min() >= 0 and q.max() <= 1
    # N(0, 0.1) folded at 0: mean 0.1 * sqrt(2 / pi)
    assert q.mean() == pytest.approx(0.1 * np.sqrt(2 / np.pi), abs=0.002)
    assert _trunc_normal(np.random.default_rng(0), 0.5, 0.1, 100000).mean() == pytest.approx(0.5, abs=0.002)


# ---------------------------------------------------------------- every kind


@pytest.mark.parametrize("kind", ["none", "symmetric", "symmetric-exclusive", "asymmetric", "instance"])
def test_deterministic_per_seed_and_input_untouched(kind):
    feats = np.random.default_rng(0).normal(size=(N, 8)).astype(np.float32)
    before = CLEAN10.copy()
    a = corrupt_labels(CLEAN10, kind, 0.4, 10, seed=5, features=feats, dataset="cifar10")
    assert a.dtype == np.int64 and a is not CLEAN10
    assert np.array_equal(a, corrupt_labels(CLEAN10, kind, 0.4, 10, seed=5, features=feats, dataset="cifar10"))
    if kind != "none":
        assert not np.array_equal(a, corrupt_labels(CLEAN10, kind, 0.4, 10, seed=6, features=feats,
                                                     dataset="cifar10"))
    assert np.array_equal(CLEAN10, before)
    a[:] = 0
    assert np.array_equal(CLEAN10, before)  # the result is a new array, even for `none`


def test_rate_zero_keeps_the_clean_labels():
    for kind in ("symmetric", "symmetric-exclusive", "asymmetric", "instance"):
        out = corrupt_labels(CLEAN10, kind, 0.0, 10, seed=1, features=np.ones((N, 2)))
        assert np.array_equal(out, CLEAN10)


def test_bad_settings():
    with pytest.raises(NoiseError, match="unknown noise kind 'gaussian'; choose one of: none, symmetric"):
        corrupt_labels(CLEAN10, "gaussian", 0.2, 10, 0)
    for bad in (1.0, -0.1, float("nan"), "0.4"):
        with pytest.raises(NoiseError, match=r"\[0, 1\)"):
            corrupt_labels(CLEAN10, "symmetric", bad, 10, 0)
    with pytest.raises(NoiseError, match=r"must lie in \[0, 5\)"):
        corrupt_labels(CLEAN10, "symmetric", 0.2, 5, 0)
    with pytest.raises(NoiseError, match="integer class indices"):
        corrupt_labels(np.array([0.5, 1.0]), "symmetric", 0.2, 5, 0)
    with pytest.raises(NoiseError, match="1-D"):
        corrupt_labels(np.zeros((2, 2), dtype=int), "symmetric", 0.2, 5, 0)
    with pytest.raises(NoiseError, match="at least 2 classes"):
        corrupt_labels(np.zeros(5, dtype=int), "symmetric", 0.2, 1, 0)
    assert issubclass(NoiseError, ValueError)


# ---------------------------------------------------------------- label files


@pytest.fixture
def labels():
    return np.random.default_rng(7).integers(0, 10, 100)


def _file(tmp_path, labels, *args):
    return corrupt_labels(labels, "file", 0.0, 10, 0, path=str(tmp_path.joinpath(*args)) if args else None)


def test_npy_label_file_round_trips(tmp_path, labels):
    noisy = (labels + 3) % 10
    np.save(tmp_path / "l.npy", noisy.astype(np.int32))
    got = corrupt_labels(labels, "file", 0.4, 10, 0, path=str(tmp_path / "l.npy"))
    assert got.dtype == np.int64 and np.array_equal(got, noisy)
    np.save(tmp_path / "f.npy", noisy.astype(np.float64))  # whole numbers stored as floats are fine
    assert np.array_equal(_file(tmp_path, labels, "f.npy"), noisy)


def test_cifar_n_pt_file_by_key(tmp_path, labels):
    # CIFAR-N ships a torch-saved dict of numpy arrays
    torch.save({"clean_label": labels, "worse_label": (labels + 1) % 10, "aggre_label": labels.copy(),
                "random_label1": (labels + 2) % 10}, tmp_path / "CIFAR-10_human.pt")
    assert np.array_equal(_file(tmp_path, labels, "CIFAR-10_human.pt:worse_label"), (labels + 1) % 10)
    assert np.array_equal(_file(tmp_path, labels, "CIFAR-10_human.pt:random_label1"), (labels + 2) % 10)
    with pytest.raises(NoiseError, match="several label sets; pick one as .*CIFAR-10_human.pt:KEY with KEY one of: "
                                         "clean_label, worse_label, aggre_label, random_label1"):
        _file(tmp_path, labels, "CIFAR-10_human.pt")
    with pytest.raises(NoiseError, match="no label array 'worst_label'.* one of: clean_label, worse_label"):
        _file(tmp_path, labels, "CIFAR-10_human.pt:worst_label")
    # a dict with a single label array, of torch tensors, needs no key
    torch.save({"noisy_label": torch.as_tensor((labels + 4) % 10)}, tmp_path / "one.pt")
    assert np.array_equal(_file(tmp_path, labels, "one.pt"), (labels + 4) % 10)


def test_pt_file_written_under_numpy_1_loads(tmp_path, labels):
    # CIFAR-N's files date from numpy 1, whose arrays pickle as numpy.core.multiarray._reconstruct
    buf = tmp_path / "np2.pt"
    torch.save({"clean_label": labels, "worse_label": (labels + 1) % 10}, buf, _use_new_zipfile_serialization=False)
    raw = buf.read_bytes()  # under numpy 2 it names numpy._core.multiarray instead
    (tmp_path / "np1.pt").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert np.array_equal(_file(tmp_path, labels, "np1.pt:worse_label"), (labels + 1) % 10)


def test_pt_file_made_for_another_dataset_is_refused(tmp_path, labels):
    torch.save({"clean_label": (labels + 1) % 10, "worse_label": labels}, tmp_path / "other.pt")
    with pytest.raises(NoiseError, match="clean_label differs from this dataset's training labels"):
        _file(tmp_path, labels, "other.pt:worse_label")


class _NotAnArray:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("case, match", [
    ("missing", "not found; give the path"),
    ("garbage_npy", "cannot be read as a .npy array"),
    ("garbage_pt", "cannot be read as a torch-saved dict"),
    ("code_in_pt", "cannot be read as a torch-saved dict"),
    ("short", "has 99 labels but the training set has 100; use the file made for this dataset"),
    ("out_of_range", r"must lie in \[0, 10\), found 10\.\.19; .*use the file made for this dataset"),
    ("fractional", "must hold integer class indices, found dtype float64"),
    ("two_d", "must hold a 1-D array of labels"),
    ("key_on_npy", "drop the ':worse_label' suffix"),
])
def test_each_bad_label_file_is_one_clear_error(tmp_path, labels, capsys, case, match):
    path = tmp_path / "bad.npy"
    if case == "garbage_npy":
        path.write_bytes(b"not numpy")
    elif case == "garbage_pt":
        path = tmp_path / "bad.pt"
        path.write_bytes(b"\x80\x02truncated")
    elif case == "code_in_pt":
        path = tmp_path / "bad.pt"
        torch.save({"worse_label": _NotAnArray()}, path)
    elif case == "short":
        np.save(path, labels[:99])
    elif case == "out_of_range":
        np.save(path, labels + 10)
    elif case == "fractional":
        np.save(path, labels + 0.5)
    elif case == "two_d":
        np.save(path, np.stack([labels, labels]))
    elif case == "key_on_npy":
        np.save(path, labels)
        path = f"{path}:worse_label"
    with pytest.raises(NoiseError, match=match) as e:
        corrupt_labels(labels, "file", 0.0, 10, 0, path=str(path))
    assert "\n" not in str(e.value) and "bad." in str(e.value)  # one line, naming the file
    assert "must never run" not in capsys.readouterr().out


def test_file_kind_without_a_path():
    with pytest.raises(NoiseError, match="needs a label file"):
        corrupt_labels(CLEAN10, "file", 0.0, 10, 0)


# ---------------------------------------------------------------- reports


def test_realized_rate_transition_matrix_and_hash():
    clean = np.array([0, 0, 1, 1, 1, 1])
    noisy = np.array([0, 2, 1, 1, 0, 2])
    assert realized_rate(clean, noisy) == pytest.approx(3 / 6)
    assert realized_rate([], []) == 0.0
    t = transition_matrix(clean, noisy, 3)
    assert np.allclose(t, [[0.5, 0, 0.5], [0.25, 0.5, 0.25], [0, 0, 0]])  # no clean 2s: a zero row
    with pytest.raises(NoiseError):
        realized_rate(clean, noisy[:5])
    expected = hashlib.sha256(np.array([3, 1, 2], dtype="<i8").tobytes()).hexdigest()[:16]
    assert label_hash([3, 1, 2]) == label_hash(np.array([3, 1, 2], dtype=np.int32)) == expected
    assert label_hash(torch.tensor([3, 1, 2])) == expected and len(expected) == 16
    assert label_hash([3, 1, 2]) != label_hash([3, 2, 1])


# ---------------------------------------------------------------- partial labels (candidate sets)


@pytest.mark.parametrize("r", [0.1, 0.3, 0.5, 0.7])
def test_partial_labels_are_uniform_candidate_sets_holding_the_true_class(r):
    s = corrupt_labels(CLEAN10, "partial", r, 10, seed=0)
    assert s.dtype == bool and s.shape == (N, 10)
    assert s[np.arange(N), CLEAN10].all()  # the true class is always a candidate
    false = ~np.eye(10, dtype=bool)[CLEAN10]
    # every false class joins independently with probability r: per class, and over all N (K-1) pairs
    for c in range(10):
        col = s[false[:, c], c]
        assert col.mean() == pytest.approx(r, abs=_tol(r, len(col)))
    assert s[false].mean() == pytest.approx(r, abs=_tol(r, N * 9))
    assert realized_rate(CLEAN10, s) == s[false].mean()
    assert candidate_set_size(s) == pytest.approx(1 + 9 * r, abs=9 * _tol(r, N * 9))
    # independence: the set size (less the true class) is Binomial(K - 1, r)
    sizes = np.bincount(s.sum(axis=1) - 1, minlength=10) / N
    binom = [math.comb(9, k) * r ** k * (1 - r) ** (9 - k) for k in range(10)]
    assert np.allclose(sizes, binom, atol=0.015)


def test_partial_labels_per_seed_nested_over_rates_and_rate_zero():
    before = CLEAN10.copy()
    a = corrupt_labels(CLEAN10, "partial", 0.3, 10, seed=5)
    assert np.array_equal(a, corrupt_labels(CLEAN10, "partial", 0.3, 10, seed=5))
    assert not np.array_equal(a, corrupt_labels(CLEAN10, "partial", 0.3, 10, seed=6))
    assert np.array_equal(CLEAN10, before)
    # one draw per (sample, class): at a higher rate the same seed's sets only grow
    b = corrupt_labels(CLEAN10, "partial", 0.5, 10, seed=5)
    assert (b >= a).all() and (b > a).any()
    zero = corrupt_labels(CLEAN10, "partial", 0.0, 10, seed=5)
    assert zero.dtype == bool and np.array_equal(zero, np.eye(10, dtype=bool)[CLEAN10])
    assert realized_rate(CLEAN10, zero) == 0.0 and candidate_set_size(zero) == 1.0
    with pytest.raises(NoiseError, match=r"\[0, 1\)"):
        corrupt_labels(CLEAN10, "partial", 1.0, 10, 0)


def test_candidate_set_reports():
    clean = np.array([0, 1, 2])
    s = np.array([[1, 0, 0, 0], [1, 1, 0, 1], [0, 1, 1, 0]], dtype=bool)
    assert realized_rate(clean, s) == pytest.approx(3 / 9)  # false classes in: 0 + 2 + 1 of 3 x 3
    assert candidate_set_size(s) == pytest.approx(6 / 3)
    assert candidate_set_size(torch.tensor(s)) == pytest.approx(2.0)
    assert candidate_set_size(clean) == 1.0
    with pytest.raises(NoiseError, match="3 clean labels but 2 candidate sets"):
        realized_rate(clean, s[:2])
    h = label_hash(s)
    assert h == label_hash(s.copy()) and h != label_hash(s[::-1]) and h != label_hash(clean)
