"""Config: every option composes and instantiates; bad input fails early and clearly."""

from __future__ import annotations

from importlib.resources import files

import pytest
from conftest import byzctl

from byzctl.config.build import build
from byzctl.config.experiment import Experiment
from byzctl.config.schema import GROUPS
from byzctl.errors import ConfigError


def conf_options(group: str) -> list[str]:
    root = files("byzctl.conf") / group
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


ALL = [(g, o) for g in [*GROUPS, "device"] for o in conf_options(g)]


@pytest.mark.parametrize("group, option", ALL, ids=[f"{g}={o}" for g, o in ALL])
def test_every_conf_option_composes_and_instantiates(compose, group, option):
    if group == "device" and option == "cuda":
        pytest.importorskip("torch")
    override = f"preagg=[{option}]" if group == "preagg" else f"{group}={option}"
    cfg = compose([override])
    node = cfg.preagg[option] if group == "preagg" else cfg[group]
    obj = build(node, group)
    assert obj.name == (option if group not in ("device",) else obj.name)


def test_default_config_is_the_embedded_experiment(compose):
    exp = Experiment.from_cfg(compose([]))
    assert (exp.topology.name, exp.aggregator.name, exp.attack.name, exp.dataset.name, exp.model.name) == (
        "ps", "cw_trimmed_mean", "sign_flip", "mnist_subset", "mlp")
    assert (exp.honest, exp.byzantine) == (4, 1)
    assert [s.role.value for s in exp.plan()] == ["server"] + ["worker"] * 5
    assert exp.attack.scale == -1.0


def test_preagg_list_keeps_order(compose):
    cfg = compose(["preagg=[none]"])
    assert list(cfg.preagg) == ["none"]


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["nodes.byzantine=4"], r"n > 2f. Got n=8, f=4"),
        (["aggregator.f=3"], r"Got n=5, f=3"),
        (["nodes.honest=0"], "nodes.honest must be >= 1"),
        (["rounds=0"], "rounds must be >= 1"),
        (["lr=-1"], "lr must be > 0"),
        (["momentum=1.5"], "momentum must be in"),
        (["dataset.alpha=0"], "alpha must be > 0"),
        (["model.hidden=[0]"], "hidden sizes must be >= 1"),
        (["model=cnn", "dataset=synthetic"], "needs image inputs"),
    ],
)
def test_limits_fail_before_launch_naming_the_values(compose, overrides, match):
    with pytest.raises(ConfigError, match=match):
        exp = Experiment.from_cfg(compose(overrides))
        exp.model.build(exp.dataset.load(0).input_shape, 10)


@pytest.mark.parametrize(
    "override, expect",
    [
        ("roundz=5", "Key 'roundz' not in 'Config'"),
        ("rounds=abc", "could not be converted to Integer"),
        ("aggregator=krumm", "Available options in 'aggregator'"),
        ("aggregator.ff=2", "Key 'ff' not in"),
        ("dataset.partition=zipf", "Invalid value 'zipf'"),
        ("nodes.byzantine=4", "n > 2f. Got n=8, f=4"),
    ],
)
def test_cli_config_errors_are_clear_and_exit_2(tmp_path, override, expect):
    proc = byzctl("run", override, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert expect in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
