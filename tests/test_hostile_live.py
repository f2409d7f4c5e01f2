"""Hostile traffic against live runs (separate node processes on this machine).

- a hello flood that never reads the replies must not take the ps server down;
- the sequence that made libzmq abort the ps server (`Assertion failed: !_io_error
  (src/stream_engine_base.cpp:310)`), and its minimal trigger, replayed: a connection
  that floods until the server's receive queue is full, with ZMTP PINGs among its
  messages, then resets; the server must live on and finish the run;
- 1,000 random-byte messages must cost a node's log a few bounded lines;
- forged control messages (`done`, `metric`) and a routing id taken from a worker must
  not land.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from conftest import read

from byzctl.procs import pid_alive
from byzctl.transport.wire import PROTOCOL_VERSION

BASE = ["model.hidden=[16]", "topology.join_timeout=120"]


# -- a live run ---------------------------------------------------------------------------


def _rows(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


class Live:
    """`byzctl run` in a subprocess, with the endpoints its nodes logged."""

    def __init__(self, tmp_path: Path, *overrides: str):
        self.out = tmp_path / "run"
        self.launcher_log = tmp_path / "launcher.out"
        with open(self.launcher_log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "byzctl", "run", *BASE, *overrides, f"hydra.run.dir={self.out}"],
                                         cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)

    def wait_rows(self, timeout: float = 240) -> None:
        """Until the first evaluation row: every node joined and training runs."""
        deadline = time.monotonic() + timeout
        while not any("test_accuracy" in r for r in _rows(self.out)):
            assert time.monotonic() < deadline, "the run did not start training in time"
            assert self.proc.poll() is None, self.launcher_log.read_text()
            time.sleep(0.3)

    @property
    def info(self) -> dict[str, Any]:
        return read(self.out / "run.json")

    def pid(self, node: int) -> int:
        return int(self.info["pids"][str(node)])

    def log(self, node: int) -> Path:
        return self.out / "nodes" / f"{node}.log"

    def endpoint(self, node: int, what: str) -> str:
        found = re.search(rf"{what} endpoint (\S+)", self.log(node).read_text())
        assert found, f"node {node} did not log its {what} endpoint"
        return found.group(1)

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"the run did not end in {timeout}s:\n{self.launcher_log.read_text()[-3000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        pids = (read(self.out / "run.json").get("pids") or {}) if (self.out / "run.json").exists() else {}
        for p in map(int, pids.values()):
            if pid_alive(p):
                os.kill(p, signal.SIGKILL)

    def completed(self) -> dict[str, Any]:
        """The run ended COMPLETED with exit 0 and no node lost; its summary."""
        code = self.wait()
        info = self.info
        assert code == 0 and info["state"] == "COMPLETED", f"{info['state']}: {info.get('reason')}\n{self.launcher_log.read_text()[-3000:]}"
        summary = read(self.out / "summary.json")
        assert summary["nodes_lost"] == 0, summary
        return summary


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _dealer(ctx: zmq.Context, endpoint: str, ident: bytes | None = None) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)  # queue the whole flood here: the server decides how fast it reads
    if ident is not None:
        s.setsockopt(zmq.IDENTITY, ident)
    s.connect(endpoint)
    return s


def _msg(kind: str, run: str, sender: int, rnd: int = 0, **meta: Any) -> list[bytes]:
    return [msgpack.packb({"v": PROTOCOL_VERSION, "k": kind, "run": run, "r": rnd, "s": sender, "t": [], "m": meta}, use_bin_type=True)]


# -- 11. a hello flood ------------------------------------------------------------------------
def test_a_hello_flood_that_never_reads_the_replies_leaves_the_server_running(tmp_path, ctx):
    """3,000 well-formed hellos claiming worker ids, from one connection that never reads:
    the refusals used to be sent blocking, the server stopped at the fifth one, missed its
    heartbeats and was declared lost after 15 s. Now the run completes."""
    run = Live(tmp_path, "rounds=300", "eval_every=50")
    try:
        run.wait_rows()
        info = run.info
        flood = _dealer(ctx, run.endpoint(0, "data"))
        for i in range(3000):
            claimed = 1 + i % 5
            digest = info["config_hash"] if i % 2 else info["config_hash"][::-1]
            flood.send_multipart(_msg("hello", info["run_id"], claimed, hash=digest))
        summary = run.completed()
        assert summary["rounds_completed"] == 300
        text = run.log(0).read_text()
        assert "(refused hello)" in text
        assert len(text.splitlines()) < 200, "3,000 refused hellos flooded the server's log"
    finally:
        run.stop()


@pytest.mark.slow
def test_under_curve_a_hello_flood_from_an_allow_listed_key_leaves_the_server_running(tmp_path, ctx):
    """The same flood from the Byzantine worker's own CURVE key (allow-listed): hellos as
    itself are welcomed, hellos as others refused at receive; none may stall the server."""
    from byzctl.transport import curve
    from byzctl.transport.keys import main as keys_main

    keys = tmp_path / "keys"
    assert keys_main(["gen", str(keys), "--nodes", "6"]) == 0
    run = Live(tmp_path, "security=curve", f"security.keys={keys}", "rounds=150", "eval_every=50",
               "topology.quorum_deadline=0.2")
    try:
        run.wait_rows()
        info = run.info
        flood = ctx.socket(zmq.DEALER)
        flood.setsockopt(zmq.LINGER, 0)
        flood.setsockopt(zmq.SNDHWM, 0)
        curve.secure_client(flood, curve.Keyring(keys), 5, 0)  # node 5: the Byzantine worker
        flood.connect(run.endpoint(0, "data"))
        for i in range(3000):
            flood.send_multipart(_msg("hello", info["run_id"], 1 + i % 5, hash=info["config_hash"]))
        summary = run.completed()
        assert summary["rounds_completed"] == 150
        assert len(run.log(0).read_text().splitlines()) < 200, "3,000 hellos flooded the server's log"
    finally:
        run.stop()


# -- 14. the libzmq abort -----------------------------------------------------------------------
def _zmtp_frame(body: bytes, *, command: bool = False) -> bytes:
    flags = 0x04 if command else 0x00
    if len(body) > 255:
        return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def _raw_zmtp(endpoint: str) -> socket.socket:
    """A plain socket speaking ZMTP 3.0 (NULL mechanism) as a DEALER: what any client
    can send, ZMTP commands included, without libzmq's manners."""
    scheme, _, where = endpoint.partition("://")
    if scheme == "ipc":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(where)
    else:
        host, port = where.rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
    s.sendall(b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31))
    props = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER" + b"\x08Identity" + struct.pack(">I", 0)
    s.sendall(_zmtp_frame(b"\x05READY" + props, command=True))
    time.sleep(0.3)  # libzmq drops an ipc connection that floods before its handshake is through
    return s


