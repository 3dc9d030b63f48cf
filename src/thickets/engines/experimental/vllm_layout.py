"""Where each Hugging Face parameter lives inside vLLM's fused, tensor-parallel weights.

vLLM fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`, splits column-parallel layers
by output rows and row-parallel layers by input columns across tensor-parallel ranks, and pads
the vocabulary. Noise is defined on the canonical (Hugging Face) parameters, so a shard's noise
is assembled from slices of the canonical streams (any slice of a stream can be generated on its
own, see noise.py): a seed gives the same model in vLLM as in the transformers engine.

Pure functions of the model's dimensions; no vLLM import, so they are tested on CPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from thickets.errors import SpecError
from thickets.noise import PerturbationSpec, standard_noise

VOCAB_PADDING = 64  # vLLM's DEFAULT_VOCAB_PADDING_SIZE


@dataclass(frozen=True)
class Dims:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def of(cls, config: Any) -> Dims:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            config.hidden_size,
            config.intermediate_size,
            config.num_attention_heads,
            getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            head_dim,
            config.vocab_size,
            bool(getattr(config, "tie_word_embeddings", False)),
        )


@dataclass(frozen=True)
class Piece:
    """Rows [row_lo, row_hi) and columns [col_lo, col_hi) of canonical parameter `name` (of `shape`)
    go to the shard's rows starting at `dest_row` (all of the shard's columns)."""

    name: str
    shape: tuple[int, ...]
    row_lo: int
    row_hi: int
    col_lo: int
    col_hi: int
    dest_row: int


def _split(n: int, rank: int, size: int) -> tuple[int, int]:
    if n % size:
        raise ValueError(f"{n} does not split evenly over {size} tensor-parallel ranks")
    per = n // size
    return rank * per, (rank + 1) * per


def _rows(name: str, shape: tuple[int, ...], lo: int, hi: int, dest: int, cols: tuple[int, int] | None = None) -> Piece:
    ncols = shape[1] if len(shape) > 1 else 1
    c0, c1 = cols or (0, ncols)
    return Piece(name, shape, lo, hi, c0, c1, dest)


def pieces(vllm_name: str, d: Dims, rank: int = 0, size: int = 1) -> list[Piece]:
    """The canonical slices that make up vLLM parameter `vllm_name` on tensor-parallel rank `rank`."""
    m = re.fullmatch(r"(model\.layers\.\d+)\.(self_attn|mlp)\.(\w+)\.(weight|bias)", vllm_name)
    if m:
        prefix, block, proj, kind = m.groups()
        width = (d.hidden,) if kind == "weight" else ()
        if proj == "qkv_proj":
            q_lo, q_hi = _split(d.heads * d.head_dim, rank, size)
            if d.kv_heads >= size:
                kv_lo, kv_hi = _split(d.kv_heads * d.head_dim, rank, size)
            else:  # fewer key/value heads than ranks: each is replicated on size // kv_heads ranks
                head = rank // (size // d.kv_heads)
                kv_lo, kv_hi = head * d.head_dim, (head + 1) * d.head_dim
            q_shape, kv_shape = (d.heads * d.head_dim, *width), (d.kv_heads * d.head_dim, *width)
            nq, nkv = q_hi - q_lo, kv_hi - kv_lo
            return [
                _rows(f"{prefix}.self_attn.q_proj.{kind}", q_shape, q_lo, q_hi, 0),
                _rows(f"{prefix}.self_attn.k_proj.{kind}", kv_shape, kv_lo, kv_hi, nq),
                _rows(f"{prefix}.self_attn.v_proj.{kind}", kv_shape, kv_lo, kv_hi, nq + nkv),
            ]
        if proj == "gate_up_proj":
            lo, hi = _split(d.intermediate, rank, size)
            shape = (d.intermediate, d.hidden)
            return [
                _rows(f"{prefix}.mlp.gate_proj.{kind}", shape, lo, hi, 0),
                _rows(f"{prefix}.mlp.up_proj.{kind}", shape, lo, hi, hi - lo),
            ]
        if proj in ("o_proj", "down_proj"):  # row-parallel: the input columns are split
            rows, cols = (d.hidden, d.heads * d.head_dim) if proj == "o_proj" else (d.hidden, d.intermediate)
            if kind == "bias":
                return [_rows(f"{prefix}.{block}.{proj}.bias", (rows,), 0, rows, 0)]
            return [_rows(f"{prefix}.{block}.{proj}.weight", (rows, cols), 0, rows, 0, _split(cols, rank, size))]
    if vllm_name in ("model.embed_tokens.weight", "lm_head.weight"):
        name = "model.embed_tokens.weight" if vllm_name == "lm_head.weight" and d.tied else vllm_name
        padded = -(-d.vocab // VOCAB_PADDING) * VOCAB_PADDING
        lo, hi = _split(padded, rank, size)
        hi_real = min(hi, d.vocab)
        return [] if lo >= hi_real else [_rows(name, (d.vocab, d.hidden), lo, hi_real, 0)]  # padding rows: no noise
    if re.fullmatch(r"(model\.layers\.\d+\.(input|post_attention)_layernorm|model\.norm)\.weight", vllm_name):
        return [_rows(vllm_name, (d.hidden,), 0, d.hidden, 0)]  # replicated
    raise KeyError(f"no canonical mapping for vLLM parameter {vllm_name}")


def shard_noise(spec: PerturbationSpec, parts: list[Piece], shard_shape: tuple[int, ...]) -> np.ndarray:
    """Standard noise of one vLLM shard, assembled from the canonical streams (zeros where the
    filter leaves a parameter alone, and on vocabulary padding)."""
    if spec.strategy == "relative":  # its scale is of the canonical tensor, which no shard holds whole
        raise SpecError("the vllm engine cannot make relative noise; use --engine transformers")
    out = np.zeros(shard_shape, dtype=np.float32)
    out2 = out.reshape(shard_shape[0], -1)
    for p in parts:
        if not spec.filter.keeps(p.name):
            continue
        ncols = p.shape[1] if len(p.shape) > 1 else 1
        block = standard_noise(spec, p.name, p.shape, p.row_lo * ncols, p.row_hi * ncols).reshape(-1, ncols)
        out2[p.dest_row : p.dest_row + (p.row_hi - p.row_lo)] = block[:, p.col_lo : p.col_hi]
    return out
