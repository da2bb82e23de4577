"""What a trial's network costs, from its config alone (no data read, no weights allocated): the input shape its
data gives the model, and params and multiply-adds measured on the `meta` device, cached per architecture."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from ablations.config import DATASETS, RunConfig
from senet_core import Complexity, build_model, measure, model_info


def input_shape(config: RunConfig) -> tuple[int, int, int]:
    """(in_channels, image side in pixels, classes) the model sees, from the config alone (no data is read).

    ImageFolder's class count comes from its folders; without `model.num_classes` the backbone's default is used.
    """
    data = config.data
    if data.dataset == "synthetic":
        channels, size, classes = data.synthetic_channels, data.synthetic_size, data.synthetic_classes
    elif data.dataset == "imagefolder":
        channels, size = 3, data.image_size
        classes = model_info(config.model.name).defaults().get("model.num_classes", 1000)
    else:
        channels, size, classes = DATASETS[data.dataset][:3]
    return config.model.in_channels or channels, size, config.model.num_classes or classes


def network_cost(name: str, options: dict[str, Any], size: int) -> Complexity:
    """Params and multiply-adds of a network for one `size`×`size` image, built on `meta` (no memory, no init);
    cached, so a sweep measures each architecture once."""
    return _network_cost(name, frozen_options(options), size)


def frozen_options(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """`build_model` options as a hashable cache key (lists as tuples, a per-stage map as its sorted pairs);
    `dict()` of it gives options `build_model` takes."""

    def freeze(v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else tuple(sorted(v.items())) if isinstance(v, dict) else v

    return tuple(sorted((k, freeze(v)) for k, v in options.items()))


@lru_cache(maxsize=256)
def _network_cost(name: str, frozen: tuple, size: int) -> Complexity:
    options = dict(frozen)
    channels = options.get("model.in_channels", model_info(name).defaults().get("model.in_channels", 3))
    with torch.device("meta"):
        net = build_model(name, options)
    return measure(net, size, channels)


def cost(config: RunConfig) -> Complexity:
    """Params and multiply-adds of the trial's network at its data's image size (from the config alone)."""
    channels, size, classes = input_shape(config)
    return network_cost(config.model.name, config.model_options(channels, classes), size)
