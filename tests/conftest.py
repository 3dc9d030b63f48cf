"""Shared fixtures: a tiny random Llama with the embedded model's tokenizer, and a toy task with variance."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import make_tiny_model, register_toy_task

register_toy_task()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (random, seeded) saved as a Hugging Face folder: the unit tests' model."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def tiny_engine(tiny_model_dir):
    from thickets.engines import load_engine

    engine, _ = load_engine(str(tiny_model_dir), batch_size=4)
    return engine
