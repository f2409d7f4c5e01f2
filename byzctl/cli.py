"""The `byzctl` command: a thin dispatcher over subcommands.

`byzctl run [overrides]` hands argv to `@hydra.main`, so Hydra's whole override
grammar, `-m` sweeps, `--cfg job`, `--help` and shell completion work. The other
subcommands use the compose API.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

USAGE = """usage: byzctl <command> [args]

commands:
  run [overrides]          run an experiment (Hydra: -m sweeps, --cfg job, --help)
  node --id N [overrides]  run one node of a run on this host
  list KIND [--json]       available aggregators|preaggs|attacks|topologies|graphs|datasets|models|devices|security|loggers
  bench WHAT [--json]      benchmarks: aggregators, transport, rounds, scale
  report DIR               tables and plots of a run or a sweep
  status [DIR] [--json]    runs under outputs/ with their state
  doctor [--json]          check torch/CUDA, ZeroMQ/CURVE, bundled data, ports
  keys gen DIR --nodes N   CURVE key pairs for a secured cluster
  serve [--db URL]         training sessions over HTTP: API, accounts, dashboard (serve extra)
  users add NAME           an account of byzctl serve (password from stdin or a prompt)
  agents token             an enrolment token for byzctl agent
  agent --server URL ...   a long-lived peer that runs sessions' nodes
  --version                print the version
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "--version":
        from byzctl import __version__

        print(f"byzctl {__version__}")
        return 0
    handlers = {"run": cmd_run, "node": cmd_node, "list": cmd_list, "bench": cmd_bench}
    if cmd in MODULES:
        handlers[cmd] = _module_main(MODULES[cmd])
    if cmd in SERVICE:
        handlers[cmd] = _module_main("byzctl.service.cli", cmd)
    if cmd not in handlers:
        print(f"byzctl: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    from byzctl.errors import ByzctlError

    try:
        return handlers[cmd](rest)
    except BrokenPipeError:  # `byzctl list ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ByzctlError as exc:
        if _debug(rest):
            import traceback

            traceback.print_exc()
        print(f"byzctl {cmd}: error: {exc}", file=sys.stderr)
        return exc.exit_code


MODULES = {
    "report": "byzctl.report",
    "status": "byzctl.status",
    "doctor": "byzctl.doctor",
    "keys": "byzctl.transport.keys",
}
"""Subcommands implemented by a module's `main(argv) -> int`."""

SERVICE = ("serve", "users", "agents", "agent")
"""Subcommands of byzctl.service.cli, each its function of the same name."""


def _module_main(module: str, function: str = "main"):  # type: ignore[no-untyped-def]
    def handler(rest: list[str]) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), function)(rest))

    return handler


