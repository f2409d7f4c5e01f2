"""Node hosts (`processes=`): many logical nodes per process, the same results as one
process per node, and a killed host loses exactly its nodes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import byzctl, read, run_dir
from test_e2e_ps import _start
from test_remote import free_ports

from byzctl.errors import ConfigError
from byzctl.launch.checkpoints import latest_checkpoint, read_checkpoint
from byzctl.procs import pid_alive
from byzctl.topology.base import NodeSpec, Role
from byzctl.topology.packing import pack
from byzctl.transport.keys import main as keys_main


def _ps(workers: int) -> list[NodeSpec]:
    return [NodeSpec(0, Role.server)] + [NodeSpec(i, Role.worker) for i in range(1, workers + 1)]


def _peers(n: int) -> list[NodeSpec]:
    return [NodeSpec(i, Role.peer) for i in range(n)]


def test_auto_keeps_small_runs_one_process_per_node_and_packs_large_ones():
    assert pack(_ps(5), "auto", cores=2) == [[0], [1], [2], [3], [4], [5]]  # the embedded default: 6 processes
    # the server alone, the workers in two hosts per core
    assert pack(_ps(13), "auto", cores=2) == [[0], [1, 2, 3, 4], [5, 6, 7], [8, 9, 10], [11, 12, 13]]
    assert pack(_ps(13), "auto", cores=1) == [[0], [1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13]]
    assert pack(_peers(10), "auto", cores=2) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]  # ring neighbours together
    hub = _peers(10) + [NodeSpec(10, Role.relay)]
    assert pack(hub, "3") == [[10], [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert pack(_ps(3), "per_node") == [[0], [1], [2], [3]]
    assert pack(_ps(3), 1) == [[0, 1, 2, 3]]
    assert pack(_ps(2), 10) == [[0], [1], [2]]  # never an empty host
    assert sorted(i for h in pack(_ps(1100), "auto", cores=16) for i in h) == list(range(1101))


@pytest.mark.parametrize("bad", ["0", "-2", "many", "1.5"])
def test_a_bad_processes_value_is_named(compose, bad):
    from byzctl.config.experiment import Experiment

    with pytest.raises(ConfigError, match=f"processes={bad}"):
        Experiment.from_cfg(compose([f"processes={bad}"]))


def test_batched_gradients_equal_each_nodes_own():
    from byzctl.learning.batched import GradientBatcher, batched_gradients
    from byzctl.learning.trainer import HonestLearner

    def learner(i: int) -> HonestLearner:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        g = torch.Generator().manual_seed(i)
        return HonestLearner(model, torch.randn(40, 3, 4, generator=g), torch.randint(0, 3, (40,), generator=g),
                             batch_size=10, momentum=0.9, seed=i)

    own = [learner(i) for i in range(5)]
    d = sum(p.numel() for p in own[0].model.parameters())
    params = torch.randn(5, d, generator=torch.Generator().manual_seed(9))
    want = [ln.gradient(params[i], 7) for i, ln in enumerate(own)]
    batches = [ln.batch(7) for ln in own]
    grads, losses = batched_gradients(own[0].model, params, torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches]))
    for i in range(5):
        assert torch.allclose(grads[i], want[i], rtol=1e-5, atol=1e-6)
        assert losses[i].item() == pytest.approx(own[i].last_loss, rel=1e-5)

    # the host's batcher: five node threads ask at once, one batched call answers them all
    batcher = GradientBatcher()
    packed = [learner(i) for i in range(5)]
    for i, ln in enumerate(packed):
        batcher.join(i)
        ln.batcher = (batcher, i)
    got: dict[int, torch.Tensor] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, packed[i].momentum_gradient(params[i], 7))) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i in range(5):
        assert torch.allclose(got[i], want[i], rtol=1e-5, atol=1e-6) and packed[i].last_loss == pytest.approx(own[i].last_loss, rel=1e-5)
    batcher.leave(4)  # a node that left is not waited for: the other four are answered at once
    assert batcher.members == {0, 1, 2, 3}


def _states(out: Path) -> dict[int, tuple[int, dict[str, torch.Tensor]]]:
    r, states = read_checkpoint(latest_checkpoint(out / "checkpoints"))
    return states


def test_a_hosts_byzantine_workers_share_one_attack_per_round():
    from byzctl.node.cohost import Adversary

    alone = Adversary([7])
    assert alone.leader == 7 and not alone.shares(7)  # one Byzantine worker: nothing to share
    adv = Adversary([9, 8, 7])
    assert adv.leader == 7 and adv.shares(8) and not adv.shares(1)
    r, w = os.pipe()
    os.set_blocking(r, False)
    adv.watch(8, w)
    assert adv.take(3) is None
    out = torch.arange(6.0).reshape(3, 2)  # (f, d)
    adv.post(3, out)
    assert os.read(r, 16) == b"\0"  # the sibling is woken
    assert adv.take(3) is out
    adv.post(4, out + 1)
    adv.post(5, out + 2)
    assert adv.take(3) is None and adv.take(4) is not None  # the last two rounds are kept
    assert os.read(r, 16) == b"\0\0"
    adv.leave(8)
    adv.post(6, out)
    with pytest.raises(BlockingIOError):
        os.read(r, 16)  # a node that left is not woken
    os.close(r)
    os.close(w)


def _same_states(a: Path, b: Path) -> None:
    sa, sb = _states(a), _states(b)
    assert set(sa) == set(sb)
    for node in sa:
        assert sa[node][0] == sb[node][0]
        for key, value in sa[node][1].items():
            assert torch.allclose(value, sb[node][1][key], rtol=0, atol=1e-6), f"node {node} {key} differs"


@pytest.mark.parametrize("topology", [
    pytest.param(["topology=ps", "nodes.honest=6", "nodes.byzantine=2"], id="ps"),
    # randomised and omniscient: packed, the host's two Byzantine workers compute one attack
    pytest.param(["topology=ps", "nodes.honest=6", "nodes.byzantine=2", "attack=gaussian",
                  "attack.knowledge=omniscient"], id="ps-gaussian"),
    pytest.param(["topology=mesh", "graph=ring", "nodes.honest=6", "nodes.byzantine=0", "topology.quorum_deadline=50"], id="mesh"),
])
def test_packed_and_one_process_per_node_reach_the_same_parameters(tmp_path, topology):
    run = [*topology, "rounds=20", "eval_every=10", "seed=3", "model.hidden=[16]"]
    per_node, proc = run_dir(tmp_path, *run, "processes=per_node", name="per_node")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    packed, proc = run_dir(tmp_path, *run, "processes=2", name="packed")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(set(read(packed / "run.json")["pids"].values())) == 2
    assert len(set(read(per_node / "run.json")["pids"].values())) == len(read(per_node / "run.json")["pids"])
    _same_states(per_node, packed)
    assert read(per_node / "summary.json")["test_loss"] == pytest.approx(read(packed / "summary.json")["test_loss"], abs=1e-6)
    for i in read(packed / "run.json")["pids"]:  # every node keeps its own log
        assert "ready in" in (packed / "nodes" / f"{i}.log").read_text()
    if "attack=gaussian" in topology:  # omniscient, packed: one oracle view per host, node 8 takes node 7's attack
        shared = "worker 8 takes its attack from its host's leader"
        assert shared in (packed / "nodes" / "0.log").read_text()
        assert shared not in (per_node / "nodes" / "0.log").read_text()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_forked_host_runs_parallel_torch_ops(tmp_path, threads):
    """Krum's Gram matrix at n = 25 is a BLAS call big enough to use threads: when the
    fork server had started its thread pool, every forked host hung in its config check
    (no node ever joined; found running the bucketing table)."""
    out, proc = run_dir(tmp_path, "aggregator=krum", "nodes.honest=20", "nodes.byzantine=5", "rounds=2",
                        f"device.threads={threads}", "topology.join_timeout=30", "model.hidden=[64]")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read(out / "summary.json")["rounds_completed"] == 2


def test_a_killed_host_loses_exactly_its_nodes_and_the_ps_run_completes(tmp_path):
    live, out = _start(tmp_path, "nodes.honest=4", "nodes.byzantine=1", "processes=3", "rounds=150", "eval_every=50",
                       "topology.peer_timeout=3")
    try:
        pids = {int(k): v for k, v in read(out / "run.json")["pids"].items()}
        victims = sorted(i for i, pid in pids.items() if pid == pids[5])
        assert victims == [4, 5] and pids[1] != pids[5] and pids[0] != pids[1]
        os.kill(pids[5], signal.SIGKILL)
        stdout, _ = live.communicate(timeout=240)
    finally:
        if live.poll() is None:
            live.kill()
    assert live.returncode == 0, stdout
    summary = read(out / "summary.json")
    assert summary["state"] == "COMPLETED" and summary["lost_ids"] == victims, summary
    assert summary["nodes"]["4"]["exit_code"] == -signal.SIGKILL and summary["nodes"]["1"]["exit_code"] == 0


def test_interrupted_packed_run_resumes_to_the_unpacked_runs_parameters(tmp_path):
    run = ["rounds=60", "checkpoint_every=20", "seed=5", "eval_every=20", "nodes.honest=6", "nodes.byzantine=2"]
    ref, proc = run_dir(tmp_path, *run, "processes=per_node", name="ref")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    live, out = _start(tmp_path, *run, "rounds=60", "processes=2")
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("round_0000020*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    live.send_signal(signal.SIGINT)
    assert live.wait(timeout=60) == 130
    assert read(out / "run.json")["state"] == "INTERRUPTED"
    proc = byzctl("run", f"resume={out}", f"hydra.run.dir={tmp_path / 'resumer'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, want = read_checkpoint(latest_checkpoint(ref / "checkpoints"))
    r, got = read_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert r == 60
    # packed honest workers compute their gradients in batched calls: equal within float
    # tolerance, not bit for bit (one process per node stays bit-exact: test_checkpoint)
    assert torch.allclose(got[0][1]["params"], want[0][1]["params"], rtol=0, atol=1e-5), "the resumed packed run differs"


def test_packed_local_nodes_with_one_remote_node_over_curve(tmp_path):
    """Some nodes packed in one host process on the launcher's machine, one `byzctl node`
    joining over TCP with CURVE: the run completes with every node."""
    assert keys_main(["gen", str(tmp_path / "keys"), "--nodes", "6"]) == 0
    mon, srv, *ports = free_ports(7)
    data = {"monitor": {"host": "127.0.0.1", "port": mon}, "server": {"host": "127.0.0.1", "port": srv},
            "workers": [{"id": i, "host": "127.0.0.1", "port": ports[i - 1], "type": "byzantine" if i == 5 else "honest"}
                        for i in range(1, 6)]}
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(data))
    common = [f"cluster={cluster}", "security=curve", f"security.keys={tmp_path / 'keys'}"]
    remote = subprocess.Popen([sys.executable, "-m", "byzctl", "node", "--id", "5", *common], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        proc = byzctl("run", "launcher=remote", *common, "local_nodes=[0,1,2,3,4]", "processes=2", "nodes.honest=4",
                      "nodes.byzantine=1", "rounds=20", "eval_every=10", "model.hidden=[16]", "topology.join_timeout=120",
                      f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out, _ = remote.communicate(timeout=60)
        assert remote.returncode == 0, out
    finally:
        if remote.poll() is None:
            remote.kill()
    summary = read(tmp_path / "run" / "summary.json")
    assert summary["state"] == "COMPLETED" and summary["nodes_lost"] == 0
    pids = read(tmp_path / "run" / "run.json")["pids"]
    assert set(pids) == {"0", "1", "2", "3", "4"} and len({pids[str(i)] for i in range(1, 5)}) == 1


def test_a_killed_launcher_takes_its_packed_hosts_and_fork_server_with_it(tmp_path):
    """SIGKILL the launcher of a packed run: the fork server exits with it and every host
    process follows well before peer_timeout (the nodes did not have to notice the silent
    monitor); run.json says FAILED, naming the launcher."""
    live, out = _start(tmp_path, "nodes.honest=6", "nodes.byzantine=1", "processes=3", "topology.peer_timeout=60")
    hosts = set(read(out / "run.json")["pids"].values())
    live.kill()
    live.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(pid_alive(p) for p in hosts):
        time.sleep(0.2)
    assert not [p for p in hosts if pid_alive(p)], "host processes outlived the launcher"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and read(out / "run.json")["state"] != "FAILED":
        time.sleep(0.2)
    run = read(out / "run.json")
    assert run["state"] == "FAILED" and "the launcher" in run["reason"]
