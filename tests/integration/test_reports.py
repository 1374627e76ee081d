"""Evaluation reports on the real stack: every evaluation of a job, the baseline cache, a
failing evaluation that keeps the artifact, report.html in headless Chromium, /v1/compare and
evaluate jobs (real Postgres, Redis, Celery worker process, moto S3 over HTTP)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.reports.schema import Report
from tests.support.fixtures import BUCKET
from tests.support.jobs import TINY_EFFICIENCY, tiny_job, wait_for_state
from tests.support.reports import typed_value, validate_against_published_schema
from tests.support.services import WorkerProcess

pytestmark = pytest.mark.integration
ARTIFACTS_DIR = Path(os.environ.get("SQUASH_TEST_ARTIFACTS", "test-artifacts"))


def submit(api: TestClient, headers: dict, body: dict[str, Any], worker: WorkerProcess) -> dict:
    job = api.post("/v1/jobs", json=body, headers=headers)
    assert job.status_code == 202, job.text
    done = wait_for_state(api, headers, job.json()["id"], worker=worker, timeout=300)
    assert done["state"] == "succeeded", (done["error"], worker.tail())
    return done


def report_of(api: TestClient, headers: dict, job_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/jobs/{job_id}/report", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def with_tasks(tasks: list[dict[str, Any]], **evaluation: Any) -> dict[str, Any]:
    body = tiny_job()
    body["evaluation"] |= {"tasks": tasks, "efficiency": TINY_EFFICIENCY, **evaluation}
    return body


@pytest.fixture(scope="module")
def task_data(settings: Settings) -> dict[str, str]:
    """A user's multiple-choice JSONL in the bucket (own field names), and a broken one."""
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    docs = [
        {
            "q": f"def f{i}(x): return x +",
            "options": [f" {i}", " banana", " )(", " class"],
            "gold": 0,
        }
        for i in range(12)
    ]
    s3.put_object(
        Bucket=BUCKET,
        Key="tasks/mine.jsonl",
        Body="\n".join(json.dumps(d) for d in docs).encode(),
    )
    s3.put_object(Bucket=BUCKET, Key="tasks/broken.jsonl", Body=b'{"q": "no options here"}\n')
    counting = [{"q": f"{i}, {i + 1}, {i + 2},", "answer": f" {i + 3}"} for i in range(6)]
    s3.put_object(
        Bucket=BUCKET,
        Key="tasks/counting.jsonl",
        Body="\n".join(json.dumps(d) for d in counting).encode(),
    )
    return {
        "good": f"s3://{BUCKET}/tasks/mine.jsonl",
        "broken": f"s3://{BUCKET}/tasks/broken.jsonl",
        "gen": f"s3://{BUCKET}/tasks/counting.jsonl",
    }


MY_TASK = {
    "type": "multiple_choice",
    "context_field": "q",
    "choices_field": "options",
    "label_field": "gold",
}


