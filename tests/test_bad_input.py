"""Bad input, typed as a user would: one clear message naming the bad value, exit code 2,
no traceback (unless --debug), and for `byzctl run` nothing launched.

`byzctl run` goes through @hydra.main, which initialises once per process, so its cases
run as subprocesses (a few in the fast suite, the rest marked slow); the other commands
are called in process through `byzctl.cli.main`, which is what the console script runs.
Cases where byzctl is wrong today are strict xfails naming the bug.
"""

from __future__ import annotations

import signal
import socket
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from conftest import byzctl

from byzctl.cli import main

slow = pytest.mark.slow


def _bug(why: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"bug: {why}")


def _ps_cluster(server_port: int = 9000, monitor_port: int | None = None, dup: bool = False) -> dict:
    workers = [{"id": i, "host": "127.0.0.1", "port": 9001, "type": "byzantine" if i == 5 else "honest"} for i in range(1, 6)]
    if dup:
        workers[1]["id"] = 1
    data: dict = {"server": {"host": "127.0.0.1", "port": server_port}, "workers": workers}
    if monitor_port is not None:
        data["monitor"] = {"host": "127.0.0.1", "port": monitor_port}
    return data


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """Cluster files and CSVs the cases name as {tmp}/..."""
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(_ps_cluster()))
    (tmp_path / "dup.yaml").write_text(yaml.safe_dump(_ps_cluster(dup=True)))
    (tmp_path / "badport.yaml").write_text(yaml.safe_dump(_ps_cluster(server_port=99999)))
    (tmp_path / "broken.yaml").write_text("server: {host: [unclosed\n")
    mesh = [{"id": i, "host": "127.0.0.1", "port": 9100 + min(i, 1), "type": "byzantine" if i == 4 else "honest"} for i in range(5)]
    (tmp_path / "same_port.yaml").write_text(yaml.safe_dump({"nodes": mesh}))  # mesh peers 1..4 all on 9101
    (tmp_path / "bad.csv").write_text("a,b,label\n" + "".join(f"{i},{i + 1},{i % 2}\n" for i in range(300)) + "7,oops,1\n")
    return tmp_path


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich and Hydra wrap long lines


def _assert_clear(rc: int, text: str, expect: str) -> None:
    assert rc == 2, f"exit code {rc}, want 2:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    assert expect in _flat(text), f"the message does not name {expect!r}:\n{text[-3000:]}"


# -- byzctl run ------------------------------------------------------------------------------
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here, so device=cuda is valid")

