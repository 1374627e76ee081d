"""A search survives the loss of a candidate's worker: the candidate is retried like any job and
the search still completes with every candidate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.support.jobs import search_body
from tests.support.services import wait_until
from tests.support.stack import Stack, stack
from workers.faults import HOLD_LABEL

pytestmark = pytest.mark.integration


def children(deployment: Stack, search_id: str) -> list[dict[str, Any]]:
    page = deployment.client.get(
        "/v1/jobs", params={"parent_id": search_id}, headers=deployment.headers
    ).json()
    return page["items"]


def test_a_candidate_whose_worker_is_killed_is_retried_and_the_search_completes(
    settings: Settings, tmp_path: Path
) -> None:
    with stack(settings, tmp_path) as deployment:
        deployment.start_worker()
        # Candidates inherit the search's labels: each one's first attempt stops inside its
        # compression stage (the search itself runs no compression stage).
        body = search_body(max_candidates=2, families=["quantization"])
        # No original to compare with: two candidates are the whole fan-out (and seconds saved).
        body["evaluation"] = {**body["evaluation"], "compare_original": False}
        search = deployment.submit({**body, "labels": {HOLD_LABEL: "compression"}})
        # Both: the uniform candidate is queued before the sensitivity pass, the other after.
        kids = wait_until(
            lambda: len(found := children(deployment, search["id"])) == 2 and found,
            timeout=180,
            what="the candidates",
        )
        held = wait_until(
            lambda: next(((k["id"], h) for k in kids if (h := deployment.held(k["id"]))), None),
            timeout=120,
            what="a candidate held in its compression stage",
        )
        victim, hold = held
        deployment.worker_of(hold["pid"]).kill()
        deployment.release(victim)
        deployment.start_worker()  # the lost machine comes back
        other = next(k["id"] for k in kids if k["id"] != victim and k["kind"] == "compress")
        wait_until(lambda: deployment.held(other), timeout=120, what="the other candidate")
        deployment.release(other)
        done = deployment.wait_job(
            search["id"],
            lambda j: j["state"] in ("succeeded", "failed", "cancelled"),
            "the search to finish",
            timeout=300,
        )
        assert done["state"] == "succeeded", done["error"]
        retried = deployment.job(victim)
        assert retried["state"] == "succeeded" and retried["attempts"] == 2
        report = deployment.client.get(
            f"/v1/jobs/{search['id']}/report", headers=deployment.headers
        ).json()
        rows = report["search"]["candidates"]
        assert len(rows) == 2 and all(row["within_budget"] for row in rows)
        assert report["search"]["notes"] == []
