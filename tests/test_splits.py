"""Data splits that do not move with the run's seed: a stratified held-out test split fixed
by `dataset.split_seed`, and the Dirichlet partition's cuts (round or floor)."""

from __future__ import annotations

import torch
from conftest import byzctl

from byzctl.config.experiment import Experiment
from byzctl.data.base import Cuts, split_test, stratified
from byzctl.data.mnist_subset import MnistSubset
from byzctl.data.partition import cut_points, partition
from byzctl.data.synthetic import Synthetic
from byzctl.node.shards import load_shard


def test_changing_seed_leaves_the_test_split_unchanged(compose):
    splits = {}
    for seed in (0, 1, 2):
        exp = Experiment.from_cfg(compose([f"seed={seed}"]))
        splits[seed] = exp.dataset.load(seed)
    ids = splits[0].test_ids
    assert ids is not None and len(ids) == 1000
    for seed in (1, 2):
        assert torch.equal(splits[seed].test_ids, ids)  # same row ids
        assert torch.equal(splits[seed].train_ids, splits[0].train_ids)
        assert torch.equal(splits[seed].x_test, splits[0].x_test)
    # stratified: the bundled digits have 500 per class, so exactly 100 per class are held out
    assert torch.bincount(splits[0].y_test, minlength=10).tolist() == [100] * 10
    assert set(ids.tolist()).isdisjoint(splits[0].train_ids.tolist())
    assert len(splits[0].train_ids) == 4000


def test_nodes_evaluate_on_the_same_digits_whatever_the_seed(compose):
    a = Experiment.from_cfg(compose(["seed=0"]))
    b = Experiment.from_cfg(compose(["seed=3"]))
    spec = next(s for s in a.plan() if s.shard >= 0 and not s.byzantine)
    sa, sb = load_shard(a, spec), load_shard(b, spec)
    assert torch.equal(sa.x_test, sb.x_test)  # evaluated on the same digits
    assert not torch.equal(sa.y_train, sb.y_train)  # the shard itself is part of the seed's randomness


def test_split_seed_moves_the_split_and_null_follows_the_run_seed():
    base = MnistSubset().load(0)
    assert not torch.equal(MnistSubset(split_seed=7).load(0).test_ids, base.test_ids)
    assert torch.equal(MnistSubset(split_seed=None).load(0).test_ids, base.test_ids)
    assert not torch.equal(MnistSubset(split_seed=None).load(1).test_ids, base.test_ids)
    s0, s1 = Synthetic().load(0), Synthetic().load(5)  # generated data are fixed too
    assert torch.equal(s0.x_test, s1.x_test)


def test_stratified_counts_are_proportional_with_largest_remainders():
    y = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    # k = 5: quotas 2.5, 1.5, 1.0 -> floors 2, 1, 1; one left goes to the largest remainder,
    # a tie of 0.5 between classes 0 and 1 -> the lower label: counts 3, 1, 1
    picked = stratified(y, 5, torch.Generator().manual_seed(0))
    assert torch.bincount(y[picked], minlength=3).tolist() == [3, 1, 1]
    assert picked.tolist() == sorted(picked.tolist())
    # k = 4: quotas 2.0, 1.2, 0.8 -> floors 2, 1, 0; one left -> class 2 (remainder 0.8)
    assert torch.bincount(y[stratified(y, 4, torch.Generator().manual_seed(1))], minlength=3).tolist() == [2, 1, 1]
    s = split_test(torch.arange(10.0)[:, None], y, test_size=5, seed=0, num_classes=3)
    assert torch.equal(s.x_test[:, 0].long(), s.test_ids) and torch.equal(s.x_train[:, 0].long(), s.train_ids)


def test_dirichlet_cut_points_round_or_floor():
    p = torch.tensor([0.37, 0.33, 0.30], dtype=torch.float64)
    # cumsum[:-1] * 10 = 3.7, 7.0: round -> 4, 7 (shards 4, 3, 3); floor -> 3, 7 (shards 3, 4, 3)
    assert cut_points(p, 10, Cuts.round) == [4, 7]
    assert cut_points(p, 10, "floor") == [3, 7]
    # round is half to even: 2.5 -> 2, 7.5 -> 8
    assert cut_points(torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64), 10) == [2, 8]


def test_dirichlet_partition_forms_share_the_draw_and_differ_by_the_cuts():
    y = MnistSubset().load(0).y_train
    rounded = partition(y, 10, scheme="dirichlet", seed=0, alpha=0.3)
    floored = partition(y, 10, scheme="dirichlet", seed=0, alpha=0.3, cuts="floor")
    for parts in (rounded, floored):
        assert sum(len(p) for p in parts) == len(y)
        assert len(torch.cat(parts).unique()) == len(y)  # disjoint, complete
    # the same Dirichlet draws: each class's cut moves by less than one sample per cut point
    for a, b in zip(rounded, floored):
        for c in range(10):
            assert abs(int((y[a] == c).sum()) - int((y[b] == c).sum())) <= 1


def test_cfg_job_shows_the_split_and_the_semantics(tmp_path):
    proc = byzctl("run", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for line in ("split_seed: 0", "cuts: round", "test_size: 1000", "momentum_init: gradient"):
        assert line in proc.stdout, line
    proc = byzctl("run", "--cfg", "job", "dataset.cuts=floor", "dataset.split_seed=null", "aggregator=krum",
                  "aggregator.neighbours=n_f_1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cuts: floor" in proc.stdout and "split_seed: null" in proc.stdout and "neighbours: n_f_1" in proc.stdout
