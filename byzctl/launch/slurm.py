"""`launcher=slurm`: one SLURM job whose tasks are the run's host processes.

`byzctl run launcher=slurm` writes `slurm/job.sh` and `slurm/tasks.json` into the run
directory (on the shared file system), submits the script with `sbatch`, and waits for
the job to start. Each task (`srun python -m byzctl.launch.task`) takes its nodes from
tasks.json by SLURM_PROCID, binds on its own machine and joins the monitor
(launch/task.py says why no cluster file is derived from the node list).

Where the monitor runs (`launcher.monitor`):
- submit (default): here, in `byzctl run`, which supervises the run as the local
  launcher does; Ctrl-C cancels the job (scancel) and records INTERRUPTED.
- job: in the job's batch step (`python -m byzctl.launch.slurm RUN_DIR`), which
  starts the tasks with srun and records the run; `byzctl run` waits for the job (or,
  with launcher.wait=false, returns at once with the job id).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from byzctl.config.experiment import Experiment
from byzctl.config.launchers import MonitorPlace, SlurmLauncher
from byzctl.errors import ConfigError, PeerError
from byzctl.jsonio import read_json
from byzctl.launch.local import LocalLauncher, write_resolved
from byzctl.launch.monitor import Monitor
from byzctl.launch.rundir import RunDir
from byzctl.launch.sbatch import (
    ACTIVE,
    CANCEL_WAIT_S,
    END_GRACE_S,
    STARTING,
    STATE_EVERY_S,
    cancel,
    command,
    job_state,
    sbatch_error,
    submit,
)
from byzctl.launch.task import TaskSpec
from byzctl.states import RunState
from byzctl.topology import packing
from byzctl.transport.curve import check_plaintext

log = logging.getLogger("byzctl")

def this_address(given: str | None) -> str:
    """The address tasks reach this host at: `given`, else this host's name as it resolves."""
    host = given or socket.getfqdn()
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise ConfigError(f"launcher.monitor_host={host!r} does not resolve here: {exc}") from None


def plan_tasks(exp: Experiment, cfg: SlurmLauncher) -> list[list[int]]:
    """The run's host processes (node ids of each task, by rank): nodes x tasks_per_node
    of them when tasks_per_node is given, else as `processes=` packs them."""
    plan = exp.plan()
    processes = exp.cfg.get("processes", packing.AUTO)
    if cfg.tasks_per_node is None:
        hosts = packing.pack(plan, processes)
        if len(hosts) < cfg.nodes:
            raise ConfigError(f"launcher.nodes={cfg.nodes} machines but the run has only {len(hosts)} host processes "
                              f"(processes={processes}): ask fewer machines or more processes")
        return hosts
    tasks = cfg.nodes * cfg.tasks_per_node
    if tasks > len(plan):
        raise ConfigError(f"launcher.nodes={cfg.nodes} x launcher.tasks_per_node={cfg.tasks_per_node} = {tasks} tasks, "
                          f"more than the run's {len(plan)} nodes (nodes.honest={exp.honest}, nodes.byzantine={exp.byzantine})")
    if str(processes) not in (packing.AUTO, str(tasks)):
        raise ConfigError(f"processes={processes} but the allocation runs {tasks} host processes "
                          f"(launcher.nodes={cfg.nodes} x launcher.tasks_per_node={cfg.tasks_per_node}); leave processes=auto")
    hosts = packing.pack(plan, tasks)
    if len(hosts) != tasks:  # a central node alone leaves the others fewer hosts than blocks
        raise ConfigError(f"launcher.nodes={cfg.nodes} x launcher.tasks_per_node={cfg.tasks_per_node} = {tasks} tasks "
                          f"cannot each carry nodes of this run (it packs into {len(hosts)})")
    return hosts


