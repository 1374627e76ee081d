"""What every phase of one job attempt reads, in one place: the attempt's context, the job,
its input model, its data and evaluation plan, the status of every evaluation, and the
attempt's scratch folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from workers.context import JobContext
from workers.evaluation.suite import Attempts, EvalPlan
from workers.job.data import JobData
from workers.job.source import Source
from workers.job.spec import ReadSpec


@dataclass
class JobRun:
    ctx: JobContext
    job: ReadSpec
    source: Source
    data: JobData
    plan: EvalPlan
    scratch: Path
    evaluations: Attempts = field(init=False)

    def __post_init__(self) -> None:
        self.evaluations = Attempts(self.ctx)
