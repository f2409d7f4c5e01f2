"""The typed schema of a run's config and its registration with Hydra.

Every option of a config group is a dataclass (the "thin config class" beside its
code); `register()` finds them by walking the packages, so adding a rule is adding
a module and a YAML file, never editing a central table. Each `conf/<group>/<name>.yaml`
starts from its schema (`/schema/<group>/<name>`), so a typo or a wrong type fails
at compose time naming the key.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from byzctl.aggregators.base import Aggregator
from byzctl.attacks.base import Attack
from byzctl.config.launchers import LAUNCHERS, LauncherKind  # noqa: F401 - LauncherKind: its home until issue 14
from byzctl.data.base import Dataset
from byzctl.learning.trainer import MomentumInit
from byzctl.loggers.base import Logger
from byzctl.models.base import ModelConfig
from byzctl.preagg.base import Preagg
from byzctl.topology.base import Topology
from byzctl.topology.graph import Graph, GraphKind


class DeviceKind(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@dataclass(kw_only=True)
class Device:
    """Config of `device=auto|cpu|cuda`: where tensors live; aggregation kernels follow."""

    _target_: str = "byzctl.config.schema.Device"
    name: DeviceKind = DeviceKind.auto
    """auto picks cuda when available, else cpu."""
    threads: int = 1
    """torch intra-op threads per node process (nodes share the machine's cores)."""

    def resolve(self) -> str:
        import torch

        from byzctl.errors import ConfigError

        if self.name == DeviceKind.cuda and not torch.cuda.is_available():
            raise ConfigError("device=cuda but torch.cuda.is_available() is False; use device=cpu or device=auto")
        if self.name == DeviceKind.auto:
            return "cuda" if torch.cuda.is_available() else "cpu"
        return str(self.name.value)


class SecurityKind(str, Enum):
    auto = "auto"
    """Plaintext on loopback and ipc only; refuse plaintext TCP beyond this machine."""
    none = "none"
    """Plaintext everywhere: an explicit opt-out."""
    curve = "curve"
    """CURVE on every socket; only allow-listed keys may connect; ids come from keys."""


@dataclass(kw_only=True)
class Security:
    """Config of `security=auto|none|curve`."""

    _target_: str = "byzctl.config.schema.Security"
    name: SecurityKind = SecurityKind.auto
    """auto (default), none (explicit plaintext) or curve."""
    keys: str | None = None
    """security=curve: the directory made by `byzctl keys gen` (this host's copy)."""

    def __post_init__(self) -> None:
        from byzctl.errors import ConfigError

        if self.name == SecurityKind.curve and not self.keys:
            raise ConfigError("security=curve needs security.keys=DIR (create it with: byzctl keys gen DIR --nodes N)")


@dataclass
class Nodes:
    honest: int = 4
    """Honest nodes (workers in ps, peers otherwise)."""
    byzantine: int = 1
    """Byzantine nodes, running `attack`."""


@dataclass
class Config:
    """A whole run. Group nodes are typed by their option's schema at compose time."""

    topology: Any = MISSING
    aggregator: Any = MISSING
    preagg: dict[str, Any] = field(default_factory=dict)
    """Pre-aggregators applied in this order before the aggregator."""
    attack: Any = MISSING
    dataset: Any = MISSING
    model: Any = MISSING
    device: Any = MISSING
    graph: Any = MISSING
    """Who talks to whom in decentralized topologies (ignored by ps)."""
    security: Any = MISSING
    """Transport security: auto, none or curve."""
    logger: Any = MISSING
    """Where metrics.jsonl rows also go: none, tensorboard or mlflow (not hashed)."""
    nodes: Nodes = field(default_factory=Nodes)
    rounds: int = 300
    """Training rounds (server steps in ps; local iterations otherwise)."""
    batch_size: int = 32
    """Samples per honest gradient."""
    lr: float = 0.1
    """Learning rate of the model update."""
    momentum: float = 0.9
    """Worker momentum beta: m <- beta*m + (1 - beta)*g is what honest nodes send."""
    momentum_init: MomentumInit = MomentumInit.gradient
    """The first momentum: gradient (m_1 = g_1, the default) or zero (m_0 = 0, so
    m_1 = (1 - beta) g_1, as ByzFL)."""
    weight_decay: float = 1e-4
    """L2 penalty applied with the update."""
    seed: int = 0
    """Seeds data splits, model init, batches and attacks."""
    eval_every: int = 25
    """Evaluate on the held-out test split every k rounds (and at the last round)."""
    name: str = "byzctl"
    """A label for the run, shown in status and reports."""
    checkpoint_every: int = 50
    """Write a checkpoint every k rounds (0: only at the end and on interrupt)."""
    keep_checkpoints: int = 3
    """How many checkpoints to keep; older ones are pruned."""
    resume: str | None = None
    """Continue the run in this directory from its last checkpoint (its config.yaml is used)."""
    launcher: Any = MISSING
    """local: spawn every node here; remote: nodes join from other hosts (needs cluster);
    slurm: one SLURM job runs them; ray: Ray actors run them (config/launchers.py)."""
    cluster: str | None = None
    """Path of a cluster file (YAML or JSON) placing nodes on hosts and ports."""
    local_nodes: list[int] | None = None
    """launcher=remote: ids to start on this host; null: those the cluster file places here."""
    processes: str = "auto"
    """How many host processes carry this host's nodes: auto (one per node up to 8 nodes,
    else two per core, the ps server or hub relay alone), per_node, or a number.
    Results do not depend on it (not hashed)."""
    memory_check: bool = True
    """Refuse to launch when the node processes this host starts (about 400 MB each) do not
    fit in its available memory; false launches anyway (not hashed)."""


GROUPS: dict[str, tuple[str, type]] = {
    "aggregator": ("byzctl.aggregators", Aggregator),
    "preagg": ("byzctl.preagg", Preagg),
    "attack": ("byzctl.attacks", Attack),
    "dataset": ("byzctl.data", Dataset),
    "model": ("byzctl.models", ModelConfig),
    "topology": ("byzctl.topology", Topology),
    "logger": ("byzctl.loggers", Logger),
}
"""Config group -> (package holding its options, their base class)."""


def _import_package(name: str) -> None:
    pkg = importlib.import_module(name)
    for mod in pkgutil.iter_modules(pkg.__path__, prefix=f"{name}."):
        importlib.import_module(mod.name)


def _subclasses(base: type) -> list[type]:
    out: list[type] = []
    todo: list[type] = list(base.__subclasses__())
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def options(group: str) -> dict[str, type]:
    """Every option of a group by name: built-in modules and installed plugins."""
    if group == "device":
        return {k.value: Device for k in DeviceKind}
    if group == "graph":
        return {k.value: Graph for k in GraphKind}
    if group == "security":
        return {k.value: Security for k in SecurityKind}
    package, base = GROUPS[group]
    _import_package(package)
    load_plugins()
    found: dict[str, type] = {}
    for cls in _subclasses(base):
        name = next((fl.default for fl in dataclasses.fields(cls) if fl.name == "name"), "")
        if not isinstance(name, str):
            continue
        if name:
            found[name] = cls
    return dict(sorted(found.items()))


_plugins_loaded = False


def load_plugins() -> None:
    """Import third-party components: the `byzctl.plugins` entry-point group and the
    `byzctl_plugins` namespace package. Importing them defines their config classes."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="byzctl.plugins"):
        hook = ep.load()
        if callable(hook):
            hook()
    try:
        import byzctl_plugins
    except ImportError:
        return
    for mod in pkgutil.iter_modules(byzctl_plugins.__path__, prefix="byzctl_plugins."):
        importlib.import_module(mod.name)


_registered = False


def register() -> None:
    """Store the run schema and every option's schema in Hydra's ConfigStore."""
    global _registered
    if _registered:
        return
    _registered = True
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="schema/device", name="device", node=Device)
    cs.store(group="schema/graph", name="graph", node=Graph)
    cs.store(group="schema/security", name="security", node=Security)
    for kind, cls in LAUNCHERS.items():
        cs.store(group="schema/launcher", name=kind.value, node=cls)
    builtin = _builtin_option_files()
    for group in list(GROUPS):
        for name, cls in options(group).items():
            cs.store(group=f"schema/{group}", name=name, node=cls)
            if name not in builtin.get(group, set()):
                # A plugin without a YAML file: its schema is the option itself.
                package = f"{group}.{name}" if group == "preagg" else group
                cs.store(group=group, name=name, node=cls, package=package)


def _builtin_option_files() -> dict[str, set[str]]:
    from importlib.resources import files

    root = files("byzctl.conf")
    return {
        g: {p.name[: -len(".yaml")] for p in (root / g).iterdir() if p.name.endswith(".yaml")}
        for g in GROUPS
        if (root / g).is_dir()
    }