def script(exp: Experiment, cfg: SlurmLauncher, tasks: int, run_dir: Path, step: list[str]) -> str:
    """The sbatch script: the allocation's options, then `step` (the command of the batch step)."""
    opts = [f"--job-name={cfg.job_name}", f"--nodes={cfg.nodes}", f"--ntasks={tasks}",
            f"--cpus-per-task={cfg.cpus_per_task}", f"--time={cfg.time}",
            f"--output={run_dir}/slurm/job-%j.out", "--open-mode=append"]
    if cfg.tasks_per_node is not None:
        opts.append(f"--ntasks-per-node={cfg.tasks_per_node}")
    if cfg.gpus_per_task:
        opts.append(f"--gpus-per-task={cfg.gpus_per_task}")
    if cfg.partition:
        opts.append(f"--partition={cfg.partition}")
    if cfg.account:
        opts.append(f"--account={cfg.account}")
    lines = ["#!/bin/bash", f"# byzctl run {run_dir}: {exp.honest} honest + {exp.byzantine} Byzantine nodes in {tasks} tasks"]
    lines += [f"#SBATCH {o}" for o in opts] + [f"#SBATCH {line.strip()}" for line in cfg.sbatch]
    lines += ["", "export PYTHONUNBUFFERED=1", f"cd {shlex.quote(os.getcwd())}", "exec " + shlex.join(step), ""]
    return "\n".join(lines)


def task_step(run_dir: Path) -> list[str]:
    """srun of every task; one task's death does not end the others (a lost node)."""
    return ["srun", "--kill-on-bad-exit=0", f"--output={run_dir}/slurm/task-%t.out",
            sys.executable, "-m", "byzctl.launch.task", str(run_dir / "slurm" / "tasks.json")]


