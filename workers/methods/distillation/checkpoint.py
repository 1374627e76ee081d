"""Training checkpoints in the object store: student weights, optimizer, schedule, RNG and data
position, so a retried job resumes where its last attempt stopped.

Layout under `checkpoints/<job id>/`: one folder per checkpoint (`step-<n>-g<lease generation>/`,
so two attempts never write into the same folder) and `latest.json`, written last, naming the
folder and every file's sha256. A reader trusts only a complete, verified checkpoint; the
folder before it is deleted once the new pointer is written. Two attempts racing (a stale one
that has not noticed it lost its lease) can only replace one complete checkpoint with another
of the same deterministic run. Weights go through safetensors; optimizer, schedule and RNG
state through torch.save, read back with `weights_only=True` (tensors and plain containers
only: no pickled code runs on load).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from app.storage import ObjectNotFound, ObjectStore, sha256_file

POINTER = "latest.json"
WEIGHTS = "student.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
RNG = "rng.pt"


@dataclass
class TrainingState:
    """Everything but tensors: where the run stands."""

    step: int = 0
    micro_batches: int = 0  # data position: micro-batches consumed
    tokens: int = 0
    train_seconds: float = 0.0
    done: bool = False
    losses: list[float] = field(default_factory=list)  # per step, the last LOSS_HISTORY

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Restored:
    state: TrainingState
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters training changes (all of them, or only LoRA adapters). Tied weights
    appear once: named_parameters() skips duplicates."""
    return {
        name: param.detach().to("cpu", copy=True).contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointStore:
    def __init__(
        self, store: ObjectStore, prefix: str, scratch: Path, *, generation: int, fingerprint: str
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.scratch = scratch
        self.generation = generation
        self.fingerprint = fingerprint
        self.saved_step: int | None = None

    def save(
        self,
        state: TrainingState,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
    ) -> int:
        """Write a complete checkpoint, then the pointer; returns the bytes written."""
        local = self.scratch / f"checkpoint-{state.step}"
        local.mkdir(parents=True, exist_ok=True)
        save_file(trainable_tensors(model), str(local / WEIGHTS))
        torch.save(optimizer.state_dict(), local / OPTIMIZER)
        torch.save(scheduler.state_dict(), local / SCHEDULER)
        torch.save(rng_state(), local / RNG)
        folder = f"{self.prefix}/step-{state.step:08d}-g{self.generation}"
        files: dict[str, dict[str, Any]] = {}
        for name in (WEIGHTS, OPTIMIZER, SCHEDULER, RNG):
            path = local / name
            self.store.put_file(f"{folder}/{name}", path)
            files[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
        previous = self._pointer()
        pointer = {
            "folder": folder,
            "files": files,
            "state": state.as_json(),
            "fingerprint": self.fingerprint,
            "generation": self.generation,
        }
        self.store.put_bytes(f"{self.prefix}/{POINTER}", json.dumps(pointer).encode())
        if previous and previous.get("folder") not in (None, folder):
            self.store.delete_prefix(previous["folder"])
        for path in local.iterdir():
            path.unlink()
        local.rmdir()
        self.saved_step = state.step
        return sum(f["size"] for f in files.values())

    def _pointer(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.get_bytes(f"{self.prefix}/{POINTER}"))
        except ObjectNotFound:
            return None

    def load(self) -> tuple[Restored | None, str | None]:
        """The latest checkpoint, verified; or (None, why not) when there is none to trust."""
        pointer = self._pointer()
        if pointer is None:
            return None, None
        if pointer.get("fingerprint") != self.fingerprint:
            return None, "the checkpoint belongs to another training setup: starting over"
        local = self.scratch / "restore"
        local.mkdir(parents=True, exist_ok=True)
        for name, meta in pointer["files"].items():
            path = local / name
            try:
                self.store.get_file(f"{pointer['folder']}/{name}", path)
            except ObjectNotFound:
                return None, f"checkpoint file {name} is missing: starting over"
            if sha256_file(path) != meta["sha256"]:
                return None, f"checkpoint file {name} fails its sha256 check: starting over"
        restored = Restored(
            state=TrainingState(**pointer["state"]),
            weights=load_file(str(local / WEIGHTS)),
            optimizer=torch.load(local / OPTIMIZER, weights_only=True),
            scheduler=torch.load(local / SCHEDULER, weights_only=True),
            rng=torch.load(local / RNG, weights_only=True),
        )
        for path in local.iterdir():
            path.unlink()
        self.saved_step = restored.state.step
        return restored, None
