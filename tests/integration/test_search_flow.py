"""A search job end to end on real workers: sensitivity, candidates as child jobs, the pick
republished as the search's artifact with a Pareto page; and cancel reaching the children."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import session_scope
from app.jobs import repository
from app.jobs.state import JobState
from app.search.repository import save_state
from tests.integration.test_reports import DataCells, render_in_chromium
from tests.support.jobs import search_body, wait_for_state
from tests.support.services import WorkerProcess, wait_until
from workers.search.children import insert_children

pytestmark = pytest.mark.integration


def children_of(api: TestClient, headers: dict, search_id: str) -> list[dict[str, Any]]:
    page = api.get("/v1/jobs", params={"parent_id": search_id}, headers=headers).json()
    return page["items"]


def test_search_runs_candidates_as_child_jobs_and_publishes_the_pick(
    api: TestClient, tenant_a: dict, worker: WorkerProcess, tmp_path: Path, settings: Settings
) -> None:
    search = api.post("/v1/jobs", json=search_body(), headers=tenant_a).json()
    assert search["kind"] == "search" and search["links"]["children"]
    done = wait_for_state(api, tenant_a, search["id"], timeout=600, worker=worker)
    assert done["state"] == "succeeded", done["error"]
    events = api.get(f"/v1/jobs/{search['id']}/events", headers=tenant_a).json()["items"]
    states = [e["state"] for e in events if e["kind"] == "state"]
    assert states == ["queued", "running", "waiting", "queued", "running", "succeeded"]

    # Three candidates, each an ordinary job under the search with its own report, and the
    # original's full evaluation beside them.
    kids = children_of(api, tenant_a, search["id"])
    assert {c["parent_id"] for c in kids} == {search["id"]}
    assert all(c["state"] == "succeeded" for c in kids)
    children = [c for c in kids if c["kind"] == "compress"]
    (original,) = [c for c in kids if c["kind"] == "evaluate"]
    assert len(children) == 3
    report = api.get(f"/v1/jobs/{search['id']}/report", headers=tenant_a).json()
    assert report["kind"] == "search"
    section = report["search"]
    # What needs no sensitivity score was queued before the pass: a second worker runs it
    # meanwhile. Inserted once each (a child's rows are reused, never doubled).
    with session_scope(settings.database_url) as session:
        row = repository.get_job(session, uuid.UUID(search["id"]))
        assert row is not None and row.search is not None
        early = set(row.search["sent_before_scoring"])
    (uniform,) = [r for r in section["candidates"] if r["name"].startswith("uniform")]
    assert early == {original["id"], uniform["job_id"]}
    # The search measured only the winner: the original's figures are that job's.
    assert section["original_job_id"] == original["id"]
    # (by the cache it filled, or that an earlier job on the same model had filled already)
    assert report["original"]["baseline"]["cached"] is True
    assert report["original"]["perplexity"] == pytest.approx(
        original["metrics"]["evaluated"]["perplexity"], abs=1e-4
    )
    by_id = {c["id"]: c for c in children}
    assert {c["job_id"] for c in section["candidates"]} == set(by_id)
    for row in section["candidates"]:
        summary = by_id[row["job_id"]]["metrics"]
        # Each row is what that child measured on its own files, not what was planned.
        assert row["bits_per_quantized_weight"] == summary["bits_per_quantized_weight"]
        assert row["perplexity"] == summary["compressed_perplexity"]
        assert row["bits_per_quantized_weight"] <= 4.25 + 1e-4 and row["within_budget"]
    # No tolerance given: the lowest perplexity wins; its recipe and files are the search's.
    best = min(section["candidates"], key=lambda r: r["perplexity"])
    assert section["winner"] == best["job_id"] and best["winner"] is True
    assert section["why"] == "the lowest perplexity within the budget"
    assert report["recipe"] == by_id[best["job_id"]]["recipe"]
    assert report["summary"]["bits_per_quantized_weight"] <= 4.25 + 1e-4
    assert report["evaluation"]["tokens"] == 2048 > section["candidate_evaluation_tokens"]
    assert len(section["sensitivity"]) == 14  # every decoder linear of the tiny model

    def model_digest(job_id: str) -> str:
        items = api.get(f"/v1/jobs/{job_id}/artifacts", headers=tenant_a).json()["items"]
        return {i["path"]: i["sha256"] for i in items}["model/model.safetensors"]

    assert model_digest(search["id"]) == model_digest(best["job_id"])
    # /v1/compare reads the candidates like any jobs.
    table = api.get("/v1/compare", params={"jobs": ",".join(by_id)}, headers=tenant_a).json()
    assert len(table["rows"]) == 3

    # The page: the Pareto plot and the candidate table, as Chromium renders them.
    page = api.get(f"/v1/jobs/{search['id']}/report.html", headers=tenant_a).text
    rendered = render_in_chromium(page, tmp_path, "search-report.png")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", rendered))
    pareto = rendered[rendered.index('id="pareto"') :]
    assert pareto.index("<svg") < pareto.index("</div>")
    assert "bits per quantized weight (read from the files)" in text and "the pick" in text
    cells = DataCells()
    cells.feed(rendered)
    for i, row in enumerate(section["candidates"]):
        assert json.loads(cells.cells[f"search/candidates/{i}/perplexity"]) == row["perplexity"]


def test_a_gguf_search_chooses_among_llama_cpp_presets(
    api: TestClient, tenant_a: dict, worker: WorkerProcess, tiny_smol_dir: Path
) -> None:
    """target_runtime gguf: the candidates are `gguf` stages (llama.cpp picks each tensor's
    type in its preset), no sensitivity pass, each file's bits within the budget."""
    body = search_body(budget={"max_bits_per_weight": 9.0, "target_runtime": "gguf"})
    body["model"] = {"kind": "local", "path": tiny_smol_dir.name}
    # One candidate, no original's evaluation child: the gguf path at its cheapest in CI (the
    # presets' order is the unit tests'; a GGUF load costs seconds per job).
    body["search"] |= {"families": ["quantization"], "max_candidates": 1}
    body["evaluation"] |= {"compare_original": False}
    search = api.post("/v1/jobs", json=body, headers=tenant_a).json()
    done = wait_for_state(api, tenant_a, search["id"], timeout=600, worker=worker)
    assert done["state"] == "succeeded", done["error"]
    report = api.get(f"/v1/jobs/{search['id']}/report", headers=tenant_a).json()
    section = report["search"]
    assert [r["name"] for r in section["candidates"]] == ["gguf Q8_0"]
    assert section["sensitivity"] == []
    for row in section["candidates"]:
        assert row["state"] == "succeeded" and row["bits_per_quantized_weight"] <= 9.0
    assert report["recipe"][-1]["method"] == "gguf"
    items = api.get(f"/v1/jobs/{search['id']}/artifacts", headers=tenant_a).json()["items"]
    assert any(i["path"].endswith(".gguf") for i in items)
    page = api.get(f"/v1/jobs/{search['id']}/report.html", headers=tenant_a).text
    assert "No sensitivity pass" in page and 'id="pareto"' in page


