"""Seeded data transforms: label flips, backdoor triggers, super-classes, mixtures."""

from __future__ import annotations

import pytest
import torch

from tdakit import TdakitError
from tdakit.data.transforms import (
    add_trigger,
    apply_trigger,
    flip_labels,
    group_classes,
    mix_datasets,
)


def test_flip_labels_changes_exactly_the_marked_labels():
    y = torch.arange(200) % 5
    y_new, flipped = flip_labels(y, 0.1, n_classes=5, seed=3)
    assert flipped.dtype == torch.bool and int(flipped.sum()) == 20
    assert bool((y_new[flipped] != y[flipped]).all())
    assert torch.equal(y_new[~flipped], y[~flipped])
    assert int(y_new.min()) >= 0 and int(y_new.max()) < 5
    assert torch.equal(y, torch.arange(200) % 5)  # input untouched
    again = flip_labels(y, 0.1, n_classes=5, seed=3)
    assert torch.equal(again[0], y_new) and torch.equal(again[1], flipped)
    assert not torch.equal(flip_labels(y, 0.1, n_classes=5, seed=4)[1], flipped)
    # binary: a flip must go to the only other class
    yb = torch.zeros(10, dtype=torch.long)
    yb_new, fb = flip_labels(yb, 0.5, n_classes=2, seed=0)
    assert bool((yb_new[fb] == 1).all()) and int(fb.sum()) == 5
    assert int(flip_labels(y, 0.0, 5)[1].sum()) == 0 and bool(flip_labels(y, 1.0, 5)[1].all())


def test_flip_labels_errors():
    y = torch.tensor([0, 1, 2])
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(TdakitError, match="fraction"):
            flip_labels(y, bad, 3)
    with pytest.raises(TdakitError, match="integer"):
        flip_labels(y.float(), 0.5, 3)
    with pytest.raises(TdakitError, match="empty"):
        flip_labels(torch.zeros(0, dtype=torch.long), 0.5, 3)
    with pytest.raises(TdakitError, match=r"\[0, 2\)"):
        flip_labels(y, 0.5, 2)
    with pytest.raises(TdakitError, match="n_classes"):
        flip_labels(torch.zeros(3, dtype=torch.long), 0.5, 1)


def test_add_trigger_stamps_and_relabels():
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(50, 2, 8, 8, generator=gen) * 0.5
    y = torch.arange(50) % 5
    X_new, y_new, trig = add_trigger(X, y, 0.2, target_class=3, seed=1, patch_size=2, value=1.0)
    assert int(trig.sum()) == 10 and bool((y[trig] != 3).all())
    assert bool((y_new[trig] == 3).all()) and torch.equal(y_new[~trig], y[~trig])
    assert bool((X_new[trig][..., 6:, 6:] == 1.0).all())
    assert torch.equal(X_new[trig][..., :6, :], X[trig][..., :6, :])
    assert torch.equal(X_new[~trig], X[~trig]) and float(X.max()) <= 0.5
    assert torch.equal(apply_trigger(X[trig], patch_size=2), X_new[trig])
    centre = apply_trigger(X[:1, 0], patch_size=2, value=-1.0, location="center")
    assert bool((centre[0, 3:5, 3:5] == -1.0).all()) and int((centre == -1.0).sum()) == 4
    top_left = apply_trigger(X[:1], patch_size=3, location="top_left")
    assert bool((top_left[0, :, :3, :3] == 1.0).all())
    assert torch.equal(add_trigger(X, y, 0.2, 3, seed=1, patch_size=2)[2], trig)


def test_add_trigger_errors():
    X, y = torch.rand(10, 1, 4, 4), torch.arange(10) % 2
    with pytest.raises(TdakitError, match="patch_size"):
        add_trigger(X, y, 0.1, 1, patch_size=5)
    with pytest.raises(TdakitError, match="location"):
        add_trigger(X, y, 0.1, 1, location="middle")
    with pytest.raises(TdakitError, match="lower the fraction"):
        add_trigger(X, y, 0.6, 1)
    with pytest.raises(TdakitError, match="images"):
        add_trigger(X.flatten(1), y, 0.1, 1)
    with pytest.raises(TdakitError, match="10 examples"):
        add_trigger(X, y[:5], 0.1, 1)
    with pytest.raises(TdakitError, match="fraction"):
        add_trigger(X, y, 2.0, 1)


def test_group_classes():
    y = torch.tensor([0, 1, 2, 3, 4, 2])
    y_super, y_sub = group_classes(y, [[0, 3], [1, 2], [4]])
    assert y_super.tolist() == [0, 1, 1, 0, 2, 1] and torch.equal(y_sub, y)
    assert y_sub.data_ptr() != y.data_ptr()
    with pytest.raises(TdakitError, match="more than one group"):
        group_classes(y, [[0, 1], [1, 2, 3, 4]])
    with pytest.raises(TdakitError, match=r"\[4\]"):
        group_classes(y, [[0, 1], [2, 3]])
    with pytest.raises(TdakitError, match="non-empty"):
        group_classes(y, [])


def test_mix_datasets():
    Xa, ya = torch.zeros(20, 3), torch.zeros(20, dtype=torch.long)
    Xb, yb = torch.ones(15, 3), torch.ones(15, dtype=torch.long)
    X, y, src = mix_datasets(Xa, ya, Xb, yb, 0.25, seed=0)
    assert X.shape == (20, 3) and int(src.sum()) == 5
    assert bool((X[src] == 1).all() and (X[~src] == 0).all()) and torch.equal(y, src.long())
    assert not bool(src[-5:].all())  # shuffled, not appended
    again = mix_datasets(Xa, ya, Xb, yb, 0.25, seed=0)
    assert torch.equal(again[2], src)
    # rows come from distinct source examples
    Xa2 = torch.arange(20.0)[:, None].expand(20, 3)
    Xb2 = 100 + torch.arange(15.0)[:, None].expand(15, 3)
    X2, _, src2 = mix_datasets(Xa2, ya, Xb2, yb, 0.5, seed=1, size=24)
    assert len(set(X2[:, 0].tolist())) == 24 and int(src2.sum()) == 12
    with pytest.raises(TdakitError, match="shapes differ"):
        mix_datasets(Xa, ya, torch.ones(15, 4), yb, 0.25)
    with pytest.raises(TdakitError, match="dtypes differ"):
        mix_datasets(Xa, ya, Xb.double(), yb, 0.25)
    with pytest.raises(TdakitError, match="lower size"):
        mix_datasets(Xa, ya, Xb, yb, 0.9)
    with pytest.raises(TdakitError, match="fraction_b"):
        mix_datasets(Xa, ya, Xb, yb, -0.5)
    with pytest.raises(TdakitError, match="empty"):
        mix_datasets(Xa[:0], ya[:0], Xb, yb, 0.5)
    with pytest.raises(TdakitError, match="20 examples"):
        mix_datasets(Xa, ya[:3], Xb, yb, 0.5)
