"""Sizes, parameter counts and greedy generations, all measured from real files and models."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def weight_bytes(path: Path) -> int:
    """Bytes of the weight files (safetensors) in a model directory."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def saved_checkpoint_bytes(model: torch.nn.Module) -> int:
    """Size of the model saved as a safetensors checkpoint in its current dtype."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # type: ignore[operator]
        return weight_bytes(Path(tmp))


def parameter_count(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


@torch.no_grad()
def greedy_generations(
    model: torch.nn.Module, tokenizer: object, prompts: list[str], max_new_tokens: int
) -> list[str]:
    outputs = []
    device = next(model.parameters()).device
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(device)  # type: ignore[operator]
        generated = model.generate(  # type: ignore[operator]
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0
        )
        new_tokens = generated[0, inputs["input_ids"].shape[1] :]
        outputs.append(tokenizer.decode(new_tokens, skip_special_tokens=True))  # type: ignore[attr-defined]
    return outputs
