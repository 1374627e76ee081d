"""Serving speed of a GGUF artifact in llama.cpp, the runtime it is made for (through
llama-cpp-python, which builds llama.cpp from source: optional on a worker, see README).

Same figures and spread as the transformers probe (`workers/evaluation/serving.py`), from the
same kind of prompt: time to the first new token (prefill + one token), then decode time per
token at batch 1. llama-cpp-python's high-level API generates one sequence at a time, so the
"larger batch" row is batch 1 again and says so (`batch_size: 1`).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.evaluation.serving import TimedRuns

RUNTIME = "llama.cpp"


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def measure(
    file: Path,
    *,
    gpu: bool,
    threads: int,
    prompt_tokens: int,
    new_tokens: int,
    runs: TimedRuns,
    seed: int = 0,
    **_: Any,
) -> dict[str, Any]:
    import random

    from llama_cpp import Llama, __version__, llama_supports_gpu_offload

    from workers.evaluation.serving import spread

    # A llama.cpp built without CUDA runs on the CPU whatever the worker's device: say so.
    offload = gpu and bool(llama_supports_gpu_offload())
    started = time.perf_counter()
    llm = Llama(
        model_path=str(file),
        n_ctx=prompt_tokens + new_tokens + 8,
        n_threads=threads,
        n_gpu_layers=-1 if offload else 0,
        seed=seed,
        verbose=False,
    )
    load_seconds = time.perf_counter() - started
    vocab = llm.n_vocab()
    rng = random.Random(seed)
    # Token ids from the middle of the vocabulary, as the transformers probe: no special tokens.
    prompt = [rng.randrange(vocab // 4, vocab // 2) for _ in range(prompt_tokens)]
    ttft, per_token = [], []
    for timed in runs:
        # Forget the last run's tokens: generate() would otherwise reuse the prompt's cached
        # prefix and time a one-token prefill.
        llm.reset()
        started = time.perf_counter()
        first_at = 0.0
        # Greedy (top_k=1), EOS or not: the run stops after new_tokens whatever they are.
        tokens = llm.generate(prompt, top_k=1, temp=0.0, reset=True)
        for produced, _token in enumerate(tokens, start=1):
            if produced == 1:
                first_at = time.perf_counter()
            if produced == new_tokens:
                break
        ended = time.perf_counter()
        if timed:
            ttft.append((first_at - started) * 1000)
            per_token.append((ended - first_at) * 1000 / (new_tokens - 1))
    decode = spread(per_token)
    return {
        "runtime": RUNTIME,
        "runtime_version": f"llama-cpp-python {__version__}",
        "ttft_ms": spread(ttft),
        "decode_ms_per_token_b1": decode,
        "decode_tokens_per_second_b1": round(1000 / decode["median"], 3),
        "decode_ms_per_step_b1": decode,
        "batch_size": 1,
        "throughput_tokens_per_second": round(1000 / decode["median"], 3),
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        **runs.as_json(),
        "load_seconds": round(load_seconds, 3),
        "dtype": file.stem.rpartition("-")[2],  # the GGUF type in the artifact's file name
        "device": "cuda" if offload else "cpu",
        **(
            {"runtime_note": "llama.cpp built without GPU offload: CPU figures"}
            if gpu and not offload
            else {}
        ),
    }
