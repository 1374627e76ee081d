"""`squash` command line: run the service's processes, manage keys, and talk to the HTTP API."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import webbrowser
from pathlib import Path
from typing import Any

import click

from app.cli.client import CliError, SquashClient
from app.cli.embedded import EmbeddedStack, migrate, worker_command
from app.cli.keys import EMBEDDED_DATA_DIR, keys
from app.cli.output import (
    echo_events,
    human_bytes,
    job_summary,
    print_outcome,
    progress_printer,
    read_job_file,
    table_cell,
)

DEMO_JOB: dict[str, Any] = {
    "model": {"kind": "builtin", "name": "smollm2-135m-instruct"},
    "recipe": [{"method": "rtn", "params": {"bits": 4, "group_size": 64, "symmetric": True}}],
    "device": "cpu",
    # Every evaluation default: what a user's first job measures, in about three minutes here.
    "labels": {"source": "demo"},
}


class _Commands(click.Group):
    """API and connection errors end a command with what went wrong and what to do (exit 1),
    never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CliError, TimeoutError) as exc:
            if sys.stderr.isatty():  # a terminal: the message set off in red, rich-rendered
                from rich.console import Console
                from rich.markup import escape

                Console(stderr=True).print(f"[bold red]Error:[/] {escape(str(exc))}")
                ctx.exit(1)
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Commands)
def cli() -> None:
    """Squash: LLM compression as a service."""


# -- running the service ------------------------------------------------------------------------
@cli.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=1, show_default=True, help="uvicorn worker processes")
def serve(host: str, port: int, workers: int) -> None:
    """Run the HTTP API."""
    import uvicorn

    uvicorn.run("app.main:app_factory", factory=True, host=host, port=port, workers=workers)


@cli.command()
@click.option(
    "--queues",
    default="gpu,cpu",
    show_default=True,
    help="comma-separated pool queues (WORKER_POOLS), e.g. gpu-24g",
)
@click.option("--concurrency", default=1, show_default=True, help="jobs at once (one per GPU)")
def worker(queues: str, concurrency: int) -> None:
    """Run a Celery worker (one job per process, fresh process per job)."""
    argv = worker_command(queues.split(","), concurrency)
    os.execvp(argv[0], argv)


@cli.command("migrate")
def migrate_cmd() -> None:
    """Apply database migrations (alembic upgrade head)."""
    from app.config import get_settings

    migrate(get_settings().database_url)
    click.echo("database at head")


@cli.command()
@click.option("--data-dir", default=".squash", show_default=True, type=click.Path(path_type=Path))
@click.option("--port", default=8000, show_default=True)
def embedded(data_dir: Path, port: int) -> None:
    """Run API + worker on SQLite, a filesystem broker and a local object store."""
    stack = EmbeddedStack(data_dir, port)
    key = stack.start()
    click.echo(f"Squash is up at {stack.url}\nAPI key: {key}\n(logs in {stack.log_dir})")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while all(p.poll() is None for p in stack.processes):
            time.sleep(1)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        stack.stop()


@cli.command()
@click.option("--data-dir", default=".squash", show_default=True, type=click.Path(path_type=Path))
@click.option("--port", default=8765, show_default=True)
def demo(data_dir: Path, port: int) -> None:
    """Start the embedded stack, compress SmolLM2-135M with RTN INT4, print the report."""
    stack = EmbeddedStack(data_dir, port)
    key = stack.start()
    try:
        client = SquashClient(stack.url, key)
        job = client.submit(DEMO_JOB)
        click.echo(f"submitted job {job['id']} ({json.dumps(DEMO_JOB['recipe'])})")
        job = client.wait(job["id"], on_update=progress_printer())
        click.echo("")
        print_outcome(client, job)
        if job["state"] != "succeeded":
            raise SystemExit(1)
        page = data_dir / "demo-report.html"
        page.write_bytes(client.report_page(job["id"]))
        click.echo(f"report page: {page.resolve()} (one self-contained file: open it)")
    finally:
        stack.stop()


# -- keys (operator commands: they write the database directly; app/cli/keys.py) ---------------
cli.add_command(keys)


# -- API client commands ------------------------------------------------------------------------
url_option = click.option("--url", envvar="SQUASH_URL", default="http://127.0.0.1:8000")
EMBEDDED_KEY_FILE = EMBEDDED_DATA_DIR / "api-key"  # what `squash embedded` writes


