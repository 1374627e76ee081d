"""The job's progress bar: one named span per phase, in the order the job runs them.

Every percentage a job reports comes from this table (the phases and methods report a fraction
of their span), so moving a phase's share is one edit here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    start: float
    end: float

    def at(self, fraction: float) -> float:
        """The percentage `fraction` (0-1) of the way through this span."""
        return self.start + (self.end - self.start) * fraction

    @property
    def bounds(self) -> tuple[float, float]:
        return self.start, self.end


RESOLVE = Span(0.0, 10.0)  # fetch and load the model, tokenize the data
EVALUATE_ORIGINAL = Span(10.0, 35.0)
STAGES = Span(35.0, 60.0)  # split evenly between the recipe's stages
SAVE = Span(60.0, 65.0)
LOAD_CHECK = Span(65.0, 70.0)
EVALUATE_COMPRESSED = Span(70.0, 88.0)
GGUF_OUTPUTS = Span(88.0, 90.0)  # the job's output.gguf files, if any
UPLOAD = Span(90.0, 99.0)  # the last point is the manifest and the final commit (100)

RESOLVE_STARTED = RESOLVE.at(0.1)
DATA_STARTED = RESOLVE.at(0.8)
