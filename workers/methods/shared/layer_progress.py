"""Progress inside a layer-wise calibration: "layer i of n" with an ETA, in the job's
`progress_detail`, for the stages llm-compressor runs through its sequential pipeline (GPTQ,
AWQ, SparseGPT, Wanda, SmoothQuant). The pipeline calls decoder layer i for every calibration
sample before layer i + 1, so a forward pre-hook on each layer sees the pipeline move on; the
report is monotonic (a pipeline that runs whole forward passes only moves it forward once).
Calls made while the pipeline traces the model are not runs: on a disk-offloaded model the
trace calls every layer on meta tensors first, and progress then stayed at "layer 1 of 22"
(the later reports fell inside the write throttle) for the whole stage."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from workers.methods.base import StageInput
from workers.methods.shared.layers import decoder_layers


class LayerProgress:
    def __init__(self, stage: StageInput, method: str) -> None:
        self.stage = stage
        self.method = method
        self.layers = 0
        self.current = -1
        self.started = 0.0

    @contextmanager
    def watching(self, model: torch.nn.Module) -> Iterator[None]:
        if self.stage.ctx is None:  # outside a job: nobody to tell
            yield
            return
        layers = decoder_layers(model)
        self.layers, self.current, self.started = len(layers), -1, time.monotonic()
        handles = [
            layer.register_forward_pre_hook(self._hook(index)) for index, layer in enumerate(layers)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, index: int) -> Any:
        def hook(_module: torch.nn.Module, args: Any) -> None:
            if any(_not_run(arg) for arg in args):
                return  # the pipeline tracing the model, not running it
            if index > self.current:
                self.current = index
                self.report(index)

        return hook

    def report(self, index: int) -> None:
        """Layer `index` (0-based) started: `index` layers are done."""
        ctx = self.stage.ctx
        if ctx is None:
            return
        elapsed = time.monotonic() - self.started
        detail: dict[str, Any] = {"layer": index + 1, "layers": self.layers}
        if index:
            detail["eta_seconds"] = round(elapsed / index * (self.layers - index), 1)
        low, high = self.stage.progress_span
        # Through the job's check point: a cancel stops the stage between two layers.
        ctx.progress(f"stage:{self.method}", low + (high - low) * index / self.layers, detail)


def _not_run(arg: Any) -> bool:
    """A call made while the pipeline traces the model: fx proxies, or meta tensors (the
    shape pass in which a disk-offloaded model's trace calls every layer first)."""
    return isinstance(arg, torch.fx.Proxy) or (
        isinstance(arg, torch.Tensor) and arg.device.type == "meta"
    )
