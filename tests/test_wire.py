"""Wire format: round trips, and every malformed message is rejected before allocation."""

from __future__ import annotations

import msgpack
import pytest
import torch

from byzctl.errors import WireError
from byzctl.transport.wire import FRAME_BYTES, PROTOCOL_VERSION, Message, decode, encode

LIMIT = 64 * 2**20


def frames_of(msg: Message) -> list[bytes]:
    return [bytes(f) for f in encode(msg)]


def header(**over):
    h = {"v": PROTOCOL_VERSION, "k": "vector", "run": "r", "r": 3, "s": 2, "t": [["float32", [4], 1]], "m": {}}
    h.update(over)
    return msgpack.packb(h, use_bin_type=True)


def test_round_trip_keeps_values_dtype_and_meta():
    ts = [torch.randn(3, 5), torch.arange(7, dtype=torch.int64), torch.zeros(0), torch.randn(2, dtype=torch.float64)]
    msg = Message(kind="vector", round=9, sender=4, run="abc", tensors=ts, meta={"loss": 0.5, "state": "x"})
    got = decode(frames_of(msg), max_bytes=LIMIT)
    assert (got.kind, got.round, got.sender, got.run, got.meta) == ("vector", 9, 4, "abc", {"loss": 0.5, "state": "x"})
    for a, b in zip(ts, got.tensors):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_large_tensor_is_split_into_bounded_frames():
    t = torch.randn(FRAME_BYTES // 4 + 1000)  # just over one frame
    frames = frames_of(Message(kind="vector", tensors=[t]))
    assert len(frames) == 3 and max(len(f) for f in frames[1:]) <= FRAME_BYTES
    assert torch.equal(decode(frames, max_bytes=LIMIT).tensors[0], t)


@pytest.mark.parametrize(
    "frames, match",
    [
        ([], "empty"),
        ([b"\xc1garbage"], "msgpack"),
        ([msgpack.packb([1, 2])], "map"),
        ([header(v=99), bytes(16)], "version"),
        ([header(k="evil"), bytes(16)], "kind"),
        ([header(t=[["object", [4], 1]]), bytes(16)], "dtype"),
        ([header(t=[["float32", [4], 1]]), bytes(15)], "needs 16 bytes"),  # truncated
        ([header(t=[["float32", [4], 1]]), bytes(20)], "needs 16 bytes"),  # too long
        ([header(t=[["float32", [4], 1]])], "frames"),  # missing frame
        ([header(t=[["float32", [4], 1]]), bytes(16), bytes(4)], "frames"),  # extra frame
        ([header(t=[["float32", [-4], 1]]), bytes(16)], "shape"),
        ([header(t=[["float32", [2**39, 2**39], 1]]), bytes(16)], "limit|shape"),
        ([header(t=[["float32", [2**30], 1]]), bytes(16)], "limit"),
        ([header(r="three"), bytes(16)], "round"),
        ([header(m=[1]), bytes(16)], "'m'"),
        ([header(t=[["float32", [4], 0]]), bytes(16)], "spec"),
        ([b"x" * (70 * 1024)], "header"),
    ],
)
def test_malformed_messages_are_rejected(frames, match):
    with pytest.raises(WireError, match=match):
        decode(frames, max_bytes=LIMIT)


def test_encode_refuses_unknown_kind():
    with pytest.raises(WireError, match="kind"):
        encode(Message(kind="nope"))


def control(kind: str, **meta) -> list[bytes]:
    return [msgpack.packb({"v": PROTOCOL_VERSION, "k": kind, "run": "r", "r": 1, "s": 1, "t": [], "m": meta}, use_bin_type=True)]


@pytest.mark.parametrize("frames,match", [
    (control("hello"), "hello message lacks meta field 'hash'"),
    (control("hello", hash=["x"]), "bad meta field hash"),
    (control("hello", hash="x", endpoints=5), "bad meta field endpoints"),
    (control("hello", hash="x", endpoints={"data": 5}), "bad meta field endpoints"),
    (control("heartbeat", loss="abc"), "bad meta field loss"),
    (control("heartbeat", loss=True), "bad meta field loss"),
    (control("heartbeat", state=["x"]), "bad meta field state"),
    (control("metric", round=1, test_loss=0.1), "metric message lacks meta field 'test_accuracy'"),
    (control("metric", round="1", test_accuracy=0.5, test_loss=0.1), "bad meta field round"),
    (control("metric", round=1, test_accuracy=None, test_loss=0.1), "bad meta field test_accuracy"),
    (control("done", test_accuracy="x"), "bad meta field test_accuracy"),
    (control("state", round="x", names=[]), "bad meta field round"),
    (control("state", round=1, names=[1]), "bad meta field names"),
    (control("lost", back=True), "lost message lacks meta field 'node'"),
    (control("stop", checkpoint="yes"), "bad meta field checkpoint"),
    (control("heartbeats"), "heartbeats message lacks meta field 'nodes'"),
    (control("heartbeats", nodes=[[1, 2, "running"]]), "bad meta field nodes"),
    (control("heartbeats", nodes=[[1, "2", "running", 0.1]]), "bad meta field nodes"),
    (control("heartbeats", nodes=[[True, 2, "running", 0.1]]), "bad meta field nodes"),
    (control("heartbeats", nodes={"1": [2, "running", 0.1]}), "bad meta field nodes"),
])
def test_the_meta_fields_handlers_read_are_checked_by_decode(frames, match):
    with pytest.raises(WireError, match=match):
        decode(frames, max_bytes=LIMIT)


@pytest.mark.parametrize("frames", [
    control("hello", hash="x", role="worker", endpoints={"data": "ipc:///tmp/x"}, pid=7),
    control("heartbeat", loss=float("nan"), state="running", dropped=3),
    control("metric", round=10, test_accuracy=0.9, test_loss=0.3, node=0, role="server", time=1.5, extra=[1, {"a": None}]),
    control("done", state="done", test_accuracy=None, test_loss=None, rounds_completed=3),
    control("stop", reason="x", checkpoint=True),
    control("heartbeats", nodes=[[1, 4, "running", float("nan")], [2, 4, "running", 0.5]]),
    control("vector", anything={"goes": [1]}),
])
def test_well_formed_meta_passes(frames):
    decode(frames, max_bytes=LIMIT)
