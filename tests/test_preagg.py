"""Pre-aggregators (nnm, bucketing, clipping, arc): agreement with per-definition references
(explicit loops), properties, limits, dtypes, non-finite rows, seeded randomness, chaining,
and CPU == CUDA."""

from __future__ import annotations

import math
import resource
import time

import pytest
import torch

from byzctl.aggregators import krum, mean
from byzctl.config.schema import options
from byzctl.errors import ConfigError, RuleError
from byzctl.preagg import arc, bucketing, chain, clipping, nnm

INF = float("inf")


def rnd(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- references: the papers' definitions, written with explicit loops ---


def ref_nnm(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    rows = []
    for i in range(n):
        near = sorted(range(n), key=lambda j: (float(((x[i] - x[j]) ** 2).sum()), j))[: n - f]
        rows.append(torch.stack([x[j] for j in near]).mean(dim=0))
    return torch.stack(rows)


def ref_clip(x: torch.Tensor, c: float) -> torch.Tensor:
    out = []
    for xi in x:
        norm = float(xi.norm())
        out.append(xi * min(1.0, c / norm) if norm > 0 else xi)
    return torch.stack(out)


def ref_arc(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    k = math.floor(2 * (f / n) * (n - f))
    norms = sorted((float(r.norm()) for r in x), reverse=True)
    return ref_clip(x, norms[k])


def ref_bucketing(x: torch.Tensor, s: int, perm: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    buckets = [perm[i : i + s].tolist() for i in range(0, n, s)]
    return torch.stack([torch.stack([x[j] for j in b]).mean(dim=0) for b in buckets])


# --- hand-checked values ---

X5 = torch.tensor(
    [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [10.0, 10.0, 10.0]], dtype=torch.float64
)


def test_nnm_by_hand():
    # f = 1: rows 0..3 mix their 4 nearest, always rows 0..3 -> (1/4, 1/4, 1/4);
    # row 4 mixes itself with rows 1, 2, 3 (all at distance^2 181, row 0 at 300).
    out = nnm(X5, f=1)
    torch.testing.assert_close(out[:4], torch.full((4, 3), 0.25, dtype=torch.float64))
    torch.testing.assert_close(out[4], (X5[1] + X5[2] + X5[3] + X5[4]) / 4)


def test_clipping_by_hand():
    out = clipping(X5, f=1, threshold=1.0)
    torch.testing.assert_close(out[:4], X5[:4])  # norms 0 or 1: untouched
    torch.testing.assert_close(out[4], torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64))
    # Adaptive: the lower median of the norms (0, 1, 1, 1, 17.3) is 1.
    torch.testing.assert_close(clipping(X5, f=1), out)


def test_arc_by_hand():
    # n = 5, f = 1: k = floor(2 * 1/5 * 4) = 1 vector clipped, to the next largest norm 1.
    out = arc(X5, f=1)
    torch.testing.assert_close(out[:4], X5[:4])
    torch.testing.assert_close(out[4], torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64))


def test_bucketing_by_hand():
    x = torch.arange(10.0, dtype=torch.float64)[:, None].repeat(1, 2)  # row i = (i, i)
    out = bucketing(x, f=0, bucket_size=4, generator=gen(3))
    perm = torch.randperm(10, generator=gen(3))
    assert out.shape == (3, 2)  # buckets of 4, 4 and the 2 left over
    torch.testing.assert_close(out, ref_bucketing(x, 4, perm))


# --- agreement with references on random data ---


@pytest.mark.parametrize("seed", range(4))
def test_match_references(seed):
    g = gen(seed)
    n, d, f = 11, 7, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:f] += 5 * torch.randn(f, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(nnm(x, f=f), ref_nnm(x, f))
    torch.testing.assert_close(arc(x, f=f), ref_arc(x, f))
    torch.testing.assert_close(clipping(x, f=f, threshold=1.5), ref_clip(x, 1.5))
    med = sorted(float(r.norm()) for r in x)[(n - 1) // 2]
    torch.testing.assert_close(clipping(x, f=f), ref_clip(x, med))
    for s in (1, 2, 3):
        if -(-n // s) > 2 * (f if s < 3 else 1):
            ff = f if s < 3 else 1
            perm = torch.randperm(n, generator=gen(seed + 10))
            torch.testing.assert_close(bucketing(x, f=ff, bucket_size=s, generator=gen(seed + 10)), ref_bucketing(x, s, perm))


# --- properties ---


def test_nnm_is_permutation_equivariant():
    x = rnd(12, 6, seed=1)
    perm = torch.randperm(12, generator=gen(2))
    torch.testing.assert_close(nnm(x[perm], f=3), nnm(x, f=3)[perm])


@pytest.mark.parametrize("fn", [nnm, arc, clipping])
def test_row_preserving_rules_are_permutation_equivariant(fn):
    x = rnd(9, 5, seed=3)
    perm = torch.randperm(9, generator=gen(4))
    torch.testing.assert_close(fn(x[perm], f=2), fn(x, f=2)[perm])


def test_f0_equalities():
    x = rnd(8, 5, seed=4)
    torch.testing.assert_close(nnm(x, f=0), x.mean(dim=0).expand(8, 5))  # every row mixes all
    torch.testing.assert_close(arc(x, f=0), x)  # k = 0: nothing clipped
    torch.testing.assert_close(clipping(x, f=0, threshold=INF), x)
    one = bucketing(x, f=0, bucket_size=8, generator=gen())  # one bucket: the mean
    torch.testing.assert_close(one, x.mean(dim=0, keepdim=True))
    rows = bucketing(x, f=0, bucket_size=1, generator=gen(5))  # buckets of one: a shuffle
    torch.testing.assert_close(rows, x[torch.randperm(8, generator=gen(5))])


@pytest.mark.parametrize("fn", [nnm, arc, clipping])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_inputs_unchanged(fn, dtype):
    v = torch.linspace(-1, 2, 6, dtype=dtype)
    x = v.repeat(7, 1)
    out = fn(x, f=2)
    assert out.dtype == dtype
    torch.testing.assert_close(out, x, rtol=1e-6, atol=1e-6)


def test_bucketing_is_seeded_and_keeps_the_sum():
    x = rnd(10, 4, seed=6)
    a = bucketing(x, f=1, bucket_size=3, generator=gen(7))
    b = bucketing(x, f=1, bucket_size=3, generator=gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, bucketing(x, f=1, bucket_size=3, generator=gen(8)))
    sizes = torch.tensor([3.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close((a * sizes[:, None]).sum(dim=0), x.sum(dim=0))


def test_nnm_then_robust_rule_survives_outliers():
    g = gen(3)
    n, d, f = 11, 20, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:f] = 1e6 * (1 + torch.rand(f, d, generator=g, dtype=torch.float64))
    honest = x[f:]
    mixed = nnm(x, f=f)
    # Each honest row mixes exactly the n - f = 8 honest rows: the honest mean.
    torch.testing.assert_close(mixed[f:], honest.mean(dim=0).expand(n - f, d))
    torch.testing.assert_close(krum(mixed, f=f), honest.mean(dim=0))


@pytest.mark.parametrize("fn", [arc, clipping])
def test_clipped_norms_are_bounded(fn):
    g = gen(5)
    x = torch.randn(11, 8, generator=g, dtype=torch.float64)
    x[:3] *= 1e6
    out = fn(x, f=3)
    honest_max = float(x[3:].norm(dim=1).max())
    assert float(out.norm(dim=1).max()) <= honest_max * (1 + 1e-12)
    # Directions are kept.
    cos = torch.nn.functional.cosine_similarity(out, x, dim=1)
    torch.testing.assert_close(cos, torch.ones(11, dtype=torch.float64))


def test_non_finite_rows():
    g = gen(6)
    n, d, f = 11, 6, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[0, 2] = float("nan")
    x[1] = INF
    x[2, 0] = -INF
    # nnm: finite rows never mix non-finite ones; non-finite rows pass through unchanged.
    out = nnm(x, f=f)
    assert torch.isfinite(out[f:]).all()
    torch.testing.assert_close(out[f:], ref_nnm(x[f:], 0).expand(n - f, d))
    assert torch.equal(out[:f].isnan(), x[:f].isnan()) and torch.equal(out[:f].nan_to_num(), x[:f].nan_to_num())
    # clipping, arc: non-finite rows become zero, the rest is as without them.
    for fn in (clipping, arc):
        got = fn(x, f=f)
        assert torch.isfinite(got).all() and torch.equal(got[:f], torch.zeros(f, d, dtype=torch.float64))
    torch.testing.assert_close(clipping(x, f=f, threshold=1.0)[f:], ref_clip(x[f:], 1.0))
    # bucketing: at most f buckets hold a non-finite row.
    b = bucketing(x, f=2, bucket_size=2, generator=gen(1))
    assert int((~torch.isfinite(b).all(dim=1)).sum()) <= f


@pytest.mark.parametrize("name", ["nnm", "arc", "clipping", "bucketing"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_input_untouched_and_dtype_kept(name, dtype):
    fn = {"nnm": nnm, "arc": arc, "clipping": clipping, "bucketing": bucketing}[name]
    kw = {"generator": gen(2)} if name == "bucketing" else {}
    x = rnd(9, 6, seed=8, dtype=dtype)
    x[:2] *= 100
    before = x.clone()
    out = fn(x, f=2, **kw)
    assert out.dtype == dtype and out.shape[1] == 6
    out.add_(1.0)  # never a view of the input
    assert torch.equal(x, before)


def test_limits_name_the_values():
    x = rnd(9, 4, seed=0)
    for fn in (nnm, arc):
        with pytest.raises(RuleError, match=r"needs n > 2f. Got n=9, f=5"):
            fn(x, f=5)
    with pytest.raises(RuleError, match=r"n > 2f for the adaptive threshold. Got n=9, f=5"):
        clipping(x, f=5)
    clipping(x, f=5, threshold=1.0)  # a static threshold does not depend on f
    with pytest.raises(RuleError, match="f must be >= 0. Got f=-1"):
        clipping(x, f=-1, threshold=1.0)
    with pytest.raises(RuleError, match=r"Got n=9, bucket_size=2, buckets=5, f=3"):
        bucketing(x, f=3, bucket_size=2, generator=gen())
    with pytest.raises(RuleError, match="needs an explicit generator"):
        bucketing(x, f=1)
    with pytest.raises(RuleError, match="bucket_size >= 1. Got bucket_size=0"):
        bucketing(x, f=1, bucket_size=0, generator=gen())
    with pytest.raises(RuleError, match="threshold >= 0 or null. Got threshold=-1"):
        clipping(x, f=1, threshold=-1.0)
    with pytest.raises(RuleError, match=r"shape \(n, d\)"):
        nnm(torch.zeros(4), f=0)
    with pytest.raises(RuleError, match="floating-point"):
        arc(torch.zeros(5, 2, dtype=torch.int32), f=1)


def test_nnm_has_no_n_by_n_by_d_intermediate():
    # (32, 32, 200_000) float32 would be 820 MB; the Gram route needs ~2 x 26 MB.
    x = torch.randn(32, 200_000, generator=gen(9))
    nnm(x, f=8)  # warm-up
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = nnm(x, f=8)
    elapsed = time.perf_counter() - t0
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak0) / 1024
    assert out.shape == (32, 200_000)
    assert grew_mb < 300 and elapsed < 5.0


# --- configs and chaining ---


def test_configs_apply_their_function_and_chain_in_order():
    pre = options("preagg")
    x = rnd(12, 5, seed=3)
    assert pre["bucketing"].randomized and not pre["nnm"].randomized
    torch.testing.assert_close(pre["nnm"]()(x, f=2), nnm(x, f=2))
    torch.testing.assert_close(pre["arc"]()(x, f=2), arc(x, f=2))
    torch.testing.assert_close(pre["clipping"](threshold=0.5)(x, f=2), clipping(x, f=2, threshold=0.5))
    b = pre["bucketing"](bucket_size=2)
    torch.testing.assert_close(b(x, f=2, generator=gen(4)), bucketing(x, f=2, generator=gen(4)))
    steps = [pre["clipping"](threshold=1.0), pre["nnm"](), pre["bucketing"](bucket_size=2)]
    got = chain(steps, x, byzantine=2, generator=gen(5))
    want = bucketing(nnm(clipping(x, f=2, threshold=1.0), f=2), f=2, generator=gen(5))
    torch.testing.assert_close(got, want)
    assert mean(got).shape == (5,)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [("bucketing", {"bucket_size": 0}, "bucket_size >= 1"), ("clipping", {"threshold": -2.0}, "threshold >= 0")],
)
def test_config_rejects_bad_values(name, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        options("preagg")[name](**kwargs)


def test_preagg_list_composes_in_order(compose):
    from byzctl.config.build import build

    cfg = compose(["preagg=[clipping,nnm]", "preagg.clipping.threshold=2.0"])
    assert list(cfg.preagg) == ["clipping", "nnm"]
    assert build(cfg.preagg.clipping, "preagg").threshold == 2.0


# --- CUDA ---

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", ["nnm", "arc", "clipping", "bucketing"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(name, dtype):
    fn = {"nnm": nnm, "arc": arc, "clipping": clipping, "bucketing": bucketing}[name]
    x = torch.randn(13, 3_000, generator=gen(11)).to(dtype)
    x[:3] += 4
    x[0, :10] = float("nan")
    kw = lambda: {"generator": gen(3)} if name == "bucketing" else {}  # noqa: E731
    cpu = fn(x, f=3, **kw())
    gpu = fn(x.cuda(), f=3, **kw())
    assert gpu.device.type == "cuda" and gpu.dtype == dtype
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=tol, atol=tol, equal_nan=True)


# --- the fused pipeline: linear pre-aggregators folded into the mean ---

FUSED_CHAINS = [["nnm"], ["clipping"], ["arc"], ["bucketing"], ["clipping", "nnm"], ["bucketing", "nnm"],
                ["nnm", "bucketing"], ["nnm", "clipping"], ["arc", "bucketing", "nnm"], ["bucketing", "arc"], ["none", "clipping"],
                ["clipping", "arc"]]


@pytest.mark.parametrize("names", FUSED_CHAINS, ids=["+".join(c) for c in FUSED_CHAINS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_chain_then_mean_equals_the_plain_chain(names, dtype):
    from byzctl.aggregators.mean import Mean
    from byzctl.preagg.base import aggregate

    pres = [options("preagg")[name]() for name in names]
    x = rnd(13, 300, seed=len(names), dtype=dtype) * torch.linspace(0.1, 5.0, 13, dtype=dtype)[:, None]  # (13, 300) distinct norms
    plain = mean(chain(pres, x, byzantine=2, generator=gen(4)), f=2)
    fused = aggregate(pres, Mean(), x, byzantine=2, generator=gen(4))
    assert fused.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fused, plain, rtol=tol, atol=tol)


def test_fused_mix_matches_each_function():
    """W from `mix` reproduces the function itself, row for row."""
    from byzctl.aggregators._gram import gram

    x = rnd(11, 50, seed=3)
    g, _ = gram(x)
    for name, cls in options("preagg").items():
        pre = cls()
        if type(pre).mix is None:
            continue
        w = pre.mixing(g, f=2, generator=gen(9))
        torch.testing.assert_close(w @ x, pre(x, f=2, generator=gen(9)), rtol=1e-12, atol=1e-12, msg=name)


def test_fused_chain_checks_limits_and_skips_non_finite_rows():
    from byzctl.aggregators.mean import Mean
    from byzctl.preagg.base import aggregate

    with pytest.raises(RuleError, match="n=5, f=3"):
        aggregate([nnm_cfg()], Mean(), rnd(5, 4, seed=0), byzantine=3)
    x = rnd(9, 20, seed=1)
    x[0, 3] = float("nan")  # a non-finite row takes the plain chain: nnm passes it through, the mean shows it
    plain = mean(nnm(x, f=2), f=2)
    fused = aggregate([nnm_cfg()], Mean(), x, byzantine=2)
    torch.testing.assert_close(fused, plain, equal_nan=True)
    x[0] = 1e6  # one far row: clipping then mean stays bounded on the fused path too
    out = aggregate([options("preagg")["clipping"](), nnm_cfg()], Mean(), x, byzantine=2)
    assert bool(torch.isfinite(out).all()) and float(out.abs().max()) < 10


def nnm_cfg():
    return options("preagg")["nnm"]()
