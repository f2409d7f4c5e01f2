"""Benchmark every aggregator and pre-aggregator against its floor, torch.mean.

    python -m byzctl.bench.aggregators [--json] [--quick] [--rules a,b] [device=auto|cpu|cuda]
                                       [repeats=5] [threads=N] [seed=0]

Every option the package knows (`options("aggregator")`, `options("preagg")`) is
built from its config defaults and timed on random float32 inputs of each shape
with f = n // 4; a pre-aggregator is timed followed by the mean ("nnm+mean"), through
`byzctl.preagg.base.aggregate` as a run does. A rule whose limits exclude f = n // 4
(bulyan needs n >= 4f + 3) is timed at the largest f it accepts, and says so.
Each timing is the median of `repeats` runs after one warm-up, alternating with
torch.mean(x, dim=0) on the same tensor, whose median is the floor; the ratio is
seconds / floor_seconds. A rule that accepts no f >= 1 at a shape is reported as skipped.
One more call measures memory: what the rule adds at its peak (`peak_extra_mb`) and
that as a multiple of the input's size (`memory_ratio`); see `_peak_extra`.
Output: a rich table, or with --json one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from byzctl.errors import ByzctlError, ConfigError, LimitError, RuleError

SHAPES = [(16, 100_000), (32, 1_000_000), (64, 250_000)]
"""(n, d) of the full run."""
QUICK_SHAPES = [(8, 1_000), (16, 2_000)]
"""(n, d) of --quick, for tests and smoke checks."""
KEYS = {"device": "auto", "repeats": "5", "threads": "", "seed": "0"}
"""key=value options and their defaults."""


@dataclass
class Case:
    """One thing to time: an aggregator, or a pre-aggregator followed by the mean."""

    label: str
    kind: str  # "aggregator" | "preagg"
    run: Callable[[torch.Tensor, int], torch.Tensor]


def main(argv: list[str]) -> int:
    """Run the benchmark; returns 0, 1 if a rule failed unexpectedly, 2 on bad arguments."""
    try:
        args, opts = _parse(argv)
        device = _device(opts["device"])
        repeats = int(opts["repeats"])
        if repeats < 1:
            raise ConfigError(f"repeats must be >= 1. Got repeats={repeats}")
        if opts["threads"]:
            torch.set_num_threads(int(opts["threads"]))
        cases = _select(_cases(int(opts["seed"]), device), args.rules)
    except (ByzctlError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    gen = torch.Generator(device="cpu").manual_seed(int(opts["seed"]))
    rows: list[dict[str, Any]] = []
    table = None if args.json else _Table(device)
    for n, d in QUICK_SHAPES if args.quick else SHAPES:
        f = n // 4
        x = torch.randn(n, d, generator=gen).to(device)  # (n, d) float32
        for case in cases:
            row = _time_case(case, x, f, repeats, device)
            rows.append(row)
            if table is None:
                print(json.dumps(row), flush=True)
            else:
                table.add(row)
        del x
    if table is not None:
        table.print()
    return 1 if any(r["status"] == "error" for r in rows) else 0


def _time_case(case: Case, x: torch.Tensor, f: int, repeats: int, device: str) -> dict[str, Any]:
    n, d = x.shape
    row: dict[str, Any] = {"rule": case.label, "kind": case.kind, "n": n, "d": d, "f": f, "device": device,
                           "seconds": None, "floor_seconds": None, "ratio": None,
                           "peak_extra_mb": None, "memory_ratio": None, "status": "ok", "reason": ""}
    first: RuleError | None = None
    for f_try in range(f, 0, -1):  # the largest f within the rule's limits
        try:
            case.run(x, f_try)  # warm-up; compiles kernels; surfaces the rule's limits
        except LimitError as e:
            first = first or e
            continue
        except RuleError as e:  # e.g. smea's exact search out of reach: say so, no retry
            return {**row, "f": f_try, "status": "skipped", "reason": str(e)}
        except Exception as e:  # a bug in a rule: report it, keep timing the others
            return {**row, "status": "error", "reason": f"{type(e).__name__}: {e}"}
        if f_try < f:
            row.update(f=f_try, reason=f"largest f it accepts ({first})")
        f = f_try
        break
    else:
        return {**row, "status": "skipped", "reason": str(first)}
    floor, secs = [], []
    for _ in range(repeats):  # alternate, so both see the same machine load
        floor.append(_timed(lambda: torch.mean(x, dim=0), device))
        secs.append(_timed(lambda: case.run(x, f), device))
    row["seconds"] = statistics.median(secs)
    row["floor_seconds"] = statistics.median(floor)
    row["ratio"] = row["seconds"] / row["floor_seconds"]
    extra = _peak_extra(lambda: case.run(x, f), device)
    if extra is not None:
        row["peak_extra_mb"] = extra / 2**20
        row["memory_ratio"] = extra / (x.numel() * x.element_size())
    return row


def _peak_extra(fn: Callable[[], object], device: str) -> int | None:
    """Bytes that fn adds at its peak, above what was in use before it. CUDA: torch's
    peak allocation. CPU (Linux): the process's peak resident size (VmHWM, reset through
    /proc/self/clear_refs) above its resident size before, after handing freed heap
    memory back to the OS (malloc_trim), so a block the allocator kept from an earlier
    call is not reused unseen. None where neither is available."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return max(torch.cuda.max_memory_allocated() - before, 0)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current resident size
        before = _status_bytes("VmRSS")
        fn()
        return max(_status_bytes("VmHWM") - before, 0)
    except OSError:  # not Linux, or /proc not writable
        return None


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise OSError(f"/proc/self/status has no {key}")