RUN_CASES = [
    # typos, wrong types, unknown options of every group (Hydra's composition errors)
    pytest.param(["roundz=5"], "roundz", id="typo in a key"),
    pytest.param(["rounds=abc"], "'abc'", id="wrong type int"),
    pytest.param(["aggregator=krumm"], "krumm", id="unknown aggregator"),
    pytest.param(["aggregator.ff=2"], "ff", id="typo in a group key", marks=slow),
    pytest.param(["lr=abc"], "'abc'", id="wrong type float", marks=slow),
    pytest.param(["seed=1.5"], "'1.5'", id="float for int", marks=slow),
    pytest.param(["rounds=10**9"], "10**9", id="expression for int", marks=slow),
    pytest.param(["attack=nope"], "attack/nope", id="unknown attack", marks=slow),
    pytest.param(["preagg=[nope]"], "preagg/nope", id="unknown preagg", marks=slow),
    pytest.param(["dataset=nope"], "dataset/nope", id="unknown dataset", marks=slow),
    pytest.param(["model=nope"], "model/nope", id="unknown model", marks=slow),
    pytest.param(["topology=nope"], "topology/nope", id="unknown topology", marks=slow),
    pytest.param(["device=tpu"], "device/tpu", id="unknown device", marks=slow),
    pytest.param(["graph=nope"], "graph/nope", id="unknown graph", marks=slow),
    pytest.param(["launcher=cloud"], "'launcher/cloud'", id="unknown launcher", marks=slow),
    pytest.param(["dataset.partition=zipf"], "'zipf'", id="unknown partition", marks=slow),
    pytest.param(["attack.knowledge=psychic"], "'psychic'", id="unknown knowledge", marks=slow),
    pytest.param(["topology.transport=udp"], "'udp'", id="unknown transport", marks=slow),
    pytest.param(["rounds=="], "rounds==", id="override syntax", marks=slow),
    # limits of the rule and of the graph
    pytest.param(["nodes.byzantine=4"], "Got n=8, f=4", id="f too large for the rule"),
    pytest.param(["aggregator=bulyan", "nodes.byzantine=2"], "Got n=6, f=2", id="f too large for bulyan", marks=slow),
    pytest.param(["topology=mesh", "graph=ring", "nodes.byzantine=2"], "graph=ring", id="ring too sparse for f"),
    pytest.param(["topology=mesh", "graph=ring", "graph.k=10"], "Got k=10", id="ring k too large", marks=slow),
    pytest.param(["topology=mesh", "graph=erdos_renyi", "graph.p=0"], "Got p=0.0", id="erdos_renyi p=0", marks=slow),
    pytest.param(["topology=mesh", "graph=edges", "graph.edges=[[0,1]]"], "not connected", id="disconnected edges", marks=slow),
    pytest.param(["topology=mesh", "graph=edges", "graph.edges=[[0,9]]"], "[0, 9]", id="edge to no node", marks=slow),
    # training keys
    pytest.param(["rounds=-5"], "rounds=-5", id="negative rounds", marks=slow),
    pytest.param(["lr=0"], "lr=0", id="lr 0"),
    pytest.param(["attack=alie", "attack.z=nan"], "z=nan", id="alie z nan", marks=slow),
    pytest.param(["dataset=mnist", "dataset.subset=70000"], "subset=70000", id="mnist subset too large"),
    pytest.param(["lr=-0.1"], "lr=-0.1", id="negative lr", marks=slow),
    pytest.param(["momentum=1"], "momentum=1", id="momentum 1", marks=slow),
    pytest.param(["momentum=-0.1"], "momentum=-0.1", id="negative momentum", marks=slow),
    pytest.param(["batch_size=0"], "batch_size=0", id="batch size 0", marks=slow),
    pytest.param(["eval_every=0"], "eval_every=0", id="eval every 0", marks=slow),
    pytest.param(["weight_decay=-1"], "weight_decay=-1", id="negative weight decay", marks=slow),
    pytest.param(["lr=inf"], "lr=inf", id="infinite lr", marks=slow),
    pytest.param(["checkpoint_every=-1"], "checkpoint_every=-1", id="negative checkpoint interval", marks=slow),
    pytest.param(["keep_checkpoints=0"], "keep_checkpoints=0", id="keep no checkpoint", marks=slow),
    pytest.param(["device.threads=0"], "device.threads=0", id="zero threads", marks=slow),
    pytest.param(["nodes.honest=0"], "nodes.honest=0", id="no honest node", marks=slow),
    pytest.param(["nodes.byzantine=-1"], "nodes.byzantine=-1", id="negative byzantine", marks=slow),
    pytest.param(["model.hidden=[0]"], "hidden=[0]", id="empty hidden layer", marks=slow),
    pytest.param(["device=cuda"], "device=cuda", id="cuda without cuda", marks=NO_CUDA),
    # cluster files
    pytest.param(["cluster={tmp}/nope.yaml"], "nope.yaml", id="missing cluster file", marks=slow),
    pytest.param(["cluster={tmp}/dup.yaml"], "duplicate node id 1", id="duplicate node ids"),
    pytest.param(["cluster={tmp}/badport.yaml"], "bad port 99999", id="bad port", marks=slow),
    pytest.param(["cluster={tmp}/broken.yaml"], "broken.yaml", id="unparsable cluster file", marks=slow),
    pytest.param(["launcher=remote"], "cluster=<file>", id="remote without cluster", marks=slow),
    pytest.param(["topology=mesh", "cluster={tmp}/same_port.yaml"], "node 1 and node 2 both listen on 127.0.0.1:9101",
                 id="two peers on one port", marks=slow),
    pytest.param(["launcher=remote", "cluster={tmp}/ok.yaml", "local_nodes=[9]"], "local_nodes [9]", id="local node not in the run", marks=slow),
    pytest.param(["topology.host=192.0.2.1", "security=none"], "topology.host=192.0.2.1", id="host not on this machine", marks=slow),
    pytest.param(["resume={tmp}/nope"], "not a byzctl run directory", id="resume a missing run", marks=slow),
    # datasets
    pytest.param(["dataset=csv", "dataset.path={tmp}/missing.csv"], "missing.csv", id="missing csv", marks=slow),
    pytest.param(["dataset=csv", "dataset.path={tmp}/bad.csv"], "row 302, column b: 'oops'", id="bad csv", marks=slow),
    pytest.param(["dataset=csv", "dataset.path={tmp}/bad.csv", "dataset.delimiter=ab"], "delimiter='ab'", id="csv delimiter", marks=slow),
    pytest.param(["dataset=csv"], "dataset.path=FILE", id="csv without a path", marks=slow),
    pytest.param(["dataset=csv", "dataset.path={tmp}"], "Is a directory", id="csv path is a directory", marks=slow),
    pytest.param(["dataset=mnist", "dataset.root={tmp}/nope"], "nope/MNIST/raw", id="mnist files missing", marks=slow),
    pytest.param(["dataset=cifar10", "dataset.root={tmp}/nope"], "nope/cifar-10-batches-py", id="cifar10 files missing", marks=slow),
    pytest.param(["dataset=synthetic", "dataset.test_size=5000"], "test_size=5000", id="test split takes every sample", marks=slow),
    pytest.param(["dataset=synthetic", "model=cnn"], "model=cnn needs image inputs", id="cnn on vectors", marks=slow),
    # topology limits that are not checked before launch
    pytest.param(["topology.round_timeout=-1"], "round_timeout=-1", id="negative round timeout", marks=slow),
    pytest.param(["topology.max_message_mb=0", "topology.round_timeout=5"], "max_message_mb=0", id="zero message size", marks=slow),
    pytest.param(["topology.max_message_mb=0.1"], "max_message_mb=0.1 is too small for model=mlp", id="model over the message size", marks=slow),
    pytest.param(["topology.join_timeout=0"], "join_timeout=0", id="zero join timeout", marks=slow),
    pytest.param(["topology.peer_timeout=-1"], "peer_timeout=-1", id="negative peer timeout", marks=slow),
    # values that used to get through (issue 17, point 13)
    pytest.param(["weight_decay=nan"], "weight_decay=nan", id="weight decay nan"),
    pytest.param(["weight_decay=inf"], "weight_decay=inf", id="weight decay inf", marks=slow),
    pytest.param(["attack=gaussian", "attack.sigma=nan"], "sigma=nan", id="gaussian sigma nan"),
    pytest.param(["attack=gaussian", "attack.sigma=inf"], "sigma=inf", id="gaussian sigma inf", marks=slow),
    pytest.param(["seed=99999999999999999999"], "seed=99999999999999999999", id="seed beyond 64 bits"),
    pytest.param(["seed=-1"], "seed=-1", id="negative seed", marks=slow),
    pytest.param(["dataset.partition=dirichlet", "dataset.alpha=1e-300", "nodes.honest=8"], "alpha=1e-300 left nodes",
                 id="dirichlet alpha leaves nodes without data", marks=slow),
    pytest.param(["topology.peer_timeout=0.1"], "peer_timeout=0.1", id="peer timeout below the heartbeat interval", marks=slow),
    pytest.param(["topology.peer_timeout=0.9"], "heartbeat_interval=0.5", id="peer timeout below two heartbeats", marks=slow),
    pytest.param(["topology.round_timeout=0.01"], "round_timeout=0.01", id="tiny round timeout", marks=slow),
    pytest.param(["nodes.honest=500", "processes=per_node"], "502 host processes carrying 502 nodes", id="more processes than memory"),
    pytest.param(["topology=local", "nodes.honest=400", "graph=ring", "nodes.byzantine=0", "processes=per_node"], "need about 167200 MB",
                 id="more peers than memory", marks=slow),
]


