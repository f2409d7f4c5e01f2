"""The `launcher` config group: every option composes and builds; bad values are
refused naming them; the SLURM script and task packing; no process is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from byzctl.config.experiment import Experiment
from byzctl.config.launchers import LauncherKind, RayLauncher, SlurmLauncher, launcher_kind
from byzctl.errors import ConfigError
from byzctl.launch.slurm import plan_tasks, script
from byzctl.launch.task import TaskSpec, route_address

SMALL = ["nodes.honest=4", "nodes.byzantine=1", "device=cpu"]


@pytest.mark.parametrize("kind", [k.value for k in LauncherKind])
def test_every_launcher_option_composes_and_builds(compose, kind):
    extra = ["cluster=x.yaml"] if kind == "remote" else []
    cfg = compose([f"launcher={kind}", *SMALL, *extra])
    assert launcher_kind(cfg.launcher) is LauncherKind(kind)
    if kind != "remote":
        exp = Experiment.from_cfg(cfg, placed=False)
        assert exp.launcher.name is LauncherKind(kind)
        assert (exp.local_nodes() == []) is LauncherKind(kind).engine


def test_a_plain_string_launcher_of_an_older_run_still_reads():
    assert launcher_kind("remote") is LauncherKind.remote and launcher_kind(None) is LauncherKind.local


@pytest.mark.parametrize(("override", "needle"), [
    ("launcher.nodes=0", "launcher.nodes=0"),
    ("launcher.tasks_per_node=0", "launcher.tasks_per_node=0"),
    ("launcher.time=soon", "launcher.time='soon'"),
    ("launcher.gpus_per_task=-1", "launcher.gpus_per_task=-1"),
    ("launcher.sbatch=[' ']", "' '"),
    ("launcher.partiton=gpu", "partiton"),
])
def test_bad_slurm_values_are_refused_naming_them(compose, override, needle):
    with pytest.raises(ConfigError) as err:
        Experiment.from_cfg(compose(["launcher=slurm", *SMALL, override]), placed=False)
    assert needle in str(err.value)


@pytest.mark.parametrize(("override", "needle"), [
    ("launcher.cpus_per_actor=0", "launcher.cpus_per_actor=0"),
    ("launcher.strategy=ANYWHERE", "'ANYWHERE'"),
])
def test_bad_ray_values_are_refused_naming_them(compose, override, needle):
    with pytest.raises(ConfigError) as err:
        Experiment.from_cfg(compose(["launcher=ray", *SMALL, override]), placed=False)
    assert needle in str(err.value)


def test_an_engine_takes_no_cluster_file(compose, tmp_path):
    with pytest.raises(ConfigError, match="launcher=slurm places the nodes itself"):
        Experiment.from_cfg(compose(["launcher=slurm", *SMALL, f"cluster={tmp_path}/c.yaml"]))


def test_wait_false_moves_the_monitor_into_the_job():
    assert SlurmLauncher(wait=False).monitor.value == "job"
    assert RayLauncher().address == "auto"


def test_tasks_pack_the_nodes_and_too_many_tasks_are_refused(compose):
    exp = Experiment.from_cfg(compose(["launcher=slurm", "launcher.tasks_per_node=3", *SMALL]), placed=False)
    assert isinstance(exp.launcher, SlurmLauncher)
    assert plan_tasks(exp, exp.launcher) == [[0], [1, 2, 3], [4, 5]]
    exp.launcher.tasks_per_node = 7
    with pytest.raises(ConfigError, match=r"launcher.tasks_per_node=7 = 7 tasks, more than the run's 6 nodes"):
        plan_tasks(exp, exp.launcher)
    exp.launcher.tasks_per_node, exp.launcher.nodes = None, 9
    with pytest.raises(ConfigError, match="launcher.nodes=9 machines but the run has only 6 host processes"):
        plan_tasks(exp, exp.launcher)


def test_the_sbatch_script_carries_every_option(compose):
    exp = Experiment.from_cfg(compose(["launcher=slurm", *SMALL, "launcher.partition=gpu", "launcher.account=lab",
                                       "launcher.gpus_per_task=1", "launcher.cpus_per_task=4", "launcher.time=2:00:00",
                                       "launcher.sbatch=['--mem=8G','qos=high']"]), placed=False)
    assert isinstance(exp.launcher, SlurmLauncher)
    text = script(exp, exp.launcher, 6, Path("/shared/run"), ["srun", "x"])
    for line in ("--partition=gpu", "--account=lab", "--gpus-per-task=1", "--cpus-per-task=4", "--time=2:00:00",
                 "--ntasks=6", "--nodes=1", "--mem=8G", "--qos=high", "--output=/shared/run/slurm/job-%j.out"):
        assert f"#SBATCH {line}" in text
    assert text.rstrip().endswith("exec srun x")


def test_a_task_binds_on_its_route_to_the_monitor(tmp_path):
    assert route_address("tcp://127.0.0.1:5555") == "127.0.0.1"
    spec = TaskSpec(hosts=[[0], [1, 2]], control="tcp://127.0.0.1:1", run_id="r", run_dir=str(tmp_path), resolved="c")
    spec.write(tmp_path / "t.json")
    assert TaskSpec.read(tmp_path / "t.json") == spec
