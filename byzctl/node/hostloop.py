"""One event loop for all the serving nodes of a host process (node/host.py).

A node of a host sets itself up, joins and connects on its own thread (those phases
wait on the monitor and on peers), then hands itself to this loop (`HostLoop.serve`)
and sleeps until it finishes. The loop polls every serving node's sockets and wake-up
pipe at once and gives a node a turn (`NodeRuntime.turn`) when something of it is
ready or its heartbeat or deadline is due. One thread, not one per node, reads and
dispatches the messages: with 275 nodes in a host, 275 threads waking for their
messages and taking turns on the interpreter lock (each waiter wakes every switch
interval) kept the machine's load in the hundreds and starved the single-threaded
server and launcher until they missed their own heartbeats (case C of `byzctl bench
scale`). Heavy ops still run on each node's pool thread and wake the loop through the
node's pipe; a node's failure in its turn ends that node alone, with its exception
raised on its own thread as before.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from byzctl.node.runtime import NodeRuntime

_turning = threading.local()


def turning() -> int | None:
    """The id of the node whose turn this thread runs now (the host loop's thread, within
    a turn), else None: a node's log lines go to that node's own log (node/host.py)."""
    return getattr(_turning, "node", None)


class _Serving:
    """A node in the loop, and how its own thread learns it ended."""

    def __init__(self, node: NodeRuntime):
        self.node = node
        self.done = threading.Event()
        self.error: BaseException | None = None


class HostLoop:
    """The event loop of one host process's serving nodes (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived: list[_Serving] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="host-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the loop (every node has left it, or the process is going)."""
        self._stopped = True
        self._poke()
        self._thread.join(timeout=5)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def serve(self, node: NodeRuntime) -> None:
        """Serve `node` until it finishes; called on the node's own thread, which waits.
        Raises what the node raised in one of its turns."""
        serving = _Serving(node)
        with self._lock:
            self._arrived.append(serving)
        self._poke()
        serving.done.wait()
        if serving.error is not None:
            raise serving.error

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe already wakes the loop
            os.write(self._wake_w, b"\0")

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        owner: dict[Any, _Serving] = {}  # a node's socket or wake-up fd -> the node
        live: list[_Serving] = []

        def end(s: _Serving, error: BaseException | None = None) -> None:
            for item in [k for k, v in owner.items() if v is s]:
                poller.unregister(item)
                del owner[item]
            live.remove(s)
            s.error = error
            s.done.set()

        def sync(s: _Serving) -> None:
            """Poll what the node polls (it may open sockets in a turn: a peer back)."""
            for item, _ in s.node.poller.sockets:
                if item not in owner:
                    poller.register(item, zmq.POLLIN)
                    owner[item] = s

        def step(s: _Serving, act: Callable[[], None]) -> None:
            """One step of node s (its begin, or a turn), as its own: its log lines to its log,
            its exception ending it alone; then it leaves if it finished."""
            _turning.node = s.node.spec.id
            try:
                act()
            except BaseException as exc:  # noqa: BLE001 - the node's failure, raised on its own thread
                end(s, exc)
                return
            finally:
                _turning.node = None
            if s.node.finished:
                end(s)
            else:
                sync(s)

        while not self._stopped:
            with self._lock:
                arrived, self._arrived = self._arrived, []
            for s in arrived:
                live.append(s)
                sync(s)
                step(s, s.node.begin)
            due = {s: s.node.due() for s in live}  # a node's due moves only in its own turns
            now = time.monotonic()
            wait = min(due.values(), default=now + 1.0) - now
            ready: dict[_Serving, dict[Any, int]] = {}
            for item, event in poller.poll(max(0, int(wait * 1000)) + 1):
                node = owner.get(item)
                if node is not None:
                    ready.setdefault(node, {})[item] = event
                elif item == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
            now = time.monotonic()
            for s, when in due.items():
                if s not in ready and when <= now:
                    ready[s] = {}
            for s, events in ready.items():
                step(s, functools.partial(s.node.turn, events))
        for s in list(live):
            end(s, RuntimeError("the host process's loop stopped"))
