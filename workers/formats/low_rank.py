"""Low-rank artifacts: a factored Linear is two smaller Linears (`down`: in -> r, `up`: r -> out).

transformers' model classes have no factored layers, so plain `from_pretrained` cannot load
this: the weights are saved as `model.low_rank.safetensors` (a name transformers does not look
for, so it fails loudly instead of initialising the factored layers at random) and the ranks in
`squash_format.json`. `load` (exported as `squash.load_pretrained`) builds the model from its
config, swaps in the factored layers and loads every weight strictly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from workers.models.hf import hf_config

FORMAT = "squash-low-rank"
VERSION = 1
MANIFEST = "squash_format.json"
WEIGHTS = "model.low_rank.safetensors"


class LowRankLinear(torch.nn.Module):
    """y = up(down(x)): rank x (in + out) parameters instead of in x out."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = torch.nn.Linear(in_features, rank, bias=False, dtype=dtype)
        self.up = torch.nn.Linear(rank, out_features, bias=bias, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def replace_module(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def ranks_of(model: torch.nn.Module) -> dict[str, int]:
    return {n: m.rank for n, m in model.named_modules() if isinstance(m, LowRankLinear)}


def save(model: torch.nn.Module, out_dir: Path) -> dict[str, Any]:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config(model).save_pretrained(str(out_dir))
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(str(out_dir))
    # A tied tensor (SmolLM2's lm_head = embedding) is saved once, under its first name, as
    # transformers does; `load` ties it again.
    state: dict[str, torch.Tensor] = {}
    stored: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in stored:
            stored.add(tensor.data_ptr())
            state[name] = tensor.contiguous()
    save_file(state, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    manifest = {"format": FORMAT, "version": VERSION, "weights": WEIGHTS, "ranks": ranks_of(model)}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def load(path: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} artifact")
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    for name, rank in manifest["ranks"].items():
        dense = model.get_submodule(name)
        replace_module(
            model,
            name,
            LowRankLinear(
                dense.in_features, dense.out_features, rank, dense.bias is not None, dtype
            ),
        )
    state = load_file(str(path / manifest["weights"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()