@pytest.mark.parametrize("args, expect", RUN_CASES)
def test_run_rejects_bad_input_before_launching(files, args, expect):
    out = files / "run"
    args = [a.replace("{tmp}", str(files)) for a in args]
    proc = byzctl("run", *args, f"hydra.run.dir={out}", cwd=files, timeout=240)
    _assert_clear(proc.returncode, proc.stdout + proc.stderr, expect)
    assert not list(out.glob("nodes/*.log")), "a node process was started"


def _mount_read_only(path: Path) -> bool:
    """A read-only directory at `path`: a read-only tmpfs as root (root writes through
    mode bits), else mode 555. False if neither holds."""
    import os
    import subprocess

    path.mkdir()
    if os.geteuid() == 0:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True).returncode == 0
    path.chmod(0o555)
    return True


@pytest.mark.parametrize("where", ["read-only", "a file", "under a file"])
def test_run_into_a_directory_that_cannot_be_made(tmp_path, where):
    import subprocess

    ro = tmp_path / "ro"
    if where == "read-only":
        if not _mount_read_only(ro):
            pytest.skip("no read-only directory can be made here")
        target, expect = ro / "run", f"{ro} is not writable"
    else:
        (tmp_path / "f").write_text("x")
        target, expect = (tmp_path / "f") if where == "a file" else (tmp_path / "f" / "run"), f"{tmp_path / 'f'} is a file"
    try:
        proc = byzctl("run", "rounds=5", f"hydra.run.dir={target}", cwd=tmp_path, timeout=240)
        _assert_clear(proc.returncode, proc.stdout + proc.stderr, f"hydra.run.dir={target}")
        assert expect in _flat(proc.stderr), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    finally:
        if where == "read-only":
            subprocess.run(["umount", str(ro)], capture_output=True)
            ro.chmod(0o755)


