"""Typed experiment configs: the bottom floor, imported by every other floor and importing none."""

from medmm.config.core import (
    ConfigError,
    StrictModel,
    apply_override,
    build_config,
    config_hash,
    flatten,
    load_yaml,
    options_help,
    to_yaml,
)

__all__ = [
    "ConfigError",
    "StrictModel",
    "apply_override",
    "build_config",
    "config_hash",
    "flatten",
    "load_yaml",
    "options_help",
    "to_yaml",
]
