"""Which model and data sources a tenant may name: checked at submission, before anything runs.

Sources are never free URLs (app/sources.py has no such kind), so the remaining ways to reach
what a tenant must not are S3 URIs and remote code:

- An S3 URI is read with the *workers'* credentials, which can also read every tenant's
  artifacts. So S3 sources must lie under a root the operator allow-listed
  (SOURCE_S3_PREFIXES; `{tenant}` in a root stands for the caller's tenant id, giving each
  tenant its own folder), and never under the artifact store itself.
- A Hugging Face model whose config names its own code (`auto_map`) runs that code when loaded
  with trust_remote_code. A job may ask for it only for a repository the operator allow-listed
  pinned to a commit (TRUST_REMOTE_CODE_REPOS, `org/name@<40-hex sha>`); a moving branch could
  change the code after review.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from app.config import Settings
from app.errors import Forbidden
from app.json_paths import walk

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# Keys never inspected for sources: free-form user text.
_FREE_TEXT = frozenset({"labels", "webhook_url"})


def _normalized_root(root: str, tenant_id: uuid.UUID) -> str:
    root = root.replace("{tenant}", str(tenant_id))
    return root if root.endswith("/") else root + "/"


def _store_root(settings: Settings) -> str | None:
    if not settings.object_store_url.startswith("s3://"):
        return None
    return settings.object_store_url.rstrip("/") + "/"


def check_s3_uri(uri: str, *, field: str, tenant_id: uuid.UUID, settings: Settings) -> None:
    keyed = uri.rstrip("/") + "/"
    segments = uri.removeprefix("s3://").split("/")[1:]
    if any(part in (".", "..") for part in segments) or "//" in uri.removeprefix("s3://"):
        raise Forbidden(
            f"{field}: '.', '..' and empty path segments are not allowed in S3 URIs",
            code="source_not_allowed",
            field=field,
        )
    store = _store_root(settings)
    if store is not None and (keyed.startswith(store) or store.startswith(keyed)):
        raise Forbidden(
            f"{field}: {uri} lies in the artifact store; name a source folder instead",
            code="source_not_allowed",
            field=field,
        )
    roots = [_normalized_root(root, tenant_id) for root in settings.source_s3_prefixes]
    if not any(keyed.startswith(root) for root in roots):
        allowed = ", ".join(roots) if roots else "none are configured"
        raise Forbidden(
            f"{field}: {uri} is not under an allow-listed S3 source prefix ({allowed})",
            code="source_not_allowed",
            field=field,
        )


def remote_code_allowed(repo_id: str, revision: str, settings: Settings) -> bool:
    return COMMIT_RE.match(revision) is not None and (
        f"{repo_id}@{revision}" in settings.trust_remote_code_repos
    )


def check_sources(body: dict[str, Any], *, tenant_id: uuid.UUID, settings: Settings) -> None:
    """Raises Forbidden (403, naming the field) for the first source the tenant may not use.
    `body` is the request as JSON (JobCreate.model_dump(mode="json"))."""
    for path, value in walk(body, skip=_FREE_TEXT):
        if isinstance(value, str) and value.lower().startswith("s3://"):
            check_s3_uri(value, field=path, tenant_id=tenant_id, settings=settings)
        elif _asks_untrusted_code(value, settings):
            field = f"{path}.trust_remote_code"
            raise Forbidden(
                f"{field}: {value['repo_id']}@{value['revision']} is not allow-listed; an "
                "operator must allow-list the repository pinned to a commit "
                "(TRUST_REMOTE_CODE_REPOS=org/name@<40-hex sha>)",
                code="source_not_allowed",
                field=field,
            )


def _asks_untrusted_code(value: Any, settings: Settings) -> bool:
    return (
        isinstance(value, dict)
        and value.get("kind") == "huggingface"
        and bool(value.get("trust_remote_code"))
        and not remote_code_allowed(value["repo_id"], value["revision"], settings)
    )
