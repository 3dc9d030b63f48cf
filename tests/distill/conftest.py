"""A small search on the tiny model, for distillation's tests to start from."""

import pytest

from thickets.randopt.config import SearchConfig
from thickets.randopt.search import search


@pytest.fixture()
def run(tiny_model_dir, tmp_path):
    config = SearchConfig(
        model=str(tiny_model_dir), task="toy", population=4, sigmas=(0.1,), val_size=4, max_new_tokens=4
    )
    search(config, tmp_path / "run", progress=False)
    return tmp_path / "run"
