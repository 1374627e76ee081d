"""GPTQ resumes from layer checkpoints: a run that restores its first layers computes only the
rest (no Hessian, no solve for the restored ones) and ends tensor-equal to an uninterrupted
run; a checkpoint that fails its sha256 is not trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import Settings
from app.recipes import GptqParams
from app.storage import LocalStore
from tests.support.tiny_model import build_tiny_model
from workers.methods.base import StageInput
from workers.methods.quantization.common import weight_quant_plan
from workers.methods.quantization.gptq_resume import ResumableGPTQModifier
from workers.methods.shared.calibration import oneshot_calibrated
from workers.methods.shared.layer_checkpoints import LayerCheckpoints
from workers.models.datasets import builtin_text, split_tokens

LAYERS = 4
PARAMS = GptqParams(bits=4, group_size=32)


@pytest.fixture(scope="module")
def four_layers(models_root: Path) -> Path:
    return build_tiny_model(models_root / "tiny-llama-4-layers", layers=LAYERS)


@pytest.fixture(scope="module")
def samples(four_layers: Path) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(four_layers)
    pool, _ = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    return [pool[i : i + 128] for i in range(0, 128 * 8, 128)]


def run(
    model_dir: Path, samples: list[list[int]], checkpoints: LayerCheckpoints, restored: dict
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """GPTQ with checkpoints; returns every quantized tensor and the layers it saved."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    groups, _ = weight_quant_plan(model, PARAMS)
    modifier = ResumableGPTQModifier(config_groups=groups, ignore=["lm_head"])
    saved: list[int] = []
    modifier.attach(model, checkpoints, restored, lambda index, _n: saved.append(index))
    oneshot_calibrated(StageInput(model, None, samples), "gptq", modifier, samples)
    tensors = {
        name: tensor.detach().clone()
        for name, tensor in model.state_dict().items()
        if name.endswith(("weight", "weight_scale", "weight_zero_point"))
    }
    return tensors, saved


def test_a_resumed_run_computes_only_the_missing_layers_and_ends_tensor_equal(
    four_layers: Path, samples: list[list[int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store", Settings())

    def checkpoints(generation: int) -> LayerCheckpoints:
        scratch = tmp_path / f"scratch-{generation}"
        return LayerCheckpoints(store, "ck", scratch, generation=generation, fingerprint="f")

    first = checkpoints(1)
    full, saved = run(four_layers, samples, first, {})
    assert saved == [0, 1, 2, 3]
    # The first attempt died after layer 1: its pointer names layers 0 and 1 only.
    pointer = json.loads(store.get_bytes("ck/latest.json"))
    pointer["layers"] = {k: v for k, v in pointer["layers"].items() if int(k) < 2}
    store.put_bytes("ck/latest.json", json.dumps(pointer).encode())

    second = checkpoints(2)
    restored, why = second.restore(LAYERS)
    assert sorted(restored) == [0, 1] and why is None
    solved: list[str] = []
    original = ResumableGPTQModifier.compress_module_list

    def recording(self, modules):  # type: ignore[no-untyped-def]
        solved.extend(self._module_names[m] for m in modules)
        return original(self, modules)

    monkeypatch.setattr(ResumableGPTQModifier, "compress_module_list", recording)
    resumed, saved = run(four_layers, samples, second, restored)
    assert saved == [2, 3]
    assert solved and all(
        name.startswith(("model.layers.2.", "model.layers.3.")) for name in solved
    )
    assert resumed.keys() == full.keys()
    for name, tensor in full.items():
        assert torch.equal(resumed[name], tensor), name


def test_a_corrupt_layer_checkpoint_is_not_restored(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", Settings())
    writer = LayerCheckpoints(store, "ck", tmp_path / "a", generation=1, fingerprint="f")
    for index in range(3):
        writer.save(index, {"w": torch.full((2,), float(index))})
    key = json.loads(store.get_bytes("ck/latest.json"))["layers"]["1"]["key"]
    store.put_bytes(key, b"not the layer")
    reader = LayerCheckpoints(store, "ck", tmp_path / "b", generation=2, fingerprint="f")
    restored, why = reader.restore(3)
    assert sorted(restored) == [0]  # a prefix only: layer 2 needs layer 1's outputs
    assert why is not None and "sha256" in why
    other = LayerCheckpoints(store, "ck", tmp_path / "c", generation=2, fingerprint="g")
    assert other.restore(3) == (
        {},
        "layer checkpoints belong to another stage setup: starting over",
    )
