"""The CLI against a real API process: `status` reads as a summary; every error ends with one
message saying what went wrong and what to do (exit 1; 2 for usage), never a traceback; the key
comes from --api-key, SQUASH_API_KEY or the file `squash embedded` wrote."""

from __future__ import annotations

import json
import uuid
import webbrowser
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.cli.embedded import migrate
from app.cli.main import cli
from app.config import get_settings
from tests.support.services import WorkerProcess, free_port
from tests.support.stack import fast_job

pytestmark = pytest.mark.integration


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(cli, list(args), env={"SQUASH_API_KEY": None, **(env or {})})
    # A ClickException/UsageError exits through SystemExit; anything else is a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def test_api_errors_say_what_to_do(
    api_url: str, make_key: Callable[..., str], tmp_path: Path
) -> None:
    key = make_key()
    missing = str(uuid.uuid4())

    unknown = run("status", missing, "--url", api_url, "--api-key", key)
    assert unknown.exit_code == 1
    assert "HTTP 404 not_found" in unknown.output and "check the id" in unknown.output

    refused = run("status", missing, "--url", api_url, "--api-key", "sq_wrong")
    assert refused.exit_code == 1
    assert "HTTP 401" in refused.output and "SQUASH_API_KEY" in refused.output

    body = tmp_path / "job.yaml"
    body.write_text(
        "model: {kind: builtin, name: smollm2-135m-instruct}\n"
        "recipe: [{method: rtn, params: {bits: 99}}]\n"
    )
    invalid = run("submit", str(body), "--url", api_url, env={"SQUASH_API_KEY": key})
    assert invalid.exit_code == 1
    assert "HTTP 422" in invalid.output and "bits" in invalid.output, invalid.output

    nobody = f"http://127.0.0.1:{free_port()}"
    down = run("status", missing, "--url", nobody, "--api-key", key)
    assert down.exit_code == 1
    assert f"cannot reach the Squash API at {nobody}" in down.output
    assert "squash embedded" in down.output


def test_the_key_comes_from_the_embedded_stacks_file(
    api_url: str, make_key: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    no_key = run("status", str(uuid.uuid4()), "--url", api_url)
    assert no_key.exit_code == 2 and "SQUASH_API_KEY" in no_key.output

    (tmp_path / ".squash").mkdir()
    (tmp_path / ".squash" / "api-key").write_text(make_key() + "\n")
    found = run("status", str(uuid.uuid4()), "--url", api_url)
    assert found.exit_code == 1 and "HTTP 404" in found.output  # authenticated: the job is unknown


def test_status_reads_as_a_summary(
    api_url: str, make_key: Callable[..., str], tmp_path: Path
) -> None:
    env = {"SQUASH_API_KEY": make_key()}
    body = tmp_path / "job.yaml"
    # Parked on the gpu queue, which no worker reads in the tests.
    body.write_text(
        "model: {kind: builtin, name: smollm2-135m-instruct}\n"
        "recipe: [{method: rtn, params: {bits: 4, group_size: 64}}]\n"
        "device: gpu\n"
    )
    submitted = run("submit", str(body), "--url", api_url, env=env)
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.output.strip()

    summary = run("status", job_id, "--url", api_url, env=env)
    assert summary.exit_code == 0
    lines = summary.output.splitlines()
    assert lines[0].startswith(f"job {job_id}  queued  (attempt 0 of ")
    (recipe,) = [line for line in lines if line.startswith("  recipe    rtn(")]
    assert "bits=4" in recipe and "group_size=64" in recipe  # with the defaults it resolved
    assert len(lines) < 15  # not the whole document

    whole = run("status", job_id, "--json", "--url", api_url, env=env)
    assert json.loads(whole.output)["id"] == job_id

    assert run("cancel", job_id, "--url", api_url, env=env).output.strip() == "cancelled"
    again = run("cancel", job_id, "--url", api_url, env=env)
    assert again.exit_code == 1 and "HTTP 409 job_finished" in again.output


def test_submit_wait_then_list_events_and_download(
    api_url: str,
    make_key: Callable[..., str],
    worker: WorkerProcess,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real job through the CLI: `--wait` logs a line per change (not a TTY here), then the
    job is listed, its history shown, its artifacts downloaded and checked, and its report
    page opened."""
    env = {"SQUASH_API_KEY": make_key()}
    body = tmp_path / "job.json"
    body.write_text(json.dumps(fast_job()))
    done = run("submit", str(body), "--wait", "--url", api_url, env=env)
    assert done.exit_code == 0, done.output + worker.tail()
    assert "\r" not in done.output
    job_id = done.output.splitlines()[0]
    assert f"job {job_id} succeeded" in done.output
    assert " bytes" not in done.output and "{" not in done.output  # sizes and values read as such

    listed = run("list", "--state", "succeeded", "--url", api_url, env=env)
    assert listed.output.startswith(f"{job_id}  succeeded")
    history = run("events", job_id, "--url", api_url, env=env)
    assert "-> running" in history.output and "-> succeeded" in history.output
    followed = run("events", job_id, "--follow", "--url", api_url, env=env)
    assert followed.output == history.output  # an ended job: all of it, once, then it returns

    table = run("compare", job_id, "--url", api_url, env=env)
    assert table.exit_code == 0, table.output
    header, original, row = table.output.splitlines()
    assert header.startswith("job") and "size_bytes" in header
    # The row names its recipe with the parameters that set it, frontier marked.
    assert original.startswith("original")
    assert row.startswith(f"{job_id[:8]}   rtn(bits=4, group_size=32)*"), row

    target = tmp_path / "artifact"
    fetched = run("download", job_id, "--to", str(target), "--url", api_url, env=env)
    assert fetched.exit_code == 0, fetched.output
    report = json.loads((target / "report.json").read_text())
    assert report["job_id"] == job_id
    files = [p for p in target.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files)
    assert not [p for p in files if p.name.endswith(".partial")]

    # `report --open`: the page saved, then handed to the browser as a file:// URL.
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    page = tmp_path / "page.html"
    shown = run("report", job_id, "--open", "--to", str(page), "--url", api_url, env=env)
    assert shown.exit_code == 0, shown.output
    assert opened == [page.resolve().as_uri()] and job_id in page.read_text()


def test_keys_go_to_the_embedded_stacks_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`squash keys` finds ./.squash's database (or --data-dir's) without DATABASE_URL, and a
    database it cannot reach is one message."""
    stack_dir = tmp_path / ".squash"
    stack_dir.mkdir()
    migrate(f"sqlite:///{stack_dir / 'squash.db'}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)

    created = run("keys", "create", "--tenant", "laptop")
    assert created.exit_code == 0, created.output
    assert "secret (shown once): sq_" in created.output
    listed = run("keys", "list", "--data-dir", str(stack_dir))
    assert "laptop" in listed.output and "active" in listed.output

    nowhere = run("keys", "list", "--data-dir", str(tmp_path / "none"))
    assert nowhere.exit_code == 1 and "no embedded stack in" in nowhere.output

    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    get_settings.cache_clear()
    try:
        down = run("keys", "list")
    finally:
        get_settings.cache_clear()
    assert down.exit_code == 1 and "cannot reach the key database" in down.output