def check(exp: Experiment, cfg: SlurmLauncher, run_dir: Path) -> None:
    """What can be refused before anything is submitted: sbatch present, the tasks the run
    needs, plaintext across machines, and the job itself (`sbatch --test-only` asks
    slurmctld: a partition or account it rejects, more tasks than the allocation holds)."""
    sbatch = command("sbatch")
    command("squeue")
    command("scancel")
    hosts = plan_tasks(exp, cfg)
    security = str(exp.security.name.value)
    if cfg.monitor is MonitorPlace.submit:
        check_plaintext([f"tcp://{this_address(cfg.monitor_host)}:0"], security)
    if cfg.nodes > 1 and security == "auto":
        raise ConfigError(f"launcher.nodes={cfg.nodes}: nodes talk across machines in plaintext TCP; use security=curve "
                          "(keys are generated into the run directory when security.keys is unset) or opt out with security=none")
    text = script(exp, cfg, len(hosts), run_dir, ["true"])
    proc = subprocess.run([sbatch, "--test-only"], input=text, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ConfigError(f"launcher=slurm: SLURM refuses the job ({_values(cfg, len(hosts))}): {sbatch_error(proc)}")


def _values(cfg: SlurmLauncher, tasks: int) -> str:
    """The job's options as the user set them (launcher.partition=gpu, ...)."""
    out = [f"launcher.partition={cfg.partition}"] if cfg.partition else []
    if cfg.account:
        out.append(f"launcher.account={cfg.account}")
    out += [f"launcher.nodes={cfg.nodes}", f"{tasks} tasks", f"launcher.cpus_per_task={cfg.cpus_per_task}", f"launcher.time={cfg.time}"]
    if cfg.gpus_per_task:
        out.append(f"launcher.gpus_per_task={cfg.gpus_per_task}")
    return ", ".join(out)


class SlurmRun(LocalLauncher):
    """The run's monitor and supervision here; its host processes are a SLURM job's tasks."""

    def __init__(self, exp: Experiment, rundir: RunDir, console: Console | None = None, resume: bool = False):
        super().__init__(exp, rundir, console, resume)
        assert isinstance(exp.launcher, SlurmLauncher)
        self.cfg: SlurmLauncher = exp.launcher
        self.hosts_plan = plan_tasks(exp, self.cfg)
        self.job_id: str | None = None
        self.job = ""
        self._asked = 0.0

    # -- hooks of LocalLauncher ----------------------------------------------------------
    def monitor_bind(self) -> str:
        return f"tcp://{this_address(self.cfg.monitor_host)}:*"

    def host_groups(self) -> list[list[int]]:
        return [list(g) for g in self.hosts_plan]

    def spawn(self, monitor: Monitor, resolved: Path) -> None:
        """Submit the job and return once it runs (a queued job is not late to join)."""
        folder = self.rundir.path / "slurm"
        folder.mkdir(exist_ok=True)
        TaskSpec(hosts=self.hosts_plan, control=self.control, run_id=self.run_id,
                 run_dir=str(self.rundir.path.resolve()), resolved=str(resolved.resolve())).write(folder / "tasks.json")
        text = script(self.exp, self.cfg, len(self.hosts_plan), self.rundir.path.resolve(), task_step(self.rundir.path.resolve()))
        self.job_id = submit(text, self.rundir.path)
        self._record("PENDING")
        self.console.print(f"SLURM job {self.job_id}: {len(self.hosts_plan)} tasks; run files: {self.rundir.path}")
        while (state := self.job_state(force=True)) in STARTING:
            time.sleep(0.5)
            monitor.poll(0)
        if state not in ACTIVE:
            raise PeerError(f"SLURM job {self.job_id} ended before it ran ({state}); see {folder}")

    def stopping(self, monitor: Monitor) -> bool:
        return self.job_state() in ACTIVE and any(not s.final and not s.lost for s in monitor.nodes.values() if s.joined)

    def outcome(self, node_id: int, monitor: Monitor) -> int | None:
        """A node's report decides; a node that never reported ended with the job."""
        final = monitor.nodes[node_id].final
        if final:
            return 1 if final.get("state") == "failed" else 0
        return None if self.job_state() in ACTIVE else 1

    def reap(self) -> dict[int, int | None]:
        """Cancel the job unless it ended (nothing of it outlives the launcher)."""
        if self.job_id is not None:
            state = self.job_state(force=True)
            deadline = time.monotonic() + END_GRACE_S
            while self.state is RunState.COMPLETED and state in ACTIVE and time.monotonic() < deadline:
                time.sleep(0.5)  # its tasks are exiting on their own: let the job end COMPLETED
                state = self.job_state(force=True)
            if state in ACTIVE:
                state = cancel(self.job_id)
            self._record(state)
        return {}

    # -- the job ------------------------------------------------------------------------
    def job_state(self, force: bool = False) -> str:
        if self.job_id is None:
            return "NONE"
        now = time.monotonic()
        if force or now - self._asked > STATE_EVERY_S:
            self._asked = now
            self.job = job_state(self.job_id)
        return self.job

    def _record(self, state: str) -> None:
        self.job = state
        self.rundir.update(slurm={"job_id": self.job_id, "state": state, "script": "slurm/job.sh",
                                  "tasks": len(self.hosts_plan), "nodes": self.cfg.nodes})


class SlurmStep(SlurmRun):
    """launcher.monitor=job: this process is the job's batch step; srun starts the tasks."""

    def __init__(self, exp: Experiment, rundir: RunDir, console: Console | None = None, resume: bool = False):
        super().__init__(exp, rundir, console, resume)
        self.job_id = os.environ.get("SLURM_JOB_ID")
        self.step: subprocess.Popen[bytes] | None = None

    def monitor_bind(self) -> str:
        return f"tcp://{this_address(None)}:*"

    def spawn(self, monitor: Monitor, resolved: Path) -> None:
        folder = self.rundir.path / "slurm"
        TaskSpec(hosts=self.hosts_plan, control=self.control, run_id=self.run_id,
                 run_dir=str(self.rundir.path.resolve()), resolved=str(resolved.resolve())).write(folder / "tasks.json")
        self.step = subprocess.Popen(task_step(self.rundir.path.resolve()), start_new_session=True)
        self._record("RUNNING")

    def job_state(self, force: bool = False) -> str:
        return "RUNNING" if self.step is not None and self.step.poll() is None else "COMPLETED"

    def reap(self) -> dict[int, int | None]:
        if self.step is not None and self.step.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.step.pid, signal.SIGTERM)  # srun forwards it to every task
            try:
                self.step.wait(timeout=CANCEL_WAIT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.step.pid, signal.SIGKILL)
                self.step.wait()
        return {}


