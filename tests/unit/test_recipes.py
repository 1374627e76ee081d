from __future__ import annotations

import pytest

from app.errors import InvalidInput
from app.recipes import METHODS, RtnParams, StageIn, describe_methods, validate_recipe
from tests.support.recipes import assert_refused


def test_valid_recipe_fills_defaults() -> None:
    [stage] = validate_recipe([StageIn(method="rtn", params={"bits": 4, "group_size": 64})])
    assert stage.as_json() == {
        "method": "rtn",
        "params": {
            "bits": 4,
            "group_size": 64,
            "symmetric": True,
            "targets": ["Linear"],
            "ignore": ["lm_head"],
            "overrides": [],
            "scale_search": "minmax",
        },
    }


def test_all_errors_are_collected_with_paths() -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_recipe(
            [
                StageIn(method="nope"),
                StageIn(method="rtn", params={"bits": 5, "extra": 1}),
            ]
        )
    fields = [e["field"] for e in caught.value.errors]
    assert fields == ["recipe[0].method", "recipe[1].params.bits", "recipe[1].params.extra"]
    assert caught.value.errors[0]["choices"] == sorted(METHODS)
    assert caught.value.errors[1]["choices"] == [2, 3, 4, 8]  # always a list
    assert caught.value.status == 422 and caught.value.code == "invalid_recipe"


def test_empty_and_too_long_recipes_are_refused() -> None:
    with pytest.raises(InvalidInput):
        validate_recipe([])
    with pytest.raises(InvalidInput):
        validate_recipe([StageIn(method="rtn")] * 17)


@pytest.mark.parametrize("group_size", [48, 100, 4, 8192])
def test_bad_group_sizes(group_size: int) -> None:
    with pytest.raises(ValueError):
        RtnParams(group_size=group_size)


def test_workers_implement_exactly_the_schema_methods() -> None:
    from workers.methods.catalog import REGISTRY

    assert set(REGISTRY) == set(METHODS)
    for name, method in REGISTRY.items():
        assert method.params_type is METHODS[name].params


def test_described_methods_carry_json_schema() -> None:
    described = {m["name"]: m for m in describe_methods()}
    assert set(described) == set(METHODS)
    for name, spec in METHODS.items():
        assert described[name]["family"] == spec.family
        assert set(described[name]["params_schema"]["properties"]) == set(spec.params.model_fields)


def test_gptq_activation_ordering_choices() -> None:
    # compressed-tensors 0.19 removed `group` ordering: refused at submission, with the choices.
    with pytest.raises(InvalidInput) as caught:
        validate_recipe([StageIn(method="gptq", params={"actorder": "group"})])
    assert caught.value.errors[0]["field"] == "recipe[0].params.actorder"
    assert caught.value.errors[0]["choices"] == ["weight", "static"]
    [stage] = validate_recipe([StageIn(method="gptq", params={"bits": 4, "actorder": "weight"})])
    assert stage.params.dampening_frac == 0.01


def test_override_errors_name_the_override_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_recipe(
            [
                StageIn(
                    method="gptq",
                    params={
                        "bits": 4,
                        "overrides": [
                            {"targets": ["re:.*down_proj"], "bits": 8},
                            {"targets": [], "bits": 6, "group_size": 48},
                        ],
                    },
                )
            ]
        )
    fields = {e["field"] for e in caught.value.errors}
    assert {
        "recipe[0].params.overrides[1].targets",
        "recipe[0].params.overrides[1].bits",
    } <= fields


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("w8a8", {"smoothing_strength": 1.5}),
        ("fp8", {"activations": "sometimes"}),
        ("ternary", {"group_size": 48}),
        ("awq", {"n_grid": 0}),
    ],
)
def test_new_method_params_are_validated(method: str, params: dict) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_recipe([StageIn(method=method, params=params)])
    assert caught.value.errors[0]["field"].startswith("recipe[0].params")


def test_a_recipe_quantizes_once_and_patterns_must_compile() -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_recipe(
            [
                StageIn(method="rtn", params={"ignore": ["re:(unclosed"]}),
                StageIn(method="gptq", params={"overrides": [{"targets": ["re:*"], "bits": 8}]}),
            ]
        )
    by_field = {e["field"]: e["message"] for e in caught.value.errors}
    assert "invalid regular expression 're:(unclosed'" in by_field["recipe[0].params.ignore"]
    assert "recipe[1].params.overrides[0].targets" in by_field
    assert "'gptq' cannot follow 'rtn'" in by_field["recipe[1].method"]


