"""The model zoo: `build(name, num_classes=..., **options)`, `list_models()`, `get_spec(name)`.

Importing this package imports every family module so that each registers its models.
docs/models.md lists them with their parameter and multiply-add counts (`describe`, `model_table`).
"""

# Each family module registers its models on import.
from . import (alexnet, bn_inception, cifar_resnet, googlenet, inception_resnet,  # noqa: F401
               inception_v3, inception_v4, resnet, small, small_inception, vgg, xception)
from .flops import MacReport, count_macs, count_params
from .outputs import AuxOutputs, main_logits, training_loss
from .registry import ModelSpec, build, get_spec, list_models, register_model
from .summary import build_meta, describe, format_table, model_table

__all__ = ["AuxOutputs", "MacReport", "ModelSpec", "build", "build_meta", "count_macs",
           "count_params", "describe", "format_table", "get_spec", "list_models", "main_logits",
           "model_table", "register_model", "training_loss"]
