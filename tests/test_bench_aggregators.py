"""The aggregator benchmark: every rule timed against the torch.mean floor."""

from __future__ import annotations

import json

import pytest

from byzctl.bench.aggregators import QUICK_SHAPES, main

KEYS = {"rule", "kind", "n", "d", "f", "device", "seconds", "floor_seconds", "ratio", "peak_extra_mb", "memory_ratio",
        "status", "reason"}


def run_json(capsys, *argv: str) -> tuple[int, list[dict]]:
    code = main(["--quick", "--json", *argv])
    lines = capsys.readouterr().out.splitlines()
    return code, [json.loads(line) for line in lines]


def test_quick_json_times_every_rule_against_the_floor(capsys):
    from byzctl.config.schema import options

    code, rows = run_json(capsys)
    assert code == 0, [r for r in rows if r["status"] == "error"]
    assert all(set(r) == KEYS for r in rows)
    expected = set(options("aggregator")) | {f"{p}+mean" for p in options("preagg")}
    assert {r["rule"] for r in rows} == expected
    assert {(r["n"], r["d"]) for r in rows} == set(QUICK_SHAPES)
    for r in rows:
        assert r["device"] in ("cpu", "cuda")
        if r["status"] == "ok":
            assert r["seconds"] > 0 and r["floor_seconds"] > 0
            assert r["ratio"] == r["seconds"] / r["floor_seconds"]
            assert r["f"] == r["n"] // 4 or (1 <= r["f"] < r["n"] // 4 and "largest f it accepts" in r["reason"])
            assert r["peak_extra_mb"] >= 0 and r["memory_ratio"] == r["peak_extra_mb"] * 2**20 / (4 * r["n"] * r["d"])
        else:  # a rule that accepts no f >= 1 at (n, d) is reported, not a crash
            assert r["status"] == "skipped" and r["reason"] and r["ratio"] is None
    # bulyan needs n >= 4f + 3: at n = 8 and 16 it is timed at f = 1 and 3, and says why
    bulyan = {r["n"]: r for r in rows if r["rule"] == "bulyan"}
    assert {n: r["f"] for n, r in bulyan.items()} == {8: 1, 16: 3}
    assert all(r["status"] == "ok" and "n >= 4f + 3" in r["reason"] for r in bulyan.values())


def test_rules_filter_and_table_output(capsys):
    code, rows = run_json(capsys, "--rules", "cw_median,none", "device=cpu")
    assert code == 0 and {r["rule"] for r in rows} == {"cw_median", "none+mean"}
    assert main(["--quick", "--rules", "mean", "repeats=5"]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "ratio" in out and "floor" in out and "mem x" in out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--rules", "nope"], "unknown nope"),
        (["colour=red"], "unknown option 'colour=red'"),
        (["device=tpu"], "device must be auto, cpu or cuda"),
        (["repeats=0"], "repeats must be >= 1"),
    ],
)
def test_bad_arguments_exit_2_naming_the_value(capsys, argv, match):
    assert main(["--quick", *argv]) == 2
    assert match in capsys.readouterr().err


def test_no_rule_adds_more_than_a_small_multiple_of_its_input():
    """The memory the benchmark reports, at a size where pages count: every rule and
    pre-aggregator chain adds at most 2x its input at its peak (an (n, n, d) array
    would be n = 16 times it), and the measure sees a copy of the input as 1x."""
    import torch

    from byzctl.bench.aggregators import _cases, _peak_extra
    from byzctl.errors import LimitError

    x = torch.randn(16, 250_000, generator=torch.Generator().manual_seed(0))  # (16, 250k): 16 MB
    size = x.numel() * x.element_size()
    copy = _peak_extra(lambda: x.clone(), "cpu")
    if copy is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert 0.9 < copy / size < 1.2
    ratios = {}
    for case in _cases(0, "cpu"):
        for f in (4, 3):  # n // 4, else the largest f within the rule's limits (bulyan, bucketing: 3)
            try:
                case.run(x, f)  # warm-up: compiled kernels, caches
                break
            except LimitError:
                continue
        ratios[case.label] = _peak_extra(lambda case=case, f=f: case.run(x, f), "cpu") / size
    assert max(ratios.values()) <= 2.0, ratios
