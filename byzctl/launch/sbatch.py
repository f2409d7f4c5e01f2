"""The SLURM commands byzctl uses (sbatch, squeue, scontrol, scancel), without
importing torch: `byzctl status` asks a running run's job state through this module."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

from byzctl.errors import ConfigError

ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING", "STAGE_OUT")
"""SLURM job states of a job that has not ended."""
STARTING = ("PENDING", "CONFIGURING", "REQUEUED")
STATE_EVERY_S = 2.0
"""How often the launcher asks SLURM for the job's state (squeue is an RPC to slurmctld)."""
END_GRACE_S = 15.0
"""After a completed run, how long its job gets to end on its own before scancel."""
CANCEL_WAIT_S = 30.0
"""After scancel, how long to wait for the job to leave the running states."""


def command(name: str) -> str:
    """The path of SLURM command `name`; ConfigError (exit 2) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise ConfigError(f"launcher=slurm: {name!r} is not on PATH: run on a SLURM login node, or install the "
                          "SLURM client commands (Debian: apt-get install slurm-client)")
    return path


def job_state(job_id: str) -> str:
    """The job's state (RUNNING, COMPLETED, CANCELLED, ...), or UNKNOWN once SLURM forgot it."""
    out = subprocess.run([command("squeue"), "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    state = out.stdout.strip().split("\n")[0].strip() if out.returncode == 0 else ""
    if state:
        return state
    out = subprocess.run([command("scontrol"), "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    for word in out.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return "UNKNOWN"


def sbatch_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.removeprefix("sbatch: error: ").strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    return "; ".join(lines[-2:]) or f"sbatch exited with {proc.returncode}"


def submit(text: str, run_dir: Path) -> str:
    """Write the script into the run directory and submit it; returns the job id."""
    path = run_dir / "slurm" / "job.sh"
    path.write_text(text)
    proc = subprocess.run([command("sbatch"), "--parsable", str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ConfigError(f"launcher=slurm: sbatch refused {path}: {sbatch_error(proc)}")
    return proc.stdout.strip().split(";")[0]


def cancel(job_id: str) -> str:
    """scancel the job and wait (bounded) until it ended; returns its last state."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run([command("scancel"), job_id], capture_output=True, timeout=30)
    deadline = time.monotonic() + CANCEL_WAIT_S
    state = job_state(job_id)
    while state in ACTIVE and time.monotonic() < deadline:
        time.sleep(0.5)
        state = job_state(job_id)
    return state
