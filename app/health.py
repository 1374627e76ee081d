from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.db import get_engine
from app.deps import SettingsDep, StoreDep
from app.queue import ping_broker
from app.recipes import describe_methods

router = APIRouter()


@router.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    """The process is up. Checks nothing else (use /readyz for dependencies)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
def readyz(settings: SettingsDep, store: StoreDep) -> JSONResponse:
    """Database, broker and object store all reachable: 200, else 503 naming what failed."""
    checks: dict[str, str] = {}
    probes = {
        "database": lambda: get_engine(settings.database_url).connect().close(),
        "broker": lambda: ping_broker(settings),
        "object_store": store.check,
    }
    for name, probe in probes.items():
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - report any failure as not ready
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/v1/methods", tags=["methods"])
def list_methods() -> dict[str, Any]:
    """Every compression method with its parameter JSON schema (from app/recipes.py)."""
    return {"items": describe_methods()}
