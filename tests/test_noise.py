"""Label noise against PAPER.md's conventions, with the mappings written out again here independently."""

import numpy as np
import pytest
import torch

from objectives.noise import (NoiseError, asymmetric_map, corrupt_labels, label_hash, realized_rate,
                              transition_matrix)

N = 20000
rng = np.random.default_rng(1)
CLEAN10 = rng.integers(0, 10, N)
CLEAN100 = rng.integers(0, 100, N)

# PAPER.md's fine -> coarse table, copied again from the paper text.
COARSE = [int(v) for v in """4 1 14 8 0 6 7 7 18 3 3 14 9 18 7 11 3 9 7 11 6 11 5 10 7 6 13 15 3 15 0 11 1 10 12 14
16 9 11 5 5 19 8 8 15 13 14 17 18 10 16 4 17 4 2 0 17 4 18 17 10 3 2 12 12 16 12 1 9 19 2 10 0 1 16 12 9 13 15 13 16
19 2 4 6 19 5 5 8 19 18 1 2 15 6 0 17 8 14 13""".split()]


@pytest.mark.parametrize("r", [0.2, 0.4, 0.6, 0.8])
def test_symmetric_paper_convention_resamples_over_all_classes(r):
    noisy = corrupt_labels(CLEAN10, "symmetric", r, 10, seed=0)
    assert realized_rate(CLEAN10, noisy) == pytest.approx(r * 9 / 10, abs=0.012)
    t = transition_matrix(CLEAN10, noisy, 10)
    assert np.allclose(np.diag(t), 1 - r + r / 10, atol=0.03)
    off = t[~np.eye(10, dtype=bool)]
    assert np.allclose(off, r / 10, atol=0.02)


def test_symmetric_exclusive_realises_the_nominal_rate():
    noisy = corrupt_labels(CLEAN10, "symmetric-exclusive", 0.4, 10, seed=0)
    assert realized_rate(CLEAN10, noisy) == pytest.approx(0.4, abs=0.012)
    t = transition_matrix(CLEAN10, noisy, 10)
    assert np.allclose(t[~np.eye(10, dtype=bool)], 0.4 / 9, atol=0.015)


def test_cifar10_asymmetric_mapping():
    noisy = corrupt_labels(CLEAN10, "asymmetric", 0.4, 10, seed=0, dataset="cifar10")
    t = transition_matrix(CLEAN10, noisy, 10)
    for src, dst in {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}.items():
        assert t[src, dst] == pytest.approx(0.4, abs=0.04)
        assert t[src, src] == pytest.approx(0.6, abs=0.04)
    for c in (0, 1, 6, 7, 8):
        assert t[c, c] == 1.0
    assert realized_rate(CLEAN10, noisy) == pytest.approx(0.4 * 5 / 10, abs=0.015)


def test_cifar100_flips_within_the_true_superclass_cyclically():
    target = asymmetric_map("cifar100", 100)
    assert (target[0], target[1], target[2]) == (51, 32, 11)  # apple->mushroom, fish->flatfish, baby->boy
    for c in range(100):
        members = [f for f in range(100) if COARSE[f] == COARSE[c]]
        assert len(members) == 5
        assert target[c] == members[(members.index(c) + 1) % 5]
    noisy = corrupt_labels(CLEAN100, "asymmetric", 0.4, 100, seed=0, dataset="cifar100")
    flipped = noisy != CLEAN100
    assert np.all(noisy[flipped] == target[CLEAN100[flipped]])
    assert flipped.mean() == pytest.approx(0.4, abs=0.015)


def test_mnist_and_pair_flip_mappings():
    m = asymmetric_map("mnist", 10)
    assert (m[7], m[2], m[5], m[6], m[3]) == (1, 7, 6, 5, 8)
    assert all(m[c] == c for c in (0, 1, 4, 8, 9))
    assert list(asymmetric_map("digits", 10)) == [(c + 1) % 10 for c in range(10)]


def test_instance_dependent_noise():
    x = rng.normal(size=(5000, 20)).astype(np.float32)
    y = rng.integers(0, 10, 5000)
    a = corrupt_labels(y, "instance", 0.4, 10, seed=3, features=x)
    b = corrupt_labels(y, "instance", 0.4, 10, seed=3, features=x)
    assert np.array_equal(a, b)
    assert a.min() >= 0 and a.max() < 10
    assert realized_rate(y, a) == pytest.approx(0.4, abs=0.03)
    with pytest.raises(NoiseError, match="needs the samples' features"):
        corrupt_labels(y, "instance", 0.4, 10, seed=3)


def test_deterministic_per_seed_and_input_untouched():
    before = CLEAN10.copy()
    a = corrupt_labels(CLEAN10, "symmetric", 0.4, 10, seed=5)
    assert np.array_equal(a, corrupt_labels(CLEAN10, "symmetric", 0.4, 10, seed=5))
    assert not np.array_equal(a, corrupt_labels(CLEAN10, "symmetric", 0.4, 10, seed=6))
    assert np.array_equal(CLEAN10, before)
    assert label_hash(a) == label_hash(a.copy()) != label_hash(CLEAN10)


def test_label_files(tmp_path):
    labels = rng.integers(0, 10, 100)
    np.save(tmp_path / "l.npy", labels)
    assert np.array_equal(corrupt_labels(labels, "file", 0, 10, 0, path=str(tmp_path / "l.npy")), labels)
    torch.save({"clean_label": torch.tensor(labels), "worse_label": torch.tensor((labels + 1) % 10)},
               tmp_path / "CIFAR-10_human.pt")
    got = corrupt_labels(labels, "file", 0, 10, 0, path=f"{tmp_path}/CIFAR-10_human.pt:worse_label")
    assert np.array_equal(got, (labels + 1) % 10)
    with pytest.raises(NoiseError, match="pick one as"):
        corrupt_labels(labels, "file", 0, 10, 0, path=f"{tmp_path}/CIFAR-10_human.pt")
    with pytest.raises(NoiseError, match="has 100 labels but the training set has 99"):
        corrupt_labels(labels[:99], "file", 0, 10, 0, path=str(tmp_path / "l.npy"))
    with pytest.raises(NoiseError, match="not found"):
        corrupt_labels(labels, "file", 0, 10, 0, path=str(tmp_path / "nope.npy"))
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(NoiseError, match="cannot be read"):
        corrupt_labels(labels, "file", 0, 10, 0, path=str(tmp_path / "bad.npy"))
    np.save(tmp_path / "big.npy", labels + 10)
    with pytest.raises(NoiseError, match="outside"):
        corrupt_labels(labels, "file", 0, 10, 0, path=str(tmp_path / "big.npy"))


def test_bad_settings():
    with pytest.raises(NoiseError, match="unknown noise kind"):
        corrupt_labels(CLEAN10, "gaussian", 0.2, 10, 0)
    with pytest.raises(NoiseError, match=r"\[0, 1\)"):
        corrupt_labels(CLEAN10, "symmetric", 1.0, 10, 0)