def _reset(s: socket.socket) -> None:
    if s.family == socket.AF_INET:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
    s.close()  # unread bytes (the server's greeting) make the kernel reset the connection too


def abort_trigger(endpoint: str, messages: int = 3000) -> None:
    """The minimal trigger of libzmq 4.3.5's `!_io_error` abort: flood until the server's
    receive queue is full (its engine stops reading), with a ZMTP PING after each message,
    then reset the connection. The stopped engine sees the hang-up, marks an I/O error,
    and the next write it attempts (the PONG, or its own heartbeat) asserts."""
    s = _raw_zmtp(endpoint)
    ping = _zmtp_frame(b"\x04PING" + struct.pack(">H", 0) + b"ctx", command=True)
    try:
        s.sendall(b"".join(_zmtp_frame(b"x" * 100) + ping for _ in range(messages)))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server dropped this connection (or died: the caller checks)
    _reset(s)  # at once, while the server is still reading the flood


def fuzz_sequence(run_id: str, config_hash: str, d: int, rnd: int, seed: int = 14) -> list[list[bytes]]:
    """The live fuzz of issue 17 point 14, in its order: random bytes, malformed headers,
    huge shapes, wrong dtypes, extra and many frames, header bombs, wrong run ids,
    replays, other ids, then hellos with a wrong hash."""
    rng = random.Random(seed)

    def head(**over: Any) -> bytes:
        h = {"v": PROTOCOL_VERSION, "k": "vector", "run": run_id, "r": rnd, "s": 2, "t": [["float32", [d], 1]], "m": {}}
        h.update(over)
        return msgpack.packb(h, use_bin_type=True)

    vec = bytes(4 * d)
    seq: list[list[bytes]] = [[rng.randbytes(rng.randrange(1, 256))] for _ in range(1000)]
    seq += [[rng.randbytes(40)[: rng.randrange(1, 40)] + head()[5:], vec] for _ in range(200)]
    seq += [[head(t=[["float32", [2**30], 1]]), vec], [head(t=[["float32", [2**39, 2**39], 1]]), vec]] * 100
    seq += [[head(t=[[dt, [d], 1]]), vec] for dt in ("float64", "int8", "object", "", "complex64") for _ in range(40)]
    seq += [[head(), vec, vec], [head(), *[b"x"] * 64], [head(t=[])] + [b""] * 200] * 50
    seq += [[msgpack.packb({"v": 1, "k": "vector", "m": {str(i): "x" * 4000 for i in range(15)}})]] * 100
    seq += [[head(run=run_id[::-1]), vec], [head(run=""), vec]] * 100
    seq += [[head(r=rnd - 1), vec], [head(r=rnd + 10**6), vec]] * 100
    seq += [[head(s=s), vec] for s in (0, 1, 3, 4, 5, 99, -1) for _ in range(20)]
    seq += [_msg("hello", run_id, 1 + i % 5, hash=config_hash[::-1]) for i in range(500)]
    return seq


