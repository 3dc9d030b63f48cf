"""Engines generate text from a model whose weights can be perturbed and restored exactly.

`ENGINES` maps an engine's name (the config's `engine`) to its factory; a factory imports its
engine when called, so choosing the transformers engine never imports vLLM and the reverse.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from thickets.engines.base import (
    Engine,
    count_tokens,
    cut_at_stop,
    prompt_token_ids,
    render_prompt,
    uses_chat_template,
)
from thickets.errors import ThicketsError
from thickets.models import ModelIdentity, load, load_processor, local_folder, resolve

#: (model, dtype, device, batch size, compiled decode step)
Factory = Callable[[str, str, str, int, bool], tuple[Engine, ModelIdentity]]


def _transformers(model: str, dtype: str, device: str, batch_size: int, compiled: bool) -> tuple[Engine, ModelIdentity]:
    from thickets.engines.transformers_engine import TransformersEngine

    m, tok, identity = load(model, dtype=dtype, device=device)
    processor = load_processor(identity)
    return TransformersEngine(m, tok, batch_size=batch_size, processor=processor, compiled=compiled), identity


def _vllm(model: str, dtype: str, device: str, batch_size: int, compiled: bool) -> tuple[Engine, ModelIdentity]:
    if compiled:
        raise ThicketsError("--compile is for the transformers engine; vLLM compiles and graph-captures its own step")
    if importlib.util.find_spec("vllm") is None:
        raise ThicketsError("the vLLM engine needs vLLM and a GPU: pip install 'thickets[vllm]'")
    from thickets.engines.experimental.vllm_engine import VLLMEngine

    identity = resolve(model)
    return VLLMEngine(str(local_folder(identity)), dtype=dtype, batch_size=batch_size), identity


FACTORIES: dict[str, Factory] = {"transformers": _transformers, "vllm": _vllm}
ENGINES = tuple(FACTORIES)


def load_engine(
    model: str,
    *,
    engine: str = "transformers",
    dtype: str = "float32",
    device: str = "cpu",
    batch_size: int = 32,
    compiled: bool = False,
) -> tuple[Engine, ModelIdentity]:
    """(engine, model identity) for a model name or path; `compiled`: decode steps through torch.compile
    (fast_decode), for the models the hand-written decoder takes."""
    if engine not in FACTORIES:
        raise ThicketsError(f"unknown engine {engine!r}; available: {', '.join(ENGINES)}")
    return FACTORIES[engine](model, dtype, device, batch_size, compiled)


__all__ = [
    "ENGINES",
    "FACTORIES",
    "Engine",
    "count_tokens",
    "cut_at_stop",
    "load_engine",
    "prompt_token_ids",
    "render_prompt",
    "uses_chat_template",
]
