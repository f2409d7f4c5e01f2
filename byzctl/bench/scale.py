"""`byzctl bench scale`: one experiment in three layouts, from 14 to 1,101 nodes.

Layouts, run interleaved (case by case; within a case, repeat by repeat, layout by layout):
  packed       `byzctl run ... processes=auto` as a subprocess (the launcher packs nodes
               into few processes);
  per_process  the same with `processes=per_node`: one process per node. Skipped, with
               the reason in `note`, when `NODE_PROCESS_MB` per process does not fit in
               MemAvailable;
  floor        the same learning in this process (`_floor.Floor`): no processes, no messages.

Figures per row:
  wall_s       packed/per_process: from spawning `byzctl run` to its exit (imports, data,
               process start, training, shutdown). floor: composing and building the
               experiment, data, learners and every round (this process's torch import
               excluded).
  round_s      the training time per round. From metrics.jsonl's evaluation rows (`time`:
               seconds since the evaluating node started training; in a decentralized run
               the slowest peer's, per round): (time of the last evaluation - time of the
               first) / (rounds between them), so the first eval_every rounds (connection,
               kernel loading) are left out. With a single evaluation (rounds <= eval_every):
               the longest node `wall_seconds` of summary.json / rounds. The floor times
               its own evaluations the same way.
  rounds_per_s 1 / round_s.
  peak_pss_mb  the largest summed PSS of the launcher and all its descendants, sampled
               every 0.2 s; floor: this process's PSS.

memory_check: the launcher refuses runs whose node processes (NODE_PROCESS_MB each) do not
fit in MemAvailable. The bench does not pass memory_check=false for any layout: on a shared
host that check is what stands between a too-large run and the OOM killer. per_process is
estimated here first (`per_process_fits`) and not started; a packed run the launcher refuses
is a row whose note carries the launcher's message (memory_check=false in `layout_overrides`
would override it, one line).

The cases follow the issue. C splits the data iid: with 4,000 training digits, a
Dirichlet(0.3) split over 1,000 nodes leaves some without data (as does alpha up to 5),
which the run refuses. Checkpoints stay at the default (every 50 rounds), as a user runs it.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from byzctl.bench._proc import sample_pss, tree
from byzctl.errors import ByzctlError
from byzctl.launch.preflight import NODE_PROCESS_MB, mem_available_mb

_PS = ["topology=ps", "model=mlp", "model.hidden=[100]", "batch_size=25", "dataset=mnist_subset",
       "dataset.partition=dirichlet", "dataset.alpha=0.3", "aggregator=cw_trimmed_mean", "attack=sign_flip", "eval_every=50"]
CASES: dict[str, list[str]] = {
    "A": [*_PS, "nodes.honest=10", "nodes.byzantine=3", "rounds=300"],
    "B": [*_PS, "nodes.honest=100", "nodes.byzantine=25", "rounds=300"],
    "C": [*_PS, "nodes.honest=1000", "nodes.byzantine=100", "rounds=100", "dataset.partition=iid"],
    # 2 Byzantine peers: each honest peer aggregates 5 vectors (k=2 each side), and the
    # trimmed mean needs 5 > 2f. The Byzantine peers sit between peers 199 and 0.
    "D": ["topology=local", "graph=ring", "graph.k=2", "model=mlp", "model.hidden=[100]", "batch_size=25",
          "dataset=mnist_subset", "dataset.partition=dirichlet", "dataset.alpha=0.3", "aggregator=cw_trimmed_mean",
          "attack=sign_flip", "eval_every=50", "nodes.honest=200", "nodes.byzantine=2", "rounds=100"],
}
"""Each case's overrides of `byzctl run`."""

LAYOUTS = ("packed", "per_process", "floor")


def layout_overrides(layout: str) -> list[str]:
    """How `byzctl run` is told the process layout (the top-level `processes` key:
    auto | per_node | <int>); the floor runs no launcher."""
    return {"packed": ["processes=auto"], "per_process": ["processes=per_node"]}.get(layout, [])


@dataclass(frozen=True)
class Target:
    """A figure of the issue's acceptance: `what` at most `limit`."""

    what: str
    """wall_s or peak_pss_mb of the packed row, or round_ratio (packed round_s / floor round_s)."""
    limit: float

    def text(self) -> str:
        if self.what == "wall_s":
            return f"wall <= {self.limit:g} s"
        if self.what == "peak_pss_mb":
            return f"PSS <= {self.limit / 1024:g} GB"
        return f"round <= {self.limit:g}x floor"


