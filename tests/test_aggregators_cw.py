"""Coordinate-wise rules (cw_median, cw_trimmed_mean, meamed) and bulyan: properties,
agreement with plain sort-based references, limits, dtypes, and CPU == CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from byzctl.aggregators import bulyan, cw_median, cw_trimmed_mean, meamed
from byzctl.errors import RuleError

INF = float("inf")
RULES = {"cw_median": cw_median, "cw_trimmed_mean": cw_trimmed_mean, "meamed": meamed, "bulyan": bulyan}


def max_f(rule: str, n: int) -> int:
    """The largest f the rule accepts for n."""
    return (n - 3) // 4 if rule == "bulyan" else (n - 1) // 2


# --- references: per-coordinate definitions over a full torch.sort, no shortcuts ---


def _sorted(x: torch.Tensor) -> torch.Tensor:
    return torch.sort(torch.nan_to_num(x, nan=INF, posinf=INF, neginf=-INF), dim=0).values


def ref_median(x: torch.Tensor, f: int) -> torch.Tensor:
    s, n = _sorted(x), x.shape[0]
    return (s[(n - 1) // 2] + s[n // 2]) / 2


def ref_trimmed_mean(x: torch.Tensor, f: int) -> torch.Tensor:
    s, n = _sorted(x), x.shape[0]
    return s[f : n - f].mean(dim=0)


def ref_meamed(x: torch.Tensor, f: int) -> torch.Tensor:
    """Column by column: keep the n - f values closest to the median; the middle ranks
    are always kept and outer values tied at the cut-off share the places left."""
    s, n = _sorted(x).double(), x.shape[0]
    out = []
    for col in s.T.tolist():
        m = (col[(n - 1) // 2] + col[n // 2]) / 2
        t = sorted(abs(v - m) for v in col)[n - f - 1]
        core = col[f : n - f]  # in every window of n - f ranks (empty when f >= n / 2, in bulyan)
        outer = col[:f] + col[max(n - f, f) :]
        inside = [v for v in outer if abs(v - m) < t]
        ties = [v for v in outer if abs(v - m) == t]
        left = (n - f) - len(core) - len(inside)
        total = sum(core) + sum(inside) + (sum(ties) * left / len(ties) if ties else 0.0)
        out.append(total / (n - f))
    return torch.tensor(out, dtype=x.dtype)


def ref_bulyan(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    xd = x.double()
    dist = ((xd[:, None, :] - xd[None, :, :]) ** 2).sum(-1).tolist()  # (n, n) squared distances
    left, picked = list(range(n)), []
    for _ in range(n - 2 * f):
        k = len(left) - f - 2
        scores = [sum(sorted(dist[i][j] for j in left if j != i)[: max(k, 0)]) for i in left]
        picked.append(left.pop(scores.index(min(scores))))
    return ref_meamed(x[sorted(picked)], 2 * f)


REFS = {"cw_median": ref_median, "cw_trimmed_mean": ref_trimmed_mean, "meamed": ref_meamed, "bulyan": ref_bulyan}


@pytest.fixture(params=["numba", "torch"])
def engine(request, monkeypatch):
    """Runs a test on both CPU engines: the numba kernel (the default) and the torch
    network in `_select` (what runs without numba)."""
    from byzctl.aggregators import _numba_select

    if request.param == "torch":
        monkeypatch.setattr(_numba_select.switch, "available", lambda: False)
    else:
        assert _numba_select.switch.available(), "numba is a dependency: it must import"
        monkeypatch.setattr(_numba_select, "MIN_COLUMNS", 1)  # the tests' narrow inputs too
    return request.param


# --- agreement with the references ---


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 9, 16, 17, 32, 33])
@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_matches_reference(rule, n, kind, engine):
    g = torch.Generator().manual_seed(n)
    if kind == "normal":
        x = torch.randn(n, 40, generator=g, dtype=torch.float64)
    else:  # few distinct values: many ties, also across the median
        x = torch.randint(-3, 4, (n, 40), generator=g).double()
    fs = sorted({0, max_f(rule, n) // 2, max_f(rule, n)} - {-1})
    if max_f(rule, n) < 0:
        pytest.skip(f"{rule} needs more than n={n}")
    for f in fs:
        torch.testing.assert_close(RULES[rule](x, f=f), REFS[rule](x, f), rtol=1e-12, atol=1e-12, msg=lambda m, f=f: f"f={f}: {m}")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("n, d", [(32, 1_003), (23, 701), (130, 50)])
def test_many_chunks_threads_and_large_n_match_reference(rule, n, d, monkeypatch, engine):
    # Several chunks with a ragged tail, padding to a power of two, both thread counts,
    # and n past the torch network (its torch.sort path; the numba kernel goes to 1024).
    from byzctl.aggregators import _numba_select, _select

    monkeypatch.setattr(_select, "_CHUNK_ELEMS", 32 * 200)  # chunks of ~200 coordinates
    monkeypatch.setattr(_numba_select, "_MIN_SPLIT", 256)  # two threads: 512 + 491 coordinates
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(d))
    f = min(n // 4, max_f(rule, n))
    want = REFS[rule](x.double(), f).float()
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            torch.testing.assert_close(RULES[rule](x, f=f), want, rtol=1e-5, atol=1e-6)
    finally:
        torch.set_num_threads(threads)


# --- properties ---


@pytest.mark.parametrize("rule", RULES)
def test_permutation_invariant(rule, engine):
    x = torch.randn(19, 300, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(19, generator=torch.Generator().manual_seed(2))
    f = max_f(rule, 19)
    a, b = RULES[rule](x, f=f), RULES[rule](x[perm], f=f)
    if rule == "cw_median":
        assert torch.equal(a, b)
    else:  # sums may add in another order
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", RULES)
def test_identical_inputs_give_that_vector(rule, engine):
    v = torch.randn(257, generator=torch.Generator().manual_seed(3))
    x = v.repeat(11, 1)  # (11, 257)
    torch.testing.assert_close(RULES[rule](x, f=max_f(rule, 11)), v, rtol=1e-6, atol=0)


def test_trimmed_mean_with_f0_is_the_mean():
    x = torch.randn(9, 1000, generator=torch.Generator().manual_seed(4))
    assert torch.equal(cw_trimmed_mean(x, f=0), torch.mean(x, dim=0))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("bad", [1e6, -1e6, INF, -INF, float("nan"), "mixed"])
def test_f_outlier_rows_stay_within_honest_range(rule, bad, engine):
    n = 15
    f = max_f(rule, n)
    g = torch.Generator().manual_seed(5)
    honest = torch.randn(n - f, 2_000, generator=g)  # (n - f, d)
    if bad == "mixed":  # each Byzantine row mixes huge, infinite and NaN coordinates
        byz = torch.tensor([1e6, -INF, float("nan"), INF, -1e6]).repeat(f, 400)
    else:
        byz = torch.full((f, 2_000), bad)
    x = torch.cat([byz, honest])[torch.randperm(n, generator=g)]
    out = RULES[rule](x, f=f)
    assert torch.isfinite(out).all()
    assert (out >= honest.min(dim=0).values - 1e-6).all() and (out <= honest.max(dim=0).values + 1e-6).all()


@pytest.mark.parametrize("rule", RULES)
def test_f_too_large_is_refused_naming_the_values(rule):
    n = 8
    f = max_f(rule, n) + 1
    with pytest.raises(RuleError, match=rf"{rule}.*Got n={n}, f={f}"):
        RULES[rule](torch.zeros(n, 3), f=f)
    with pytest.raises(RuleError, match="f must be >= 0"):
        RULES[rule](torch.zeros(n, 3), f=-1)


@pytest.mark.parametrize("rule", RULES)
def test_bad_shapes_and_dtypes_are_refused(rule):
    with pytest.raises(RuleError, match=r"shape \(n, d\)"):
        RULES[rule](torch.zeros(7), f=0)
    with pytest.raises(RuleError, match="dtype=torch.int64"):
        RULES[rule](torch.zeros(7, 3, dtype=torch.int64), f=1)


@pytest.mark.parametrize("rule", RULES)
def test_input_is_not_modified(rule, engine):
    x = torch.randn(11, 3_000, generator=torch.Generator().manual_seed(6))
    x[0, :50] = float("nan")
    x[1, 50:100] = -INF
    before = x.clone()
    RULES[rule](x, f=2)
    assert torch.equal(x.view(torch.int32), before.view(torch.int32))  # bitwise, NaN included


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_keeps_dtype(rule, dtype, engine):
    x = torch.randn(11, 100, generator=torch.Generator().manual_seed(7)).to(dtype)
    out = RULES[rule](x, f=2)
    assert out.dtype == dtype and out.shape == (100,)
    torch.testing.assert_close(out.double(), REFS[rule](x.double(), 2), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("rule", RULES)
def test_non_contiguous_input(rule, engine):
    x = torch.randn(300, 11, generator=torch.Generator().manual_seed(8)).T  # (11, 300) strided
    torch.testing.assert_close(RULES[rule](x, f=2), RULES[rule](x.contiguous(), f=2), rtol=0, atol=0)


# --- hand-checked values ---


def test_hand_checked_values(engine):
    col = lambda *v: torch.tensor(v, dtype=torch.float64)[:, None]  # noqa: E731  (n, 1)
    x = col(1, 2, 3, 100)
    assert cw_median(x, f=1).item() == 2.5  # mean of the middle two
    assert cw_trimmed_mean(x, f=1).item() == 2.5  # drops 1 and 100
    assert meamed(x, f=1).item() == 2.0  # 1, 2, 3 are closest to 2.5
    assert cw_median(col(5, -1, 3), f=1).item() == 3.0
    assert cw_trimmed_mean(col(9, 0, 1, 2, -9), f=1).item() == 1.0
    # m = 3.5; distances 3.5, 1.5, .5, .5, 2.5, 2.5: drop the 0
    assert meamed(col(0, 2, 3, 4, 6, 6), f=1).item() == pytest.approx(21 / 5)
    # m = 3, t = 2: 1, 1, 5, 5 all at the cut-off; the two outer ones share one place
    assert meamed(col(1, 1, 3, 5, 5), f=1).item() == 3.0
    two = torch.tensor([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0], [50.0, -40.0], [3.0, 40.0]])
    torch.testing.assert_close(cw_median(two, f=2), torch.tensor([2.0, 20.0]))
    torch.testing.assert_close(cw_trimmed_mean(two, f=1), torch.tensor([2.0, 20.0]))
    from byzctl.aggregators import _numba_select

    assert _numba_select.switch.available() == (engine == "numba")  # the fixture selected the engine


def test_bulyan_discards_the_attacker_and_averages_the_rest(engine):
    honest = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5], [0.5, 0.6]])
    x = torch.cat([honest, torch.tensor([[100.0, -100.0]])])  # n = 7, f = 1
    out = bulyan(x, f=1)
    # theta = 5 picked (not the attacker), then per coordinate the 3 closest to the median
    torch.testing.assert_close(out, ref_bulyan(x, 1))
    assert (out - torch.tensor([0.5, 0.5])).abs().max() < 0.2


def test_config_classes_apply_their_rule():
    from byzctl.config.schema import options

    aggs = options("aggregator")
    x = torch.randn(11, 20, generator=torch.Generator().manual_seed(9))
    for name, fn in RULES.items():
        cfg = aggs[name]()
        assert cfg._target_ == f"byzctl.aggregators.{name}.{type(cfg).__name__}"
        assert torch.equal(cfg(x, f=2), fn(x, f=2))


# --- CUDA and the Triton kernel ---

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("n", [1, 5, 16, 19, 32, 64, 65])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(rule, n, dtype):
    f = max_f(rule, n)
    if f < 0:
        pytest.skip(f"{rule} needs more than n={n}")
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 4_099, generator=g).to(dtype)
    x[: min(f, 2), :100] = float("nan")  # at most f non-finite rows per coordinate
    x[min(f, 2) : min(f, 3), 100:200] = -INF
    for ff in sorted({0, f // 2, f}):
        cpu = RULES[rule](x, f=ff)
        gpu = RULES[rule](x.cuda(), f=ff)
        assert gpu.device.type == "cuda" and gpu.dtype == dtype
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=tol, atol=tol, equal_nan=True, msg=lambda m, ff=ff: f"f={ff}: {m}")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("n", [2, 5, 16, 19, 32, 64])
def test_triton_kernel_itself_matches_cpu(n):
    # The rules fall back to torch.sort (with a warning) if the kernel cannot compile;
    # calling it directly makes such a failure fail here.
    from byzctl.aggregators import _triton_select

    x = torch.randint(-3, 4, (n, 1_000), generator=torch.Generator().manual_seed(n)).float()  # ties
    x[0, :10] = float("nan")
    f = max(1, (n - 1) // 4) if n > 2 else 0
    for rule, fn in [("median", cw_median), ("trimmed_mean", cw_trimmed_mean), ("meamed", meamed)]:
        if f == 0 and rule != "median":
            continue
        got = _triton_select.columns(x.cuda(), rule=rule, f=f).cpu()
        torch.testing.assert_close(got, fn(x, f=f), rtol=1e-5, atol=1e-5, msg=lambda m, r=rule: f"{r}: {m}")
    rows = torch.arange(0, n, 2)
    if rows.numel() > 2 * f:
        got = _triton_select.columns(x.cuda(), rule="meamed", f=f, rows=rows.cuda()).cpu()
        torch.testing.assert_close(got, meamed(x[rows], f=f), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("rule", RULES)
def test_cuda_torch_sort_path_matches_cpu(rule, monkeypatch):
    from byzctl.aggregators import _select

    monkeypatch.setattr(_select, "kernel_columns", lambda *a, **k: None)
    x = torch.randn(19, 3_000, generator=torch.Generator().manual_seed(11))
    x[:2, :50] = float("nan")
    f = min(4, max_f(rule, 19))
    torch.testing.assert_close(RULES[rule](x.cuda(), f=f).cpu(), RULES[rule](x, f=f), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("rule", ["cw_median", "cw_trimmed_mean", "meamed"])
def test_cuda_half_and_strided_inputs(rule):
    x = torch.randn(300, 21, generator=torch.Generator().manual_seed(10)).T  # (21, 300) strided
    for dtype in (torch.float16, torch.bfloat16):
        cpu = RULES[rule](x.to(dtype), f=5)
        gpu = RULES[rule](x.to(dtype).cuda(), f=5)
        torch.testing.assert_close(gpu.cpu().double(), cpu.double(), rtol=1e-2, atol=1e-2)


@pytest.mark.slow
def test_triton_kernel_in_interpreter_matches_cpu():
    # Checks the kernel on machines without a GPU: TRITON_INTERPRET=1 runs it on CPU tensors.
    pytest.importorskip("triton")
    code = textwrap.dedent(
        """
        import torch
        from byzctl.aggregators import _triton_select, cw_median, cw_trimmed_mean, meamed
        g = torch.Generator().manual_seed(0)
        x = torch.randint(-3, 4, (7, 20), generator=g).float()
        x[0, :3] = float("nan")
        for rule, fn in [("median", cw_median), ("trimmed_mean", cw_trimmed_mean), ("meamed", meamed)]:
            torch.testing.assert_close(_triton_select.columns(x, rule=rule, f=2), fn(x, f=2))
        rows = torch.tensor([0, 2, 3, 5, 6])
        torch.testing.assert_close(_triton_select.columns(x, rule="meamed", f=1, rows=rows), meamed(x[rows], f=1))
        _triton_select.self_check(torch.device("cpu"))  # what gates the kernel before its first use on a GPU
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("kind", ["normal", "ties", "non-finite"])
def test_every_n_and_keep_matches_the_reference(kind, engine):
    """Both engines for every (n, f): the torch network's padding, early stop and
    finished ranges, the numba kernel's pruned network; meamed's engine at every keep
    (bulyan's keep < n / 2 included), and trimmed mean."""
    from byzctl.aggregators import _numba_select
    from byzctl.aggregators.meamed import around_median as network

    def kernel(x: torch.Tensor, *, keep: int) -> torch.Tensor:
        return _numba_select.columns(x, rule="meamed", f=x.shape[0] - keep)

    around_median = kernel if engine == "numba" else network
    for n in range(1, 41):
        g = torch.Generator().manual_seed(1000 + n)
        if kind == "normal":
            x = torch.randn(n, 24, generator=g, dtype=torch.float64)
        else:
            x = torch.randint(-2, 3, (n, 24), generator=g).double()
        low = 0
        if kind == "non-finite":  # one per column: robust (finite) whenever a value is dropped
            if n < 3:  # the median itself is then non-finite
                continue
            x[0, ::3], x[-1, 1::3], low = float("nan"), -INF, 1
        for keep in range(1, n + 1 - low):
            want = ref_meamed(x, n - keep)
            assert not low or bool(torch.isfinite(want).all())
            torch.testing.assert_close(around_median(x, keep=keep), want, rtol=1e-12, atol=1e-12, equal_nan=True,
                                       msg=lambda m, n=n, keep=keep: f"n={n}, keep={keep}: {m}")
        for f in range(low, (n - 1) // 2 + 1):
            torch.testing.assert_close(cw_trimmed_mean(x, f=f), ref_trimmed_mean(x, f), rtol=1e-12, atol=1e-12,
                                       equal_nan=True, msg=lambda m, n=n, f=f: f"n={n}, f={f}: {m}")


def test_ties_on_the_full_sort_path_are_redone_exactly():
    """n > 128 rows skip the network (a full torch.sort, as on CUDA without Triton):
    tied columns still go through the exact rule."""
    from byzctl.aggregators.meamed import around_median

    x = torch.randint(-2, 3, (131, 16), generator=torch.Generator().manual_seed(5)).double()
    for keep in (1, 40, 65, 66, 100, 130):
        torch.testing.assert_close(around_median(x, keep=keep), ref_meamed(x, 131 - keep), rtol=1e-12, atol=1e-12)


def test_a_kernel_that_computes_wrong_values_is_disabled(monkeypatch):
    """The Triton kernel must pass a self-check against the CPU rules before use: a wrong
    one raises there, and `kernel_columns` turns that into a warning and torch.sort."""
    from byzctl.aggregators import _select, _triton_select

    def kernel(x, *, rule, f, rows=None, wrong=True):
        fn = {"median": cw_median, "trimmed_mean": cw_trimmed_mean, "meamed": meamed}[rule]
        return fn(x if rows is None else x[rows], f=f) + (1.0 if wrong and rule == "meamed" else 0.0)

    off_by_one = kernel
    monkeypatch.setattr(_triton_select, "columns", off_by_one)
    monkeypatch.setattr(_triton_select, "_checked", set())
    with pytest.raises(RuntimeError, match="self-check failed: meamed n=5 f=1"):
        _triton_select.self_check(torch.device("cpu"))
    monkeypatch.setattr(_triton_select, "columns", lambda x, *, rule, f, rows=None: kernel(x, rule=rule, f=f, rows=rows, wrong=False))
    _triton_select.self_check(torch.device("cpu"))  # a correct kernel passes, once per device
    assert "cpu" in _triton_select._checked

    monkeypatch.setattr(_triton_select, "_checked", set())
    monkeypatch.setattr(_triton_select, "columns", off_by_one)
    monkeypatch.setattr(_triton_select.switch, "broken", None)
    monkeypatch.setattr(_triton_select.switch, "available", lambda: _triton_select.switch.broken is None)
    fake_cuda = SimpleNamespace(shape=(5, 3), is_cuda=True, device=torch.device("cpu"))  # what kernel_columns reads
    with pytest.warns(RuntimeWarning, match="self-check failed"):
        assert _select.kernel_columns(fake_cuda, rule="meamed", f=1) is None
    assert _triton_select.switch.broken and not _triton_select.switch.available()


# --- the numba kernel's own pieces ---


@pytest.mark.parametrize("n", range(1, 13))
def test_batcher_network_sorts_every_zero_one_input(n):
    """The 0-1 principle: a comparator network that sorts every 0/1 input sorts every input."""
    from byzctl.aggregators._numba_select import _batcher

    pairs = _batcher(n)
    for bits in range(1 << n):
        v = [(bits >> i) & 1 for i in range(n)]
        for a, b in pairs:
            if v[a] > v[b]:
                v[a], v[b] = v[b], v[a]
        assert v == sorted(v), f"n={n}: input {bits:b}"


def test_pruned_plans_drop_comparators_and_keep_every_read():
    from byzctl.aggregators._numba_select import _batcher, plan

    full = len(_batcher(32))
    sizes = {rule: len(plan(32, rule, 8)[0]) for rule in ("median", "trimmed_mean", "meamed")}
    assert all(size < full for size in sizes.values()), (sizes, full)
    comps, final = plan(32, "meamed", 8)
    assert sorted(set((final % 32).tolist())) == list(range(32))  # every rank in one of its row's slots


@pytest.mark.parametrize("n", [1100, 3000])
def test_the_kernel_serves_thousands_of_rows(n):
    """Case C of `byzctl bench scale` aggregates 1,100 vectors: the numba kernel (not
    torch.sort, 8-18x slower there) takes them, with the reference's values."""
    from byzctl.aggregators import _numba_select
    from byzctl.aggregators._select import kernel_columns

    assert n <= _numba_select.MAX_ROWS
    x = torch.randn(n, _numba_select.MIN_COLUMNS, generator=torch.Generator().manual_seed(n))  # (n, d)
    x[:, :7] = 1.0  # tied columns
    f = n // 10
    for rule, ref in (("median", ref_median), ("trimmed_mean", ref_trimmed_mean), ("meamed", ref_meamed)):
        got = kernel_columns(x, rule=rule, f=f)
        assert got is not None, rule
        torch.testing.assert_close(got, ref(x.double(), f).float(), rtol=1e-5, atol=1e-6, msg=rule)


def test_kernel_splits_columns_over_threads(monkeypatch):
    from byzctl.aggregators import _numba_select

    monkeypatch.setattr(_numba_select, "_MIN_SPLIT", _numba_select._WIDTH)
    x = torch.randn(17, 5_000, generator=torch.Generator().manual_seed(11))
    threads = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append(_numba_select.columns(x, rule="meamed", f=4))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    torch.testing.assert_close(outs[0], ref_meamed(x.double(), 4).float(), rtol=1e-5, atol=1e-6)


def test_a_failing_numba_kernel_is_disabled_and_the_rules_fall_back(monkeypatch):
    from byzctl.aggregators import _numba_select

    def broken(*args, **kwargs):
        raise RuntimeError("no such CPU")

    monkeypatch.setattr(_numba_select, "columns", broken)
    monkeypatch.setattr(_numba_select.switch, "broken", None)
    monkeypatch.setattr(_numba_select, "MIN_COLUMNS", 1)
    x = torch.randn(9, 100, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="numba kernel disabled.*no such CPU"):
        out = meamed(x, f=2)
    torch.testing.assert_close(out, ref_meamed(x, 2), rtol=1e-12, atol=1e-12)
    assert not _numba_select.switch.available()
    torch.testing.assert_close(cw_median(x, f=2), ref_median(x, 2), rtol=1e-12, atol=1e-12)  # no second warning


def test_narrow_inputs_skip_numba_and_warm_builds_the_kernel(tmp_path):
    """A config check (rules on (n, 8) inputs) never imports numba; the launcher's
    `preflight.warm` does, for a rule with a compiled kernel only, and the rule then
    runs on it."""
    code = textwrap.dedent(
        """
        import sys
        from byzctl.config.compose import compose
        from byzctl.config.experiment import Experiment
        from byzctl.launch.preflight import warm
        for rule in ("mean", "meamed"):
            exp = Experiment.from_cfg(compose([f"aggregator={rule}"]))
            assert "numba" not in sys.modules, rule
            warm(exp)
            assert ("numba" in sys.modules) == (rule == "meamed"), rule
        from byzctl.aggregators import _numba_select
        assert _numba_select.switch.available()
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_without_a_writable_cache_the_kernel_compiles_uncached(monkeypatch):
    import numba

    from byzctl.aggregators import _numba_select

    njit = numba.njit

    def no_locator(*args, **kwargs):
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function '_columns_kernel': no locator available")
        return njit(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", no_locator)
    _numba_select._kernel.cache_clear()
    try:
        x = torch.randn(9, 300, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
        with pytest.warns(RuntimeWarning, match="cannot cache its kernel here"):
            got = _numba_select.columns(x, rule="meamed", f=2)
        torch.testing.assert_close(got, ref_meamed(x, 2), rtol=1e-12, atol=1e-12)
    finally:
        _numba_select._kernel.cache_clear()  # the next use builds the cached one again
