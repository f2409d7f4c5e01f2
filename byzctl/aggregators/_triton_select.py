"""Triton kernel for coordinate-wise rules on CUDA: one pass over x, sorting in registers.

Each program loads an (N, BLOCK) tile (all n rows, padded to N = next power of
two with +inf, x BLOCK coordinates, consecutive coordinates on consecutive threads
so loads coalesce), reads NaN as +inf, sorts every coordinate's column with a
bitonic network unrolled at compile time (reshape / split / join keep each
thread's column in its registers), and writes the rule's value per coordinate:
median, trimmed mean, or mean around the median (meamed, also bulyan's last step
through `rows`). Same semantics and formulas as the CPU path (`_select` and the
rule modules). `tl.sort` on a (BLOCK, N) tile measured 20x torch.mean at
(n=32, d=1e6) on an H100, its layout conversions dominating.

Triton is imported on first use only, so CPU-only installs never need it. The
kernel body below is plain Python until `_kernel()` compiles it; its annotations
stay strings (`from __future__ import annotations`) until Triton reads them.
Check it without a GPU with TRITON_INTERPRET=1 on CPU tensors (tests do, marked slow).
If it fails to compile on some Triton/GPU, `_select.kernel_columns` warns once and
the rules use torch.sort; the gpu tests call it directly so such a failure shows.
Before its first use on a device the kernel must also pass `self_check`: a few
small inputs full of ties and non-finite values, every rule, compared with the CPU
rules; a kernel that computes wrong values is disabled the same way, so a new
Triton or GPU can make byzctl slower but not wrong.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from byzctl.aggregators._select import Switch

tl: Any = None
"""triton.language, bound by `_kernel()` before the kernel is compiled."""

_RULES = {"median": 0, "trimmed_mean": 1, "meamed": 2}
_WARPS = 4
"""Warps per program; BLOCK = 32 * _WARPS coordinates, one per thread."""


switch = Switch("triton", "Triton kernel", "CUDA coordinate-wise rules use torch.sort")
"""Whether the kernel may run here (`_select.kernel_columns` asks, and disables it on a
failure to compile or a failed `self_check`)."""


_checked: set[str] = set()
"""Devices whose kernel passed `self_check` in this process."""


def self_check(device: torch.device) -> None:
    """Raise RuntimeError unless the kernel agrees with the CPU rules on `device`, once
    per device and process: n = 5, 32, 64 (with bulyan-style `rows`), f = 1 .. n//2 - 1,
    integer-valued inputs (ties everywhere), one NaN and one -inf per column within f."""
    key = str(device)
    if key in _checked:
        return
    from byzctl.aggregators.cw_median import cw_median
    from byzctl.aggregators.cw_trimmed_mean import cw_trimmed_mean
    from byzctl.aggregators.meamed import meamed

    cpu_rules = {"median": cw_median, "trimmed_mean": cw_trimmed_mean, "meamed": meamed}
    gen = torch.Generator().manual_seed(0)
    for n in (5, 32, 64):
        x = torch.randint(-3, 4, (n, 300), generator=gen).float()  # (n, 300) CPU
        x[0, ::2], x[n - 1, 1::2] = float("nan"), float("-inf")
        rows = torch.randperm(n, generator=gen)[: n - 2].sort().values
        for f in sorted({1, n // 4, (n - 1) // 2}):
            for rule, fn in cpu_rules.items():
                cases = [(None, fn(x, f=f))] + ([(rows, fn(x[rows], f=f))] if rule == "meamed" and n - 2 > 2 * f else [])
                for sub, want in cases:
                    got = columns(x.to(device), rule=rule, f=f, rows=None if sub is None else sub.to(device)).cpu()
                    if not torch.allclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True):
                        bad = int((~torch.isclose(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)).sum())
                        raise RuntimeError(f"self-check failed: {rule} n={n} f={f} rows={sub is not None}: "
                                           f"{bad} of 300 coordinates differ from the CPU rule")
    _checked.add(key)


def columns(x: Tensor, *, rule: str, f: int, rows: Tensor | None = None) -> Tensor:
    """The coordinate-wise `rule` ("median", "trimmed_mean", "meamed") over x (n, d), or
    over x[rows] when rows is given; returns (d,) in x's dtype (fp32 arithmetic for
    half types). Limits on f are the caller's; needs 1 <= rows <= 64."""
    import triton

    n = x.shape[0] if rows is None else rows.numel()
    d = x.shape[1]
    big_n = max(2, triton.next_power_of_2(n))
    block = 32 * _WARPS
    out = torch.empty(d, dtype=x.dtype, device=x.device)  # (d,)
    if d == 0:
        return out
    idx = rows if rows is not None else out  # placeholder pointer when HAS_ROWS is off
    grid = (triton.cdiv(d, block),)
    _kernel()[grid](
        x, idx, out, n, d, x.stride(0), x.stride(1), f,
        RULE=_RULES[rule], N=big_n, LOG_N=big_n.bit_length() - 1, BLOCK=block,
        HAS_ROWS=rows is not None, FP64=x.dtype == torch.float64, num_warps=_WARPS,
    )
    return out


