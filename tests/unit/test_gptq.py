"""GPTQ on a tiny random Llama: a loadable artifact whose layers reproduce their calibration
outputs better than round-to-nearest does with the same scheme (what GPTQ exists for)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils.quantization_config import CompressedTensorsConfig

from app.config import Settings
from app.recipes import GptqParams, RtnParams
from workers.errors import JobFailure
from workers.methods.base import StageInput
from workers.methods.quantization.gptq import Gptq
from workers.methods.quantization.rtn import RoundToNearest
from workers.methods.shared.layers import targeted_linears
from workers.models.datasets import builtin_text, split_tokens

LAYERS = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"]


@pytest.fixture(scope="module")
def calibration(tiny_model_dir: Path) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pool, _ = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    return [pool[i : i + 128] for i in range(0, 128 * 16, 128)]


def layer_inputs(model: torch.nn.Module, samples: list[list[int]]) -> dict[str, torch.Tensor]:
    """The inputs each named Linear sees when the original model runs the calibration text."""
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in LAYERS}
    modules = dict(model.named_modules())
    hooks = [
        modules[name].register_forward_hook(
            lambda _m, args, _out, name=name: captured[name].append(
                args[0].reshape(-1, args[0].shape[-1])
            )
        )
        for name in LAYERS
    ]
    with torch.no_grad():
        model(torch.tensor(samples))
    for hook in hooks:
        hook.remove()
    return {name: torch.cat(parts) for name, parts in captured.items()}


def quantized_weights(
    method, params, model_dir: Path, samples, out: Path
) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to(torch.bfloat16)
    method.apply(StageInput(model, None, samples, None), params)  # type: ignore[arg-type]
    model.save_pretrained(out, save_compressed=True)
    loaded = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, quantization_config=CompressedTensorsConfig(run_compressed=False)
    )
    return {n: m.weight.detach() for n, m in targeted_linears(loaded, ["Linear"], ["lm_head"])}


def test_gptq_reproduces_layer_outputs_better_than_rtn(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path
) -> None:
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    inputs = layer_inputs(original, calibration)
    weights = dict(targeted_linears(original, ["Linear"], ["lm_head"]))
    scheme = {"bits": 4, "group_size": 32}
    rtn = quantized_weights(
        RoundToNearest(), RtnParams(**scheme), tiny_model_dir, calibration, tmp_path / "rtn"
    )
    gptq = quantized_weights(
        Gptq(), GptqParams(**scheme), tiny_model_dir, calibration, tmp_path / "gptq"
    )
    for name in LAYERS:
        x, w = inputs[name], weights[name].weight.detach()
        reference = x @ w.T

        def error(q: torch.Tensor, x=x, reference=reference) -> float:
            return float((x @ q.T - reference).norm() / reference.norm())

        # Same grid (16 levels per group of 32) for both methods…
        assert max(len(torch.unique(g)) for g in gptq[name].reshape(-1, 32)) <= 16
        # …but GPTQ chose the grid points that keep the layer's output on calibration data.
        assert error(gptq[name]) < 0.9 * error(rtn[name]), name


def test_gptq_without_calibration_samples_fails_clearly(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(JobFailure, match="no sample") as caught:
        Gptq().apply(StageInput(model, None, [], None), GptqParams(bits=4, group_size=32))  # type: ignore[arg-type]
    assert caught.value.code == "data_error"


class RecordingContext:
    """Stands in for the job's context (its progress writes go to Postgres): records them; its
    object store is a folder (the stage writes its layer checkpoints there)."""

    def __init__(self, store: Path) -> None:
        self.calls: list[tuple[str, float, dict]] = []
        self.checkpointed: list[int] = []  # layers already checkpointed at each progress call
        self.store = store
        self.settings = Settings(object_store_url=f"file://{store}", work_dir=store / "work")
        self.job_id, self.generation = uuid.uuid4(), 1

    def progress(self, stage: str, percent: float, detail: dict | None = None) -> None:
        self.calls.append((stage, percent, detail or {}))
        self.checkpointed.append(len(list(self.store.rglob("layer-*.safetensors"))))

    def check(self) -> None: ...
    def warn(self, message: str) -> None: ...
    def event(self, kind: str, message: str, data: dict | None = None) -> None: ...
    def fault_point(self, point: str) -> None: ...


@pytest.mark.parametrize("offloaded", [False, True], ids=["in-memory", "disk-offloaded"])
def test_a_layer_wise_stage_reports_each_decoder_layer_with_an_eta(
    tiny_model_dir: Path, calibration: list[list[int]], tmp_path: Path, offloaded: bool
) -> None:
    from workers.models.offloaded import open_offloaded

    model = (
        open_offloaded(tiny_model_dir, tmp_path / "offload", onload_device=torch.device("cpu"))
        if offloaded
        else AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    )
    ctx = RecordingContext(tmp_path)
    stage = StageInput(model, None, calibration[:4], ctx, progress_span=(35.0, 60.0))  # type: ignore[arg-type]
    Gptq().apply(stage, GptqParams(bits=4, group_size=32))
    layers = model.config.num_hidden_layers
    assert [detail["layer"] for _, _, detail in ctx.calls] == list(range(1, layers + 1))
    # Each report when the pipeline reaches the layer (the ones before it done), not while it
    # traces the model (on meta tensors, every layer in a row: disk-offloaded, all at once).
    assert ctx.checkpointed == list(range(layers))
    assert all(detail["layers"] == layers for _, _, detail in ctx.calls)
    assert "eta_seconds" in ctx.calls[-1][2] and ctx.calls[-1][2]["eta_seconds"] >= 0
    percents = [percent for _, percent, _ in ctx.calls]
    assert percents == sorted(percents) and percents[0] >= 35.0 and percents[-1] < 60.0
    assert {name for name, _, _ in ctx.calls} == {"stage:gptq"}
    # and each layer was checkpointed for a retried attempt to resume from
    written = sorted(p.name for p in tmp_path.rglob("layer-*.safetensors"))
    assert written == [f"layer-{i:05d}-g1.safetensors" for i in range(layers)]