def test_the_fuzz_sequence_and_the_libzmq_abort_trigger_do_not_kill_the_server(tmp_path, ctx):
    """Issue 17 point 14: the ps server died in libzmq (exit -6) under a live fuzz. Replay
    that sequence from one DEALER that never reads and then disconnects, then the minimal
    trigger a few times; the server must stay up and finish the run."""
    run = Live(tmp_path, "rounds=3000", "eval_every=500")  # outlasts the fuzz replay and the triggers
    try:
        run.wait_rows()
        info, server = run.info, run.pid(0)
        endpoint = run.endpoint(0, "data")
        rnd = max(int(r.get("round", 0)) for r in _rows(run.out))
        sender = _dealer(ctx, endpoint)
        for frames in fuzz_sequence(info["run_id"], info["config_hash"], 12730, rnd):
            sender.send_multipart(frames)
        time.sleep(1.0)
        sender.close(linger=0)  # disconnect with the refusals still unread
        for _ in range(8):
            abort_trigger(endpoint)
            assert pid_alive(server), run.log(0).read_text()[-2000:]
        run.completed()
        assert "Assertion failed" not in run.log(0).read_text()
    finally:
        run.stop()


# -- 18. dropped messages in bounded lines ----------------------------------------------------------
def _random_messages(n: int, seed: int = 18) -> list[list[bytes]]:
    """n messages of random bytes: 1 to 3 frames, some frames up to 190 KB (a relay used to
    print a raw destination frame: lines of 189,263 characters)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        frames = [rng.randbytes(rng.randrange(1, 64)) for _ in range(rng.randrange(1, 4))]
        if i % 50 == 0:
            frames[0] = rng.randbytes(190_000)
        out.append(frames)
    return out


@pytest.mark.parametrize("topology,node,what", [
    pytest.param("hub", 5, "relay", id="hub relay"),
    pytest.param("ps", 0, "data", id="ps server"),
    pytest.param("mesh", 0, "inbox", id="mesh peer"),
])
def test_random_bytes_cost_a_few_bounded_log_lines(tmp_path, ctx, topology, node, what):
    run = Live(tmp_path, f"topology={topology}", "rounds=100000", "eval_every=100000", "topology.round_timeout=5")
    try:
        deadline = time.monotonic() + 240
        while not (run.out / "run.json").exists() or not re.search(rf"{what} endpoint", run.log(node).read_text() if run.log(node).exists() else ""):
            assert time.monotonic() < deadline and run.proc.poll() is None, run.launcher_log.read_text()
            time.sleep(0.3)
        endpoint = run.endpoint(node, what)
        time.sleep(3)  # let the run's own start-up lines land first
        log = run.log(node)
        before = log.stat().st_size
        s = _dealer(ctx, endpoint)
        for frames in _random_messages(1000):
            s.send_multipart(frames)
        time.sleep(8)  # the rate limiter's summary lines come every 5 s
        assert pid_alive(run.pid(node))
        grown = log.read_bytes()[before:].decode("utf-8", "replace")
        lines = grown.splitlines()
        print(f"{topology}: +{len(grown)} bytes, {len(lines)} lines, longest {max(map(len, lines), default=0)}")
        assert len(grown) < 20_000, f"1,000 random messages grew node {node}'s log by {len(grown)} bytes:\n{grown[:3000]}"
        assert max(map(len, lines), default=0) <= 400
        assert _counted_drops(grown) >= 1000, grown[:3000]
    finally:
        run.stop()


def _counted_drops(text: str) -> int:
    """Drops a DropLog's lines account for: one per first line, N per 'dropped N more'."""
    firsts = len(re.findall(r"dropped a message from", text))
    repeats = sum(int(n) for n in re.findall(r"dropped (\d+) more messages", text))
    return firsts + repeats