def submit_only(exp: Experiment, rundir: RunDir, console: Console, resume: bool = False) -> dict[str, Any]:
    """launcher.monitor=job: submit a job whose batch step runs the monitor; return at once
    (launcher.wait=false, the summary says RUNNING) or wait for it, cancelling it on Ctrl-C."""
    from byzctl.launch.local import Interrupted, _raise_interrupted

    cfg = exp.launcher
    assert isinstance(cfg, SlurmLauncher)
    hosts = plan_tasks(exp, cfg)
    (rundir.path / "slurm").mkdir(exist_ok=True)
    if not resume:
        write_resolved(exp.cfg, rundir)
    step = [sys.executable, "-m", "byzctl.launch.slurm", str(rundir.path.resolve()), *(["--resume"] if resume else [])]
    job_id = submit(script(exp, cfg, len(hosts), rundir.path.resolve(), step), rundir.path)
    job = {"job_id": job_id, "state": "PENDING", "script": "slurm/job.sh", "tasks": len(hosts), "nodes": cfg.nodes}
    if resume:  # the batch step continues the record it finds
        rundir.info = read_json(rundir.run_json)
        rundir.update(state=RunState.RUNNING, reason="", ended=None, slurm=job)
    else:
        rundir.start(config_hash=exp.hash, topology=exp.topology.name, launcher="slurm", host=socket.gethostname(), slurm=job,
                     nodes=[{"id": s.id, "role": s.role.value, "byzantine": s.byzantine} for s in exp.plan()])
    console.print(f"SLURM job {job_id} submitted: {len(hosts)} tasks, the monitor in the job; run files: {rundir.path}")
    if not cfg.wait:
        return {"state": RunState.RUNNING, "job_id": job_id}
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while job_state(job_id) in ACTIVE:
            time.sleep(1.0)
    except Interrupted as exc:
        cancel(job_id)  # the batch step records INTERRUPTED itself (SIGTERM); make sure it says so
        info = read_json(rundir.run_json)
        if info.get("state") == RunState.RUNNING:
            rundir.info = info
            rundir.end(RunState.INTERRUPTED, f"interrupted by {exc}; SLURM job {job_id} cancelled")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    try:
        return dict(read_json(rundir.path / "summary.json"))
    except (OSError, ValueError):
        info = read_json(rundir.run_json)
        return {"state": RunState(info.get("state", RunState.FAILED)), "reason": info.get("reason", f"SLURM job {job_id} ended"),
                "rounds_completed": 0, "test_accuracy": None, "wall_seconds": 0.0}


def step_main(run_dir: str, resume: bool = False) -> int:
    """The batch step of a launcher.monitor=job run: monitor, tasks (srun) and records."""
    from byzctl.config.compose import load_resolved

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = Path(run_dir)
    exp = Experiment.from_cfg(load_resolved(path / "config.yaml", "the run's config.yaml"))
    rundir = RunDir(path)
    before = read_json(rundir.run_json)
    launcher = SlurmStep(exp, rundir, Console(), resume=resume)
    summary = _run_keeping(launcher, before)
    state = summary["state"]
    return int(RunState(state).exit_code)


def _run_keeping(launcher: SlurmStep, before: dict[str, Any]) -> dict[str, Any]:
    """LocalLauncher.run, keeping what the submitting host recorded (job id, its host)."""
    start = launcher.rundir.start

    def start_keeping(**info: Any) -> None:
        start(**{**info, "submitted_from": before.get("host"), "slurm": before.get("slurm")})

    launcher.rundir.start = start_keeping  # type: ignore[method-assign]
    return launcher.run()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["--resume"]):
        print("usage: python -m byzctl.launch.slurm RUN_DIR [--resume] (the batch step of a byzctl SLURM job)", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(step_main(sys.argv[1], resume=sys.argv[2:] == ["--resume"]))
