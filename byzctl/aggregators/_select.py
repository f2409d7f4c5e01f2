"""Per-coordinate order statistics of stacked vectors without a full sort.

The engine behind cw_median, cw_trimmed_mean, meamed and bulyan. `by_columns(x,
post, ...)` hands `post` the values of every coordinate sorted (or partitioned)
along the rows, one chunk of coordinates at a time, and `post` writes that chunk
of the (d,) result.

CPU: the coordinate axis is cut into chunks; each chunk is copied into an (N, w)
buffer (N = n rounded up to a power of two, padded with +inf; NaN read as +inf in
the same pass, so non-finite inputs sort to the ends where robust rules trim them)
and sorted along its rows by a bitonic network whose comparator layers are four
whole-tensor `torch.minimum` / `torch.maximum` calls on strided views: no Python
loop over coordinates, and no full torch.sort (whose per-column loop costs ~50x
torch.mean). The final merge stops as soon as the ranks the rule reads are
separated ("boundaries"); ranges whose values the rule reads one by one ("sorted")
are then finished on their own rows only. Rows of -inf may be put before the data
("padding") so that the boundaries fall on multiples of a larger power of two, where
the merge can stop earlier. When the rule never reads the lowest or highest few
ranks and removing up to 4 of them halves N (n = 17, 18, 33, 34, ...: bulyan's
selection of n - 2f rows is often just above a power of two), they are removed
first by compare-exchange tournaments over whole row blocks ("shaving"; with
torch.argmin along dim 0 instead, bulyan's 18-of-32-row selection at d=1e6 took
281 ms against 38 ms). A rule can hand back columns
it cannot settle from the partial order (exact ties in meamed), which are redone
on a full sort of those columns alone.

Chunks: each (N, w) buffer holds ~2^20 values (4 MiB in fp32), so a chunk's two
buffers stay in L3 while every call is big enough that its fixed cost (~1.5 us)
is small and torch's intra-op threads (torch.get_num_threads()) split it. On a
2-core EPYC (32 MiB L3), idle, cw_median at (n=32, d=1e6): 48 ms with 2^20-value
buffers, 55 ms with 2^19, 60 ms with 2^18, 130 ms with 2^16, 88 ms with 2^22; 114 ms
for L2-sized chunks spread over Python threads (calls kept under torch's grain so
they run inline). The price: each call is an OpenMP barrier, and on a machine
oversubscribed by other processes a barrier can wait a scheduler slice, so
thousands of calls took seconds there (the Python-thread variant: 5-6x torch.mean
under the same load). With torch.set_num_threads(1), the usual setting for
nodes sharing a host, there are no barriers.

Other devices (and n > 128): the same `post` runs on `torch.sort(x, dim=0)` of x
with NaN read as +inf.

The rules try a compiled kernel first (`kernel_columns`): Triton on CUDA, numba on
CPU (`_numba_select`, 2.6-5x torch.mean where this network takes 6-14x). This module's
network is what runs when numba is missing or was disabled, and for rules and dtypes
the kernels do not cover.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Blocks:
    """How `post`'s rows hold the ranks: rank r belongs at row r + offset (offset: the
    rows of -inf padding first), and rows fall into blocks of `size` rows from row 0,
    each sorted apart (every value of an earlier block <= every value of a later one)
    but not within. size = 1: every rank at its row."""

    size: int = 1
    offset: int = 0

    def at(self, r: int) -> int:
        """The row of rank r (exact when the ranks before r fill whole blocks, or size = 1)."""
        return r + self.offset

    def edge(self, r: int) -> bool:
        """True when rank r starts a block."""
        return (r + self.offset) % self.size == 0


SORTED = Blocks()

Post = Callable[[Tensor, Blocks, Tensor], "Tensor | None"]
"""post(s, blk, out): s (N, w) holds one chunk's values ordered as `blk` says (rank r at
row blk.at(r), padding around), no NaN; write the chunk's result into out (w,). It may
return the (k,) indices of columns it cannot settle from s (ties), which `by_columns`
then redoes with `exact` over a full sort of the column."""

_CHUNK_ELEMS = 1 << 20
"""Values in one (N, w) buffer: see the module docstring."""
_MAX_NETWORK_ROWS = 128
"""Above this N the network's layers cost more than a full torch.sort."""
_MAX_SHAVE = 4
"""Most extremes shaved (a tournament of about n row operations each) to halve N."""
_INF = float("inf")