def _debug(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("HYDRA_FULL_ERROR") == "1"


# -- run ------------------------------------------------------------------------------
INSPECT_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")
"""`byzctl run` flags that only print (no run, so no fork server to start)."""


def cmd_run(rest: list[str]) -> int:
    engine = any(a in ("launcher=slurm", "launcher=ray") for a in rest)  # its nodes run elsewhere
    if not engine and not any(a.split("=")[0] in INSPECT_FLAGS for a in rest):
        from byzctl.launch.hosts import warm_up

        warm_up()  # the fork server imports torch while this process imports Hydra and composes
    from byzctl.config.compose import normalize_overrides
    from byzctl.launch import app

    if "--debug" in rest:
        rest = [a for a in rest if a != "--debug"]
        os.environ["HYDRA_FULL_ERROR"] = "1"
    rest = _resume_in_place(rest)
    _check_output_dir(rest)
    rest = [*_cluster_settings(rest), *rest]
    # Hydra reads sys.argv; completion reads COMP_LINE: drop the subcommand word from both.
    sys.argv = [f"{Path(sys.argv[0]).name} run", *normalize_overrides(rest)]
    if "COMP_LINE" in os.environ:
        os.environ["COMP_LINE"] = os.environ["COMP_LINE"].replace(" run ", " ", 1)
    try:
        app.hydra_entry()
    except SystemExit as exc:
        # Hydra exits 1 on a bad override or config before any job started: that is bad input.
        if exc.code == 1 and not app.STARTED:
            return 2
        raise
    return 0


def _cluster_settings(args: list[str]) -> list[str]:
    """Overrides from a seeds' cluster file's `training`/`aggregation`/`attack_scale`
    keys; a key set on the command line wins (a group set there drops the file's
    parameters of that group). Each choice is printed, and lands in .hydra/overrides.yaml."""
    from byzctl.topology.cluster import settings

    path = next((a.split("=", 1)[1] for a in args if a.startswith("cluster=")), "")
    if not path or "," in path or not Path(path).expanduser().is_file():
        return []  # a sweep over files, or a missing file (Experiment names it)
    typed = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    out = []
    for key, value, where in settings(path):
        group = key.split(".")[0]
        if key in typed or (key != group and group in typed):
            print(f"byzctl run: {path}: {where}={value} not applied: the command line sets {key if key in typed else group}", file=sys.stderr)
            continue
        print(f"byzctl run: {path}: {where}={value} -> {key}={value}", file=sys.stderr)
        out.append(f"{key}={value}")
    return out


def _override(args: list[str], *keys: str) -> str | None:
    """The value the last `key=value` among `args` gives one of `keys` (quotes dropped)."""
    found = None
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in keys:
            found = value.strip("'\"")
    return found


def _multirun(args: list[str]) -> bool:
    return "-m" in args or "--multirun" in args


def _resume_in_place(args: list[str]) -> list[str]:
    """`resume=DIR` runs in DIR itself: Hydra's run dir becomes DIR (so a resume leaves no
    stray outputs/<date>/<time>/ behind) and Hydra's `.hydra/` record is not written over
    the run's own. An explicit hydra.run.dir, a sweep, or a DIR that is not a run
    directory (launch/app.py refuses it) keep Hydra's own directory."""
    resume = _override(args, "resume")
    if not resume or _multirun(args) or _override(args, "hydra.run.dir") is not None:
        return args
    if not (Path(resume) / "config.yaml").is_file():
        return args
    return [*args, f"hydra.run.dir={resume}", "hydra.output_subdir=null"]


def _check_output_dir(args: list[str]) -> None:
    """hydra.run.dir (hydra.sweep.dir with -m) can be created: its nearest existing
    ancestor is a writable directory. Hydra would otherwise fail creating it with a
    traceback. Skipped for --cfg, --help and other flags that write nothing."""
    from byzctl.errors import ConfigError

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return
    key = "hydra.sweep.dir" if _multirun(args) else "hydra.run.dir"
    value = _override(args, key) or "outputs/..."  # the default: outputs/<date>/<time>
    static = value.split("${")[0].removesuffix("...")  # interpolations resolve later
    probe = Path(static or ".").absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={value}: {probe} is a file, not a directory; the run's files cannot go there")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={value}: cannot create the run directory: {probe} is not writable (read-only or no permission)")


# -- node -----------------------------------------------------------------------------
def cmd_node(rest: list[str]) -> int:
    p = argparse.ArgumentParser(prog="byzctl node", description="Run one node of a run on this host. Without --resolved it "
                                "takes the run's config from the coordinator named by cluster=<file>.")
    p.add_argument("--id", type=int, help="this node's id (byzctl's numbering: ps server 0, workers 1..n)")
    p.add_argument("--role", choices=["server", "worker"], help="ps, as the seeds: --role server is node 0; --role worker needs --worker-id")
    p.add_argument("--worker-id", type=int, help="ps worker id as the cluster file numbers it (files numbering workers from 0 are shifted by one)")
    p.add_argument("--node-type", "--worker-type", dest="node_type", choices=["honest", "byzantine"],
                   help="what this node should be; refused unless the run plans it so")
    p.add_argument("--control", help="the monitor's endpoint (set by the launcher)")
    p.add_argument("--run-id", default="", help="the run's id (set by the launcher)")
    p.add_argument("--resolved", help="a resolved config file (set by the launcher)")
    p.add_argument("--run-dir", help="the run directory, when the launcher is on this host (set by the launcher)")
    p.add_argument("--state-dir", help="where this node saves its state if the coordinator dies (default: the current directory)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("overrides", nargs="*", help="host settings (cluster=, security=, security.keys=); other overrides must agree with the run's")
    args = p.parse_args(rest)
    from byzctl.config.compose import compose, load_resolved
    from byzctl.config.experiment import Experiment
    from byzctl.errors import ConfigError
    from byzctl.node.coordinator import fetch_config, given_overrides
    from byzctl.node.main import run_node
    from byzctl.topology.cluster import monitor_endpoint, node_ids

    if args.resolved:
        cfg = load_resolved(args.resolved, "--resolved")
    else:
        cfg = compose(args.overrides)
    cluster = cfg.get("cluster")
    node_id = _node_id(args, cluster)
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s %(levelname)s node{node_id}: %(message)s")
    control = args.control
    if not control:
        if not cluster:
            raise ConfigError("byzctl node needs cluster=<file> (where the monitor and the nodes live)")
        control = monitor_endpoint(cluster)
    if not args.resolved:
        Experiment.from_cfg(cfg, placed=False)  # this host's own overrides, before asking the monitor
        if cluster and node_id not in (ids := node_ids(cluster)):
            raise ConfigError(f"--id {node_id} is not a node of this run; the cluster file {cluster!r} places ids {ids}")
        cfg = fetch_config(cfg, given_overrides(args.overrides, cfg), node_id, control)
    exp = Experiment.from_cfg(cfg)
    _check_node_type(exp, node_id, args)
    return run_node(exp, node_id, control, args.run_id, run_dir=args.run_dir, state_dir=args.state_dir)


def _node_id(args: argparse.Namespace, cluster: str | None) -> int:
    from byzctl.errors import ConfigError
    from byzctl.topology.cluster import node_id_of_worker

    if args.role == "server":
        if args.id not in (None, 0) or args.worker_id is not None:
            raise ConfigError(f"--role server is node 0; it takes no --id {args.id} / --worker-id {args.worker_id}")
        return 0
    if args.worker_id is not None:
        if args.id is not None:
            raise ConfigError(f"give --id {args.id} or --worker-id {args.worker_id}, not both")
        if not cluster:
            raise ConfigError("--worker-id numbers workers as a cluster file does: it needs cluster=<file>")
        return node_id_of_worker(cluster, args.worker_id)
    if args.role == "worker" or args.id is None:
        raise ConfigError("byzctl node needs --id N (or --role server, or --role worker --worker-id K)")
    return int(args.id)


def _check_node_type(exp: object, node_id: int, args: argparse.Namespace) -> None:
    """--node-type / --worker-type (the seeds' flags) must agree with the run's plan."""
    from byzctl.config.experiment import Experiment
    from byzctl.errors import ConfigError
    from byzctl.topology.base import Role

    assert isinstance(exp, Experiment)
    plan = {s.id: s for s in exp.plan()}
    spec = plan.get(node_id)
    if spec is None:
        return  # run_node names the valid ids
    if (args.role or args.worker_id is not None) and exp.topology.name != "ps":
        raise ConfigError(f"--role/--worker-id are for topology=ps; this run is topology={exp.topology.name}: use --id")
    if args.role == "worker" and spec.role is not Role.worker:
        raise ConfigError(f"--role worker, but node {node_id} is the run's {spec.role.value}")
    if args.node_type is not None and spec.role in (Role.worker, Role.peer):
        planned = "byzantine" if spec.byzantine else "honest"
        if args.node_type != planned:
            raise ConfigError(f"--node-type {args.node_type}, but the run plans node {node_id} {planned} "
                              f"(nodes.honest={exp.honest}, nodes.byzantine={exp.byzantine}; honest ids come first)")


# -- list -----------------------------------------------------------------------------
def cmd_list(rest: list[str]) -> int:
    from byzctl.catalog import KINDS, describe

    p = argparse.ArgumentParser(prog="byzctl list", description="List what a config group offers.")
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("--json", action="store_true", help="a JSON array of {name, group, doc, params}")
    args = p.parse_args(rest)
    entries = describe(args.kind)
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"{args.kind} ({KINDS[args.kind]}=<name>)", title_justify="left")
    t.add_column("name", style="bold")
    t.add_column("parameters (default)")
    t.add_column("description")
    for e in entries:
        params = ", ".join(f"{k}={v['default']}" for k, v in e["params"].items())
        t.add_row(Text(e["name"]), Text(params), Text(e["doc"]))  # Text: "[lo, hi]" in a doc is not markup
    Console().print(t)
    return 0


# -- bench ----------------------------------------------------------------------------
def cmd_bench(rest: list[str]) -> int:
    import importlib

    p = argparse.ArgumentParser(prog="byzctl bench", usage="byzctl bench WHAT [--json] [overrides]",
                                description="Benchmarks, each against its floor; `byzctl bench WHAT --help` for its options.")
    p.add_argument("what", choices=["aggregators", "transport", "rounds", "scale"], help="what to measure")
    p.parse_args(rest[:1])  # an unknown WHAT exits 2 naming it and the choices
    module = importlib.import_module(f"byzctl.bench.{rest[0]}")
    return int(module.main(rest[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
