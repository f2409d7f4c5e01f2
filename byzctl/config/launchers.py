"""Config of `launcher=local|remote|slurm|ray`: where a run's node processes come from.

Each option is a dataclass (`conf/launcher/<name>.yaml` starts from its schema), so
`launcher.partition=gpu` is typed and a typo names the key. A run's launcher says
how this host starts the run, not what the run is: it is not hashed (HOST_LOCAL_KEYS).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class LauncherKind(str, Enum):
    local = "local"
    """Spawn every node on this machine."""
    remote = "remote"
    """Start the monitor and the nodes the cluster file places here; wait for the others."""
    slurm = "slurm"
    """Submit one SLURM job whose tasks are the run's host processes (launch/slurm.py)."""
    ray = "ray"
    """Start the host processes as Ray actors placed by a placement group (launch/ray.py)."""

    @property
    def engine(self) -> bool:
        """A scheduler (SLURM, Ray) places and starts the nodes: none runs in this process's
        fork server, and their addresses are only known once they report them."""
        return self in (LauncherKind.slurm, LauncherKind.ray)


class MonitorPlace(str, Enum):
    """Where a SLURM run's monitor (and the run's supervision) lives."""

    submit = "submit"
    """In the submitting `byzctl run`, which waits for the job (Ctrl-C cancels it)."""
    job = "job"
    """In the job's batch step, on the allocation's first machine; `byzctl run` may
    return at once (launcher.wait=false)."""


_TIME = re.compile(r"^(\d+-)?\d+(:\d\d){0,2}$")


@dataclass(kw_only=True)
class Launcher:
    """Config of `launcher=local|remote` (nothing to set: see `cluster=`, `local_nodes=`)."""

    _target_: str = "byzctl.config.launchers.Launcher"
    name: LauncherKind = LauncherKind.local
    """local, remote, slurm or ray."""


@dataclass(kw_only=True)
class SlurmLauncher(Launcher):
    """Config of `launcher=slurm`: one SLURM job whose tasks are the run's host processes."""

    _target_: str = "byzctl.config.launchers.SlurmLauncher"
    name: LauncherKind = LauncherKind.slurm
    nodes: int = 1
    """Machines of the allocation (`--nodes`)."""
    tasks_per_node: int | None = None
    """Tasks (host processes) per machine (`--ntasks-per-node`); the run's logical nodes
    are packed into nodes x tasks_per_node of them. null: as many tasks as `processes=`
    packs host processes, spread over the machines."""
    partition: str | None = None
    """`--partition`; null: the cluster's default."""
    account: str | None = None
    """`--account`; null: the user's default."""
    time: str = "01:00:00"
    """Time limit (`--time`): minutes, MM:SS, HH:MM:SS or D-HH:MM:SS."""
    cpus_per_task: int = 1
    """`--cpus-per-task` of each host process."""
    gpus_per_task: int = 0
    """`--gpus-per-task` of each host process (0: none asked)."""
    sbatch: list[str] = field(default_factory=list)
    """Extra `#SBATCH` lines, as they would follow `#SBATCH `: `launcher.sbatch='["--mem=8G","--qos=high"]'`
    (quoted: Hydra's grammar reads `=` in a list otherwise; the leading `--` may be left out)."""
    monitor: MonitorPlace = MonitorPlace.submit
    """submit: the monitor runs in `byzctl run` on this host; job: inside the job."""
    monitor_host: str | None = None
    """launcher.monitor=submit: the address the tasks reach this host at; null: this
    host's name as it resolves here."""
    wait: bool = True
    """false: submit and return at once, printing the job id and run directory (the
    monitor then runs in the job: launcher.monitor=job)."""
    job_name: str = "byzctl"
    """`--job-name`."""

    def __post_init__(self) -> None:
        from byzctl.errors import ConfigError

        for key in ("nodes", "cpus_per_task"):
            if getattr(self, key) < 1:
                raise ConfigError(f"launcher.{key} must be >= 1. Got launcher.{key}={getattr(self, key)}")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise ConfigError(f"launcher.tasks_per_node must be >= 1 or null. Got launcher.tasks_per_node={self.tasks_per_node}")
        if self.gpus_per_task < 0:
            raise ConfigError(f"launcher.gpus_per_task must be >= 0. Got launcher.gpus_per_task={self.gpus_per_task}")
        if not _TIME.match(self.time):
            raise ConfigError(f"launcher.time={self.time!r} is not a SLURM time limit (minutes, HH:MM:SS or D-HH:MM:SS)")
        for line in self.sbatch:
            if "\n" in line or not line.strip() or line.strip().startswith("#"):
                raise ConfigError(f"launcher.sbatch line {line!r} must be one sbatch option such as '--mem=8G'")
        self.sbatch = [line.strip() if line.strip().startswith("-") else f"--{line.strip()}" for line in self.sbatch]
        if not self.wait and self.monitor is MonitorPlace.submit:
            self.monitor = MonitorPlace.job  # nobody would be left to run it here


@dataclass(kw_only=True)
class RayLauncher(Launcher):
    """Config of `launcher=ray`: host processes as Ray actors in one placement group."""

    _target_: str = "byzctl.config.launchers.RayLauncher"
    name: LauncherKind = LauncherKind.ray
    address: str = "auto"
    """The Ray cluster: auto (the one `ray start` made on this machine, or RAY_ADDRESS),
    host:port of its head (GCS), or local (start a private one-machine cluster)."""
    cpus_per_actor: float = 1.0
    """CPUs each host process reserves in its placement group bundle."""
    gpus_per_actor: float = 0.0
    """GPUs each host process reserves (0: none)."""
    strategy: str = "SPREAD"
    """Placement group strategy: SPREAD (across machines where it can), PACK,
    STRICT_SPREAD or STRICT_PACK."""
    placement_timeout: float = 60.0
    """Seconds to wait for the cluster to grant the placement group."""
    monitor_host: str | None = None
    """The address the actors reach this host at; null: the address Ray reports for it."""

    def __post_init__(self) -> None:
        from byzctl.errors import ConfigError

        if not 0 < self.cpus_per_actor < math.inf:
            raise ConfigError(f"launcher.cpus_per_actor must be > 0. Got launcher.cpus_per_actor={self.cpus_per_actor}")
        if not 0 <= self.gpus_per_actor < math.inf:
            raise ConfigError(f"launcher.gpus_per_actor must be >= 0. Got launcher.gpus_per_actor={self.gpus_per_actor}")
        if self.strategy not in ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"):
            raise ConfigError(f"launcher.strategy={self.strategy!r}; choose SPREAD, PACK, STRICT_SPREAD or STRICT_PACK")
        if not 0 < self.placement_timeout < math.inf:
            raise ConfigError(f"launcher.placement_timeout must be > 0. Got {self.placement_timeout}")


LAUNCHERS: dict[LauncherKind, type[Launcher]] = {
    LauncherKind.local: Launcher, LauncherKind.remote: Launcher,
    LauncherKind.slurm: SlurmLauncher, LauncherKind.ray: RayLauncher,
}


def launcher_kind(value: Any) -> LauncherKind:
    """The kind of a run's `launcher` node: a group option ({name: slurm, ...}), or the
    plain string older run directories recorded (`launcher: local`)."""
    name = value.get("name", "local") if hasattr(value, "get") else (value or "local")
    return LauncherKind(getattr(name, "value", name))
