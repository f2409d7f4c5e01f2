"""CURVE end to end: allow-listed nodes train; strangers, plaintext and impostors are refused."""

from __future__ import annotations

import time

import pytest
import zmq
from conftest import read
from test_e2e_ps import _start

from byzctl.transport import curve
from byzctl.transport.keys import main as keys_main
from byzctl.transport.wire import Message, encode


@pytest.fixture
def keys(tmp_path):
    assert keys_main(["gen", str(tmp_path / "keys"), "--nodes", "6"]) == 0
    other = tmp_path / "stranger"
    assert keys_main(["gen", str(other), "--nodes", "6"]) == 0
    return tmp_path / "keys", other


def _hello(sender: int) -> list:
    return encode(Message(kind="hello", sender=sender, meta={"role": "worker", "hash": "x", "endpoints": {}}))


def test_curve_run_trains_and_refuses_strangers_plaintext_and_impostors(tmp_path, keys):
    mine, stranger = keys
    proc, out = _start(tmp_path, "security=curve", f"security.keys={mine}", "rounds=80")
    control = read(out / "run.json")["control"]
    ctx = zmq.Context()
    socks = []
    try:
        ring, other = curve.Keyring(mine), curve.Keyring(stranger)
        # 1. a key that is not allow-listed, 2. a plaintext client, 3. node 5's key claiming to be node 1
        for ring_, name, claim in ((other, 1, 1), (None, None, 1), (ring, 5, 1)):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if ring_ is not None:
                curve.secure_client(s, ring_, name, "monitor")
            s.connect(control)
            s.send_multipart(_hello(claim))
            socks.append(s)
        time.sleep(2)
        for s in socks[:2]:
            assert not s.poll(500), "an unauthenticated peer got an answer"
        assert proc.wait(timeout=240) == 0
    finally:
        for s in socks:
            s.close(0)
        ctx.term()
    summary = read(out / "summary.json")
    assert summary["state"] == "COMPLETED" and summary["nodes_lost"] == 0
    assert summary["monitor_dropped"] >= 1  # the impostor's hello
    assert "claims sender 1 but the connection is authenticated as 5" in (out / "app.log").read_text()


def test_plaintext_beyond_loopback_needs_an_explicit_opt_out(compose):
    from byzctl.config.experiment import Experiment
    from byzctl.errors import ConfigError

    with pytest.raises(ConfigError, match="plaintext TCP off loopback"):
        Experiment.from_cfg(compose(["topology.host=0.0.0.0"]))
    Experiment.from_cfg(compose(["topology.host=0.0.0.0", "security=none"]))


def test_curve_without_keys_or_with_missing_node_keys(tmp_path, compose):
    from byzctl.config.experiment import Experiment
    from byzctl.errors import ConfigError

    with pytest.raises(ConfigError, match="needs security.keys"):
        Experiment.from_cfg(compose(["security=curve"]))
    assert keys_main(["gen", str(tmp_path / "k"), "--nodes", "3"]) == 0
    with pytest.raises(ConfigError, match="node-3|node 3"):
        Experiment.from_cfg(compose(["security=curve", f"security.keys={tmp_path / 'k'}"]))


def test_a_byzantine_key_sending_a_bad_hello_mid_run_is_refused_alone(tmp_path, keys):
    """The Byzantine node's own (allow-listed) key says hello again with a wrong config
    hash in the middle of the run: that connection alone is refused and logged; the run
    completes, and node 5 keeps its accepted connection (it is not lost)."""
    mine, _ = keys
    proc, out = _start(tmp_path, "security=curve", f"security.keys={mine}", "rounds=120")
    control = read(out / "run.json")["control"]
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        curve.secure_client(s, curve.Keyring(mine), 5, "monitor")
        s.connect(control)
        s.send_multipart(encode(Message(kind="hello", sender=5, meta={"role": "worker", "hash": "0123456789abcdef", "endpoints": {}})))
        assert s.poll(20000), "the refusal never came"
        from byzctl.transport.wire import decode

        reply = decode(s.recv_multipart(), max_bytes=0)
        assert reply.kind == "refuse" and "0123456789abcdef" in reply.meta["reason"]
        assert proc.wait(timeout=240) == 0
    finally:
        s.close(0)
        ctx.term()
    summary = read(out / "summary.json")
    assert summary["state"] == "COMPLETED" and summary["nodes_lost"] == 0 and summary["rounds_completed"] == 120
    assert "refused node 5 has config hash 0123456789abcdef" in (out / "app.log").read_text()
