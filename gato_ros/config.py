"""The one source of configuration: hydra-core YAML under gato_ros/config, composed with overrides.

Every tool (twin, nodes, launch, training, evaluation) calls `load_config` so that a command-line
override such as `twin.triplet=3` means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from gato_ros.paths import CONFIG_DIR


def load_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the config tree with hydra-style overrides (`key=value`, `group=option`, `+new=1`)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    OmegaConf.set_readonly(cfg, False)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
