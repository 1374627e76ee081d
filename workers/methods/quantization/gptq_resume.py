"""GPTQ with layer checkpoints and resume (`workers/methods/shared/layer_resume.py`), mask-aware
after a sparsity stage and able to solve on a narrowed grid with given scales (ternary), both
through `masked_gptq.py`. Imported inside `apply` only: llm-compressor is heavy to import."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from compressed_tensors.offload import disable_offloading
from compressed_tensors.utils import getattr_chain
from llmcompressor.modifiers.gptq.helpers import (
    assign_batches,
    prepare_batch,
    update_batch_qparams,
)
from llmcompressor.modifiers.quantization import GPTQModifier as LibraryGPTQModifier
from pydantic import PrivateAttr

from workers.methods.quantization.masked_gptq import quantize_weight_masked
from workers.methods.shared.layer_resume import LayerResume


class GPTQModifier(LayerResume, LibraryGPTQModifier):
    """Named like the library's class: the artifact's recipe.yaml stays a stock recipe."""

    _keep_masks: dict[Any, torch.Tensor] = PrivateAttr(default_factory=dict)
    _integer_range: tuple[int, int] | None = PrivateAttr(default=None)
    _scales: Callable[[Any], torch.Tensor] | None = PrivateAttr(default=None)

    def keep_masks(self, model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
        """The earlier sparsity stage's masks by layer name (True = kept): those layers are
        solved jointly, their pruned weights held at zero with the error compensated."""
        modules = dict(model.named_modules())
        self._keep_masks = {modules[name]: mask for name, mask in masks.items()}

    def narrow_grid(
        self, integer_range: tuple[int, int], scales: Callable[[Any], torch.Tensor]
    ) -> None:
        """Solve with integers in `integer_range` and each module's scales from `scales(module)`
        (taken before the solve updates its weight) instead of the observer's."""
        self._integer_range, self._scales = integer_range, scales

    def compress_module_list(self, module_list: list[Any]) -> None:
        if not self._keep_masks and self._integer_range is None:
            super().compress_module_list(module_list)
            return
        # The library's loop (llmcompressor.modifiers.gptq.base) with the masked solve.
        batches: list[list[Any]] = assign_batches(
            module_list, self.batched_quantization, self.block_size
        )
        for batch in batches:
            quant_args = getattr_chain(batch[0], "quantization_scheme.weights")
            qparams = [module.weight_observer.get_qparams() for module in batch]
            if self._scales is not None:
                qparams = [
                    {**q, "scale": self._scales(m).to(q["scale"])}
                    for q, m in zip(qparams, batch, strict=True)
                ]
            with torch.no_grad(), disable_offloading():
                weights, hessians, scales, zero_points, global_scales = prepare_batch(
                    batch, qparams, self._hessians, self._num_samples
                )
                masks = torch.stack(
                    [
                        self._keep_masks.get(m, torch.ones_like(m.weight, dtype=torch.bool)).to(
                            weights.device
                        )
                        for m in batch
                    ]
                )
                quantized, _, fallback = quantize_weight_masked(
                    weights,
                    hessians,
                    masks,
                    scales,
                    zero_points,
                    global_scales,
                    quant_args,
                    blocksize=self.block_size,
                    percdamp=self.dampening_frac or 0.0,
                    integer_range=self._integer_range,
                )
                for index, module in enumerate(batch):
                    if fallback[index].item():
                        self._rtn_fallback_module_names.append(self._module_names[module])
                update_batch_qparams(
                    batch, quantized, scales, zero_points, global_scales, quant_args
                )
                self._num_compressed_modules += len(batch)


ResumableGPTQModifier = GPTQModifier
