"""Every pruning and low-rank method on a tiny random Llama, through the worker's own stage and
save code: masks are exact (sparsity within 0.5% of target in every layer, N:M in every group),
structured output has a consistent config and shapes, and every artifact loads back
(`squash.load_pretrained`, or plain transformers where the format allows) with the in-memory
model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils.quantization_config import CompressedTensorsConfig

from app.recipes import (
    METHODS,
    GptqParams,
    LowRankParams,
    MagnitudeParams,
    MethodParams,
    RtnParams,
    SparseGptParams,
    StructuredParams,
    W8A8Params,
    WandaParams,
)
from squash import artifact_format, load_pretrained
from workers.evaluation.measure import parameter_count, weight_bytes
from workers.formats import low_rank, sparse_bitmask
from workers.methods.base import StageInput
from workers.methods.pruning.common import nm_holds, pruned_linears
from workers.methods.quantization.gptq import Gptq
from workers.methods.recipe import run_stages, save_artifact
from workers.methods.shared.masks import capture_masks, reapply_masks
from workers.models.datasets import builtin_text, split_tokens

LINEARS = 14  # 7 per decoder layer x 2


@pytest.fixture(scope="module")
def calibration(tiny_model_dir: Path) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pool, _ = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    return [pool[i : i + 64] for i in range(0, 64 * 8, 64)]


def load_tiny(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def compress(
    model_dir: Path,
    stages: list[tuple[str, MethodParams]],
    samples: list[list[int]],
    out: Path,
    probe: torch.Tensor,
) -> tuple[torch.nn.Module, torch.Tensor, list[dict]]:
    """Run the stages and save; returns the in-memory model (before saving: saving a quantized
    model compresses it in place), its logits on `probe` and the stage notes."""
    model = load_tiny(model_dir)
    outcome = run_stages(model, None, stages, samples)
    with torch.no_grad():
        logits = outcome.model(probe).logits
    save_artifact(outcome, None, out)
    return outcome.model, logits, outcome.stage_notes


def linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.weight.detach()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")
    }


SPARSITY_CASES = {
    "magnitude-50": ("magnitude", MagnitudeParams(sparsity=0.5), 0.5, None),
    "magnitude-2:4": ("magnitude", MagnitudeParams(mask_structure="2:4"), 0.5, (2, 4)),
    "wanda-75": ("wanda", WandaParams(sparsity=0.75), 0.75, None),
    "wanda-2:4": ("wanda", WandaParams(mask_structure="2:4"), 0.5, (2, 4)),
    "sparsegpt-50": ("sparsegpt", SparseGptParams(sparsity=0.5), 0.5, None),
    "sparsegpt-4:8-dense": (
        "sparsegpt",
        SparseGptParams(mask_structure="4:8", storage="dense"),
        0.5,
        (4, 8),
    ),
}


@pytest.mark.parametrize("case_name", list(SPARSITY_CASES))
def test_sparsity_masks_are_exact_and_the_artifact_loads_back(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path, case_name: str
) -> None:
    method, params, target, pattern = SPARSITY_CASES[case_name]
    probe = torch.tensor([calibration[0][:48]])
    model, logits, [notes] = compress(
        tiny_model_dir, [(method, params)], calibration, tmp_path, probe
    )
    weights = linear_weights(model)
    assert len(weights) == LINEARS
    for name, weight in weights.items():
        sparsity = float((weight == 0).float().mean())
        assert abs(sparsity - target) <= 0.005, (name, sparsity)
        if pattern:
            assert nm_holds(weight, *pattern), name
    assert notes["pruned_layers"] == LINEARS
    assert abs(notes["measured_sparsity"] - target) <= 0.005
    if pattern:
        assert notes["n_m_holds"] is True

    original = weight_bytes(Path(tiny_model_dir))  # float32 original
    if params.storage == "sparse":
        assert artifact_format(tmp_path) == sparse_bitmask.FORMAT
        manifest = json.loads((tmp_path / sparse_bitmask.MANIFEST).read_text())
        assert len(manifest["tensors"]) == LINEARS
        with pytest.raises(OSError):  # plain transformers refuses loudly, never half-loads
            AutoModelForCausalLM.from_pretrained(tmp_path)
    else:
        assert artifact_format(tmp_path) == "transformers"
    loaded = load_pretrained(tmp_path).eval()
    for name, weight in linear_weights(loaded).items():
        # bf16 storage of the kept weights; the zeros are exactly where they were.
        assert torch.equal(weight == 0, weights[name] == 0), name
        assert torch.equal(weight, weights[name].to(torch.bfloat16).float()), name
    with torch.no_grad():
        reloaded_logits = loaded(probe).logits
    assert torch.allclose(reloaded_logits, logits, atol=5e-2), (
        (reloaded_logits - logits).abs().max()
    )
    assert weight_bytes(tmp_path) < original


def test_sparse_storage_is_smaller_than_dense_storage(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path
) -> None:
    probe = torch.tensor([calibration[0][:16]])
    sizes = {}
    for storage in ("sparse", "dense"):
        out = tmp_path / storage
        params = MagnitudeParams(sparsity=0.5, storage=storage)
        compress(tiny_model_dir, [("magnitude", params)], calibration, out, probe)
        sizes[storage] = weight_bytes(out)
    # Linear weights: 16 bits dense vs 8 (half the values) + 1 (mask) sparse; the embedding
    # (32k of the tiny model's 90k parameters) stays dense in both.
    assert sizes["sparse"] < 0.8 * sizes["dense"], sizes


def test_magnitude_keeps_the_largest_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    original = linear_weights(load_tiny(tiny_model_dir))
    model, _, _ = compress(
        tiny_model_dir,
        [("magnitude", MagnitudeParams(sparsity=0.25, storage="dense"))],
        [],
        tmp_path,
        torch.tensor([[1, 2, 3]]),
    )
    for name, weight in linear_weights(model).items():
        kept, reference = weight != 0, original[name].abs()
        # every kept weight is at least as large as every pruned one of its row
        smallest_kept = reference.masked_fill(~kept, float("inf")).amin(1)
        largest_pruned = reference.masked_fill(kept, 0).amax(1)
        assert bool((smallest_kept >= largest_pruned).all()), name


def test_non_uniform_layer_sparsity(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path
) -> None:
    params = WandaParams(layer_sparsity=[0.25, 0.75], storage="dense")
    model, _, _ = compress(
        tiny_model_dir, [("wanda", params)], calibration, tmp_path, torch.tensor([[1, 2]])
    )
    for name, weight in linear_weights(model).items():
        target = 0.25 if name.startswith("model.layers.0.") else 0.75
        assert abs(float((weight == 0).float().mean()) - target) <= 0.005, name


def test_sparsegpt_updates_weights_wanda_does_not(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path
) -> None:
    original = linear_weights(load_tiny(tiny_model_dir))
    probe = torch.tensor([[1, 2]])
    wanda, _, _ = compress(
        tiny_model_dir, [("wanda", WandaParams())], calibration, tmp_path / "w", probe
    )
    sgpt, _, _ = compress(
        tiny_model_dir, [("sparsegpt", SparseGptParams())], calibration, tmp_path / "s", probe
    )
    for name, weight in linear_weights(wanda).items():
        kept = weight != 0  # (the saved model is in bfloat16)
        assert torch.equal(weight[kept], original[name][kept].to(weight.dtype)), name
    changed = sum(
        int((w[w != 0] != original[n][w != 0].to(w.dtype)).sum())
        for n, w in linear_weights(sgpt).items()
    )
    assert changed > 0.9 * sum(int((w != 0).sum()) for w in linear_weights(sgpt).values())


@pytest.mark.parametrize(
    "params",
    [
        StructuredParams(mlp_channels=0.5),
        StructuredParams(query_heads_per_group=1),
        StructuredParams(kv_groups=1),
        StructuredParams(layers=1),
        StructuredParams(mlp_channels=0.25, kv_groups=1, layers=1, channel_multiple=16),
    ],
    ids=["mlp", "query-heads", "kv-groups", "layers", "all"],
)
def test_structured_pruning_gives_a_smaller_consistent_model(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path, params: StructuredParams
) -> None:
    probe = torch.tensor([calibration[0][:48]])
    before = parameter_count(load_tiny(tiny_model_dir))
    _, logits, [notes] = compress(
        tiny_model_dir, [("structured", params)], calibration, tmp_path, probe
    )
    config = json.loads((tmp_path / "config.json").read_text())
    heads = 4 - 2 * params.kv_groups - 2 * params.query_heads_per_group
    kv = 2 - params.kv_groups
    channels = params.kept_channels(128) if params.mlp_channels else 128
    expected = {
        "num_hidden_layers": 2 - params.layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": channels,
        "head_dim": 16,
    }
    assert {k: config[k] for k in expected} == expected
    assert artifact_format(tmp_path) == "transformers"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    for layer in loaded.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        assert attention.q_proj.weight.shape == (heads * 16, 64)
        assert attention.k_proj.weight.shape == attention.v_proj.weight.shape == (kv * 16, 64)
        assert attention.o_proj.weight.shape == (64, heads * 16)
        assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (channels, 64)
        assert mlp.down_proj.weight.shape == (64, channels)
    assert len(loaded.model.layers) == 2 - params.layers
    after = parameter_count(loaded)
    assert after < before
    assert notes["parameters"] == [before, after]
    with torch.no_grad():
        reloaded_logits = loaded(probe).logits
        generated = loaded.generate(probe, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape[1] == probe.shape[1] + 4
    assert torch.allclose(reloaded_logits, logits, atol=5e-2)


def test_structured_removes_the_least_influential_layer(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path
) -> None:
    model, _, [notes] = compress(
        tiny_model_dir,
        [("structured", StructuredParams(layers=1))],
        calibration,
        tmp_path,
        torch.tensor([[1]]),
    )
    influence = notes["layer_influence"]
    assert notes["removed_layers"] == [influence.index(min(influence))]
    original = load_tiny(tiny_model_dir)
    kept = 1 - notes["removed_layers"][0]
    assert torch.equal(
        model.model.layers[0].mlp.down_proj.weight,
        original.model.layers[kept].mlp.down_proj.weight.to(torch.bfloat16),
    )


def test_low_rank_reduces_parameters_and_loads_with_the_squash_loader(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path
) -> None:
    probe = torch.tensor([calibration[0][:48]])
    original = load_tiny(tiny_model_dir)
    model, logits, [notes] = compress(
        tiny_model_dir,
        [("low_rank", LowRankParams(param_ratio=0.5))],
        calibration,
        tmp_path,
        probe,
    )
    ranks = low_rank.ranks_of(model)
    assert len(ranks) == LINEARS == notes["factored_layers"]
    # r = 0.5 x out x in / (out + in), rounded down to a multiple of 8: q/o 64x64 -> 16,
    # k/v 32x64 -> 8 (10.7), gate/up/down 128x64 -> 16 (21.3)
    expected = {"q_proj": 16, "o_proj": 16, "k_proj": 8, "v_proj": 8, "gate_proj": 16}
    expected |= {"up_proj": 16, "down_proj": 16}
    assert {name: expected[name.rsplit(".", 1)[1]] for name in ranks} == ranks
    assert notes["factored_parameters_after"] <= 0.5 * notes["factored_parameters_before"]
    assert artifact_format(tmp_path) == low_rank.FORMAT
    with pytest.raises(OSError):  # no model.safetensors: plain transformers cannot load it
        AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert parameter_count(loaded) < parameter_count(original)
    assert parameter_count(loaded) == parameter_count(model)
    with torch.no_grad():
        reloaded_logits = loaded(probe).logits
    assert torch.allclose(reloaded_logits, logits, atol=5e-2)


def test_activation_aware_factorization_beats_plain_svd_on_the_outputs() -> None:
    from workers.methods.low_rank.svd import factorize

    torch.manual_seed(0)
    weight = torch.randn(96, 64)
    # Inputs with a few strong channels, like LLM activations.
    x = torch.randn(2048, 64) * torch.cat([torch.full((4,), 20.0), torch.ones(60)])
    moment = x.T @ x / len(x)
    up, down, reported = factorize(weight, moment, rank=16, dampening=1e-4)
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    plain = (u[:, :16] * s[:16]) @ vh[:16]
    aware_error = ((weight - up @ down) @ x.T).norm() / (weight @ x.T).norm()
    plain_error = ((weight - plain) @ x.T).norm() / (weight @ x.T).norm()
    assert aware_error < 0.8 * plain_error
    assert abs(reported - float(aware_error)) < 0.01


COMPOSED = {
    "sparsegpt-50+gptq-w4": [
        ("sparsegpt", SparseGptParams(sparsity=0.5)),
        ("gptq", GptqParams(bits=4, group_size=32)),
    ],
    "wanda-2:4+w8a8": [
        ("wanda", WandaParams(mask_structure="2:4")),
        ("w8a8", W8A8Params(weight_method="rtn")),
    ],
}


@pytest.mark.parametrize("case_name", list(COMPOSED))
def test_composed_recipe_keeps_the_mask_through_quantization_and_is_smallest(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path, case_name: str
) -> None:
    stages = COMPOSED[case_name]
    probe = torch.tensor([calibration[0][:48]])
    sizes = {}
    for label, recipe in {
        "sparse": stages[:1],
        "quantized": stages[1:],
        "composed": stages,
    }.items():
        compress(tiny_model_dir, recipe, calibration, tmp_path / label, probe)
        sizes[label] = weight_bytes(tmp_path / label)
    assert sizes["composed"] < min(sizes["sparse"], sizes["quantized"]), sizes

    out = tmp_path / "composed"
    assert artifact_format(out) == sparse_bitmask.FORMAT
    dense = CompressedTensorsConfig(run_compressed=False)
    loaded = load_pretrained(out, quantization_config=dense)
    pruned_only = linear_weights(load_pretrained(tmp_path / "sparse"))
    for name, weight in linear_weights(loaded).items():
        # The pruning stage's zeros are all still zero (rounding may add a few more).
        assert bool((weight[pruned_only[name] == 0] == 0).all()), name
        sparsity = float((weight == 0).float().mean())
        assert 0.5 <= sparsity <= 0.56, (name, sparsity)
        if "2:4" in case_name:
            assert nm_holds(weight, 2, 4), name
    levels = max(len(torch.unique(g)) for g in linear_weights(loaded)[DOWN].reshape(-1, 32))
    assert levels <= (16 if "w4" in case_name else 256)


DOWN = "model.layers.0.mlp.down_proj"


def test_gptq_after_pruning_keeps_the_zeros_and_compensates_them(
    tiny_model_dir: Path, calibration: list[list[int]]
) -> None:
    """The joint solve (mask-aware GPTQ) leaves no pruned weight to re-zero, and its model is
    closer to the pruned float model than the library's GPTQ with the zeros put back after."""
    gptq = GptqParams(bits=4, group_size=32)
    pruned = load_tiny(tiny_model_dir)
    run_stages(pruned, None, [("sparsegpt", SparseGptParams())], calibration)
    names = pruned_linears(pruned, SparseGptParams())

    joint = load_tiny(tiny_model_dir)
    notes = run_stages(
        joint, None, [("sparsegpt", SparseGptParams()), ("gptq", gptq)], calibration
    ).stage_notes
    assert notes[1]["mask_aware_layers"] == LINEARS
    assert notes[1]["mask_refilled_weights"] == 0

    rezeroed = load_tiny(tiny_model_dir)
    run_stages(rezeroed, None, [("sparsegpt", SparseGptParams())], calibration)
    masks = capture_masks(rezeroed, names)
    Gptq().apply(StageInput(rezeroed, None, calibration), gptq)  # no masks: the library's solve
    assert reapply_masks(rezeroed, masks) > 0  # it filled pruned weights in

    kept = linear_weights(joint)
    for name, mask in masks.items():
        assert bool((kept[name][~mask] == 0).all()), name  # every pruned weight still zero
    probe = torch.tensor(calibration[:4])
    with torch.no_grad():
        target = pruned(probe).logits.log_softmax(-1)

        def divergence(model: torch.nn.Module) -> float:
            logits = model(probe).logits.log_softmax(-1)
            return float(torch.nn.functional.kl_div(logits, target, log_target=True))

        assert divergence(joint) < 0.9 * divergence(rezeroed)