def test_composition_table_allows_the_documented_orders() -> None:
    from app.recipes.composition import why_cannot_follow

    assert why_cannot_follow("structured", "sparsity") is None
    assert why_cannot_follow("sparsity", "quantization") is None
    assert why_cannot_follow("structured", "quantization") is None
    assert why_cannot_follow("structured", "low_rank") is None
    for earlier, later in [
        ("quantization", "sparsity"),
        ("quantization", "quantization"),
        ("sparsity", "sparsity"),
        ("sparsity", "structured"),
        ("low_rank", "quantization"),
        ("sparsity", "low_rank"),
    ]:
        assert why_cannot_follow(earlier, later), (earlier, later)


def test_shape_checks_follow_the_structured_stage() -> None:
    from app.recipes import BUILTIN_SHAPES

    shape = BUILTIN_SHAPES["smollm2-135m-instruct"]
    # 25% of 1536 channels -> 1152 kept; 2:4 and 8:16 divide 576 and 1152, 5:7 does not
    ok = [StageIn(method="structured", params={"mlp_channels": 0.25})]
    validate_recipe([*ok, StageIn(method="wanda", params={"mask_structure": "8:16"})], shape=shape)
    with pytest.raises(InvalidInput) as caught:
        validate_recipe(
            [*ok, StageIn(method="wanda", params={"mask_structure": "5:7"})], shape=shape
        )
    assert "[576, 1152]" in caught.value.errors[0]["message"]


def test_distill_stands_between_architecture_changes_and_grids() -> None:
    from app.recipes import BUILTIN_SHAPES

    shape = BUILTIN_SHAPES["smollm2-135m-instruct"]
    recipe = [
        StageIn(method="structured", params={"layers": 6}),
        StageIn(method="distill", params={"max_steps": 10, "loss": "gkd", "beta": 0.3}),
        StageIn(method="wanda", params={"mask_structure": "2:4"}),
        StageIn(method="gptq", params={"bits": 4, "group_size": 64}),
    ]
    stages = validate_recipe(recipe, shape=shape)
    assert stages[1].params.beta_for_loss == 0.3  # type: ignore[attr-defined]
    validate_recipe(
        [StageIn(method="low_rank", params={"param_ratio": 0.7}), StageIn(method="distill")]
    )
    validate_recipe([StageIn(method="magnitude"), StageIn(method="distill")])
    # After weight-only integer quantization a distill stage is quantization-aware.
    validate_recipe(
        [
            StageIn(method="ternary", params={"group_size": 64}),
            StageIn(method="distill", params={"learn_scales": True}),
        ]
    )
    with pytest.raises(InvalidInput) as caught:
        validate_recipe(
            [
                StageIn(method="rtn", params={"bits": 2, "group_size": 64}),
                StageIn(method="distill"),
                StageIn(method="structured", params={"layers": 1}),
            ]
        )
    by_field = {e["field"]: e["message"] for e in caught.value.errors}
    assert "recipe[1].method" not in by_field
    assert "'structured' cannot follow" in by_field["recipe[2].method"]
    with pytest.raises(InvalidInput) as caught:
        validate_recipe(
            [
                StageIn(method="w8a8"),
                StageIn(method="distill", params={"lora": {"r": 4}}),
                StageIn(method="gptq"),
            ]
        )
    errors = {e["field"]: e for e in caught.value.errors}
    assert "not 'w8a8'" in errors["recipe[1].method"]["message"]
    assert "ternary" in errors["recipe[1].method"]["choices"]
    assert "merging the adapters" in errors["recipe[1].params.lora"]["message"]
    assert "quantized once per recipe" in errors["recipe[2].method"]["message"]
    with pytest.raises(InvalidInput) as caught:
        validate_recipe(
            [StageIn(method="magnitude"), StageIn(method="distill", params={"learn_scales": True})]
        )
    assert [e["field"] for e in caught.value.errors] == ["recipe[1].params.learn_scales"]


def test_distill_students_must_fit_their_place_and_the_model() -> None:
    from app.recipes import BUILTIN_SHAPES

    shape = BUILTIN_SHAPES["smollm2-135m-instruct"]
    derived = {"student": {"kind": "derived", "drop_layers": 6, "mlp_channels": 0.25}}
    validate_recipe([StageIn(method="distill", params=derived)], shape=shape)
    cases = [
        ([StageIn(method="distill")], "recipe[0].params.student", "first stage"),
        (
            [StageIn(method="magnitude"), StageIn(method="distill", params=derived)],
            "recipe[1].params.student",
            "discard the earlier stages",
        ),
        (
            [StageIn(method="distill", params={"student": {"kind": "derived", "drop_layers": 30}})],
            "recipe[0].params.student.drop_layers",
            "below the model's 30 layers",
        ),
        (
            [StageIn(method="distill", params={"student": {"kind": "derived"}})],
            "recipe[0].params.student.derived",
            "drop_layers and/or mlp_channels",
        ),
        (
            [
                StageIn(method="magnitude"),
                StageIn(method="distill", params={"loss": "gkd", "prompt_tokens": 256}),
            ],
            "recipe[1].params",
            "prompt_tokens must be below seq_length",
        ),
    ]
    assert_refused(cases, shape)


