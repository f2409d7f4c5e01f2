"""byzctl report: tables, worst case over attacks, heatmaps and curves from run directories.

The fast tests write run directories in exactly the format `byzctl run` does
(run.json, summary.json, metrics.jsonl, config.yaml, .hydra/overrides.yaml); one slow
test reports a real two-job sweep.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import SMALL, byzctl

from byzctl import report
from byzctl.errors import ByzctlError
from byzctl.status import Run, curve


# -- run directories as byzctl run writes them ---------------------------------------------
def fake_run(
    path: Path, *, overrides: list[str], aggregator: str = "cw_trimmed_mean", preagg: tuple[str, ...] = (),
    attack: str = "sign_flip", accs: list[float] | None = None, state: str = "COMPLETED", rounds: int = 20,
    eval_every: int = 5, honest: int = 4, byzantine: int = 1, partition: str = "iid", alpha: float = 1.0,
    seed: int = 0, started: float | None = None, pids: dict[str, int] | None = None, peers: bool = False,
    summary: bool = True,
) -> Path:
    """A run directory: `accs` are the test accuracies of successive evaluations."""
    accs = [0.3, 0.5, 0.6, 0.7] if accs is None else accs
    started = time.time() - 60 if started is None else started
    (path / ".hydra").mkdir(parents=True)
    (path / "nodes").mkdir()
    cfg = {
        "aggregator": {"_target_": "byzctl.aggregators.x.X", "f": None, "name": aggregator},
        "attack": {"_target_": "byzctl.attacks.x.X", "knowledge": "local", "name": attack, "per_recipient": False, "scale": -1.0},
        "batch_size": 32,
        "dataset": {"_target_": "byzctl.data.mnist_subset.MnistSubset", "alpha": alpha, "gamma": 0.5, "name": "mnist_subset",
                    "partition": partition, "ship": False, "test_size": 1000},
        "device": {"_target_": "byzctl.config.schema.Device", "name": "auto", "threads": 1},
        "eval_every": eval_every, "lr": 0.1,
        "model": {"_target_": "byzctl.models.mlp.Mlp", "hidden": [128], "name": "mlp"},
        "momentum": 0.9, "name": "byzctl", "nodes": {"byzantine": byzantine, "honest": honest},
        "preagg": {p: {"_target_": f"byzctl.preagg.{p}.P", "f": None, "name": p} for p in preagg},
        "rounds": rounds, "seed": seed,
        "topology": {"_target_": "byzctl.topology.ps.Ps", "name": "local" if peers else "ps", "host": "127.0.0.1"},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    n = honest + byzantine
    nodes = [{"id": i + (0 if peers else 1), "role": "peer" if peers else "worker", "byzantine": i >= honest} for i in range(n)]
    if not peers:
        nodes.insert(0, {"id": 0, "role": "server", "byzantine": False})
    rows = []
    for k, acc in enumerate(accs):
        r = min((k + 1) * eval_every, rounds)
        if peers:
            spread = [acc - 0.02 * h for h in range(honest)]
            for h, a in enumerate(spread):
                rows.append({"round": r, "test_loss": 2.0 - a, "test_accuracy": a, "node": h, "role": "peer", "time": 0.1 * r})
            rows.append({"round": r, "kind": "honest", "nodes": honest, "mean_accuracy": sum(spread) / honest,
                         "worst_accuracy": min(spread), "mean_loss": 2.0 - sum(spread) / honest, "worst_loss": 2.0 - min(spread),
                         "consensus_distance": 1.0 / (k + 1)})
        else:
            rows.append({"round": r, "test_loss": 2.0 - acc, "test_accuracy": acc, "node": 0, "role": "server", "time": 0.1 * r})
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = min(len(accs) * eval_every, rounds)
    ended = None if state == "RUNNING" else started + 15
    info: dict[str, Any] = {"state": state, "started": started, "ended": ended, "run_id": "abc123", "config_hash": "0123456789abcdef",
                            "topology": cfg["topology"]["name"], "launcher": "local", "nodes": nodes,
                            "pids": pids if pids is not None else {str(nd["id"]): 100000 + nd["id"] for nd in nodes}}
    reason = {"FAILED": "node 3 exited with code 1: boom", "INTERRUPTED": "interrupted by SIGINT"}.get(state, "")
    if state != "RUNNING":
        info.update(reason=reason, exit_codes={str(nd["id"]): 0 for nd in nodes})
    (path / "run.json").write_text(json.dumps(info, indent=2))
    if summary and state != "RUNNING":
        final = accs[-1] if accs and state == "COMPLETED" else None
        if peers and final is not None:  # decentralized: the honest mean, worst and spread
            final -= 0.01 * (honest - 1)
            figures = {"test_accuracy": final, "test_loss": 2.0 - final, "worst_accuracy": accs[-1] - 0.02 * (honest - 1),
                       "worst_loss": 2.0 - accs[-1] + 0.02 * (honest - 1), "consensus_distance": 1.0 / len(accs)}
        else:
            figures = {"test_accuracy": final, "test_loss": None if final is None else 2.0 - final}
        s = {"state": state, "reason": reason, "rounds_completed": done, **figures,
             "wall_seconds": 14.1, "config_hash": "0123456789abcdef",
             "topology": cfg["topology"]["name"], "aggregator": aggregator, "preagg": list(preagg), "attack": attack,
             "honest": honest, "byzantine": byzantine, "nodes_lost": int(state == "FAILED"),
             "nodes": {str(nd["id"]): {"state": "done", "exit_code": 0} for nd in nodes}}
        (path / "summary.json").write_text(json.dumps(s, indent=2))
    return path


def config_failed_job(path: Path, overrides: list[str]) -> Path:
    """A sweep job whose config was rejected before launch: run.json has only the state."""
    (path / ".hydra").mkdir(parents=True)
    (path / "nodes").mkdir()
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / "run.json").write_text(json.dumps({"state": "FAILED", "reason": "ConfigError: krum needs n > 2f + 2. Got n=5, f=2", "ended": time.time()}))
    return path


def sweep(root: Path, grid: list[dict[str, Any]], common: list[str] | None = None) -> Path:
    """A multirun directory: one job per dict of fake_run arguments (its `ov` are the swept overrides)."""
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for i, job in enumerate(grid):
        ov = job.pop("ov")
        fake_run(root / str(i), overrides=[*(common or ["rounds=20", "eval_every=5"]), *ov], **job)
    return root


def image(path: Path) -> np.ndarray:
    import matplotlib.image

    assert path.is_file(), f"{path} was not written"
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert float(img[..., :3].var()) > 0, f"{path.name} is blank"
    return img


def px(size: tuple[float, float]) -> tuple[int, int]:
    """(height, width) in pixels of a figure of `size` inches."""
    return round(size[1] * report.DPI), round(size[0] * report.DPI)


RULE_ATTACK = [
    {"ov": ["aggregator=mean", "attack=sign_flip"], "aggregator": "mean", "attack": "sign_flip", "accs": [0.3, 0.5, 0.7, 0.72]},
    {"ov": ["aggregator=mean", "attack=alie"], "aggregator": "mean", "attack": "alie", "accs": [0.2, 0.15, 0.12, 0.11]},
    {"ov": ["aggregator=cw_median", "attack=sign_flip"], "aggregator": "cw_median", "attack": "sign_flip", "accs": [0.4, 0.6, 0.8, 0.78]},
    {"ov": ["aggregator=cw_median", "attack=alie"], "aggregator": "cw_median", "attack": "alie", "accs": [0.4, 0.5, 0.6, 0.65]},
]


# -- sweeps ----------------------------------------------------------------------------------
def test_sweep_report_has_table_worst_case_heatmap_and_curves(tmp_path, capsys):
    grid = [dict(j) for j in RULE_ATTACK]
    grid.append({"ov": ["aggregator=krum", "attack=alie"], "aggregator": "krum", "attack": "alie", "accs": [0.3, 0.4], "state": "FAILED"})
    root = sweep(tmp_path / "multirun" / "2026-01-01" / "10-00-00", grid)
    config_failed_job(root / "5", ["rounds=20", "eval_every=5", "aggregator=krum", "attack=sign_flip"])

    assert report.main([str(root)]) == 0
    out = capsys.readouterr().out
    md = (root / "report.md").read_text()
    assert "| job | state | aggregator | attack | rounds | final acc |" in out  # the table reaches the terminal
    assert "Common overrides: `rounds=20` `eval_every=5`" in md
    # every job is listed, failures with their state and reason
    assert "| 5 | FAILED | krum | sign_flip | 0/? |" in md
    assert "`4`: FAILED: node 3 exited with code 1: boom" in md
    assert "`5`: FAILED: ConfigError: krum needs n > 2f + 2" in md
    # worst case over attacks: cw_median 0.65 (alie), mean 0.11 (alie); most robust first
    wc = md.split("## Worst case over attacks")[1]
    assert wc.index("| cw_median |") < wc.index("| mean |") < wc.index("| krum |")
    assert "| cw_median | 0.6500 | 0.7800 | 0.6500 | alie |" in wc
    assert "| mean | 0.1100 | 0.7200 | 0.1100 | alie |" in wc
    assert "| krum | FAILED | FAILED |  |  |" in wc  # no result, no made-up number

    with open(root / "report.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert {"aggregator", "attack", "final_accuracy", "best_accuracy", "state"} <= set(rows[0])
    assert (rows[1]["final_accuracy"], rows[1]["best_accuracy"], rows[1]["best_round"]) == ("0.11", "0.2", "5")
    assert rows[5]["state"] == "FAILED" and rows[5]["final_accuracy"] == ""

    hm = image(root / "heatmap_rule_attack.png")
    assert hm.shape[:2] == px(report.heatmap_size(3, 3))  # 3 rules x (2 attacks + worst)
    for rule in ("mean", "cw_median", "krum"):
        assert image(root / f"curves_{rule}.png").shape[:2] == px(report.CURVES_SIZE)
    assert not (root / "heatmap_f_heterogeneity.png").exists()
    assert not (root / "consensus.png").exists()


def test_rules_with_preaggs_and_swept_attack_parameters_get_their_own_labels(tmp_path):
    grid = [
        {"ov": ["preagg=[]", "attack.scale=-1"], "attack": "sign_flip", "accs": [0.7]},
        {"ov": ["preagg=[]", "attack.scale=-20"], "attack": "sign_flip", "accs": [0.2]},
        {"ov": ["preagg=[bucketing]", "attack.scale=-1"], "preagg": ("bucketing",), "accs": [0.75]},
        {"ov": ["preagg=[bucketing]", "attack.scale=-20"], "preagg": ("bucketing",), "accs": [0.6]},
    ]
    root = sweep(tmp_path / "sw", grid)
    report.main([str(root)])
    md = (root / "report.md").read_text()
    assert "| bucketing+cw_trimmed_mean | 0.7500 | 0.6000 | 0.6000 | sign_flip(scale=-20) |" in md
    assert "| cw_trimmed_mean | 0.7000 | 0.2000 | 0.2000 | sign_flip(scale=-20) |" in md
    image(root / "curves_bucketing+cw_trimmed_mean.png")


def test_seeds_are_averaged_in_the_worst_case_table(tmp_path):
    grid = [
        {"ov": ["seed=0", "attack=alie"], "attack": "alie", "accs": [0.6], "seed": 0},
        {"ov": ["seed=1", "attack=alie"], "attack": "alie", "accs": [0.8], "seed": 1},
        {"ov": ["seed=0", "attack=ipm"], "attack": "ipm", "accs": [0.5], "seed": 0},
        {"ov": ["seed=1", "attack=ipm"], "attack": "ipm", "accs": [0.9], "seed": 1},
    ]
    root = sweep(tmp_path / "sw", grid)
    report.main([str(root)])
    md = (root / "report.md").read_text()
    assert "| cw_trimmed_mean | 0.7000 ± 0.1414 | 0.7000 ± 0.2828 | 0.7000 | alie |" in md


def test_f_by_heterogeneity_heatmap_takes_the_worst_attack(tmp_path):
    grid = []
    acc = {(1, 0.1, "alie"): 0.5, (1, 0.1, "ipm"): 0.6, (1, 10.0, "alie"): 0.8, (1, 10.0, "ipm"): 0.7,
           (2, 0.1, "alie"): 0.3, (2, 0.1, "ipm"): 0.2, (2, 10.0, "alie"): 0.6, (2, 10.0, "ipm"): 0.65}
    for (f, a, att), v in acc.items():
        grid.append({"ov": [f"nodes.byzantine={f}", f"dataset.alpha={a}", f"attack={att}"], "byzantine": f,
                     "alpha": a, "partition": "dirichlet", "attack": att, "accs": [v], "preagg": ("clipping", "nnm")})
    root = sweep(tmp_path / "sw", grid)
    jobs, swept, _ = report.make_jobs(Run_list(root), root)
    assert swept == ["nodes.byzantine", "dataset.alpha", "attack"]
    fs, hets, grids = report.f_heterogeneity_grid(jobs)  # type: ignore[misc]
    assert fs == [1, 2] and hets == ["dirichlet α=10", "dirichlet α=0.1"]  # more heterogeneous to the right
    assert grids == {"clipping+nnm+cw_trimmed_mean": [[0.7, 0.5], [0.6, 0.2]]}

    report.main([str(root), "--out", str(tmp_path / "rep")])
    w, h = report.heatmap_size(2, 2)
    assert image(tmp_path / "rep" / "heatmap_f_heterogeneity.png").shape[:2] == px((w, h + 0.5))
    assert (tmp_path / "rep" / "report.md").is_file() and not (root / "report.md").exists()


def Run_list(root: Path) -> list[Run]:
    from byzctl.status import find_runs

    return find_runs(root)


# -- single runs, decentralized runs, folders of runs -------------------------------------------
def test_single_run_report(tmp_path, capsys):
    run = fake_run(tmp_path / "outputs" / "2026-01-01" / "10-00-00", overrides=["rounds=20"], accs=[0.5, 0.9, 0.8, 0.85])
    assert report.main([str(run)]) == 0
    md = (run / "report.md").read_text()
    assert "| 10-00-00 | COMPLETED | 20/20 | 0.8500 | 0.9000 (10) | 1.1500 |" in md
    assert "Worst case" not in md and not (run / "heatmap_rule_attack.png").exists()
    image(run / "curves_cw_trimmed_mean.png")
    assert "wrote" in capsys.readouterr().out


def test_runs_shorter_than_eval_every_are_warned_about_and_drawn_on_their_span(tmp_path, capsys):
    grid = [{"ov": ["aggregator=mean", f"attack={a}"], "aggregator": "mean", "attack": a, "accs": [acc], "rounds": 20, "eval_every": 25}
            for a, acc in (("sign_flip", 0.6), ("alie", 0.4))]
    root = sweep(tmp_path / "sweep", grid, common=["rounds=20", "eval_every=25"])
    assert report.main([str(root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Warning: 2 of 2 runs evaluated at most once (rounds=20, eval_every=25): their curves are single points" in out
    fig = report.curves("mean", report.make_jobs(Run_list(root), root)[0], tmp_path / "c.png")
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        assert lo == 0 and 20 <= hi <= 22, (lo, hi)  # the run's span, not 19..21 around one dot
        assert any("one evaluation per run" in t.get_text() for t in ax.texts)
    image(tmp_path / "c.png")
    # runs with curves get no warning and no note
    fine = sweep(tmp_path / "fine", [dict(j) for j in RULE_ATTACK])
    report.main([str(fine)])
    assert "Warning" not in capsys.readouterr().out
    fig = report.curves("mean", report.make_jobs(Run_list(fine), fine)[0], tmp_path / "d.png")
    assert not fig.axes[0].texts


def test_decentralized_rows_give_mean_worst_and_consensus(tmp_path):
    grid = [
        {"ov": ["aggregator=cw_median"], "aggregator": "cw_median", "peers": True, "accs": [0.4, 0.6, 0.7]},
        {"ov": ["aggregator=mean"], "aggregator": "mean", "peers": True, "accs": [0.3, 0.2, 0.1]},
    ]
    root = sweep(tmp_path / "sw", grid)
    runs = Run_list(root)
    pts = runs[0].curve
    assert [p.round for p in pts] == [5, 10, 15]
    assert pts[-1].accuracy == pytest.approx(0.67) and pts[-1].worst_accuracy == pytest.approx(0.64)
    assert pts[0].consensus_distance == 1.0
    report.main([str(root)])
    md = (root / "report.md").read_text()
    assert "worst node acc" in md and "| 0 | COMPLETED | cw_median | 15/20 | 0.6700 |" in md
    assert image(root / "consensus.png").shape[:2] == px(report.CONSENSUS_SIZE)


def test_curve_averages_honest_nodes_and_ignores_byzantine_rows():
    rows = [
        {"round": 5, "test_accuracy": 0.6, "test_loss": 1.0, "node": 0},
        {"round": 5, "test_accuracy": 0.8, "test_loss": 0.5, "node": 1},
        {"round": 5, "test_accuracy": 0.0, "test_loss": 9.0, "node": 2},  # Byzantine peer
        {"round": 10, "test_accuracy": 0.9, "test_loss": 0.4, "node": 0},
        {"note": "a row without a round is ignored"},
    ]
    pts = curve(rows, byzantine_ids={2})
    assert [(p.round, p.accuracy, p.loss, p.worst_accuracy) for p in pts] == [(5, 0.7, 0.75, 0.6), (10, 0.9, 0.4, None)]


def test_running_and_interrupted_runs_are_reported_not_crashed(tmp_path):
    root = tmp_path / "outputs"
    fake_run(root / "a", overrides=["rounds=20"], state="RUNNING", accs=[0.4, 0.5], pids={"0": os.getpid()})
    fake_run(root / "b", overrides=["rounds=20"], state="INTERRUPTED", accs=[0.4])
    (root / "a" / "metrics.jsonl").open("a").write('{"round": 15, "test_acc')  # a row being written
    assert report.main([str(root)]) == 0
    md = (root / "report.md").read_text()
    assert "| a | RUNNING | 10/20 | 0.5000 |" in md  # the partial last line is skipped
    assert "`b`: INTERRUPTED: interrupted by SIGINT" in md
    assert "| cw_trimmed_mean | RUNNING/INTERRUPTED |" not in md  # one attack, one cell of states
    assert "| cw_trimmed_mean | INTERRUPTED/RUNNING |  |  |" in md


def test_bad_directories_fail_clearly(tmp_path):
    with pytest.raises(ByzctlError, match="no such directory"):
        report.main([str(tmp_path / "nope")])
    with pytest.raises(ByzctlError, match="no runs under"):
        report.main([str(tmp_path)])
    proc = byzctl("report", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "nope" in proc.stderr


# -- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_sweep_is_reported(tmp_path):
    proc = byzctl("run", "-m", *SMALL, "rounds=10", "eval_every=5", "aggregator=mean,cw_trimmed_mean",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = byzctl("report", str(tmp_path / "sweep"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| 0 | COMPLETED | mean | 10/10 |" in proc.stdout
    assert "| 1 | COMPLETED | cw_trimmed_mean | 10/10 |" in proc.stdout
    image(tmp_path / "sweep" / "heatmap_rule_attack.png")
    image(tmp_path / "sweep" / "curves_mean.png")
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "report.csv")))
    assert all(0.0 <= float(r["final_accuracy"]) <= 1.0 for r in rows)


# -- seeds: mean, std, 95% CI and n per cell --------------------------------------------------------
def test_three_seed_sweep_gives_mean_std_ci_and_n_per_cell(tmp_path, capsys):
    accs = {"mean": [0.80, 0.85, 0.90], "cw_median": [0.70, 0.72, 0.74], "krum": [0.30, 0.31, 0.32]}
    grid = [{"ov": [f"aggregator={rule}", f"seed={s}"], "aggregator": rule, "attack": "alie", "accs": [a], "seed": s}
            for rule, values in accs.items() for s, a in enumerate(values)]
    root = sweep(tmp_path / "sw", grid)
    report.main([str(root)])
    md = (root / "report.md").read_text()
    # mean: mean 0.85, std 0.05, half-width t(0.975, 2) * 0.05 / sqrt(3) = 4.303 * 0.028868 = 0.124216
    assert "| mean | alie | 3 | 0.8500 | 0.0500 | [0.7258, 0.9742] | * |" in md
    # cw_median: 0.72 +- 4.303 * 0.02 / sqrt(3) = 0.049687: [0.6703, 0.7697] overlaps mean's interval
    assert "| cw_median | alie | 3 | 0.7200 | 0.0200 | [0.6703, 0.7697] | * |" in md
    # krum: 0.31 +- 4.303 * 0.01 / sqrt(3) = 0.024843: [0.2852, 0.3348], apart from the best
    assert "| krum | alie | 3 | 0.3100 | 0.0100 | [0.2852, 0.3348] |  |" in md
    rows = list(csv.DictReader(open(root / "cells.csv")))
    cells = {(r["rule"], r["attack"]): r for r in rows}
    assert len(rows) == 6  # 3 rules x (alie + the worst case)
    mean = cells[("mean", "alie")]
    assert (mean["n"], mean["seeds"], mean["ties_best"]) == ("3", "0 1 2", "True")
    assert float(mean["mean"]) == pytest.approx(0.85) and float(mean["std"]) == pytest.approx(0.05)
    assert float(mean["ci95_low"]) == pytest.approx(0.85 - 4.303 * 0.05 / 3 ** 0.5)
    assert float(mean["ci95_high"]) == pytest.approx(0.85 + 4.303 * 0.05 / 3 ** 0.5)
    assert cells[("krum", "alie")]["ties_best"] == "False"
    assert cells[("krum", "worst (alie)")]["n"] == "3"
    img = image(root / "heatmap_rule_attack.png")
    assert img.shape[:2] == px(report.heatmap_size(3, 2))


def test_t95_matches_the_t_distribution():
    assert report.t95(1) == 12.706 and report.t95(2) == 4.303 and report.t95(30) == 2.042
    try:
        from scipy.stats import t
    except ImportError:
        t = None
    for df in (31, 40, 60, 120, 1000):
        want = t.ppf(0.975, df) if t is not None else {31: 2.0395, 40: 2.0211, 60: 2.0003, 120: 1.9799, 1000: 1.9623}[df]
        assert report.t95(df) == pytest.approx(want, abs=2e-4)
    with pytest.raises(ValueError):
        report.t95(0)
    one = report.Cell([0.5], [], ["0"])
    assert (one.n, one.mean, one.std, one.ci95) == (1, 0.5, None, None)
