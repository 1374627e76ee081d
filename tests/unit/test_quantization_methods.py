"""Every quantization method on a tiny random Llama, through the worker's own stage and save code:
the artifact loads back with plain transformers, each group of dequantized weights takes at most
2^bits distinct values (3 for ternary), the bits on disk match the scheme, and the in-memory
model and the reloaded one give the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils.quantization_config import CompressedTensorsConfig

from app.recipes import (
    METHODS,
    AutoRoundParams,
    AwqParams,
    Fp8Params,
    GptqParams,
    MethodParams,
    RtnParams,
    TernaryParams,
    W8A8Params,
)
from workers.evaluation.measure import quantized_weight_storage
from workers.methods.recipe import run_stages, save_artifact
from workers.methods.shared.layers import targeted_linears
from workers.methods.shared.storage_dtype import cast_for_storage
from workers.models.datasets import builtin_text, split_tokens

DOWN = "model.layers.0.mlp.down_proj"  # in_features 128 (others 64)


class Case:
    def __init__(
        self,
        method: str,
        params: MethodParams,
        levels: int,
        group: int | None,
        stored: str,
        bits_range: tuple[float, float],
    ) -> None:
        self.method, self.params, self.levels, self.group = method, params, levels, group
        self.stored, self.bits_range = stored, bits_range


CASES = {
    "rtn-int8-channel": Case("rtn", RtnParams(bits=8), 256, None, "packed:8", (8.2, 8.6)),
    "rtn-int3-g32": Case("rtn", RtnParams(bits=3, group_size=32), 8, 32, "packed:3", (3.4, 3.6)),
    "rtn-int2-g32-asym": Case(
        "rtn", RtnParams(bits=2, group_size=32, symmetric=False), 4, 32, "packed:2", (2.5, 2.9)
    ),
    "gptq-int4-g32-actorder": Case(
        "gptq",
        GptqParams(bits=4, group_size=32, actorder="static"),
        16,
        32,
        "packed:4",
        (4.4, 4.6),
    ),
    "gptq-int3-g32": Case("gptq", GptqParams(bits=3, group_size=32), 8, 32, "packed:3", (3.4, 3.6)),
    # Scale search changes how scales are chosen, never the stored format.
    "rtn-int4-g32-mse": Case(
        "rtn", RtnParams(bits=4, group_size=32, scale_search="mse"), 16, 32, "packed:4", (4.4, 4.6)
    ),
    "rtn-int4-g32-imatrix": Case(
        "rtn",
        RtnParams(bits=4, group_size=32, scale_search="imatrix"),
        16,
        32,
        "packed:4",
        (4.4, 4.6),
    ),
    "gptq-int4-g32-imatrix": Case(
        "gptq",
        GptqParams(bits=4, group_size=32, scale_search="imatrix"),
        16,
        32,
        "packed:4",
        (4.4, 4.6),
    ),
    "autoround-int4-g32": Case(
        "autoround",
        AutoRoundParams(bits=4, group_size=32, iters=5, batch_size=4),
        16,
        32,
        "packed:4",
        (4.4, 4.6),
    ),
    "autoround-int2-g32": Case(
        "autoround",
        AutoRoundParams(bits=2, group_size=32, iters=5, batch_size=4),
        4,
        32,
        "packed:2",
        (2.4, 2.6),
    ),
    "awq-int4-g32": Case("awq", AwqParams(bits=4, group_size=32), 16, 32, "packed:4", (4.5, 5.0)),
    "w8a8": Case("w8a8", W8A8Params(), 256, None, "int8", (8.2, 8.6)),
    "fp8-dynamic": Case("fp8", Fp8Params(), 256, None, "fp8", (8.2, 8.6)),
    "fp8-static-kv": Case(
        "fp8", Fp8Params(activations="static", kv_cache=True), 256, None, "fp8", (8.0, 8.1)
    ),
    "ternary-g32": Case("ternary", TernaryParams(group_size=32), 3, 32, "packed:2", (2.4, 2.6)),
    "ternary-g32-gptq": Case(
        "ternary", TernaryParams(group_size=32, solver="gptq"), 3, 32, "packed:2", (2.4, 2.6)
    ),
    "ternary-g32-blockwise": Case(
        "ternary",
        TernaryParams(group_size=32, solver="blockwise", epochs=1),
        3,
        32,
        "packed:2",
        (2.4, 2.6),
    ),
}


def calibration_samples(model_dir: Path) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pool, _ = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    return [pool[i : i + 64] for i in range(0, 64 * 8, 64)]


@pytest.fixture(scope="module")
def calibration(tiny_model_dir: Path) -> list[list[int]]:
    return calibration_samples(tiny_model_dir)


def compress(
    model_dir: Path,
    method: str,
    params: MethodParams,
    samples: list[list[int]],
    out: Path,
    probe: torch.Tensor | None = None,
    stages: list[tuple[str, MethodParams]] | None = None,
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Quantize (the one stage, or `stages`) and save. Returns the in-memory model's logits on
    `probe` and its quantized weights, taken after the storage cast and before saving (saving
    compresses in place)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outcome = run_stages(model, None, stages or [(method, params)], samples)
    cast_for_storage(outcome.model)
    weights = {
        n: m.weight.detach().clone() for n, m in targeted_linears(model, ["Linear"], ["lm_head"])
    }
    logits = None
    if probe is not None:
        # float32 compute: the quantized weights are held in float32 until saving packs them.
        with torch.no_grad():
            logits = outcome.model.float()(probe).logits
    save_artifact(outcome, None, out)
    return logits, weights


def dense_weights(out: Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    # run_compressed=False decompresses into plain Linear weights the test can inspect.
    loaded = AutoModelForCausalLM.from_pretrained(
        out, dtype=dtype, quantization_config=CompressedTensorsConfig(run_compressed=False)
    )
    return {n: m.weight.detach() for n, m in targeted_linears(loaded, ["Linear"], ["lm_head"])}


def stored_tensor(out: Path, name: str) -> torch.Tensor:
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        return handle.get_tensor(name)


@pytest.mark.parametrize("case_name", list(CASES))
def test_method_artifact_loads_lies_on_its_grid_and_matches_in_memory_logits(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path, case_name: str
) -> None:
    case = CASES[case_name]
    probe = torch.tensor([calibration[0][:48]])
    in_memory, in_memory_weights = compress(
        tiny_model_dir, case.method, case.params, calibration, tmp_path, probe
    )

    weights = dense_weights(tmp_path)
    assert len(weights) == 14  # 7 linears x 2 layers, lm_head ignored
    for name, weight in weights.items():
        groups = weight.reshape(-1, case.group) if case.group else weight
        levels = max(len(torch.unique(g)) for g in groups)
        assert levels <= case.levels, (name, levels)
        assert levels >= min(case.levels, 3), (name, levels)  # really quantized, not collapsed

    kind, _, bits = case.stored.partition(":")
    if kind == "packed":
        packed = stored_tensor(tmp_path, f"{DOWN}.weight_packed")
        assert packed.dtype == torch.int32 and packed.shape == (64, 128 * int(bits) // 32)
    else:
        dtype = torch.int8 if kind == "int8" else torch.float8_e4m3fn
        assert stored_tensor(tmp_path, f"{DOWN}.weight").dtype == dtype
    storage = quantized_weight_storage(tmp_path)
    assert storage["quantized_layers"] == 14
    low, high = case.bits_range
    assert low <= storage["bits_per_weight"] <= high, storage

    # The reloaded weights are exactly the in-memory ones (every integer survived the bf16 cast
    # and the packing); the logits then agree to float32 summation order (the compressed
    # modules decompress, the in-memory ones fake-quantize, so the kernels differ). With
    # quantized activations those 1e-5 differences occasionally move an activation across a
    # rounding boundary, hence the looser bound there (about 1% of the logits' range).
    for name, weight in dense_weights(tmp_path).items():
        assert torch.equal(weight, in_memory_weights[name].float()), name
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        actual = reloaded(probe).logits
    assert in_memory is not None
    tolerance = 2e-2 if case.method in {"w8a8", "fp8"} else 1e-4
    assert torch.allclose(actual, in_memory, rtol=0, atol=tolerance), (
        (actual - in_memory).abs().max()
    )


def test_every_quantization_method_has_a_case() -> None:
    # (`rotate` prepares weights for these and has its own tests: test_rotations.py; `gguf`
    # writes llama.cpp's format, not compressed-tensors: test_gguf.py.)
    methods = {name for name, spec in METHODS.items() if spec.kind == "quantization"}
    assert methods - {"gguf"} == {case.method for case in CASES.values()}


def test_ternary_weights_are_absmean_ternarized(tiny_model_dir: Path, tmp_path: Path) -> None:
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference = dict(targeted_linears(original, ["Linear"], ["lm_head"]))[DOWN].weight.detach()
    compress(tiny_model_dir, "ternary", TernaryParams(), [], tmp_path)
    weight = dense_weights(tmp_path)[DOWN]
    scale = reference.abs().mean(dim=1, keepdim=True)
    expected = (reference / scale).round().clamp(-1, 1) * scale
    # Stored in bfloat16 like every artifact: equal up to the scale's 16-bit rounding.
    assert torch.allclose(weight, expected, rtol=1e-2, atol=0)
    assert set(torch.unique((weight / weight.abs().amax(1, keepdim=True)).round()).tolist()) == {
        -1.0,
        0.0,
        1.0,
    }


def test_mixed_precision_overrides_keep_named_layers_at_8_bits(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    params = RtnParams(
        bits=4,
        group_size=32,
        overrides=[
            {"targets": ["re:.*down_proj"], "bits": 8, "group_size": "channel"},
            {"targets": ["re:model\\.layers\\.1\\..*"], "bits": 3},
        ],
    )
    compress(tiny_model_dir, "rtn", params, [], tmp_path)
    # down_proj in layer 1 matches both overrides: the last one wins (3 bits, group 32).
    expected_bits = {
        "model.layers.0.mlp.down_proj": 8,
        "model.layers.0.self_attn.q_proj": 4,
        "model.layers.1.mlp.down_proj": 3,
        "model.layers.1.self_attn.q_proj": 3,
    }
    for name, bits in expected_bits.items():
        packed = stored_tensor(tmp_path, f"{name}.weight_packed")
        columns = 128 if "down_proj" in name else 64
        assert packed.shape[1] == columns * bits // 32, name
    weights = dense_weights(tmp_path)
    row = weights["model.layers.0.mlp.down_proj"][0]
    assert 16 < len(torch.unique(row)) <= 256  # per-channel 8-bit, not 4-bit groups
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert len(config["config_groups"]) == 3  # the stage's scheme + one per override setting


def test_awq_reports_which_mappings_applied(
    tiny_model_dir: Path, calibration: list[list[int]]
) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    outcome = run_stages(model, None, [("awq", AwqParams(group_size=32))], calibration)
    mappings = outcome.stage_notes[0]["mappings"]
    # Grouped-query attention (4 heads, 2 KV heads): v_proj's 32 outputs cannot balance o_proj's
    # 64 inputs, so that mapping is skipped in both layers; the other three apply everywhere.
    assert mappings["re:.*v_proj$ -> re:.*o_proj$"] == {"applied": 0, "skipped": 2}
    applied = {k: v for k, v in mappings.items() if "o_proj" not in k}
    assert len(applied) == 3
    assert all(v == {"applied": 2, "skipped": 0} for v in applied.values())


def test_ternary_gptq_keeps_absmean_scales_and_reproduces_outputs_better(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path
) -> None:
    """The GPTQ solver uses the same grid (absmean scales of the incoming weights, integers
    in {-1, 0, 1}) and compensates each column's rounding, so the model's output on the
    calibration text stays closer to the original's than independent rounding does."""
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    reference = dict(targeted_linears(original, ["Linear"], ["lm_head"]))[DOWN].weight.detach()
    probe = torch.tensor(calibration[:4])
    with torch.no_grad():
        target = original(probe).logits.log_softmax(-1)
    divergence = {}
    for solver in ("round", "gptq"):
        params = TernaryParams(group_size=32, solver=solver)  # type: ignore[arg-type]
        logits, weights = compress(
            tiny_model_dir, "ternary", params, calibration, tmp_path / solver, probe
        )
        assert logits is not None
        divergence[solver] = float(
            torch.nn.functional.kl_div(logits.log_softmax(-1), target, log_target=True)
        )
        groups = weights[DOWN].float().reshape(-1, 32)
        scale = reference.reshape(-1, 32).abs().mean(dim=1, keepdim=True)
        ratio = groups / scale.to(torch.bfloat16).float()
        assert torch.equal(ratio, ratio.round()) and ratio.abs().max() <= 1, solver
    assert divergence["gptq"] < 0.8 * divergence["round"], divergence


