"""Checkpoints: every node's resumable state in one safetensors file per round.

Nodes send their state to the monitor (kind "state") every `checkpoint_every`
rounds, at the last round, and when the run is interrupted; the monitor writes
`checkpoints/round_<R>.safetensors` atomically (temp file, then rename) once every
live node's state for round R is in, and keeps the newest `keep_checkpoints`.
Tensors are named `<node>/<name>`; the metadata holds each node's round.

A write that fails (a full disk) raises CheckpointError naming the file; on resume a
damaged checkpoint (truncated, empty, not safetensors) is skipped for the newest
intact one (`intact_checkpoint`), and none intact refuses the resume.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from byzctl.errors import ByzctlError, ConfigError

NodeStates = dict[int, tuple[int, dict[str, Tensor]]]
"""node id -> (its completed rounds, its named tensors)."""


class CheckpointError(ByzctlError):
    """A checkpoint could not be written (the run fails, naming the file); not bad input."""

    exit_code = 1


def write_checkpoint(folder: Path, round: int, states: NodeStates, keep: int) -> Path:
    """Write `round_<R>.safetensors` atomically and prune to the newest `keep`.

    Raises:
        CheckpointError: the file cannot be written (no space, read-only, not a
            directory), naming its path; the partial temp file is removed.
    """
    tensors = {f"{node}/{name}": t.detach().cpu().contiguous() for node, (_, st) in states.items() for name, t in st.items()}
    meta = {"round": str(round), "node_rounds": json.dumps({str(n): r for n, (r, _) in states.items()})}
    path = folder / f"round_{round:07d}.safetensors"
    tmp = folder / f".{path.name}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # a full disk gets its space back for run.json and summary.json
        raise CheckpointError(f"cannot write checkpoint {path}: {_why(exc)}") from exc
    for old in sorted(folder.glob("round_*.safetensors"))[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest intact checkpoint in `folder` (damaged ones are skipped), or None."""
    try:
        found = intact_checkpoint(folder)
    except ConfigError:
        return None
    return found[0] if found else None


def intact_checkpoint(folder: Path) -> tuple[Path, list[tuple[Path, str]]] | None:
    """The newest checkpoint whose header and sizes are whole, and the newer ones skipped
    as damaged with why; None when there is no checkpoint at all.

    Raises:
        ConfigError: checkpoints exist but none is intact, naming each with why.
    """
    found = sorted(folder.glob("round_*.safetensors"), reverse=True)
    if not found:
        return None
    damaged: list[tuple[Path, str]] = []
    for path in found:
        why = check_checkpoint(path)
        if why is None:
            return path, damaged
        damaged.append((path, why))
    listed = "; ".join(f"{p.name}: {why}" for p, why in damaged)
    raise ConfigError(f"no intact checkpoint in {folder}: {listed}")


def check_checkpoint(path: Path) -> str | None:
    """Why `path` cannot be resumed from, or None when it is intact. Reads the header
    only (safetensors checks that the data offsets cover the file exactly, which a
    truncated, empty or foreign file fails); the tensor bytes themselves carry no checksum."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = list(fh.keys())
        int(meta["round"])
        rounds = json.loads(meta["node_rounds"])
    except (OSError, SafetensorError) as exc:
        return _why(exc)
    except (KeyError, ValueError) as exc:
        return f"its metadata is not a byzctl checkpoint's ({type(exc).__name__}: {exc})"
    if not isinstance(rounds, dict) or not keys:
        return "it holds no node state"
    return None


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def read_checkpoint(path: Path) -> tuple[int, NodeStates]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    rounds = {int(k): int(v) for k, v in json.loads(meta.get("node_rounds", "{}")).items()}
    states: NodeStates = {n: (r, {}) for n, r in rounds.items()}
    for key, t in load_file(str(path)).items():
        node, name = key.split("/", 1)
        states.setdefault(int(node), (0, {}))[1][name] = t
    return int(meta.get("round", "0")), states
