from __future__ import annotations

import time
import uuid

from app.auth.service import TenantCache


def test_tenant_cache_expires_and_never_stores_when_disabled() -> None:
    tenant = uuid.uuid4()
    cache = TenantCache(ttl_s=0.2)
    cache.put("h", tenant)
    assert cache.get("h") == tenant and cache.get("other") is None
    time.sleep(0.25)
    assert cache.get("h") is None
    disabled = TenantCache(ttl_s=0)
    disabled.put("h", tenant)
    assert disabled.get("h") is None
