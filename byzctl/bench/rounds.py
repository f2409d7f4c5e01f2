"""`byzctl bench rounds`: the round time of real runs against a compute-only floor.

For `ps` (4 honest + 1 Byzantine workers, multi_krum, a CNN of about 455k
parameters, batch 64) and `local` (5 peers on a ring), it runs the real thing
(processes, ZeroMQ, DAG executors) and, in the same invocation, the same
gradients, attack and aggregation in one process without any messaging. It also
samples the memory (PSS) of all node processes together to show that it stays flat.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from byzctl.bench._proc import pss_mb

SCENARIOS = {
    "ps": ["topology=ps", "aggregator=multi_krum", "model=cnn", "batch_size=64"],
    "local": ["topology=local", "graph=ring", "aggregator=cw_trimmed_mean", "model=cnn", "batch_size=64"],
}


def real_run(overrides: list[str]) -> dict[str, Any]:
    """Run the experiment with the real launcher; per-round time and memory samples."""
    from rich.console import Console

    from byzctl.config.compose import compose
    from byzctl.config.experiment import Experiment
    from byzctl.launch.local import LocalLauncher
    from byzctl.launch.rundir import RunDir

    exp = Experiment.from_cfg(compose(overrides))
    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="byzbench-") as tmp:
        launcher = LocalLauncher(exp, RunDir(Path(tmp)), Console(file=io.StringIO()))
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.wait(0.5):
                pids = [p.pid for p in launcher.procs.values() if p.poll() is None]
                if pids:
                    samples.append((time.monotonic() - t0, sum(pss_mb(p) for p in pids)))

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        summary = launcher.run()
        stop.set()
        th.join()
    walls = [n["wall_seconds"] for n in summary["nodes"].values() if n.get("wall_seconds")]
    rounds = int(summary["rounds_completed"] or 0)
    if summary["state"] != "COMPLETED" or not walls or rounds == 0:
        raise RuntimeError(f"benchmark run did not complete: {summary.get('reason')}")
    return {"round_seconds": max(walls) / rounds, "rounds": rounds, "memory": samples, "summary": summary}


def floor_run(overrides: list[str], rounds: int) -> float:
    """The same learning in one process, no messages (`_floor.Floor`): seconds per round."""
    from byzctl.bench._floor import Floor
    from byzctl.config.compose import compose
    from byzctl.config.experiment import Experiment

    return Floor(Experiment.from_cfg(compose(overrides))).run(rounds, eval_every=None).train_s / rounds


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="byzctl bench rounds", description=__doc__)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--quick", action="store_true", help="few rounds (a smoke test)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of the real runs (default 1000; --quick 20)")
    p.add_argument("--only", choices=sorted(SCENARIOS), help="one scenario")
    args = p.parse_args(argv)
    rounds = args.rounds or (20 if args.quick else 1000)
    model = ["model=mlp", "model.hidden=[32]", "batch_size=32"] if args.quick else []
    rows = []
    for name, overrides in SCENARIOS.items():
        if args.only and name != args.only:
            continue
        ov = [*overrides, *model, f"rounds={rounds}", f"eval_every={rounds}", "checkpoint_every=0", "seed=0"]
        torch.set_num_threads(1)
        floor = floor_run(ov, min(rounds, 50 if not args.quick else 10))
        real = real_run(ov)
        mem = [m for _, m in real["memory"]]
        tenth = max(1, len(mem) // 10)
        row = {
            "scenario": name, "rounds": real["rounds"], "round_seconds": real["round_seconds"],
            "floor_round_seconds": floor, "overhead": real["round_seconds"] / floor - 1,
            "peak_pss_mb": max(mem, default=0.0),
            "pss_early_mb": statistics.median(mem[:tenth]) if mem else 0.0,
            "pss_late_mb": statistics.median(mem[-tenth:]) if mem else 0.0,
            "test_accuracy": real["summary"].get("test_accuracy"),
        }
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"byzctl bench rounds ({rounds} rounds; floor: same compute in one process, no messages)")
        for col in ("scenario", "round ms", "floor ms", "overhead", "PSS early MB", "PSS late MB", "peak PSS MB"):
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(r["scenario"], f"{r['round_seconds'] * 1e3:.1f}", f"{r['floor_round_seconds'] * 1e3:.1f}",
                      f"{r['overhead'] * 100:+.0f}%", f"{r['pss_early_mb']:.0f}", f"{r['pss_late_mb']:.0f}", f"{r['peak_pss_mb']:.0f}")
        Console().print(t)
    return 0
