"""Fault-injection points for the fault suite (tests/faults/).

Off in production: only a worker started with FAULT_INJECTION=true looks at them. Then a job
labelled `squash.fault-hold=<point>` stops at that point on its first attempt, writes
`<work_dir>/faults/<job_id>` (the point and this process's pid) and waits until the file is
removed: the test SIGKILLs or SIGSTOPs the worker in a known phase instead of guessing from
timing. The heartbeat thread keeps running while it waits, as it would during real work.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import structlog

from app.config import Settings

log = structlog.get_logger()

HOLD_LABEL = "squash.fault-hold"
POINTS = ("model_load", "compression", "upload", "before_commit")
# The message is taken but the job not yet claimed: no attempt exists, so the hold happens
# once per job (a `.held` file beside the marker says it did).
BEFORE_CLAIM = "before_claim"
# Inside a layer-wise stage: past half of its layers (workers/methods/shared/layer_resume.py).
METHOD_POINTS = ("layers_past_half",)


def hold_point_for(settings: Settings, labels: dict[str, Any], attempt: int) -> str | None:
    """The point this attempt stops at, if any (first attempt only, so the retry runs through)."""
    if not settings.fault_injection or attempt != 1:
        return None
    point = labels.get(HOLD_LABEL)
    return point if point in POINTS + METHOD_POINTS else None


def marker_path(settings: Settings, job_id: object) -> Path:
    return Path(settings.work_dir) / "faults" / str(job_id)


def hold(settings: Settings, job_id: object, point: str) -> None:
    marker = marker_path(settings, job_id)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"point": point, "pid": os.getpid()}))
    log.warning("fault.holding", job_id=str(job_id), point=point, pid=os.getpid())
    while marker.exists():
        time.sleep(0.05)
    log.warning("fault.released", job_id=str(job_id), point=point)


def hold_before_claim(settings: Settings, labels: dict[str, Any], job_id: object) -> None:
    if not settings.fault_injection or labels.get(HOLD_LABEL) != BEFORE_CLAIM:
        return
    once = marker_path(settings, job_id).with_suffix(".held")
    if once.exists():
        return  # the redelivered message runs through
    once.parent.mkdir(parents=True, exist_ok=True)
    once.touch()
    hold(settings, job_id, BEFORE_CLAIM)
