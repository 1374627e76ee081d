"""SparseGPT and Wanda with layer checkpoints and resume (`workers/methods/shared/layer_resume.py`).
Imported inside `apply` only: llm-compressor is heavy to import. The classes are named like the
library's, so the artifact's recipe.yaml stays a stock recipe."""

from __future__ import annotations

from llmcompressor.modifiers import pruning

from workers.methods.shared.layer_resume import LayerResume


class SparseGPTModifier(LayerResume, pruning.SparseGPTModifier):
    pass


class WandaPruningModifier(LayerResume, pruning.WandaPruningModifier):
    pass


ResumableSparseGPTModifier = SparseGPTModifier
ResumableWandaModifier = WandaPruningModifier