def test_the_memory_check_counts_the_processes_this_host_starts_and_can_be_turned_off(compose):
    from byzctl.config.experiment import Experiment
    from byzctl.errors import ConfigError
    from byzctl.launch.preflight import (
        NODE_PROCESS_MB,
        PACKED_NODE_MB,
        check_host,
        mem_available_mb,
    )

    have = mem_available_mb()
    assert have is not None and have > 0
    many = have // NODE_PROCESS_MB + 2  # honest workers past what fits, plus the server and one Byzantine
    exp = Experiment.from_cfg(compose([f"nodes.honest={many}", "processes=per_node"]))
    with pytest.raises(ConfigError, match=f"nodes.honest={many}, nodes.byzantine=1: {many + 2} host processes carrying {many + 2} nodes need about {(many + 2) * (NODE_PROCESS_MB + PACKED_NODE_MB)} MB"):
        check_host(exp)
    check_host(Experiment.from_cfg(compose(["nodes.honest=4"])))  # the default fits
    check_host(Experiment.from_cfg(compose([f"nodes.honest={many}"])))  # packed (processes=auto), they fit
    off = Experiment.from_cfg(compose([f"nodes.honest={many}", "processes=per_node", "memory_check=false"]))
    assert off.hash == exp.hash, "memory_check is host-local: not part of the config hash"
    check_host(off)


