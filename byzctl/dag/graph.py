"""A tiny DAG executor for one node's round.

A `Dag` names its inputs and its ops; each op is a function of its dependencies'
values (inputs or other ops' results). A `DagRun` executes one round of a Dag:
inputs may be provided late (a `Gather` input fills up as messages arrive), light
ops run inline as soon as their dependencies are ready, heavy ops (aggregation,
gradients) run on a thread pool so the node's loop keeps answering messages and
heartbeats. The owner drives it: feed inputs, call `advance()`, read `results`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from byzctl.errors import ByzctlError


class DagError(ByzctlError):
    """A graph is malformed (unknown dependency, cycle) or an op failed."""


@dataclass(frozen=True)
class Op:
    """One step: `fn(*values of deps)`; heavy ops run on the pool."""

    name: str
    fn: Callable[..., Any]
    deps: tuple[str, ...] = ()
    heavy: bool = False


@dataclass(frozen=True)
class Gather:
    """An input completed by several arriving values, keyed by sender.

    It completes once every expected key arrived, or when closed early (a
    deadline) with at least `minimum` of them.
    """

    expected: frozenset[Hashable]
    minimum: int


class Dag:
    """Inputs plus ops, validated once: names unique, dependencies known, no cycle."""

    def __init__(self, inputs: Iterable[str], ops: Iterable[Op], gathers: dict[str, Gather] | None = None):
        self.inputs = tuple(inputs)
        self.gathers = dict(gathers or {})
        ops = list(ops)
        self.ops = {op.name: op for op in ops}
        names = list(self.inputs) + list(self.gathers)
        dup = [n for n, c in Counter(names + [op.name for op in ops]).items() if c > 1]
        if dup:
            raise DagError(f"duplicate names in graph: {sorted(dup)}")
        known = set(names) | set(self.ops)
        for op in self.ops.values():
            missing = [d for d in op.deps if d not in known]
            if missing:
                raise DagError(f"op {op.name!r} depends on unknown {missing}")
        self.order = self._toposort(set(names))

    def _toposort(self, ready: set[str]) -> list[str]:
        order: list[str] = []
        todo = dict(self.ops)
        while todo:
            batch = [name for name, op in todo.items() if all(d in ready for d in op.deps)]
            if not batch:
                raise DagError(f"cycle among ops {sorted(todo)}")
            for name in batch:
                order.append(name)
                ready.add(name)
                del todo[name]
        return order


class DagRun:
    """One execution of a Dag. Not thread-safe: drive it from the node's loop."""

    def __init__(self, dag: Dag, pool: ThreadPoolExecutor | None = None, wake_fd: int | None = None):
        self.dag = dag
        self.pool = pool
        self.wake_fd = wake_fd
        self.values: dict[str, Any] = {}
        self.partial: dict[str, dict[Hashable, Any]] = {name: {} for name in dag.gathers}
        self.running: dict[str, Future[Any]] = {}
        self.error: BaseException | None = None

    # -- inputs ----------------------------------------------------------------
    def provide(self, name: str, value: Any) -> None:
        if name not in self.dag.inputs:
            raise DagError(f"{name!r} is not an input of this graph (inputs: {list(self.dag.inputs)})")
        self.values[name] = value

    def feed(self, name: str, key: Hashable, value: Any) -> bool:
        """Add one arrival to a Gather input; False (ignored) if unexpected, duplicate or late."""
        spec = self.dag.gathers[name]
        box = self.partial[name]
        if name in self.values or key not in spec.expected or key in box:
            return False
        box[key] = value
        if len(box) == len(spec.expected):
            self.values[name] = _in_order(box)
        return True

    def arrived(self, name: str) -> int:
        return len(self.partial[name])

    def arrived_from(self, name: str) -> frozenset[Hashable]:
        """The senders whose values Gather `name` holds so far."""
        return frozenset(self.partial[name])

    def has(self, name: str) -> bool:
        """Whether `name` has its value: an input provided, a Gather closed, an op done."""
        return name in self.values

    def close(self, name: str, *, force: bool = False) -> bool:
        """Complete a Gather with what arrived, if that is at least its minimum (or
        regardless, with `force`: every sender still alive has answered)."""
        spec, box = self.dag.gathers[name], self.partial[name]
        if name in self.values:
            return True
        if len(box) < spec.minimum and not force:
            return False
        self.values[name] = _in_order(box)
        return True

    # -- execution -------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.error is not None or all(name in self.values for name in self.dag.ops)

    def advance(self) -> None:
        """Collect finished heavy ops and start every op whose dependencies are ready."""
        progressed = True
        while progressed and self.error is None:
            progressed = False
            for name, fut in list(self.running.items()):
                if fut.done():
                    del self.running[name]
                    exc = fut.exception()
                    if exc is not None:
                        self.error = exc
                        return
                    self.values[name] = fut.result()
                    progressed = True
            for name in self.dag.order:
                if name in self.values or name in self.running:
                    continue
                op = self.dag.ops[name]
                if not all(d in self.values for d in op.deps):
                    continue
                args = [self.values[d] for d in op.deps]
                if op.heavy and self.pool is not None:
                    fut = self.pool.submit(op.fn, *args)
                    if self.wake_fd is not None:
                        fut.add_done_callback(self._wake)
                    self.running[name] = fut
                else:
                    try:
                        self.values[name] = op.fn(*args)
                    except BaseException as exc:  # noqa: BLE001 - surfaced via .error
                        self.error = exc
                        return
                    progressed = True

    def _wake(self, _fut: Future[Any]) -> None:
        try:
            os.write(self.wake_fd, b"\0")  # type: ignore[arg-type]
        except OSError:
            pass

    def result(self, name: str) -> Any:
        if self.error is not None:
            raise self.error
        return self.values[name]


def run_now(dag: Dag, inputs: dict[str, Any], pool: ThreadPoolExecutor | None = None) -> dict[str, Any]:
    """Execute a Dag whose inputs are all known (tests, single-process use)."""
    run = DagRun(dag, pool)
    for k, v in inputs.items():
        if k in dag.gathers:
            for key, val in v.items():
                run.feed(k, key, val)
        else:
            run.provide(k, v)
    while not run.done:
        run.advance()
        for fut in list(run.running.values()):
            fut.result()
    if run.error is not None:
        raise run.error
    return {name: run.values[name] for name in dag.ops}


def _in_order(box: dict[Hashable, Any]) -> dict[Hashable, Any]:
    """A gather's values by sender: node ids in numeric order (2 before 10), other keys
    after them by their text. Sums over them must not depend on arrival order."""
    return dict(sorted(box.items(), key=lambda kv: (0, kv[0], "") if isinstance(kv[0], int) else (1, 0, str(kv[0]))))
