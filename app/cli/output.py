"""What the CLI prints: job summaries, progress lines, event lines, tables and sizes."""

from __future__ import annotations

import re
import sys
from typing import Any

import click
import yaml

from app.cli.client import TERMINAL, SquashClient


class _JobFileLoader(yaml.SafeLoader):
    """YAML as people write job files: `5e-5` is a number (YAML 1.1 would make it the string
    "5e-5", which the API's strict JSON numbers refuse); YAML 1.2 reads it as a float."""


_JobFileLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_job_file(text: str) -> Any:
    """A job file, YAML or JSON (JSON is YAML)."""
    return yaml.load(text, Loader=_JobFileLoader)


def stage_text(stage: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in (stage.get("params") or {}).items())
    return f"{stage.get('method')}({params})"


def job_summary(job: dict[str, Any]) -> str:
    """A job in a dozen lines, what a person polling it wants to read."""
    model = job.get("model") or {}
    lines = [
        f"job {job['id']}  {job['state']}  (attempt {job['attempts']} of {job['max_attempts']})",
        f"  model     {model.get('kind')} {model.get('name') or model.get('path') or ''}".rstrip(),
        f"  recipe    {' -> '.join(stage_text(s) for s in job.get('recipe') or [])}",
        f"  queue     {job['queue']} (device {job['device']}, priority {job['priority']})",
    ]
    if job.get("stage"):
        lines.append(f"  stage     {job['stage']}  {job['progress']:.1f} %")
    detail = progress_text(job.get("progress_detail") or {})
    if detail:
        lines.append(f"            {detail}")
    for name in ("created_at", "started_at", "finished_at"):
        if job.get(name):
            lines.append(f"  {name.removesuffix('_at'):9} {job[name]}")
    if job.get("error"):
        lines.append(f"  error     {job['error'].get('code')}: {job['error'].get('message')}")
    for key, value in (job.get("metrics") or {}).items():
        if isinstance(value, int | float | str):
            lines.append(f"  {key:32} {value}")
    return "\n".join(lines)


def echo_events(items: list[dict[str, Any]], after: int) -> int:
    for event in items:
        state = f" -> {event['state']}" if event.get("state") else ""
        click.echo(f"{event['created_at']}  {event['kind']:<10}{state}  {event['message']}")
        after = max(after, int(event["id"]))
    return after


def table_cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if "bytes" in column:  # size_bytes, checkpoint_bytes_bf16, …
        return human_bytes(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def human_bytes(size: float) -> str:
    """Decimal units, as disks and object stores count."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def progress_text(detail: dict[str, Any]) -> str:
    """The running stage's counter and ETA from `progress_detail`: "layer 12/30 · ETA 4m10s"."""
    parts = []
    if "layer" in detail and "layers" in detail:
        parts.append(f"layer {detail['layer']}/{detail['layers']}")
    if "step" in detail and "max_steps" in detail:
        parts.append(f"step {detail['step']}/{detail['max_steps']}")
    if isinstance(detail.get("loss"), int | float):
        parts.append(f"loss {detail['loss']:.3f}")
    eta = detail.get("eta_seconds")
    if isinstance(eta, int | float):
        minutes, seconds = divmod(int(eta), 60)
        parts.append(f"ETA {minutes}m{seconds:02d}s" if minutes else f"ETA {seconds}s")
    return " · ".join(parts)


def progress_printer() -> Any:
    """On a terminal a rich progress bar redrawn in place; in a log (not a TTY) a line per
    change of state, stage or whole percent, so the log reads as a history instead of one
    endless line."""
    interactive = sys.stdout.isatty()
    last: list[tuple[str, str, int, str]] = []
    bar = _TerminalBar() if interactive else None

    def show(job: dict[str, Any]) -> None:
        stage = job["stage"] or job["state"]
        detail = progress_text(job.get("progress_detail") or {})
        if job.get("queue_position") is not None:
            ahead = job["queue_position"]
            detail = "next in the queue" if ahead == 0 else f"{ahead} ahead in the queue"
            stage = job["queue"]
        if not interactive:
            moved_up = detail if job["state"] == "queued" else ""  # a line per queue move
            key = (job["state"], stage, int(job["progress"]), moved_up)
            if not last or last[-1] != key:
                last.append(key)
                click.echo(f"{job['progress']:5.1f}%  {job['state']:<16} {stage}  {detail}")
            return
        assert bar is not None
        bar.show(job, stage, detail)

    return show


class _TerminalBar:
    """rich's progress bar: state, bar, percent, stage and counters on one redrawn line,
    stopped (left on screen) once the job is terminal."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self.progress = Progress(
            TextColumn("{task.fields[state]:<16}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[stage]}  {task.fields[detail]}"),
        )
        self.task = self.progress.add_task("job", total=100, state="", stage="", detail="")
        self.progress.start()

    def show(self, job: dict[str, Any], stage: str, detail: str) -> None:
        self.progress.update(
            self.task, completed=job["progress"], state=job["state"], stage=stage, detail=detail
        )
        if job["state"] in TERMINAL:
            self.progress.stop()


def print_outcome(client: SquashClient, job: dict[str, Any]) -> None:
    click.echo(f"job {job['id']} {job['state']}")
    if job["state"] != "succeeded":
        error = job.get("error") or {}
        if error:
            click.echo(f"  {error.get('code')}: {error.get('message')}")
        return
    for key, value in client.report(job["id"])["summary"].items():
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            continue  # nested figures are in `squash report`
        if "_bytes" in key and isinstance(value, int | float):  # also *_bytes_bf16
            shown = human_bytes(value)
        elif isinstance(value, float):
            shown = f"{value:.4g}"
        else:
            shown = str(value)
        click.echo(f"  {key:32} {shown}")
    for item in client.artifacts(job["id"])["items"]:
        click.echo(
            f"  artifact {item['path']:36} {human_bytes(item['size']):>10}  "
            f"sha256 {item['sha256'][:12]}"
        )