def test_cancelling_a_search_cancels_its_candidates(
    api: TestClient, tenant_a: dict, worker: WorkerProcess
) -> None:
    body = search_body(max_candidates=2, families=["quantization"])
    body["evaluation"] = {**body["evaluation"], "stride": 1}  # slow candidates: ~30 s each
    search = api.post("/v1/jobs", json=body, headers=tenant_a).json()
    wait_for_state(api, tenant_a, search["id"], {"waiting", "failed"}, worker=worker)
    cancelled = api.post(f"/v1/jobs/{search['id']}/cancel", headers=tenant_a).json()
    assert cancelled["state"] == "cancelled"
    children = children_of(api, tenant_a, search["id"])
    assert sorted(c["kind"] for c in children) == ["compress", "compress", "evaluate"]

    def all_ended() -> list[dict[str, Any]] | None:
        now = children_of(api, tenant_a, search["id"])
        return now if all(c["state"] in {"cancelled", "succeeded", "failed"} for c in now) else None

    ended = wait_until(all_ended, timeout=120, what="the candidates to end")
    assert [c["state"] for c in ended] == ["cancelled"] * 3
    # The search stays cancelled: the background loop does not wake it.
    assert api.get(f"/v1/jobs/{search['id']}", headers=tenant_a).json()["state"] == "cancelled"


def test_a_search_past_its_time_budget_cancels_what_runs_and_wakes(
    api: TestClient, tenant_a: dict, settings: Settings
) -> None:
    """The API's reaper round, on rows: a waiting search whose deadline passed has its queued
    candidate cancelled and goes back to the queue to pick among those that finished."""
    body = {**search_body(), "device": "gpu"}  # parked: no worker consumes the gpu queue here
    search = api.post("/v1/jobs", json=body, headers=tenant_a).json()
    search_id = uuid.UUID(search["id"])
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    with session_scope(settings.database_url) as session:
        parent = repository.get_job(session, search_id)
        assert parent is not None
        kids = []
        for seed, state in enumerate(("succeeded", "queued")):
            spec = {**parent.spec, "kind": "compress", "search": None, "seed": seed}
            (kid_id,) = insert_children(session, parent, [spec], settings).ids.values()
            kid = repository.get_job(session, kid_id)
            assert kid is not None
            kid.state = state
            kids.append(str(kid_id))
        assert repository.transition(
            session, search_id, JobState.RUNNING, sources=[JobState.QUEUED], attempts=1
        )
        assert repository.transition(
            session, search_id, JobState.WAITING, search={"deadline": past, "candidates": []}
        )
    woken = wait_for_state(api, tenant_a, search["id"], {"queued"}, timeout=30)
    assert woken["attempts"] == 0  # the second attempt gets the whole retry budget
    states = {c["id"]: c["state"] for c in children_of(api, tenant_a, search["id"])}
    assert states == {kids[0]: "succeeded", kids[1]: "cancelled"}
    events = api.get(f"/v1/jobs/{search['id']}/events", headers=tenant_a).json()["items"]
    assert events[-1]["message"].startswith("time budget spent: 1 of 2 candidates cancelled")
    api.post(f"/v1/jobs/{search['id']}/cancel", headers=tenant_a)


