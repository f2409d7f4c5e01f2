"""A real one-machine SLURM cluster in a private directory: munged, slurmctld, slurmd.

Used by the tests' session fixture (tests/conftest.py `slurm`) and by developers
(`make slurm`, then `export SLURM_CONF=...` as it prints). Everything lives under one
directory (config, munge key and socket, spool, state, logs); `stop` ends the daemons
by the pids they wrote there.

    python tests/slurm_cluster.py start DIR    # prints SLURM_CONF=DIR/slurm.conf
    python tests/slurm_cluster.py stop DIR
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from byzctl.procs import pid_alive

DAEMONS = ("slurmd", "slurmctld", "munged")
"""In the order `stop` ends them."""
CPUS = 16
"""CPUs the node declares: more than this 2-core machine has (slurmd is told to trust
the config), so a job of several tasks with a CPU each fits; nodes share the cores."""
PARTITION = "debug"


class SlurmUnavailable(RuntimeError):
    """The daemons cannot start here (not installed, or they refused); the reason says which."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _conf(root: Path, host: str) -> str:
    ctld, slurmd = _free_port(), _free_port()
    return f"""\
ClusterName=byzctltest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld}
SlurmdPort={slurmd}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket.2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=3
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={host} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=4000 State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def start(root: Path, timeout: float = 60.0) -> Path:
    """Start munged, slurmctld and slurmd under `root`; returns the slurm.conf path once
    the node is idle. Raises SlurmUnavailable with the reason (and stops what started)."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "sinfo") if shutil.which(b) is None]
    if missing:
        raise SlurmUnavailable(f"not installed: {', '.join(missing)} (Debian: apt-get install slurm-wlm munge)")
    root = root.resolve()
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(128))
    os.chmod(key, 0o600)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, host))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        _run(["munged", "--force", f"--key-file={key}", f"--socket={root}/munge/munge.socket.2",
              f"--pid-file={root}/munged.pid", f"--log-file={root}/log/munged.log",
              f"--seed-file={root}/munge/munged.seed"], env)
        _run(["slurmctld", "-f", str(conf)], env)
        _run(["slurmd", "-f", str(conf), "-N", host], env)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True)
            state = (out.stdout or out.stderr).strip()
            if out.returncode == 0 and state.rstrip("*") in ("idle", "mixed", "allocated"):
                return conf
            time.sleep(0.5)
        raise SlurmUnavailable(f"the node did not become idle within {timeout}s (sinfo: {state!r}); logs in {root}/log")
    except BaseException:
        stop(root)
        raise


def _run(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise SlurmUnavailable(f"{' '.join(cmd[:1])} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-500:]}")


def stop(root: Path) -> None:
    """End the daemons started under `root` (by their pid files), waiting for each."""
    root = root.resolve()
    for name in DAEMONS:
        pid = _pid(root / f"{name}.pid")
        if pid is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            (root / f"{name}.pid").unlink()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    where = Path(sys.argv[2])
    if sys.argv[1] == "start":
        try:
            print(f"SLURM_CONF={start(where)}")
        except SlurmUnavailable as exc:
            print(f"cannot start SLURM: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
    else:
        stop(where)
