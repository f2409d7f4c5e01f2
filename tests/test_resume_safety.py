"""A resume that cannot continue changes nothing; a checkpoint that cannot be written
fails the run naming the file.

Against a real interrupted run: its newest checkpoint is damaged (truncated, emptied,
overwritten with random bytes) and `byzctl run resume=<dir>` falls back to the newest
intact checkpoint, saying so; with none intact it refuses with exit 2 and one line,
and every file of the run is byte-identical afterwards. A full disk (a tiny tmpfs
mounted on the run's checkpoints/, where this test may mount one) ends the run with
one line naming the checkpoint's path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL, byzctl, read

from byzctl.errors import ConfigError
from byzctl.launch.checkpoints import (
    CheckpointError,
    intact_checkpoint,
    read_checkpoint,
    write_checkpoint,
)

slow = pytest.mark.slow
RUN = ["rounds=60", "checkpoint_every=10", "keep_checkpoints=5", "seed=3", "eval_every=10"]


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(os.urandom(len(data)))


def _tree(path: Path) -> dict[str, str]:
    """Every file under `path` by its sha256: what 'byte-identical' compares."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ps run, Ctrl-C'd after its round-20 checkpoint: INTERRUPTED, resumable."""
    base = tmp_path_factory.mktemp("interrupted")
    out = base / "run"
    proc = subprocess.Popen([*byzctl_cmd(), "run", *SMALL, *RUN, f"hydra.run.dir={out}"], cwd=base,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "round_0000020.safetensors").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, proc.stdout.read() if proc.stdout else ""
    assert read(out / "run.json")["state"] == "INTERRUPTED"
    assert len(list((out / "checkpoints").glob("round_*.safetensors"))) >= 2
    return out


def byzctl_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "byzctl"]


def _copy(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


@pytest.mark.parametrize("how", ["truncated", "empty", "random", "none"])
def test_a_resume_with_no_intact_checkpoint_refuses_and_changes_no_file(interrupted, tmp_path, how):
    run = _copy(interrupted, tmp_path)
    for ckpt in (run / "checkpoints").glob("round_*.safetensors"):
        if how == "none":
            ckpt.unlink()
        else:
            _damage(ckpt, how)
    before = _tree(run)
    proc = byzctl("run", f"resume={run}", cwd=tmp_path, timeout=240)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"resume={run}" in lines[0], text
    assert ("no checkpoint in" if how == "none" else "no intact checkpoint") in lines[0]
    assert _tree(run) == before, "a refused resume changed the run's files"
    assert not (tmp_path / "outputs").exists(), "a refused resume left a stray outputs/ directory"


def _fallback(interrupted: Path, tmp_path: Path, how: str) -> None:
    run = _copy(interrupted, tmp_path)
    found = sorted((run / "checkpoints").glob("round_*.safetensors"))
    newest, intact = found[-1], found[-2]
    _damage(newest, how)
    first = read(run / "run.json")
    proc = byzctl("run", f"resume={run}", cwd=tmp_path, timeout=300)
    text = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 0, text[-3000:]
    assert f"checkpoint {newest.name} is damaged" in text and f"falling back to {intact.name}" in text, text[-3000:]
    info = read(run / "run.json")
    assert info["state"] == "COMPLETED"
    assert info["resumed"][-1]["from_round"] == int(intact.name[6:13])
    for key in ("config_hash", "started", "nodes", "topology"):
        assert info[key] == first[key], key
    assert read(run / "summary.json")["rounds_completed"] == 60
    r, states = read_checkpoint(sorted((run / "checkpoints").glob("round_*.safetensors"))[-1])
    assert r == 60 and torch.isfinite(states[0][1]["params"]).all()
    # the resume ran in the run's own directory: no stray outputs/<date>/<time>/ and no
    # Hydra record written over the run's own
    assert not (tmp_path / "outputs").exists()
    assert "resume" not in (run / ".hydra" / "overrides.yaml").read_text()


def test_a_resume_falls_back_past_a_truncated_newest_checkpoint(interrupted, tmp_path):
    _fallback(interrupted, tmp_path, "truncated")


@slow
@pytest.mark.parametrize("how", ["empty", "random"])
def test_a_resume_falls_back_past_a_damaged_newest_checkpoint(interrupted, tmp_path, how):
    _fallback(interrupted, tmp_path, how)


def test_intact_checkpoint_names_every_damaged_one(tmp_path):
    states = {0: (5, {"params": torch.arange(4.0)})}
    for r in (5, 10, 15):
        write_checkpoint(tmp_path, r, states, keep=5)
    _damage(tmp_path / "round_0000015.safetensors", "random")
    _damage(tmp_path / "round_0000010.safetensors", "empty")
    path, damaged = intact_checkpoint(tmp_path)
    assert path.name == "round_0000005.safetensors"
    assert [p.name for p, _ in damaged] == ["round_0000015.safetensors", "round_0000010.safetensors"]
    _damage(path, "truncated")
    with pytest.raises(ConfigError, match="round_0000005.safetensors: Error while deserializing header"):
        intact_checkpoint(tmp_path)
    assert intact_checkpoint(tmp_path / "nothing") is None


# -- a checkpoint that cannot be written -----------------------------------------------------------
def _mount_tmpfs(path: Path, size: str) -> bool:
    """Mount a tmpfs of `size` on `path` (root only); False where this machine does not allow it."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def test_a_failed_checkpoint_write_names_the_file_and_leaves_no_temp_file(tmp_path):
    states = {0: (1, {"params": torch.zeros(200_000)})}  # 800 kB
    folder = tmp_path / "ckpt"
    if _mount_tmpfs(folder, "64k"):
        try:
            with pytest.raises(CheckpointError, match=f"cannot write checkpoint {folder}/round_0000001.safetensors: .*No space left on device"):
                write_checkpoint(folder, 1, states, keep=3)
            assert not list(folder.iterdir()), "the partial temp file was left on the full disk"
        finally:
            _umount(folder)
    folder.rmdir()
    folder.write_text("a file where the folder should be")
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {folder}/round_0000001.safetensors"):
        write_checkpoint(folder, 1, states, keep=3)


def test_a_full_disk_fails_the_run_with_one_line_naming_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    if not _mount_tmpfs(out / "checkpoints", "64k"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        proc = byzctl("run", *SMALL, "rounds=20", "checkpoint_every=10", f"hydra.run.dir={out}", cwd=tmp_path, timeout=300)
        text = " ".join((proc.stdout + proc.stderr).split())
        path = out / "checkpoints" / "round_0000010.safetensors"
        assert proc.returncode == 1, text[-3000:]
        assert "Traceback" not in text and "SafetensorError" not in text, text[-3000:]
        assert f"reason: cannot write checkpoint {path}: " in text and "No space left on device" in text, text[-3000:]
        info = read(out / "run.json")
        assert info["state"] == "FAILED" and str(path) in info["reason"] and info["config_hash"]
        assert read(out / "summary.json")["state"] == "FAILED"
        assert not list((out / "checkpoints").iterdir())
    finally:
        _umount(out / "checkpoints")
