"""The command line: dispatcher, list, Hydra's own flags through `byzctl run`."""

from __future__ import annotations

import json

import pytest
from conftest import byzctl

from byzctl.catalog import KINDS


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_list_json_is_an_array_of_named_entries(kind):
    proc = byzctl("list", kind, "--json")
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    assert isinstance(entries, list) and entries
    assert all(isinstance(e["name"], str) and "params" in e for e in entries)


def test_list_table_and_required_options():
    proc = byzctl("list", "aggregators")
    assert proc.returncode == 0 and "cw_trimmed_mean" in proc.stdout and "mean" in proc.stdout
    names = {e["name"] for e in json.loads(byzctl("list", "attacks", "--json").stdout)}
    assert {"none", "sign_flip"} <= names


def test_run_cfg_job_prints_the_composed_config_without_running(tmp_path):
    proc = byzctl("run", "--cfg", "job", "aggregator=mean", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cw_trimmed_mean" not in proc.stdout and "name: mean" in proc.stdout
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("run.json"))


def test_run_help_is_hydras():
    proc = byzctl("run", "--help")
    assert proc.returncode == 0 and "aggregator" in proc.stdout and "Powered by Hydra" in proc.stdout


def test_unknown_command_and_bad_list_kind_exit_2():
    assert byzctl("frobnicate").returncode == 2
    assert byzctl("list", "wizards").returncode == 2


def test_version():
    proc = byzctl("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("byzctl ")
