"""openapi/openapi.json is a contract a generator can use: a client generated from it by
openapi-python-client (as a user would) drives a real job through a real API and worker —
submit with typed stage models, poll, events, artifacts and the typed report — and reads every
answer into its typed models, errors included."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.services import ROOT, WorkerProcess
from tests.support.stack import fast_job

pytestmark = pytest.mark.integration

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
PACKAGE = "squash_client"


@pytest.fixture(scope="module")
def client_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    out = tmp_path_factory.mktemp("generated")
    env = {**os.environ, "PATH": f"{GENERATOR.parent}:{os.environ['PATH']}"}  # its ruff pass
    run = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(ROOT / "openapi" / "openapi.json"),
            "--meta",
            "none",
            "--output-path",
            str(out / PACKAGE),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # The generator skips what it cannot type and says so in a warning: none may be skipped.
    assert run.returncode == 0 and "Warning" not in run.stdout + run.stderr, run.stdout + run.stderr
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_a_generated_client_drives_a_job_end_to_end(
    client_package: ModuleType,
    api_url: str,
    make_key: Callable[..., str],
    worker: WorkerProcess,
    tiny_model_dir: Path,
) -> None:
    models = _module("models")
    jobs = {op: _module(f"api.jobs.{op}") for op in ("submit_job", "get_job", "list_events")}
    artifacts = {op: _module(f"api.artifacts.{op}") for op in ("list_artifacts", "get_report")}
    client = client_package.AuthenticatedClient(base_url=api_url, token=make_key())

    body = models.JobCreate.from_dict(fast_job())
    # The stage is the method's own model (the union is discriminated by `method`).
    body.recipe = [
        models.GptqStage(
            method="gptq", params=models.GptqParams(bits=models.GptqParamsBits(4), group_size=32)
        )
    ]
    submitted = jobs["submit_job"].sync(client=client, body=body)
    assert isinstance(submitted, models.JobRead), submitted

    deadline = time.monotonic() + 240
    job = submitted
    while job.state.value not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, worker.tail()
        time.sleep(0.5)
        job = jobs["get_job"].sync(submitted.id, client=client)
        assert isinstance(job, models.JobRead)
    assert job.state.value == "succeeded", (job.error, worker.tail())
    assert (
        isinstance(job.recipe[0], models.GptqStage) and job.recipe[0].params.bits == 4
    )  # an IntEnum
    assert isinstance(job.model, models.LocalModel)
    assert isinstance(job.metrics, models.CompressSummary)
    assert job.metrics.compressed_checkpoint_bytes > 0

    events = jobs["list_events"].sync(job.id, client=client)
    assert isinstance(events, models.EventPage)
    states = [event.state for event in events.items if event.state]
    assert states[0] == "queued" and states[-1] == "succeeded"

    listing = artifacts["list_artifacts"].sync(job.id, client=client)
    assert isinstance(listing, models.ArtifactList)
    assert any(item.path.endswith("model.safetensors") for item in listing.items)

    report = artifacts["get_report"].sync(job.id, client=client)
    assert isinstance(report, models.Report), report
    assert str(report.job_id) == str(job.id)
    assert report.compressed.checkpoint_bytes == job.metrics.compressed_checkpoint_bytes

    # Errors come back as the typed Problem, with its code.
    missing = jobs["get_job"].sync(uuid.uuid4(), client=client)
    assert isinstance(missing, models.Problem) and missing.code == "not_found"
    bad = models.JobCreate.from_dict(
        {**fast_job(), "recipe": [{"method": "rtn", "params": {"bits": 4, "group_size": 48}}]}
    )
    refused = jobs["submit_job"].sync(client=client, body=bad)
    assert isinstance(refused, models.Problem) and refused.status == 422
    assert refused.errors and refused.errors[0].field.startswith("recipe[0].params")
