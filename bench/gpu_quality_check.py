"""The GPU path of issue 22's methods, for a session lent a CUDA machine (run through
bench/gpu_quality_check.sh): a random 8-layer Llama built on the spot (no network there), and on
it, on the GPU in bfloat16 through the worker's own stage and save code: AutoRound W4 and W2,
mask-aware GPTQ after SparseGPT, GPTQ with the imatrix observer, Hadamard rotations before
GPTQ (the rotation fused on the GPU in float64), and quantization-aware
distillation after GPTQ W3, after ternary, and after rotated block-wise ternary (hidden states
matched against the teacher rotated likewise). Each artifact is saved, loaded back with plain
transformers (or squash's loader for sparse storage) and checked: at most 2^bits values per
group, the pruned zeros kept, the reloaded logits close to the in-memory ones. Prints a table
and writes $OUT/quality-gpu.json.

A dry run of the plumbing on a CPU machine, before spending device time:
    GPU_CHECK_DEVICE=cpu GPU_CHECK_LAYERS=2 .venv/bin/python -m bench.gpu_quality_check
(GPU_CHECK_ONLY="name,name" runs those cases only).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from app.recipes import (
    AutoRoundParams,
    DistillParams,
    GptqParams,
    MethodParams,
    RotateParams,
    SparseGptParams,
    TernaryParams,
)
from squash import load_pretrained
from workers.methods.recipe import run_stages, save_artifact
from workers.methods.shared.layers import targeted_linears
from workers.methods.shared.storage_dtype import cast_for_storage

G = 64
# The CPU bench's ternary recipe in small: cosine from 1e-3 after a short warm-up.
QAD = {
    "max_steps": 20,
    "seq_length": 128,
    "batch_size": 4,
    "learning_rate": 1e-3,
    "lr_schedule": "cosine",
    "warmup_steps": 2,
}
CASES: dict[str, tuple[list[tuple[str, MethodParams]], int]] = {
    "autoround w4": ([("autoround", AutoRoundParams(bits=4, group_size=G, iters=50))], 16),
    "autoround w2": ([("autoround", AutoRoundParams(bits=2, group_size=G, iters=50))], 4),
    "sparsegpt + gptq w4 joint": (
        [("sparsegpt", SparseGptParams()), ("gptq", GptqParams(bits=4, group_size=G))],
        16,
    ),
    "gptq w4 imatrix": ([("gptq", GptqParams(bits=4, group_size=G, scale_search="imatrix"))], 16),
    "rotate + gptq w3": (
        [("rotate", RotateParams()), ("gptq", GptqParams(bits=3, group_size=G))],
        8,
    ),
    "gptq w3 + qad": (
        [
            ("gptq", GptqParams(bits=3, group_size=G)),
            ("distill", DistillParams(learn_scales=True, eval_tokens=0, **QAD)),  # type: ignore[arg-type]
        ],
        8,
    ),
    # Block-wise reconstruction trains each bfloat16 block in float32 and casts it back.
    "rotate + ternary blockwise + qad hidden": (
        [
            ("rotate", RotateParams()),
            ("ternary", TernaryParams(group_size=G, solver="blockwise", epochs=1)),
            ("distill", DistillParams(eval_tokens=0, hidden_loss_weight=1.0, **QAD)),  # type: ignore[arg-type]
        ],
        3,
    ),
    # The teacher writes part of the training text on the GPU (bf16, CUDA's seeded sampling).
    "ternary + qad + teacher-written": (
        [
            ("ternary", TernaryParams(group_size=G)),
            ("distill", DistillParams(eval_tokens=0, generated_sequences=8, **QAD)),  # type: ignore[arg-type]
        ],
        3,
    ),
}


def build(target: Path, device: torch.device) -> tuple[Path, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.support.tiny_model import train_tokenizer

    tokenizer = train_tokenizer(2048)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=int(os.environ.get("GPU_CHECK_LAYERS") or 8),
        num_attention_heads=8,
        num_key_value_heads=4,
        tie_word_embeddings=True,
        eos_token_id=0,
        bos_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target, tokenizer


def check(
    name: str, source: Path, tokenizer: Any, device: torch.device, samples: list[list[int]]
) -> dict[str, Any]:
    from transformers.utils.quantization_config import CompressedTensorsConfig

    stages, levels = CASES[name]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_pretrained(source).to(device, dtype).eval()
    started = time.perf_counter()
    outcome = run_stages(model, tokenizer, stages, samples, source_path=source, eval_ids=samples[0])
    seconds = time.perf_counter() - started
    probe = torch.tensor([samples[-1][:64]], device=device)
    cast_for_storage(outcome.model)
    with torch.no_grad():
        in_memory = outcome.model.float()(probe).logits.cpu()
    with tempfile.TemporaryDirectory() as out:
        save_artifact(outcome, tokenizer, Path(out))
        loaded = load_pretrained(
            out, quantization_config=CompressedTensorsConfig(run_compressed=False)
        ).eval()
    with torch.no_grad():
        reloaded = loaded(probe.cpu()).logits
    most = max(
        len(torch.unique(group))
        for _, module in targeted_linears(loaded, ["Linear"], ["lm_head"])
        for group in module.weight.reshape(-1, G)
    )
    sparsity = min(
        float((module.weight == 0).float().mean())
        for _, module in targeted_linears(loaded, ["Linear"], ["lm_head"])
    )
    return {
        "seconds": round(seconds, 1),
        "levels_per_group": most,
        "levels_allowed": levels,
        "least_sparse_layer": round(sparsity, 4),
        "max_logit_difference": float((reloaded - in_memory).abs().max()),
        "notes": outcome.stage_notes,
    }


def main() -> None:
    device = torch.device("cpu" if os.environ.get("GPU_CHECK_DEVICE") == "cpu" else "cuda")
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="squash-gpu-quality-") as tmp:
        source, tokenizer = build(Path(tmp) / "model", device)
        from workers.models.datasets import builtin_text, split_tokens

        pool, _ = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
        samples = [pool[i : i + 256] for i in range(0, 256 * 16, 256)]
        only = os.environ.get("GPU_CHECK_ONLY")  # a comma-separated subset of CASES
        for name in CASES:
            if only and name not in only.split(","):
                continue
            rows[name] = check(name, source, tokenizer, device, samples)
            r = rows[name]
            ok = r["levels_per_group"] <= r["levels_allowed"]
            print(
                f"{name:28} {r['seconds']:7.1f} s  levels {r['levels_per_group']:3d} "
                f"(<= {r['levels_allowed']}: {ok})  least sparse {r['least_sparse_layer']:.3f}  "
                f"max logit diff {r['max_logit_difference']:.2e}",
                flush=True,
            )
    name = "quality-gpu.json" if device.type == "cuda" else "quality-gpu-dry-run.json"
    out = Path(os.environ.get("OUT") or tempfile.gettempdir()) / name
    out.write_text(json.dumps({"device": str(device), "rows": rows}, indent=2, default=str))
    print(f"figures in {out}")


if __name__ == "__main__":
    main()
