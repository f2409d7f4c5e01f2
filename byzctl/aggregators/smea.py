"""Smallest maximum eigenvalue averaging (Allouah et al., ICML 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from byzctl.aggregators._gram import check_float, gram, serial, weighted_sum
from byzctl.aggregators.base import Aggregator, check_matrix
from byzctl.errors import ConfigError, RuleError, check_f


def smea(x: Tensor, *, f: int = 0, max_nodes: int = 50_000, approximate: bool = False) -> Tensor:
    """smea(x) = mean of x_S, S = argmin over |S| = n - f of lambda_max(Cov(x_S)), the
    largest eigenvalue of the empirical covariance of the subset. Allouah, Guerraoui,
    Gupta, Pinot, Stephan, "On the privacy-robustness-utility trilemma in distributed
    learning", ICML 2023.

    Exact by branch and bound on the Gram matrix, never forming a d x d covariance:
    lambda_max(Cov(x_S)) is the top eigenvalue of the (n-f) x (n-f) centered Gram matrix
    of S divided by n - f. The search enumerates excluded sets in order, starting from a
    greedy-then-swap incumbent, and prunes with two certified bounds: a forced-in set T
    lower-bounds every completion (scatter only grows, tested by a Cholesky of
    t I - K_T), and removing r more rows from the available set U lowers at most r
    eigenvalues (interlacing), tested for all children at once by the inertia of one
    rank-one downdate per child. Exact up to floating-point ties; at n=32, f=8 (C(32, 8) =
    10.5M subsets) it needs ~10^4 search nodes on isotropic data (~1-3 s on 2 cores), far
    fewer with outliers.

    Past `max_nodes` search nodes it raises, unless `approximate`: then it returns the
    best subset found so far (never worse than greedy removal of the row that lowers
    the top eigenvalue most, f times, followed by best-improvement single swaps).
    Non-finite rows are always excluded (with at most f of them the result is finite;
    with more, it is not).

    Raises:
        RuleError: unless n > 2f and max_nodes >= 1; when the exact search exceeds
            max_nodes and approximate is False.
    """
    n, _ = check_matrix(x, "smea")
    check_f(n, f, need=2 * f + 1, rule="smea", formula="n > 2f")
    check_float(x, "smea")
    _check_params(max_nodes, error=RuleError)
    g, ok = gram(x)
    keep = min_eigen_subset(g, ok, n - f, max_nodes=max_nodes, approximate=approximate)
    w = torch.zeros(n, dtype=torch.float64)
    w[keep] = 1.0 / (n - f)
    return weighted_sum(x, w, ok)  # (d,)


def min_eigen_subset(
    g: Tensor, ok: Tensor, m: int, *, max_nodes: int = 50_000, approximate: bool = False
) -> list[int]:
    """Indices (sorted) of the m rows whose centered Gram matrix has the smallest top
    eigenvalue, given the Gram matrix g (n, n) float64 and the finite-row mask ok."""
    n = g.shape[0]
    good = torch.nonzero(ok).flatten().tolist()
    if len(good) < m:  # more than f non-finite rows: no finite answer
        bad = [i for i in range(n) if not ok[i]]
        return sorted(good + bad[: m - len(good)])
    if len(good) == m:
        return good
    sub = g[good][:, good]  # (n', n') non-finite rows are always excluded
    with serial():
        keep = _Search(sub, len(good) - m, max_nodes).run(approximate)
    return sorted(good[i] for i in keep)


def _centered(gs: Tensor) -> Tensor:
    """Centered Gram matrix C G C (C = I - 11^T/k) of a (k, k) Gram block."""
    r = gs.mean(dim=0)  # (k,)
    return gs - r[:, None] - r[None, :] + r.mean()


def _top(gs: Tensor) -> float:
    """Top eigenvalue of the centered Gram block: (k) * lambda_max of the covariance."""
    if gs.shape[0] < 2:
        return 0.0
    return float(torch.linalg.eigvalsh(_centered(gs))[-1])


class _Budget(Exception):
    """The exact search ran past max_nodes."""


class _Search:
    """Branch and bound over the excluded set E (|E| = f) of an (n, n) Gram matrix.

    Rows are reordered so the incumbent's excluded rows come first, then the rest by
    decreasing distance to the centroid. A node holds E (sorted) and a start s: rows
    before s that are not in E are forced in (T), rows from s on are free, U is the
    complement of E and r = f - |E|. With t the best value so far:

    * excl: for R inside the free rows, #eig(K_{U - R}) > t equals
      p + pos(B_RR) - |R|, where p = #eig(K_U) > t and
      B = -11^T/|U| - t (K_U - tI)^{-1} (inertia of a rank-|R| downdate). So a child
      U - {e} keeps p_e = p + [B_ee > 0] - 1 eigenvalues above t and is hopeless when
      p_e >= r; and the child's B is the Schur complement of B_ee in B, one rank-one
      update instead of a new inverse (recomputed from scratch when t improves or the
      pivot is tiny).
    * incl: lambda_1(K_T) >= t (a Cholesky of t I - K_T fails) prunes a child and all
      its later siblings, whose T only grows.
    """

    def __init__(self, g: Tensor, f: int, max_nodes: int) -> None:
        self.n, self.f, self.max_nodes = g.shape[0], f, max_nodes
        self.nodes = 0
        excluded, self.best = _greedy_swap(g, f)
        kept = [i for i in range(self.n) if i not in excluded]
        spread = _centered(g).diagonal()  # (n,) squared distance to the centroid
        kept.sort(key=lambda i: -float(spread[i]))
        self.order = excluded + kept
        idx = torch.tensor(self.order)
        self.g = g[idx][:, idx]  # (n, n) in search order
        self.best_e = list(range(f))  # the incumbent's excluded rows, in search order
        self._eye: dict[int, Tensor] = {}
        self._center: dict[int, Tensor] = {}

    def run(self, approximate: bool) -> list[int]:
        """The kept rows, in the caller's indexing."""
        if self.best > 0.0:
            try:
                b, p = self._fresh([], self.best)
                self._node([], 0, p, b, self.best)
            except _Budget:
                if not approximate:
                    raise RuleError(
                        f"smea: the exact search passed max_nodes={self.max_nodes} branch-and-bound "
                        f"nodes (n={self.n}, f={self.f}); raise aggregator.max_nodes, or set "
                        "aggregator.approximate=true to accept the best subset found so far"
                    ) from None
        out = set(self.best_e)
        return [self.order[i] for i in range(self.n) if i not in out]

    def _fresh(self, e_set: list[int], t: float) -> tuple[Tensor, int]:
        """B (n, n) for U = complement of E at threshold t (zero on E's rows and columns),
        and p = #eig(K_U) > t."""
        excl = set(e_set)
        u = torch.tensor([i for i in range(self.n) if i not in excl])
        k_u = _centered(self.g[u][:, u])  # (|U|, |U|)
        inv, info = torch.linalg.inv_ex(k_u - t * self._eye_of(len(u)))
        if int(info) != 0:  # t is an eigenvalue of K_U: decide for a hair below t
            t = t * (1.0 - 1e-12)
            inv = torch.linalg.inv(k_u - t * self._eye_of(len(u)))
        p = int((torch.linalg.eigvalsh(k_u) > t).sum())
        b = torch.zeros(self.n, self.n, dtype=self.g.dtype)
        b[u[:, None], u] = -1.0 / len(u) - t * inv
        return b, p

    def _node(self, e_set: list[int], s: int, p: int, b: Tensor, t_b: float) -> None:
        """Search the subsets below (E, s); b is B at threshold t_b."""
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise _Budget
        n, r = self.n, self.f - len(e_set)
        excl = set(e_set)
        diag: list[float] = []
        g_u: Tensor | None = None  # Gram block of U (sorted): T for child e is its first e - |E| rows
        for e in range(s, n - r + 1):
            if not diag or self.best != t_b:  # first child, or improved in a sibling's subtree
                if self.best != t_b:
                    t_b = self.best
                    b, p = self._fresh(e_set, t_b)
                    if p > r:
                        return
                diag = b.diagonal().tolist()
                scale = max(max(diag), -min(diag))
            pivot = diag[e]
            pe = p + (1 if pivot > 0.0 else 0) - 1  # eigenvalues of K_{U - e} above t
            if r == 1:  # children are leaves
                if pe <= 0:
                    keep = [i for i in range(n) if i not in excl and i != e]
                    val = _top(self.g[keep][:, keep])
                    if val < self.best:
                        self.best, self.best_e = val, sorted(e_set + [e])
                continue
            if pe >= r:  # lambda_r(K_{U - e}) >= t: hopeless
                continue
            k = e - len(e_set)  # |T| for child e
            if k >= 2:
                if g_u is None:
                    u = torch.tensor([i for i in range(n) if i not in excl])
                    g_u = self.g[u[:, None], u]  # (|U|, |U|)
                c = self._center_of(k)
                m = torch.addmm(self._eye_of(k), c @ g_u[:k, :k], c, beta=t_b, alpha=-1.0)
                if int(torch.linalg.cholesky_ex(m)[1]) != 0:  # lambda_1(K_T) >= t
                    break  # later siblings have larger T
            if abs(pivot) > 1e-9 * scale:  # the child's B: Schur complement of the pivot
                child = torch.addr(b, b[:, e], b[e], alpha=-1.0 / pivot)  # row e left ~0, unused
                self._node(e_set + [e], e + 1, pe, child, t_b)
            else:  # ill-conditioned pivot: rebuild the child's B exactly
                self._node(e_set + [e], e + 1, pe, b, float("nan"))

    def _eye_of(self, k: int) -> Tensor:
        if k not in self._eye:
            self._eye[k] = torch.eye(k, dtype=self.g.dtype)
        return self._eye[k]

    def _center_of(self, k: int) -> Tensor:
        if k not in self._center:
            self._center[k] = self._eye_of(k) - 1.0 / k
        return self._center[k]


