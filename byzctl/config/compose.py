"""The compose API for everything but `byzctl run` (node, list, tests)."""

from __future__ import annotations

from pathlib import Path

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from byzctl.config.schema import register
from byzctl.errors import ConfigError

_GROUPS = ("aggregator", "attack", "preagg", "dataset", "model", "topology", "device")
_FLOATY = {"inf", "-inf", "nan", "+inf", "true", "false", "null"}


def normalize_overrides(overrides: list[str]) -> list[str]:
    """Quote option names Hydra's grammar would read as another type (`attack=inf`
    is the attack named inf, not the float infinity)."""
    out = []
    for ov in overrides:
        key, sep, value = ov.partition("=")
        if sep and key.lstrip("+~") in _GROUPS:
            items = value.split(",")  # a sweep: attack=inf,alie
            if any(v.lower() in _FLOATY for v in items):
                ov = key + "=" + ",".join(f"'{v}'" if v.lower() in _FLOATY else v for v in items)
        out.append(ov)
    return out


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The run config with `overrides` applied, exactly as `byzctl run` would compose it.

    Raises:
        ConfigError: a bad override (typo, wrong type, unknown option, bad syntax), with
            Hydra's message and its cause, as `byzctl run` prints them.
    """
    register()
    GlobalHydra.instance().clear()
    with initialize_config_module("byzctl.conf", version_base=None):
        try:
            return hydra_compose(config_name, overrides=normalize_overrides(list(overrides or [])))
        except (HydraException, OmegaConfBaseException) as exc:
            cause = f"\n{exc.__cause__}" if exc.__cause__ is not None else ""
            raise ConfigError(f"{exc}{cause}") from exc


def load_resolved(path: str | Path, what: str) -> DictConfig:
    """A resolved run config written by the launcher (`config.yaml` of a run directory);
    `what` names where the path came from in the error."""
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file: {path}") from None
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc}") from None
    missing = [k for k in ("topology", "aggregator", "attack", "dataset", "model", "device", "nodes") if not isinstance(cfg, DictConfig) or k not in cfg]
    if missing:
        raise ConfigError(f"{what}: {path} is not a resolved byzctl run config (it lacks {', '.join(missing)})")
    assert isinstance(cfg, DictConfig)
    return cfg
