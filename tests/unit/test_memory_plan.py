"""The memory plan from config.json and safetensors headers alone, and the routing by pool it
drives: real configs of an 8B and a 70B Llama and a Mixture-of-Experts model (no weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.config import WorkerPool
from app.planning.memory_plan import OFFLOADABLE_METHODS, Budget, Workload, plan_memory
from app.planning.model_facts import (
    UnreadableConfig,
    facts_from_config,
    facts_from_directory,
)
from app.planning.pools import NoPoolFits, budget_of, route
from app.recipes import METHODS, DistillParams, GptqParams, RtnParams, SparseGptParams
from app.recipes.cost import StageCost

CONFIGS = Path(__file__).parent.parent / "data" / "configs"
GB = 10**9
POOLS = (
    WorkerPool(queue="cpu", device="cpu", host_memory_bytes=96 * GB),
    WorkerPool(queue="gpu-80g", device="gpu", device_memory_bytes=80 * GB),
    WorkerPool(
        queue="gpu-24g", device="gpu", device_memory_bytes=24 * GB, host_memory_bytes=64 * GB
    ),
)


def config(name: str) -> dict[str, object]:
    return dict(json.loads((CONFIGS / f"{name}.json").read_text()))


def workload(*stages: object, samples: int = 128) -> Workload:
    costs = tuple(s.cost() for s in stages)  # type: ignore[attr-defined]
    calibrated = any(c.calibrated for c in costs)
    return Workload(
        stages=costs,
        calibration_samples=samples if calibrated else 0,
        calibration_length=512 if calibrated else 0,
        eval_window=512,
        evaluate_original=True,
    )


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        # The counts the models publish (Meta's and Mistral's model cards, 8.03B, 70.6B, 46.7B).
        ("llama-3.1-8b", 8_030_261_248),
        ("llama-3.1-70b", 70_553_706_496),
        ("mixtral-8x7b", 46_702_792_704),
    ],
)
def test_parameters_and_checkpoint_size_from_a_config(name: str, parameters: int) -> None:
    facts = facts_from_config(config(name))
    assert facts.parameters == parameters
    assert facts.checkpoint_bytes == 2 * parameters  # bfloat16
    assert not facts.exact


def test_headers_give_exact_sizes_that_match_the_loaded_model(tiny_model_dir: Path) -> None:
    facts = facts_from_directory(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    weights = sum(f.stat().st_size for f in tiny_model_dir.glob("*.safetensors"))
    assert facts.exact
    assert facts.parameters == sum(p.numel() for p in model.parameters())
    assert 0 < weights - facts.checkpoint_bytes < 64 * 1024  # only the header is left out
    # The formula agrees with the files on a Llama-family model.
    formula = facts_from_config(json.loads((tiny_model_dir / "config.json").read_text()))
    assert formula.parameters == facts.parameters


def test_a_config_without_sizes_is_refused_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 768}))
    with pytest.raises(UnreadableConfig, match="hidden_size"):
        facts_from_directory(tmp_path)


@pytest.mark.parametrize(
    "weights",
    [
        b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"w": {"dtype"',  # truncated JSON
        b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"w": {"x": 1}} ',  # no shape
        b"\x01\x02",  # shorter than the length field
    ],
)
def test_malformed_weight_headers_are_unreadable_never_a_crash(
    tmp_path: Path, weights: bytes
) -> None:
    """The API plans from these at submission: anything malformed must be UnreadableConfig
    (the job is then routed unplanned), not an exception that would answer 500."""
    (tmp_path / "config.json").write_text(json.dumps(config("llama-3.1-8b")))
    (tmp_path / "model.safetensors").write_bytes(weights)
    with pytest.raises(UnreadableConfig):
        facts_from_directory(tmp_path)


def test_the_plan_grows_with_what_the_recipe_does() -> None:
    facts = facts_from_config(config("llama-3.1-8b"))
    cpu = Budget(device="cpu", host_bytes=None)
    rtn = plan_memory(facts, workload(RtnParams()), cpu)
    gptq = plan_memory(facts, workload(GptqParams()), cpu)
    more = plan_memory(facts, workload(GptqParams(), samples=1024), cpu)
    distill = plan_memory(facts, workload(RtnParams(), DistillParams()), cpu)
    assert rtn.fits and rtn.mode == "in_memory"  # no budget: never refused
    stages = {
        name: plan.phases["stages"].host_bytes
        for name, plan in {"rtn": rtn, "gptq": gptq, "more": more, "distill": distill}.items()
    }
    # GPTQ caches calibration activations and one layer's Hessians (in x in per linear).
    assert stages["gptq"] > stages["rtn"] and stages["more"] > stages["gptq"]
    # A training stage holds the student, its gradients and two AdamW moments in float32.
    assert stages["distill"] - stages["rtn"] >= 16 * facts.parameters
    # The whole model in float32 in every phase of today's in-memory mode.
    assert min(n.host_bytes for n in rtn.phases.values()) >= 4 * facts.parameters
    assert rtn.host_peak_bytes == max(n.host_bytes for n in rtn.phases.values())


def test_a_search_plans_its_sensitivity_pass_and_the_winners_measuring() -> None:
    """A search has no recipe, yet its first attempt backpropagates through the whole model
    (float32 gradients and Fisher sums) and its second loads and evaluates the winner."""
    from app.jobs.schemas import JobSpec
    from app.planning.workload import workload_of

    facts = facts_from_config(config("llama-3.1-8b"))
    cpu = Budget(device="cpu", host_bytes=None)
    body = {"model": {"kind": "local", "path": "m"}, "evaluation": {"context_length": 512}}
    search = {"budget": {"max_bits_per_weight": 4.25}}
    plans = {
        kind: plan_memory(facts, workload_of(JobSpec.model_validate(spec), []), cpu)
        for kind, spec in {
            "evaluate": {**body, "kind": "evaluate"},
            "search": {**body, "kind": "search", "search": search},
        }.items()
    }
    assert set(plans["evaluate"].phases) == {"resolve", "evaluate_original"}
    assert {"stages", "load_check", "evaluate_compressed"} <= set(plans["search"].phases)
    sensitivity = plans["search"].phases["stages"].host_bytes
    # Beyond holding and evaluating the model: a float32 gradient and Fisher sum per weight.
    held = plans["evaluate"].phases["evaluate_original"].host_bytes
    assert sensitivity - held >= 8 * facts.parameters
    # It cannot run disk-offloaded (the pass needs the whole model): no offloaded plan.
    assert plans["search"].mode == "in_memory"


def test_routing_picks_the_smallest_pool_that_fits_or_refuses_with_figures() -> None:
    facts = {name: facts_from_config(config(name)) for name in ("llama-3.1-8b", "llama-3.1-70b")}
    facts["moe"] = facts_from_config(config("mixtral-8x7b"))
    job = workload(GptqParams(bits=4, group_size=128))
    # SparseGPT has no disk-offloaded mode (app/recipes/cost.py: not `offloadable`).
    in_memory_only = workload(SparseGptParams(sparsity=0.5))

    def plans(name: str, work: Workload = job):  # type: ignore[no-untyped-def]
        return lambda budget: plan_memory(facts[name], work, budget)

    by_pool = {
        (name, pool.queue): plan_memory(facts[name], job, budget_of(pool))
        for name in facts
        for pool in POOLS
        if pool.device == "gpu"
    }
    # 8B: 32 GB in float32 on the GPU does not fit 24 GB in memory (it does offloaded); it
    # fits 80 GB in memory, and the faster mode wins over the smaller pool.
    assert by_pool["llama-3.1-8b", "gpu-24g"].mode == "disk_offloaded"
    assert by_pool["llama-3.1-8b", "gpu-80g"].mode == "in_memory"
    assert by_pool["llama-3.1-8b", "gpu-80g"].fits
    assert route("gpu", POOLS, plans("llama-3.1-8b")).queue == "gpu-80g"
    # 70B and Mixtral fit no GPU in memory: GPTQ runs them disk-offloaded on the 24 GB pool,
    # one decoder layer on the GPU at a time (a Mixtral layer: 8 experts and their Hessians).
    for name, queue in (("llama-3.1-70b", "gpu-24g"), ("moe", "gpu-24g")):
        assert all(by_pool[name, q].mode == "disk_offloaded" for q in ("gpu-24g", "gpu-80g"))
        routed = route("gpu", POOLS, plans(name))
        assert routed.queue == queue and routed.plan is not None
        assert routed.plan.mode == "disk_offloaded"
        assert routed.plan.device_peak_bytes < facts[name].checkpoint_bytes / 3
        # A recipe without an offloaded mode: refused, naming each pool's figures.
        with pytest.raises(NoPoolFits, match=r"gpu-24g: .*GPU memory \d+\.\d GiB planned") as no:
            route("gpu", POOLS, plans(name, in_memory_only))
        assert "gpu-80g: GPU memory" in str(no.value)
    # The CPU pool: host memory decides; a job that fits goes there for device "cpu".
    assert route("cpu", POOLS, plans("llama-3.1-8b")).queue == "cpu"
    assert route("cpu", POOLS, plans("llama-3.1-70b")).plan.mode == "disk_offloaded"  # type: ignore[union-attr]
    with pytest.raises(NoPoolFits, match=r"cpu: host memory \d+\.\d GiB planned"):
        route("cpu", POOLS, plans("llama-3.1-70b", in_memory_only))
    # Without a readable config: the device's largest pool (its worker plans again).
    assert route("gpu", POOLS, None).queue == "gpu-80g"
    with pytest.raises(NoPoolFits, match="no worker pool runs gpu jobs"):
        route("gpu", POOLS[:1], None)


def test_the_disk_offloaded_plan_holds_no_whole_model_and_a_forced_mode_is_checked() -> None:
    facts = facts_from_config(config("llama-3.1-8b"))
    cpu = Budget(device="cpu", host_bytes=None)
    offloaded = plan_memory(facts, workload(GptqParams()), cpu, forced_mode="disk_offloaded")
    assert offloaded.mode == "disk_offloaded" and offloaded.fits
    # Every phase below the 16-bit checkpoint (16 GB): one module, one layer's working set
    # (the largest: 128 calibration samples' activations and one layer's Hessians).
    assert offloaded.host_peak_bytes < facts.checkpoint_bytes
    assert offloaded.peak_phase() == "stages"
    in_memory = plan_memory(facts, workload(GptqParams()), cpu, forced_mode="in_memory")
    assert in_memory.mode == "in_memory" and in_memory.host_peak_bytes > facts.checkpoint_bytes
    # Told to offload a recipe that cannot run offloaded: refused, saying why.
    refused = plan_memory(facts, workload(SparseGptParams()), cpu, forced_mode="disk_offloaded")
    assert not refused.fits
    assert "cannot run disk_offloaded" in (refused.shortfall or "")
    # Every offloadable method is named in that refusal (one list, checked against the costs).
    assert sorted(OFFLOADABLE_METHODS) == sorted(
        name for name, method in METHODS.items() if _default_cost(method).offloadable
    )


def _default_cost(method: object) -> StageCost:
    try:
        return method.params().cost()  # type: ignore[attr-defined, no-any-return]
    except ValueError:  # parameters without defaults: not one of ours that offloads
        return StageCost()
