"""Checkpoints and resume: Ctrl-C saves, `resume=` continues, and ps ends bit for bit the same."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import byzctl, read, run_dir
from test_e2e_ps import _start

from byzctl.launch.checkpoints import latest_checkpoint, read_checkpoint, write_checkpoint

RUN = ["rounds=60", "checkpoint_every=20", "seed=5", "eval_every=20"]


def test_write_read_and_prune(tmp_path):
    states = {0: (7, {"params": torch.arange(4.0)}), 3: (6, {"m": torch.ones(2)})}
    for r in (5, 6, 7, 8):
        write_checkpoint(tmp_path, r, states, keep=2)
    assert [p.name for p in sorted(tmp_path.glob("round_*"))] == ["round_0000007.safetensors", "round_0000008.safetensors"]
    assert not list(tmp_path.glob(".*tmp"))
    r, got = read_checkpoint(latest_checkpoint(tmp_path))
    assert r == 8 and got[0][0] == 7 and got[3][0] == 6 and torch.equal(got[0][1]["params"], torch.arange(4.0))


def test_periodic_checkpoints_are_written_and_pruned(tmp_path):
    out, proc = run_dir(tmp_path, *RUN, "keep_checkpoints=2")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["round_0000040.safetensors", "round_0000060.safetensors"]
    r, states = read_checkpoint(out / "checkpoints" / names[-1])
    assert r == 60 and set(states) == {0, 1, 2, 3, 4, 5} and "params" in states[0][1] and "m" in states[1][1]
    assert read(out / "summary.json")["checkpoint"].endswith(names[-1])


def test_interrupted_then_resumed_ps_run_ends_bit_for_bit_equal(tmp_path):
    ref, proc = run_dir(tmp_path, *RUN, name="ref")
    assert proc.returncode == 0, proc.stderr
    _, want = read_checkpoint(latest_checkpoint(ref / "checkpoints"))

    live, out = _start(tmp_path, *RUN, "rounds=60")
    # wait until past the first periodic checkpoint, then Ctrl-C mid-training
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("round_0000020*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    live.send_signal(signal.SIGINT)
    assert live.wait(timeout=60) == 130
    run = read(out / "run.json")
    assert run["state"] == "INTERRUPTED"
    cut, _ = read_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert 20 <= cut <= 60
    evals = [row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if row.get("test_accuracy") is not None]
    assert read(out / "summary.json")["test_accuracy"] == evals[-1]["test_accuracy"]  # the last evaluation, not "none"

    proc = byzctl("run", f"resume={out}", f"hydra.run.dir={tmp_path / 'resumer'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read(out / "run.json")["state"] == "COMPLETED" and read(out / "run.json")["resumed"][0]["from_round"] == cut
    r, got = read_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert r == 60
    assert torch.equal(got[0][1]["params"], want[0][1]["params"]), "resumed model differs from the uninterrupted one"
    rounds = [json.loads(line).get("round") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 60 in rounds

    # resuming a run that already completed runs nothing and changes nothing
    before = {f: (out / f).read_text() for f in ("run.json", "summary.json", "metrics.jsonl")}
    proc = byzctl("run", f"resume={out}", f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path)
    assert proc.returncode == 0 and "already COMPLETED after 60 rounds; nothing to resume" in " ".join(proc.stdout.split())
    assert before == {f: (out / f).read_text() for f in before}


def test_resume_of_a_directory_without_checkpoints_is_a_clear_error(tmp_path):
    (tmp_path / "bare").mkdir()
    proc = byzctl("run", f"resume={tmp_path / 'bare'}", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert proc.returncode == 2 and "not a byzctl run directory" in proc.stderr


@pytest.mark.slow
def test_two_interrupts_then_resume_still_end_bit_for_bit_equal(tmp_path):
    """Interrupts that land mid-round (eval_every=7: the parameters stepped while the
    evaluation runs) must save the state of the round the checkpoint names."""
    run = ["rounds=900", "checkpoint_every=150", "seed=0", "eval_every=7"]
    ref, proc = run_dir(tmp_path, *run, name="ref")
    assert proc.returncode == 0, proc.stderr
    _, want = read_checkpoint(latest_checkpoint(ref / "checkpoints"))

    live, out = _start(tmp_path, *run, "rounds=900")
    live.send_signal(signal.SIGINT)
    assert live.wait(timeout=60) == 130
    first, _ = read_checkpoint(latest_checkpoint(out / "checkpoints"))
    for attempt in ("again", "final"):
        live = subprocess.Popen([sys.executable, "-m", "byzctl", "run", f"resume={out}", f"hydra.run.dir={tmp_path / attempt}"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if attempt == "again":
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and read_checkpoint(latest_checkpoint(out / "checkpoints"))[0] == first:
                time.sleep(0.2)  # the resumed run wrote a checkpoint of its own: it is training
            live.send_signal(signal.SIGINT)
            assert live.wait(timeout=60) == 130
        else:
            text, _ = live.communicate(timeout=300)
            assert live.returncode == 0, text
    r, got = read_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert r == 900 and len(read(out / "run.json")["resumed"]) == 2
    for node, (_, tensors) in want.items():
        for name, t in tensors.items():
            assert torch.equal(got[node][1][name], t), f"node {node} {name} differs after two interrupts"
