"""Numba kernel for coordinate-wise rules on CPU: one pass over x, sorting in cache.

The CPU counterpart of `_triton_select`, with the same `columns(x, rule=..., f=...,
rows=...)`. Each call of the compiled kernel walks a range of coordinates in blocks
of `_WIDTH`: it copies the block's (n, _WIDTH) values into a buffer that stays in
L2 (NaN read as +inf), runs a comparator network over its rows with the loop over
the block's coordinates innermost (so LLVM vectorises every comparator across 8
coordinates), then computes the rule per coordinate: median, trimmed mean, or mean
around the median (meamed, and bulyan's last step through `rows`), with the same
formulas and tie rules as `_select` and the rule modules. Coordinate ranges are
split over torch.get_num_threads() Python threads; the kernel releases the GIL.

The network is Batcher's odd-even merge sort over n rows (comparators that would
touch rows past n, the +inf padding of a power-of-two network, are dropped: they
never move anything), pruned backwards to what the rule reads: ranks it reads one by
one stay exact, ranks it only sums (the trimmed mean's middle, meamed's core) need
only hold the right set, and comparators that only reorder such a set, or feed
nothing read, are dropped. Every comparator writes out of place: each row has two
slots and a comparator reads the current ones and writes the others. In place, LLVM
turns `a[c] = min(a[c], b[c])` into a masked store (vmaskmovps), microcoded on AMD
and about 6x slower here.

Measured on this 2-core EPYC at (n=32, d=1e6), f=8, two threads (`byzctl bench
aggregators`): median and trimmed mean at 2.6-3.9x torch.mean, meamed 3.9-5x,
against 6-14x for the torch-op network in `_select` (which stays as the fallback).
Numba compiles the kernel on first use (about 2 s per dtype) and caches it on disk
(`cache=True`: next to this file, or in the user's cache directory where that is
read-only); the launcher does that before the nodes start (`launch.preflight.warm`).
numba is imported only then, so processes that never reach this path never pay
for it.
"""

from __future__ import annotations

import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from byzctl.aggregators._select import Switch

_RULES = {"median": 0, "trimmed_mean": 1, "meamed": 2}
_WIDTH = 512
"""Coordinates per block: the (2n, 512) fp32 buffer is 128 KiB at n = 32, in L2.
Single-threaded at (n=32, d=1e6), cw_median took 53 ms with 128 (the copy into the
buffer, 32 rows x 512 bytes at a time, ran at half the speed of torch.mean), 39 ms
with 256, 38 ms with 512; running the network on 128-wide sub-blocks (in L1) of a
512- to 2048-wide buffer gained nothing."""
MAX_ROWS = 8192
"""More rows use torch.sort (`_select.kernel_columns`). Up to here the network beats it
(two threads, a loaded 2-core machine; the first call at a new n also builds its plan,
0.7-2 s): meamed at (n=129, d=5e4) 13 ms against 167 ms, at (1000, 1e4) 78 ms against
370 ms; the trimmed mean (f = n/10) at (1100, 79510) 1.5 s against 11.9 s, at
(2048, 2e4) 0.56 s against 4.2 s, at (8192, 5000) 1.6 s against 8.7 s; the median at
(1100, 79510) 1.05 s against 19.3 s. The torch network in `_select` stops at 128 rows."""
MIN_COLUMNS = 1024
"""Narrower inputs use the torch network (`_select.kernel_columns`): importing numba and
loading the kernel costs a process about 1 s, worth it only for real vectors."""
_MIN_SPLIT = 16 * _WIDTH
"""Fewer coordinates per thread than this run on the calling thread alone."""

switch = Switch("numba", "numba kernel", "CPU coordinate-wise rules use the torch network")
"""Whether the kernel may run here (`_select.kernel_columns` asks, and disables it on a failure)."""


