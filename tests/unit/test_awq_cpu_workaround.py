"""The AWQ-on-CPU workaround in workers/methods/quantization/awq.py, pinned to upstream's
behaviour: when llm-compressor stops pinning activations (or pinning stops failing without an
accelerator), these tests fail and the workaround should be deleted."""

from __future__ import annotations

import inspect

import pytest
import torch
from llmcompressor.modifiers.transform.awq import AWQModifier
from llmcompressor.pipelines.cache import IntermediatesCache

from workers.methods.quantization.awq import pinning_disabled_without_accelerator

no_accelerator = pytest.mark.skipif(
    torch.accelerator.is_available(), reason="the workaround only acts without an accelerator"
)


def cache_with_one_tensor() -> IntermediatesCache:
    cache = IntermediatesCache.empty(1, torch.device("cpu"))
    cache.update(0, {"hidden_states": torch.ones(2, 3)})
    return cache


def test_upstream_awq_still_pins_cached_activations() -> None:
    assert "pin_memory(" in inspect.getsource(AWQModifier._apply_smoothing)


@no_accelerator
def test_upstream_pinning_fails_without_an_accelerator() -> None:
    with pytest.raises(RuntimeError, match="accelerator"):
        cache_with_one_tensor().pin_memory(0)


@no_accelerator
def test_workaround_skips_pinning_and_restores_the_method() -> None:
    original = IntermediatesCache.pin_memory
    cache = cache_with_one_tensor()
    with pinning_disabled_without_accelerator():
        cache.pin_memory(0)
        assert torch.equal(cache.fetch(0)["hidden_states"], torch.ones(2, 3))
    assert IntermediatesCache.pin_memory is original
