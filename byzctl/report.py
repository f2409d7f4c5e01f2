"""`byzctl report DIR [--out DIR2]`: tables and plots of a run, a sweep, or a folder of them.

Writes `report.md`, `report.csv` and PNG figures (matplotlib, headless):

- a table of every job: state, the overrides that differ between jobs, final and best
  test accuracy, final loss;
- for sweeps, the worst case over attacks of each rule (aggregator with its
  pre-aggregators): robustness is judged by the lowest accuracy any attack achieves;
- `heatmap_rule_attack.png` (final accuracy, rule x attack);
- `heatmap_f_heterogeneity.png` when nodes.byzantine and the data heterogeneity
  (dataset.partition / dataset.alpha) were both swept: per rule, the worst case over
  attacks in each cell, as ByzFL's benchmark plots do;
- `curves_<rule>.png`: test accuracy and loss against rounds, one line per job;
- `consensus.png` for decentralized runs (their metrics carry consensus_distance).

Seeds: jobs that differ only in `seed` form one cell (rule, other swept keys, attack).
`report.md` gives each cell's mean, sample standard deviation, 95% confidence interval
(Student t with n - 1 degrees of freedom, `t95`) and number of seeds n; `cells.csv` has one
row per cell with those columns (`report.csv` keeps one row per job). The heatmaps show
the mean and mark with * the cells whose interval overlaps that of the best cell they are
compared with (the column's best rule; in the f x heterogeneity map, the best rule at that
f and heterogeneity): with the seeds run, those cannot be told apart from the best.
Only COMPLETED jobs enter the aggregate tables and heatmaps (a failed or interrupted job is
listed with its state and reason, never crashes the report).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byzctl.errors import ByzctlError
from byzctl.states import RunState
from byzctl.status import Run, find_runs

GROUP_KEYS = {"aggregator", "attack", "dataset", "model", "topology", "device", "graph"}
"""Override keys that pick a config group's option (`aggregator=krum`)."""
RULE_PREFIXES = ("aggregator.", "preagg.")
ATTACK_PREFIXES = ("attack.",)
RULE_KEYS = {"aggregator", "preagg"}
ATTACK_KEYS = {"attack"}
SEED_KEY = "seed"
F_KEY = "nodes.byzantine"
HETERO_KEYS = ("dataset.partition", "dataset.alpha", "dataset.gamma")
DPI = 100


# -- jobs -------------------------------------------------------------------------------
@dataclass
class Job:
    """A run with the labels a report groups it by."""

    run: Run
    name: str
    """Path relative to the reported folder."""
    params: dict[str, str]
    """Value of each swept key."""
    rule: str
    """Pre-aggregators then aggregator, e.g. `bucketing+krum`, plus swept rule parameters."""
    attack: str
    context: tuple[tuple[str, str], ...]
    """Swept keys that are neither rule, attack nor seed (e.g. nodes.byzantine=2)."""

    @property
    def completed(self) -> bool:
        return self.run.state == RunState.COMPLETED and self.run.accuracy is not None

    @property
    def line_label(self) -> str:
        """What tells this job apart from the others of its rule."""
        parts = [self.attack, *(f"{k}={v}" for k, v in self.context)]
        if SEED_KEY in self.params:
            parts.append(f"seed={self.params[SEED_KEY]}")
        return " ".join(parts)


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """`['+experiment=x', 'aggregator=krum']` -> {'experiment': 'x', 'aggregator': 'krum'};
    Hydra's own settings (hydra.*) are left out."""
    out = {}
    for ov in overrides:
        key, sep, value = ov.partition("=")
        key = key.lstrip("+~")
        if sep and not key.startswith("hydra."):
            out[key] = value.strip("'\"")
    return out


