"""Layer checkpoints of a layer-wise calibrated stage (GPTQ today): after each decoder layer is
compressed, its tensors go to the object store, so a retried attempt restores the finished
layers instead of computing them again, and continues from the first missing one.

Layout under `checkpoints/<job id>/layers/stage-<i>/`: one safetensors file per layer
(`layer-<n>-g<lease generation>.safetensors`, so two attempts never write the same object) and
`latest.json`, rewritten after every layer, naming each finished layer's file and sha256 and
the fingerprint of the stage (parameters, calibration samples, model shape). A reader trusts a
layer only if its file is there and matches its sha256, and restores a prefix of layers only
(layer i's inputs come from layers before it). Writes go through the job's check point first:
an attempt that lost its lease writes nothing more.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from botocore.exceptions import BotoCoreError, ClientError
from safetensors.torch import load_file, save_file

from app.storage import ObjectNotFound, ObjectStore, sha256_file

POINTER = "latest.json"


def stage_fingerprint(method: str, params: dict[str, Any], samples: list[list[int]]) -> str:
    blob = json.dumps([method, params, samples], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class LayerCheckpoints:
    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        scratch: Path,
        *,
        generation: int,
        fingerprint: str,
        check: Callable[[], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.scratch = scratch
        self.generation = generation
        self.fingerprint = fingerprint
        self.check = check
        self.warn = warn
        self.failed = False  # a write failed: the stage goes on without checkpoints
        self.saved: dict[str, dict[str, Any]] = {}

    def _pointer(self) -> dict[str, Any] | None:
        try:
            pointer: dict[str, Any] = json.loads(self.store.get_bytes(f"{self.prefix}/{POINTER}"))
        except ObjectNotFound:
            return None
        return pointer

    def restore(self, layers: int) -> tuple[dict[int, Path], str | None]:
        """The verified finished layers, a prefix 0..k-1 of the model's, as local files (read
        one at a time by `load`, so restoring 40 layers of a 70B model does not hold them all
        in memory); and why anything was not restored (None when all that was written is)."""
        pointer = self._pointer()
        if pointer is None:
            return {}, None
        if pointer.get("fingerprint") != self.fingerprint:
            return {}, "layer checkpoints belong to another stage setup: starting over"
        self.scratch.mkdir(parents=True, exist_ok=True)
        restored: dict[int, Path] = {}
        why = None
        for index in range(layers):
            entry = pointer["layers"].get(str(index))
            if entry is None:
                break
            path = self.scratch / f"restore-{index}.safetensors"
            try:
                self.store.get_file(entry["key"], path)
            except ObjectNotFound:
                why = f"layer {index}'s checkpoint is missing: computing from there"
                break
            if sha256_file(path) != entry["sha256"]:
                why = f"layer {index}'s checkpoint fails its sha256 check: computing from there"
                path.unlink()
                break
            restored[index] = path
        self.saved = {str(i): pointer["layers"][str(i)] for i in restored}
        return restored, why

    @staticmethod
    def load(path: Path) -> dict[str, torch.Tensor]:
        """One restored layer's tensors; the local file goes once read."""
        tensors = load_file(str(path))
        path.unlink(missing_ok=True)
        return tensors

    def save(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        """One finished layer's tensors, then the pointer naming it (written last). A store
        that fails costs only the resume point: the stage goes on, and says so once."""
        if self.check is not None:
            self.check()  # a stale attempt (lease lost) stops here, before any write
        if self.failed:
            return
        try:
            self._write(index, tensors)
        except (OSError, BotoCoreError, ClientError) as exc:
            self.failed = True
            if self.warn is not None:
                self.warn(f"layer checkpoint {index} failed, the stage goes on without: {exc}")

    def _write(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        path = self.scratch / f"layer-{index}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
        key = f"{self.prefix}/layer-{index:05d}-g{self.generation}.safetensors"
        self.store.put_file(key, path)
        self.saved[str(index)] = {"key": key, "sha256": sha256_file(path)}
        path.unlink()
        pointer = {"fingerprint": self.fingerprint, "layers": self.saved}
        self.store.put_bytes(f"{self.prefix}/{POINTER}", json.dumps(pointer).encode())


def layer_tensors(modules: dict[str, Any], attrs: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """One layer's tensors to checkpoint, keyed `<module name>.<attr>` (those it has)."""
    return {
        f"{name}.{attr}": getattr(module, attr).data
        for name, module in modules.items()
        for attr in attrs
        if isinstance(getattr(module, attr, None), torch.Tensor)
    }


@torch.no_grad()
def load_layer_tensors(modules: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Put a restored layer's tensors back, each on its module's device and dtype (through
    compressed-tensors, so an offloaded module's copy is updated too)."""
    from compressed_tensors.offload import update_offload_parameter

    for key, tensor in tensors.items():
        name, attr = key.rsplit(".", 1)
        current = getattr(modules[name], attr)
        update_offload_parameter(modules[name], attr, tensor.to(current.device, current.dtype))
