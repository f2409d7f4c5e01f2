"""Attacks: each defining formula against an independent computation, plus the shared
contract (shape (f, d), no input mutation, dtype kept, seeded randomness, bad input rejected)."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import byzctl.attacks as attacks
from byzctl.aggregators import cw_trimmed_mean, mean
from byzctl.attacks.alie import Alie, alie_z
from byzctl.attacks.base import Attack, AttackContext
from byzctl.attacks.gaussian import Gaussian
from byzctl.attacks.inf import Inf
from byzctl.attacks.ipm import Ipm
from byzctl.attacks.label_flip import LabelFlip
from byzctl.attacks.mimic import Mimic
from byzctl.attacks.minmax import MinMax
from byzctl.attacks.minsum import MinSum
from byzctl.attacks.opt_alie import OptAlie
from byzctl.attacks.opt_ipm import OptIpm
from byzctl.errors import ByzctlError, ConfigError, RuleError

NEW = ["gaussian", "inf", "alie", "ipm", "mimic", "opt_alie", "opt_ipm", "minmax", "minsum"]
"""Vector attacks of this file (label_flip maps labels, tested on its own)."""


def honest_vectors(h: int = 7, d: int = 12, *, seed: int = 0, dtype=torch.float64, offset: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    return offset + torch.randn(h, d, generator=g, dtype=dtype)  # (h, d)


def call(name: str, honest: torch.Tensor, f: int, *, seed: int = 0, **kw) -> torch.Tensor:
    """Call attack `name` with whatever context it needs (n = h + f, mean as aggregate)."""
    if name == "gaussian":
        kw.setdefault("generator", torch.Generator(device=honest.device).manual_seed(seed))
    if name in ("opt_alie", "opt_ipm"):
        kw.setdefault("aggregate", mean)
    if name in ("alie", "opt_alie"):
        kw.setdefault("n", honest.shape[0] + f)
    return getattr(attacks, name)(honest, f=f, **kw)


# -- shared contract -----------------------------------------------------------------


def test_every_attack_is_exported_by_name():
    for name in [*NEW, "label_flip", "none", "sign_flip"]:
        assert callable(getattr(attacks, name)), name


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("f", [0, 1, 3])
def test_shape_dtype_and_no_mutation(name, f):
    for dtype in (torch.float64, torch.float32):
        honest = honest_vectors(dtype=dtype)
        before = honest.clone()
        out = call(name, honest, f)
        assert out.shape == (f, honest.shape[1])
        assert out.dtype == dtype
        assert torch.equal(honest, before), f"{name} mutated its input"
        if f:
            out[0, 0] = 123.0  # the output owns its memory
            assert torch.equal(honest, before)


@pytest.mark.parametrize("name", NEW)
def test_rejects_negative_f_and_bad_shapes(name):
    honest = honest_vectors()
    with pytest.raises(RuleError, match="f=-1"):
        call(name, honest, -1)
    with pytest.raises(RuleError, match="shape"):
        call(name, honest[0], 1)
    with pytest.raises(RuleError, match="dtype"):
        call(name, honest.to(torch.int64), 1)


@pytest.mark.parametrize("name", ["alie", "opt_alie", "minmax", "minsum"])
def test_rules_needing_a_spread_reject_a_single_honest_vector(name):
    with pytest.raises(RuleError, match="h=1"):
        call(name, honest_vectors(h=1), 2)


@pytest.mark.parametrize("name", NEW)
def test_deterministic_under_a_fixed_seed(name):
    honest = honest_vectors(seed=3)
    a = call(name, honest, 2, seed=11)
    b = call(name, honest.clone(), 2, seed=11)
    assert torch.equal(a, b)


def test_colluding_attacks_repeat_one_row():
    honest = honest_vectors()
    for name in ["alie", "ipm", "mimic", "opt_alie", "opt_ipm", "minmax", "minsum"]:
        out = call(name, honest, 4)
        assert torch.equal(out, out[:1].expand(4, -1)), name


# -- gaussian ------------------------------------------------------------------------


def test_gaussian_is_sigma_times_standard_normal_from_the_generator():
    honest = honest_vectors(h=3, d=50)
    out = attacks.gaussian(honest, f=4, sigma=7.0, generator=torch.Generator().manual_seed(5))
    expected = 7.0 * torch.randn(4, 50, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(out, expected)
    assert not torch.equal(out[0], out[1]), "each Byzantine node draws its own noise"
    big = attacks.gaussian(torch.zeros(1, 20_000), f=1, sigma=3.0, generator=torch.Generator().manual_seed(0))
    assert abs(float(big.mean())) < 0.1 and abs(float(big.std()) - 3.0) < 0.1  # N(0, 9 I), not around mean(H)


def test_gaussian_needs_a_generator_and_sigma_at_least_zero():
    with pytest.raises(RuleError, match="generator"):
        attacks.gaussian(honest_vectors(), f=1)
    with pytest.raises(RuleError, match="sigma=-1"):
        attacks.gaussian(honest_vectors(), f=1, sigma=-1.0, generator=torch.Generator())
    with pytest.raises(ConfigError, match="sigma=-1"):
        Gaussian(sigma=-1.0)


def test_gaussian_differs_across_seeds():
    honest = honest_vectors()
    assert not torch.equal(call("gaussian", honest, 2, seed=0), call("gaussian", honest, 2, seed=1))


# -- inf -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "check"),
    [
        ("inf", lambda x: np.isposinf(x)),
        ("-inf", lambda x: np.isneginf(x)),
        ("nan", lambda x: np.isnan(x)),
        (float("-inf"), lambda x: np.isneginf(x)),  # what Hydra parses from `attack.value=-inf`
    ],
)
def test_inf_fills_every_coordinate(value, check):
    out = attacks.inf(honest_vectors(), f=3, value=value)
    assert check(out.numpy()).all()


def test_inf_rejects_other_values():
    with pytest.raises(RuleError, match="'big'"):
        attacks.inf(honest_vectors(), f=1, value="big")
    with pytest.raises(ConfigError, match="'big'"):
        Inf(value="big")


# -- label_flip ----------------------------------------------------------------------


def test_label_flip_maps_y_to_c_minus_1_minus_y():
    labels = torch.tensor([0, 1, 2, 9, 4, 9, 0], dtype=torch.int64)
    before = labels.clone()
    out = attacks.label_flip(labels, num_classes=10)
    assert out.tolist() == [10 - 1 - y for y in before.tolist()]
    assert out.dtype == torch.int64
    assert torch.equal(labels, before)
    assert torch.equal(attacks.label_flip(out, num_classes=10), labels)  # an involution
    assert attacks.label_flip(torch.tensor([0, 1, 2], dtype=torch.uint8), num_classes=3).tolist() == [2, 1, 0]


def test_label_flip_rejects_bad_labels():
    with pytest.raises(RuleError, match="max=10"):
        attacks.label_flip(torch.tensor([0, 10]), num_classes=10)
    with pytest.raises(RuleError, match="min=-1"):
        attacks.label_flip(torch.tensor([-1, 3]), num_classes=10)
    with pytest.raises(RuleError, match="dtype"):
        attacks.label_flip(torch.tensor([0.0, 1.0]), num_classes=10)
    with pytest.raises(RuleError, match="num_classes=0"):
        attacks.label_flip(torch.tensor([0]), num_classes=0)


def test_label_flip_config_poisons_data_and_sends_its_own_update():
    cfg = LabelFlip()
    assert cfg.poisons_data and cfg.knowledge == "local"
    assert cfg.poison(torch.tensor([0, 3]), num_classes=4).tolist() == [3, 0]
    own = honest_vectors(h=1)
    ctx = AttackContext(n=5, generator=torch.Generator())
    assert torch.equal(cfg(own, f=2, ctx=ctx), own.expand(2, -1))


# -- alie ----------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "f"), [(10, 1), (11, 3), (20, 4), (50, 12), (7, 2)])
def test_alie_z_is_the_papers(n, f):
    s = math.floor(n / 2 + 1) - f
    assert alie_z(n, f) == pytest.approx(norm.ppf((n - s) / n), abs=1e-12)


@pytest.mark.parametrize(("n", "f"), [(10, 6), (4, 3), (3, 2)])
def test_alie_z_undefined_without_an_honest_majority(n, f):
    with pytest.raises(RuleError, match=f"n={n}, f={f}"):
        alie_z(n, f)
    with pytest.raises(RuleError, match="s="):
        attacks.alie(honest_vectors(h=max(n - f, 2)), f=f, n=n)


def test_alie_is_mean_minus_z_std_per_coordinate():
    honest = honest_vectors(h=8, d=5)
    f, n = 3, 11
    x = honest.numpy()
    z = norm.ppf((n - (math.floor(n / 2 + 1) - f)) / n)
    expected = np.empty(x.shape[1])
    for j in range(x.shape[1]):
        col = x[:, j]
        m = sum(col) / len(col)
        sd = math.sqrt(sum((v - m) ** 2 for v in col) / (len(col) - 1))
        expected[j] = m - z * sd
    out = attacks.alie(honest, f=f, n=n)
    np.testing.assert_allclose(out.numpy(), np.tile(expected, (f, 1)), rtol=1e-12)
    # n defaults to h + f; an explicit z overrides the formula
    torch.testing.assert_close(attacks.alie(honest, f=f), out)
    np.testing.assert_allclose(attacks.alie(honest, f=1, z=2.0)[0].numpy(), x.mean(0) - 2.0 * x.std(0, ddof=1))


@pytest.mark.parametrize("z", [float("nan"), float("inf"), -float("inf")])
def test_alie_config_refuses_a_non_finite_z(z):
    with pytest.raises(ConfigError, match=f"z={z}"):
        Alie(z=z)
    assert Alie(z=-1.5).z == -1.5 and Alie().z is None


# -- ipm -----------------------------------------------------------------------------


def test_ipm_is_minus_epsilon_times_the_mean():
    honest = honest_vectors()
    x = honest.numpy()
    np.testing.assert_allclose(attacks.ipm(honest, f=2).numpy(), np.tile(-0.1 * x.mean(0), (2, 1)))
    np.testing.assert_allclose(attacks.ipm(honest, f=1, epsilon=3.0)[0].numpy(), -3.0 * x.mean(0))
    with pytest.raises(RuleError, match="epsilon=-1"):
        attacks.ipm(honest, f=1, epsilon=-1.0)
    with pytest.raises(ConfigError, match="epsilon=-1"):
        Ipm(epsilon=-1.0)


# -- mimic ---------------------------------------------------------------------------


def spread_along_z(x: np.ndarray, z: np.ndarray) -> float:
    proj = x @ z
    return float(((proj - proj.mean()) ** 2).mean())


@pytest.mark.parametrize("seed", range(5))
def test_mimic_copies_the_honest_vector_that_maximises_variance_along_the_top_direction(seed):
    rng = np.random.default_rng(seed)
    h, d, f = 9, 6, 3
    x = rng.normal(size=(h, d)) * np.array([5.0, 1, 1, 0.5, 0.5, 0.2]) + 2.0  # a clear top direction
    centered = x - x.mean(0)
    z = np.linalg.svd(centered)[2][0]  # top principal direction, independently of the code's Gram route
    spreads = [spread_along_z(np.vstack([x, np.tile(x[i], (f, 1))]), z) for i in range(h)]
    best = int(np.argmax(spreads))
    out = attacks.mimic(torch.from_numpy(x), f=f)
    np.testing.assert_array_equal(out.numpy(), np.tile(x[best], (f, 1)))


def test_mimic_target_pins_the_copied_worker():
    honest = honest_vectors()
    assert torch.equal(attacks.mimic(honest, f=2, target=4), honest[4].expand(2, -1))
    with pytest.raises(RuleError, match="target=7, h=7"):
        attacks.mimic(honest, f=1, target=7)
    with pytest.raises(ConfigError, match="target=-1"):
        Mimic(target=-1)
    same = torch.ones(4, 3)
    assert torch.equal(attacks.mimic(same, f=1), same[:1])  # no spread: the first worker


# -- opt_alie / opt_ipm --------------------------------------------------------------


def deviation(aggregate, honest: torch.Tensor, byz: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(aggregate(torch.cat([honest, byz])) - honest.mean(0)))


@pytest.mark.parametrize("rule", ["cw_trimmed_mean", "mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_opt_alie_deviates_more_than_alie(rule, seed):
    honest = honest_vectors(h=8, d=30, seed=seed)
    f, n = 3, 11
    aggregate = functools.partial(cw_trimmed_mean, f=f) if rule == "cw_trimmed_mean" else mean
    base = deviation(aggregate, honest, attacks.alie(honest, f=f, n=n))
    out = attacks.opt_alie(honest, f=f, n=n, aggregate=aggregate)
    assert deviation(aggregate, honest, out) > 1.05 * base
    # still an ALIE vector: mean - z std with one z >= 0 for every coordinate
    zs = (honest.mean(0) - out[0]) / honest.std(0)
    torch.testing.assert_close(zs, zs[:1].expand_as(zs))
    assert 0 <= float(zs[0]) <= 10.0 + 1e-9


@pytest.mark.parametrize("rule", ["cw_trimmed_mean", "mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_opt_ipm_deviates_more_than_ipm(rule, seed):
    honest = honest_vectors(h=8, d=30, seed=seed)
    f = 3
    aggregate = functools.partial(cw_trimmed_mean, f=f) if rule == "cw_trimmed_mean" else mean
    base = deviation(aggregate, honest, attacks.ipm(honest, f=f))
    out = attacks.opt_ipm(honest, f=f, aggregate=aggregate)
    assert deviation(aggregate, honest, out) > 1.05 * base
    eps = -out[0] / honest.mean(0)
    torch.testing.assert_close(eps, eps[:1].expand_as(eps))
    assert 0 <= float(eps[0]) <= 10.0 + 1e-9


def test_opt_search_ends_at_the_bound_against_the_plain_mean():
    honest = honest_vectors(h=6, d=8)
    out = attacks.opt_ipm(honest, f=2, aggregate=mean, high=4.0)
    torch.testing.assert_close(out[0], -4.0 * honest.mean(0))


@pytest.mark.parametrize("name", ["opt_alie", "opt_ipm"])
def test_opt_attacks_need_the_aggregator(name):
    with pytest.raises(RuleError, match="aggregat"):
        getattr(attacks, name)(honest_vectors(), f=2, aggregate=None)
    with pytest.raises(RuleError, match="low=2"):
        getattr(attacks, name)(honest_vectors(), f=2, aggregate=mean, low=2.0, high=1.0)
    with pytest.raises(RuleError, match=r"shape \(\)"):
        getattr(attacks, name)(honest_vectors(), f=2, aggregate=lambda x: x.sum())


@pytest.mark.parametrize("cls", [OptAlie, OptIpm])
def test_opt_configs_reject_bad_searches(cls):
    with pytest.raises(ConfigError, match="grid=1"):
        cls(grid=1)
    with pytest.raises(ConfigError, match="steps=-1"):
        cls(steps=-1)


# -- minmax / minsum -----------------------------------------------------------------


def sq_dists(x: np.ndarray) -> np.ndarray:
    h = len(x)
    out = np.zeros((h, h))
    for i in range(h):
        for j in range(h):
            out[i, j] = sum((x[i] - x[j]) ** 2)
    return out


def assert_gamma(out: np.ndarray, mu: np.ndarray, p: np.ndarray, gamma_star: float) -> None:
    """out = mu + gamma p with gamma within the search's relative tolerance below gamma_star."""
    gamma = float((out[0] - mu) @ p / (p @ p))
    np.testing.assert_allclose(out, np.tile(mu + gamma * p, (len(out), 1)), rtol=1e-12, atol=1e-12)
    assert gamma_star * (1 - 1e-5) <= gamma <= gamma_star * (1 + 1e-9)


