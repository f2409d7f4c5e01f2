"""Named semantics where the literature disagrees: each form against a small hand-computed
example, the limits that go with it, the config values that select it, and the paper and
convention every rule and attack states in `byzctl list ... --json`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import byzctl
from torch import nn

from byzctl.aggregators.geometric_median import GeometricMedian, geometric_median
from byzctl.aggregators.krum import Krum, krum
from byzctl.aggregators.multi_krum import multi_krum
from byzctl.attacks.alie import Alie, alie
from byzctl.config.experiment import Experiment
from byzctl.errors import ConfigError, RuleError
from byzctl.learning import HonestLearner, MomentumInit


def col(*v: float) -> torch.Tensor:
    return torch.tensor([[x] for x in v], dtype=torch.float64)  # (n, 1)


# -- Krum's neighbour count ------------------------------------------------------------------
X5 = col(0, 1, 3, 10, 11)
# squared distances, by row:   0: 1 9 100 121 | 1: 1 4 81 100 | 3: 9 4 49 64 | 10: 100 81 49 1 | 11: 121 100 64 1
# n_f_2 (k = 5-1-2 = 2): scores 10, 5, 13, 50, 65 -> x=1;  n_f_1 (k = 3): 110, 86, 62, 131, 165 -> x=3


def test_krum_neighbours_pick_the_hand_computed_row():
    assert krum(X5, f=1).item() == 1.0
    assert krum(X5, f=1, neighbours="n_f_2").item() == 1.0
    assert krum(X5, f=1, neighbours="n_f_1").item() == 3.0


def test_multi_krum_neighbours_average_the_hand_computed_rows():
    # n_f_2: the m = 4 best of (10, 5, 13, 50, 65) are 1, 0, 3, 10; n_f_1: 3, 1, 0, 10
    assert multi_krum(X5, f=1).item() == pytest.approx(14 / 4)
    assert multi_krum(X5, f=1, m=2, neighbours="n_f_1").item() == pytest.approx((3 + 1) / 2)
    x4 = col(0, 1, 3, 10)  # k = 4-1-1 = 2: scores 10, 5, 13, 130 -> the best 3 are 1, 0, 3
    assert multi_krum(x4, f=1, neighbours="n_f_1").item() == pytest.approx(4 / 3)


def test_krum_limit_follows_the_neighbour_count():
    x4 = col(0, 1, 3, 10)
    with pytest.raises(RuleError, match=r"krum needs n > 2f \+ 2. Got n=4, f=1"):
        krum(x4, f=1)
    assert krum(x4, f=1, neighbours="n_f_1").item() == 1.0  # n > 2f suffices: scores 10, 5, 13, 130
    with pytest.raises(RuleError, match=r"multi_krum needs n > 2f \(neighbours=n_f_1\). Got n=4, f=2"):
        multi_krum(x4, f=2, neighbours="n_f_1")


def test_krum_neighbours_is_a_config_value_checked_before_launch(compose):
    cfg = compose(["aggregator=krum", "nodes.honest=3", "nodes.byzantine=1"])
    with pytest.raises(ConfigError, match=r"n > 2f \+ 2. Got n=4, f=1"):
        Experiment.from_cfg(cfg)
    exp = Experiment.from_cfg(compose(["aggregator=krum", "aggregator.neighbours=n_f_1", "nodes.honest=3", "nodes.byzantine=1"]))
    assert isinstance(exp.aggregator, Krum) and exp.aggregator.neighbours.value == "n_f_1"
    proc = byzctl("run", "aggregator=krum", "aggregator.neighbours=n_f_3")
    assert proc.returncode == 2 and "n_f_3" in proc.stderr and "Traceback" not in proc.stderr


# -- geometric median's starting point --------------------------------------------------------
def test_geometric_median_first_iterate_from_each_start():
    x = col(1, 2, 4)
    # from 0: weights 1/|x_i| = 1, 1/2, 1/4 -> (1 + 1 + 1) / 1.75 = 12/7
    assert geometric_median(x, init="zero", max_iter=1).item() == pytest.approx(12 / 7)
    # from the mean 7/3: weights 1/(4/3), 1/(1/3), 1/(5/3) = 3/4, 3, 3/5 -> 9.15 / 4.35
    assert geometric_median(x, max_iter=1).item() == pytest.approx(9.15 / 4.35)
    assert geometric_median(x, init="mean", max_iter=1).item() == pytest.approx(9.15 / 4.35)
    # both converge to the median, 2
    assert geometric_median(x, init="zero", max_iter=500, tol=0.0).item() == pytest.approx(2.0, abs=1e-4)
    assert GeometricMedian().init.value == "mean"
    with pytest.raises(RuleError, match=r"init must be one of \['mean', 'zero'\]. Got init='median'"):
        geometric_median(x, init="median")


def test_unknown_neighbour_form_names_the_value():
    with pytest.raises(RuleError, match=r"krum: neighbours must be one of \['n_f_2', 'n_f_1'\]. Got neighbours='n-f-1'"):
        krum(X5, f=1, neighbours="n-f-1")


# -- the first momentum -----------------------------------------------------------------------
def learner(init: str) -> tuple[HonestLearner, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    params = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    return HonestLearner(model, x, y, batch_size=4, momentum=0.9, seed=1, momentum_init=init), params


def test_momentum_init_gradient_sends_g_and_zero_sends_a_tenth_of_it():
    ref, p = learner("gradient")
    g1, g2 = ref.gradient(p, 0), ref.gradient(p, 1)
    grad, _ = learner("gradient")
    zero, _ = learner("zero")
    assert torch.allclose(grad.momentum_gradient(p, 0), g1)
    assert torch.allclose(zero.momentum_gradient(p, 0), 0.1 * g1)
    assert torch.allclose(grad.momentum_gradient(p, 1), 0.9 * g1 + 0.1 * g2)
    assert torch.allclose(zero.momentum_gradient(p, 1), 0.09 * g1 + 0.1 * g2)


def test_momentum_init_is_a_run_key(compose):
    assert compose([]).momentum_init == MomentumInit.gradient
    assert compose(["momentum_init=zero"]).momentum_init == MomentumInit.zero
    proc = byzctl("run", "momentum_init=half")
    assert proc.returncode == 2 and "half" in proc.stderr and "Traceback" not in proc.stderr


# -- ALIE's sign -------------------------------------------------------------------------------
def test_alie_z_subtracts_and_tau_adds():
    h = col(0, 2)  # mean 1, sample std sqrt(2)
    assert alie(h, f=2, z=1.0)[:, 0].tolist() == pytest.approx([1 - math.sqrt(2)] * 2)
    assert alie(h, f=1, tau=1.0)[0, 0].item() == pytest.approx(1 + math.sqrt(2))
    assert torch.equal(alie(h, f=1, tau=-0.5), alie(h, f=1, z=0.5))
    # the paper's z for n = 5, f = 1: s = floor(5/2 + 1) - 1 = 2, z = Phi^-1(3/5) > 0: below the mean
    assert alie(h, f=1, n=5)[0, 0].item() < 1.0
    with pytest.raises(RuleError, match="not both"):
        alie(h, f=1, z=1.0, tau=1.0)
    with pytest.raises(ConfigError, match=r"set one. Got z=1.0, tau=2.0"):
        Alie(z=1.0, tau=2.0)


# -- paper and convention in the catalog ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["aggregators", "attacks", "preaggs"])
def test_every_rule_and_attack_states_its_paper_and_convention(kind):
    proc = byzctl("list", kind, "--json")
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    assert entries
    for e in entries:
        assert e["paper"].strip() and e["convention"].strip(), e["name"]
    by_name = {e["name"]: e for e in entries}
    if kind == "aggregators":
        assert "n_f_1" in by_name["krum"]["convention"] and "n_f_1" in by_name["multi_krum"]["convention"]
        assert "init=zero" in by_name["geometric_median"]["convention"]
        assert by_name["krum"]["params"]["neighbours"]["default"] == "n_f_2"
    if kind == "attacks":
        assert "mean - z * std" in by_name["alie"]["convention"] and "tau" in by_name["alie"]["convention"]
