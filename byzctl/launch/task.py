"""One host process that a scheduler started: a SLURM task or a Ray actor.

The launcher (launch/slurm.py, launch/ray.py) writes a `TaskSpec`: the packing of the
run's logical nodes into host processes, the monitor's endpoint, the run id and the
resolved config. Each task learns its rank from the scheduler (SLURM_PROCID, or the
actor's index), takes that host's nodes and runs them exactly as a local host process
does (`run_node` for one, `run_host` for many).

Endpoints. Nobody writes a cluster file: every host process binds TCP on its own
machine, on the address it uses to reach the monitor (the kernel's route to it, read
from a connected UDP socket: nothing is sent), with a port the kernel picks, and
reports the endpoint in its hello; the monitor hands the peer table out once all
joined. Why not a plan derived from SLURM_JOB_NODELIST and fixed ports: a fixed port
may be taken on a shared machine (another job, another user) and would fail the run;
a host name may resolve to an address other machines cannot reach (Debian maps its own
name to 127.0.1.1); and the route to the monitor is by construction an address the
monitor's network reaches. The same code serves Ray, whose actors learn nothing from
SLURM.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("byzctl")


@dataclass(frozen=True)
class TaskSpec:
    """What every host process of an engine-launched run needs (tasks.json for SLURM)."""

    hosts: list[list[int]]
    """Node ids of each host process, by rank."""
    control: str
    """The monitor's endpoint (tcp://address:port)."""
    run_id: str
    run_dir: str
    resolved: str
    """The resolved config (config.yaml in the run directory)."""

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, path: str | Path) -> TaskSpec:
        return cls(**json.loads(Path(path).read_text()))


def route_address(endpoint: str) -> str:
    """This machine's address on its route to `endpoint` (tcp://host:port): what the
    monitor's side of the network can reach it at."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, int(port)))  # UDP: picks the route and source address, sends nothing
        return str(s.getsockname()[0])


def log_path(spec: TaskSpec, rank: int) -> str:
    """The run directory's log of this host process (`nodes/<id>.log`, or
    `nodes/host<first id>.log` for a host of many nodes, as the local launcher names them)."""
    from byzctl.launch.rundir import host_log

    return str(host_log(spec.run_dir, spec.hosts[rank]))


def serve(spec: TaskSpec, rank: int, *, resolved: str | None = None, log_file: str | None = None) -> int:
    """Run host process `rank` of `spec` in this process; returns its exit code.
    `resolved`/`log_file`: where this machine keeps them when it does not share the run
    directory's file system (Ray); default: the run directory's."""
    from byzctl.config.compose import load_resolved
    from byzctl.config.experiment import Experiment
    from byzctl.node import main as node_main
    from byzctl.node.host import output_to, run_host

    if not 0 <= rank < len(spec.hosts):
        print(f"byzctl task: rank {rank} is not a host process of this run (0..{len(spec.hosts) - 1})", file=sys.stderr)
        return 2
    group = spec.hosts[rank]
    output_to(log_file or log_path(spec, rank))
    exp = Experiment.from_cfg(load_resolved(resolved or spec.resolved, "--resolved"))
    exp.bind_host = route_address(spec.control)
    print(f"host process {rank} of {len(spec.hosts)} (pid {os.getpid()}, {socket.gethostname()}, {exp.bind_host}): nodes {group}", flush=True)
    # The launcher is on another machine (or is the engine): the parent whose death
    # orphans these nodes is the task's own (slurmstepd, the raylet); the monitor's
    # silence stops them if the launcher dies.
    parent = os.getppid()
    if len(group) == 1:
        return node_main.run_node(exp, group[0], spec.control, spec.run_id, run_dir=spec.run_dir, launcher_pid=parent)
    return run_host(exp, group, spec.control, spec.run_id, spec.run_dir, parent)


def main(argv: list[str]) -> int:
    """`python -m byzctl.launch.task TASKS_JSON`: a SLURM task (rank from SLURM_PROCID)."""
    if len(argv) != 1:
        print("usage: python -m byzctl.launch.task TASKS_JSON (run by srun)", file=sys.stderr)
        return 2
    rank = os.environ.get("SLURM_PROCID")
    if rank is None:
        print("byzctl task: SLURM_PROCID is not set (run by srun inside a byzctl job)", file=sys.stderr)
        return 2
    try:
        return serve(TaskSpec.read(argv[0]), int(rank))
    except SystemExit as exc:  # SIGTERM (scancel): node threads may still hold sockets; do not wait on them
        logging.shutdown()
        os._exit(exc.code if isinstance(exc.code, int) else 1)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    logging.shutdown()
    sys.exit(code)
