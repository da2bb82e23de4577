"""Latency measured alone and cached: a real timing of the tiny network on this CPU, read back from the cache by
architecture, batch, mode and device, never timed twice."""

from __future__ import annotations

import json

import pytest
import torch

from ablations.config import build_config
from ablations.training import latency
from tests._support.configs import TINY, tiny_tree

CPU = torch.device("cpu")


def test_a_design_is_timed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    cfg = build_config(TINY)
    first = latency.latency_ms(cfg, tmp_path, 16, False, CPU)
    assert 0 < first < 10_000
    cache = json.loads((tmp_path / latency.CACHE).read_text())
    assert list(cache.values()) == [first] and "batch 16|forward|" in next(iter(cache))

    def never(*_):
        raise AssertionError("timed again")

    monkeypatch.setattr(latency, "time_batch", never)
    assert latency.latency_ms(cfg, tmp_path, 16, False, CPU) == first
    other_seed = build_config({**TINY, "seed": 3})  # the same architecture: the same latency
    assert latency.latency_ms(other_seed, tmp_path, 16, False, CPU) == first
    with pytest.raises(AssertionError, match="timed again"):  # another batch, mode or network is timed anew
        latency.latency_ms(cfg, tmp_path, 16, True, CPU)
    with pytest.raises(AssertionError, match="timed again"):
        latency.latency_ms(build_config(tiny_tree(se={"reduction": 2})), tmp_path, 16, False, CPU)


def test_forward_and_backward_costs_more_than_forward_and_keys_differ():
    cfg = build_config(TINY)
    assert latency.key(cfg, 8, True, CPU) != latency.key(cfg, 8, False, CPU) != latency.key(cfg, 16, False, CPU)
    fwd, both = (latency.time_batch(cfg, 32, backward, CPU) for backward in (False, True))
    assert both > fwd  # a backward pass is real work on top of the forward one
