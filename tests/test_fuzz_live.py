"""Hostile input against a live run: >= 10,000 generated messages at the server's data socket.

A real `ps` run trains; raw DEALER sockets connect to the server's ROUTER, under random
ids, the server's own and one it does not have, and send what hypothesis generates
(tests/test_wire_fuzz.py's strategies plus look-alikes of this run's real vectors), each
message also sent as a few cheap byte-level variants. One more dials under an honest
worker's routing id (b"n2"): it once took that id over (ROUTER_HANDOVER) and got its
messages past the routing-id check; now the server refuses the second connection and
sends it nothing. Then: the server is alive, training goes on, its memory stayed bounded
(declared sizes are never allocated), its log counted every drop in a few lines, and
Ctrl-C still stops the run cleanly.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from conftest import read
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_hostile_live import _counted_drops
from test_wire_fuzz import JUNK, hostile

from byzctl.procs import pid_alive
from byzctl.transport.wire import FRAME_BYTES, KINDS, PROTOCOL_VERSION

RUN = ["rounds=100000", "eval_every=5", "model.hidden=[16]", "topology.join_timeout=120", "topology.quorum_deadline=0.5"]
TARGET = 10_000
VARIANTS = 4
"""Byte-level variants sent after each generated message (generation is the slow part)."""
SEND_BUDGET_S = 150.0
RSS_SLACK = 300 * 2**20
HIJACKED = b"n2"


class ServerDied(AssertionError):
    """The server process exited while being fuzzed."""


class KnownDecodeCrash(ServerDied):
    """The server died of a known decode bug (see the xfail reason)."""


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _rows(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def _last_round(out: Path) -> int:
    return max((int(r["round"]) for r in _rows(out) if r.get("role") == "server"), default=0)


def _start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp_path / "run"
    log = open(tmp_path / "launcher.out", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "byzctl", "run", *RUN, f"hydra.run.dir={out}"], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if _last_round(out) > 0:
            return proc, out
        assert proc.poll() is None, (tmp_path / "launcher.out").read_text()
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("run did not start training in time")


# -- what is sent ----------------------------------------------------------------------
@st.composite
def lookalike(draw: st.DrawFn, run_id: str, d: int, now: int, config_hash: str) -> list[bytes]:
    """Headers like this run's real messages, each wrong somewhere: shape, dtype, sender,
    run id, round (stale or future), byte count, or a declared size far over what is sent."""
    kind = draw(st.sampled_from(["vector"] * 6 + sorted(KINDS)))
    run = draw(st.sampled_from([run_id] * 4 + ["", run_id[:-1], run_id + "0", "0" * len(run_id)]))
    sender = draw(st.sampled_from([2, 2, 2, 0, 1, 3, 4, 5, 6, 99, -1, 2**40]))
    rnd = draw(st.one_of(st.just(now), st.integers(now - 10**6, now - 1000), st.integers(now + 10**6, now + 10**9),
                         st.sampled_from([0, -1, 2**40])))
    dtype = draw(st.sampled_from(["float32"] * 4 + ["float64", "float16", "bfloat16", "int32", "int64", "uint8", "bool"]))
    shape = draw(st.sampled_from([[d]] * 4 + [[d - 1], [d + 1], [1, d], [d, 1], [0], [], [2, d // 2], [2 * d],
                                  [2**28], [2**30], [2**20, 2**20], [2**39, 0, 2**39]]))
    count = draw(st.sampled_from([1, 1, 1, 0, 2]))
    item = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int32": 4, "int64": 8, "uint8": 1, "bool": 1}[dtype]
    numel = 1
    for s in shape:
        numel *= s
    size = numel * item
    how = draw(st.sampled_from(["exact"] * 4 + ["short", "long", "split", "missing", "empty"]))
    exact = size <= 4 * d * 8 and how == "exact"
    if kind == "vector" and run == run_id and dtype == "float32" and shape == [d] and count == 1 and exact and sender == 2:
        rnd = now - 10**6  # never a vector the server would take: this one is stale
    meta: dict[str, Any] = {}
    if kind == "hello":
        meta = {"hash": draw(st.sampled_from([config_hash + "0", "", None, [config_hash], config_hash.upper()]))}
    elif kind in ("heartbeat", "metric", "done"):
        meta = draw(st.dictionaries(st.sampled_from(["loss", "state", "round", "test_accuracy", "dropped"]), st.sampled_from(JUNK), max_size=3))
    header = {"v": PROTOCOL_VERSION, "k": kind, "run": run, "r": rnd, "s": sender, "t": [[dtype, shape, 1]] * count, "m": meta}
    fill = draw(st.binary(min_size=1, max_size=8))
    payload = (fill * (min(size, 4 * d * 8) // len(fill) + 1))[: min(size, 4 * d * 8)]
    frames = [msgpack.packb(header, use_bin_type=True)]
    for _ in range(count):
        if how == "short":
            frames.append(payload[: len(payload) // 2])
        elif how == "long":
            frames.append(payload + fill)
        elif how == "split":
            frames += [payload[: len(payload) // 2], payload[len(payload) // 2 :]]
        elif how == "empty":
            frames.append(b"")
        elif how == "exact":
            frames.append(payload)
    return frames


def variants(frames: list[bytes], rng: random.Random, k: int) -> list[list[bytes]]:
    """`frames` and k byte-level variants: cut or flipped bytes, dropped, doubled or empty
    frames, a header field swapped for a wrong value."""
    out = [frames or [b""]]
    for _ in range(k):
        f = list(frames) or [b""]
        op = rng.randrange(7)
        i = rng.randrange(len(f))
        if op == 0:
            f[i] = f[i][: rng.randrange(len(f[i]) + 1)]
        elif op == 1 and f[i]:
            j = rng.randrange(len(f[i]))
            f[i] = f[i][:j] + bytes([f[i][j] ^ rng.randrange(1, 256)]) + f[i][j + 1 :]
        elif op == 2 and len(f) > 1:
            del f[i]
        elif op == 3:
            f.insert(i, f[i])
        elif op == 4:
            f.insert(rng.randrange(len(f) + 1), b"")
        elif op == 5:
            f[i] += bytes(rng.randrange(1, 64))
        else:
            try:
                h = msgpack.unpackb(f[0], raw=False)
            except Exception:  # noqa: BLE001 - not a header: flip a byte instead
                h = None
            if isinstance(h, dict) and h:
                h[rng.choice(sorted(map(str, h)))] = rng.choice(JUNK)
                f[0] = msgpack.packb(h, use_bin_type=True)
            else:
                f[0] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        out.append(f)
    return out


def _header(**over: Any) -> bytes:
    h = {"v": PROTOCOL_VERSION, "k": "vector", "run": "x", "r": 0, "s": 2, "t": [], "m": {}}
    h.update(over)
    return msgpack.packb(h, use_bin_type=True)


KNOWN_CRASHES = [
    [_header(k=["vector"])],
    [_header(t=[[["float32"], [4], 1]]), bytes(16)],
    [_header(t=[["float32", [0] + [2**40 - 1] * 7, 1]]), b""],
]
"""Messages that killed a node when written (see the xfail reasons in test_wire_fuzz.py)."""


def _known_crash(log: str) -> bool:
    """The server's log ends with one of the decode bugs the xfail reason names."""
    return "unhashable type" in log or "overflowed" in log


