"""Print the OpenAPI document: `python -m app.openapi > openapi/openapi.json`."""

from __future__ import annotations

import json
import sys

from app.config import Settings
from app.main import create_app


def openapi_document() -> dict:
    # Fixed settings: the document must not depend on the environment it is generated in.
    settings = Settings(
        database_url="sqlite:///:memory:",
        broker_url="memory://",
        object_store_url="file:///nonexistent",
        reaper_enabled=False,
    )
    return create_app(settings).openapi()


if __name__ == "__main__":
    sys.stdout.write(json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n")
