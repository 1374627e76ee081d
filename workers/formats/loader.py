"""One loader for every Squash artifact: `squash.load_pretrained(path)`.

Plain artifacts (dense, compressed-tensors quantized, structurally pruned) are what
`transformers.AutoModelForCausalLM.from_pretrained` loads; this only adds the two layouts it
cannot: sparse-bitmask (expanded to the dense checkpoint, then loaded by transformers) and
low-rank (factored layers rebuilt). `squash_format.json` in the directory says which.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from workers.formats import gguf, low_rank, sparse_bitmask

PLAIN = "transformers"
# True only inside a job whose model source an operator allow-listed for remote code
# (workers/models/sources.py sets it after checking; workers/tasks.py runs each job in a fresh
# context). Every transformers load in a job reads it, so no load path can forget.
REMOTE_CODE_TRUSTED: ContextVar[bool] = ContextVar("remote_code_trusted", default=False)


def trust_remote_code() -> bool:
    return REMOTE_CODE_TRUSTED.get()


def artifact_format(path: Path) -> str:
    manifest = path / sparse_bitmask.MANIFEST
    if not manifest.exists():
        return PLAIN
    return str(json.loads(manifest.read_text()).get("format", PLAIN))


def load_pretrained(
    path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32, **kwargs: Any
) -> torch.nn.Module:
    """Load any Squash artifact directory as a transformers causal LM (kwargs go to
    `from_pretrained`, e.g. `quantization_config`)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    path = Path(path)
    found = artifact_format(path)
    if found == low_rank.FORMAT:
        return low_rank.load(path, dtype)
    if found == gguf.FORMAT:
        return gguf.load(path, dtype, trust_remote_code=trust_remote_code(), **kwargs)
    options = {
        "dtype": dtype,
        "trust_remote_code": trust_remote_code(),
        "use_safetensors": True,
        **kwargs,
    }
    if found == PLAIN:
        return AutoModelForCausalLM.from_pretrained(str(path), **options)
    if found != sparse_bitmask.FORMAT:
        raise ValueError(f"{path}: unknown artifact format {found!r}")
    tensors = sparse_bitmask.expand(path)
    with tempfile.TemporaryDirectory(prefix="squash-expand-") as tmp:
        for item in path.iterdir():
            if item.name not in (sparse_bitmask.WEIGHTS, sparse_bitmask.MANIFEST):
                os.symlink(item.resolve(), Path(tmp) / item.name)
        save_file(tensors, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        return AutoModelForCausalLM.from_pretrained(tmp, **options)
