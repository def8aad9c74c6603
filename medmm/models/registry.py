"""Model registry: ``create_model(name, config)`` as in timm / open_clip.

Every model module registers a builder under a name, together with its config class and
a function returning a tiny example (a small config, the builder's keyword arguments and
an input batch), so that one test walks ``list_models()`` and builds, runs and
back-propagates through every registered model.

The builder contract: ``builder(config, **kwargs) -> nn.Module``, where ``config`` is an
instance of the registered config class and every keyword argument (sizes that come from
the data, such as ``image_size``) has a default, so ``create_model(name)`` builds the model
with its default config.

Importing :mod:`medmm.models` imports the model modules, which registers them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

__all__ = ["ModelExample", "RegisteredModel", "create_model", "list_models", "model_example", "register_model",
           "registered_model"]


@dataclass
class ModelExample:
    """A tiny instance of a registered model: ``create_model(name, config, **build_kwargs)``
    runs forward on ``model(*inputs)``; ``output_shapes`` names the output tensors (keys of a
    dict output, fields of a dataclass output, ``"output"`` for a single tensor) and their
    expected shapes."""

    config: BaseModel
    inputs: tuple[Any, ...]
    output_shapes: Mapping[str, tuple[int, ...]]
    build_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    builder: Callable[..., Any]
    config: type[BaseModel]
    example: Callable[[], ModelExample]


_MODELS: dict[str, RegisteredModel] = {}


def register_model(name: str, *, config: type[BaseModel],
                   example: Callable[[], ModelExample]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``builder(config, **kwargs)`` under ``name``; ``config`` is the
    class of its config and ``example()`` gives a tiny config and a batch for the tests."""

    def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = RegisteredModel(name, builder, config, example)
        return builder

    return decorator


def list_models() -> list[str]:
    return sorted(_MODELS)


def registered_model(name: str) -> RegisteredModel:
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}") from None


def model_example(name: str) -> ModelExample:
    """A tiny config, build arguments and an input batch of the registered model ``name``."""
    return registered_model(name).example()


def _as_config(entry: RegisteredModel, config: BaseModel | Mapping[str, Any] | None) -> BaseModel:
    if config is None:
        return entry.config()
    if isinstance(config, entry.config):
        return config
    if isinstance(config, Mapping):
        return entry.config.model_validate(dict(config))
    raise TypeError(f"model {entry.name!r} takes a {entry.config.__name__}, a dict or None as its config, "
                    f"got {type(config).__name__}")


def create_model(name: str, config: BaseModel | Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """Build the registered model ``name``: ``config`` is an instance of its config class,
    a plain dict validated into one, or None for the class defaults; ``kwargs`` go to the
    builder (e.g. ``image_size``)."""
    entry = registered_model(name)
    return entry.builder(_as_config(entry, config), **kwargs)
