"""Scale search (`scale_search` of RTN / GPTQ / AWQ) on a tiny random Llama: the MSE observer's
scales round the weights with less error than min/max scales, and the imatrix observer's with
less error weighted by each input channel's activation energy on the calibration text (what it
optimizes, with its own norm, so on this random model it is not always below the plain MSE
observer's). Both keep the stored format (tests/unit/test_quantization_methods.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.recipes import RtnParams
from workers.methods.recipe import run_stages
from workers.methods.shared.layers import targeted_linears
from workers.methods.shared.storage_dtype import cast_for_storage
from workers.models.datasets import builtin_text, split_tokens


@pytest.fixture(scope="module")
def calibration(tiny_model_dir: Path) -> list[list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pool, _ = split_tokens(tokenizer(builtin_text("pydoc-topics"))["input_ids"])
    return [pool[i : i + 64] for i in range(0, 64 * 8, 64)]


def load(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def linears(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return dict(targeted_linears(model, ["Linear"], ["lm_head"]))


@torch.no_grad()
def activation_energy(model: torch.nn.Module, samples: list[list[int]]) -> dict[str, torch.Tensor]:
    """Mean squared input of every Linear, per input channel (llama.cpp's importance matrix)."""
    sums: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda _m, args, name=name: sums.__setitem__(
                name, args[0].reshape(-1, args[0].shape[-1]).pow(2).mean(0)
            )
        )
        for name, module in linears(model).items()
    ]
    model(torch.tensor(samples))
    for hook in hooks:
        hook.remove()
    return sums


def test_mse_and_imatrix_scales_lower_the_error_each_optimizes(
    tiny_model_dir: Path, calibration: list[list[int]]
) -> None:
    original = load(tiny_model_dir)
    weights = {n: m.weight.detach().clone() for n, m in linears(original).items()}
    energy = activation_energy(original, calibration)
    plain: dict[str, float] = {}
    weighted: dict[str, float] = {}
    for search in ("minmax", "mse", "imatrix"):
        model = load(tiny_model_dir)
        params = RtnParams(bits=3, group_size=32, scale_search=search)  # type: ignore[arg-type]
        outcome = run_stages(model, None, [("rtn", params)], calibration)
        assert outcome.stage_notes[0]["scale_search"] == search
        cast_for_storage(outcome.model)  # the weights on their grid, as saved
        plain[search] = weighted[search] = 0.0
        for name, module in linears(outcome.model).items():
            error = (module.weight.detach().float() - weights[name]).square()
            plain[search] += float(error.sum())
            weighted[search] += float((error * energy[name]).sum())
    assert plain["mse"] < 0.97 * plain["minmax"], plain
    assert weighted["imatrix"] < 0.97 * weighted["minmax"], weighted
