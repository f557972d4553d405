"""The model zoo: `build(name, num_classes=..., **options)`, `list_models()`, `get_spec(name)`.

Importing this package imports every family module so that each registers its models.
"""

from . import small  # noqa: F401  (registers models)
from .outputs import AuxOutputs, main_logits, training_loss
from .registry import ModelSpec, build, get_spec, list_models, register_model

__all__ = ["AuxOutputs", "ModelSpec", "build", "get_spec", "list_models", "main_logits",
           "register_model", "training_loss"]
