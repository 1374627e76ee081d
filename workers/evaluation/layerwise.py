"""Run many windows through a disk-offloaded model one decoder layer at a time: the offloaded
mode's perplexity (issue 20).

A forward pass of an offloaded model reads every weight from disk; window by window, a
perplexity over n windows reads the model n times. Here every window passes the embedding, then
each decoder layer, then the final norm and head, with that one module's tensors kept onloaded
(compressed-tensors' `disable_offloading`) while all windows go through it: each weight is read
once per evaluation. The hidden states of all windows are what is held in between (windows x
tokens x hidden). The calls are the ones `LlamaModel.forward` makes (the same causal mask,
rotary embeddings and layer arguments), so the logits are bitwise those of the plain forward
(`tests/unit/test_layerwise_eval.py`); models without that layout (`supports_layerwise`) are
evaluated window by window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

PARTS = ("embed_tokens", "layers", "norm", "rotary_emb")


def supports_layerwise(model: torch.nn.Module) -> bool:
    base = getattr(model, "model", None)
    return (
        base is not None
        and all(hasattr(base, part) for part in PARTS)
        and hasattr(model, "lm_head")
        and hasattr(base, "config")
    )


@torch.no_grad()
def layerwise_logits(
    model: torch.nn.Module,
    windows: list[torch.Tensor],
    on_layer: Callable[[int, int], None] | None = None,
) -> Iterator[torch.Tensor]:
    """Each window's logits (`model(window).logits`), in order, after all windows went through
    the model one module at a time."""
    from compressed_tensors.offload import disable_offloading
    from transformers.masking_utils import create_causal_mask

    base: Any = model.model  # the architecture's decoder stack (supports_layerwise checked it)
    head: Any = model.lm_head
    with disable_offloading():
        hidden = [base.embed_tokens(window) for window in windows]
    positions = [torch.arange(h.shape[1], device=h.device).unsqueeze(0) for h in hidden]
    masks = [
        create_causal_mask(
            config=base.config,
            inputs_embeds=h,
            attention_mask=None,
            past_key_values=None,
            position_ids=p,
        )
        for h, p in zip(hidden, positions, strict=True)
    ]
    with disable_offloading():
        rotary = [
            base.rotary_emb(h, position_ids=p) for h, p in zip(hidden, positions, strict=True)
        ]
    layers = list(base.layers[: base.config.num_hidden_layers])
    for index, layer in enumerate(layers):
        with disable_offloading():
            hidden = [
                _tensor(
                    layer(
                        h,
                        attention_mask=m,
                        position_embeddings=r,
                        position_ids=p,
                        use_cache=False,
                    )
                )
                for h, m, r, p in zip(hidden, masks, rotary, positions, strict=True)
            ]
        if on_layer is not None:
            on_layer(index + 1, len(layers))
    with disable_offloading():
        for h in hidden:
            yield head(base.norm(h))


def _tensor(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A decoder layer's hidden states (transformers 5 returns them bare; older, a tuple)."""
    return output[0] if isinstance(output, tuple) else output
