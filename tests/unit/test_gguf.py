"""The gguf stage on a tiny random Llama (SmolLM2's tokenizer, rows of 256): the artifact is one
GGUF file that transformers loads, its integers are on llama.cpp's grid, the storage figures
come from the file, and recipes that would re-quantize are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.errors import InvalidInput
from app.recipes import StageIn, validate_recipe
from workers.evaluation.measure import quantized_weight_storage, weight_bytes
from workers.formats import gguf as gguf_format
from workers.formats.loader import artifact_format, load_pretrained
from workers.methods.recipe import parse_stages, run_stages, save_artifact


def export(model_dir: Path, out: Path, params: dict, calibration: list[list[int]]) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_pretrained(model_dir)
    stages = parse_stages([{"method": "gguf", "params": params}])
    outcome = run_stages(model, tokenizer, stages, calibration, scratch=out / "scratch")
    save_artifact(outcome, tokenizer, out / "artifact")
    return outcome.stage_notes


def test_q8_0_artifact_loads_and_its_integers_are_on_the_grid(
    tiny_smol_dir: Path, tmp_path: Path
) -> None:
    from gguf import GGMLQuantizationType, GGUFReader

    notes = export(tiny_smol_dir, tmp_path, {"type": "Q8_0", "imatrix": False}, [])
    artifact = tmp_path / "artifact"
    assert artifact_format(artifact) == gguf_format.FORMAT
    assert sorted(p.name for p in artifact.iterdir()) == ["model-Q8_0.gguf", "squash_format.json"]
    assert notes[0]["tensor_types"] == {"Q8_0": 15}  # 2 layers x 7 linears + the embedding

    storage = quantized_weight_storage(artifact)
    assert storage["bits_per_weight"] == 8.5  # 32 int8 + one f16 scale per block
    assert weight_bytes(artifact) == (artifact / "model-Q8_0.gguf").stat().st_size

    # On the grid: each Q8_0 block is an f16 scale d and 32 int8 q (read from the bytes here,
    # not through gguf-py) and transformers loads exactly d * q (ffn_gate: llama.cpp permutes
    # q/k rows for its RoPE layout).
    reader = GGUFReader(str(artifact / "model-Q8_0.gguf"))
    # Our header-only table (storage figures) is gguf-py's, tensor for tensor.
    assert gguf_format.tensor_table(artifact / "model-Q8_0.gguf") == [
        {
            "name": t.name,
            "type": t.tensor_type.name,
            "elements": int(t.n_elements),
            "bytes": int(t.n_bytes),
        }
        for t in reader.tensors
    ]
    gate = {t.name: t for t in reader.tensors}["blk.0.ffn_gate.weight"]
    assert gate.tensor_type == GGMLQuantizationType.Q8_0
    blocks = np.asarray(gate.data).reshape(-1, 34)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    integers = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    loaded = load_pretrained(artifact)
    original = load_pretrained(tiny_smol_dir)
    weight = loaded.model.layers[0].mlp.gate_proj.weight.detach().numpy().reshape(-1, 32)
    assert np.array_equal(weight, scale * integers)
    # The exporter rounds the 16-bit weights to nearest: half a step, one where the absmax maps
    # to 128 and is clipped to 127 (d is signed). Which 16-bit type it reads through (bf16 or
    # f16) is the converter's choice and has changed between runs of the same versions.
    source = original.model.layers[0].mlp.gate_proj.weight.detach()

    def on_grid(dtype: torch.dtype) -> bool:
        rounded = source.to(dtype).float().numpy().reshape(-1, 32)
        steps = np.abs(rounded - weight) / np.abs(scale)
        return bool(steps.max() <= 1.0 + 1e-3 and (steps <= 0.5 + 1e-3).mean() > 0.98)

    assert on_grid(torch.bfloat16) or on_grid(torch.float16)
    ids = torch.arange(100, 164).unsqueeze(0)
    with torch.no_grad():
        drift = (loaded(ids).logits - original(ids).logits).abs().max().item()
        spread = original(ids).logits.abs().max().item()
    assert 0 < drift < 0.02 * spread


def test_q4_k_m_with_an_importance_matrix_mixes_k_quants(
    tiny_smol_dir: Path, tmp_path: Path
) -> None:
    calibration = [list(range(200 + 64 * i, 264 + 64 * i)) for i in range(4)]
    notes = export(tiny_smol_dir, tmp_path, {"type": "Q4_K_M"}, calibration)
    assert notes[0]["calibration_samples"] == 4
    types = quantized_weight_storage(tmp_path / "artifact")["tensor_types"]
    # llama.cpp's Q4_K_M mix: Q4_K for most weights, Q6_K for some attn_v / ffn_down and the
    # (tied) output.
    assert set(types) == {"Q4_K", "Q6_K"} and types["Q4_K"] > types["Q6_K"]
    loaded = load_pretrained(tmp_path / "artifact")
    assert loaded(torch.arange(100, 132).unsqueeze(0)).logits.isfinite().all()


@pytest.mark.parametrize(
    ("recipe", "field"),
    [
        ([{"method": "gptq"}, {"method": "gguf"}], "recipe[1].method"),
        ([{"method": "gguf"}, {"method": "distill", "params": {"max_steps": 1}}], "recipe[1]"),
        ([{"method": "gguf", "params": {"type": "Q4_K_X"}}], "recipe[0].params.type"),
    ],
)
def test_recipes_that_would_requantize_are_refused(recipe: list[dict], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_recipe([StageIn(**stage) for stage in recipe])
    assert any(e["field"].startswith(field) for e in refused.value.errors)


def test_gguf_may_follow_pruning() -> None:
    stages = validate_recipe(
        [StageIn(method="magnitude", params={"sparsity": 0.5}), StageIn(method="gguf")]
    )
    assert [s.method for s in stages] == ["magnitude", "gguf"]


def test_q8_0_reads_no_calibration_data_as_llama_cpp_ignores_an_importance_matrix() -> None:
    from app.recipes import GgufParams
    from workers.methods.catalog import get_method

    gguf = get_method("gguf")
    assert not gguf.needs_calibration(GgufParams(type="Q8_0"))  # imatrix true by default
    assert gguf.needs_calibration(GgufParams(type="Q4_K_M"))
    assert not gguf.needs_calibration(GgufParams(type="Q4_K_M", imatrix=False))
