"""A host process: one or many logical nodes of a run (packing, `processes=`).

Each logical node keeps everything that makes it a node (its sockets, round state,
its own log file `nodes/<id>.log`); it sets itself up and joins on its own thread,
then the host's one event loop serves it with the others (node/hostloop.py); the
process shares what a node does not need to own (node/cohost.py): the imported torch
and byzctl, one ZeroMQ context (one I/O thread, one CURVE authenticator), the loaded
data, batched honest gradients, one heartbeat message for all its nodes, and one
adversary for its omniscient Byzantine ps workers (one oracle view and one attack a
round for all of them). Nodes on the same host otherwise talk through their sockets
(ipc:// on one machine), so every message is validated the same way whether its
sender is co-hosted or not.

`host_main` is what the launcher's fork server runs in each child (launch/hosts.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import zmq

from byzctl.config.compose import load_resolved
from byzctl.config.experiment import Experiment
from byzctl.node import main as node_main
from byzctl.node.cohost import Adversary, Cohost, HostBeats
from byzctl.node.hostloop import HostLoop, turning
from byzctl.topology.base import NodeSpec, Role
from byzctl.transport import curve

log = logging.getLogger("byzctl.node")

SWITCH_INTERVAL_S = 0.0005
"""How long a thread may hold the GIL while another waits (Python's default is 5 ms):
a node whose message arrived must not wait 5 ms for a sibling's round to yield."""

LOG_FORMAT = "%(asctime)s %(levelname)s %(node)s: %(message)s"


@dataclass(frozen=True)
class HostArgs:
    """What a host process needs, sent (pickled, by our own launcher) to the fork server."""

    nodes: tuple[int, ...]
    control: str
    run_id: str
    resolved: str
    run_dir: str
    log_path: str
    launcher_pid: int


def host_main(args: HostArgs) -> None:
    """The child's entry: its own session (the launcher signals process groups), death
    with the fork server (which dies with the launcher), output to its log, then the nodes.
    Exits with 0 when every node exited 0, else 1 (143 on SIGTERM)."""
    os.setsid()
    _release_fork_server()
    node_main.die_with_parent()
    output_to(args.log_path)
    exp = Experiment.from_cfg(load_resolved(args.resolved, "--resolved"))
    if len(args.nodes) == 1:
        code = node_main.run_node(exp, args.nodes[0], args.control, args.run_id, run_dir=args.run_dir, launcher_pid=args.launcher_pid)
    else:
        try:
            code = run_host(exp, list(args.nodes), args.control, args.run_id, args.run_dir, args.launcher_pid)
        except SystemExit as exc:  # SIGTERM: the node threads still hold sockets; do not wait on them
            logging.shutdown()
            os._exit(exc.code if isinstance(exc.code, int) else 1)
    logging.shutdown()
    sys.exit(code)


def output_to(log_path: str) -> None:
    """This process's stdout and stderr into `log_path` (appended), stdin from /dev/null."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    for stream in (sys.stdout, sys.stderr):  # inherited streams: lines reach the log as written
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def _release_fork_server() -> None:
    """Close this child's copy of the fork server's "alive" pipe. multiprocessing hands
    every child one, so the server outlives the launcher while any child runs; then a
    killed launcher's hosts never get their parent-death signal (the server is their
    parent). Closed, the server exits with the launcher and its children follow."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]


_NODE_THREAD = re.compile(r"node(\d+)(?:_\d+)?$")


class _NodeLogs(logging.Handler):
    """Each node thread's records into that node's own log file; the host's own into
    the host log (stderr)."""

    def __init__(self, files: dict[int, Path]):
        super().__init__()
        self.streams = {i: open(p, "a", buffering=1) for i, p in files.items()}  # noqa: SIM115 - closed in close()
        self.host = logging.StreamHandler(sys.stderr)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.host.setFormatter(self.formatter)

    def emit(self, record: logging.LogRecord) -> None:
        node = turning()  # the host loop, in node 12's turn
        if node is None:
            match = _NODE_THREAD.match(threading.current_thread().name)  # node12, or its pool's node12_0
            node = int(match.group(1)) if match else None
        record.node = f"node{node}" if node is not None else "host"
        stream = self.streams.get(node) if node is not None else None
        if stream is None:
            self.host.emit(record)
            return
        try:
            stream.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never take a node down
            self.handleError(record)

    def close(self) -> None:
        for stream in self.streams.values():
            with contextlib.suppress(OSError):
                stream.close()
        super().close()


def run_host(exp: Experiment, node_ids: list[int], control: str, run_id: str, run_dir: str, launcher_pid: int) -> int:
    """Serve `node_ids` on one thread each, sharing one context; 0 when all exited 0."""
    files = {i: Path(run_dir) / "nodes" / f"{i}.log" for i in node_ids}
    logging.basicConfig(level=logging.INFO, handlers=[_NodeLogs(files)], force=True)
    node_main.handle_sigterm()
    torch.set_num_threads(exp.cfg.device.threads)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    specs = [node_main.spec_of(exp, i) for i in node_ids]
    ctx = zmq.Context()
    ring = exp.keyring
    auth = curve.start_authenticator(ctx, ring) if ring is not None else None
    codes: dict[int, int] = {}
    beats = HostBeats(ctx, min(node_ids), control, run_id, interval=exp.topology.heartbeat_interval, ring=ring)
    loop = HostLoop()
    shared = Cohost(ctx, adversary=Adversary([s.id for s in specs if s.byzantine and s.role is Role.worker]), beats=beats, loop=loop)

    def one(spec: NodeSpec) -> None:
        try:
            codes[spec.id] = node_main.serve_node(exp, spec, control, run_id, state_dir=run_dir, host=shared)
        except BaseException as exc:  # noqa: BLE001 - a thread's failure is this node's exit code
            log.error("failed: %s", exc, exc_info=not isinstance(exc, SystemExit))
            codes[spec.id] = 1

    threads = [threading.Thread(target=one, args=(spec,), name=f"node{spec.id}", daemon=True) for spec in specs]
    log.info("host of nodes %s (pid %d)", node_ids, os.getpid())
    try:
        beats.start()
        loop.start()
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except SystemExit as exc:
        if exc.code == 128 + signal.SIGTERM:
            log.info("stopped by SIGTERM (exit code %s): nodes %s stop with this process", exc.code,
                     [i for i in node_ids if i not in codes])
        raise
    finally:
        loop.stop()
        beats.stop()
        if auth is not None:
            auth.stop()
        node_main.orphaned(launcher_pid, run_dir, node_ids)
    ctx.destroy(linger=0)  # each node closed its sockets; the control ones flush their linger first
    failed = sorted(i for i, c in codes.items() if c)
    if failed:
        log.info("nodes %s exited non-zero", failed)
    return 1 if failed else 0
