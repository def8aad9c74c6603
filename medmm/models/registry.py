"""Model registry: ``create_model(name, config)`` as in timm / open_clip.

A model module registers a builder under a name; a builder takes the model's typed
config section and returns an ``nn.Module``. Tests walk ``list_models()`` with tiny
configs so that every registered model is exercised.
"""

from __future__ import annotations

from typing import Any, Callable

_BUILDERS: dict[str, Callable[..., Any]] = {}


def register_model(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorator


def _import_builtin_models() -> None:
    # Importing the modules runs their @register_model decorators.
    from medmm.models import (
        more,  # noqa: F401
        ptunifier,  # noqa: F401
        segmentation,  # noqa: F401
    )


def list_models() -> list[str]:
    _import_builtin_models()
    return sorted(_BUILDERS)


def create_model(name: str, config: Any, **kwargs: Any) -> Any:
    _import_builtin_models()
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_BUILDERS))}") from None
    return builder(config, **kwargs)
