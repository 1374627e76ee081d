"""The chaos run's checker: reads the database, the bucket and the API after the run and counts
what must be zero. Every published file is downloaded through the link the API hands a user and
hashed against both the API's listing and the job's manifest; every object in the bucket must be
one a succeeded job published (or that job's manifest)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import boto3
import httpx
import psycopg

from bench.chaos_stack import BUCKET, ChaosStack
from tests.support.jobs import TERMINAL
from tests.support.stack import scratch_bytes


def job_rows(stack: ChaosStack) -> dict[str, dict[str, Any]]:
    url = stack.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, state, attempts, error_code, idempotency_key, artifact_prefix FROM jobs"
        ).fetchall()
        artifacts = conn.execute("SELECT job_id, object_key FROM artifacts").fetchall()
    published: dict[str, list[str]] = {}
    for job_id, key in artifacts:
        published.setdefault(str(job_id), []).append(key)
    return {
        str(r[0]): {
            "state": r[1],
            "attempts": r[2],
            "error_code": r[3],
            "idempotency_key": r[4],
            "artifact_prefix": r[5],
            "object_keys": published.get(str(r[0]), []),
        }
        for r in rows
    }


def bucket_contents(stack: ChaosStack) -> tuple[list[str], int]:
    """Every object key in the bucket, and the number of unfinished multipart uploads."""
    s3 = boto3.client("s3", endpoint_url=stack.settings.s3_endpoint_url)
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys += [item["Key"] for item in page.get("Contents", [])]
    uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    return keys, len(uploads)


def verify_published(stack: ChaosStack, job_id: str) -> tuple[int, list[str]]:
    """Download every file of a succeeded job through the API's links; returns the number
    hashed and what disagreed (listing vs manifest vs bytes)."""
    listing = stack.request("GET", f"/v1/jobs/{job_id}/artifacts").json()
    manifest = json.loads(httpx.get(listing["manifest_url"], timeout=30).content)
    in_manifest = {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]}
    listed = {item["path"]: (item["size"], item["sha256"]) for item in listing["items"]}
    problems = [f"{job_id}: listing and manifest differ"] if in_manifest != listed else []
    if manifest["job_id"] != job_id:
        problems.append(f"{job_id}: manifest names job {manifest['job_id']}")
    for item in listing["items"]:
        body = httpx.get(item["url"], timeout=60).content
        got = (len(body), hashlib.sha256(body).hexdigest())
        if got != listed[item["path"]] or got != in_manifest.get(item["path"]):
            problems.append(f"{job_id}/{item['path']}: stored bytes differ")
    return len(listing["items"]), problems


def check(stack: ChaosStack, accepted: dict[str, str]) -> dict[str, Any]:
    """`accepted`: each submission's Idempotency-Key and the job id the client was given."""
    rows = job_rows(stack)
    keys, open_uploads = bucket_contents(stack)
    lost = [job_id for job_id in accepted.values() if job_id not in rows]
    per_key = Counter(r["idempotency_key"] for r in rows.values())
    extra_rows = sum(count - 1 for count in per_key.values())
    stuck = [job_id for job_id, r in rows.items() if r["state"] not in TERMINAL]
    expected: set[str] = set()
    hashed, mismatches = 0, []
    for job_id, row in rows.items():
        if row["state"] != "succeeded":
            continue
        prefix = stack.settings.object_store_url.removeprefix(f"s3://{BUCKET}/")
        expected |= {f"{prefix}/{key}" for key in row["object_keys"]}
        expected.add(f"{prefix}/{row['artifact_prefix']}/manifest.json")
        count, problems = verify_published(stack, job_id)
        hashed += count
        mismatches += problems
    orphans = sorted(set(keys) - expected)
    manifests = Counter(k.split("/")[2] for k in keys if k.endswith("/manifest.json"))
    published_twice = [job_id for job_id, count in manifests.items() if count > 1]
    states = Counter(r["state"] for r in rows.values())
    return {
        "jobs": len(accepted),
        "job_rows": len(rows),
        "succeeded": states["succeeded"],
        "failed_by_code": dict(
            Counter(r["error_code"] for r in rows.values() if r["state"] == "failed")
        ),
        "cancelled": states["cancelled"],
        "lost": len(lost),
        "duplicated": extra_rows + len(published_twice),
        "stuck": len(stuck),
        "orphan_objects": len(orphans) + open_uploads,
        "manifest_mismatches": len(mismatches),
        "files_hashed": hashed,
        "scratch_bytes_left": scratch_bytes(stack.settings),
        "attempts": {job_id: r["attempts"] for job_id, r in rows.items()},
        "detail": {
            "lost": lost,
            "stuck": stuck,
            "orphans": orphans[:20],
            "open_uploads": open_uploads,
            "mismatches": mismatches[:20],
            "published_twice": published_twice,
        },
    }


def self_test(stack: ChaosStack, accepted: dict[str, str], before: dict[str, Any]) -> bool:
    """The checker can fail: one stray object and one published file overwritten with other
    bytes must raise `orphan_objects` and `manifest_mismatches` by one each."""
    rows = job_rows(stack)
    winner = next(job_id for job_id, r in rows.items() if r["state"] == "succeeded")
    prefix = stack.settings.object_store_url.removeprefix(f"s3://{BUCKET}/")
    s3 = boto3.client("s3", endpoint_url=stack.settings.s3_endpoint_url)
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/jobs/{winner}/stray.bin", Body=b"stray")
    key = f"{prefix}/{rows[winner]['object_keys'][0]}"
    original = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=key, Body=original + b"!")
    after = check(stack, accepted)
    return (
        after["orphan_objects"] == before["orphan_objects"] + 1
        and after["manifest_mismatches"] == before["manifest_mismatches"] + 1
    )
