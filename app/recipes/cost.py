"""What a stage costs beyond holding the model: read by the worker's time estimate
(`workers/methods/estimate.py`) and by the memory plan (`app/planning/`), in the API and the
worker alike, so both count the same work."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageCost:
    # Forward passes over the calibration set (llm-compressor's sequential pipeline runs every
    # decoder layer twice per sample: calibrate, then propagate); 0 = reads no calibration data.
    calibration_passes: float = 0.0
    # Whether each linear's input Hessian (in x in, float32) is accumulated, one layer at a time.
    hessians: bool = False
    # Stages that train: tokens trained, tokens per micro-batch, wall-clock cap (s) or None.
    training_tokens: int = 0
    micro_batch_tokens: int = 0
    max_seconds: float | None = None
    # Tokens the teacher generates (sampled one at a time, with a KV cache) as training text.
    generated_tokens: int = 0
    # Stages that tune one decoder layer at a time by gradient descent (AutoRound): samples
    # per step, whose activations are kept for the backward pass.
    block_training_samples: int = 0
    # Whether the worker can run the stage on a disk-offloaded model (one decoder layer in
    # memory at a time) and save its artifact shard by shard: weight quantization through
    # llm-compressor whose artifact is a plain compressed-tensors checkpoint.
    offloadable: bool = False
    # Whether every weight block's scales are searched under activation-weighted error
    # (auto-round's OPT-RTN, the GGUF importance matrix): work per weight, not per token.
    scale_search: bool = False
    # A search's sensitivity pass (workers/search/sensitivity.py): one backward pass per
    # calibration sample through the whole model, a float32 gradient per weight and a float32
    # Fisher sum per linear weight.
    fisher: bool = False

    @property
    def calibrated(self) -> bool:
        return self.calibration_passes > 0

    @property
    def trains(self) -> bool:
        return self.training_tokens > 0
