"""The wire format: `[header, tensor frames...]`, validated before anything is allocated.

The header is a small msgpack map: protocol version `v`, kind `k`, run id `run`,
round `r`, sender `s`, per-tensor `t: [[dtype, shape, nframes], ...]` and a small
`m` map of plain values. Tensor frames are raw C-contiguous bytes sent zero-copy
and read back with `torch.frombuffer`, so a tensor in one frame is never copied.
Only tensors over FRAME_BYTES (63 MiB) are split, and decode must then copy the
frames into one buffer: measured on 16 cores, a 40 MB tensor in 32 MiB frames plus
that copy reached 1.3 GB/s over tcp, in one frame 2.3 GB/s (ipc: 1.5 vs 5.4), so
the cap only bounds what one frame may hold. Peer data is never unpickled.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import msgpack
import torch
from torch import Tensor

from byzctl.errors import WireError

PROTOCOL_VERSION = 1
FRAME_BYTES = 63 * 2**20  # 16.5M float32 in one frame: ResNet-18's 11.7M fit
MAX_HEADER_BYTES = 1024 * 1024
"""The monitor's peer table of a 1,000-node run is ~100 kB of header; what a header may
hold is bounded by its bytes (a map entry takes at least 2), not by item counts."""
MAX_TENSORS = 16
MAX_DIMS = 8

KINDS = frozenset(
    {
        "hello",  # node -> monitor / worker -> server: id, role, config hash, endpoints
        "welcome",  # accepted hello; monitor -> node carries the peer table
        "refuse",  # rejected hello, with the reason
        "heartbeat",  # node -> monitor: round, loss, state; monitor -> node (or host): the coordinator is alive
        "heartbeats",  # host process -> monitor: the beats of its nodes (node/cohost.py HostBeats)
        "metric",  # node -> monitor: one evaluation row
        "done",  # node -> monitor: final figures
        "stop",  # monitor/server -> node: finish now
        "model",  # server -> worker: parameters of round r
        "vector",  # worker/peer -> aggregator: the round's vector
        "oracle",  # server -> Byzantine workers: honest vectors of round r (omniscient)
        "shard",  # coordinator -> node: its data shard (dataset.ship)
        "lost",  # monitor -> nodes: a node was lost (or is back), so stop waiting for it
        "state",  # node -> monitor: its resumable state for a checkpoint
        "config",  # node -> monitor: its explicit overrides; monitor -> node: the run's resolved config
    }
)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number_or_none(v: Any) -> bool:
    return v is None or _number(v)


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _int(v: Any) -> bool:
    return _is_int(v)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _map(v: Any) -> bool:
    return isinstance(v, dict)


def _str_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(x) for x in v)


def _beats(v: Any) -> bool:
    """[[node, round, state, loss], ...]: a host's beats."""
    return isinstance(v, list) and all(
        isinstance(b, list) and len(b) == 4 and _is_int(b[0]) and _is_int(b[1]) and isinstance(b[2], str) and _number(b[3])
        for b in v)


_EVAL = {"round": (_int, True), "test_accuracy": (_number, True), "test_loss": (_number, True)}
META: dict[str, dict[str, tuple[Any, bool]]] = {
    "hello": {"hash": (_str, True), "role": (_str, False), "endpoints": (_str_map, False), "pid": (_int, False),
              "oracle": (_bool, False)},
    "welcome": {"peers": (_map, False), "run": (_str, False), "round": (_int, False), "resume": (_map, False)},
    "refuse": {"reason": (_str, False)},
    "heartbeat": {"loss": (_number, False), "state": (_str, False), "dropped": (_int, False)},
    "heartbeats": {"nodes": (_beats, True)},
    "metric": {**_EVAL, "node": (_int, False), "role": (_str, False), "time": (_number, False)},
    "done": {"state": (_str, False), "error": (_str, False), "rounds_completed": (_int, False),
             "test_accuracy": (_number_or_none, False), "test_loss": (_number_or_none, False)},
    "stop": {"reason": (_str, False), "checkpoint": (_bool, False), "state": (_str, False)},
    "lost": {"node": (_int, True), "back": (_bool, False), "reason": (_str, False), "endpoints": (_str_map, False)},
    "state": {"round": (_int, True), "names": (_str_list, True)},
    "shard": {"hash": (_str, False), "num_classes": (_int, False), "input_shape": (_int_list, False)},
    "config": {"overrides": (_map, False), "run": (_str, False), "hash": (_str, False)},
}
"""The `m` fields each kind's handlers read: (check, required). Checked by `decode`, so a
handler reads them without guarding against a peer's wrong types; other fields travel
unchecked (a metric row's extra columns)."""


