"""Engines generate text from a model whose weights can be perturbed and restored exactly."""

from __future__ import annotations

from thickets.engines.base import Engine, count_tokens, cut_at_stop, prompt_token_ids, render_prompt, uses_chat_template

ENGINES = ("transformers", "vllm")


def load_engine(model: str, *, engine: str = "transformers", dtype: str = "float32", device: str = "cpu",
                batch_size: int = 32):
    """(engine, model identity) for a model name or path."""
    from thickets.errors import ThicketsError
    from thickets.models import load

    if engine not in ENGINES:
        raise ThicketsError(f"unknown engine {engine!r}; available: {', '.join(ENGINES)}")
    if engine == "vllm":
        from thickets.models import local_folder, resolve

        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ThicketsError("the vLLM engine needs vLLM and a GPU: pip install 'thickets[vllm]'")
        from thickets.engines.experimental.vllm_engine import VLLMEngine

        identity = resolve(model)
        return VLLMEngine(str(local_folder(identity)), dtype=dtype, batch_size=batch_size), identity
    from thickets.engines.transformers_engine import TransformersEngine

    m, tok, identity = load(model, dtype=dtype, device=device)
    return TransformersEngine(m, tok, batch_size=batch_size), identity


__all__ = ["Engine", "ENGINES", "count_tokens", "cut_at_stop", "load_engine", "prompt_token_ids", "render_prompt",
           "uses_chat_template"]
