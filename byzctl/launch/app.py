"""`byzctl run`: the Hydra application."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from byzctl.config.schema import register
from byzctl.states import RunState

log = logging.getLogger("byzctl")

STARTED = False
"""Set once Hydra composed a config and called `run` (so an exit is not a config error)."""


def run(cfg: DictConfig) -> float | None:
    """Compose -> check -> launch -> record. Returns the final test accuracy (for sweepers)."""
    from rich.console import Console

    from byzctl.config.experiment import Experiment
    from byzctl.errors import ByzctlError
    from byzctl.launch import preflight
    from byzctl.launch.hosts import warm_up
    from byzctl.launch.rundir import RunDir

    global STARTED
    STARTED = True
    started = time.time()
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    console = Console()
    resume = cfg.get("resume")
    try:
        if resume:
            out, cfg = _resume_target(Path(resume))
        _engine_keys(cfg, out)
        exp = Experiment.from_cfg(cfg)
        if exp.local_nodes():
            warm_up()  # the fork server's imports overlap the checks below
        done = _completed_before(out, exp.hash)
        if done is not None and resume:  # nothing left to run: say so, change nothing
            console.print(f"resume={resume}: the run already COMPLETED after {done.get('rounds_completed')} rounds; nothing to resume")
            return done.get("test_accuracy")
        if done is not None and multirun:
            log.info("job %s already completed in %s: skipped", hc.job.num, out)
            return done.get("test_accuracy")
        if resume:
            _resume_checkpoint(out)
        preflight.check_host(exp)
        preflight.warm(exp)
        # LocalLauncher.run records and returns whatever ends a started run; a ByzctlError
        # escaping it means nothing started (the monitor could not bind).
        summary = _launch(exp, out, console, bool(resume))
    except ByzctlError as exc:
        # Recorded in this invocation's own directory, unless that is the run a refused
        # resume names (`byzctl run resume=DIR` runs in DIR): that run stays as it was,
        # every file of it, still resumable.
        if not (resume and Path(hc.runtime.output_dir).resolve() == out.resolve()):
            RunDir(hc.runtime.output_dir).refused(f"{type(exc).__name__}: {exc}", started=started)
        debug = os.environ.get("HYDRA_FULL_ERROR") == "1"  # byzctl run --debug sets it
        if multirun:
            log.error("job %s failed: %s", hc.job.num, exc, exc_info=debug)
            return None
        if debug:
            traceback.print_exc()
        print(f"byzctl run: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    state = summary["state"]
    if state is RunState.RUNNING:  # launcher.wait=false: submitted; the job records the run
        console.print(f"submitted: SLURM job {summary['job_id']}; `byzctl status {out.parent}` follows it")
        console.print(f"run files: {out}")
        return None
    acc = summary.get("test_accuracy")
    figures = f"test accuracy {acc:.4f}, loss {summary['test_loss']:.4f}" if acc is not None else "no evaluation"
    console.print(f"[bold]{state}[/bold] after {summary['rounds_completed']} rounds in {summary['wall_seconds']:.1f}s: {figures}")
    if summary.get("reason"):
        console.print(f"reason: {summary['reason']}")
    console.print(f"run files: {out}")
    if state is RunState.INTERRUPTED and multirun:  # Ctrl-C stops the sweep, not only its job
        console.print(f"sweep interrupted at job {hc.job.num}; run it again into the same hydra.sweep.dir to skip what completed")
        sys.exit(state.exit_code)
    if state is not RunState.COMPLETED and not multirun:
        sys.exit(state.exit_code)
    return acc


def _launch(exp: Any, out: Path, console: Any, resume: bool) -> dict[str, Any]:
    """Start the run with its launcher (config/launchers.py); the summary of how it ended."""
    from byzctl.config.launchers import LauncherKind, MonitorPlace
    from byzctl.launch.local import LocalLauncher
    from byzctl.launch.rundir import RunDir

    kind = exp.launcher.name
    if kind is LauncherKind.slurm:
        from byzctl.launch import slurm

        slurm.check(exp, exp.launcher, out.resolve())
        if exp.launcher.monitor is MonitorPlace.job:
            return slurm.submit_only(exp, RunDir(out), console, resume=resume)
        return slurm.SlurmRun(exp, RunDir(out), console, resume=resume).run()
    if kind is LauncherKind.ray:
        from byzctl.launch.ray import RayRun

        return RayRun(exp, RunDir(out), console, resume=resume).run()
    return LocalLauncher(exp, RunDir(out), console, resume=resume).run()


def _engine_keys(cfg: DictConfig, out: Path) -> None:
    """security=curve without security.keys under SLURM or Ray: key pairs for every node
    and the monitor, generated into the run directory (`keys/`, secrets mode 600), which
    the run then uses."""
    from byzctl.config.launchers import launcher_kind

    security = cfg.get("security")
    if not launcher_kind(cfg.get("launcher")).engine or security is None or security.get("name") != "curve" or security.get("keys"):
        return
    from byzctl.transport.keys import generate

    folder = out / "keys"
    generate(folder, int(cfg.nodes.honest) + int(cfg.nodes.byzantine) + 1, force=True)
    cfg.security.keys = str(folder.resolve())


def _completed_before(out: Path, config_hash: str) -> dict | None:
    """The summary of a job that already completed here with the same config (a re-run
    sweep into the same hydra.sweep.dir skips it)."""
    from byzctl.jsonio import read_json

    try:
        run, summary = read_json(out / "run.json"), read_json(out / "summary.json")
    except (OSError, ValueError):
        return None
    if run.get("state") == RunState.COMPLETED and run.get("config_hash") == config_hash:
        return summary
    return None


def _resume_target(path: Path) -> tuple[Path, DictConfig]:
    """The run directory to continue and the config it ran with."""
    from byzctl.config.compose import load_resolved
    from byzctl.errors import ConfigError

    resolved = path / "config.yaml"
    if not resolved.is_file():
        raise ConfigError(f"resume={path}: not a byzctl run directory (no config.yaml)")
    return path, load_resolved(resolved, f"resume={path}")


def _resume_checkpoint(path: Path) -> Path:
    """The checkpoint a resume of `path` continues from: the newest intact one, saying
    which damaged ones it skipped. Refuses (ConfigError, before anything is written)
    when there is none, or none intact."""
    from byzctl.errors import ConfigError
    from byzctl.launch.checkpoints import intact_checkpoint

    folder = path / "checkpoints"
    try:
        found = intact_checkpoint(folder)
    except ConfigError as exc:
        raise ConfigError(f"resume={path}: {exc}; nothing was changed") from None
    if found is None:
        raise ConfigError(f"resume={path}: no checkpoint in {folder}; nothing was changed")
    chosen, damaged = found
    for bad, why in damaged:
        log.warning("resume=%s: checkpoint %s is damaged (%s); falling back to %s", path, bad.name, why, chosen.name)
    return chosen


def hydra_entry() -> None:
    register()
    hydra.main(version_base=None, config_path="pkg://byzctl.conf", config_name="config")(run)()