# -- 19. the control plane -------------------------------------------------------------------------
def test_forged_reports_and_a_taken_routing_id_do_not_land(tmp_path, ctx):
    """A forged `done` for node 0 (accuracy 1.0 after 3000 rounds) and a forged metric row
    (round 777777) sent to the monitor, under node 0's routing id and under another; a rogue
    DEALER with worker 1's routing id at the server. None of it may land, and the run must
    end with the server's own figures."""
    run = Live(tmp_path, "rounds=200", "eval_every=20")
    try:
        run.wait_rows()
        info = run.info
        control, data = info["control"], run.endpoint(0, "data")
        forged_done = _msg("done", info["run_id"], 0, 3000, state="done", rounds_completed=3000, test_accuracy=1.0, test_loss=0.0)
        forged_row = _msg("metric", info["run_id"], 0, 777777, round=777777, test_accuracy=1.0, test_loss=0.0)
        impostors = [_dealer(ctx, control, b"n0"), _dealer(ctx, control, b"n9"), _dealer(ctx, control)]
        for s in impostors:
            s.send_multipart(forged_row)
            s.send_multipart(forged_done)
        rogue = _dealer(ctx, data, b"n1")
        rogue.send_multipart(_msg("hello", info["run_id"], 1, hash=info["config_hash"]))
        got = rogue.poll(8000)
        summary = run.completed()
        assert not got, "the server sent to the rogue connection with worker 1's routing id"
        rows = _rows(run.out)
        assert not [r for r in rows if r.get("round") == 777777], "a forged metric row landed in metrics.jsonl"
        last = max((r for r in rows if r.get("role") == "server" and "test_accuracy" in r), key=lambda r: r["round"])
        assert last["round"] == 200 and summary["rounds_completed"] == 200, (summary, last)
        assert summary["test_accuracy"] == pytest.approx(last["test_accuracy"]), (summary, last)
        assert summary["monitor_dropped"] >= 2, "the monitor did not see (and drop) the forged reports"
        # On one machine, other users cannot even connect: unix sockets in private directories.
        for endpoint in (control, data):
            assert endpoint.startswith("ipc://"), f"a one-machine run listens on {endpoint}"
            assert os.stat(Path(endpoint[len("ipc://"):]).parent).st_mode & 0o077 == 0, f"{endpoint}'s directory is not private"
    finally:
        run.stop()