class DataCells(HTMLParser):
    """Every element's data-key/data-value pair."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if "data-key" in found:
            self.cells[found["data-key"] or ""] = found.get("data-value") or ""
        for name in ("src", "href"):
            if found.get(name):
                self.external.append(found[name] or "")


def test_report_measures_everything_and_a_failed_evaluation_keeps_the_artifact(
    api: TestClient,
    tenant_a: dict,
    worker: WorkerProcess,
    task_data: dict[str, str],
    tmp_path: Path,
) -> None:
    tasks = [
        {"name": "mine", "data": task_data["good"], **MY_TASK},
        {"name": "broken", "data": task_data["broken"], **MY_TASK},
        {"name": "squash_python_docs_cloze", "limit": 10},
        {
            "name": "counting",
            "data": task_data["gen"],
            "type": "generate",
            "context_field": "q",
            "target_field": "answer",
        },
        {"name": "hellaswag", "limit": 5},
    ]
    job = submit(api, tenant_a, with_tasks(tasks), worker)
    report = report_of(api, tenant_a, job["id"])
    assert report["version"] == 3 and report["kind"] == "compress"
    # What the worker wrote is what the published schema describes, and the typed models
    # read it back unchanged.
    validate_against_published_schema(report)
    typed = Report.model_validate(report)
    assert typed.to_json() == report
    # Measured peak memory of every phase, beside its time (loading the model raises RSS).
    phases = report["memory"]["phases"]
    assert (
        set(phases)
        == {"resolve", "evaluate_original", "stages", "save", "load_check", "evaluate_compressed"}
        <= set(report["timings_s"])
    )
    assert phases["resolve"]["peak_above_start_bytes"] > 0
    assert all(p["peak_rss_bytes"] >= report["memory"]["start_rss_bytes"] for p in phases.values())

    # The broken task failed, named with its line and field; the job still succeeded with its
    # model artifact, and the other tasks ran on both models.
    status = report["evaluations"]
    assert status["compressed.task:broken"]["status"] == "failed"
    assert "line 1" in status["compressed.task:broken"]["error"]
    assert "options" in status["compressed.task:broken"]["error"]
    assert any("task:broken failed" in w for w in report["warnings"])
    listing = api.get(f"/v1/jobs/{job['id']}/artifacts", headers=tenant_a).json()
    paths = {i["path"] for i in listing["items"]}
    assert {"model/model.safetensors", "report.json", "report.html"} <= paths
    for side in ("original", "compressed"):
        mine = report[side]["tasks"]["mine"]
        assert mine["samples"] == 12 and 0 <= mine["metrics"]["acc"] <= 1
        assert report[side]["tasks"]["squash_python_docs_cloze"]["samples"] == 10
        counting = report[side]["tasks"]["counting"]
        assert counting["samples"] == 6 and 0 <= counting["metrics"]["exact_match"] <= 1
        assert "broken" not in report[side]["tasks"]
    # A standard task needs the hub; this worker is offline and says so (at once, no retries).
    assert "offline" in status["compressed.task:hellaswag"]["error"]

    # Serving efficiency: medians and p90 over the requested repetitions, in a fresh process.
    for side in ("original", "compressed"):
        efficiency = report[side]["efficiency"]
        assert efficiency["ttft_ms"]["runs"] == efficiency["repetitions"] == 2
        assert 0 < efficiency["ttft_ms"]["median"] <= efficiency["ttft_ms"]["p90"]
        assert efficiency["decode_tokens_per_second_b1"] > 0
        assert efficiency["throughput_tokens_per_second"] > 0
        assert efficiency["peak_memory_bytes"] > 0 and efficiency["device"] == "cpu"

    # Sizes: RTN 4-bit keeps the embedding and norms in 16-bit, and the report says so.
    compressed = report["compressed"]
    assert compressed["unquantized_tensors"]["parameters"] > 0
    assert any("embed" in t["name"] for t in compressed["unquantized_tensors"]["largest"])
    expected_bits = 8 * compressed["checkpoint_bytes"] / compressed["parameters"]
    assert compressed["effective_bits_per_parameter"] == pytest.approx(expected_bits, rel=1e-3)

    # Per-layer error: every linear layer compared (nothing removed by RTN), all moved a little.
    layers = report["layer_error"]
    assert layers["counts"] == {"ok": len(layers["layers"]), "removed": 0, "reshaped": 0}
    errors = [row["relative_error"] for row in layers["layers"]]
    assert all(0 < e < 0.5 for e in errors)
    top = [row["relative_error"] for row in layers["most_damaged"]]
    assert top == sorted(errors, reverse=True)[: len(top)]
    assert [g["prompt"] for g in report["generations"]] == ["def f(x):"]

    # report.html: served with a CSP that forbids loading anything; every figure equals the
    # report's, and Chromium renders it headless without a network.
    page = api.get(f"/v1/jobs/{job['id']}/report.html", headers=tenant_a)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    parser = DataCells()
    parser.feed(page.text)
    assert parser.external == [] and "<script" not in page.text
    assert len(parser.cells) >= 20
    for key, value in parser.cells.items():
        # Every figure on the page is a typed field of the report, equal to report.json's.
        assert json.loads(value) == typed_value(typed, key), key
    for key in ("compressed/perplexity", "original/efficiency/ttft_ms/median"):
        assert key in parser.cells
    rendered = render_in_chromium(page.text, tmp_path)
    shown = DataCells()
    shown.feed(rendered)
    assert shown.cells == parser.cells
    # What the page explains, as Chromium built it: the recipe with its parameters, the change
    # column marking the perplexity regression, the load check, the per-layer chart with
    # labelled axes and a sentence naming the most damaged layer type, the original on the
    # scatter, timings against the estimate, the model files with digests, library versions.
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", rendered))
    assert "bits=4" in text and "group_size=32" in text
    row = re.search(r"Perplexity [\d.,]+ [\d.,]+ ([+-][\d.]+) %( ▲ worse| ▼ better)?", text)
    assert row, text[:3000]
    change = 100 * (report["compressed"]["perplexity"] / report["original"]["perplexity"] - 1)
    assert float(row.group(1)) == pytest.approx(change, abs=0.051)
    assert (row.group(2) or "").strip() == (
        "▲ worse" if change > 1 else "▼ better" if change < -1 else ""
    )
    assert "Load check" in text and "loads" in text
    assert "decoder layer (depth)" in text and "relative output error" in text
    kinds = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert re.search(rf"Most damaged: ({'|'.join(kinds)}), \d+ of the \d+ layers", text)
    assert "the original (16-bit)" in text and "size on disk (MB, log scale)" in text
    assert "estimated before the work" in text and "Measured" in text
    digest = {i["path"]: i["sha256"] for i in listing["items"]}["model/model.safetensors"]
    assert digest in text and "transformers" in text


def render_in_chromium(page: str, tmp_path: Path, shot_name: str = "report.png") -> str:
    """Screenshot (kept in ARTIFACTS_DIR) and the DOM as Chromium built it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is installed by `make install`"
    source = tmp_path / "report.html"
    source.write_text(page)
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ]
    shot = ARTIFACTS_DIR / shot_name
    subprocess.run(
        [
            chromium,
            *flags,
            f"--screenshot={shot.resolve()}",
            "--window-size=1200,2400",
            source.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", source.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return dom.stdout


def test_baseline_cache_compare_and_evaluate_jobs(
    api: TestClient, tenant_a: dict, tenant_b: dict, worker: WorkerProcess
) -> None:
    evaluation = {"tasks": [{"name": "squash_python_docs_mc", "limit": 8}], "max_tokens": 1024}
    first_body = with_tasks(**evaluation)
    first = submit(api, tenant_a, first_body, worker)
    second_body = with_tasks(**evaluation)
    second_body["recipe"] = [{"method": "rtn", "params": {"bits": 8}}]
    second = submit(api, tenant_a, second_body, worker)
    one, two = report_of(api, tenant_a, first["id"]), report_of(api, tenant_a, second["id"])

    # The second job on the same model and evaluation reused the first one's original metrics.
    assert two["original"]["baseline"]["cached"] is True
    assert two["original"]["baseline"]["computed_by_job"] == first["id"]
    for key in ("perplexity", "tasks", "efficiency", "generations"):
        assert two["original"][key] == one["original"][key]
    assert "evaluate_original" in two["timings_s"]
    assert two["timings_s"]["evaluate_original"] < one["timings_s"]["evaluate_original"] / 2
    events = api.get(f"/v1/jobs/{second['id']}/events", headers=tenant_a).json()["items"]
    assert any("baseline cache" in e["message"] for e in events)

    # An evaluate job measures the model as it is: no recipe, no model files, a report.
    body = with_tasks(**evaluation)
    body |= {"kind": "evaluate", "recipe": []}
    evaluated = submit(api, tenant_a, body, worker)
    report = report_of(api, tenant_a, evaluated["id"])
    assert report["kind"] == "evaluate" and report["stages"] == []
    validate_against_published_schema(report)
    assert report["model_metrics"]["perplexity"] == one["original"]["perplexity"]
    listing = api.get(f"/v1/jobs/{evaluated['id']}/artifacts", headers=tenant_a).json()
    assert {i["path"] for i in listing["items"]} == {"recipe.json", "report.json", "report.html"}
    assert (
        "model_metrics/perplexity"
        in api.get(f"/v1/jobs/{evaluated['id']}/report.html", headers=tenant_a).text
    )

    # /v1/compare: one row per job in order, the figures of each job's summary, and the Pareto
    # frontier marked; the 8-bit job is bigger than the 4-bit one.
    ids = [first["id"], second["id"], evaluated["id"]]
    table = api.get("/v1/compare", params={"jobs": ",".join(ids)}, headers=tenant_a)
    assert table.status_code == 200, table.text
    table = table.json()
    assert [row["job_id"] for row in table["rows"]] == ids
    rows = {row["job_id"]: row for row in table["rows"]}
    assert rows[first["id"]]["metrics"]["perplexity"] == one["summary"]["compressed_perplexity"]
    assert rows[first["id"]]["metrics"]["size_bytes"] < rows[second["id"]]["metrics"]["size_bytes"]
    assert rows[evaluated["id"]]["kind"] == "evaluate"
    assert rows[first["id"]]["metrics"]["squash_python_docs_mc.acc"] == pytest.approx(
        one["compressed"]["tasks"]["squash_python_docs_mc"]["metrics"]["acc"], abs=1e-4
    )
    assert table["original"]["perplexity"] == round(one["original"]["perplexity"], 4)
    smallest = min(table["rows"], key=lambda r: r["metrics"]["size_bytes"])
    assert smallest["on_pareto_frontier"] is True
    assert "size_bytes" in table["columns"]
    # Rows show their recipe in full: two RTN jobs at different bits read differently.
    assert rows[second["id"]]["recipe"][0]["params"]["bits"] == 8
    assert rows[second["id"]]["recipe_label"] == "rtn(bits=8, group_size=null)"
    assert rows[first["id"]]["recipe_label"] == "rtn(bits=4, group_size=32)"
    assert len(table["series"]) == 1 and table["warnings"] == []

    # A job measured on other evaluation settings is a series of its own, with a warning and
    # its own frontier: its perplexity is on another scale.
    other_body = tiny_job()
    other_body["evaluation"] |= {"max_tokens": 512, "efficiency": {"enabled": False}}
    unlike = submit(api, tenant_a, other_body, worker)
    mixed = api.get(
        "/v1/compare", params={"jobs": f"{first['id']},{unlike['id']}"}, headers=tenant_a
    ).json()
    assert [row["series"] for row in mixed["rows"]] == [0, 1]
    assert [s["measured_on"]["tokens"] for s in mixed["series"]] == [1024, 512]
    assert "do not compare" in mixed["warnings"][0]
    assert all(row["on_pareto_frontier"] for row in mixed["rows"])  # alone in its series

    # Errors: another tenant's job is not found, a bad id names the field, an evaluate job
    # with a recipe is refused.
    other = api.get("/v1/compare", params={"jobs": first["id"]}, headers=tenant_b)
    assert other.status_code == 404
    bad = api.get("/v1/compare", params={"jobs": "not-a-uuid"}, headers=tenant_a)
    # The schema's pattern refuses it, naming the value: jobs[0], in words, not as a regex.
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "jobs[0]"
    assert "'not-a-uuid' is not a list of job ids" in bad.json()["detail"]
    assert "[0-9a-fA-F]" not in bad.json()["detail"]
    # A job that ended without succeeding says so (not "not finished").
    parked = api.post("/v1/jobs", json={**first_body, "device": "gpu"}, headers=tenant_a).json()
    api.post(f"/v1/jobs/{parked['id']}/cancel", headers=tenant_a)
    ended = api.get("/v1/compare", params={"jobs": parked["id"]}, headers=tenant_a)
    assert ended.status_code == 409 and ended.json()["code"] == "job_not_succeeded"
    refused = api.post(
        "/v1/jobs",
        json={**first_body, "kind": "evaluate"},
        headers=tenant_a,
    )
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "recipe"
