"""RTN and GPTQ quality and size on SmolLM2-135M-Instruct, through the worker's own code paths.

    .venv/bin/python -m bench.quantization_quality [--tokens 16384] [--gptq]

Uses the same source resolution (GGUF → float), stages, calibration split, save format,
load-back and perplexity code as a job, without the HTTP/queue layers (measured by the tests).
Prints each row beside the llm-compressor RTN figures measured for issue 2 on another 16k-token
slice of the same corpus (compare the relative change; absolute perplexities depend on the
slice).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import Settings
from app.recipes import GptqParams, RtnParams
from workers.evaluation.measure import saved_checkpoint_bytes, weight_bytes
from workers.evaluation.perplexity import perplexity
from workers.models.datasets import builtin_text, split_tokens
from workers.models.sources import resolve_model
from workers.pipelines.base import StageInput
from workers.pipelines.quantization.gptq import Gptq
from workers.pipelines.quantization.rtn import RoundToNearest

ROOT = Path(__file__).resolve().parents[1]
# Issue 2's reference runs (llm-compressor RTN, 16k tokens): original 14.39.
REFERENCE = {"int8 per-channel sym": 14.42, "int4 g64 sym": 20.94, "int4 g32 asym": 17.52}
REFERENCE_ORIGINAL = 14.39
VARIANTS = {
    "int8 per-channel sym": (RoundToNearest(), RtnParams(bits=8)),
    "int4 g64 sym": (RoundToNearest(), RtnParams(bits=4, group_size=64)),
    "int4 g32 asym": (RoundToNearest(), RtnParams(bits=4, group_size=32, symmetric=False)),
    "int4 g64 asym": (RoundToNearest(), RtnParams(bits=4, group_size=64, symmetric=False)),
}
# GPTQ rows: `--gptq` adds them. With the job-default calibration (64 x 512 tokens) llm-compressor's
# sequential pipeline took ~45 s per decoder-layer pass on a 2-core CPU (~40 min per variant).
GPTQ_VARIANTS = {
    "gptq int4 g64 sym": (Gptq(), GptqParams(bits=4, group_size=64)),
    "gptq int4 g64 sym actorder": (Gptq(), GptqParams(bits=4, group_size=64, actorder="static")),
}
# The job defaults: 64 calibration sequences of 512 tokens from the calibration split.
CALIBRATION_SAMPLES, CALIBRATION_LENGTH = 64, 512


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--gptq", action="store_true", help="add the (slow on CPU) GPTQ rows")
    args = parser.parse_args()
    variants = {**VARIANTS, **(GPTQ_VARIANTS if args.gptq else {})}
    settings = Settings(work_dir=ROOT / ".squash" / "bench-work")
    with tempfile.TemporaryDirectory() as scratch:
        source = resolve_model(
            {"kind": "builtin", "name": "smollm2-135m-instruct"}, settings, Path(scratch)
        )
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    calibration_pool, pool = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    ids = pool[: args.tokens]
    calibration = [
        calibration_pool[i : i + CALIBRATION_LENGTH]
        for i in range(0, CALIBRATION_SAMPLES * CALIBRATION_LENGTH, CALIBRATION_LENGTH)
    ]

    def ppl(model: torch.nn.Module) -> float:
        return perplexity(model, ids, context_length=512, stride=512).perplexity

    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    original_ppl = ppl(model)
    original_bytes = saved_checkpoint_bytes(model.to(torch.bfloat16))
    rows: list[dict[str, Any]] = []
    for name, (method, params) in variants.items():
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32)
        model.to(torch.bfloat16)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            method.apply(StageInput(model, tokenizer, calibration, None), params)  # type: ignore[arg-type]
            model.save_pretrained(out, save_compressed=True)
            seconds = time.perf_counter() - started
            size = weight_bytes(Path(out))
            loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
            value = ppl(loaded)
        reference = REFERENCE.get(name)
        rows.append(
            {
                "variant": name,
                "perplexity": round(value, 3),
                "change_pct": round(100 * (value / original_ppl - 1), 2),
                "reference_llmcompressor": reference,
                "reference_change_pct": round(100 * (reference / REFERENCE_ORIGINAL - 1), 2)
                if reference
                else None,
                "checkpoint_bytes": size,
                "ratio_vs_bf16": round(original_bytes / size, 3),
                "compress_seconds": round(seconds, 2),
            }
        )
    result = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized)",
        "eval_tokens": len(ids),
        "context": 512,
        "original_perplexity": round(original_ppl, 3),
        "original_checkpoint_bytes_bf16": original_bytes,
        "rows": rows,
    }
    (ROOT / "bench" / "results" / "quantization_quality.json").write_text(
        json.dumps(result, indent=2) + "\n"
    )
    print(
        f"original: ppl {original_ppl:.3f}, bf16 checkpoint {original_bytes / 1e6:.1f} MB, "
        f"{len(ids)} held-out tokens"
    )
    print(
        f"{'variant':24} {'ppl':>8} {'change':>8} {'ref ppl':>8} {'ref chg':>8} "
        f"{'MB':>8} {'ratio':>6}"
    )
    for r in rows:
        ref = (
            f"{r['reference_llmcompressor']:8.2f} {r['reference_change_pct']:7.1f}%"
            if r["reference_llmcompressor"]
            else f"{'-':>8} {'-':>8}"
        )
        print(
            f"{r['variant']:24} {r['perplexity']:8.3f} {r['change_pct']:7.2f}% {ref} "
            f"{r['checkpoint_bytes'] / 1e6:8.1f} {r['ratio_vs_bf16']:6.3f}"
        )


if __name__ == "__main__":
    main()
