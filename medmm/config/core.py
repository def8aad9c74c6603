"""Typed, validated experiment configs: one YAML file plus ``dotted.key=value`` overrides.

Configs are pydantic models with ``extra="forbid"``, so an unknown key anywhere is an
error that names it. YAML is read with ``yaml.safe_load`` and override values are parsed
as YAML scalars / flow collections (never evaluated as code).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound="StrictModel")


class ConfigError(ValueError):
    """A config that cannot be used: unknown key, wrong type, bad override syntax."""


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict. A top-level ``base: other.yaml`` (relative to this file)
    loads that file first and merges this one over it, section by section, so a variant
    config states only what it changes."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    chain = (*_chain, path.resolve())
    base_path = path.parent / str(base)
    if base_path.resolve() in chain:
        raise ConfigError(f"{path}: base {base!r} includes itself")
    return _merged(load_yaml(base_path, chain), data)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {override!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: cannot parse value: {exc}") from exc
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _describe_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{loc}'")
        else:
            lines.append(f"'{loc}': {err['msg']}")
    return "; ".join(lines)


def build_config(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """YAML file (optional) + overrides -> a validated config of type ``cls``."""
    data = load_yaml(path) if path is not None else {}
    for override in overrides:
        apply_override(data, override)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc)) from None


def flatten(config: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become JSON strings (MLflow params)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def config_hash(config: BaseModel) -> str:
    payload = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def options_help(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per leaf option: dotted name, type, default and description."""
    lines: list[str] = []
    for name, field in cls.model_fields.items():
        dotted = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.extend(options_help(ann, f"{dotted}."))
            continue
        if get_origin(ann) is Literal:
            type_name = " | ".join(str(a) for a in get_args(ann))
        else:
            type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        elif isinstance(default, Path):
            default = str(default)
        desc = f"  {field.description}" if field.description else ""
        lines.append(f"  {dotted} ({type_name}, default {default!r}){desc}")
    return lines
