"""The HTTP contract against the real Postgres: auth, tenancy, validation, idempotency, paging."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import session_scope
from app.jobs.models import Job
from app.jobs.service import read_job
from app.recipes import METHODS
from tests.support.jobs import tiny_job
from tests.support.services import wait_until

pytestmark = pytest.mark.integration


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code and body["status"] == status and body["type"].endswith(code)
    return body


def submit(
    api: TestClient, headers: dict[str, str], body: dict[str, Any] | None = None, **extra: str
) -> Any:
    # device "gpu": no GPU worker consumes this queue in these tests, so jobs stay queued.
    return api.post("/v1/jobs", json=body or tiny_job(device="gpu"), headers={**headers, **extra})


def test_submit_returns_202_location_and_the_job(api: TestClient, tenant_a: dict) -> None:
    response = submit(api, tenant_a)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["attempts"] == 0 and job["progress"] == 0
    # Defaults of the method's params are filled in and visible.
    assert job["recipe"] == [
        {
            "method": "rtn",
            "params": {
                "bits": 4,
                "group_size": 32,
                "symmetric": True,
                "targets": ["Linear"],
                "ignore": ["lm_head"],
                "overrides": [],
                "scale_search": "minmax",
            },
        }
    ]
    fetched = api.get(f"/v1/jobs/{job['id']}", headers=tenant_a).json()
    assert fetched["id"] == job["id"] and fetched["state"] == "queued"
    events = api.get(f"/v1/jobs/{job['id']}/events", headers=tenant_a).json()["items"]
    assert [e["state"] for e in events] == ["queued"]
    # `after` is a Postgres bigint: past it the request is refused naming the field (the
    # contract test once got a 500 from an overflowing value).
    largest = api.get(f"/v1/jobs/{job['id']}/events?after={2**63 - 1}", headers=tenant_a)
    assert largest.status_code == 200 and largest.json()["items"] == []
    beyond = api.get(f"/v1/jobs/{job['id']}/events?after={2**63}", headers=tenant_a)
    assert beyond.status_code == 422 and beyond.json()["errors"][0]["field"] == "after"


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc", "Bearer sq_unknown"])
def test_missing_or_bad_key_is_401(api: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    assert_problem(api.get("/v1/jobs", headers=headers), 401, "unauthorized")


def test_revoked_key_is_401(api: TestClient, settings: Any) -> None:
    from app.auth import service
    from app.db import session_scope

    with session_scope(settings.database_url) as session:
        issued = service.create_key(session, tenant_name="to-revoke")
    headers = {"Authorization": f"Bearer {issued.secret}"}
    assert api.get("/v1/jobs", headers=headers).status_code == 200
    with session_scope(settings.database_url) as session:
        assert service.revoke(session, key_id=issued.id)
    # API processes cache valid keys for AUTH_CACHE_TTL_S; revocation applies within it.
    started = time.monotonic()
    wait_until(
        lambda: api.get("/v1/jobs", headers=headers).status_code == 401,
        timeout=settings.auth_cache_ttl_s + 1,
        what="revoked key to be refused",
    )
    assert time.monotonic() - started <= settings.auth_cache_ttl_s + 1
    assert_problem(api.get("/v1/jobs", headers=headers), 401, "unauthorized")


def test_other_tenant_sees_404_everywhere(api: TestClient, tenant_a: dict, tenant_b: dict) -> None:
    job_id = submit(api, tenant_a).json()["id"]
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/artifacts"),
        ("GET", f"/v1/jobs/{job_id}/report"),
    ]:
        assert_problem(api.request(method, path, headers=tenant_b), 404, "not_found")
    listed = api.get("/v1/jobs", headers=tenant_b).json()["items"]
    assert job_id not in {j["id"] for j in listed}
    # …and the cancel attempt changed nothing.
    assert api.get(f"/v1/jobs/{job_id}", headers=tenant_a).json()["state"] == "queued"


def test_unknown_job_is_404_and_bad_id_is_422(api: TestClient, tenant_a: dict) -> None:
    assert_problem(api.get(f"/v1/jobs/{uuid.uuid4()}", headers=tenant_a), 404, "not_found")
    body = assert_problem(api.get("/v1/jobs/not-a-uuid", headers=tenant_a), 422, "invalid_input")
    assert body["errors"][0]["field"] == "job_id"


def test_unknown_method_names_field_and_choices(api: TestClient, tenant_a: dict) -> None:
    body = tiny_job(recipe=[{"method": "rtn"}, {"method": "magic", "params": {}}])
    problem = assert_problem(submit(api, tenant_a, body), 422, "invalid_recipe")
    assert problem["errors"] == [
        {
            "field": "recipe[1].method",
            "message": "unknown method 'magic'",
            "choices": sorted(METHODS),
        }
    ]
    assert {"rtn", "gptq", "sparsegpt", "wanda", "structured", "low_rank"} <= set(METHODS)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"bits": 5}, "recipe[0].params.bits"),
        ({"group_size": 48}, "recipe[0].params.group_size"),  # not a power of two
        ({"group_size": 4}, "recipe[0].params.group_size"),
        ({"colour": "red"}, "recipe[0].params.colour"),
    ],
)
def test_bad_parameter_is_422_naming_it(
    api: TestClient, tenant_a: dict, params: dict, field: str
) -> None:
    problem = assert_problem(
        submit(api, tenant_a, tiny_job(recipe=[{"method": "rtn", "params": params}])),
        422,
        "invalid_recipe",
    )
    assert [e["field"] for e in problem["errors"]] == [field]


def test_bits_error_lists_valid_choices(api: TestClient, tenant_a: dict) -> None:
    problem = submit(api, tenant_a, tiny_job(recipe=[{"method": "rtn", "params": {"bits": 5}}]))
    assert problem.json()["errors"][0]["choices"] == [2, 3, 4, 8]


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({"kind": "s3", "uri": "http://evil/x"}, "model.s3.uri"),
        ({"kind": "local", "path": "../../etc"}, "model.local.path"),
        ({"kind": "local", "path": "/etc/passwd"}, "model.local.path"),
        ({"kind": "huggingface", "repo_id": "a/b/c"}, "model.huggingface.repo_id"),
        ({"kind": "ftp", "uri": "x"}, "model"),
    ],
)
def test_bad_model_source_is_422(api: TestClient, tenant_a: dict, model: dict, field: str) -> None:
    problem = assert_problem(submit(api, tenant_a, tiny_job(model=model)), 422, "invalid_input")
    assert problem["errors"][0]["field"] == field


BUILTIN = {"kind": "builtin", "name": "smollm2-135m-instruct"}
JSON = {"content-type": "application/json"}
# The careless inputs a new user sends, each with its documented answer and the words that name
# the fix: (case, request, status, code, fix).
CARELESS_INPUTS = [
    (
        "malformed JSON",
        {"content": b"{not json", "headers": JSON},
        400,
        "invalid_json",
        "not valid JSON",
    ),
    (
        "bytes that are not text",
        {"content": b"\xff\xfe\x00", "headers": JSON},
        400,
        "invalid_json",
        "Content-Type: application/json",
    ),
    (
        "JSON without a Content-Type",
        {"content": json.dumps(tiny_job()).encode()},
        400,
        "invalid_json",
        "got no Content-Type",
    ),
    ("a number as a string", {"json": tiny_job(priority="5")}, 422, "invalid_input", "priority"),
    (
        "a compress job without a recipe",
        {"json": tiny_job(recipe=[])},
        422,
        "invalid_recipe",
        "needs at least one stage",
    ),
    (
        "an unknown method",
        {"json": tiny_job(recipe=[{"method": "gptqq"}])},
        422,
        "invalid_recipe",
        "unknown method",
    ),
    (
        "a group size of 128 on the built-in model",
        {
            "json": tiny_job(
                model=BUILTIN, recipe=[{"method": "rtn", "params": {"group_size": 128}}]
            )
        },
        422,
        "invalid_recipe",
        "use 64",
    ),
    (
        "an S3 source outside the allow-list",
        {"json": tiny_job(model={"kind": "s3", "uri": "s3://elsewhere/model"})},
        403,
        "source_not_allowed",
        "allow-listed",
    ),
    (
        "a webhook to a private address",
        {"json": tiny_job(webhook_url="https://10.0.0.7/h")},
        403,
        "webhook_not_allowed",
        "not a public address",
    ),
    (
        "a plain-http webhook",
        {"json": tiny_job(webhook_url="http://hooks.example.com/h")},
        422,
        "invalid_webhook_url",
        "https",
    ),
]


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "code", "fix"),
    CARELESS_INPUTS,
    ids=[row[0] for row in CARELESS_INPUTS],
)
def test_careless_inputs_get_their_documented_answer(
    api: TestClient,
    tenant_a: dict,
    case: str,
    request_kwargs: dict[str, Any],
    status: int,
    code: str,
    fix: str,
) -> None:
    before = api.get("/v1/jobs", headers=tenant_a).json()["items"]
    headers = {**tenant_a, **request_kwargs.pop("headers", {})}
    problem = assert_problem(api.post("/v1/jobs", headers=headers, **request_kwargs), status, code)
    assert fix in problem["detail"], (case, problem)
    assert problem.get("errors"), case  # the field is named
    assert api.get("/v1/jobs", headers=tenant_a).json()["items"] == before  # nothing created


def test_careless_reads_name_the_fix(api: TestClient, tenant_a: dict) -> None:
    cursor = assert_problem(api.get("/v1/jobs?cursor=zzz", headers=tenant_a), 422, "invalid_input")
    assert cursor["errors"][0]["field"] == "cursor"
    compare = assert_problem(
        api.get("/v1/compare?jobs=abc", headers=tenant_a), 422, "invalid_input"
    )
    assert "is not a list of job ids: give job ids (UUIDs)" in compare["detail"]
    missing = assert_problem(api.get("/v1/jobs"), 401, "unauthorized")
    assert "Authorization: Bearer" in missing["detail"]


def test_idempotency_key_replays_and_refuses_other_body(
    api: TestClient, tenant_a: dict, tenant_b: dict
) -> None:
    key = uuid.uuid4().hex
    first = submit(api, tenant_a, **{"Idempotency-Key": key})
    again = submit(api, tenant_a, **{"Idempotency-Key": key})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = tiny_job(device="gpu", priority=9)
    assert_problem(
        submit(api, tenant_a, other, **{"Idempotency-Key": key}), 422, "idempotency_key_reused"
    )
    # An empty key is refused, naming the header, every time (it once became a stored key
    # that the next empty one collided with: a 500 found by the contract test).
    for _ in range(2):
        empty = submit(api, tenant_a, **{"Idempotency-Key": ""})
        assert empty.status_code == 422 and "idempotency" in empty.json()["errors"][0]["field"]
    # Keys are per tenant: B's use of the same key is a different job.
    b_job = submit(api, tenant_b, **{"Idempotency-Key": key}).json()
    assert b_job["id"] != first.json()["id"]


def test_concurrent_duplicates_create_one_job(api: TestClient, tenant_a: dict) -> None:
    key = uuid.uuid4().hex
    results: list[Any] = []

    def post() -> None:
        results.append(submit(api, tenant_a, **{"Idempotency-Key": key}))

    threads = [threading.Thread(target=post) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {r.status_code for r in results} == {202}
    assert len({r.json()["id"] for r in results}) == 1


def test_pagination_is_stable_under_inserts(api: TestClient, make_key: Any) -> None:
    headers = {"Authorization": f"Bearer {make_key()}"}
    created = [submit(api, headers).json()["id"] for _ in range(7)]
    page1 = api.get("/v1/jobs", params={"limit": 3}, headers=headers).json()
    # New jobs arrive between page requests: they must not shift the later pages.
    submit(api, headers)
    submit(api, headers)
    page2 = api.get(
        "/v1/jobs", params={"limit": 3, "cursor": page1["next_cursor"]}, headers=headers
    ).json()
    page3 = api.get(
        "/v1/jobs", params={"limit": 3, "cursor": page2["next_cursor"]}, headers=headers
    ).json()
    seen = [j["id"] for page in (page1, page2, page3) for j in page["items"]]
    assert seen == list(reversed(created))
    assert page3["next_cursor"] is None
    assert_problem(
        api.get("/v1/jobs", params={"cursor": "zzz"}, headers=headers), 422, "invalid_input"
    )


def test_filter_by_state_and_label(api: TestClient, make_key: Any) -> None:
    headers = {"Authorization": f"Bearer {make_key()}"}
    red = submit(api, headers, tiny_job(device="gpu", labels={"team": "red"})).json()["id"]
    blue = submit(api, headers, tiny_job(device="gpu", labels={"team": "blue"})).json()["id"]
    api.post(f"/v1/jobs/{blue}/cancel", headers=headers)
    by_label = api.get("/v1/jobs", params={"label": "team=red"}, headers=headers).json()
    assert [j["id"] for j in by_label["items"]] == [red]
    assert by_label["items"][0]["labels"] == {"team": "red"}
    cancelled = api.get("/v1/jobs", params={"state": "cancelled"}, headers=headers).json()
    assert [j["id"] for j in cancelled["items"]] == [blue]
    assert_problem(
        api.get("/v1/jobs", params={"state": "bogus"}, headers=headers), 422, "invalid_input"
    )


def test_cancel_queued_job_and_cancel_twice(api: TestClient, tenant_a: dict) -> None:
    job_id = submit(api, tenant_a).json()["id"]
    response = api.post(f"/v1/jobs/{job_id}/cancel", headers=tenant_a)
    assert response.status_code == 202 and response.json()["state"] == "cancelled"
    assert_problem(api.post(f"/v1/jobs/{job_id}/cancel", headers=tenant_a), 409, "job_finished")
    assert_problem(
        api.get(f"/v1/jobs/{job_id}/artifacts", headers=tenant_a), 409, "artifacts_not_available"
    )


def test_methods_come_from_the_recipe_schema(api: TestClient) -> None:
    from app.recipes import METHODS

    items = api.get("/v1/methods").json()["items"]
    assert [m["name"] for m in items] == list(METHODS)
    rtn = next(m for m in items if m["name"] == "rtn")
    assert rtn["params_schema"]["properties"]["bits"]["enum"] == [2, 3, 4, 8]
    assert "overrides" in rtn["params_schema"]["properties"]
    gptq = next(m for m in items if m["name"] == "gptq")
    assert {"actorder", "dampening_frac", "block_size"} <= set(gptq["params_schema"]["properties"])
    distill = next(m for m in items if m["name"] == "distill")
    assert distill["family"] == "distillation" and distill["kind"] == "distillation"
    assert {"loss", "student", "teacher", "max_seconds", "lora"} <= set(
        distill["params_schema"]["properties"]
    )


def test_health_and_readiness(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "object_store": "ok"}


SMOLLM2 = {"kind": "builtin", "name": "smollm2-135m-instruct"}


@pytest.mark.parametrize(
    ("model", "recipe", "field", "says"),
    [
        (
            None,
            [{"method": "gptq"}, {"method": "sparsegpt"}],
            "recipe[1].method",
            "prune first",
        ),
        (
            None,
            [{"method": "low_rank", "params": {"param_ratio": 0.5}}, {"method": "rtn"}],
            "recipe[1].method",
            "quantizing low-rank factors is not supported",
        ),
        (None, [{"method": "wanda", "params": {"sparsity": 1.0}}], "recipe[0].params.sparsity", ""),
        (
            None,
            [{"method": "magnitude", "params": {"sparsity": 0}}],
            "recipe[0].params.sparsity",
            "",
        ),
        (
            None,
            [{"method": "wanda", "params": {"mask_structure": "2:4", "sparsity": 0.6}}],
            "recipe[0].params",
            "contradicts",
        ),
        (
            SMOLLM2,
            [{"method": "sparsegpt", "params": {"mask_structure": "3:7"}}],
            "recipe[0].params.mask_structure",
            "does not divide",
        ),
        (
            SMOLLM2,
            [{"method": "structured", "params": {"query_heads_per_group": 3}}],
            "recipe[0].params.query_heads_per_group",
            "below the 3",
        ),
        (
            SMOLLM2,
            [
                {"method": "structured", "params": {"layers": 10}},
                {"method": "wanda", "params": {"layer_sparsity": [0.5] * 30}},
            ],
            "recipe[1].params.layer_sparsity",
            "20, got 30",
        ),
        (
            None,
            [{"method": "fp8"}, {"method": "distill"}],
            "recipe[1].method",
            "trains weight-only integer grids, not 'fp8'",
        ),
        (None, [{"method": "distill"}], "recipe[0].params.student", "first stage"),
        (
            None,
            [{"method": "magnitude"}, {"method": "distill", "params": {"loss": "kl"}}],
            "recipe[1].params.loss",
            "",
        ),
        (
            SMOLLM2,
            [
                {
                    "method": "distill",
                    "params": {"student": {"kind": "derived", "drop_layers": 30}},
                }
            ],
            "recipe[0].params.student.drop_layers",
            "below the model's 30 layers",
        ),
        (
            None,
            [
                {
                    "method": "distill",
                    "params": {
                        "student": {"kind": "model", "model": {"kind": "local", "path": "../x"}}
                    },
                }
            ],
            "recipe[0].params.student.model.model.local.path",
            "relative path",
        ),
    ],
)
def test_bad_pruning_recipes_are_refused_at_submission(
    api: TestClient, tenant_a: dict, model: dict | None, recipe: list, field: str, says: str
) -> None:
    body = tiny_job(recipe=recipe, device="gpu", **({"model": model} if model else {}))
    problem = assert_problem(submit(api, tenant_a, body), 422, "invalid_recipe")
    error = next(e for e in problem["errors"] if e["field"] == field)
    assert says in error["message"], problem["errors"]


def test_composed_recipe_is_accepted_with_defaults(api: TestClient, tenant_a: dict) -> None:
    recipe = [
        {"method": "structured", "params": {"mlp_channels": 0.25}},
        {"method": "sparsegpt", "params": {"mask_structure": "2:4"}},
        {"method": "gptq", "params": {"bits": 4, "group_size": 64}},
    ]
    response = submit(api, tenant_a, tiny_job(model=SMOLLM2, recipe=recipe, device="gpu"))
    assert response.status_code == 202, response.text
    stages = response.json()["recipe"]
    assert [s["method"] for s in stages] == ["structured", "sparsegpt", "gptq"]
    assert stages[1]["params"]["storage"] == "sparse"


def test_a_queued_job_shows_its_place_in_the_queue(
    api: TestClient, tenant_a: dict, settings: Any
) -> None:
    """Parked on the unconsumed gpu queue: jobs of any tenant served before it count, higher
    priority first, then older; the ORM read (SQLite path) gives the same number."""

    def position(job_id: str) -> int:
        return api.get(f"/v1/jobs/{job_id}", headers=tenant_a).json()["queue_position"]

    first = submit(api, tenant_a, tiny_job(device="gpu", priority=3)).json()["id"]
    second = submit(api, tenant_a, tiny_job(device="gpu", priority=3)).json()["id"]
    assert position(second) == position(first) + 1
    before = position(first)
    urgent = submit(api, tenant_a, tiny_job(device="gpu", priority=9)).json()["id"]
    assert position(first) == before + 1 and position(urgent) < position(first)
    api.post(f"/v1/jobs/{urgent}/cancel", headers=tenant_a)
    assert position(first) == before and position(urgent) is None
    with session_scope(settings.database_url) as session:
        tenant = session.scalar(select(Job.tenant_id).where(Job.id == uuid.UUID(second)))
        orm = read_job(session, tenant_id=tenant, job_id=uuid.UUID(second))
    assert orm is not None and orm.queue_position == position(second)


def test_a_default_group_size_is_fitted_to_the_built_in_model(
    api: TestClient, tenant_a: dict
) -> None:
    """AWQ's default group (128) does not divide SmolLM2-135M's 576: not asked for, so the
    largest that does is used (an explicit 128 is refused, CARELESS_INPUTS)."""
    job = submit(api, tenant_a, tiny_job(device="gpu", model=BUILTIN, recipe=[{"method": "awq"}]))
    assert job.status_code == 202, job.text
    assert job.json()["recipe"][0]["params"]["group_size"] == 64
