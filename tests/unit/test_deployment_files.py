"""docker-compose.yml and the Dockerfiles, checked statically (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
SETTING_VARS = {name.upper() for name in Settings.model_fields}
SQUASH_SERVICES = ("migrate", "api", "worker-gpu", "worker-cpu")


def test_compose_has_the_whole_stack() -> None:
    assert {"postgres", "redis", "minio", "create-bucket", *SQUASH_SERVICES} <= set(SERVICES)
    gpu = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["count"] == 1


def test_every_env_var_is_a_setting_or_aws_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SQUASH_SERVICES:
        env = SERVICES[name]["environment"]
        unknown = {k for k in env if k not in SETTING_VARS and not k.startswith("AWS_")}
        assert not unknown, (name, unknown)
        # Parsed the way a container parses them: from the environment (JSON for lists).
        with monkeypatch.context() as patch:
            for key, value in env.items():
                if key in SETTING_VARS and "${" not in value:
                    patch.setenv(key, value)
            parsed = Settings()
        assert parsed.object_store_url == env["OBJECT_STORE_URL"]


def test_urls_point_at_compose_services_and_credentials_match() -> None:
    env = SERVICES["api"]["environment"]
    for var in ("DATABASE_URL", "BROKER_URL", "S3_ENDPOINT_URL"):
        host = re.search(r"@?([a-z0-9-]+):\d+", env[var].split("//", 1)[1]).group(1)
        assert host in SERVICES, (var, host)
    pg = SERVICES["postgres"]["environment"]
    assert f"{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@" in env["DATABASE_URL"]
    assert env["DATABASE_URL"].endswith("/" + pg["POSTGRES_DB"])
    minio = SERVICES["minio"]["environment"]
    assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    bucket = env["OBJECT_STORE_URL"].removeprefix("s3://")
    assert bucket in SERVICES["create-bucket"]["command"][0]


def test_api_waits_for_migrations_and_the_bucket() -> None:
    needs = SERVICES["api"]["depends_on"]
    assert needs["migrate"]["condition"] == "service_completed_successfully"
    assert needs["create-bucket"]["condition"] == "service_completed_successfully"
    assert SERVICES["migrate"]["command"] == ["squash", "migrate"]


def test_dockerfiles_copy_existing_paths_and_keep_torch_out_of_the_api() -> None:
    for name in ("api.Dockerfile", "worker.Dockerfile"):
        text = (ROOT / "docker" / name).read_text()
        for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
            for source in line.split()[:-1]:
                assert (ROOT / source).exists(), (name, source)
    api = (ROOT / "docker" / "api.Dockerfile").read_text()
    assert (
        "pip install torch" not in api
        and "torch==" not in api
        and "[worker]" not in api
        and "COPY workers" not in api
    )
    worker = (ROOT / "docker" / "worker.Dockerfile").read_text()
    assert '".[worker]"' in worker and "torch==" in worker
    for service in SQUASH_SERVICES:
        build = SERVICES[service].get("build")
        if build:
            assert (ROOT / build["dockerfile"]).is_file()


def test_api_package_does_not_import_torch_or_workers() -> None:
    import subprocess
    import sys

    code = (
        "import sys, app.main, app.cli.main, app.openapi; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('workers')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_prometheus_scrapes_the_api_and_every_worker_and_flower_watches_the_broker() -> None:
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    workers = [name for name in SQUASH_SERVICES if name.startswith("worker")]
    for name in workers:
        port = SERVICES[name]["environment"]["WORKER_METRICS_PORT"]
        assert f"{name}:{port}" in targets
    api_port = SERVICES["api"]["command"][SERVICES["api"]["command"].index("--port") + 1]
    assert f"api:{api_port}" in targets
    mount = SERVICES["prometheus"]["volumes"][0].split(":")
    assert (ROOT / mount[0]).is_file() and mount[1] == "/etc/prometheus/prometheus.yml"
    broker = SERVICES["api"]["environment"]["BROKER_URL"]
    assert f"--broker={broker}" in SERVICES["flower"]["command"]
