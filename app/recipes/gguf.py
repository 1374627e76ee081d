"""GGUF output: the model quantized to one of llama.cpp's types and written as a `.gguf` file,
what llama.cpp, Ollama and LM Studio run on CPUs and laptops (and what Hugging Face's
gguf-my-repo produces). Pure pydantic: the worker's side is
`workers/methods/quantization/gguf.py`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.recipes.common import MethodParams
from app.recipes.cost import StageCost

# The llama.cpp file types auto-round's GGUF exporter writes (its presets, which follow
# llama.cpp's own mixes: Q4_K_M keeps half of attn_v / ffn_down at Q6_K, and so on). A k-quant
# packs weights in super-blocks of 256 along each row: a layer whose input width is not a
# multiple of 256 falls back to Q5_0 / Q5_1 / Q8_0 as llama.cpp's quantize does, and the report
# lists every tensor's type as written.
GgufType = Literal[
    "Q8_0",
    "Q5_1",
    "Q5_0",
    "Q4_1",
    "Q4_0",
    "Q6_K",
    "Q5_K_M",
    "Q5_K_S",
    "Q4_K_M",
    "Q4_K_S",
    "Q3_K_L",
    "Q3_K_M",
    "Q3_K_S",
    "Q2_K_S",
]
# llama.cpp quantizes Q8_0 without reading an importance matrix (its 256 levels leave nothing
# for one to weigh); auto-round's search would take minutes on a CPU to the same end.
IGNORES_IMATRIX = frozenset({"Q8_0"})
K_QUANTS = frozenset(
    {"Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K_S"}
)


class GgufParams(MethodParams):
    """Quantize to a llama.cpp type and write one GGUF file (tokenizer and chat template inside).

    Example stage: `{"method": "gguf", "params": {"type": "Q4_K_M"}}`. The last stage of a
    recipe; it may follow pruning, distillation or a rotation (a dense model), not another
    quantization. Through auto-round's GGUF exporter (llama.cpp's own conversion code, bundled
    with it): with `imatrix`, each k-quant block's scales are searched to minimize its error
    weighted by the input channels' activation energy on the job's calibration data (what
    llama.cpp's `--imatrix` does); without, plain round-to-nearest as `llama-quantize` without
    an importance matrix. The load check opens the file with transformers (`gguf_file=`), which
    dequantizes it: perplexity is the GGUF's own; speed is llama.cpp's where the worker has
    llama-cpp-python.
    """

    type: GgufType = Field(default="Q4_K_M", description="llama.cpp quantization type")
    imatrix: bool = Field(
        default=True,
        description="Search block scales weighted by activation energy on the calibration data "
        "(k-quants and Q4/Q5 types; Q8_0 ignores it, as llama.cpp does); false = plain "
        "round-to-nearest, no calibration data read",
    )

    @property
    def searches_scales(self) -> bool:
        """Whether the importance matrix is used (read and searched) for this type."""
        return self.imatrix and self.type not in IGNORES_IMATRIX

    def cost(self) -> StageCost:
        # One forward over the calibration samples for the activation statistics.
        if not self.searches_scales:
            return StageCost()
        return StageCost(calibration_passes=1.0, scale_search=True)