@functools.cache
def _kernel() -> Any:
    global tl
    import triton
    import triton.language as language

    tl = language
    return triton.jit(_columns_kernel)


def _columns_kernel(
    x_ptr, rows_ptr, out_ptr, n, d, stride_r, stride_c, f,
    RULE: tl.constexpr, N: tl.constexpr, LOG_N: tl.constexpr, BLOCK: tl.constexpr,
    HAS_ROWS: tl.constexpr, FP64: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = pid * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    ranks = tl.arange(0, N)  # (N,)
    if HAS_ROWS:
        src = tl.load(rows_ptr + ranks, mask=ranks < n, other=0).to(tl.int64)
    else:
        src = ranks.to(tl.int64)
    ptrs = x_ptr + src[:, None] * stride_r + cols[None, :].to(tl.int64) * stride_c  # (N, BLOCK)
    v = tl.load(ptrs, mask=(ranks[:, None] < n) & (cols[None, :] < d), other=float("inf"))
    if FP64:
        v = v.to(tl.float64)
    else:
        v = v.to(tl.float32)
    s = tl.where(v != v, float("inf"), v)  # NaN -> +inf; padding is +inf too

    # Bitonic sort of every column (dim 0): merge size P = 2**lp, compare stride S = 2**ls.
    for lp in tl.static_range(1, LOG_N + 1):
        for k in tl.static_range(0, lp):
            S: tl.constexpr = 1 << (lp - 1 - k)
            P: tl.constexpr = 1 << lp
            y = tl.permute(tl.reshape(s, (N // (2 * S), 2, S, BLOCK)), (0, 2, 3, 1))  # (N/2S, S, BLOCK, 2)
            a, b = tl.split(y)  # (N/2S, S, BLOCK): rows i and i + S
            lo = tl.minimum(a, b)
            hi = tl.maximum(a, b)
            if P < N:  # blocks of P rows alternate ascending / descending
                desc = ((tl.arange(0, N // (2 * S)) // (P // (2 * S))) % 2 == 1)[:, None, None]
                lo, hi = tl.where(desc, hi, lo), tl.where(desc, lo, hi)
            s = tl.reshape(tl.permute(tl.join(lo, hi), (0, 3, 1, 2)), (N, BLOCK))

    r = ranks[:, None]
    zero = tl.zeros_like(s)
    a_med = tl.sum(tl.where(r == (n - 1) // 2, s, zero), axis=0)  # (BLOCK,)
    b_med = tl.sum(tl.where(r == n // 2, s, zero), axis=0)
    med = a_med * 0.5 + b_med * 0.5
    if n % 2 == 1:
        med = a_med
    if RULE == 0:
        res = med
    elif RULE == 1:
        kept = (r >= f) & (r < n - f)
        res = tl.sum(tl.where(kept, s, zero), axis=0) / (n - 2 * f)
    else:
        keep = n - f
        dist = tl.abs(s - med[None, :])  # (N, BLOCK); padding: +inf
        t = tl.full((BLOCK,), float("inf"), s.dtype)  # radius of the closest window of `keep` ranks
        for w0 in range(0, f + 1):
            d_lo = tl.sum(tl.where(r == w0, dist, zero), axis=0)
            d_hi = tl.sum(tl.where(r == w0 + keep - 1, dist, zero), axis=0)
            t = tl.minimum(t, tl.maximum(d_lo, d_hi))
        core = (r >= f) & (r < keep)  # ranks every window covers: always kept
        outer = (r < n) & ~core
        inside = outer & (dist < t[None, :])
        edge = outer & (dist == t[None, :])
        n_in = tl.sum(inside.to(s.dtype), axis=0)
        n_edge = tl.maximum(tl.sum(edge.to(s.dtype), axis=0), 1.0)
        n_core = tl.sum(core.to(s.dtype), axis=0)
        share = (keep - n_core - n_in) / n_edge  # places left for the ties
        total = tl.sum(tl.where(inside | core, s, zero), axis=0)
        res = (total + tl.sum(tl.where(edge, s, zero), axis=0) * share) / keep
    tl.store(out_ptr + cols, res.to(out_ptr.dtype.element_ty), mask=cols < d)
