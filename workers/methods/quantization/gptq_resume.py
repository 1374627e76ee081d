"""GPTQ with layer checkpoints and resume (`workers/methods/shared/layer_resume.py`). Imported
inside `apply` only: llm-compressor is heavy to import."""

from __future__ import annotations

from llmcompressor.modifiers.quantization import GPTQModifier as LibraryGPTQModifier

from workers.methods.shared.layer_resume import LayerResume


class GPTQModifier(LayerResume, LibraryGPTQModifier):
    """Named like the library's class: the artifact's recipe.yaml stays a stock recipe."""


ResumableGPTQModifier = GPTQModifier
