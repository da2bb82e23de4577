"""senet_core: Squeeze-and-Excitation blocks, their placements, backbones and complexity (pure PyTorch)."""

from senet_core import mobilenet, resnet, vgg  # noqa: F401  (registers the backbones)
from senet_core._init import init_by_name
from senet_core._registry import MODEL_OPTIONS, SE_OPTIONS, ModelInfo, build_model, list_models, model_info, resolve
from senet_core.complexity import Complexity, count_params, measure
from senet_core.errors import SenetError
from senet_core.knockout import GateOverride
from senet_core.probe import ExcitationProbe, se_blocks
from senet_core.se import (
    SE_OFF,
    Excitation,
    Placement,
    Rounding,
    SEBlock,
    SEConfig,
    Squeeze,
    hidden_width,
    parse_reduction,
    se_param_count,
)
from senet_core.stem import StemPool
from senet_core.units import BasicBlock, Bottleneck, Shortcut, StrideLayout

__all__ = [
    "MODEL_OPTIONS",
    "SE_OFF",
    "SE_OPTIONS",
    "BasicBlock",
    "Bottleneck",
    "Complexity",
    "Excitation",
    "ExcitationProbe",
    "GateOverride",
    "ModelInfo",
    "Placement",
    "Rounding",
    "SEBlock",
    "SEConfig",
    "SenetError",
    "Shortcut",
    "Squeeze",
    "StemPool",
    "StrideLayout",
    "build_model",
    "count_params",
    "hidden_width",
    "init_by_name",
    "list_models",
    "measure",
    "model_info",
    "parse_reduction",
    "resolve",
    "se_blocks",
    "se_param_count",
]