@dataclass
class Message:
    kind: str
    round: int = 0
    sender: int = -1
    run: str = ""
    tensors: list[Tensor] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def encode(msg: Message) -> list[Any]:
    """Frames for `msg`: the header, then each tensor's bytes (zero-copy views)."""
    if msg.kind not in KINDS:
        raise WireError(f"unknown message kind {msg.kind!r}")
    specs, frames = [], []
    for t in msg.tensors:
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        if t.dtype not in _NAMES:
            raise WireError(f"dtype {t.dtype} cannot travel; allowed: {sorted(DTYPES)}")
        raw = t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else memoryview(b"")  # zero-copy
        parts = [raw[i : i + FRAME_BYTES] for i in range(0, len(raw), FRAME_BYTES)] or [raw]
        specs.append([_NAMES[t.dtype], list(t.shape), len(parts)])
        frames.extend(parts)
    header = {"v": PROTOCOL_VERSION, "k": msg.kind, "run": msg.run, "r": int(msg.round), "s": int(msg.sender), "t": specs, "m": msg.meta}
    return [msgpack.packb(header, use_bin_type=True), *frames]


def _buffer(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", frame)
    return memoryview(buf)


def decode(frames: Sequence[Any], *, max_bytes: int) -> Message:
    """Parse and validate frames; raise WireError naming the first problem found.

    Nothing larger than the header is allocated before the declared sizes are checked
    against `max_bytes` and against the bytes actually received.
    """
    if not frames:
        raise WireError("empty message")
    head = _buffer(frames[0])
    if len(head) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        h = msgpack.unpackb(
            head, raw=False, strict_map_key=True, max_str_len=4096, max_bin_len=0,
            max_array_len=MAX_HEADER_BYTES, max_map_len=MAX_HEADER_BYTES // 2, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"header is not valid msgpack: {exc}") from None
    if not isinstance(h, dict):
        raise WireError(f"header must be a map, got {type(h).__name__}")
    if h.get("v") != PROTOCOL_VERSION:
        raise WireError(f"protocol version {h.get('v')!r} is not {PROTOCOL_VERSION}")
    kind, run, rnd, sender, specs, meta = (h.get(k) for k in ("k", "run", "r", "s", "t", "m"))
    if not isinstance(kind, str) or kind not in KINDS:
        raise WireError(f"unknown message kind {kind!r}")
    if not isinstance(run, str) or not _is_int(rnd) or not _is_int(sender):
        raise WireError(f"bad header fields run={run!r} round={rnd!r} sender={sender!r}")
    if not isinstance(meta, dict) or not isinstance(specs, list) or len(specs) > MAX_TENSORS:
        raise WireError(f"header 'm' must be a map and 't' a list of at most {MAX_TENSORS} tensors")
    _check_meta(kind, meta)
    if sum(_nframes(s) for s in specs) != len(frames) - 1:
        raise WireError(f"header declares {sum(_nframes(s) for s in specs)} tensor frames, got {len(frames) - 1}")
    tensors, pos, total = [], 1, 0
    for spec in specs:
        dtype, shape, nframes = _check_spec(spec)
        declared = math.prod(shape) * _itemsize(dtype)
        total += declared
        if total > max_bytes:
            raise WireError(f"message declares {total} tensor bytes, over the limit of {max_bytes}")
        bufs = [_buffer(f) for f in frames[pos : pos + nframes]]
        pos += nframes
        got = sum(len(b) for b in bufs)
        if got != declared:
            raise WireError(f"tensor {dtype} {shape} needs {declared} bytes, frames carry {got}")
        tensors.append(_tensor(bufs, dtype, shape))
    return Message(kind=kind, round=cast(int, rnd), sender=cast(int, sender), run=run, tensors=tensors, meta=meta)  # checked above


def _check_meta(kind: str, meta: dict[str, Any]) -> None:
    for key, (ok, required) in META.get(kind, {}).items():
        if key not in meta:
            if required:
                raise WireError(f"{kind} message lacks meta field {key!r}")
        elif not ok(meta[key]):
            raise WireError(f"{kind} message has a bad meta field {key}={str(meta[key])[:80]!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**62) < v < 2**62


def _nframes(spec: Any) -> int:
    if not (isinstance(spec, list) and len(spec) == 3 and _is_int(spec[2]) and 1 <= spec[2] <= 2**20):
        raise WireError(f"bad tensor spec {spec!r}; expected [dtype, shape, nframes]")
    return int(spec[2])


def _check_spec(spec: list[Any]) -> tuple[torch.dtype, list[int], int]:
    name, shape, nframes = spec
    if not isinstance(name, str) or name not in DTYPES:
        raise WireError(f"dtype {name!r} not allowed; allowed: {sorted(DTYPES)}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_int(s) and 0 <= s < 2**40 for s in shape):
        raise WireError(f"bad tensor shape {shape!r}")
    if math.prod(max(s, 1) for s in shape) >= 2**40:
        raise WireError(f"tensor shape {shape!r} is out of range even if empty")
    return DTYPES[name], shape, nframes


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _tensor(bufs: list[memoryview], dtype: torch.dtype, shape: list[int]) -> Tensor:
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype)
    if len(bufs) == 1:
        with warnings.catch_warnings():
            # zmq frames are read-only; the tensor is treated as read-only too.
            warnings.simplefilter("ignore", UserWarning)
            return torch.frombuffer(bufs[0], dtype=torch.uint8).view(dtype).reshape(shape)
    out = torch.empty(math.prod(shape) * _itemsize(dtype), dtype=torch.uint8)
    pos = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for b in bufs:
            out[pos : pos + len(b)] = torch.frombuffer(b, dtype=torch.uint8)
            pos += len(b)
    return out.view(dtype).reshape(shape)
