"""schemathesis against openapi/openapi.json: every check, every phase (examples, coverage,
fuzzing, stateful links POST → GET → events → cancel), against a real uvicorn API process with
its own Postgres database and Redis prefix. Target: 0 server errors, 0 schema violations.

Settings: tests/contract/schemathesis.toml (why 422 is an expected answer in three places);
hooks: tests/contract/hooks.py. SQUASH_SCHEMATHESIS_EXAMPLES sets the examples per operation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from app.auth import service as auth_service
from app.config import Settings
from app.db import session_scope
from tests.support.services import ROOT, private_stack_settings, running_api
from tests.support.stack import record

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("SQUASH_SCHEMATHESIS_EXAMPLES", "25"))
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.fixture
def served_api(tmp_path: Path) -> Iterator[tuple[str, str, Settings]]:
    with private_stack_settings(
        "contract",
        object_store_url=f"file://{tmp_path / 'objects'}",
        secret_key="test-signing-key",
        work_dir=tmp_path / "work",
        default_device="gpu",
        webhook_dispatch_enabled=False,
        # The host hooks.before_call gives every well-formed webhook URL (no DNS lookup).
        webhook_allowed_hosts=("hooks.example.com",),
        # schemathesis sends thousands of requests as one tenant: limits are tested elsewhere.
        rate_limit_per_minute=1e9,
        rate_limit_burst=100_000,
        submit_rate_limit_per_minute=1e9,
        submit_rate_limit_burst=100_000,
        max_active_jobs_per_tenant=0,
    ) as settings:
        with session_scope(settings.database_url) as session:
            key = auth_service.create_key(session, tenant_name="contract").secret
        with running_api(settings) as port:
            yield f"http://127.0.0.1:{port}", key, settings


def test_schemathesis_finds_no_server_errors_or_schema_violations(
    served_api: tuple[str, str, Settings], tmp_path: Path
) -> None:
    base_url, key, settings = served_api
    junit = tmp_path / "junit.xml"
    argv = [
        str(SCHEMATHESIS),
        "--config-file",
        str(ROOT / "tests" / "contract" / "schemathesis.toml"),
        "run",
        str(ROOT / "openapi" / "openapi.json"),
        "--url",
        base_url,
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {key}",
        "--max-examples",
        str(EXAMPLES),
        # One worker: CPython 3.11's ast module is not thread-safe, and hypothesis parses
        # source while describing strategies ("AST constructor recursion depth mismatch").
        "--workers",
        "1",
        "--seed",
        "20261124",
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
    ]
    refusals = tmp_path / "refusals.jsonl"  # written by hooks.refusals_name_a_cross_field_rule
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.contract.hooks",
        "PYTHONPATH": str(ROOT),
        "SQUASH_REJECTIONS_LOG": str(refusals),
    }
    run = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    output = run.stdout + run.stderr
    suites = ET.parse(junit).getroot()
    cases = suites.iter("testcase")
    failures = sum(len(case.findall("failure")) + len(case.findall("error")) for case in cases)
    generated = re.search(r"(\d+) generated", output)
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", output)
    server_errors = len(re.findall(r"ST101 Server error", output))
    violations = len(re.findall(r"ST1\d\d ", output)) - server_errors
    # The stateful links really ran: jobs created by POST were cancelled through the link.
    with session_scope(settings.database_url) as session:
        submitted, cancelled = session.execute(
            text("SELECT count(*), count(*) FILTER (WHERE state = 'cancelled') FROM jobs")
        ).one()
    figures = {
        "operations": len(list(suites.iter("testcase"))),
        "test_cases": int(generated.group(1)) if generated else None,
        "links_covered": f"{links.group(1)}/{links.group(2)}" if links else None,
        "jobs_submitted": submitted,
        "jobs_cancelled_via_links": cancelled,
        "server_errors": server_errors,
        "schema_violations": violations,
        "failures": failures,
        "examples_per_operation": EXAMPLES,
        # Schema-valid POST /v1/jobs bodies refused by a rule JSON Schema cannot state, by rule
        # (hooks.CROSS_FIELD_RULES; any other refusal fails the run).
        "valid_bodies_refused_by_cross_field_rule": dict(
            Counter(json.loads(line)["rule"] for line in refusals.read_text().splitlines())
            if refusals.exists()
            else {}
        ),
    }
    record("schemathesis", figures)
    assert run.returncode == 0 and failures == 0, output[-6000:]
    assert submitted > 0 and cancelled > 0, output[-3000:]
    assert links is not None and int(links.group(1)) > 0, output[-3000:]
