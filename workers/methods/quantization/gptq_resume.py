"""GPTQ with layer checkpoints and resume (`workers/methods/shared/layer_resume.py`)."""

from __future__ import annotations

from llmcompressor.modifiers.quantization import GPTQModifier

from workers.methods.shared.layer_resume import LayerResume


class ResumableGPTQModifier(LayerResume, GPTQModifier):
    pass
