"""Write the published contract: `python -m app.openapi` writes `openapi/openapi.json` (the
HTTP API) and `openapi/report.schema.json` (the evaluation report, JSON Schema)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.config import Settings
from app.main import create_app
from app.reports.schema import report_json_schema

OPENAPI_DIR = Path(__file__).resolve().parents[1] / "openapi"
DOCUMENTS = {"openapi.json": lambda: openapi_document(), "report.schema.json": report_json_schema}


def openapi_document() -> dict[str, Any]:
    # Fixed settings: the document must not depend on the environment it is generated in.
    settings = Settings(
        database_url="sqlite:///:memory:",
        broker_url="memory://",
        object_store_url="file:///nonexistent",
        reaper_enabled=False,
    )
    return create_app(settings).openapi()


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    for name, build in DOCUMENTS.items():
        (OPENAPI_DIR / name).write_text(render(build()))
