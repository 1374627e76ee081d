"""Candidates for a search whose target runtime is llama.cpp (`target_runtime: gguf`): the
llama.cpp types themselves, written by the `gguf` stage (workers/methods/quantization/gguf.py).

llama.cpp's quantizer picks each tensor's type from its preset (Q4_K_M keeps some tensors at
Q6_K), so the search chooses among presets, not bits per layer. What a preset stores on a
model is planned from the layers' widths: a k-quant packs super-blocks of 256 along a row, and
a layer whose width is not a multiple of that falls back to a 32-wide type (what auto-round's
exporter wrote on SmolLM2-135M, `bench/results/formats.json`: Q2_K..Q5_K to Q5_0, Q6_K to
Q8_0). The preset's own mix and the embedding table, which GGUF quantizes too, add to that, so
the plan is a lower bound: the bits each candidate stores are read from its file, and one over
the budget cannot win (workers/search/pick.py).
"""

from __future__ import annotations

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from app.recipes.gguf import IGNORES_IMATRIX, GgufType
from app.search.spec import SearchSpec
from workers.search.allocation import BudgetTooSmall
from workers.search.candidates import Candidate
from workers.search.sensitivity import LayerScores

# Each preset's base type (the type of most of its tensors).
BASE_TYPE: dict[GgufType, str] = {
    "Q8_0": "Q8_0",
    "Q6_K": "Q6_K",
    "Q5_1": "Q5_1",
    "Q5_0": "Q5_0",
    "Q4_1": "Q4_1",
    "Q4_0": "Q4_0",
    "Q5_K_M": "Q5_K",
    "Q5_K_S": "Q5_K",
    "Q4_K_M": "Q4_K",
    "Q4_K_S": "Q4_K",
    "Q3_K_L": "Q3_K",
    "Q3_K_M": "Q3_K",
    "Q3_K_S": "Q3_K",
    "Q2_K_S": "Q2_K",
}
FALLBACK = {"Q6_K": "Q8_0", "Q5_K": "Q5_0", "Q4_K": "Q5_0", "Q3_K": "Q5_0", "Q2_K": "Q5_0"}


def type_bits(base: str, in_features: int) -> float:
    """Bits per weight a tensor of this width stores in this llama.cpp type (gguf-py's block
    sizes), after the fallback for rows the type's blocks do not divide."""
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[base]]
    if in_features % block:
        return type_bits(FALLBACK[base], in_features)
    return 8 * size / block


def planned_bits(preset: GgufType, layers: list[LayerScores], embedding: int) -> float:
    """Average bits per quantized weight: the linear layers in the preset's base type and the
    token embedding (`embedding` weights) at Q8_0, where llama.cpp's presets put it on the
    models measured (it serves as the output layer when tied)."""
    stored = sum(row.parameters * type_bits(BASE_TYPE[preset], row.in_features) for row in layers)
    stored += embedding * type_bits("Q8_0", 32)
    return round(stored / (sum(row.parameters for row in layers) + embedding), 4)


def gguf_candidates(
    spec: SearchSpec, layers: list[LayerScores], embedding: int, budget: float
) -> list[Candidate]:
    """The preset with the most bits within the budget (rotated first when the search may
    rotate; then with and without the importance matrix), then the presets below it. Raises
    BudgetTooSmall when none fits this model's layers."""
    planned = {preset: planned_bits(preset, layers, embedding) for preset in BASE_TYPE}
    fitting = sorted(
        (p for p in BASE_TYPE if planned[p] <= budget + 1e-9), key=lambda p: -planned[p]
    )
    if not fitting:
        cheapest = min(planned, key=lambda p: planned[p])
        raise BudgetTooSmall(
            f"no llama.cpp type fits {budget:g} bits per weight on this model's layers: the "
            f"fewest, {cheapest}, stores {planned[cheapest]:g} (rows not a multiple of 256 "
            "fall back from k-quants to 32-wide types)"
        )

    def gguf(preset: GgufType, *, imatrix: bool = True, rotate: bool = False) -> Candidate:
        stage = {"method": "gguf", "params": {"type": preset, "imatrix": imatrix}}
        recipe = [{"method": "rotate", "params": {}}, stage] if rotate else [stage]
        name = (
            f"{'rotate + ' if rotate else ''}gguf {preset}{'' if imatrix else ' without imatrix'}"
        )
        return Candidate(name, recipe, budget, planned[preset])

    best = fitting[0]
    found = [gguf(best, rotate=True)] if "rotation" in spec.families else []
    plain = [] if best in IGNORES_IMATRIX else [gguf(best, imatrix=False)]
    found += [gguf(best), *plain, *(gguf(p) for p in fitting[1:])]
    return found[: spec.max_candidates]