def _timed(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _cases(seed: int, device: str) -> list[Case]:
    from byzctl.aggregators.mean import Mean
    from byzctl.config.schema import options
    from byzctl.preagg.base import aggregate as pipeline

    mean = Mean()
    cases = []
    for name, cls in options("aggregator").items():
        agg = cls()

        def aggregate(x: torch.Tensor, f: int, agg: Any = agg) -> torch.Tensor:
            return agg(x, f=f)

        cases.append(Case(name, "aggregator", aggregate))
    for name, cls in options("preagg").items():
        pre = cls()

        def run(x: torch.Tensor, f: int, pre: Any = pre) -> torch.Tensor:
            g = torch.Generator(device=x.device).manual_seed(seed)
            return pipeline([pre], mean, x, byzantine=f, generator=g)

        cases.append(Case(f"{name}+mean", "preagg", run))
    return cases


def _select(cases: list[Case], rules: str | None) -> list[Case]:
    if not rules:
        return cases
    wanted = [r.strip() for r in rules.split(",") if r.strip()]
    names = {c.label: c for c in cases} | {c.label.removesuffix("+mean"): c for c in cases if c.kind == "preagg"}
    unknown = [r for r in wanted if r not in names]
    if unknown:
        raise ConfigError(f"--rules: unknown {', '.join(unknown)}. Choices: {', '.join(c.label for c in cases)}")
    return [names[r] for r in dict.fromkeys(wanted)]


def _parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    p = argparse.ArgumentParser(prog="byzctl bench aggregators", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.add_argument("--quick", action="store_true", help="tiny shapes (tests, smoke checks)")
    p.add_argument("--rules", help="comma-separated rule names to time (default: all)")
    p.add_argument("overrides", nargs="*", help="key=value: " + ", ".join(f"{k}={v or '...'}" for k, v in KEYS.items()))
    args = p.parse_args(argv)
    opts = dict(KEYS)
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise ConfigError(f"unknown option {item!r}. Choices: {', '.join(f'{k}=' for k in KEYS)}")
        opts[key] = value
    return args, opts


def _device(name: str) -> str:
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda. Got device={name}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch.cuda.is_available() is False")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class _Table:
    def __init__(self, device: str) -> None:
        from rich.table import Table

        self.table = Table(title=f"aggregators vs torch.mean ({device}, {torch.get_num_threads()} threads)")
        for col in ("rule", "n", "d", "f", "ms", "floor ms", "ratio", "mem x", "note"):
            self.table.add_column(col, justify="left" if col in ("rule", "note") else "right")

    def add(self, r: dict[str, Any]) -> None:
        ok = r["status"] == "ok"
        self.table.add_row(
            r["rule"], str(r["n"]), f"{r['d']:,}", str(r["f"]),
            f"{r['seconds'] * 1e3:.2f}" if ok else "-", f"{r['floor_seconds'] * 1e3:.2f}" if ok else "-",
            f"{r['ratio']:.1f}" if ok else "-", f"{r['memory_ratio']:.2f}" if r["memory_ratio"] is not None else "-",
            r["reason"] if ok else f"{r['status']}: {r['reason']}",
        )

    def print(self) -> None:
        from rich.console import Console

        Console().print(self.table)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