def test_ternary_blockwise_trains_each_block_towards_the_float_one(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path
) -> None:
    """Block-wise reconstruction lowers every block's output error against the float block
    it replaces, and the whole model ends closer to the original than independent rounding;
    the weights stay on the ternary grid of their (trained) scales."""
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    probe = torch.tensor(calibration[:4])
    with torch.no_grad():
        target = original(probe).logits.log_softmax(-1)
    divergence, notes = {}, {}
    for solver in ("round", "blockwise"):
        params = TernaryParams(group_size=32, solver=solver, epochs=4, learning_rate=1e-3)  # type: ignore[arg-type]
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
        outcome = run_stages(model, None, [("ternary", params)], calibration)
        notes[solver] = outcome.stage_notes[0]
        with torch.no_grad():
            logits = outcome.model(probe).logits
        divergence[solver] = float(
            torch.nn.functional.kl_div(logits.log_softmax(-1), target, log_target=True)
        )
        for name, module in targeted_linears(outcome.model, ["Linear"], ["lm_head"]):
            scale = module.weight_scale.float().repeat_interleave(32, dim=1)
            ratio = module.weight.float() / scale
            assert torch.equal(ratio, ratio.round()) and ratio.abs().max() <= 1, name
    blockwise = notes["blockwise"]
    assert len(blockwise["block_error_after"]) == 2
    for before, after in zip(
        blockwise["block_error_before"], blockwise["block_error_after"], strict=True
    ):
        assert after < 0.9 * before, blockwise
    assert divergence["blockwise"] < 0.5 * divergence["round"], divergence


def test_ternary_blockwise_keeps_an_earlier_stages_zeros(
    tiny_model_dir: Path, calibration: list[list[int]]
) -> None:
    """After a pruning stage the trained weights keep its zeros at every step: the recipe
    runner finds none to re-zero (at this learning rate, unmasked training refills them)."""
    from app.recipes import MagnitudeParams

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    stages: list[tuple[str, MethodParams]] = [
        ("magnitude", MagnitudeParams(sparsity=0.5)),
        ("ternary", TernaryParams(group_size=32, solver="blockwise", learning_rate=1e-2)),
    ]
    outcome = run_stages(model, None, stages, calibration)
    assert outcome.stage_notes[1]["mask_refilled_weights"] == 0
    down = dict(targeted_linears(outcome.model, ["Linear"], ["lm_head"]))[DOWN].weight
    assert float((down == 0).float().mean()) >= 0.5
