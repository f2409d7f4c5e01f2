"""`launcher=ray`: the run's host processes as Ray actors in one placement group.

The launcher connects to the Ray cluster (`launcher.address`), reserves one bundle per
host process (`launcher.cpus_per_actor`, `launcher.gpus_per_actor`) in a placement
group (`launcher.strategy`, SPREAD by default: across the cluster's machines), and
starts one actor per bundle. Each actor runs `launch/task.py` `serve` with its rank:
it binds TCP on its machine at the address it reaches the monitor from and joins, so
nodes talk over ZeroMQ as ever; Ray only places and starts them. The monitor, the
supervision and the run directory stay here (LocalLauncher). An actor that dies is a
node host that died: its nodes are lost exactly like a killed local process.

The actors do not need this machine's file system: the resolved config (and with
security=curve the keys) travel with the call; each actor logs into the run directory
if its machine shares it, else into a temporary directory there (the path is in its
first log line and in run.json).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from byzctl.config.experiment import Experiment
from byzctl.config.launchers import RayLauncher
from byzctl.errors import ConfigError, PeerError
from byzctl.launch.local import LocalLauncher
from byzctl.launch.monitor import Monitor
from byzctl.launch.rundir import RunDir
from byzctl.launch.task import TaskSpec, log_path
from byzctl.topology import packing
from byzctl.transport.curve import check_plaintext

log = logging.getLogger("byzctl")

INSTALL = "pip install 'byzctl[ray]'"
LOCAL_OBJECT_STORE_BYTES = 200 * 2**20
"""launcher.address=local: the private cluster's object store (byzctl passes no tensors
through Ray: ZeroMQ carries them)."""
KILLED = -9
"""The exit code an actor that died is reported with (Ray gives no signal number)."""


def import_ray() -> Any:
    """The ray module, or ConfigError (exit 2) with the install line."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"launcher=ray needs the ray package, which is not installed: {INSTALL}") from None
    return ray


class HostProcess:
    """A Ray actor carrying one host process of the run (made remote by `RayRun`)."""

    def address(self) -> str:
        import ray

        return str(ray.util.get_node_ip_address())

    def serve(self, spec: dict[str, Any], rank: int, config: str, keys: dict[str, bytes] | None) -> int:
        from byzctl.launch.task import serve

        spec = dict(spec)
        keys_dir = spec.pop("keys_dir", "")
        task = TaskSpec(**spec)
        here = Path(tempfile.mkdtemp(prefix="byzctl-actor-"))
        resolved = here / "config.yaml"
        if keys:  # security=curve: this actor's copy of the key files, secrets mode 600
            for rel, data in keys.items():
                path = here / "keys" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                os.chmod(path, 0o600)
            config = config.replace(keys_dir, str(here / "keys"))
        resolved.write_text(config)
        shared = (Path(task.run_dir) / "nodes").is_dir()
        log_file = log_path(task, rank) if shared else str(here / Path(log_path(task, rank)).name)
        if not shared:
            task = TaskSpec(**{**spec, "run_dir": str(here)})
            (here / "nodes").mkdir()
        return serve(task, rank, resolved=str(resolved), log_file=log_file)


