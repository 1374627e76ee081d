"""AWQ: activation-aware weight quantization.

Example stage: `{"method": "awq", "params": {"bits": 4, "group_size": 64}}`

llm-compressor's AWQModifier does the work: it searches, per smoothing mapping (a norm or linear
layer followed by the layers it feeds), the input-channel scales that minimise the block's
output error after quantization, and folds them into the weights.

CPU workaround (llm-compressor 0.14): `_apply_smoothing` pins every cached activation before
its grid search, and `Tensor.pin_memory()` raises "Cannot access accelerator device when none
is available" without a GPU. Pinning only speeds up host-to-GPU copies, so on a machine with no
accelerator we make `IntermediatesCache.pin_memory` a no-op for the duration of the stage.
`tests/unit/test_awq_cpu_workaround.py` fails when upstream stops pinning (or stops failing on
CPU), so the patch goes when it is no longer needed.

Which mappings apply is reported: under grouped-query attention `v_proj` (kv heads x head dim)
and `o_proj` (all heads x head dim) have different widths, so the v_proj -> o_proj mapping is
skipped for every layer, as AutoAWQ also does; the other mappings apply.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from app.recipes import AwqParams
from workers.methods.base import CompressionMethod, StageInput, StageResult
from workers.methods.quantization.common import (
    preflight_weight_quant,
    require_mappings,
    weight_quant_plan,
)
from workers.methods.shared.calibration import oneshot_calibrated, require_calibration
from workers.methods.shared.layers import architecture


@contextmanager
def pinning_disabled_without_accelerator() -> Iterator[None]:
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original  # type: ignore[method-assign]


def mapping_report(model: torch.nn.Module, applied: list[tuple[str, list[str]]]) -> dict[str, Any]:
    """Per mapping pattern: how many layers it applied to and how many it matched but skipped."""
    from compressed_tensors.utils import match_named_modules
    from llmcompressor.modifiers.transform.awq.mappings import AWQ_MAPPING_REGISTRY

    report: dict[str, Any] = {}
    applied_smooth = {smooth for smooth, _ in applied}
    for mapping in AWQ_MAPPING_REGISTRY[architecture(model)]:
        matched = [name for name, _ in match_named_modules(model, [mapping.smooth_layer])]
        used = sum(name in applied_smooth for name in matched)
        key = f"{mapping.smooth_layer} -> {', '.join(mapping.balance_layers)}"
        report[key] = {"applied": used, "skipped": len(matched) - used}
    return report


def recording_awq_modifier(**kwargs: Any) -> Any:
    """llm-compressor's AWQ transform, remembering which mappings it resolved (it clears its
    own list when it finishes)."""
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from pydantic import PrivateAttr

    class RecordingAWQModifier(AWQModifier):
        _squash_applied: list[tuple[str, list[str]]] = PrivateAttr(default_factory=list)

        def _set_resolved_mappings(self, model: torch.nn.Module) -> None:
            super()._set_resolved_mappings(model)
            self._squash_applied.extend(
                (m.smooth_name, list(m.balance_names)) for m in self._resolved_mappings
            )

    return RecordingAWQModifier(**kwargs)


class Awq(CompressionMethod[AwqParams]):
    name = "awq"
    params_type = AwqParams

    def preflight(self, model: torch.nn.Module, params: AwqParams) -> list[str]:
        from llmcompressor.modifiers.transform.awq.mappings import AWQ_MAPPING_REGISTRY

        require_mappings(self.name, model, AWQ_MAPPING_REGISTRY)
        return preflight_weight_quant(self.name, model, params)

    def apply(self, stage: StageInput, params: AwqParams) -> StageResult:
        from llmcompressor.modifiers.quantization import QuantizationModifier

        samples = require_calibration(self.name, stage)
        groups, notes = weight_quant_plan(stage.model, params)
        # The transform searches scales for the scheme the quantization modifier attaches.
        awq = recording_awq_modifier(duo_scaling=params.duo_scaling, n_grid=params.n_grid)
        quantize = QuantizationModifier(config_groups=groups, ignore=list(params.ignore))
        with pinning_disabled_without_accelerator():
            oneshot_calibrated(stage, self.name, [awq, quantize], samples)
        return StageResult(
            model=stage.model,
            save_format="compressed-tensors",
            notes={
                **notes,
                "calibration_samples": len(samples),
                "mappings": mapping_report(stage.model, awq._squash_applied),
            },
        )