def test_rtn_after_pruning_keeps_the_zeros(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path
) -> None:
    _, _, notes = compress(
        tiny_model_dir,
        [("magnitude", MagnitudeParams()), ("rtn", RtnParams(bits=4, group_size=32))],
        [],
        tmp_path / "rtn",
        torch.tensor([[1]]),
    )
    assert notes[1]["mask_refilled_weights"] == 0  # rounding keeps zeros at zero


def test_pruned_linears_skip_lm_head_and_embeddings(tiny_model_dir: Path) -> None:
    names = pruned_linears(load_tiny(tiny_model_dir), MagnitudeParams(ignore=[]))
    assert len(names) == LINEARS and all(n.startswith("model.layers.") for n in names)


def test_every_pruning_and_low_rank_method_is_tested() -> None:
    families = {"pruning", "low_rank"}
    methods = {name for name, spec in METHODS.items() if spec.family in families}
    tested = {m for m, *_ in SPARSITY_CASES.values()} | {"structured", "low_rank"}
    assert methods == tested


def test_bits_per_weight_of_a_sparse_quantized_artifact(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path
) -> None:
    from workers.evaluation.measure import quantized_weight_storage

    stages = [
        ("magnitude", MagnitudeParams(sparsity=0.5)),
        ("rtn", RtnParams(bits=4, group_size=32)),
    ]
    compress(tiny_model_dir, stages, [], tmp_path / "composed", torch.tensor([[1]]))
    compress(tiny_model_dir, stages[1:], [], tmp_path / "rtn", torch.tensor([[1]]))
    composed = quantized_weight_storage(tmp_path / "composed")
    dense = quantized_weight_storage(tmp_path / "rtn")
    assert composed["quantized_layers"] == dense["quantized_layers"] == LINEARS
    assert composed["quantized_weights"] == dense["quantized_weights"]
    # int4 g32: 4 + 16/32 bits; half the integers plus a 1-bit mask: 2 + 1 + 0.5 (+ rounding)
    assert 4.4 < dense["bits_per_weight"] < 4.8
    assert 3.4 < composed["bits_per_weight"] < 3.9