class RayRun(LocalLauncher):
    """The run's monitor and supervision here; its host processes are Ray actors."""

    def __init__(self, exp: Experiment, rundir: RunDir, console: Console | None = None, resume: bool = False):
        super().__init__(exp, rundir, console, resume)
        assert isinstance(exp.launcher, RayLauncher)
        self.cfg: RayLauncher = exp.launcher
        self.hosts_plan = packing.pack(exp.plan(), exp.cfg.get("processes", packing.AUTO))
        self.rank_of = {node_id: rank for rank, group in enumerate(self.hosts_plan) for node_id in group}
        self.ray = import_ray()
        self.actors: list[Any] = []
        self.refs: list[Any] = []
        self.codes: dict[int, int] = {}
        self.pg: Any = None
        self._connect()
        try:
            local = "127.0.0.1" if self.cfg.address == "local" or _on_loopback(self.cfg.address) else None  # a cluster on this machine only
            self.address = self.cfg.monitor_host or local or str(self.ray.util.get_node_ip_address())
            check_plaintext([f"tcp://{self.address}:0"], str(exp.security.name.value))
            self._check_resources()
        except BaseException:
            self.ray.shutdown()
            raise

    def _connect(self) -> None:
        ray, cfg = self.ray, self.cfg
        kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False, "configure_logging": False}
        if cfg.address == "local":  # a private cluster on loopback, sized for this run's actors
            kwargs.update(num_cpus=max(os.cpu_count() or 1, int(len(self.hosts_plan) * cfg.cpus_per_actor + 0.999)),
                          num_gpus=0 if not cfg.gpus_per_actor else None, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                          _node_ip_address="127.0.0.1")
        else:
            _probe(cfg.address)
            kwargs["address"] = cfg.address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise ConfigError(f"launcher.address={cfg.address}: no Ray cluster answers there: {str(exc).strip().splitlines()[0]}") from None

    def _check_resources(self) -> None:
        """More actors than the cluster can ever hold: refused now, naming both."""
        have = self.ray.cluster_resources()
        n = len(self.hosts_plan)
        need = {"CPU": n * self.cfg.cpus_per_actor, "GPU": n * self.cfg.gpus_per_actor}
        for key, amount in need.items():
            if amount > have.get(key, 0.0) + 1e-9:
                per = "launcher.cpus_per_actor" if key == "CPU" else "launcher.gpus_per_actor"
                raise ConfigError(f"launcher=ray: {n} host processes x {per}={getattr(self.cfg, per.split('.')[1])} need {amount:g} {key}s; "
                                  f"the Ray cluster at launcher.address={self.cfg.address} has {have.get(key, 0.0):g}")

    # -- hooks of LocalLauncher ----------------------------------------------------------
    def monitor_bind(self) -> str:
        return f"tcp://{self.address}:*"

    def host_groups(self) -> list[list[int]]:
        return [list(g) for g in self.hosts_plan]

    def spawn(self, monitor: Monitor, resolved: Path) -> None:
        ray = self.ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": self.cfg.cpus_per_actor, **({"GPU": self.cfg.gpus_per_actor} if self.cfg.gpus_per_actor else {})}
        self.pg = placement_group([dict(bundle) for _ in self.hosts_plan], strategy=self.cfg.strategy)
        try:
            ray.get(self.pg.ready(), timeout=self.cfg.placement_timeout)
        except ray.exceptions.GetTimeoutError:
            raise PeerError(f"the Ray cluster did not grant {len(self.hosts_plan)} bundles of {bundle} ({self.cfg.strategy}) "
                            f"within launcher.placement_timeout={self.cfg.placement_timeout}s") from None
        keys_dir = str(self.exp.security.keys) if self.exp.keyring is not None else ""
        keys = _read_keys(Path(keys_dir)) if keys_dir else None
        spec = {"hosts": self.hosts_plan, "control": self.control, "run_id": self.run_id,
                "run_dir": str(self.rundir.path.resolve()), "resolved": str(resolved.resolve())}
        config = resolved.read_text()
        actor_cls = ray.remote(max_restarts=0, max_task_retries=0)(HostProcess)
        for rank in range(len(self.hosts_plan)):
            strategy = PlacementGroupSchedulingStrategy(placement_group=self.pg, placement_group_bundle_index=rank)
            actor = actor_cls.options(num_cpus=self.cfg.cpus_per_actor, num_gpus=self.cfg.gpus_per_actor,
                                      scheduling_strategy=strategy, name=f"byzctl-{self.run_id}-{rank}").remote()
            self.actors.append(actor)
            self.refs.append(actor.serve.remote({**spec, "keys_dir": keys_dir}, rank, config, keys))
        self.rundir.update(ray={"address": self.cfg.address, "actors": len(self.actors), "placement_group": self.pg.id.hex(),
                                "strategy": self.cfg.strategy})
        self.console.print(f"Ray: {len(self.actors)} actors in placement group {self.pg.id.hex()[:12]}; run files: {self.rundir.path}")

    def host_code(self, rank: int) -> int | None:
        """The exit code of actor `rank`'s host process; None while it runs; KILLED if the actor died."""
        if rank in self.codes:
            return self.codes[rank]
        ready, _ = self.ray.wait([self.refs[rank]], timeout=0)
        if not ready:
            return None
        try:
            self.codes[rank] = int(self.ray.get(ready[0]))
        except self.ray.exceptions.RayActorError as exc:
            self.codes[rank] = KILLED
            for node_id in self.hosts_plan[rank]:
                self._note(node_id, f"the Ray actor of host process {rank} died: {str(exc).splitlines()[0][:300]}")
        except self.ray.exceptions.RayError as exc:  # the host process raised: a failed node, with its cause
            self.codes[rank] = 1
            for node_id in self.hosts_plan[rank]:
                self._note(node_id, f"host process {rank} failed: {str(exc).strip().splitlines()[-1][:300]}")
        return self.codes[rank]

    def outcome(self, node_id: int, monitor: Monitor) -> int | None:
        """As LocalLauncher's: the host's exit code, but a node's own report where its host
        carries others (or has not exited yet)."""
        final = monitor.nodes[node_id].final
        rank = self.rank_of[node_id]
        code = self.host_code(rank) if self.refs else None
        if final and (code is None or len(self.hosts_plan[rank]) > 1):
            return 1 if final.get("state") == "failed" else 0
        return code

    def stopping(self, monitor: Monitor) -> bool:
        return any(self.host_code(r) is None for r in range(len(self.refs)))

    def reap(self) -> dict[int, int | None]:
        """Kill the actors still running, remove the placement group, disconnect (and stop
        the private cluster of launcher.address=local): nothing outlives the launcher."""
        ray = self.ray
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(self.host_code(r) is None for r in range(len(self.refs))):
            time.sleep(0.1)  # hosts that were told to stop exit on their own
        for rank, actor in enumerate(self.actors):
            if self.host_code(rank) is None:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
                self.codes[rank] = KILLED
        if self.pg is not None:
            with contextlib.suppress(Exception):
                ray.util.remove_placement_group(self.pg)
        with contextlib.suppress(Exception):
            ray.shutdown()
        return {node_id: self.codes.get(rank) for rank, group in enumerate(self.hosts_plan) for node_id in group}


PROBE_TIMEOUT_S = 5.0
"""How long the head's port gets to accept a connection: ray.init waits minutes on an
address where nothing answers."""


def _probe(address: str) -> None:
    """A host:port address (or ray://host:port) must accept a TCP connection: else
    ConfigError naming it, before ray.init waits minutes on it."""
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return  # auto: ray finds the cluster this machine runs, or says there is none
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"launcher.address={address}: no Ray cluster answers there ({exc or 'timed out'})") from None


def _on_loopback(address: str) -> bool:
    """Whether the head's address (host:port, ray://host:port) is this machine's loopback."""
    host = address.split("://", 1)[-1].rpartition(":")[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _read_keys(folder: Path) -> dict[str, bytes]:
    """The key files of `folder` (public/*.key, private/*.key_secret) by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
