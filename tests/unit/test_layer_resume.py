"""Layer-wise calibrated stages (GPTQ, SparseGPT, Wanda) resume from layer checkpoints: a run
that restores its first layers computes only the rest (no calibration statistics, no solve for
the restored ones) and ends bitwise equal to an uninterrupted run (the calibration samples go
in the job's order, not shuffled: `shared/calibration.py`); a checkpoint that fails its sha256
is not trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.config import Settings
from app.recipes import GptqParams, SparseGptParams, WandaParams
from app.storage import LocalStore
from tests.support.layerwise_runs import run_layerwise
from tests.support.tiny_model import build_tiny_model
from workers.methods.shared.layer_checkpoints import LayerCheckpoints
from workers.models.datasets import builtin_text, split_tokens

LAYERS = 4
STAGES = {
    "gptq": GptqParams(bits=4, group_size=32, ignore=["lm_head"]),
    "sparsegpt": SparseGptParams(sparsity=0.5),
    "wanda": WandaParams(mask_structure="2:4"),
}


@pytest.fixture(scope="module")
def four_layers(models_root: Path) -> Path:
    return build_tiny_model(models_root / "tiny-llama-4-layers", layers=LAYERS)


@pytest.fixture(scope="module")
def samples(four_layers: Path) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(four_layers)
    pool, _ = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    return [pool[i : i + 128] for i in range(0, 128 * 8, 128)]


@pytest.mark.parametrize("method", sorted(STAGES))
def test_a_resumed_run_computes_only_the_missing_layers_and_ends_tensor_equal(
    method: str, four_layers: Path, samples: list[list[int]], tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store", Settings())

    def checkpoints(generation: int) -> LayerCheckpoints:
        scratch = tmp_path / f"scratch-{generation}"
        return LayerCheckpoints(store, "ck", scratch, generation=generation, fingerprint="f")

    params = STAGES[method]
    full, saved, solved, _ = run_layerwise(four_layers, samples, params, checkpoints(1), {})
    assert saved == [0, 1, 2, 3]
    assert {name.split(".")[2] for name in solved} == {"0", "1", "2", "3"}
    # The first attempt died after layer 1: its pointer names layers 0 and 1 only.
    pointer = json.loads(store.get_bytes("ck/latest.json"))
    pointer["layers"] = {k: v for k, v in pointer["layers"].items() if int(k) < 2}
    store.put_bytes("ck/latest.json", json.dumps(pointer).encode())

    second = checkpoints(2)
    restored, why = second.restore(LAYERS)
    assert sorted(restored) == [0, 1] and why is None
    resumed, saved, solved, _ = run_layerwise(four_layers, samples, params, second, restored)
    assert saved == [2, 3]
    assert solved and {name.split(".")[2] for name in solved} == {"2", "3"}
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


class BrokenStore(LocalStore):
    def put_file(self, key: str, path: Path) -> None:
        raise OSError("store unreachable")


def test_a_failing_store_costs_the_resume_point_not_the_stage(tmp_path: Path) -> None:
    warnings: list[str] = []
    store = BrokenStore(tmp_path / "store", Settings())
    writer = LayerCheckpoints(
        store, "ck", tmp_path / "a", generation=1, fingerprint="f", warn=warnings.append
    )
    for index in range(3):
        writer.save(index, {"w": torch.zeros(2)})  # never raises
    assert writer.failed and len(warnings) == 1 and "store unreachable" in warnings[0]


def test_blockwise_ternary_resumes_at_its_first_untrained_block(
    four_layers: Path, samples: list[list[int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block-wise reconstruction checkpoints each trained block; a retry loads the finished
    ones, trains only the rest, and ends tensor-equal to an uninterrupted run."""
    from app.recipes import TernaryParams
    from workers.methods.quantization import ternary
    from workers.methods.recipe import run_stages
    from workers.methods.shared import block_reconstruction
    from workers.methods.shared.layer_resume import LayerResumePoint

    store = LocalStore(tmp_path / "store", Settings())
    saved: list[int] = []
    trained: list[int] = []
    train_block = block_reconstruction._train_block

    def counting(block: torch.nn.Module, *args: object, **kwargs: object) -> None:
        trained.append(id(block))
        train_block(block, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(block_reconstruction, "_train_block", counting)

    def run(generation: int) -> dict[str, torch.Tensor]:
        checkpoints = LayerCheckpoints(
            store, "ck", tmp_path / f"s{generation}", generation=generation, fingerprint="f"
        )
        restored, _ = checkpoints.restore(LAYERS)
        point = LayerResumePoint(checkpoints, restored, lambda i, _n: saved.append(i), {})
        monkeypatch.setattr(ternary, "job_layer_checkpoints", lambda *_args: point)
        saved.clear(), trained.clear()
        model = AutoModelForCausalLM.from_pretrained(four_layers, dtype=torch.float32).eval()
        params = TernaryParams(group_size=32, solver="blockwise", epochs=1, learning_rate=1e-3)
        outcome = run_stages(model, None, [("ternary", params)], samples)
        return {k: v.clone() for k, v in outcome.model.state_dict().items()}

    full = run(1)
    assert saved == [0, 1, 2, 3] and len(trained) == LAYERS
    # The first attempt died after block 1: its pointer names blocks 0 and 1 only.
    pointer = json.loads(store.get_bytes("ck/latest.json"))
    pointer["layers"] = {k: v for k, v in pointer["layers"].items() if int(k) < 2}
    store.put_bytes("ck/latest.json", json.dumps(pointer).encode())
    resumed = run(2)
    assert saved == [2, 3] and len(trained) == 2
    assert resumed.keys() == full.keys()
    for name, tensor in full.items():
        assert torch.equal(resumed[name], tensor), name
