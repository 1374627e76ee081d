"""GGUF artifacts: one `.gguf` file (weights, tokenizer, chat template) plus `squash_format.json`
naming it. What llama.cpp runs; transformers opens it with `gguf_file=` (dequantized on load),
which is how the load check and the perplexity read it. Storage figures come from the file's
own tensor table (read from its header: `gguf_header.py`), never from the requested type: a
k-quant layer whose rows are not a multiple of 256 is written in a fallback type, and the
report says so.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from workers.formats.gguf_header import tensor_table

FORMAT = "gguf"
MANIFEST = "squash_format.json"
FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "F64"})


def file_name(gguf_type: str) -> str:
    return f"model-{gguf_type}.gguf"


def place(written: Path, out_dir: Path, gguf_type: str) -> Path:
    """Move the exporter's file into the artifact directory under a stable name, then the
    manifest (written last: a directory without it is not a finished GGUF artifact)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / file_name(gguf_type)
    shutil.move(str(written), target)
    (out_dir / MANIFEST).write_text(
        json.dumps({"format": FORMAT, "file": target.name, "type": gguf_type}, indent=2) + "\n"
    )
    return target


def artifact_file(path: Path) -> Path:
    manifest = json.loads((path / MANIFEST).read_text())
    return path / str(manifest["file"])


def load(path: Path, dtype: torch.dtype, **options: Any) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    file = artifact_file(path)
    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
        str(path), gguf_file=file.name, dtype=dtype, **options
    )
    return model


def storage(file: Path) -> dict[str, Any]:
    """Bits per quantized weight (every tensor not stored as a float) and the types written."""
    table = tensor_table(file)
    quantized = [t for t in table if t["type"] not in FLOAT_TYPES]
    weights = sum(t["elements"] for t in quantized)
    stored = sum(t["bytes"] for t in quantized)
    return {
        "quantized_layers": len(quantized),
        "quantized_weights": weights,
        "quantized_bytes": stored,
        "bits_per_weight": round(8 * stored / weights, 4) if weights else 0.0,
        "tensor_types": dict(Counter(t["type"] for t in quantized).most_common()),
        "all_bits_per_weight": round(
            8 * sum(t["bytes"] for t in table) / max(sum(t["elements"] for t in table), 1), 4
        ),
    }


def float_tensors(file: Path, largest: int = 5) -> dict[str, object]:
    found = [
        {"name": t["name"], "parameters": t["elements"], "dtype": t["type"]}
        for t in tensor_table(file)
        if t["type"] in FLOAT_TYPES
    ]
    found.sort(key=lambda item: int(item["parameters"]), reverse=True)
    return {
        "tensors": len(found),
        "parameters": sum(int(item["parameters"]) for item in found),
        "largest": found[:largest],
    }
