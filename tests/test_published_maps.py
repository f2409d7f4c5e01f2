"""The presets that reproduce published robustness maps (conf/experiment/byzfl_benchmark.yaml,
conf/experiment/bucketing_iclr2022_table.yaml): they compose with the reference semantics
they claim, run shrunk end to end, and (slow) their shrunk sweeps give the table the
README reports at full size."""

from __future__ import annotations

import csv

import pytest
from conftest import byzctl, read

from byzctl.config.experiment import Experiment

SHRINK = ["eval_every=5", "model.hidden=[32]", "topology.join_timeout=90"]


def test_byzfl_preset_uses_byzfl_semantics(compose):
    cfg = compose(["+experiment=byzfl_benchmark"])
    assert (cfg.nodes.honest, cfg.rounds, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (10, 300, 25, 0.1, 0.9, 1e-4)
    assert cfg.momentum_init.value == "zero" and cfg.dataset.cuts.value == "floor"
    assert list(cfg.preagg) == ["clipping", "nnm"] and list(cfg.model.hidden) == [100]
    krum = Experiment.from_cfg(compose(["+experiment=byzfl_benchmark", "aggregator=krum", "aggregator.neighbours=n_f_1",
                                        "nodes.byzantine=9"]))
    assert krum.n == 19  # n_f_1 needs only n > 2f: Krum runs at f = 9, as in ByzFL


def test_bucketing_table_preset_is_the_papers_grid(compose):
    cfg = compose(["+experiment=bucketing_iclr2022_table"])
    assert (cfg.nodes.honest + cfg.nodes.byzantine, cfg.nodes.byzantine) == (25, 5)
    assert cfg.dataset.partition.value == "extreme"
    exp = Experiment.from_cfg(compose(["+experiment=bucketing_iclr2022_table", "aggregator=krum", "preagg=[bucketing]"]))
    assert exp.preaggs[0].bucket_size == 2  # 13 buckets > 2f + 2 = 12


@pytest.mark.parametrize("preset, overrides", [
    ("byzfl_benchmark", ["rounds=20", "nodes.byzantine=1", "attack=opt_alie", "dataset.gamma=0.5"]),
    ("bucketing_iclr2022_table", ["rounds=20", "nodes.honest=12", "nodes.byzantine=2", "aggregator=krum",
                                  "preagg=[bucketing]", "attack=mimic"]),
])
def test_preset_runs_shrunk(tmp_path, preset, overrides):
    out = tmp_path / "run"
    proc = byzctl("run", f"+experiment={preset}", *SHRINK, *overrides, f"hydra.run.dir={out}", cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = read(out / "summary.json")
    assert summary["state"] == "COMPLETED" and summary["rounds_completed"] == 20
    assert summary["test_accuracy"] > 0.2  # above chance (0.1) after 20 steps
    cfg = (out / "config.yaml").read_text()
    assert "split_seed: 0" in cfg


@pytest.mark.slow
def test_byzfl_map_shrunk_falls_with_f_and_heterogeneity(tmp_path):
    """The map's shape: worst case over attacks at (f = 1, IID) above (f = 5, one digit per node)."""
    sweep = tmp_path / "sweep"
    proc = byzctl("run", "-m", "+experiment=byzfl_benchmark", *SHRINK, "rounds=60", "eval_every=30",
                  "nodes.byzantine=1,5", "dataset.gamma=1.0,0.0", "attack=sign_flip,opt_alie",
                  f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = byzctl("report", str(sweep))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (sweep / "heatmap_f_heterogeneity.png").is_file()
    rows = list(csv.DictReader(open(sweep / "cells.csv")))
    worst = {(r["nodes.byzantine"], r["dataset.gamma"]): float(r["mean"]) for r in rows if r["attack"].startswith("worst")}
    assert worst[("1", "1.0")] > worst[("5", "0.0")] and worst[("1", "1.0")] > 0.7


@pytest.mark.slow
def test_bucketing_table_shrunk_has_every_row_and_column(tmp_path):
    sweep = tmp_path / "sweep"
    proc = byzctl("run", "-m", "+experiment=bucketing_iclr2022_table", *SHRINK, "rounds=30", "eval_every=30",
                  "nodes.honest=12", "nodes.byzantine=2", "aggregator=cw_median,krum", "attack=ipm,mimic",
                  f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = byzctl("report", str(sweep))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(sweep / "cells.csv")))
    cells = {(r["rule"], r["attack"]) for r in rows}
    for rule in ("cw_median", "bucketing+cw_median", "krum", "bucketing+krum"):
        assert {(rule, "ipm"), (rule, "mimic")} <= cells
    assert all(float(r["mean"]) > 0.1 for r in rows)
