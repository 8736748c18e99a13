"""A composed config as hydra overrides, so that nodes started as processes run with exactly that config.

The nodes of the stack compose their config from command-line overrides (`gato_ros.ros.runtime`), but
`evaluate(cfg)` takes a config that may have been composed and edited anywhere (a training run, a test).
`config_overrides(cfg)` is the list of ``key=value`` overrides that turns the default composition into
`cfg`: one per leaf that differs (raw values, so interpolations stay interpolations), ``++key=value`` for
keys the default lacks and ``~key`` for keys `cfg` dropped. Lists, and dicts whose keys hydra cannot
address one by one, are single leaves (a dict override merges: keys it drops are not removed).
"""

from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

# A key hydra's override grammar reads as one plain identifier; a dict with any other key is overridden whole.
PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
# What the grammar accepts unquoted as a key inside a {dict} value (it has no quoted keys).
DICT_KEY = re.compile(r"^[A-Za-z0-9_\-/.]+$")
QUOTE_BACKSLASHES = re.compile(r"(\\+)('|$)")


def render_value(value: Any) -> str:
    """`value` in hydra's override grammar: strings always quoted (so "true" or "1" stay strings)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # the grammar's escapes: backslashes only before a quote (or the closing one), then the quotes
        escaped = QUOTE_BACKSLASHES.sub(lambda m: 2 * m.group(1) + m.group(2), value).replace("'", "\\'")
        return f"'{escaped}'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{render_key(k)}:{render_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a hydra override")


def render_key(key: Any) -> str:
    text = str(key)
    if not DICT_KEY.match(text):
        raise ValueError(f"the key {text!r} cannot be written in a hydra override")
    return text


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> value; lists, and dicts with a key hydra cannot address, are single leaves."""
    if isinstance(node, dict) and node and all(PLAIN_KEY.match(str(k)) for k in node):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def config_overrides(cfg: DictConfig, base: DictConfig | None = None) -> list[str]:
    """Overrides that compose `base` (default: the default config) into `cfg`, leaf by leaf."""
    from gato_ros.config import load_config

    base = load_config([]) if base is None else base
    want = _leaves(OmegaConf.to_container(cfg, resolve=False))
    have = _leaves(OmegaConf.to_container(base, resolve=False))
    overrides = [f"~{key}" for key in have if key not in want]
    for key, value in want.items():
        if key not in have:
            overrides.append(f"++{key}={render_value(value)}")
        elif have[key] != value or type(have[key]) is not type(value):
            # a dict value merges into the old one; `++` lets it bring keys the old one lacks
            force = "++" if isinstance(value, dict) else ""
            overrides.append(f"{force}{key}={render_value(value)}")
    return overrides


def override_key(override: str) -> str:
    """The config path an override sets (``+a.b=1``, ``++a.b=1`` and ``a.b=1`` all set ``a.b``)."""
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*groups: list[str]) -> list[str]:
    """Concatenate override lists; a later override of the same key replaces the earlier one."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in group:
            key = override_key(override)
            previous = merged.pop(key, None)
            if previous is not None and previous.startswith("+") and not override.startswith(("+", "~")):
                override = "++" + override  # the key exists only because of the earlier `+`
            merged[key] = override
    return list(merged.values())