def by_columns(
    x: Tensor,
    post: Post,
    *,
    boundaries: Iterable[int] | None = None,
    sorted_ranges: Sequence[tuple[int, int]] = (),
    reads: tuple[int, int] | None = None,
    exact: Callable[[Tensor], Tensor] | None = None,
    rows: Tensor | None = None,
) -> Tensor:
    """Apply `post` to the column-ordered values of `x` (or of `x[rows]`), chunk by chunk.

    Args:
        x: (n, d) stacked vectors, floating point. Never modified.
        post: writes one chunk's result, see `Post`.
        boundaries: ranks b such that post only needs "the b smallest values are
            ranks [0, b)"; the sort stops once all hold. None: a full sort.
        sorted_ranges: rank ranges [a, b) that post reads value by value; a and b
            count as boundaries.
        reads: the ranks [lo, hi) post reads at all (values, block edges), when it
            is fewer than all: a few of the values below lo and above hi are then
            removed first (shaved) where that halves the network.
        exact: (n, k) sorted columns -> (k,) results, for the columns post returns.
        rows: (m,) row indices to use instead of all rows (bulyan's selection).

    Returns:
        (d,) tensor of x's dtype on x's device; half types are ordered and summed in fp32.
    """
    n = x.shape[0] if rows is None else rows.numel()
    d = x.shape[1]
    work_dtype = torch.promote_types(x.dtype, torch.float32)
    out = torch.empty(d, dtype=work_dtype, device=x.device)  # (d,)
    if x.device.type != "cpu" or n > _MAX_NETWORK_ROWS or d == 0:
        full = _sorted_columns(x, rows, work_dtype)  # (n, d)
        ties = post(full, SORTED, out)
        if ties is not None and ties.numel():
            out[ties] = _exact(exact)(full[:, ties])
        return out.to(x.dtype)

    cut_lo, cut_hi = _shave(n, boundaries, reads)
    m = n - cut_lo - cut_hi  # rows left for the network
    big_n = 1 << max(m - 1, 0).bit_length()  # N: rows padded to a power of two
    shift = [(b - cut_lo) for b in boundaries] if boundaries is not None else None
    pad, stride = _layout(m, big_n, shift, [(a - cut_lo, b - cut_lo) for a, b in sorted_ranges])
    finish = [(a - cut_lo + pad, b - cut_lo + pad) for a, b in sorted_ranges if b - a > 1] if stride > 1 else []
    blocks = Blocks(stride, pad - cut_lo)
    width = min(max(_CHUNK_ELEMS // big_n, 8), d)
    nets: dict[int, _Network] = {}  # by chunk width: the full one and the tail
    redo: list[Tensor] = []
    for j0 in range(0, d, width):
        w = min(width, d - j0)
        net = nets.get(w) or nets.setdefault(w, _Network(big_n, w, work_dtype, stride, finish, below=cut_lo, above=cut_hi))
        chunk = x[:, j0 : j0 + w]  # (n, w) view
        head = net.stage[pad : pad + n]  # (n, w): after shaving, rows [pad, pad + m) of net.a hold the rest
        if rows is None and x.dtype == work_dtype:
            torch.nan_to_num(chunk, nan=_INF, posinf=_INF, neginf=-_INF, out=head)
        else:
            if rows is None:
                head.copy_(chunk)
            elif x.dtype == work_dtype:
                torch.index_select(chunk, 0, rows, out=head)
            else:
                head.copy_(chunk.index_select(0, rows))
            head.nan_to_num_(nan=_INF, posinf=_INF, neginf=-_INF)
        _shave_rows(head, cut_lo, cut_hi, net.scratch)
        if pad:
            net.a[:pad].fill_(-_INF)  # sorts first
        if pad + m < big_n:
            net.a[pad + m : big_n].fill_(_INF)  # sorts last
        cols = post(net.run(), blocks, out[j0 : j0 + w])
        if cols is not None and cols.numel():
            redo.append(cols + j0)
    if redo:
        cols = torch.cat(redo)  # (k,)
        out[cols] = _exact(exact)(_sorted_columns(x.index_select(1, cols), rows, work_dtype))
    return out.to(x.dtype)


def _exact(exact: Callable[[Tensor], Tensor] | None) -> Callable[[Tensor], Tensor]:
    if exact is None:
        raise ValueError("post returned columns to redo but by_columns got no exact function")
    return exact


def _sorted_columns(x: Tensor, rows: Tensor | None, dtype: torch.dtype) -> Tensor:
    """x (or x[rows]) in `dtype`, NaN read as +inf, sorted along dim 0: a copy."""
    sub = x if rows is None else x.index_select(0, rows.to(x.device))
    sub = torch.nan_to_num(sub.to(dtype), nan=_INF, posinf=_INF, neginf=-_INF)  # (n, d) copy
    return torch.sort(sub, dim=0).values


def _shave(n: int, boundaries: Iterable[int] | None, reads: tuple[int, int] | None) -> tuple[int, int]:
    """(below, above): how many of the smallest and largest values to remove first, so
    that what is left fits a network of half the rows; (0, 0) where it would not pay."""
    if reads is None or boundaries is None or n <= 2:
        return 0, 0
    big_n = 1 << (n - 1).bit_length()
    need = n - big_n // 2  # removals that halve N
    room_lo, room_hi = reads[0], n - reads[1]
    if need > _MAX_SHAVE or need > room_lo + room_hi:
        return 0, 0
    below = min(room_lo, (need + 1) // 2)
    above = need - below
    if above > room_hi:
        below, above = need - room_hi, room_hi
    return below, above


def _shave_rows(head: Tensor, below: int, above: int, scratch: Tensor) -> None:
    """Move the `below` smallest values of every column of head (n, w) to its first rows
    and the `above` largest to its last rows, by compare-exchange tournaments on whole
    row blocks (no arg-min: torch's is slow along dim 0). The first round of the
    first pair of tournaments is shared."""
    lo, hi = 0, head.shape[0]  # the rows still in play
    while below or above:
        if below and above and hi - lo >= 2:
            k = (hi - lo) // 2  # pair [lo, lo + k) with [hi - k, hi): minima low, maxima high
            _exchange(head[lo : lo + k], head[hi - k : hi], scratch)
            _to_edge(head, lo + k, hi, scratch, front=False)  # the max: last row of [lo + k, hi)
            _to_edge(head, lo, hi - k, scratch, front=True)  # the min: row lo
            lo, hi, below, above = lo + 1, hi - 1, below - 1, above - 1
        elif below:
            _to_edge(head, lo, hi, scratch, front=True)
            lo, below = lo + 1, below - 1
        else:
            _to_edge(head, lo, hi, scratch, front=False)
            hi, above = hi - 1, above - 1


def _to_edge(head: Tensor, lo: int, hi: int, scratch: Tensor, *, front: bool) -> None:
    """Bring the minimum of rows [lo, hi) to row lo (front) or their maximum to row
    hi - 1, per column, keeping every column's values."""
    while hi - lo > 1:
        k = (hi - lo) // 2
        _exchange(head[lo : lo + k], head[hi - k : hi], scratch)
        if front:
            hi -= k  # minima in [lo, lo + k), the odd middle row between
        else:
            lo += k


def _exchange(a: Tensor, b: Tensor, scratch: Tensor) -> None:
    """a, b = min(a, b), max(a, b) elementwise, in place; a and b do not overlap."""
    low = scratch[: a.shape[0]]
    torch.minimum(a, b, out=low)
    torch.maximum(a, b, out=b)
    a.copy_(low)


def _layout(n: int, big_n: int, boundaries: Iterable[int] | None, sorted_ranges: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """(pad, stride): the rows of -inf before the data, and the stride of the final
    merge's last layer, chosen for the largest stride (then the least padding).

    A boundary at 0 or n needs no layer (padding sorts apart from the data by value),
    but a sorted range's ends must fall on block edges: its rows are finished alone."""
    if boundaries is None:
        return 0, 1
    inner = [b for b in boundaries if 0 < b < n]
    ends = [e for r in sorted_ranges for e in r]
    best = (0, 1)
    for pad in range(big_n - n + 1):
        stride = _last_stride(big_n, [b + pad for b in (*inner, *ends)])
        if stride > best[1]:
            best = (pad, stride)
    return best


def rank_value(s: Tensor, r: int, blk: Blocks) -> Tensor:
    """The value of rank r (0-based) per column of s: (N, w) -> (w,).

    Needs r or r + 1 to start a block (see `by_columns`' boundaries).
    """
    row = blk.at(r)
    if blk.size == 1:
        return s[row]
    if blk.edge(r + 1):  # the block ending at r: its max
        return torch.amax(s[row + 1 - blk.size : row + 1], dim=0)
    if blk.edge(r):  # the block starting at r: its min
        return torch.amin(s[row : row + blk.size], dim=0)
    raise ValueError(f"rank {r} is not at a block edge of {blk}")


def median_of(s: Tensor, n: int, blk: Blocks) -> Tensor:
    """Median of the first n ranks per column, (N, w) -> (w,); boundary (n - 1) // 2 + 1.

    Even n: the mean of the two middle values, as 0.5*a + 0.5*b (no overflow near the
    dtype's max; the same rounding as (a + b) / 2 otherwise).
    """
    lo = (n - 1) // 2
    a = rank_value(s, lo, blk)
    if n % 2:
        return a.clone()
    b = rank_value(s, lo + 1, blk)
    return torch.add(a * 0.5, b, alpha=0.5)


def median_boundary(n: int) -> int:
    """The boundary `median_of` needs."""
    return (n - 1) // 2 + 1


def _last_stride(big_n: int, boundaries: Iterable[int] | None) -> int:
    """Largest stride of the final merge after which every boundary is resolved."""
    if boundaries is None:
        return 1
    bs = [b for b in boundaries if 0 < b < big_n]
    s = big_n // 2
    while s > 1 and any(b % s for b in bs):
        s //= 2
    return max(s, 1)


class _Network:
    """A bitonic sorting network over the rows of an (N, w) buffer, as a list of calls.

    Classic bitonic: at merge size p < N, blocks of p rows alternate ascending and
    descending; a layer of stride s compares row i with row i + s. Each layer is four
    calls (two directions x low/high output) on 5-d views of ping-pong buffers; the
    final merge (p = N) is all ascending, two calls a layer, and stops after the layer
    of stride `last`.
    """

    def __init__(
        self, big_n: int, w: int, dtype: torch.dtype, last: int, finish: Sequence[tuple[int, int]] = (),
        *, below: int = 0, above: int = 0,
    ) -> None:
        # Values are loaded at stage[pad : pad + n]; shaving moves `below` of them before
        # row `below` + pad and `above` after the m kept, which then sit at a[pad : pad + m].
        self.stage = torch.empty(below + big_n + above, w, dtype=dtype)
        self.a = self.stage[below : below + big_n]  # (N, w) the network's input
        self.scratch = torch.empty(max(big_n // 2, 1) + below + above, w, dtype=dtype)
        b = torch.empty(big_n, w, dtype=dtype)
        self.calls: list[tuple[Callable[..., Tensor], Tensor, Tensor, Tensor]] = []
        src, dst = self.a, b
        p = 2
        while p <= big_n:
            s = p // 2
            while s >= (last if p == big_n else 1):
                self._layer(src, dst, big_n, w, p, s)
                src, dst = dst, src
                s //= 2
            p *= 2
        self.result = src  # (N, w)
        for lo, hi in finish:  # rows [lo, hi): blocks of `last` rows, each a bitonic sequence
            here, there, s = src, dst, last // 2
            while s >= 1:
                rows = hi - lo
                v, o = here[lo:hi].view(rows // (2 * s), 2, s, w), there[lo:hi].view(rows // (2 * s), 2, s, w)
                self.calls += [(torch.minimum, v[:, 0], v[:, 1], o[:, 0]), (torch.maximum, v[:, 0], v[:, 1], o[:, 1])]
                here, there, s = there, here, s // 2
            if here is not src:  # back into the result buffer
                self.calls.append((_copy, here[lo:hi], here[lo:hi], src[lo:hi]))

    def _layer(self, src: Tensor, dst: Tensor, big_n: int, w: int, p: int, s: int) -> None:
        lo, hi = torch.minimum, torch.maximum
        if p < big_n:
            shape = (big_n // (2 * p), 2, p // (2 * s), 2, s, w)  # (blocks, dir, groups, pair, s, w)
            v, o = src.view(shape), dst.view(shape)
            up_a, up_b, dn_a, dn_b = v[:, 0, :, 0], v[:, 0, :, 1], v[:, 1, :, 0], v[:, 1, :, 1]
            self.calls += [
                (lo, up_a, up_b, o[:, 0, :, 0]), (hi, up_a, up_b, o[:, 0, :, 1]),
                (hi, dn_a, dn_b, o[:, 1, :, 0]), (lo, dn_a, dn_b, o[:, 1, :, 1]),
            ]
        else:
            shape2 = (big_n // (2 * s), 2, s, w)  # (groups, pair, s, w)
            v, o = src.view(shape2), dst.view(shape2)
            self.calls += [(lo, v[:, 0], v[:, 1], o[:, 0]), (hi, v[:, 0], v[:, 1], o[:, 1])]

    def run(self) -> Tensor:
        for op, u, v, o in self.calls:
            op(u, v, out=o)
        return self.result


def _copy(u: Tensor, _: Tensor, out: Tensor) -> Tensor:
    return out.copy_(u)


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float(x: Tensor, rule: str) -> None:
    """Raise RuleError unless x holds floating-point values (order statistics of ints
    would need a silent cast)."""
    from byzctl.errors import RuleError

    if x.dtype not in _FLOATS:
        raise RuleError(f"{rule} expects a floating-point tensor. Got dtype={x.dtype}")


def kernel_columns(x: Tensor, *, rule: str, f: int, rows: Tensor | None = None) -> Tensor | None:
    """`rule` over x's columns by a compiled kernel, or None where none applies (the
    caller then uses `by_columns`): on CUDA the Triton kernel (`_triton_select`, up to
    64 rows), on CPU the numba kernel (`_numba_select`, up to `MAX_ROWS` rows, `rows`
    counting when the rule reads a subset, and at least `MIN_COLUMNS`
    coordinates: a process that only ever aggregates a few, such as a config check,
    never imports numba). A kernel that fails to compile, or (Triton) its self-check
    here, is disabled with one warning."""
    n = x.shape[0] if rows is None else rows.numel()
    if x.is_cuda:
        return _triton_columns(x, rule=rule, f=f, rows=rows) if 1 <= n <= 64 else None
    from byzctl.aggregators import _numba_select

    if x.device.type != "cpu" or not 1 <= n <= _numba_select.MAX_ROWS or x.shape[1] < _numba_select.MIN_COLUMNS:
        return None

    if not _numba_select.switch.available():
        return None
    try:
        return _numba_select.columns(x, rule=rule, f=f, rows=rows)
    except Exception as e:  # e.g. a numba TypingError on a numba/numpy pair it does not support
        _numba_select.switch.disable(e)
        return None


def _triton_columns(x: Tensor, *, rule: str, f: int, rows: Tensor | None) -> Tensor | None:
    from byzctl.aggregators import _triton_select

    if not _triton_select.switch.available():
        return None
    try:
        _triton_select.self_check(x.device)
        return _triton_select.columns(x, rule=rule, f=f, rows=rows)
    except Exception as e:  # e.g. triton CompilationError on an older Triton or GPU, or a failed self-check
        _triton_select.switch.disable(e)
        return None


class Switch:
    """Whether a compiled kernel may run in this process: its package imports (tried
    on the first ask only), and the kernel has not failed here. The first failure is
    warned once, saying what runs instead; the rules then do."""

    def __init__(self, package: str, kernel: str, instead: str) -> None:
        self.package, self.kernel, self.instead = package, kernel, instead
        self.broken: str | None = None
        """Why the kernel cannot be used in this process, once it failed."""

    def available(self) -> bool:
        return self.broken is None and _importable(self.package)

    def disable(self, error: BaseException) -> None:
        if self.broken is None:
            self.broken = f"{type(error).__name__}: {error}"
            warnings.warn(f"byzctl: {self.kernel} disabled ({self.broken[:500]}); {self.instead}",
                          RuntimeWarning, stacklevel=3)


@functools.cache
def _importable(package: str) -> bool:
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True
