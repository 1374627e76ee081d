"""One error type for the API and one handler that writes application/problem+json (RFC 9457)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.schema_types import expected_choices

log = structlog.get_logger()
_checks: set[asyncio.Task[None]] = set()  # running pool checks (a task needs a reference)

PROBLEM_BASE = "https://squash.dev/problems/"
PROBLEM_JSON = "application/problem+json"

# OpenAPI `responses=` entries, so each route documents the problems it can answer.
PROBLEM_RESPONSE: dict[str, Any] = {"content": {PROBLEM_JSON: {}}}
# FastAPI's `responses=` type: status code → OpenAPI response object.
Responses = dict[int | str, dict[str, Any]]
ERRORS_401: Responses = {
    401: {"description": "Missing, invalid or revoked API key", **PROBLEM_RESPONSE}
}
ERRORS_404: Responses = {404: {"description": "No such job for this tenant", **PROBLEM_RESPONSE}}
ERRORS_413: Responses = {
    413: {"description": "Request body over MAX_REQUEST_BYTES", **PROBLEM_RESPONSE}
}
ERRORS_429: Responses = {
    429: {
        "description": "Rate limit or active-job quota reached; retry after `Retry-After` s",
        **PROBLEM_RESPONSE,
    }
}
ERRORS_503: Responses = {
    503: {
        "description": "A backing service (the database) is unreachable; nothing was changed. "
        "Retry after `Retry-After` s",
        **PROBLEM_RESPONSE,
    }
}
# A request that failed on these changed nothing (its transaction never committed): 503 tells
# clients and load balancers to retry, where a 500 would read as a bug.
DATABASE_UNAVAILABLE_RETRY_S = 5
ERRORS_403: Responses = {
    403: {
        "description": "Refused by this deployment's policy: a source outside the allow-list "
        "(`source_not_allowed`) or a webhook to a host that is not public "
        "(`webhook_not_allowed`)",
        **PROBLEM_RESPONSE,
    }
}
ERRORS_422: Responses = {
    422: {"description": "Invalid input; `errors[].field` names it", **PROBLEM_RESPONSE}
}


class AppError(Exception):
    """An error the client caused or must know about. `code` is stable; clients switch on it."""

    status: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        field: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.field = field
        self.errors = errors or ([{"field": field, "message": message}] if field else [])
        self.headers = headers or {}


class NotFound(AppError):
    status = 404
    code = "not_found"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"


class Conflict(AppError):
    status = 409
    code = "conflict"


class TooManyRequests(AppError):
    """429 with Retry-After: a rate limit or a quota."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class Forbidden(AppError):
    """A well-formed request this deployment's policy refuses (a source outside the operator's
    allow-list, a webhook to a private address): 403, so clients tell it from a malformed one."""

    status = 403
    code = "forbidden"


class InvalidInput(AppError):
    status = 422
    code = "invalid_input"


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('body', 'recipe', 0, 'params', 'bits') -> 'recipe[0].params.bits'."""
    parts: list[str] = []
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "body"


NOT_JSON = "the body is not JSON: send one JSON object with Content-Type: application/json"


def json_body_problem(request: Request, errors: Sequence[Any]) -> str | None:
    """What to say when the body is not JSON at all (instead of a pydantic message about a
    field such as `[116]` or "Input should be a valid dictionary")."""
    for err in errors:
        if err.get("type") == "json_invalid":
            loc: Sequence[Any] = err.get("loc") or ()
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            reason = (err.get("ctx") or {}).get("error", "JSON decode error")
            return f"the body is not valid JSON ({reason}{at}): send one JSON object"
    content_type = request.headers.get("content-type", "")
    if "json" not in content_type.lower() and any(
        tuple(err.get("loc") or ()) == ("body",) for err in errors
    ):
        got = f"Content-Type {content_type}" if content_type else "no Content-Type"
        return f"{NOT_JSON} (got {got})"
    return None


def validation_problem(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A request FastAPI could not validate: 400 `invalid_json` when the body is not JSON at
    all, else 422 `invalid_input` naming every field (with `choices` where it is one of a list)."""
    not_json = json_body_problem(request, exc.errors())
    if not_json:
        return problem(
            400,  # one status for any body that is not JSON (as for bytes that are not text)
            "invalid_json",
            not_json,
            instance=request.url.path,
            errors=[{"field": "body", "message": not_json}],
        )
    errors = []
    for err in exc.errors():
        entry = {"field": field_path(err["loc"]), "message": err["msg"], "type": err["type"]}
        ctx = err.get("ctx") or {}
        if "expected" in ctx:
            entry["expected"] = str(ctx["expected"])
            if err["type"] in ("literal_error", "enum"):
                entry["choices"] = expected_choices(ctx["expected"])
        errors.append(entry)
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(422, "invalid_input", detail, instance=request.url.path, errors=errors)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return problem(
            exc.status,
            exc.code,
            exc.message,
            instance=request.url.path,
            errors=exc.errors,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_problem(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 400 and "parsing the body" in str(exc.detail):
            # Starlette's answer to bytes that are not text at all.
            return problem(
                400,
                "invalid_json",
                NOT_JSON,
                instance=request.url.path,
                errors=[{"field": "body", "message": NOT_JSON}],
            )
        if exc.status_code == 405:
            # Starlette's Allow names only the first route on this path; list them all.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem(
            exc.status_code, code, str(exc.detail), instance=request.url.path, headers=headers
        )

    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("api.database_unavailable", path=request.url.path, error=str(exc)[:200])
        pool = getattr(request.app.state, "pg_pool", None)
        if pool is not None and not _checks:  # one check at a time, not one per request
            # Drop the status pool's dead connections now, so once Postgres is back the next
            # requests do not fail one by one on each connection it killed. (SQLAlchemy's pools
            # invalidate themselves on a disconnect error.)
            task = asyncio.create_task(pool.check())
            _checks.add(task)
            task.add_done_callback(_checks.discard)
        return problem(
            503,
            "database_unavailable",
            "the database is unreachable; nothing was changed, retry later",
            instance=request.url.path,
            headers={"Retry-After": str(DATABASE_UNAVAILABLE_RETRY_S)},
        )

    for error_type in database_outage_errors():
        app.add_exception_handler(error_type, _database_unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("api.unhandled_error", path=request.url.path)
        return problem(500, "internal_error", "internal error", instance=request.url.path)


def database_outage_errors() -> tuple[type[Exception], ...]:
    """What the ORM, the raw psycopg status pool and the pools raise when Postgres is down or
    restarting (connection refused, killed connections, no connection within the pool timeout)."""
    import psycopg
    import sqlalchemy.exc

    from app.status_pool import PoolTimeout as StatusPoolTimeout

    return (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.TimeoutError,
        psycopg.OperationalError,
        psycopg.InterfaceError,
        StatusPoolTimeout,
    )