def _api_key(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """--api-key, else SQUASH_API_KEY, else the key `squash embedded` wrote in this folder."""
    if value:
        return value
    if EMBEDDED_KEY_FILE.is_file():
        return EMBEDDED_KEY_FILE.read_text().strip()
    raise click.UsageError(
        "no API key: pass --api-key, set SQUASH_API_KEY, or run `squash embedded` here "
        f"(it writes {EMBEDDED_KEY_FILE})",
        ctx,
    )


key_option = click.option(
    "--api-key",
    envvar="SQUASH_API_KEY",
    callback=_api_key,
    help=f"API key [env SQUASH_API_KEY; default: {EMBEDDED_KEY_FILE} if present]",
)


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wait/--no-wait", default=False, help="Follow the job until it ends")
@click.option("--idempotency-key", default=None)
@url_option
@key_option
def submit(file: Path, wait: bool, idempotency_key: str | None, url: str, api_key: str) -> None:
    """Submit a job described in a YAML or JSON file."""
    body = read_job_file(file.read_text())
    client = SquashClient(url, api_key)
    job = client.submit(body, idempotency_key=idempotency_key)
    click.echo(job["id"])
    if wait:
        job = client.wait(job["id"], on_update=progress_printer())
        click.echo("")
        print_outcome(client, job)
        if job["state"] != "succeeded":
            raise SystemExit(1)


@cli.command()
@click.argument("job_id")
@url_option
@key_option
@click.option("--json", "as_json", is_flag=True, help="The API's whole job document")
def status(job_id: str, url: str, api_key: str, as_json: bool) -> None:
    """Show a job: state, stage, progress, recipe, timings, error."""
    job = SquashClient(url, api_key).get(job_id)
    click.echo(json.dumps(job, indent=2) if as_json else job_summary(job))


@cli.command()
@click.argument("job_id")
@url_option
@key_option
def cancel(job_id: str, url: str, api_key: str) -> None:
    """Cancel a job."""
    click.echo(SquashClient(url, api_key).cancel(job_id)["state"])


@cli.command()
@click.argument("job_id")
@url_option
@key_option
def artifacts(job_id: str, url: str, api_key: str) -> None:
    """List a job's artifacts with sizes, sha256 and download links."""
    for item in SquashClient(url, api_key).artifacts(job_id)["items"]:
        click.echo(f"{item['size']:>12}  {item['sha256'][:12]}  {item['path']}\n    {item['url']}")


@cli.command()
@click.argument("job_id")
@click.option(
    "--open",
    "open_page",
    is_flag=True,
    help="Save the report page (report.html) and open it in a browser",
)
@click.option(
    "--to",
    "target",
    type=click.Path(path_type=Path),
    default=None,
    help="Where --open saves the page (default: squash-report-<id>.html here)",
)
@url_option
@key_option
def report(job_id: str, open_page: bool, target: Path | None, url: str, api_key: str) -> None:
    """Print a job's evaluation report (JSON), or open its page with --open."""
    client = SquashClient(url, api_key)
    if not open_page:
        click.echo(json.dumps(client.report(job_id), indent=2))
        return
    page = target or Path(f"squash-report-{job_id[:8]}.html")
    page.write_bytes(client.report_page(job_id))
    # The page is self-contained (inline charts, loads nothing): a file:// URL shows it all.
    opened = webbrowser.open(page.resolve().as_uri())
    click.echo(f"{page}" if opened else f"{page} (no browser here: open it yourself)")


@cli.command("list")
@click.option("--state", "states", multiple=True, help="Only jobs in this state (repeatable)")
@click.option("--limit", default=20, show_default=True)
@url_option
@key_option
def list_jobs(states: tuple[str, ...], limit: int, url: str, api_key: str) -> None:
    """Your newest jobs, one line each."""
    for job in SquashClient(url, api_key).jobs(states=list(states), limit=limit)["items"]:
        methods = "+".join(str(stage.get("method")) for stage in job.get("recipe") or [])
        where = f"{job['stage']} {job['progress']:.0f}%" if job.get("stage") else ""
        click.echo(f"{job['id']}  {job['state']:<16} {methods:<20} {where:<26} {job['created_at']}")


@cli.command()
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="Keep printing new events until the job ends")
@url_option
@key_option
def events(job_id: str, follow: bool, url: str, api_key: str) -> None:
    """A job's history: state changes, warnings, stage timings."""
    client, after = SquashClient(url, api_key), 0
    if follow:  # live, over the job's event stream (resumes itself if the connection drops)
        for event in client.stream_events(job_id):
            after = echo_events([event], after)
        return
    while True:
        page = client.events(job_id, after=after)
        after = echo_events(page["items"], after)
        if not page.get("next_after"):
            return


@cli.command()
@click.argument("job_ids", nargs=-1, required=True)
@url_option
@key_option
def compare(job_ids: tuple[str, ...], url: str, api_key: str) -> None:
    """Succeeded jobs on one base model side by side (* = on the size/quality frontier)."""
    table = SquashClient(url, api_key).compare(list(job_ids))
    columns = [c for c in table["columns"] if any(c in r["metrics"] for r in table["rows"])]
    for warning in table.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    series = len(table.get("series", [])) > 1
    header = f"{'job':10} {'recipe':30}" + "".join(f" {c[:16]:>16}" for c in columns)
    click.echo(header)
    rows = [("original", "", table.get("original") or {}, False)] + [
        (
            r["job_id"][:8],
            (f"[{r['series']}] " if series else "") + r["recipe_label"],
            r["metrics"],
            r["on_pareto_frontier"],
        )
        for r in table["rows"]
    ]
    for name, recipe, metrics, frontier in rows:
        cells = "".join(f" {table_cell(c, metrics.get(c)):>16}" for c in columns)
        click.echo(f"{name:10} {recipe[:29] + ('*' if frontier else ''):30}{cells}")


@cli.command()
@click.argument("job_id")
@click.option(
    "--to",
    "target",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write into [default: ./<job id>]",
)
@url_option
@key_option
def download(job_id: str, target: Path | None, url: str, api_key: str) -> None:
    """Download a job's artifacts, each checked against its sha256."""
    client = SquashClient(url, api_key)
    folder = target or Path(job_id)
    total = 0
    for item in client.artifacts(job_id)["items"]:
        path = folder / item["path"]
        if folder.resolve() not in path.resolve().parents:
            raise click.ClickException(
                f"refusing an artifact path outside {folder}: {item['path']}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        digest = client.download(item["url"], partial)
        if digest != item["sha256"]:
            partial.unlink()
            raise click.ClickException(
                f"{item['path']}: downloaded sha256 {digest} differs from the manifest's "
                f"{item['sha256']}; nothing kept of that file, run the command again"
            )
        partial.replace(path)  # only verified bytes carry the artifact's name
        total += item["size"]
        click.echo(f"{human_bytes(item['size']):>10}  {path}")
    click.echo(f"{human_bytes(total):>10}  in {folder}, every file checked against its sha256")


if __name__ == "__main__":
    cli()