def test_a_waiting_search_with_no_readable_deadline_blocks_no_other_search(
    api: TestClient, tenant_a: dict, settings: Settings
) -> None:
    """A waiting row without a readable deadline (a bad write, a hand edit) stops waiting, and
    the searches after it in the round are still woken: the round used to raise on it."""
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    ids = []
    for state in ({"candidates": []}, {"deadline": "soon", "candidates": []}, {"deadline": past}):
        body = {**search_body(), "device": "gpu"}  # parked: no worker consumes the gpu queue
        search_id = api.post("/v1/jobs", json=body, headers=tenant_a).json()["id"]
        with session_scope(settings.database_url) as session:
            assert repository.transition(
                session, uuid.UUID(search_id), JobState.RUNNING, sources=[JobState.QUEUED]
            )
            assert repository.transition(
                session, uuid.UUID(search_id), JobState.WAITING, search=state
            )
        ids.append(search_id)
    for search_id in ids:  # the API's reaper round wakes all three
        wait_for_state(api, tenant_a, search_id, {"queued"}, timeout=30)
        api.post(f"/v1/jobs/{search_id}/cancel", headers=tenant_a)


def test_children_of_a_search_that_ended_are_cancelled(
    api: TestClient, tenant_a: dict, settings: Settings
) -> None:
    """A child sent before the sensitivity pass outlives a search that then failed: the API's
    reaper round cancels it (nobody would read what it measures)."""
    body = {**search_body(), "device": "gpu"}  # parked: no worker consumes the gpu queue here
    search = api.post("/v1/jobs", json=body, headers=tenant_a).json()
    with session_scope(settings.database_url) as session:
        parent = repository.get_job(session, uuid.UUID(search["id"]))
        assert parent is not None
        spec = {**parent.spec, "kind": "compress", "search": None}
        (kid_id,) = insert_children(session, parent, [spec], settings).ids.values()
        assert repository.transition(
            session, parent.id, JobState.FAILED, sources=[JobState.QUEUED], message="failed"
        )
    wait_until(
        lambda: api.get(f"/v1/jobs/{kid_id}", headers=tenant_a).json()["state"] == "cancelled",
        timeout=30,
    )
    events = api.get(f"/v1/jobs/{kid_id}/events", headers=tenant_a).json()["items"]
    assert events[-1]["message"] == "cancelled: its search ended"


def test_a_retried_first_attempt_keeps_the_deadline_and_its_early_children(
    api: TestClient, tenant_a: dict, settings: Settings
) -> None:
    """The first attempt records its deadline and early children fenced by its lease; a retry
    reads the same deadline and reuses the children (matched by spec), inserting none twice."""
    from workers.search.start import search_deadline

    body = {**search_body(), "device": "gpu"}  # parked: no worker consumes the gpu queue here
    search = api.post("/v1/jobs", json=body, headers=tenant_a).json()
    search_id = uuid.UUID(search["id"])
    fresh = search_deadline(settings, search_id, 3600)
    assert abs((fresh - datetime.now(UTC)).total_seconds() - 3600) < 60
    with session_scope(settings.database_url) as session:
        generation = repository.claim(session, search_id, worker_id="w", lease_ttl_s=600)
        assert generation is not None
        assert save_state(session, search_id, generation, {"deadline": fresh.isoformat()})
        assert not save_state(session, search_id, generation + 1, {"deadline": "stolen"})
        parent = repository.get_job(session, search_id)
        assert parent is not None
        spec = {**parent.spec, "kind": "compress", "search": None}
        first = insert_children(session, parent, [spec], settings)
        again = insert_children(session, parent, [spec], settings)
        assert again.ids == first.ids and len(first.to_send) == 1 and again.to_send == []
    assert search_deadline(settings, search_id, 60) == fresh
    api.post(f"/v1/jobs/{search['id']}/cancel", headers=tenant_a)


def test_search_requests_are_checked_at_submission(api: TestClient, tenant_a: dict) -> None:
    """422 naming the field, before any work: a task tolerance on a task the job does not run,
    a budget too loose to bound anything, a search without its budget."""
    drop = {"task": "hellaswag", "max_drop": 0.02}
    body = search_body(quality={"max_accuracy_drop": drop})
    refused = api.post("/v1/jobs", json=body, headers=tenant_a)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "search.quality.max_accuracy_drop.task"
    body = search_body()
    body["search"]["budget"] = {"target_runtime": "vllm"}
    refused = api.post("/v1/jobs", json=body, headers=tenant_a)
    assert refused.status_code == 422 and "search.budget" in refused.text
    body = search_body()
    del body["search"]
    refused = api.post("/v1/jobs", json=body, headers=tenant_a)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "search"