def config_value(run: Run, key: str) -> str:
    """The value a job ran with for an override key, from its overrides or resolved config."""
    ov = parse_overrides(run.overrides)
    if key in ov:
        return ov[key]
    if key == "preagg":
        return "[" + ",".join(run.preaggs) + "]"
    value = run.get(f"{key}.name") if key in GROUP_KEYS else run.get(key)
    return "" if value is None else _fmt(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value)


def make_jobs(runs: list[Run], root: Path) -> tuple[list[Job], list[str], dict[str, str]]:
    """Jobs in natural path order, the swept keys, and the overrides common to all jobs."""
    keys: list[str] = []
    for run in runs:
        for key in parse_overrides(run.overrides):
            if key not in keys:
                keys.append(key)
    values = {key: [config_value(run, key) for run in runs] for key in keys}
    swept = [k for k in keys if len(set(values[k])) > 1]
    common = {k: values[k][0] for k in keys if k not in swept}
    jobs = []
    for i, run in enumerate(runs):
        params = {k: values[k][i] for k in swept}
        rule_extra = [f"{k.split('.', 1)[1]}={v}" for k, v in params.items() if k.startswith(RULE_PREFIXES)]
        attack_extra = [f"{k.split('.', 1)[1]}={v}" for k, v in params.items() if k.startswith(ATTACK_PREFIXES)]
        rule = "+".join([*run.preaggs, run.aggregator]) + (f"({', '.join(rule_extra)})" if rule_extra else "")
        attack = run.attack + (f"({', '.join(attack_extra)})" if attack_extra else "")
        context = tuple(
            (k, v) for k, v in params.items()
            if k not in RULE_KEYS | ATTACK_KEYS | {SEED_KEY} and not k.startswith(RULE_PREFIXES + ATTACK_PREFIXES)
        )
        name = str(run.path.relative_to(root)) if run.path != root else run.path.resolve().name
        jobs.append(Job(run, name, params, rule, attack, context))
    jobs.sort(key=lambda j: _natural(j.name))
    return jobs, swept, common


def _natural(text: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t]


def _attack_order(name: str) -> tuple[int, str]:
    return (0 if name == "none" else 1, name)


