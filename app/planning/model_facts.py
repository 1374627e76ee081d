"""A causal LM's sizes from its `config.json` and safetensors headers alone: no weight is read,
so the API can plan a 70B job from a few kilobytes, and the worker can plan before it loads.

Parameter counts follow the Llama family's layout (q/k/v/o attention with grouped KV heads, a
gated MLP of three matrices, two norms per layer), which covers Llama, Mistral, Qwen2/3, Gemma,
Phi-3 and SmolLM; Mixture-of-Experts configs (Mixtral's `num_local_experts`, Qwen-MoE's
`num_experts` and `moe_intermediate_size`, shared experts) count every expert. When the weight
files' headers are at hand they replace the formula: the plan then uses exact sizes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bytes per element of the dtypes a checkpoint stores (config `torch_dtype` / `dtype`, and the
# safetensors header's names).
DTYPE_BYTES = {
    "float32": 4,
    "F32": 4,
    "float16": 2,
    "F16": 2,
    "bfloat16": 2,
    "BF16": 2,
    "float8_e4m3fn": 1,
    "F8_E4M3": 1,
    "I8": 1,
    "U8": 1,
    "I32": 4,
    "I64": 8,
    "F64": 8,
    "BOOL": 1,
}
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit
MAX_CONFIG_BYTES = 4 * 2**20


class UnreadableConfig(ValueError):
    """config.json lacks what a plan needs (names the missing key)."""


@dataclass(frozen=True)
class ModelFacts:
    hidden_size: int
    intermediate_size: int  # the dense MLP's width, or one expert's
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    num_experts: int  # 0: a dense model
    shared_expert_size: int  # MoE: the shared experts' total MLP width (0: none)
    storage_bytes_per_parameter: int  # of the floating weights as stored (2 for bf16/fp16)
    parameters: int
    checkpoint_bytes: int
    exact: bool  # sizes from the weight files' headers (else from the config's formula)

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def layer_parameters(self) -> int:
        """One decoder layer (the unit that is onloaded, calibrated and checkpointed)."""
        return max(1, (self.parameters - self.embedding_parameters) // self.num_hidden_layers)

    @property
    def layer_linear_inputs(self) -> list[int]:
        """Input size of every Linear in one decoder layer (for the Hessians: in x in each)."""
        attention = [self.hidden_size] * 3 + [self.num_attention_heads * self.head_dim]
        experts = max(self.num_experts, 1)
        mlp = [self.hidden_size] * 2 * experts + [self.intermediate_size] * experts
        if self.shared_expert_size:
            mlp += [self.hidden_size] * 2 + [self.shared_expert_size]
        return attention + mlp

    def as_json(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "checkpoint_bytes": self.checkpoint_bytes,
            "num_hidden_layers": self.num_hidden_layers,
            "hidden_size": self.hidden_size,
            "num_experts": self.num_experts,
            "exact": self.exact,
        }


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """Multimodal configs keep the language model's sizes under `text_config`."""
    nested = config.get("text_config")
    if "hidden_size" not in config and isinstance(nested, Mapping):
        return nested
    return config


def _required(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or value <= 0:
        raise UnreadableConfig(f"config.json has no positive integer `{key}`")
    return value


def facts_from_config(
    config: Mapping[str, Any], tensors: Mapping[str, TensorHeader] | None = None
) -> ModelFacts:
    text = _text_config(config)
    hidden = _required(text, "hidden_size")
    layers = _required(text, "num_hidden_layers")
    heads = _required(text, "num_attention_heads")
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    vocab = _required(text, "vocab_size")
    experts = int(
        text.get("num_local_experts")
        or text.get("num_experts")
        or text.get("n_routed_experts")
        or 0
    )
    dense_width = int(text.get("intermediate_size") or 4 * hidden)
    width = int(text.get("moe_intermediate_size") or dense_width) if experts else dense_width
    shared = int(text.get("shared_expert_intermediate_size") or 0)
    if not shared and text.get("n_shared_experts"):
        shared = int(text["n_shared_experts"]) * width
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    dtype = str(config.get("torch_dtype") or config.get("dtype") or text.get("dtype") or "")
    element = DTYPE_BYTES.get(dtype.removeprefix("torch."), 2)

    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    if text.get("attention_bias"):
        attention += (heads + 2 * kv_heads) * head_dim
    if experts:
        mlp = experts * 3 * hidden * width + hidden * experts + 3 * hidden * shared
    else:
        mlp = 3 * hidden * width
    per_layer = attention + mlp + 2 * hidden
    parameters = layers * per_layer + vocab * hidden * (1 if tied else 2) + hidden
    checkpoint = parameters * element
    if tensors:
        parameters = sum(t.elements for t in tensors.values())
        checkpoint = sum(t.nbytes for t in tensors.values())
        floating = [t for t in tensors.values() if t.dtype in ("BF16", "F16", "F32")]
        if floating:
            largest = max(floating, key=lambda t: t.elements)
            element = DTYPE_BYTES[largest.dtype]
    return ModelFacts(
        hidden_size=hidden,
        intermediate_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        tie_word_embeddings=tied,
        num_experts=experts,
        shared_expert_size=shared,
        storage_bytes_per_parameter=element,
        parameters=parameters,
        checkpoint_bytes=checkpoint,
        exact=bool(tensors),
    )


@dataclass(frozen=True)
class TensorHeader:
    dtype: str
    elements: int
    nbytes: int


def read_safetensors_header(path: Path) -> dict[str, TensorHeader]:
    """The tensor table at the head of a .safetensors file (8-byte length, then JSON)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > MAX_HEADER_BYTES:
            raise UnreadableConfig(f"{path.name}: safetensors header of {length} bytes")
        table = json.loads(handle.read(length))
    tensors = {}
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        elements = 1
        for size in entry["shape"]:
            elements *= int(size)
        start, end = entry["data_offsets"]
        tensors[name] = TensorHeader(entry["dtype"], elements, int(end) - int(start))
    return tensors


def headers_of(files: Iterable[Path]) -> dict[str, TensorHeader]:
    tensors: dict[str, TensorHeader] = {}
    for file in files:
        tensors.update(read_safetensors_header(file))
    return tensors


def facts_from_directory(path: Path) -> ModelFacts:
    """From a model directory: its config.json, and its weight files' headers when present.
    Anything malformed is an UnreadableConfig (never another exception: the API plans with
    this at submission)."""
    config_file = path / "config.json"
    if not config_file.is_file() or config_file.stat().st_size > MAX_CONFIG_BYTES:
        raise UnreadableConfig(f"{path.name}: no config.json of at most {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(config_file.read_text())
        if not isinstance(config, dict):
            raise UnreadableConfig("config.json is not a JSON object")
        tensors = headers_of(sorted(path.glob("*.safetensors")))
        return facts_from_config(config, tensors or None)
    except UnreadableConfig:
        raise
    except (OSError, ValueError, TypeError, KeyError, AttributeError, struct.error) as exc:
        raise UnreadableConfig(f"{path.name}: {type(exc).__name__}: {exc}") from exc