TARGETS: dict[str, tuple[Target, ...]] = {
    "A": (Target("wall_s", 5.0), Target("round_ratio", 1.2)),
    "B": (Target("wall_s", 30.0), Target("peak_pss_mb", 3 * 1024)),
    "C": (Target("peak_pss_mb", 8 * 1024),),
    "D": (Target("peak_pss_mb", 6 * 1024),),
}
"""The issue's targets, met (PASS) or not (MISS) by the packed layout."""


@dataclass
class Row:
    case: str
    layout: str
    nodes: int | None = None
    """Nodes of the plan (the ps server included): the processes of the per_process layout."""
    rounds: int | None = None
    wall_s: float | None = None
    round_s: float | None = None
    rounds_per_s: float | None = None
    peak_pss_mb: float | None = None
    test_accuracy: float | None = None
    note: str = ""
    """Why the row has no figures (not run, or failed); empty when it ran."""
    target: str = ""
    verdict: str = ""
    """packed rows: PASS, MISS, or n/a when a figure of the target is missing."""


# -- measuring -------------------------------------------------------------------------
def round_seconds(evals: dict[int, float], rounds: int, total_s: float) -> float | None:
    """Training seconds per round from {round: time of its evaluation} (module docstring)."""
    if len(evals) >= 2:
        first, last = min(evals), max(evals)
        return (evals[last] - evals[first]) / (last - first)
    return total_s / rounds if rounds and total_s > 0 else None


def plan_size(overrides: list[str]) -> int:
    from byzctl.config.compose import compose
    from byzctl.config.experiment import Experiment

    return len(Experiment.from_cfg(compose(overrides), placed=False).plan())


def per_process_fits(processes: int, mem_available: Callable[[], int | None]) -> str:
    """Empty if `processes` node processes fit in available memory, else why not."""
    need, have = processes * NODE_PROCESS_MB, mem_available()
    if have is None or need <= have:
        return ""
    return (f"would need ~{need / 1024:.0f} GB for {processes} processes "
            f"({NODE_PROCESS_MB} MB each; {have / 1024:.1f} GB available): not run")


