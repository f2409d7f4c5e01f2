"""The DAG executor: ordering, validation, message-driven inputs, heavy ops on a pool."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from byzctl.dag import Dag, DagError, DagRun, Gather, Op, run_now


def test_ops_run_in_dependency_order():
    dag = Dag(["a"], [Op("c", lambda b: b * 10, ("b",)), Op("b", lambda a: a + 1, ("a",))])
    assert dag.order == ["b", "c"]
    assert run_now(dag, {"a": 1}) == {"b": 2, "c": 20}


def test_unknown_dependency_duplicate_and_cycle_are_rejected():
    with pytest.raises(DagError, match="unknown"):
        Dag([], [Op("x", lambda y: y, ("y",))])
    with pytest.raises(DagError, match="duplicate"):
        Dag(["x"], [Op("x", lambda: 1)])
    with pytest.raises(DagError, match="cycle"):
        Dag([], [Op("x", lambda y: y, ("y",)), Op("y", lambda x: x, ("x",))])


def test_gather_completes_when_all_arrive_and_ignores_strangers_and_duplicates():
    dag = Dag([], [Op("sum", lambda g: sum(g.values()), ("g",))], {"g": Gather(frozenset({1, 2, 3}), 2)})
    run = DagRun(dag)
    assert run.feed("g", 1, 10)
    assert not run.feed("g", 1, 99)  # duplicate
    assert not run.feed("g", 7, 5)  # not expected
    run.advance()
    assert not run.done
    run.feed("g", 2, 20)
    run.feed("g", 3, 30)
    run.advance()
    assert run.done and run.result("sum") == 60


def test_gather_closes_early_only_with_its_minimum():
    dag = Dag([], [Op("n", len, ("g",))], {"g": Gather(frozenset(range(5)), 3)})
    run = DagRun(dag)
    run.feed("g", 0, 0)
    run.feed("g", 1, 1)
    assert not run.close("g")
    assert run.arrived_from("g") == {0, 1} and not run.has("g")
    run.feed("g", 4, 4)
    assert run.close("g")
    assert not run.feed("g", 2, 2)  # late arrivals are dropped
    assert run.has("g") and run.arrived_from("g") == {0, 1, 4} and not run.has("n")
    run.advance()
    assert run.has("n") and run.result("n") == 3


def test_heavy_ops_run_on_the_pool_and_errors_surface():
    seen = []
    with ThreadPoolExecutor(1) as pool:
        dag = Dag(["x"], [Op("h", lambda x: seen.append(threading.current_thread().name) or x * 2, ("x",), heavy=True)])
        assert run_now(dag, {"x": 4}, pool) == {"h": 8}
        assert seen and seen[0] != threading.current_thread().name
        bad = Dag(["x"], [Op("h", lambda x: 1 / 0, ("x",), heavy=True)])
        with pytest.raises(ZeroDivisionError):
            run_now(bad, {"x": 1}, pool)


def test_a_gather_hands_its_values_in_numeric_sender_order():
    """Node ids sort as numbers (2 before 10): a per-recipient attack stacks what it
    gathered in this order, and float sums depend on it."""
    from byzctl.dag import Dag, DagRun, Gather

    run = DagRun(Dag([], [], {"g": Gather(frozenset({2, 10, 1}), 3)}), None, None)
    for sender in (10, 2, 1):
        run.feed("g", sender, sender)
    assert list(run.values["g"]) == [1, 2, 10]