def columns(x: Tensor, *, rule: str, f: int, rows: Tensor | None = None) -> Tensor:
    """The coordinate-wise `rule` ("median", "trimmed_mean", "meamed") over the CPU
    tensor x (n, d), or over x[rows] when rows is given; returns (d,) in x's dtype
    (fp32 arithmetic for half types). Limits on f are the caller's."""
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    src = work.detach().contiguous().numpy()  # (n, d) a view when already contiguous
    n = src.shape[0] if rows is None else rows.numel()
    d = src.shape[1]
    picked = np.arange(n, dtype=np.int64) if rows is None else rows.cpu().numpy().astype(np.int64)
    comps, final = plan(n, rule, f)
    out = np.empty(d, dtype=src.dtype)  # (d,)
    run = functools.partial(_kernel(), src, picked, out, comps, final, _RULES[rule], f)  # run(start, stop, width)
    parts = max(1, min(torch.get_num_threads(), d // _MIN_SPLIT))
    if parts == 1:
        run(0, d, _WIDTH)
    else:
        step = -(-d // parts // _WIDTH) * _WIDTH  # per thread, whole blocks
        futures = [_executor(parts).submit(run, lo, min(lo + step, d), _WIDTH) for lo in range(0, d, step)]
        for future in futures:
            future.result()
    return torch.from_numpy(out).to(x.dtype)


_pool: tuple[int, int, ThreadPoolExecutor] | None = None
"""(pid, threads, executor): a forked child makes its own (the parent's threads are not there)."""


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1] < threads:
        if _pool is not None and _pool[0] == os.getpid():
            _pool[2].shutdown(wait=False)  # its threads finish what they hold, then exit
        _pool = (os.getpid(), threads, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="byzctl-select"))
    return _pool[2]


# --- the comparator network ---


@functools.cache
def plan(n: int, rule: str, f: int) -> tuple[np.ndarray, np.ndarray]:
    """(comps, final) for `rule` over n rows: comps (C, 4) int64 rows of (read a, read b,
    write min, write max) buffer slots, final (n,) the slot holding each rank after
    the network (for ranks read only as a set: some rank of the set)."""
    exact, group = _reads(n, rule, f)
    kept = _prune(n, _batcher(n), exact, group)
    parity = [0] * n  # which of a row's two slots (r or r + n) holds its current value
    comps = []
    for a, b in kept:
        comps.append((a + n * parity[a], b + n * parity[b], a + n * (1 - parity[a]), b + n * (1 - parity[b])))
        parity[a] ^= 1
        parity[b] ^= 1
    final = np.array([r + n * parity[r] for r in range(n)], dtype=np.int64)
    return np.array(comps, dtype=np.int64).reshape(-1, 4), final


def _reads(n: int, rule: str, f: int) -> tuple[set[int], set[int]]:
    """(exact, group): the ranks `rule` reads one by one, and those it reads as a set."""
    median = {(n - 1) // 2, n // 2}
    if rule == "median":
        return median, set()
    if rule == "trimmed_mean":
        return set(), set(range(f, n - f))
    keep = n - f  # meamed: window ends and the median one by one, the core as a set
    exact = {*range(0, min(f + 1, n)), *range(max(keep - 1, 0), n), *median}
    return exact, set(range(f, keep)) - exact


def _batcher(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort of n rows, layer by layer: (low, high) row pairs.
    Built for the next power of two; pairs reaching past n are left out (that padding
    would hold +inf, which no comparator moves down)."""
    big = 1 << max(n - 1, 0).bit_length()
    pairs = []
    p = 1
    while p < big:
        k = p
        while k >= 1:
            for j in range(k % p, big - k, 2 * k):
                for i in range(min(k, big - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return pairs


def _prune(n: int, pairs: list[tuple[int, int]], exact: set[int], group: set[int]) -> list[tuple[int, int]]:
    """The comparators the reads need, walking back from the end: one whose two rows
    feed nothing read, or only the same set, is dropped; a kept one makes both its
    inputs needed exactly (conservative: correct for any input)."""
    need: list[str | None] = [None] * n  # per row: read exactly, as part of the set, or not at all
    for r in group:
        need[r] = "set"
    for r in exact:
        need[r] = "exact"
    kept = []
    for a, b in reversed(pairs):
        if need[a] is None and need[b] is None or need[a] == need[b] == "set":
            continue
        kept.append((a, b))
        need[a] = need[b] = "exact"
    return kept[::-1]


@functools.cache
def _kernel() -> Any:
    import numba

    try:
        return numba.njit(nogil=True, cache=True, error_model="numpy")(_columns_kernel)
    except RuntimeError as e:  # "cannot cache ... no locator available": no writable cache directory
        warnings.warn(f"byzctl: numba cannot cache its kernel here ({e}); it compiles in each process",
                      RuntimeWarning, stacklevel=2)
        return numba.njit(nogil=True, error_model="numpy")(_columns_kernel)


def _columns_kernel(x, rows, out, comps, final, rule, f, start, stop, width):  # type: ignore[no-untyped-def]
    """Compiled by numba: the rule for coordinates [start, stop), see the module doc.
    Rows are read through 1-d views (LLVM vectorises x[r, j] loops far less well), and
    constants are taken in x's dtype: a Python float literal makes fp32 arithmetic
    fp64, with conversions that cost more than the arithmetic."""
    n = rows.shape[0]
    keep = n - f
    buf = np.empty((2 * n, width), dtype=x.dtype)  # two slots per row
    med = np.empty(width, dtype=x.dtype)
    radius = np.empty(width, dtype=x.dtype)
    total = np.empty(width, dtype=x.dtype)
    count = np.empty(width, dtype=x.dtype)
    ties = np.empty(width, dtype=x.dtype)
    tied = np.empty(width, dtype=x.dtype)
    consts = np.array([np.inf, 0.0, 1.0, 0.5, n - 2 * f, keep]).astype(x.dtype)
    inf, zero, one, half, trimmed, kept = consts[0], consts[1], consts[2], consts[3], consts[4], consts[5]
    for j0 in range(start, stop, width):
        w = min(width, stop - j0)
        for i in range(n):
            src, dst = x[rows[i], j0 : j0 + w], buf[i]
            for c in range(w):
                v = src[c]
                dst[c] = inf if v != v else v  # NaN -> +inf
        for k in range(comps.shape[0]):
            a, b, lo, hi = buf[comps[k, 0]], buf[comps[k, 1]], buf[comps[k, 2]], buf[comps[k, 3]]
            for c in range(w):
                u = a[c]
                v = b[c]
                lo[c] = min(u, v)
                hi[c] = max(u, v)
        if rule == 1:  # trimmed mean: the sum of ranks [f, n - f)
            for c in range(w):
                total[c] = zero
            for i in range(f, n - f):
                row = buf[final[i]]
                for c in range(w):
                    total[c] += row[c]
            for c in range(w):
                out[j0 + c] = total[c] / trimmed
            continue
        a, b = buf[final[(n - 1) // 2]], buf[final[n // 2]]
        for c in range(w):
            med[c] = a[c] if n % 2 else a[c] * half + b[c] * half
        if rule == 0:
            for c in range(w):
                out[j0 + c] = med[c]
            continue
        # meamed: the radius of the closest window of `keep` ranks, as in _triton_select
        for c in range(w):
            radius[c] = inf
            total[c] = zero
            count[c] = zero
            ties[c] = zero
            tied[c] = zero
        for i in range(f + 1):
            a, b = buf[final[i]], buf[final[i + keep - 1]]
            for c in range(w):
                radius[c] = min(radius[c], max(med[c] - a[c], b[c] - med[c]))
        for i in range(n):
            row = buf[final[i]]
            if f <= i < keep:  # the core, in every window: kept
                for c in range(w):
                    total[c] += row[c]
                    count[c] += one
            else:  # closer than the radius: kept; at it: shares the places left
                for c in range(w):
                    v = row[c]
                    dist = abs(v - med[c])
                    inside = dist < radius[c]
                    edge = dist == radius[c]
                    total[c] += v if inside else zero
                    count[c] += one if inside else zero
                    ties[c] += v if edge else zero
                    tied[c] += one if edge else zero
        for c in range(w):
            share = (kept - count[c]) / max(tied[c], one)
            out[j0 + c] = (total[c] + ties[c] * share) / kept
