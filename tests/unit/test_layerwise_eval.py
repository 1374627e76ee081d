"""The disk-offloaded mode's perplexity (`workers/evaluation/layerwise.py`): all windows through
the model one decoder layer at a time give the figures of the plain window-by-window forward,
on the offloaded model and on the same model in memory, while each weight is read once."""

from __future__ import annotations

from pathlib import Path

import torch

from workers.evaluation.layerwise import supports_layerwise
from workers.evaluation.perplexity import perplexity
from workers.formats.loader import load_pretrained
from workers.models.offloaded import open_offloaded


def test_layerwise_perplexity_equals_the_plain_forward_and_reads_each_weight_once(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: object
) -> None:
    from compressed_tensors.offload.cache import DiskCache

    model = open_offloaded(tiny_model_dir, tmp_path / "offload", onload_device=torch.device("cpu"))
    assert supports_layerwise(model)
    ids = torch.randint(0, 400, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    reads: list[int] = []
    original = DiskCache.onload

    def counted(self: DiskCache, offloaded: torch.Tensor | None) -> torch.Tensor | None:
        reads.append(1)
        return original(self, offloaded)

    monkeypatch.setattr(DiskCache, "onload", counted)  # type: ignore[attr-defined]
    layers: list[tuple[int, int]] = []
    layerwise = perplexity(
        model,
        ids,
        context_length=64,
        stride=48,
        layerwise=True,
        on_layer=lambda *a: layers.append(a),
    )
    layerwise_reads, reads[:] = len(reads), []
    plain = perplexity(model, ids, context_length=64, stride=48)
    in_memory = perplexity(
        load_pretrained(tiny_model_dir).eval(), ids, context_length=64, stride=48
    )
    assert layerwise == plain == in_memory  # bitwise: same NLL sum, tokens, windows
    assert plain.windows == 4 and layers == [(1, 2), (2, 2)]
    # Window by window, every parameter is read once per window; layer-wise, once in all.
    parameters = sum(
        value is not None
        for m in model.modules()
        for value in getattr(m._parameters, "offloaded_values", {}).values()
    )
    assert parameters <= layerwise_reads <= parameters + 2  # + the rotary buffers
    assert len(reads) >= plain.windows * parameters


def test_offloaded_generations_in_one_batch_equal_the_in_memory_ones(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    """An offloaded model generates for all prompts in one left-padded batch (one read of the
    weights per token): the texts are the unbatched in-memory ones."""
    from transformers import AutoTokenizer

    from app.jobs.schemas import DEFAULT_PROMPTS
    from workers.evaluation.measure import greedy_generations

    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    model = open_offloaded(
        tiny_teacher_dir, tmp_path / "offload", onload_device=torch.device("cpu")
    )
    in_memory = load_pretrained(tiny_teacher_dir).eval()
    texts = greedy_generations(model, tokenizer, DEFAULT_PROMPTS, 12)
    assert texts == greedy_generations(in_memory, tokenizer, DEFAULT_PROMPTS, 12)
    assert len(set(texts)) > 1  # the trained model continues each prompt its own way
