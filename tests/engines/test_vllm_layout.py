"""The vLLM engine's noise: each fused, tensor-parallel shard is cut from the canonical streams,
so a seed perturbs vLLM's weights exactly as it perturbs the transformers engine's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thickets.engines.experimental.vllm_layout import (
    VOCAB_PADDING,
    Dims,
    pieces,
    shard_noise,
)
from thickets.engines.transformers_engine import (
    TransformersEngine,
    canonical_parameters,
)
from thickets.models import load
from thickets.noise import ParamFilter, PerturbationSpec, standard_noise

SPEC = PerturbationSpec(7, 0.01)
D = Dims(hidden=32, intermediate=64, heads=4, kv_heads=2, head_dim=8, vocab=100, tied=True)


def full(name, shape, spec=SPEC):
    return standard_noise(spec, name, shape)


def _rank_rows(n, rank, size):
    per = n // size
    return slice(rank * per, (rank + 1) * per)


@pytest.mark.parametrize("size", [1, 2, 4])
def test_fused_shards_are_slices_of_the_canonical_noise(size):
    L = "model.layers.0"
    q, k, v = (full(f"{L}.self_attn.{p}_proj.weight", (n, 32)) for p, n in (("q", 32), ("k", 16), ("v", 16)))
    gate, up = full(f"{L}.mlp.gate_proj.weight", (64, 32)), full(f"{L}.mlp.up_proj.weight", (64, 32))
    o, down = full(f"{L}.self_attn.o_proj.weight", (32, 32)), full(f"{L}.mlp.down_proj.weight", (32, 64))
    emb = full("model.embed_tokens.weight", (100, 32))
    padded = -(-100 // VOCAB_PADDING) * VOCAB_PADDING
    q_rows = []
    for rank in range(size):
        kv = _rank_rows(16, rank, size) if size <= 2 else slice((rank // 2) * 8, (rank // 2 + 1) * 8)  # replicated
        qs = q[_rank_rows(32, rank, size)]
        q_rows.append(qs)
        qkv = shard_noise(
            SPEC, pieces(f"{L}.self_attn.qkv_proj.weight", D, rank, size), (qs.shape[0] + 2 * (kv.stop - kv.start), 32)
        )
        np.testing.assert_array_equal(qkv, np.concatenate([qs, k[kv], v[kv]]))
        gu = shard_noise(SPEC, pieces(f"{L}.mlp.gate_up_proj.weight", D, rank, size), (2 * 64 // size, 32))
        np.testing.assert_array_equal(
            gu, np.concatenate([gate[_rank_rows(64, rank, size)], up[_rank_rows(64, rank, size)]])
        )
        np.testing.assert_array_equal(
            shard_noise(SPEC, pieces(f"{L}.self_attn.o_proj.weight", D, rank, size), (32, 32 // size)),
            o[:, _rank_rows(32, rank, size)],
        )
        np.testing.assert_array_equal(
            shard_noise(SPEC, pieces(f"{L}.mlp.down_proj.weight", D, rank, size), (32, 64 // size)),
            down[:, _rank_rows(64, rank, size)],
        )
        rows = _rank_rows(padded, rank, size)
        e = shard_noise(SPEC, pieces("lm_head.weight", D, rank, size), (padded // size, 32))  # tied: the embedding's
        real = min(rows.stop, 100) - rows.start
        np.testing.assert_array_equal(e[: max(real, 0)], emb[rows.start : rows.start + max(real, 0)])
        assert not e[max(real, 0) :].any()  # vocabulary padding gets no noise
        norm = shard_noise(SPEC, pieces(f"{L}.input_layernorm.weight", D, rank, size), (32,))
        np.testing.assert_array_equal(norm, full(f"{L}.input_layernorm.weight", (32,)))
    np.testing.assert_array_equal(np.concatenate(q_rows), q)  # unfused, the shards give back the whole tensor


def test_a_filter_zeroes_exactly_the_parameters_it_leaves_alone():
    spec = PerturbationSpec(7, 0.01, filter=ParamFilter(exclude=("*k_proj*",)))
    qkv = shard_noise(spec, pieces("model.layers.0.self_attn.qkv_proj.weight", D), (64, 32))
    assert not qkv[32:48].any() and qkv[:32].any() and qkv[48:].any()
    np.testing.assert_array_equal(qkv[:32], full("model.layers.0.self_attn.q_proj.weight", (32, 32), spec))


def test_relative_noise_is_refused_on_vllm_shards():
    with pytest.raises(ValueError, match="vllm engine cannot make relative noise"):
        shard_noise(
            PerturbationSpec(1, 1e-3, "relative"), pieces("model.layers.0.self_attn.qkv_proj.weight", D), (64, 32)
        )


def test_an_unknown_parameter_is_refused():
    with pytest.raises(KeyError, match="no canonical mapping"):
        pieces("model.layers.0.self_attn.rotary.inv_freq", D)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fused_perturbed_weights_equal_the_transformers_engine_s(family, tiny_model_dir, tiny_qwen2_dir):
    """vLLM's layout, built here from the tiny model's own weights at tensor-parallel size 1: base +
    sigma * shard noise equals the transformers engine's perturbed tensors, fused the same way."""
    path = tiny_model_dir if family == "llama" else tiny_qwen2_dir
    model, tok, _ = load(str(path))
    dims = Dims.of(model.config)
    engine = TransformersEngine(model, tok)
    base = {n: p.detach().clone() for n, p in canonical_parameters(model).items()}
    spec = PerturbationSpec(3, 0.05)
    engine.perturb(spec)
    moved = {n: p.detach().clone() for n, p in canonical_parameters(model).items()}
    engine.restore()
    L = "model.layers.1"
    fused = {
        f"{L}.self_attn.qkv_proj.weight": [f"{L}.self_attn.{p}_proj.weight" for p in "qkv"],
        f"{L}.mlp.gate_up_proj.weight": [f"{L}.mlp.gate_proj.weight", f"{L}.mlp.up_proj.weight"],
        f"{L}.self_attn.o_proj.weight": [f"{L}.self_attn.o_proj.weight"],
        "model.embed_tokens.weight": ["model.embed_tokens.weight"],
    }
    if family == "qwen2":
        fused[f"{L}.self_attn.qkv_proj.bias"] = [f"{L}.self_attn.{p}_proj.bias" for p in "qkv"]
    for vname, parts in fused.items():
        vllm_base = torch.cat([base[p] for p in parts])
        eps = torch.from_numpy(shard_noise(spec, pieces(vname, dims), tuple(vllm_base.shape)))
        vllm_moved = (vllm_base.float() + spec.sigma * eps).to(vllm_base.dtype)
        torch.testing.assert_close(vllm_moved, torch.cat([moved[p] for p in parts]), rtol=0, atol=0)