def _greedy_swap(g: Tensor, f: int) -> tuple[list[int], float]:
    """Incumbent: drop f rows one by one (each time the row whose removal lowers the top
    eigenvalue most), then apply the best single swap while it improves."""
    n = g.shape[0]
    kept = list(range(n))
    for _ in range(f):
        trials = [[i for i in kept if i != j] for j in kept]
        vals = _tops(g, trials)
        kept = trials[int(torch.argmin(vals))]
    best = _top(g[kept][:, kept])
    for _ in range(4 * n):
        out = [i for i in range(n) if i not in kept]
        trials = [[i for i in kept if i != a] + [b] for a in kept for b in out]
        vals = _tops(g, trials)
        j = int(torch.argmin(vals))
        if not float(vals[j]) < best * (1 - 1e-12):
            break
        kept, best = sorted(trials[j]), float(vals[j])
    return [i for i in range(n) if i not in kept], best


def _tops(g: Tensor, subsets: list[list[int]]) -> Tensor:
    """Top centered-Gram eigenvalue of each equal-size subset, batched."""
    idx = torch.tensor(subsets)  # (b, k)
    blocks = g[idx[:, :, None], idx[:, None, :]]  # (b, k, k)
    r = blocks.mean(dim=1)  # (b, k)
    k_c = blocks - r[:, :, None] - r[:, None, :] + r.mean(dim=1)[:, None, None]
    return torch.linalg.eigvalsh(k_c)[:, -1]  # (b,)


def _check_params(max_nodes: int, *, error: type[Exception]) -> None:
    if max_nodes < 1:
        raise error(f"smea needs max_nodes >= 1. Got max_nodes={max_nodes}")


@dataclass(kw_only=True)
class Smea(Aggregator):
    """Config of `smea`."""

    _target_: str = "byzctl.aggregators.smea.Smea"
    name: str = "smea"
    max_nodes: int = 50_000
    """Branch-and-bound nodes the exact search may visit (0.1-0.3 ms each on a CPU core)."""
    approximate: bool = False
    """Past max_nodes, return the best subset found instead of raising."""

    fn: ClassVar = staticmethod(smea)
    paper = (
        "Allouah, Guerraoui, Gupta, Pinot, Stephan, 'On the privacy-robustness-utility trilemma in "
        "distributed learning', ICML 2023"
    )
    convention = (
        'Exact search over the subsets of size n - f for the smallest top covariance eigenvalue '
        '(approximate=true: a greedy search); n > 2f.'
    )

    def __post_init__(self) -> None:
        _check_params(self.max_nodes, error=ConfigError)
