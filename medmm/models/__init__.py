"""Plain ``nn.Module`` models and their registry: ``create_model(name, config)``.

Importing the model modules here runs their ``@register_model`` decorators, so every
built-in model is registered once ``medmm.models`` is imported.
"""

from medmm.models import cmta, mmlego, more, ptunifier, segmentation  # noqa: F401  (registers the models)
from medmm.models.heads import survival  # noqa: F401  (registers the survival heads)
from medmm.models.registry import (
    ModelExample,
    RegisteredModel,
    create_model,
    list_models,
    model_example,
    register_model,
    registered_model,
)

__all__ = ["ModelExample", "RegisteredModel", "create_model", "list_models", "model_example", "register_model",
           "registered_model"]
