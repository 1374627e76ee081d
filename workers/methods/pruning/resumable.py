"""SparseGPT and Wanda with layer checkpoints and resume (`workers/methods/shared/layer_resume.py`).
Imported inside `apply` only: llm-compressor is heavy to import."""

from __future__ import annotations

from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

from workers.methods.shared.layer_resume import LayerResume


class ResumableSparseGPTModifier(LayerResume, SparseGPTModifier):
    pass


class ResumableWandaModifier(LayerResume, WandaPruningModifier):
    pass
