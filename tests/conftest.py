"""Fixtures: the tiny models the unit tests run on. Test tasks are registered by tests.support."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import make_tiny_model, make_tiny_tokenizer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (random, seeded) with a byte-level tokenizer of its own: the unit tests' model."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """A 2-layer Qwen2 with an untied output head and q/k/v biases."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_qwen2") / "model", family="qwen2")


@pytest.fixture(scope="session")
def legacy_tiny_model_dir() -> Path:
    """The tiny model the fixture runs were made with, stored as release 0.1.0's tests made it (with the
    embedded model's tokenizer): not rebuilt, so no library's random init or saved bytes can move it."""
    return FIXTURES / "models" / "release-0.1.0-tiny"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture()
def tiny_engine(tiny_model_dir):
    from thickets.engines import load_engine

    engine, _ = load_engine(str(tiny_model_dir), batch_size=4)
    return engine


@pytest.fixture()
def fixtures() -> Path:
    return FIXTURES
