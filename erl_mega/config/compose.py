"""A run's raw config: the schema's defaults, then the chosen group options' YAML (hydra), then `key=value` overrides.

Hydra composes the group options (`algo=grpo`, `model=smollm2-135m`); value overrides are applied here,
onto the whole tree, so that a key set only by a dataclass default is overridable like any other and a
key that does not exist is one line naming the closest keys that do.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import typing
from typing import Any

from omegaconf import OmegaConf

CONFIG_MODULE = "erl_mega.configs"
DELETE = object()  # `~key`: drop the key, so its dataclass default (or a missing-key error) applies


def group_options() -> dict[str, list[str]]:
    """Each config group (a folder of configs/) and the options it offers (its YAML files)."""
    root = importlib.resources.files(CONFIG_MODULE)
    return {
        d.name: sorted(f.name.removesuffix(".yaml") for f in d.iterdir() if f.name.endswith(".yaml"))
        for d in sorted(root.iterdir(), key=lambda d: d.name) if d.is_dir() and not d.name.startswith("_")
    }


def defaults_tree(cls: type) -> dict[str, Any]:
    """The dataclass defaults of `cls` and of its nested sections, as plain data (fields without one are absent)."""
    tree: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            tree[f.name] = dataclasses.asdict(f.default) if dataclasses.is_dataclass(f.default) else f.default
        elif dataclasses.is_dataclass(hints[f.name]):
            tree[f.name] = defaults_tree(hints[f.name])
    return tree


def field_paths(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of `cls`, sections included (`trainer`, `trainer.lr`, ...)."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        paths.append(prefix + f.name)
        nested = _dataclass_in(hints[f.name])
        if nested is not None:
            paths += field_paths(nested, f"{prefix}{f.name}.")
    return paths


def compose_raw(schema: type, overrides: list[str]) -> dict[str, Any]:
    """The resolved plain-data config for `overrides` (ValueError, one line, on any bad override)."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser

    groups = group_options()
    parser = OverridesParser.create()
    selections, values = [], []
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except Exception as err:
            raise ValueError(f"cannot parse override {text!r}: {_first_line(err)}; write key=value") from None
        if override.is_sweep_override():
            raise ValueError(f"override {text!r}: sweeps (a,b) are not supported; run one value at a time")
        if override.key_or_group in groups:
            selections.append(text)
        else:
            values.append((override.key_or_group, DELETE if override.is_delete() else override.value()))
    for group, option in (s.split("=", 1) for s in selections):
        if option not in groups[group]:
            raise ValueError(f"{group}={option!r} is not a {group} option; choose one of {groups[group]}")
    with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
        composed = OmegaConf.to_container(compose(config_name="config", overrides=selections), resolve=False)
    tree = _merge(defaults_tree(schema), composed)
    for key, value in values:
        _set(tree, schema, key, value)
    try:
        return OmegaConf.to_container(OmegaConf.create(tree), resolve=True)
    except Exception as err:  # an interpolation such as ${algo.name} that points nowhere
        raise ValueError(f"cannot resolve the config: {_first_line(err)}") from None


def _set(tree: dict, schema: type, key: str, value: Any) -> None:
    """Set dotted `key` in `tree`, refusing keys the schema does not have (free-form dicts excepted)."""
    node, cls = tree, schema
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if cls is not None:
            hints = typing.get_type_hints(cls)
            if part not in hints:
                raise ValueError(_unknown(key, schema))
            hint = hints[part]
            cls = _dataclass_in(hint)
            free = cls is None and (typing.get_origin(hint) or hint) is dict
            if cls is None and not free and depth < len(parts) - 1:
                raise ValueError(_unknown(key, schema))
        if depth == len(parts) - 1:
            if value is DELETE:
                node.pop(part, None)
            else:
                node[part] = value
        else:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]


def _unknown(key: str, schema: type) -> str:
    close = difflib.get_close_matches(key, field_paths(schema), n=3, cutoff=0.6)
    hint = f"; closest known keys: {', '.join(close)}" if close else "; `erl-mega train --help` lists every key"
    return f"config key {key!r} does not exist{hint}"


def _dataclass_in(hint: Any) -> type | None:
    candidates = typing.get_args(hint) or (hint,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