def test_on_ipc_the_monitor_hears_a_node_only_from_the_process_started_for_it(tmp_path):
    """The kernel names the process behind an ipc:// connection: a hello for node 1 from
    any other process than the one the launcher started as node 1 is dropped."""
    from byzctl.config.compose import compose
    from byzctl.config.experiment import Experiment
    from byzctl.launch.monitor import Monitor
    from byzctl.launch.rundir import RunDir
    from byzctl.transport.sockets import private_ipc_dir

    exp = Experiment.from_cfg(compose(["model.hidden=[16]"]))
    for owner, joins in ((os.getpid() + 1, False), (os.getpid(), True)):
        mon = Monitor(exp, "runid", RunDir(tmp_path), bind=f"ipc://{private_ipc_dir()}/monitor")
        mon.pids = {1: owner}
        ctx = zmq.Context()
        try:
            node = _dealer(ctx, mon.endpoint, b"n1")
            node.send_multipart(_msg("hello", "", 1, hash=exp.hash, endpoints={}))
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not mon.nodes[1].joined:
                mon.poll(50)
            assert mon.nodes[1].joined is joins, (owner, os.getpid())
            assert mon.dropped == (0 if joins else 1)
        finally:
            ctx.destroy(linger=0)
            mon.close()


def test_a_host_process_beats_for_its_own_nodes_only(tmp_path):
    """A host process of many nodes sends one `heartbeats` for them under its leader's
    routing id (node/cohost.py). The monitor takes the beats of that host's nodes, drops a
    beat for a node of another host or from a node that leads no host, and beats the host
    once for all its nodes."""
    from byzctl.config.compose import compose
    from byzctl.config.experiment import Experiment
    from byzctl.launch.monitor import Monitor
    from byzctl.launch.rundir import RunDir
    from byzctl.node.cohost import host_identity
    from byzctl.transport.sockets import private_ipc_dir
    from byzctl.transport.wire import decode

    exp = Experiment.from_cfg(compose(["model.hidden=[16]"]))  # ps: server 0, workers 1-5
    mon = Monitor(exp, "runid", RunDir(tmp_path), bind=f"ipc://{private_ipc_dir()}/monitor")
    mon.pids = {i: os.getpid() for i in range(6)}
    mon.hosts = {1: frozenset({1, 2, 3}), 4: frozenset({4, 5})}
    ctx = zmq.Context()
    try:
        nodes = [_dealer(ctx, mon.endpoint, b"n%d" % i) for i in range(6)]  # kept: a closed socket drops its queue
        for i, node in enumerate(nodes):
            node.send_multipart(_msg("hello", "", i, hash=exp.hash, endpoints={}))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(s.joined for s in mon.nodes.values()):
            mon.poll(50)
        assert mon.welcomed
        before = {i: s.last_seen for i, s in mon.nodes.items()}
        host = _dealer(ctx, mon.endpoint, host_identity(1))
        host.send_multipart(_msg("heartbeats", "runid", 1, nodes=[[1, 7, "running", 0.25], [2, 7, "running", 0.5], [5, 9, "running", 0.0]]))
        others = [_dealer(ctx, mon.endpoint, host_identity(2)), _dealer(ctx, mon.endpoint, host_identity(4))]
        others[0].send_multipart(_msg("heartbeats", "runid", 2, nodes=[[2, 8, "running", 0.0]]))
        others[1].send_multipart(_msg("heartbeats", "runid", 1, nodes=[[4, 8, "running", 0.0]]))  # as host 1, on host 4's id
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and mon.dropped < 3:
            mon.poll(50)
        assert mon.nodes[1].round == 7 and mon.nodes[1].train_loss == 0.25 and mon.nodes[1].last_seen > before[1]
        assert mon.nodes[2].round == 7 and mon.nodes[2].last_seen > before[2]
        assert mon.nodes[5].round == 0 and mon.nodes[5].last_seen == before[5], "a beat for another host's node counted"
        assert mon.nodes[4].round == 0, "a beat under another host's routing id counted"
        assert mon.dropped == 3  # node 5 (not of host 1), host 2 (leads no host), host 1 on h4's id
        assert set(mon.host_routes) == {1}
        mon.beat(time.monotonic() + 60)
        assert host.poll(5000), "the monitor did not beat the host"
        assert decode(host.recv_multipart(), max_bytes=1 << 16).kind == "heartbeat"
    finally:
        ctx.destroy(linger=0)
        mon.close()
