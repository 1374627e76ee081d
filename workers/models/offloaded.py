"""Open a model directory disk-offloaded, without reading a single weight: the building block of
the job's disk-offloaded mode (issue 20), where no phase may hold the whole model in memory.

The model is built on the meta device from its config (parameters only: buffers such as the
rotary frequencies are computed on the CPU, they are small), then every parameter is handed to
compressed-tensors' `DiskCache` as a pointer into the checkpoint's own safetensors files.
compressed-tensors then onloads each module's tensors when its forward runs (one `safe_open` per
tensor, closed after the read, so the file's mapped pages leave the RSS again) and writes a
changed tensor to its offload folder instead of the checkpoint. llm-compressor's sequential
pipeline and `oneshot` work on such a model as on one loaded with
`compressed_tensors.offload.load_offloaded_model`.

Why not that function: it loads through transformers' `from_pretrained(device_map=...)`, which
reads every tensor while loading; on a 1.1B Llama (2.2 GB in bf16) the load peaked at 2.3 GB
above the imports, all of the checkpoint. Building the pointers ourselves costs no read at all.

The parameters keep the compute dtype (float32 on CPU, as the in-memory mode computes) while the
files hold the 16-bit storage dtype: each onload converts the one tensor it reads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from workers.formats.loader import trust_remote_code


class NotOffloadable(ValueError):
    """The checkpoint does not name a tensor for every parameter of the model its config
    builds (an architecture whose checkpoint keys transformers renames while loading)."""


def checkpoint_tensors(model_dir: Path) -> dict[str, Path]:
    """Every tensor name in the directory's safetensors files, with the file that holds it,
    read from each file's header (so a corrupt file fails here, not in the middle of a job)."""
    from safetensors import safe_open

    found: dict[str, Path] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            found.update(dict.fromkeys(handle.keys(), file))
    return found


def open_offloaded(
    model_dir: Path,
    offload_dir: Path,
    *,
    onload_device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """The model of `model_dir`, every parameter on disk (in `model_dir`'s own files until a
    stage changes it; changed tensors go to `offload_dir`). Raises `NotOffloadable` when a
    parameter has no tensor in the checkpoint."""
    from accelerate import init_empty_weights
    from compressed_tensors.offload import offload_module
    from compressed_tensors.offload.cache import DiskCache
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code())
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, trust_remote_code=trust_remote_code()
        )
    model.tie_weights()
    tensors = checkpoint_tensors(model_dir)
    offload_dir.mkdir(parents=True, exist_ok=True)
    params = list(model.named_parameters(remove_duplicate=True))
    # Checked before any pointer is made, so a refused checkpoint leaves no link behind.
    missing = [name for name, _ in params if name not in tensors]
    if missing:
        raise NotOffloadable(
            f"{len(missing)} parameter(s) of {type(model).__name__} have no tensor of that "
            f"name in the checkpoint (first: {missing[0]})"
        )
    for name, param in params:
        # The pointer: DiskCache onloads `weight_name` from the file and casts to `dtype`.
        entry = {
            "safetensors_file": str(tensors[name]),
            "weight_name": name,
            "dtype": str(dtype).removeprefix("torch."),
        }
        DiskCache.create_checkpoint_symlink(param, entry, str(offload_dir))
    for module in model.modules():
        if module._parameters or module._buffers:
            offload_module(module, onload_device, "disk", offload_dir=str(offload_dir))
    return model.eval()