# -- tables ------------------------------------------------------------------------------
def _acc(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _loss(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.3e}"


def job_rows(jobs: list[Job], swept: list[str]) -> list[dict[str, Any]]:
    rows = []
    for j in jobs:
        r = j.run
        best, best_round = r.best
        last = r.curve[-1] if r.curve else None
        rows.append({
            "job": j.name, "state": r.state, **{k: j.params.get(k, "") for k in swept},
            "rule": j.rule, "attack": j.attack,
            "rounds_done": r.rounds_done, "rounds": r.rounds,
            "final_accuracy": r.accuracy, "best_accuracy": best, "best_round": best_round,
            "final_loss": r.loss, "worst_node_accuracy": r.worst_accuracy,
            "consensus_distance": last.consensus_distance if last else None,
            "wall_seconds": r.summary.get("wall_seconds"), "reason": r.reason, "path": str(r.path),
        })
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def md_table(header: list[str], body: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def runs_table(rows: list[dict[str, Any]], swept: list[str]) -> str:
    decentralized = any(r["worst_node_accuracy"] is not None for r in rows)
    header = ["job", "state", *swept, "rounds", "final acc", "best acc (round)", "final loss"]
    header += ["worst node acc"] if decentralized else []
    body = []
    for r in rows:
        best = "" if r["best_accuracy"] is None else f"{r['best_accuracy']:.4f}" + (f" ({r['best_round']})" if r["best_round"] is not None else "")
        rounds = f"{r['rounds_done']}/{'?' if r['rounds'] is None else r['rounds']}"
        loss = _loss(r["final_loss"])
        row = [r["job"], r["state"], *(str(r[k]) for k in swept), rounds, _acc(r["final_accuracy"]), best, loss]
        row += [_acc(r["worst_node_accuracy"])] if decentralized else []
        body.append(row)
    return md_table(header, body)


T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
       2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
       2.052, 2.048, 2.045, 2.042)
"""Two-sided 95% quantiles t_{0.975, df} of Student's t for df = 1..30 (standard tables)."""


def t95(df: int) -> float:
    """t_{0.975, df}: the table up to df = 30, then the Cornish-Fisher expansion around the
    normal quantile 1.95996 (error below 1e-4 for df > 30), so no scipy is needed."""
    if df < 1:
        raise ValueError(f"t95 needs df >= 1. Got df={df}")
    if df <= len(T95):
        return T95[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass
class Cell:
    """Final accuracies of the completed jobs behind one table cell: one per seed."""

    values: list[float]
    states: list[str]
    seeds: list[str] | None = None
    """The seed of each value, where the jobs say."""

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1 in the denominator); None below 2 values."""
        if self.n < 2:
            return None
        m = sum(self.values) / self.n
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def ci95(self) -> tuple[float, float] | None:
        """mean -/+ t95(n - 1) * std / sqrt(n); None below 2 values."""
        if self.mean is None or self.std is None:
            return None
        half = t95(self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def overlaps(self, other: Cell) -> bool:
        """True when both intervals exist and intersect."""
        a, b = self.ci95, other.ci95
        return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]

    def text(self) -> str:
        if not self.values:
            return "/".join(sorted(set(self.states))) or ""
        m = sum(self.values) / len(self.values)
        if len(self.values) > 1:
            sd = math.sqrt(sum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))
            return f"{m:.4f} ± {sd:.4f}"
        return f"{m:.4f}"


def cells(jobs: list[Job], row_key: Any, col_key: Any) -> dict[tuple[Any, Any], Cell]:
    out: dict[tuple[Any, Any], Cell] = defaultdict(lambda: Cell([], [], []))
    for j in jobs:
        c = out[(row_key(j), col_key(j))]
        if j.completed:
            c.values.append(j.run.accuracy)  # type: ignore[arg-type]
            c.seeds.append(config_value(j.run, SEED_KEY))  # type: ignore[union-attr]
        else:
            c.states.append(j.run.state)
    return out


@dataclass
class WorstCase:
    rows: list[tuple[str, tuple[tuple[str, str], ...]]]
    """(rule, context) in decreasing worst-case accuracy."""
    attacks: list[str]
    table: dict[tuple[Any, Any], Cell]

    def worst_cell(self, row: Any) -> Cell | None:
        """The cell of the attack with the lowest mean accuracy for this row (None: no result)."""
        got = [self.table[(row, a)] for a in self.attacks if (row, a) in self.table and self.table[(row, a)].mean is not None]
        return min(got, key=lambda c: c.mean) if got else None  # type: ignore[arg-type, return-value]

    def worst(self, row: Any) -> tuple[float | None, str, bool]:
        """Lowest mean accuracy over attacks, the attack achieving it, and whether every attack had a result."""
        got = [(self.table[(row, a)].mean, a) for a in self.attacks if (row, a) in self.table]
        vals = [(m, a) for m, a in got if m is not None]
        if not vals:
            return None, "", False
        m, a = min(vals)
        return m, a, len(vals) == len(self.attacks)


def worst_case(jobs: list[Job]) -> WorstCase:
    attacks = sorted({j.attack for j in jobs}, key=_attack_order)
    table = cells(jobs, lambda j: (j.rule, j.context), lambda j: j.attack)
    wc = WorstCase([], attacks, table)
    keys = list(dict.fromkeys((j.rule, j.context) for j in jobs))

    def most_robust_first(k: tuple[str, Any]) -> tuple[float, str, Any]:
        m = wc.worst(k)[0]
        return (-m if m is not None else 1.0, k[0], k[1])

    keys.sort(key=most_robust_first)
    wc.rows = keys
    return wc


def worst_case_table(wc: WorstCase) -> str:
    ctx_keys = list(dict.fromkeys(k for _, ctx in wc.rows for k, _ in ctx))
    header = ["rule", *ctx_keys, *wc.attacks, "worst case", "worst attack"]
    body = []
    for row in wc.rows:
        rule, ctx = row
        ctx_map = dict(ctx)
        m, a, full = wc.worst(row)
        worst = "" if m is None else f"{m:.4f}" + ("" if full else " (incomplete)")
        body.append([rule, *(ctx_map.get(k, "") for k in ctx_keys),
                     *(wc.table[(row, att)].text() if (row, att) in wc.table else "" for att in wc.attacks), worst, a])
    return md_table(header, body)


def _best(candidates: list[Cell]) -> Cell | None:
    done = [c for c in candidates if c.mean is not None]
    return max(done, key=lambda c: c.mean) if done else None  # type: ignore[arg-type, return-value]


def ties_best(cell: Cell, best: Cell | None) -> bool:
    """True when `cell` is the best one or its 95% interval overlaps the best's."""
    return best is not None and cell.mean is not None and (cell is best or cell.overlaps(best))


def seed_rows(wc: WorstCase) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per cell (rule, other swept keys, attack): n, mean, std and 95% CI over the
    seeds, and whether it ties the best rule under the same attack and other keys; then each
    rule's worst case (attack `worst`, the worst attack's cell)."""
    ctx_keys = list(dict.fromkeys(k for _, ctx in wc.rows for k, _ in ctx))
    cols: dict[tuple[Any, str], list[tuple[Any, Cell]]] = defaultdict(list)
    for row in wc.rows:
        for att in wc.attacks:
            if (row, att) in wc.table:
                cols[(row[1], att)].append((row, wc.table[(row, att)]))
        if (worst := wc.worst_cell(row)) is not None:
            cols[(row[1], "worst")].append((row, worst))
    order = {row: i for i, row in enumerate(wc.rows)}
    keyed = []
    for (ctx, att), entries in cols.items():
        best = _best([c for _, c in entries])
        for row, c in entries:
            rule = row[0]
            lo, hi = c.ci95 or (None, None)
            keyed.append(((order[row], att == "worst", _attack_order(att)), {
                "rule": rule, **{k: dict(ctx).get(k, "") for k in ctx_keys},
                "attack": att if att != "worst" else f"worst ({wc.worst(row)[1]})",
                "n": c.n, "mean": c.mean, "std": c.std, "ci95_low": lo, "ci95_high": hi,
                "ties_best": ties_best(c, best), "seeds": " ".join(c.seeds or []), "not_completed": " ".join(c.states),
            }))
    rows = [r for _, r in sorted(keyed, key=lambda kr: kr[0])]
    return ctx_keys, rows


def seeds_table(ctx_keys: list[str], rows: list[dict[str, Any]]) -> str:
    header = ["rule", *ctx_keys, "attack", "n", "mean", "std", "95% CI", "ties best"]
    body = []
    for r in rows:
        ci = "" if r["ci95_low"] is None else f"[{r['ci95_low']:.4f}, {r['ci95_high']:.4f}]"
        std = "" if r["std"] is None else f"{r['std']:.4f}"
        body.append([r["rule"], *(str(r[k]) for k in ctx_keys), r["attack"], str(r["n"]), _acc(r["mean"]), std, ci,
                     "*" if r["ties_best"] and r["n"] > 1 else ""])
    return md_table(header, body)


# -- figures -----------------------------------------------------------------------------
def _figure(width: float, height: float):  # type: ignore[no-untyped-def]
    """A matplotlib Figure not attached to pyplot (headless, no global state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text).strip("_") or "run"


