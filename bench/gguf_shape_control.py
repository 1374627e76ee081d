"""Is Q4_K_M's llama.cpp speed-up on SmolLM2 limited by the model's shape? (issue 23)

    .venv/bin/python -m bench.gguf_shape_control   # ~10 min on 2 CPU cores; needs llama-cpp-python

A k-quant packs each row in super-blocks of 256 weights; SmolLM2's hidden size is 576, so every
layer that reads the hidden state (q/k/v/o, gate/up: 166 of 211 tensors) falls back to Q5_0, as
llama.cpp's own quantize does, and only ffn_down (1,536 wide) is a k-quant. This control builds
two random-weight Llamas with SmolLM2's depth, heads and vocabulary (SmolLM2's tokenizer): one
576 wide (SmolLM2's shape), one 768 wide (a multiple of 256, so Q4_K_M is all k-quants). Each is
written as F16 and as Q4_K_M through the worker's `gguf` stage (no importance matrix: speed does
not depend on the scales' values) and decoded at batch 1 in llama.cpp, F16 and Q4_K_M
alternately, on this CPU's threads. Random weights: the speeds are real, perplexity is not
measured. Writes `shape_control` into bench/results/formats.json (other keys kept).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from bench.common import RESULTS_DIR
from bench.formats import decode_speed, f16_gguf
from workers.evaluation import serving_llama_cpp
from workers.formats import gguf
from workers.methods.recipe import parse_stages, run_stages, save_artifact
from workers.models.sources import builtin_gguf

RESULTS = RESULTS_DIR / "formats.json"
WIDTHS = ((576, 1536), (768, 2048))  # (hidden, intermediate): SmolLM2's, and 256-aligned


def random_llama(hidden: int, intermediate: int, folder: Path) -> Path:
    source = builtin_gguf("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=30,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 192,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def q4_k_m(source: Path, scratch: Path) -> Path:
    model = LlamaForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    stages = parse_stages([{"method": "gguf", "params": {"type": "Q4_K_M", "imatrix": False}}])
    outcome = run_stages(model, tokenizer, stages, [], scratch=scratch)
    save_artifact(outcome, tokenizer, scratch / "artifact")
    return gguf.artifact_file(scratch / "artifact")


def measure(hidden: int, intermediate: int, scratch: Path, repetitions: int) -> dict[str, Any]:
    source = random_llama(hidden, intermediate, scratch / "source")
    f16 = f16_gguf(source, scratch / "f16")
    quantized = q4_k_m(source, scratch / "q4_k_m")
    f16_speeds, q4_speeds = [], []
    for _ in range(3):  # alternate, so a busy moment hits both
        f16_speeds.append(decode_speed(f16, repetitions))
        q4_speeds.append(decode_speed(quantized, repetitions))
    f16_tok_s, q4_tok_s = sorted(f16_speeds)[1], sorted(q4_speeds)[1]
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "q4_k_m_tensor_types": gguf.storage(quantized)["tensor_types"],
        "f16_bytes": f16.stat().st_size,
        "q4_k_m_bytes": quantized.stat().st_size,
        "f16_llama_cpp_decode_tok_s": round(f16_tok_s, 2),
        "llama_cpp_decode_tok_s": round(q4_tok_s, 2),
        "speedup_vs_f16": round(q4_tok_s / f16_tok_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repetitions", type=int, default=10, help="timed runs per measurement")
    args = parser.parse_args()
    if not serving_llama_cpp.available():
        raise SystemExit("llama-cpp-python is not installed: `make bench-formats` installs it")
    rows = []
    for hidden, intermediate in WIDTHS:
        with tempfile.TemporaryDirectory() as tmp:
            row = measure(hidden, intermediate, Path(tmp), args.repetitions)
        rows.append(row)
        print(json.dumps(row))
    result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    result["shape_control"] = {
        "what": "random-weight Llamas, SmolLM2's depth/heads/vocab, Q4_K_M without imatrix, "
        "median of 3 alternating measurements",
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