def direction_of(x: np.ndarray, direction: str) -> np.ndarray:
    mu = x.mean(0)
    return {"unit_vec": -mu / np.linalg.norm(mu), "std": -x.std(0, ddof=1), "sign": -np.sign(mu)}[direction]


@pytest.mark.parametrize("direction", ["unit_vec", "std", "sign"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minmax_is_the_largest_gamma_within_the_max_distance(direction, seed):
    x = honest_vectors(h=7, d=9, seed=seed).numpy()
    mu, p, dist = x.mean(0), direction_of(x, direction), sq_dists(x)
    bound = dist.max()
    out = attacks.minmax(torch.from_numpy(x), f=2, direction=direction).numpy()
    assert max(sum((out[0] - xi) ** 2) for xi in x) <= bound * (1 + 1e-9)
    # closed form: the smallest root over i of ||mu + g p - x_i||^2 = bound
    a = p @ p
    roots = [((-(2 * p @ (mu - xi))) + math.sqrt((2 * p @ (mu - xi)) ** 2 - 4 * a * (sum((mu - xi) ** 2) - bound))) / (2 * a) for xi in x]
    assert_gamma(out, mu, p, min(roots))


@pytest.mark.parametrize("direction", ["unit_vec", "std", "sign"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minsum_is_the_largest_gamma_within_the_sum_of_distances(direction, seed):
    x = honest_vectors(h=7, d=9, seed=seed).numpy()
    mu, p, dist = x.mean(0), direction_of(x, direction), sq_dists(x)
    bound = dist.sum(1).max()
    out = attacks.minsum(torch.from_numpy(x), f=3, direction=direction).numpy()
    assert sum(sum((out[0] - xi) ** 2) for xi in x) <= bound * (1 + 1e-9)
    gamma = math.sqrt((bound - sum(sum((mu - xi) ** 2) for xi in x)) / (len(x) * (p @ p)))
    assert_gamma(out, mu, p, gamma)


@pytest.mark.parametrize("name", ["minmax", "minsum"])
def test_minmax_minsum_bound_holds_far_from_gamma_init_and_in_float32(name):
    x = honest_vectors(h=6, d=40, seed=4, dtype=torch.float32) * 1e-3  # gamma* far below gamma_init = 10
    out = getattr(attacks, name)(x, f=1)
    d_out = ((out[0] - x) ** 2).sum(1).double()  # (h,)
    d_hon = torch.cdist(x.double(), x.double()) ** 2
    lhs, rhs = (d_out.max(), d_hon.max()) if name == "minmax" else (d_out.sum(), d_hon.sum(1).max())
    assert float(lhs) <= float(rhs) * (1 + 1e-5)
    assert float(lhs) >= float(rhs) * (1 - 1e-3), "gamma is not the largest feasible one"


@pytest.mark.parametrize("cls", [MinMax, MinSum])
def test_minmax_minsum_reject_bad_parameters(cls):
    name = cls().name
    with pytest.raises(RuleError, match="'up'"):
        getattr(attacks, name)(honest_vectors(), f=1, direction="up")
    with pytest.raises(RuleError, match="gamma_init=0"):
        getattr(attacks, name)(honest_vectors(), f=1, gamma_init=0.0)
    with pytest.raises(ConfigError, match="tol=2"):
        cls(tol=2.0)


def test_minmax_with_identical_honest_vectors_sends_their_mean():
    same = torch.ones(5, 4, dtype=torch.float64)
    for name in ["minmax", "minsum"]:
        assert torch.equal(getattr(attacks, name)(same, f=2), same[:2])


# -- configs -------------------------------------------------------------------------

CONFIGS = {
    "gaussian": Gaussian,
    "inf": Inf,
    "label_flip": LabelFlip,
    "alie": Alie,
    "ipm": Ipm,
    "mimic": Mimic,
    "opt_alie": OptAlie,
    "opt_ipm": OptIpm,
    "minmax": MinMax,
    "minsum": MinSum,
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_points_at_itself_and_its_function(name):
    cls = CONFIGS[name]
    cfg = cls()
    assert cfg.name == name
    assert cfg._target_ == f"{cls.__module__}.{cls.__qualname__}"
    assert cls.fn is getattr(attacks, name)
    ctx_fields = {fl.name for fl in dataclasses.fields(AttackContext)}
    assert set(cls.uses_context) <= ctx_fields
    own = {fl.name for fl in dataclasses.fields(cls)} - {fl.name for fl in dataclasses.fields(Attack)}
    assert own == set(cfg.params())


@pytest.mark.parametrize("name", NEW)
def test_config_call_wires_the_context(name):
    honest = honest_vectors(h=8)
    f = 2
    ctx = AttackContext(n=10, generator=torch.Generator().manual_seed(0), aggregate=functools.partial(cw_trimmed_mean, f=f))
    out = CONFIGS[name]()(honest, f=f, ctx=ctx)
    assert out.shape == (f, honest.shape[1])


def test_every_config_field_has_a_docstring():
    import ast
    import inspect

    for name, cls in CONFIGS.items():
        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign) and node.target.id not in {"_target_", "name", "knowledge", "fn", "uses_context", "poisons_data"}:
                nxt = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), f"{name}.{node.target.id}"


@pytest.mark.parametrize(
    "overrides",
    [
        *[[f"attack={name}"] for name in ["gaussian", "ipm", "label_flip", "minsum", "opt_alie", "opt_ipm"]],
        # Hydra's override grammar reads a bare `inf` as a float, so that option is quoted;
        # -inf and nan reach the str field as floats and come back as their names.
        ['attack="inf"', "attack.value=-inf"],
        ['attack="inf"', "attack.value=nan"],
        ["attack=minmax", "attack.direction=sign"],
        ["attack=alie", "attack.z=1.5"],
        ["attack=mimic", "attack.target=2"],
    ],
)
def test_conf_option_composes_and_builds(overrides):
    """Every conf/attack option (and a parameter of each that has one) composes and builds."""
    from byzctl.config.build import build
    from byzctl.config.compose import compose

    attack = build(compose(overrides).attack, "attack")
    assert isinstance(attack, CONFIGS[overrides[0].split("=")[1].strip('"')])
    if len(overrides) > 1:
        key, value = overrides[1].split("=")
        got = getattr(attack, key.split(".")[1])
        assert str(getattr(got, "value", got)) == value


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["attack=minmax", "attack.direction=unit_vector"], "unit_vector"),
        (["attack=gaussian", "attack.sigma=-2"], "sigma=-2"),
        (["attack=alie", "attack.zz=1"], "zz"),
    ],
)
def test_conf_bad_values_fail_naming_them(overrides, match):
    from byzctl.config.build import build
    from byzctl.config.compose import compose

    with pytest.raises(Exception, match=match):
        build(compose(overrides).attack, "attack")


def test_errors_are_byzctl_errors():
    assert issubclass(RuleError, ByzctlError) and issubclass(ConfigError, ByzctlError)


# -- CUDA ----------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NEW)
def test_cpu_equals_cuda(name):
    honest = honest_vectors(h=8, d=64)
    cpu = call(name, honest, 3, generator=torch.Generator().manual_seed(0)) if name == "gaussian" else call(name, honest, 3)
    gpu_honest = honest.cuda()
    before = gpu_honest.clone()
    kw = {"generator": torch.Generator().manual_seed(0)} if name == "gaussian" else {}
    gpu = call(name, gpu_honest, 3, **kw)
    assert gpu.device.type == "cuda" and gpu.dtype == honest.dtype
    assert torch.equal(gpu_honest, before)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-8, equal_nan=True)
