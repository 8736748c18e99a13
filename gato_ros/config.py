"""The one source of configuration: hydra-core YAML under gato_ros/config, composed with overrides.

Every tool (twin, nodes, launch, training, evaluation) calls `load_config` so that a command-line
override such as `twin.triplet=3` means the same thing everywhere.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from gato_ros.paths import CONFIG_DIR


class ConfigError(ValueError):
    """An override the config tree refuses, explained in one line (the closest valid key or option)."""


def load_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the config tree with hydra-style overrides (`key=value`, `group=option`, `+new=1`).

    A mistyped key or option, or an override that does not parse, is a `ConfigError` of one line naming
    the closest valid key (or the options of the group) instead of hydra's traceback.
    """
    try:
        cfg = _compose(list(overrides), config_name)
    except HydraException as err:
        raise ConfigError(explain_override_error(err, list(overrides), config_name)) from err
    OmegaConf.set_readonly(cfg, False)
    return cfg


def _compose(overrides: list[str], config_name: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=config_name, overrides=overrides)


def config_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every leaf and node key of ``cfg`` as a dotted path (interpolations are not resolved)."""
    keys = []
    for key in cfg:
        path = f"{prefix}{key}"
        keys.append(path)
        node = cfg._get_node(key)  # the raw node, so interpolations stay unresolved
        if isinstance(node, DictConfig):
            keys.extend(config_keys(node, f"{path}."))
    return keys


def explain_override_error(err: Exception, overrides: list[str], config_name: str = "config") -> str:
    """One line for a refused override: an unknown key with the closest valid one, an unknown group option
    with the options, or hydra's own first line."""
    text = str(err)
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    unknown_key = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", text
    )
    if unknown_key:
        key = unknown_key.group(1)
        base = [o for o in overrides if not o.lstrip("+~").startswith(f"{key}=")]
        try:
            known = config_keys(_compose(base, config_name))
        except HydraException:
            known = config_keys(_compose([], config_name))
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else " (no similar key; `+key=value` adds a new one)"
        return f"unknown config key '{key}'{hint}"
    missing_option = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if missing_option:
        group, option = missing_option.groups()
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        close = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown {group} option '{option}' ({hint}options: {', '.join(options)})"
    return f"bad override: {first}"


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
