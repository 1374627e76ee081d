"""Where the job runs: its device, the loader every phase uses, and what the report records
about the machine and the libraries."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from workers.formats.loader import load_pretrained
from workers.methods.shared.storage_dtype import compute_dtype
from workers.models.offloaded import open_offloaded

LIBRARIES = (
    "torch",
    "transformers",
    "llmcompressor",
    "compressed-tensors",
    "lm_eval",
    # GGUF output and its serving figures (llama-cpp-python is optional on a worker).
    "auto-round",
    "gguf",
    "llama_cpp_python",
)


def pick_device(preference: str) -> torch.device:
    if preference == "gpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def load_model(path: Path, device: torch.device) -> torch.nn.Module:
    """Any model or artifact directory, float32, on `device` (the one loader users get too)."""
    return load_pretrained(path).to(device).eval()


def open_model_offloaded(path: Path, offload_dir: Path, device: torch.device) -> torch.nn.Module:
    """Any plain checkpoint directory disk-offloaded, computing in the stages' dtype (float32
    on CPU, bfloat16 on GPU): the loader of the `disk_offloaded` mode."""
    return open_offloaded(path, offload_dir, onload_device=device, dtype=compute_dtype(device))


def library_versions() -> dict[str, str]:
    """Each library's version, "absent" for one a worker runs without (lm_eval is needed
    only by jobs that name its tasks)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions | {"python": platform.python_version()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.machine()}:{torch.get_num_threads()}threads"