def test_a_tiny_dirichlet_alpha_gives_whole_classes_not_nan():
    from byzctl.data.partition import partition

    labels = torch.arange(1000) % 10
    parts = partition(labels, 4, scheme="dirichlet", seed=1, alpha=1e-300)  # seed 0 leaves a node no class: refused
    joined = torch.cat(parts).sort().values
    assert torch.equal(joined, torch.arange(1000)), "the shards are not a partition of the samples"
    for p in parts:  # each class went whole to one node: the alpha -> 0 limit
        for c in labels[p].unique():
            assert (labels[p] == c).sum() == 100


def test_run_with_debug_shows_the_traceback(tmp_path):
    proc = byzctl("run", "--debug", "roundz=5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=240)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" in text and "roundz" in text


@slow
def test_hydra_full_error_shows_the_traceback(tmp_path):
    proc = byzctl("run", "roundz=5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=240, env={"HYDRA_FULL_ERROR": "1"})
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" in text and "roundz" in text


@slow
def test_run_with_debug_shows_the_traceback_of_a_byzctl_check(tmp_path):
    proc = byzctl("run", "--debug", "lr=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=240)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" in text and "lr=0" in text


def _occupied() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@slow
def test_server_port_already_in_use(tmp_path):
    busy = _occupied()
    try:
        port = busy.getsockname()[1]
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(_ps_cluster(server_port=port, monitor_port=_free_port())))
        out = tmp_path / "run"
        proc = byzctl("run", "launcher=local", f"cluster={path}", "topology.join_timeout=20", f"hydra.run.dir={out}", cwd=tmp_path, timeout=240)
        _assert_clear(proc.returncode, proc.stdout + proc.stderr, f"127.0.0.1:{port}")
        assert not list(out.glob("nodes/*.log")), "node processes were started"
        run = yaml.safe_load((out / "run.json").read_text())
        assert run["state"] == "FAILED" and f"127.0.0.1:{port}" in run["reason"]
    finally:
        busy.close()


@slow
def test_monitor_port_already_in_use(tmp_path):
    busy = _occupied()
    try:
        port = busy.getsockname()[1]
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(_ps_cluster(server_port=_free_port(), monitor_port=port)))
        out = tmp_path / "run"
        proc = byzctl("run", "launcher=local", f"cluster={path}", "topology.join_timeout=20", f"hydra.run.dir={out}", cwd=tmp_path, timeout=240)
        _assert_clear(proc.returncode, proc.stdout + proc.stderr, f"127.0.0.1:{port}")
        run = yaml.safe_load((out / "run.json").read_text())
        assert run["state"] == "FAILED" and f"127.0.0.1:{port}" in run["reason"]
    finally:
        busy.close()


def test_monitor_losing_the_port_race_starts_nothing(tmp_path):
    """The ports are probed before launch; a port taken after the probe makes the monitor's own
    bind fail before any child or record exists, and launch/app.py reports it like a failed check."""
    from byzctl.config.compose import compose
    from byzctl.config.experiment import Experiment
    from byzctl.errors import PeerError
    from byzctl.launch.local import LocalLauncher
    from byzctl.launch.preflight import check_host
    from byzctl.launch.rundir import RunDir

    port = _free_port()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_ps_cluster(server_port=_free_port(), monitor_port=port)))
    exp = Experiment.from_cfg(compose([f"cluster={path}"]))
    check_host(exp)
    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        handler = signal.getsignal(signal.SIGINT)
        with pytest.raises(PeerError, match=f"127.0.0.1:{port}"):
            LocalLauncher(exp, RunDir(tmp_path / "run")).run()
        assert signal.getsignal(signal.SIGINT) is handler
        assert not (tmp_path / "run" / "run.json").exists() and not list((tmp_path / "run").glob("nodes/*.log"))
    finally:
        busy.close()


# -- every other command, in process -----------------------------------------------------------
def cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """What the console script would do: main()'s return code, argparse's SystemExit, or
    for an uncaught exception exit 1 and a traceback."""
    tb = ""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # noqa: BLE001 - the interpreter would print it and exit 1
        rc, tb = 1, traceback.format_exc()
    captured = capsys.readouterr()
    return rc, captured.out + captured.err + tb


