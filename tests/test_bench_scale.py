"""`byzctl bench scale`: rows with every field, one per layout, never a layout left out."""

from __future__ import annotations

import json

import pytest
from conftest import byzctl

from byzctl.bench import scale

FIELDS = {"case", "layout", "nodes", "rounds", "wall_s", "round_s", "rounds_per_s", "peak_pss_mb", "note"}
RATIOS = {"packed_over_floor_wall", "packed_over_floor_round", "per_process_over_packed_wall"}


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_floor_of_a_tiny_case_is_a_full_row():
    row = scale.run_layout("A", "floor", [*scale.CASES["A"], "rounds=3"], mem_available=lambda: None, timeout=60)
    assert row.note == ""
    assert (row.nodes, row.rounds) == (14, 3)  # the ps server and 13 workers
    assert row.wall_s > row.round_s > 0 and row.rounds_per_s == pytest.approx(1 / row.round_s)
    assert row.peak_pss_mb > 0 and 0 <= row.test_accuracy <= 1


def test_json_has_one_line_per_layout_and_the_ratios():
    proc = byzctl("bench", "scale", "--cases", "A", "--rounds", "3", "--layouts", "floor,per_process", "--json", timeout=240)
    assert proc.returncode == 0, proc.stderr
    rows = _lines(proc.stdout)
    assert [(r["case"], r["layout"]) for r in rows] == [("A", "floor"), ("A", "per_process"), ("A", "ratios")]
    for r in rows[:2]:
        assert FIELDS <= set(r)
        assert r["note"] or r["wall_s"] > 0  # ran, or says why not (e.g. no `processes` key yet)
    assert RATIOS <= set(rows[2])
    assert rows[2]["packed_over_floor_wall"] is None  # no packed row asked for


def test_a_layout_that_cannot_fit_is_noted_not_run(monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("a layout that does not fit must not be started")

    monkeypatch.setattr(scale, "run_real", never)
    argv = ["--cases", "A", "--rounds", "3", "--layouts", "per_process", "--json"]
    assert scale.main(argv, mem_available=lambda: 1000) == 0  # 1 GB available
    per, ratio = _lines(capsys.readouterr().out)
    assert per["layout"] == "per_process" and per["wall_s"] is None
    assert per["note"].startswith("would need ~5 GB for 14 processes")
    assert ratio["per_process_over_packed_wall"] is None


def test_a_failed_run_is_a_row_with_the_launchers_message(monkeypatch):
    monkeypatch.setattr(scale, "layout_overrides", lambda layout: [])  # fail on nodes.honest, not on `processes`
    row = scale.run_real("A", "per_process", [*scale.CASES["A"], "nodes.honest=0"], timeout=120)
    assert row.wall_s is None and "exited" in row.note and "nodes.honest" in row.note


def test_round_seconds_between_first_and_last_evaluation():
    assert scale.round_seconds({50: 10.0, 100: 20.0, 300: 60.0}, 300, 99.0) == pytest.approx(0.2)
    assert scale.round_seconds({3: 1.5}, 3, 1.5) == pytest.approx(0.5)  # one evaluation: whole training / rounds
    assert scale.round_seconds({}, 0, 0.0) is None


def test_verdict_needs_every_figure_of_the_target():
    rows = {"packed": scale.Row("A", "packed", wall_s=4.0, round_s=0.011), "floor": scale.Row("A", "floor", wall_s=1.0, round_s=0.01)}
    ratio = scale.ratios("A", rows)
    scale.judge("A", rows, ratio)
    assert rows["packed"].verdict == "PASS" and ratio["packed_over_floor_round"] == pytest.approx(1.1)
    rows["packed"].wall_s = 6.0
    scale.judge("A", rows, scale.ratios("A", rows))
    assert rows["packed"].verdict == "MISS"
    del rows["floor"]
    rows["packed"].wall_s = 4.0
    scale.judge("A", rows, scale.ratios("A", rows))
    assert rows["packed"].verdict == "n/a"  # round ratio unknown without a floor


def test_medians_over_repeats_keep_failures_visible():
    ok = [scale.Row("A", "floor", wall_s=w, round_s=w / 10) for w in (3.0, 1.0, 2.0)]
    assert scale.median_row(ok).wall_s == 2.0
    mixed = scale.median_row([*ok[:2], scale.Row("A", "floor", note="boom")])
    assert mixed.wall_s == 2.0 and mixed.note.startswith("1 of 3 repeats failed: boom")
    assert scale.median_row([scale.Row("A", "floor", note="boom")]).note == "boom"


@pytest.mark.slow
def test_per_process_run_trains_as_the_floor(monkeypatch, capsys):
    """A real one-process-per-node run (today's layout, no `processes` override) reaches
    the floor's test accuracy: the floor computes what the nodes compute."""
    monkeypatch.setattr(scale, "layout_overrides", lambda layout: [])
    assert scale.main(["--cases", "A", "--rounds", "3", "--layouts", "per_process,floor", "--json"]) == 0
    per, floor, _ = _lines(capsys.readouterr().out)
    assert per["note"] == "" and per["wall_s"] > 0 and per["round_s"] > 0 and per["peak_pss_mb"] > floor["peak_pss_mb"]
    assert per["test_accuracy"] == pytest.approx(floor["test_accuracy"])
