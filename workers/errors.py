"""How a job attempt can end badly. The runner maps each type to one outcome, in one place."""

from __future__ import annotations

from app.jobs.state import ErrorCode


class JobFailure(Exception):
    """The job cannot succeed as submitted (bad model, unsupported combination): `failed`,
    no retry, with a stable code the client can switch on."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TransientFailure(Exception):
    """Infrastructure hiccup (store or network): the attempt is retried while attempts remain;
    then the job fails with `code`."""

    code = ErrorCode.MAX_ATTEMPTS_EXCEEDED


class SourceUnreachable(TransientFailure):
    """The model's or data's source could not be reached (not: does not exist)."""

    code = ErrorCode.SOURCE_UNREACHABLE


class JobCancelled(Exception):
    """The user asked to cancel; raised at the next check point."""


class LeaseLost(Exception):
    """Another process now owns the job (we were presumed dead): stop and write nothing."""


class Suspended(Exception):
    """The attempt handed its job on (a search whose candidates now run as child jobs): the
    move that left `running` has committed; the runner writes nothing more."""