# -- the test ----------------------------------------------------------------------------
def test_live_server_survives_10000_hostile_messages(tmp_path):
    proc, out = _start(tmp_path)
    ctx = zmq.Context()
    socks: list[zmq.Socket] = []
    sent = 0
    death: list[ServerDied] = []
    try:
        info = read(out / "run.json")
        server = int(info["pids"]["0"])
        server_log = out / "nodes" / "0.log"
        found = re.search(r"data endpoint (\S+)", server_log.read_text())
        assert found, "the server did not log its data endpoint"
        endpoint = found.group(1)

        def open_dealer(ident: bytes) -> zmq.Socket:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.IDENTITY, ident)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 1000)
            s.connect(endpoint)
            socks.append(s)
            return s

        hijack = open_dealer(HIJACKED)
        ids = random.Random(6)
        for _ in range(10):
            open_dealer(bytes([ids.randrange(1, 256)]) + ids.randbytes(ids.randrange(0, 32)))
        open_dealer(b"n0")  # the server's own node id
        open_dealer(b"n99")  # a node id this run does not have

        # The routing id of a live worker cannot be taken over: nothing reaches the impostor.
        assert not hijack.poll(10_000), "the server sent to a second connection under worker 2's routing id b'n2'"
        d, now = _parameters(), _last_round(out)
        messages = st.one_of(hostile, lookalike(info["run_id"], d, now, info["config_hash"]))
        pick = st.sampled_from(range(1, len(socks)))  # the impostor's connection is refused: it sends nothing

        rss0 = peak = _rss(server)
        received = 0
        t0 = time.monotonic()

        def drain() -> None:
            nonlocal received
            for s in socks:
                while s.poll(0):
                    s.recv_multipart(zmq.NOBLOCK)
                    received += 1

        def deliver(sock: zmq.Socket, frames: list[bytes]) -> None:
            nonlocal sent, peak
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:  # the server reads slower than we write: wait for room once
                if not sock.poll(10_000, zmq.POLLOUT):
                    check()
                    return
                sock.send_multipart(frames, zmq.NOBLOCK)
            sent += 1
            if sent % 250 == 0:
                drain()
                check()

        def check() -> None:
            nonlocal peak
            if not death and not pid_alive(server):
                tail = server_log.read_text()[-3000:]
                death.append((KnownDecodeCrash if _known_crash(tail) else ServerDied)(f"server died after {sent} messages:\n{tail}"))
            if death:
                raise death[0]
            peak = max(peak, _rss(server))

        @settings(max_examples=400, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(batch=st.lists(st.tuples(pick, messages), min_size=5, max_size=5), seed=st.integers(0, 2**32 - 1))
        def fuzz(batch: list[tuple[int, list[bytes]]], seed: int) -> None:
            if death:  # hypothesis replays a failing example: fail the same way
                raise death[0]
            if sent >= TARGET or time.monotonic() - t0 > SEND_BUDGET_S:
                return
            rng = random.Random(seed)
            for index, frames in batch:
                for variant in variants(frames, rng, VARIANTS):
                    deliver(socks[index], variant)

        while sent < TARGET and time.monotonic() - t0 < SEND_BUDGET_S:
            fuzz()
        # The known decode crashes, every time (the generated stream finds them only by chance).
        for frames in KNOWN_CRASHES:
            deliver(socks[1], frames)
        time.sleep(1)
        check()
        # Real bytes behind the declared sizes: one frame over the socket's MAXMSGSIZE
        # (libzmq drops the connection unread) and a few tensors the decoder accepts.
        big = [msgpack.packb({"v": 1, "k": "vector", "run": "x", "r": 0, "s": 2, "t": [["float32", [(FRAME_BYTES + 2**20) // 4], 1]], "m": {}}),
               bytes(FRAME_BYTES + 2**20)]
        deliver(socks[2], big)
        del big
        for _ in range(3):
            deliver(socks[1], [msgpack.packb({"v": 1, "k": "vector", "run": info["run_id"], "r": now - 10**6, "s": 2,
                                            "t": [["float32", [4 * 2**20], 1]], "m": {}}), bytes(16 * 2**20)])
        seconds = time.monotonic() - t0
        print(f"fuzzed {sent} messages in {seconds:.1f}s ({received} replies drained); server RSS {rss0 / 2**20:.0f} -> peak {peak / 2**20:.0f} MiB")
        time.sleep(2)
        drain()
        check()
        assert sent >= TARGET, f"only {sent} messages sent in {seconds:.0f}s"
        assert peak <= rss0 + RSS_SLACK, f"server RSS grew from {rss0 / 2**20:.0f} to {peak / 2**20:.0f} MiB"

        text = server_log.read_text()
        assert _counted_drops(text) >= 1000, "the fuzzed messages did not reach the server's decoder"
        drop_lines = [line for line in text.splitlines() if " dropped " in line]
        assert len(drop_lines) < 300, f"{sent} hostile messages took {len(drop_lines)} lines of the server's log"
        assert "Traceback" not in text and " ERROR " not in text

        # Training goes on: a new evaluation row after the fuzzing.
        r_end, deadline = _last_round(out), time.monotonic() + 120
        while _last_round(out) <= r_end:
            assert time.monotonic() < deadline, f"no new metrics row after fuzzing (last round {r_end})"
            assert proc.poll() is None, (tmp_path / "launcher.out").read_text()
            check()
            time.sleep(0.5)
        assert read(out / "run.json")["state"] == "RUNNING"

        for s in socks:
            s.close(linger=0)
        socks.clear()
        pids = [int(p) for p in info["pids"].values()]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 130, (tmp_path / "launcher.out").read_text()
        assert read(out / "run.json")["state"] == "INTERRUPTED"
        assert not [p for p in pids if pid_alive(p)]
    finally:
        for s in socks:
            s.close(linger=0)
        ctx.destroy(linger=0)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for p in map(int, (read(out / "run.json").get("pids") or {}).values()) if (out / "run.json").exists() else []:
            if pid_alive(p):
                os.kill(p, signal.SIGKILL)


def _parameters() -> int:
    """d, the parameters of this test's model (RUN's mlp on the bundled 28x28 digits)."""
    from byzctl.config.compose import compose
    from byzctl.config.experiment import Experiment
    from byzctl.learning import flat_params, make_model

    exp = Experiment.from_cfg(compose(["model.hidden=[16]"]))
    return int(flat_params(make_model(exp.model, (1, 28, 28), 10, seed=0, device=exp.device)).numel())


# -- the monitor (the launcher's control socket), in process ------------------------------
@pytest.fixture(scope="module")
def experiment():
    from byzctl.config.compose import compose
    from byzctl.config.experiment import Experiment

    return Experiment.from_cfg(compose(["model.hidden=[16]"]))


def _control(kind: str, **meta: Any) -> list[bytes]:
    run = "" if kind == "hello" else "runid"
    return [msgpack.packb({"v": PROTOCOL_VERSION, "k": kind, "run": run, "r": 1, "s": 1, "t": [], "m": meta}, use_bin_type=True)]


@pytest.mark.parametrize("frames", [
    pytest.param([b"\x00garbage", b"x"], id="garbage"),
    pytest.param(_control("heartbeat", loss=0.5, state=["x"]), id="heartbeat state list"),
    pytest.param(_control("metric", round=10**9, test_loss=1.0), id="metric far round"),
    pytest.param(_control("done", test_accuracy=None), id="done without figures"),
    pytest.param([_header(k=["hello"])], id="unhashable kind"),
    pytest.param(_control("heartbeat", loss="abc"), id="heartbeat loss str"),
    pytest.param(_control("state", round="x"), id="state round str"),
    pytest.param(_control("metric", round=1, test_accuracy="x"), id="metric accuracy str"),
])
def test_the_monitor_survives_hostile_control_messages(tmp_path, experiment, frames):
    """A node of the run (routing id b"n1", right config hash) sends one hostile control
    message; the monitor must drop it and keep working (nodes may be Byzantine)."""
    from rich.console import Console

    from byzctl.launch.monitor import Monitor
    from byzctl.launch.rundir import RunDir

    mon = Monitor(experiment, "runid", RunDir(tmp_path))
    ctx = zmq.Context()
    node = ctx.socket(zmq.DEALER)
    node.setsockopt(zmq.IDENTITY, b"n1")
    node.setsockopt(zmq.LINGER, 0)
    try:
        node.connect(mon.endpoint)
        node.send_multipart(_control("hello", hash=experiment.hash, endpoints={}))
        deadline = time.monotonic() + 10
        while not mon.nodes[1].joined:
            assert time.monotonic() < deadline
            mon.poll(50)
        node.send_multipart(frames)
        node.send_multipart(_control("heartbeat", loss=0.25, state="alive"))
        deadline = time.monotonic() + 10
        while mon.nodes[1].train_loss != 0.25:
            assert time.monotonic() < deadline, "the monitor stopped handling node 1's heartbeats"
            mon.poll(50)
        Console(file=open(os.devnull, "w")).print(mon.table("t"))
        assert mon.nodes[1].state == "alive"
    finally:
        node.close(linger=0)
        ctx.destroy(linger=0)
        mon.close()


def test_the_monitor_survives_a_hello_with_bad_endpoints(tmp_path, experiment):
    from byzctl.launch.monitor import Monitor
    from byzctl.launch.rundir import RunDir

    mon = Monitor(experiment, "runid", RunDir(tmp_path))
    ctx = zmq.Context()
    node = ctx.socket(zmq.DEALER)
    node.setsockopt(zmq.IDENTITY, b"n1")
    node.setsockopt(zmq.LINGER, 0)
    try:
        node.connect(mon.endpoint)
        node.send_multipart(_control("hello", hash=experiment.hash, endpoints=5))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            mon.poll(50)
        assert not mon.nodes[1].joined
    finally:
        node.close(linger=0)
        ctx.destroy(linger=0)
        mon.close()