CLI_CASES = [
    pytest.param(["frobnicate"], "frobnicate", id="unknown command"),
    pytest.param(["list", "wizards"], "wizards", id="list unknown kind"),
    pytest.param(["list"], "kind", id="list without kind"),
    pytest.param(["list", "aggregators", "--jsn"], "--jsn", id="list unknown flag"),
    pytest.param(["bench", "aggregators", "roundz=5"], "roundz=5", id="bench unknown option"),
    pytest.param(["bench", "nothing"], "nothing", id="bench unknown benchmark"),
    pytest.param(["bench"], "required: what", id="bench without a benchmark"),
    pytest.param(["node"], "--id", id="node without --id"),
    pytest.param(["node", "--id", "abc"], "'abc'", id="node --id not a number"),
    pytest.param(["node", "--id", "1"], "cluster=<file>", id="node without cluster"),
    pytest.param(["node", "--id", "1", "cluster={tmp}/nope.yaml"], "nope.yaml", id="node missing cluster file"),
    pytest.param(["node", "--id", "1", "cluster={tmp}/dup.yaml"], "duplicate node id 1", id="node duplicate ids"),
    pytest.param(["node", "--id", "1", "lr=0", "cluster={tmp}/ok.yaml"], "lr=0", id="node bad value"),
    pytest.param(["node", "--id", "1", "roundz=5", "cluster={tmp}/ok.yaml"], "roundz", id="node typo in a key"),
    pytest.param(["node", "--id", "1", "rounds=abc", "cluster={tmp}/ok.yaml"], "'abc'", id="node wrong type"),
    pytest.param(["node", "--id", "1", "aggregator=krumm", "cluster={tmp}/ok.yaml"], "krumm", id="node unknown option"),
    pytest.param(["node", "--id", "1", "--resolved", "{tmp}/nope.yaml"], "nope.yaml", id="node missing resolved config"),
    pytest.param(["node", "--id", "1", "--resolved", "{tmp}/broken.yaml"], "broken.yaml", id="node unparsable resolved config"),
    pytest.param(["node", "--id", "1", "--resolved", "{tmp}/ok.yaml"], "not a resolved byzctl run config", id="node resolved config of another kind"),
    pytest.param(["node", "--id", "1", "rounds==", "cluster={tmp}/ok.yaml"], "rounds==", id="node override syntax"),
    pytest.param(["report", "{tmp}/nope"], "nope", id="report missing dir"),
    pytest.param(["status", "{tmp}/nope"], "nope", id="status missing dir"),
    pytest.param(["keys", "frob"], "frob", id="keys unknown action"),
    pytest.param(["keys", "gen"], "--nodes", id="keys gen without arguments"),
    pytest.param(["keys", "gen", "{tmp}/keys", "--nodes", "0"], "got 0", id="keys gen zero nodes"),
    pytest.param(["doctor", "--bad"], "--bad", id="doctor unknown flag"),
]


@pytest.mark.parametrize("argv, expect", CLI_CASES)
def test_commands_reject_bad_input(files, capsys, argv, expect):
    rc, text = cli(capsys, [a.replace("{tmp}", str(files)) for a in argv])
    _assert_clear(rc, text, expect)


def test_node_with_debug_shows_the_traceback(files, capsys):
    rc, text = cli(capsys, ["node", "--id", "1", "--debug", "lr=0", f"cluster={files / 'ok.yaml'}"])
    assert rc == 2 and "Traceback" in text and "lr=0" in text


def test_node_with_an_id_not_in_the_cluster(files):
    # A subprocess: run_node configures logging and signals before it checks the id.
    proc = byzctl("node", "--id", "99", f"cluster={files / 'ok.yaml'}", cwd=files, timeout=240)
    _assert_clear(proc.returncode, proc.stdout + proc.stderr, "--id 99 is not a node of this run")


def test_the_table_covers_at_least_30_bad_inputs():
    assert len(RUN_CASES) + len(CLI_CASES) + 4 >= 30