def _heatmap(ax: Any, grid: list[list[float | None]], rows: list[str], cols: list[str], title: str,
             marks: list[list[bool]] | None = None) -> Any:
    """Means as colours and text; a cell with a mark gets '*' and a red frame (ties the best)."""
    import numpy as np
    from matplotlib.patches import Rectangle

    data = np.array([[np.nan if v is None else v for v in r] for r in grid], dtype=float)
    cmap = _cmap()
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=rows, fontsize=8)
    for (i, k), v in np.ndenumerate(data):
        text = "n/a" if math.isnan(v) else f"{v:.2f}"
        marked = marks is not None and marks[i][k]
        ax.text(k, i, text + ("*" if marked else ""), ha="center", va="center", fontsize=8,
                color="white" if math.isnan(v) or v < 0.5 else "black")
        if marked:
            ax.add_patch(Rectangle((k - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_title(title, fontsize=9)
    return im


def _cmap() -> Any:
    import matplotlib

    return matplotlib.colormaps["viridis"].with_extremes(bad="#888888")


def heatmap_rule_attack(wc: WorstCase, jobs: list[Job], path: Path) -> None:
    rules = list(dict.fromkeys(rule for rule, _ in wc.rows))
    table = cells(jobs, lambda j: j.rule, lambda j: j.attack)  # contexts and seeds averaged
    grid = [[table[(r, a)].mean if (r, a) in table else None for a in wc.attacks] for r in rules]
    worst = [min((v for v in row if v is not None), default=None) for row in grid]
    cols = [*wc.attacks, "worst"]
    fig = _figure(*heatmap_size(len(rules), len(cols)))
    ax = fig.add_subplot()
    ctx = sorted({k for j in jobs for k, _ in j.context} | ({SEED_KEY} if any(SEED_KEY in j.params for j in jobs) else set()))
    title = "final test accuracy" + (f" (mean over {', '.join(ctx)})" if ctx else "")
    marks = None
    if not any(j.context for j in jobs):  # each cell holds seeds only: its interval means something
        cell_grid: list[list[Cell | None]] = [[table.get((r, a)) for a in wc.attacks] + [wc.worst_cell((r, ()))] for r in rules]
        bests = [_best([c for row in cell_grid if (c := row[k]) is not None]) for k in range(len(cols))]
        marks = [[c is not None and ties_best(c, bests[k]) and c.n > 1 for k, c in enumerate(row)] for row in cell_grid]
        if any(any(m) for m in marks):
            title += "; * 95% CI overlaps the column's best"
    im = _heatmap(ax, [[*g, w] for g, w in zip(grid, worst)], rules, cols, title, marks)
    ax.axvline(len(wc.attacks) - 0.5, color="white", linewidth=3)
    ax.set_xlabel("attack")
    ax.set_ylabel("rule")
    fig.colorbar(im, ax=ax, shrink=0.9)
    fig.savefig(path, dpi=DPI)


def heatmap_size(rows: int, cols: int) -> tuple[float, float]:
    """Figure size in inches (multiples of 1/4, so pixel sizes are exact at 100 dpi)."""
    return 3.0 + 1.25 * cols, 1.5 + 0.5 * rows


def hetero_label(run: Run) -> str:
    part = str(run.get("dataset.partition") or "?")
    if part == "dirichlet":
        return f"dirichlet α={_fmt(run.get('dataset.alpha'))}"
    if part == "gamma_similarity":
        return f"γ={_fmt(run.get('dataset.gamma'))}"
    return part


def _hetero_order(label: str, jobs: list[Job]) -> tuple[int, float, str]:
    """iid first, then Dirichlet by decreasing alpha (more heterogeneous to the right)."""
    kinds = ["iid", "gamma_similarity", "dirichlet", "extreme"]
    run = next(j.run for j in jobs if hetero_label(j.run) == label)
    part = str(run.get("dataset.partition") or "")
    alpha = run.get("dataset.alpha") if part == "dirichlet" else run.get("dataset.gamma")
    rank = kinds.index(part) if part in kinds else len(kinds)
    return rank, -float(alpha) if isinstance(alpha, (int, float)) else 0.0, label


def f_heterogeneity_cells(jobs: list[Job]) -> tuple[list[int], list[str], dict[str, list[list[Cell | None]]]] | None:
    """f values (rows), heterogeneity labels (columns) and, per rule, the cell of the worst
    case over attacks (and any other swept key) by seed-mean accuracy; None unless both axes vary."""
    fs = sorted({int(j.run.get(F_KEY)) for j in jobs if isinstance(j.run.get(F_KEY), int)})
    hets = sorted({hetero_label(j.run) for j in jobs}, key=lambda h: _hetero_order(h, jobs))
    if len(fs) < 2 or len(hets) < 2:
        return None
    table = cells(jobs, lambda j: (j.rule, j.run.get(F_KEY), hetero_label(j.run)), lambda j: (j.attack, j.context))
    grids = {}
    for rule in sorted({j.rule for j in jobs}):
        grid = []
        for f in fs:
            found = [[c for (row, _), c in table.items() if row == (rule, f, het) and c.mean is not None] for het in hets]
            grid.append([min(cs, key=lambda c: c.mean) if cs else None for cs in found])  # type: ignore[arg-type, return-value]
        grids[rule] = grid
    return fs, hets, grids


def f_heterogeneity_grid(jobs: list[Job]) -> tuple[list[int], list[str], dict[str, list[list[float | None]]]] | None:
    """As `f_heterogeneity_cells`, with each cell's mean."""
    found = f_heterogeneity_cells(jobs)
    if found is None:
        return None
    fs, hets, grids = found
    return fs, hets, {rule: [[None if c is None else c.mean for c in row] for row in g] for rule, g in grids.items()}


def heatmap_f_heterogeneity(jobs: list[Job], path: Path) -> bool:
    """One panel per rule: worst case over attacks for each (f, heterogeneity)."""
    found = f_heterogeneity_cells(jobs)
    if found is None:
        return False
    fs, hets, grids = found
    w, h = heatmap_size(len(fs), len(hets))
    fig = _figure(w * len(grids), h + 0.5)
    im = None
    rules = list(grids)
    bests = [[_best([c for r in rules if (c := grids[r][i][k]) is not None]) for k in range(len(hets))] for i in range(len(fs))]
    for k, (rule, cgrid) in enumerate(grids.items()):
        ax = fig.add_subplot(1, len(grids), k + 1)
        grid = [[None if c is None else c.mean for c in row] for row in cgrid]
        marks = [[c is not None and c.n > 1 and len(rules) > 1 and ties_best(c, bests[i][m]) for m, c in enumerate(row)]
                 for i, row in enumerate(cgrid)]
        title = f"{rule}: worst case over attacks" + ("; * ties the best rule" if any(any(r) for r in marks) else "")
        im = _heatmap(ax, grid, [str(f) for f in fs], hets, title, marks)
        ax.set_xlabel("heterogeneity")
        ax.set_ylabel("f (nodes.byzantine)")
    fig.colorbar(im, ax=fig.axes, shrink=0.9)
    fig.savefig(path, dpi=DPI)
    return True


def evaluated_once(jobs: list[Job]) -> list[Job]:
    """Jobs with at most one evaluated round (rounds < eval_every evaluates only the last):
    their curves are single points."""
    return [j for j in jobs if len({p.round for p in j.run.curve if p.accuracy is not None}) <= 1]


def once_warning(jobs: list[Job]) -> str:
    """A line saying which jobs have no curve to draw and why, or '' when all have one."""
    once = evaluated_once(jobs)
    if not once:
        return ""
    settings = sorted({f"rounds={j.run.config.get('rounds')}, eval_every={j.run.config.get('eval_every')}" for j in once})
    return (f"{len(once)} of {len(jobs)} runs evaluated at most once ({'; '.join(settings)}): their curves are single "
            f"points at the last round; set eval_every <= rounds / 2 for curves")


def curves(rule: str, jobs: list[Job], path: Path) -> Any:
    """Accuracy and loss against rounds, one line per job of this rule; returns the Figure."""
    fig = _figure(*CURVES_SIZE)
    ax_acc, ax_loss = fig.subplots(1, 2)
    colors = _colors(len(jobs))
    for j, color in zip(jobs, colors):
        pts = j.run.curve
        label = j.line_label + ("" if j.run.state == RunState.COMPLETED else f" [{j.run.state}]")
        acc = [(p.round, p.accuracy) for p in pts if p.accuracy is not None]
        loss = [(p.round, p.loss) for p in pts if p.loss is not None]
        worst = [(p.round, p.worst_accuracy) for p in pts if p.worst_accuracy is not None]
        if acc:
            ax_acc.plot(*zip(*acc), color=color, marker="." if len(acc) < 30 else None, label=label)
        if worst:
            ax_acc.plot(*zip(*worst), color=color, linestyle="--", linewidth=1)
        if loss:
            ax_loss.plot(*zip(*loss), color=color, marker="." if len(loss) < 30 else None, label=label)
    ax_acc.set(xlabel="round", ylabel="test accuracy", title=f"{rule}: test accuracy" + (" (dashed: worst honest node)" if any(p.worst_accuracy is not None for j in jobs for p in j.run.curve) else ""))
    ax_loss.set(xlabel="round", ylabel="test loss", title=f"{rule}: test loss")
    ax_acc.set_ylim(0.0, 1.0)
    losses = [p.loss for j in jobs for p in j.run.curve if p.loss is not None]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 100:
        ax_loss.set_yscale("log")  # a diverging run would flatten every other curve
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    last = max((p.round for j in jobs for p in j.run.curve), default=0)
    if len(evaluated_once(jobs)) == len(jobs) and last > 0:
        # Single points: matplotlib would centre each on an axis one round wide (19 to 21);
        # show them on the run's whole span instead, and say why there is no curve.
        for ax in (ax_acc, ax_loss):
            ax.set_xlim(0, last * 1.05)
            ax.text(0.5, 0.5, f"one evaluation per run (round {last}): no curve; set eval_every <= rounds / 2",
                    transform=ax.transAxes, ha="center", va="center", fontsize=8, color="#555555")
    if any(j.run.curve for j in jobs):
        ax_acc.legend(fontsize=7, loc="best", ncol=1 if len(jobs) <= 8 else 2)
    fig.savefig(path, dpi=DPI)
    return fig


CURVES_SIZE = (11.0, 4.0)
CONSENSUS_SIZE = (7.0, 4.5)


def consensus(jobs: list[Job], path: Path) -> bool:
    with_cd = [j for j in jobs if any(p.consensus_distance is not None for p in j.run.curve)]
    if not with_cd:
        return False
    fig = _figure(*CONSENSUS_SIZE)
    ax = fig.add_subplot()
    positive = True
    for j, color in zip(with_cd, _colors(len(with_cd))):
        pts = [(p.round, p.consensus_distance) for p in j.run.curve if p.consensus_distance is not None]
        positive &= all(v > 0 for _, v in pts)  # type: ignore[operator]
        ax.plot(*zip(*pts), color=color, marker=".", label=f"{j.rule} {j.line_label}")
    if positive:
        ax.set_yscale("log")
    ax.set(xlabel="round", ylabel="consensus distance", title="spread of honest models (mean squared distance to their average)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=DPI)
    return True


def _colors(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# -- the report ----------------------------------------------------------------------------
def report(root: Path, out: Path) -> tuple[str, list[Path]]:
    """Write report.md, report.csv and figures for the runs under `root` into `out`."""
    runs = find_runs(root)
    if not runs:
        raise ByzctlError(f"no runs under {root}: a run directory holds run.json (byzctl run writes them under ./outputs)")
    out.mkdir(parents=True, exist_ok=True)
    jobs, swept, common = make_jobs(runs, root)
    rows = job_rows(jobs, swept)
    written = [out / "report.csv"]
    write_csv(written[0], rows)

    states: dict[str, int] = defaultdict(int)
    for j in jobs:
        states[j.run.state] += 1
    names = sorted({str(j.run.config.get("name")) for j in jobs if j.run.config.get("name") not in (None, "byzctl")})
    md = [f"# byzctl report: {', '.join(names) + ' in ' if names else ''}{root}", ""]
    md.append(f"{len(jobs)} run{'s' if len(jobs) != 1 else ''}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    warning = once_warning(jobs)
    if warning:
        md += ["", f"Warning: {warning}."]
    if common:
        typed = {k.lstrip("+~"): k for run in runs for k, _, _ in (ov.partition("=") for ov in run.overrides)}
        md += ["", "Common overrides: " + " ".join(f"`{typed.get(k, k)}={v}`" for k, v in common.items())]
    if swept:
        md += ["", "Swept: " + ", ".join(f"`{k}`" for k in swept)]
    md += ["", "## Runs", "", runs_table(rows, swept)]
    failed = [j for j in jobs if j.run.state != RunState.COMPLETED]
    if failed:
        md += ["", "Not completed:", ""]
        md += [f"- `{j.name}`: {j.run.state}" + (f": {j.run.reason}" if j.run.reason else "") for j in failed]

    figures: list[tuple[str, Path]] = []
    if len(jobs) > 1:
        wc = worst_case(jobs)
        md += ["", "## Worst case over attacks", "",
               "Final test accuracy of each rule under each attack (mean ± sd over seeds when several), "
               "and its minimum over attacks: a rule is as robust as its worst case.", "", worst_case_table(wc)]
        ctx_keys, srows = seed_rows(wc)
        p = out / "cells.csv"
        write_csv(p, srows)
        written.append(p)
        if any(r["n"] > 1 for r in srows):
            md += ["", "## Seeds", "",
                   "Each cell groups the jobs that differ only in `seed`: n seeds, mean, sample standard deviation "
                   "and 95% confidence interval of the final accuracy (Student t, n - 1 degrees of freedom). "
                   "* marks a cell whose interval overlaps the best rule's under the same attack (and other swept keys): "
                   "these seeds cannot tell them apart.", "", seeds_table(ctx_keys, srows)]
        p = out / "heatmap_rule_attack.png"
        heatmap_rule_attack(wc, jobs, p)
        figures.append(("Final accuracy, rule x attack", p))
        p = out / "heatmap_f_heterogeneity.png"
        if heatmap_f_heterogeneity(jobs, p):
            figures.append(("Worst case over attacks, f x heterogeneity", p))
    by_rule: dict[str, list[Job]] = defaultdict(list)
    for j in jobs:
        by_rule[j.rule].append(j)
    for rule, rjobs in by_rule.items():
        p = out / f"curves_{safe_name(rule)}.png"
        curves(rule, rjobs, p)
        figures.append((f"Curves: {rule}", p))
    p = out / "consensus.png"
    if consensus(jobs, p):
        figures.append(("Consensus distance", p))

    md += ["", "## Figures", ""]
    for title, p in figures:
        md += [f"### {title}", "", f"![{title}]({p.name})", ""]
    text = "\n".join(md).rstrip() + "\n"
    (out / "report.md").write_text(text)
    written += [out / "report.md", *(p for _, p in figures)]
    return text, written


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="byzctl report", description="Tables and plots of a run, a sweep (outputs/multirun/<date>/<time>) or a folder of runs.")
    p.add_argument("dir", help="a run directory, a sweep directory, or a folder holding runs")
    p.add_argument("--out", help="where to write report.md, report.csv and the PNGs (default: DIR)")
    args = p.parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        raise ByzctlError(f"no such directory: {root}")
    out = Path(args.out) if args.out else root
    text, written = report(root, out)
    body = text.split("\n## Figures", 1)[0]
    print(body.rstrip())
    print(f"\nwrote {len(written)} files to {out}: " + ", ".join(p.name for p in written))
    return 0
