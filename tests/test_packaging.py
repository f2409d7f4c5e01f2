"""Packaging: every subpackage is listed, and a built wheel carries conf/."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "byzctl").rglob("__init__.py")}
    found.add("byzctl.conf")
    assert found - listed == set(), "add these to [tool.setuptools] packages"


def test_wheel_ships_the_configs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("byzctl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    missing = [c for c in conf if f"byzctl/conf/{c}" not in names]
    assert not missing and "byzctl/conf/__init__.py" in names
