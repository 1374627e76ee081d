from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.support.fixtures"]

# boto3 needs credentials even for moto; never let tests touch a real account or the hub.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model_dir(models_root: Path) -> Path:
    from tests.support.tiny_model import build_tiny_model

    return build_tiny_model(models_root / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_smol_dir(models_root: Path) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (GGUF conversion needs a known one)."""
    from tests.support.tiny_model import build_tiny_smollm_tokenized

    return build_tiny_smollm_tokenized(models_root / "tiny-smol")


@pytest.fixture(scope="session")
def tiny_teacher_dir(models_root: Path, tiny_model_dir: Path) -> Path:
    from tests.support.tiny_model import train_tiny_teacher

    return train_tiny_teacher(tiny_model_dir, models_root / "tiny-teacher")


@pytest.fixture
def unique_name() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("squash")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's figures (lost jobs, recovery times…), one line per test."""
    from tests.support.stack import RECORDED

    if RECORDED:
        terminalreporter.section("fault suite figures (test-artifacts/faults/)")
        for name, figures in RECORDED.items():
            terminalreporter.write_line(f"{name}: {json.dumps(figures)}")