def run_real(case: str, layout: str, overrides: list[str], *, timeout: float) -> Row:
    """`byzctl run` in a subprocess: wall time, peak PSS of its process tree, its run files."""
    row = Row(case, layout)
    with tempfile.TemporaryDirectory(prefix="byzscale-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "byzctl", "run", *overrides, *layout_overrides(layout), f"hydra.run.dir={run_dir}"]
        with open(Path(tmp) / "stdout", "wb") as out, open(Path(tmp) / "stderr", "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
            rc: int | None = None
            try:
                with sample_pss(lambda: tree(proc.pid)) as peak:
                    try:
                        rc = proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        pass
                    row.wall_s = time.perf_counter() - t0
            finally:
                _stop(proc)
        if rc is None:
            return replace(row, wall_s=None, note=f"timed out after {timeout:g} s (--timeout): stopped")
        if rc != 0:
            why = _error_text((Path(tmp) / "stderr").read_text(errors="replace")) or _run_reason(run_dir) or "(no message)"
            return replace(row, wall_s=None, note=f"byzctl run exited {rc}: {why}")
        return _read_run(row, run_dir, peak.mb)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a `byzctl run` still running (timeout, Ctrl-C): SIGTERM lets the launcher reap its
    nodes; its process group (it is the leader) gets SIGKILL if it does not exit in 20 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _error_text(stderr: str) -> str:
    """The gist of a failed run's stderr: its `error:` line, else its first lines."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    errors = [ln for ln in lines if "error:" in ln.lower()]
    text = errors[-1] if errors else " / ".join(lines[:3])
    return text[:400]


def _run_reason(run_dir: Path) -> str:
    """A run that ended FAILED says why in its run.json (its launcher printed it to stdout)."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return ""
    return f"{info.get('state', '')}: {info.get('reason', '')}"[:400]


def _read_run(row: Row, run_dir: Path, peak_mb: float) -> Row:
    from byzctl.jsonio import read_json

    summary = read_json(run_dir / "summary.json")
    rounds = int(summary.get("rounds_completed") or 0)
    if summary.get("state") != "COMPLETED":
        return replace(row, note=f"run {summary.get('state')}: {summary.get('reason')}"[:400])
    evals: dict[int, float] = {}
    with open(run_dir / "metrics.jsonl") as fh:
        for line in fh:
            m = json.loads(line)
            if "event" not in m and "test_accuracy" in m and "time" in m:  # evaluations, not monitor events
                evals[int(m["round"])] = max(evals.get(int(m["round"]), 0.0), float(m["time"]))  # the slowest peer
    walls = [float(n["wall_seconds"]) for n in summary["nodes"].values() if n.get("wall_seconds")]
    r_s = round_seconds(evals, rounds, max(walls, default=0.0))
    return replace(row, nodes=len(summary["nodes"]), rounds=rounds, round_s=r_s, rounds_per_s=1 / r_s if r_s else None,
                   peak_pss_mb=peak_mb, test_accuracy=summary.get("test_accuracy"))


def run_floor(case: str, overrides: list[str]) -> Row:
    """The experiment's compute floor in this process (`_floor.Floor`), with the nodes' threads."""
    from byzctl.bench._floor import Floor
    from byzctl.config.compose import compose
    from byzctl.config.experiment import Experiment

    _release()
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        with sample_pss(lambda: [os.getpid()]) as peak:
            exp = Experiment.from_cfg(compose(overrides))
            torch.set_num_threads(int(exp.cfg.device.threads))
            floor = Floor(exp)
            res = floor.run(int(exp.cfg.rounds), eval_every=int(exp.cfg.eval_every))
            wall = time.perf_counter() - t0
            nodes = len(exp.plan())
            del floor
    except ByzctlError as exc:
        return Row(case, "floor", note=f"{type(exc).__name__}: {exc}"[:400])
    finally:
        torch.set_num_threads(threads)
    _release()
    r_s = round_seconds(dict(res.evals), res.rounds, res.train_s)
    return Row(case, "floor", nodes=nodes, rounds=res.rounds, wall_s=wall, round_s=r_s, rounds_per_s=1 / r_s if r_s else None,
               peak_pss_mb=peak.mb, test_accuracy=res.test_accuracy)


def _release() -> None:
    """Hand freed memory back to the OS, so one floor's PSS does not carry the last one's."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_layout(case: str, layout: str, overrides: list[str], *, mem_available: Callable[[], int | None], timeout: float) -> Row:
    """One row: the layout measured, or why it could not be."""
    try:
        nodes = plan_size(overrides)
    except ByzctlError as exc:
        return Row(case, layout, note=f"{type(exc).__name__}: {exc}"[:400])
    if layout == "floor":
        return run_floor(case, overrides)
    if layout == "per_process":
        why = per_process_fits(nodes, mem_available)
        if why:
            return Row(case, layout, nodes=nodes, note=why)
    return replace(run_real(case, layout, overrides, timeout=timeout), nodes=nodes)


# -- combining ---------------------------------------------------------------------------
_FIGURES = ("wall_s", "round_s", "rounds_per_s", "peak_pss_mb", "test_accuracy")


def median_row(rows: list[Row]) -> Row:
    """The median of each figure over the repeats that ran; their notes if none did."""
    ran = [r for r in rows if not r.note]
    if not ran:
        return rows[0]
    out = replace(ran[0])
    for key in _FIGURES:
        values = [getattr(r, key) for r in ran if getattr(r, key) is not None]
        setattr(out, key, statistics.median(values) if values else None)
    failed = [r.note for r in rows if r.note]
    if failed:
        out.note = f"{len(failed)} of {len(rows)} repeats failed: {failed[0]}"
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(case: str, rows: dict[str, Row]) -> dict[str, Any]:
    packed, per, floor = (rows.get(k, Row(case, k)) for k in ("packed", "per_process", "floor"))
    return {
        "case": case, "layout": "ratios",
        "packed_over_floor_wall": _ratio(packed.wall_s, floor.wall_s),
        "packed_over_floor_round": _ratio(packed.round_s, floor.round_s),
        "per_process_over_packed_wall": _ratio(per.wall_s, packed.wall_s),
    }


def judge(case: str, rows: dict[str, Row], ratio: dict[str, Any]) -> None:
    """Fill the packed row's target and verdict (module TARGETS)."""
    packed = rows.get("packed")
    targets = TARGETS.get(case, ())
    if packed is None or not targets:
        return
    values = {"wall_s": packed.wall_s, "peak_pss_mb": packed.peak_pss_mb, "round_ratio": ratio["packed_over_floor_round"]}
    met = [None if values[t.what] is None else values[t.what] <= t.limit for t in targets]
    packed.target = ", ".join(t.text() for t in targets)
    packed.verdict = "MISS" if False in met else ("n/a" if None in met else "PASS")


def bench(cases: list[str], layouts: list[str], *, rounds: int | None = None, repeat: int = 1, timeout: float = 3600.0,
          mem_available: Callable[[], int | None] = mem_available_mb,
          on_case: Callable[[list[Row], dict[str, Any]], None] | None = None,
          progress: Callable[[str], None] | None = None) -> list[tuple[list[Row], dict[str, Any]]]:
    """Every case in every layout, `repeat` times; per case its rows (medians) and ratios."""
    out = []
    for case in cases:
        overrides = [*CASES[case], *([f"rounds={rounds}"] if rounds else [])]
        runs: dict[str, list[Row]] = {layout: [] for layout in layouts}
        for k in range(repeat):
            for layout in layouts:
                if progress:
                    progress(f"case {case}, {layout}" + (f", repeat {k + 1}/{repeat}" if repeat > 1 else ""))
                runs[layout].append(run_layout(case, layout, overrides, mem_available=mem_available, timeout=timeout))
        rows = {layout: median_row(rs) for layout, rs in runs.items()}
        ratio = ratios(case, rows)
        judge(case, rows, ratio)
        out.append((list(rows.values()), ratio))
        if on_case:
            on_case(list(rows.values()), ratio)
    return out


# -- output ---------------------------------------------------------------------------
def _csv(text: str, allowed: tuple[str, ...] | list[str], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what} must be among {', '.join(allowed)}. Got {text!r}")
    return items


def _fmt(v: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}"


def print_table(results: list[tuple[list[Row], dict[str, Any]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="byzctl bench scale (packed: processes=auto; per_process: one per node; floor: one process, no messages)")
    for col in ("case", "layout", "nodes", "rounds", "wall s", "round ms", "rounds/s", "peak PSS MB", "target", "verdict", "note"):
        t.add_column(col, justify="left" if col in ("layout", "target", "note") else "right", overflow="fold")
    for rows, _ in results:
        for r in rows:
            t.add_row(r.case, r.layout, str(r.nodes or "-"), str(r.rounds or "-"), _fmt(r.wall_s), _fmt(r.round_s, 1e3),
                      _fmt(r.rounds_per_s), _fmt(r.peak_pss_mb, digits=0), r.target, r.verdict, r.note)
    q = Table(title="ratios")
    for col in ("case", "packed / floor wall", "packed / floor round", "per_process / packed wall"):
        q.add_column(col, justify="right")
    for _, ratio in results:
        q.add_row(ratio["case"], *(_fmt(ratio[k], digits=2) for k in list(ratio)[2:]))
    console = Console()
    console.print(t)
    console.print(q)


def main(argv: list[str], *, mem_available: Callable[[], int | None] = mem_available_mb) -> int:
    p = argparse.ArgumentParser(prog="byzctl bench scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="one JSON object per line: a row per layout, then the case's ratios")
    p.add_argument("--cases", type=lambda s: _csv(s, list(CASES), "--cases"), default=["A"], help="comma-separated, of A,B,C,D (default A)")
    p.add_argument("--layouts", type=lambda s: _csv(s, LAYOUTS, "--layouts"), default=list(LAYOUTS),
                   help="comma-separated, of packed,per_process,floor (default all)")
    p.add_argument("--rounds", type=int, default=None, help="override every case's rounds (a quick try)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each layout, interleaved; figures are medians (default 1)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before a run is stopped (default 3600)")
    args = p.parse_args(argv)
    if args.repeat < 1 or (args.rounds is not None and args.rounds < 1):
        p.error(f"--repeat and --rounds must be >= 1. Got --repeat {args.repeat}, --rounds {args.rounds}")

    def emit(rows: list[Row], ratio: dict[str, Any]) -> None:
        for r in rows:
            print(json.dumps(asdict(r)), flush=True)
        print(json.dumps(ratio), flush=True)

    def say(what: str) -> None:
        print(f"byzctl bench scale: {what} ...", file=sys.stderr, flush=True)

    results = bench(args.cases, args.layouts, rounds=args.rounds, repeat=args.repeat, timeout=args.timeout,
                    mem_available=mem_available, on_case=emit if args.json else None, progress=None if args.json else say)
    if not args.json:
        print_table(results)
    return 0
