"""GGUF output of SmolLM2-135M-Instruct (issue 23): each llama.cpp type through the worker's
own `gguf` stage, measured from the written files.

    .venv/bin/python -m bench.formats            # ~20 min on 2 CPU cores; needs llama-cpp-python
    make bench-formats                           # installs it first (builds llama.cpp, ~9 min)

Per type: the file's size, bits per weight over every tensor in it (read from its tensor
table), perplexity with transformers (`gguf_file=`, dequantized) on the held-out built-in corpus
and on a second corpus no recipe reads (`bench.quality`'s Debian license texts), and greedy
decode tokens/s at batch 1 in llama.cpp (llama-cpp-python, this CPU's threads), beside the
16-bit GGUF of the original (F16, same converter) measured in the same run. Calibration for the
importance matrix: 16 x 512 tokens of the built-in corpus' calibration share (disjoint from the
evaluation share).

Target (exits 1 if broken): Q4_K_M decodes >= 2x faster than the F16 GGUF in llama.cpp, within
+15 % perplexity of the original. Writes the rows into bench/results/formats.json (the other
keys, from bench/default_job.py and the demo timing, are kept).
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
from bench.common import RESULTS_DIR, ROOT
from bench.quality import SECOND_CORPUS, corpora, ppl
from workers.evaluation import serving_llama_cpp
from workers.evaluation.serving import TimedRuns
from workers.formats import gguf
from workers.methods.recipe import parse_stages, run_stages, save_artifact
from workers.models.sources import resolve_model

RESULTS = RESULTS_DIR / "formats.json"
TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K_S")
SPEED_TARGET, QUALITY_TARGET = 2.0, 15.0


def f16_gguf(source: Path, out: Path) -> Path:
    """The original as a 16-bit GGUF: llama.cpp's converter (bundled with auto-round) writing
    every weight as F16, nothing quantized: the baseline llama.cpp users start from."""
    from auto_round.export.export_to_gguf.export import create_model_class

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    writer = create_model_class(str(out), model, layer_config={}, backend="gguf:f16")
    writer.write()
    [written] = sorted(out.rglob("*.gguf"))
    return written


def decode_speed(file: Path, repetitions: int) -> float:
    found = serving_llama_cpp.measure(
        file,
        gpu=False,
        threads=torch.get_num_threads(),
        prompt_tokens=128,
        new_tokens=64,
        runs=TimedRuns(warmup=1, repetitions=repetitions),
    )
    return float(found["decode_tokens_per_second_b1"])


def run_type(kind: str, source: Path, tokenizer: Any, data: Any, scratch: Path) -> dict[str, Any]:
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    stages = parse_stages([{"method": "gguf", "params": {"type": kind}}])
    started = time.perf_counter()
    outcome = run_stages(model, tokenizer, stages, data.calibration, scratch=scratch)
    seconds = time.perf_counter() - started
    out = scratch / f"artifact-{kind}"
    save_artifact(outcome, tokenizer, out)
    file = gguf.artifact_file(out)
    storage = gguf.storage(file)
    loaded = gguf.load(out, torch.float32).eval()
    return {
        "type": kind,
        "bytes": file.stat().st_size,
        "bits_per_weight": storage["all_bits_per_weight"],
        "bits_per_quantized_weight": storage["bits_per_weight"],
        "tensor_types": storage["tensor_types"],
        "perplexity": round(ppl(loaded, data.in_domain), 3),
        "second_corpus_perplexity": round(ppl(loaded, data.second), 3),
        "export_seconds": round(seconds, 1),
        "file": file,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8192, help="evaluation tokens per corpus")
    parser.add_argument("--repetitions", type=int, default=10, help="timed llama.cpp runs")
    parser.add_argument("--types", default=",".join(TYPES))
    args = parser.parse_args()
    if not serving_llama_cpp.available():
        raise SystemExit("llama-cpp-python is not installed: `make bench-formats` installs it")
    settings = Settings(work_dir=ROOT / ".squash" / "bench-work")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        source = resolve_model(
            {"kind": "builtin", "name": "smollm2-135m-instruct"}, settings, scratch
        ).path
        tokenizer = AutoTokenizer.from_pretrained(source)
        data = corpora(tokenizer, args.tokens, samples=16, length=512)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        original = {
            "perplexity": round(ppl(model, data.in_domain), 3),
            "second_corpus_perplexity": round(ppl(model, data.second), 3),
        }
        del model
        f16 = f16_gguf(source, scratch / "f16")
        rows = []
        for kind in args.types.split(","):
            row = run_type(kind, source, tokenizer, data, scratch)
            # Side by side: the F16 baseline right before each type, the same repetitions.
            row["f16_llama_cpp_decode_tok_s"] = round(decode_speed(f16, args.repetitions), 2)
            row["llama_cpp_decode_tok_s"] = round(
                decode_speed(row.pop("file"), args.repetitions), 2
            )
            row["speedup_vs_f16"] = round(
                row["llama_cpp_decode_tok_s"] / row["f16_llama_cpp_decode_tok_s"], 3
            )
            row["change_pct"] = round(100 * (row["perplexity"] / original["perplexity"] - 1), 2)
            row["second_corpus_change_pct"] = round(
                100 * (row["second_corpus_perplexity"] / original["second_corpus_perplexity"] - 1),
                2,
            )
            rows.append(row)
            print(json.dumps(row))
        f16_bytes = f16.stat().st_size
    failures = check(rows)
    result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    result.update(
        model="SmolLM2-135M-Instruct",
        original=original | {"f16_gguf_bytes": f16_bytes},
        second_corpus=SECOND_CORPUS,
        evaluation_tokens=args.tokens,
        calibration="16 x 512 tokens of the built-in corpus (calibration share)",
        threads=torch.get_num_threads(),
        rows=rows,
        format_target_failures=failures,
    )
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows, original, f16_bytes))
    if failures:
        raise SystemExit("TARGETS BROKEN:\n  " + "\n  ".join(failures))
    print("all targets hold")


def check(rows: list[dict[str, Any]]) -> list[str]:
    failures = []
    for row in rows:
        if row["type"] != "Q4_K_M":
            continue
        if row["speedup_vs_f16"] < SPEED_TARGET:
            failures.append(f"Q4_K_M decodes {row['speedup_vs_f16']:.2f}x F16 < {SPEED_TARGET}x")
        if row["change_pct"] > QUALITY_TARGET:
            failures.append(f"Q4_K_M perplexity {row['change_pct']:+.1f} % > +{QUALITY_TARGET} %")
    return failures


def markdown(rows: list[dict[str, Any]], original: dict[str, Any], f16_bytes: int) -> str:
    lines = [
        "| type | size | bits/weight | perplexity | change | second corpus | change | "
        "llama.cpp tok/s | F16 tok/s | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| original (F16 GGUF) | {f16_bytes / 1e6:.1f} MB | 16 | {original['perplexity']} | — | "
        f"{original['second_corpus_perplexity']} | — | — | — | — |",
    ]
    for r in rows:
        lines.append(
            f"| {r['type']} | {r['bytes'] / 1e6:.1f} MB | {r['bits_per_weight']:.2f} | "
            f"{r['perplexity']} | {r['change_pct']:+.1f} % | {r['second_corpus_perplexity']} | "
            f"{r['second_corpus_change_pct']:+.1f} % | {r['llama_cpp_decode_tok_s']} | "
            f"{r['f16_llama_cpp_decode_tok_s']} | {r['speedup_vs_f16']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