@pytest.mark.parametrize(
    ("method", "params", "advice"),
    [
        ("gptq", {"bits": 4, "group_size": 128}, "use 64"),
        ("awq", {"group_size": 128}, "use 64"),
        ("autoround", {"bits": 3, "group_size": 256}, "use 64"),
        ("ternary", {"group_size": 128}, "use 64"),
    ],
)
def test_a_group_size_that_does_not_divide_the_builtin_model_is_refused_at_submission(
    method: str, params: dict, advice: str
) -> None:
    """SmolLM2-135M's layers take 576 and 1536 inputs: groups of 128 do not fit (the worker
    refused them 17 s after a 202); the answer names the field and the size that fits."""
    from app.recipes import BUILTIN_SHAPES

    shape = BUILTIN_SHAPES["smollm2-135m-instruct"]
    with pytest.raises(InvalidInput) as caught:
        validate_recipe([StageIn(method=method, params=params)], shape=shape)
    (error,) = caught.value.errors
    assert error["field"] == "recipe[0].params.group_size"
    assert "[576, 1536]" in error["message"] and error["message"].endswith(advice)
    fitting = {**params, "group_size": 64}
    validate_recipe([StageIn(method=method, params=fitting)], shape=shape)


@pytest.mark.parametrize("method", ["awq", "autoround"])
def test_a_default_group_size_that_does_not_fit_is_lowered_to_one_that_does(method: str) -> None:
    """AWQ's and AutoRound's default of 128 does not divide SmolLM2-135M's 576: the user did
    not ask for it, so the stage runs with the largest that does; elsewhere it stays."""
    from app.recipes import BUILTIN_SHAPES

    shape = BUILTIN_SHAPES["smollm2-135m-instruct"]
    (stage,) = validate_recipe([StageIn(method=method)], shape=shape)
    assert stage.params.group_size == 64  # type: ignore[attr-defined]
    (unsized,) = validate_recipe([StageIn(method=method)])
    assert unsized.params.group_size == 128  # type: ignore[attr-defined]


def _gguf_beside(recipe: list[dict], kind: str = "compress", gguf: list | None = None) -> list:
    from app.jobs.schemas import JobCreate
    from app.jobs.service import checked_stages

    body = JobCreate.model_validate(
        {
            "kind": kind,
            "model": {"kind": "builtin", "name": "smollm2-135m-instruct"},
            "recipe": recipe,
            "output": {"gguf": gguf or [{"type": "Q4_K_M"}]},
        }
    )
    return checked_stages(body)


def test_gguf_files_beside_the_artifact_are_refused_where_they_could_not_be_made() -> None:
    from pydantic import ValidationError

    magnitude = {"method": "magnitude", "params": {"sparsity": 0.5}}
    rtn = {"method": "rtn", "params": {"bits": 8}}
    distill = {"method": "distill", "params": {"max_steps": 2}}
    low_rank = {"method": "low_rank", "params": {"param_ratio": 0.7}}
    # Accepted: quantization first, pruning before it, or no quantization at all.
    assert [s.method for s in _gguf_beside([rtn])] == ["rtn"]
    assert [s.method for s in _gguf_beside([magnitude, rtn])] == ["magnitude", "rtn"]
    assert [s.method for s in _gguf_beside([magnitude])] == ["magnitude"]
    # A stage after quantization would not be in the files; a low-rank model has no GGUF.
    for recipe, words in (([rtn, distill], "recipe[1] (distill) runs after"), ([low_rank], "low")):
        with pytest.raises(InvalidInput) as refused:
            _gguf_beside(recipe)
        assert refused.value.errors[0]["field"] == "output.gguf"
        assert words in refused.value.errors[0]["message"]
    with pytest.raises(InvalidInput) as refused:
        _gguf_beside([], kind="evaluate")
    assert refused.value.field == "output.gguf"
    with pytest.raises(ValidationError, match="each GGUF type once"):
        _gguf_beside([rtn], gguf=[{"type": "Q8_0"}, {"type": "Q8_0", "imatrix": False}])
    with pytest.raises(ValidationError, match="Q4_K_M"):
        _gguf_beside([rtn], gguf=[{"type": "Q4_K_X"}])
