"""One node process: build its role from the plan, join the run, serve its rounds."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from byzctl.config.experiment import Experiment
from byzctl.errors import ByzctlError
from byzctl.jsonio import read_json, write_json
from byzctl.node.cohost import Cohost
from byzctl.node.peer import Peer
from byzctl.node.ps import PsServer, PsWorker
from byzctl.node.relay import HubRelay
from byzctl.node.runtime import CoordinatorLost, NodeRuntime
from byzctl.node.shards import load_shard
from byzctl.procs import pid_alive
from byzctl.states import RunState
from byzctl.topology.base import NodeSpec, Role

log = logging.getLogger("byzctl.node")

ROLES: dict[Role, type[NodeRuntime]] = {Role.server: PsServer, Role.worker: PsWorker, Role.peer: Peer, Role.relay: HubRelay}


_stopping = False
"""Set once SIGTERM raised its SystemExit: a second SIGTERM (the launcher's reap of the
whole process group) finds the node already on its way out."""


def _terminate(signum: int, _frame: object) -> None:
    global _stopping
    if _stopping:
        return
    _stopping = True
    raise SystemExit(128 + signum)


def _unraisable(args: sys.UnraisableHookArgs) -> None:
    """A SIGTERM that lands while Python runs a finalizer (a socket's or frame's __del__,
    an atexit callback) raises its SystemExit where Python can only print it, traceback
    and all ("Exception ignored in ... SystemExit: 143"), and goes on. Print nothing and
    deliver the signal again, from a thread a moment later (a signal sent from here would
    land inside this hook, where its exception is lost too): it lands in ordinary code,
    which exits."""
    global _stopping
    if isinstance(args.exc_value, SystemExit) and args.exc_value.code == 128 + signal.SIGTERM:
        _stopping = False
        again = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM))
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(args)


def handle_sigterm() -> None:
    """SIGTERM stops the node through SystemExit(143), so `finally` blocks close its
    sockets; no traceback of it ever reaches the node's log."""
    signal.signal(signal.SIGTERM, _terminate)
    sys.unraisablehook = _unraisable


def die_with_parent() -> None:
    """Get SIGTERM when the parent process dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def orphaned(parent: int, run_dir: str | None, node_ids: list[int]) -> None:
    """If the launcher died, record it in run.json (its `finally` never ran)."""
    if not run_dir or pid_alive(parent):
        return
    path = Path(run_dir) / "run.json"
    with contextlib.suppress(OSError, ValueError):
        info = read_json(path)
        if info.get("state") == RunState.RUNNING:
            info.update(state=RunState.FAILED, ended=time.time(),
                        reason=f"the launcher (pid {parent}) died; {_nodes(node_ids)} stopped with it")
            write_json(path, info)


def run_node(exp: Experiment, node_id: int, control: str, run_id: str, run_dir: str | None = None,
             state_dir: str | None = None, launcher_pid: int | None = None) -> int:
    """Run node `node_id` of `exp` until its last round; returns the exit code: 0 when the
    run completed (or this node finished its part), 1 when the run failed, the node failed,
    or the coordinator was lost (the node then saves its state under `state_dir`).
    `launcher_pid`: the process whose death orphans this node (default: the parent)."""
    parent = launcher_pid or os.getppid()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s %(levelname)s node{node_id}: %(message)s")
    handle_sigterm()
    torch.set_num_threads(exp.cfg.device.threads)
    spec = spec_of(exp, node_id)
    try:
        return serve_node(exp, spec, control, run_id, state_dir=state_dir or run_dir)
    finally:
        orphaned(parent, run_dir, [node_id])


def spec_of(exp: Experiment, node_id: int) -> NodeSpec:
    plan = {s.id: s for s in exp.plan()}
    if node_id not in plan:
        raise ByzctlError(f"--id {node_id} is not a node of this run; ids are {sorted(plan)}")
    return plan[node_id]


def serve_node(exp: Experiment, spec: NodeSpec, control: str, run_id: str, *, state_dir: str | None = None,
               host: Cohost | None = None) -> int:
    """One logical node, from its set-up to its exit code (see run_node); in a host
    process of many nodes (node/host.py) each runs this on its own thread, with what the
    host shares among them (`host`: its ZeroMQ context, gradient batcher, adversary)."""
    node = ROLES[spec.role](exp, spec, control, run_id, host=host)
    t0 = time.monotonic()
    try:
        if spec.role is Role.relay:
            shard = None
        elif exp.dataset.ship:
            shard = node.fetch_shard()
        else:
            shard = load_shard(exp, spec)
        node.setup(shard)
        log.info("%s ready in %.1fs", spec.label, time.monotonic() - t0)
        node.connect(node.join(node.endpoints()))
        if host is not None and host.loop is not None:
            host.loop.serve(node)
        else:
            node.serve()
        node.heartbeat(time.monotonic(), force=True)
        if not node.reported_done:  # workers and relays: tell the monitor this exit is expected
            node.report("done", {"state": node.state, "rounds_completed": node.round})
        if node.stop_state and node.stop_state != RunState.COMPLETED:
            log.error("the run ended %s: %s (this node stopped after %d rounds)", node.stop_state, node.stop_reason, node.round)
            return 1
        log.info("finished: %s after %d rounds", node.state, node.round)
        return 0
    except CoordinatorLost as exc:
        node.state = "failed"
        log.error("failed: %s", exc)
        _save_own_state(node, state_dir)
        return 1
    except Exception as exc:
        node.state = "failed"
        log.error("failed: %s", exc, exc_info=not isinstance(exc, ByzctlError))
        try:  # the monitor records the real cause, before or after this node joined
            node.report("done", {"state": "failed", "error": f"{type(exc).__name__}: {exc}"})
        except Exception:  # noqa: BLE001 - the monitor may be gone already
            pass
        return 1
    except SystemExit as exc:
        node.state = "stopped"
        if exc.code == 128 + signal.SIGTERM:
            log.info("stopped by SIGTERM (exit code %s)", exc.code)  # the line a failure reason quotes
        raise
    finally:
        if host is not None:
            host.batcher.leave(spec.id)
            host.adversary.leave(spec.id)
        node.close()


def _nodes(ids: list[int]) -> str:
    return f"node {ids[0]}" if len(ids) == 1 else f"nodes {ids}"


def _save_own_state(node: NodeRuntime, folder: str | None) -> None:
    """The coordinator is gone: keep this node's resumable state on its own disk."""
    from byzctl.launch.checkpoints import write_checkpoint

    if not node.welcomed:
        return
    completed, state = node.interrupt_states()[0]
    tensors = {k: v.clone() for k, v in state.items() if v is not None}  # (d,) each; params may alias prev_agg
    where = Path(folder or ".") / "checkpoints" / f"node{node.spec.id}"
    try:
        path = write_checkpoint(where, completed, {node.spec.id: (completed, tensors)}, keep=2)
    except OSError as exc:
        log.error("could not save this node's state under %s: %s", where, exc)
        return
    log.info("saved this node's state after round %d to %s", completed, path)
