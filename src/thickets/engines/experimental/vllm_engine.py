"""The vLLM engine (experimental: not yet run on a GPU by this project's CI or sessions).

Perturbation happens inside vLLM's workers through its worker-extension mechanism
(`worker_extension_cls` and `LLM.collective_rpc`): each worker keeps a copy of its base weight
shards on the GPU, writes base + sigma * noise into the live parameters, and copies the base
back to restore (exact). The noise of each shard comes from the canonical Hugging Face
parameters through `vllm_layout`, so a seed gives the same model here as in the transformers
engine. Prefix caching is off (the weights change between candidates); decoding is greedy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from thickets.engines.base import cut_at_stop, prompt_token_ids
from thickets.engines.experimental.vllm_layout import Dims, pieces, shard_noise
from thickets.errors import ThicketsError
from thickets.noise import ParamFilter, PerturbationSpec


class ThicketsWorkerExtension:
    """Mixed into each vLLM worker; called through LLM.collective_rpc."""

    model_runner: Any  # the vLLM worker's, which this class is mixed into
    model_config: Any

    def _thickets_state(self) -> dict[str, Any]:
        import torch
        from transformers import AutoConfig

        if getattr(self, "_thickets", None) is None:
            from vllm.distributed import parallel_state as ps

            model = self.model_runner.model
            rank, size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
            dims = Dims.of(AutoConfig.from_pretrained(self.model_config.model))
            params = dict(model.named_parameters())
            self._thickets: dict[str, Any] = {
                "params": params,
                "base": {n: p.detach().clone() for n, p in params.items()},
                "pieces": {n: pieces(n, dims, rank, size) for n in params},
            }
            torch.cuda.empty_cache()
        return self._thickets

    def thickets_perturb(
        self, seed: int, sigma: float, strategy: str, include: Sequence[str], exclude: Sequence[str], version: int
    ) -> None:
        import torch

        state = self._thickets_state()
        spec = PerturbationSpec(seed, sigma, strategy, ParamFilter(tuple(include), tuple(exclude)), version)
        with torch.no_grad():
            for name, p in state["params"].items():
                eps = torch.from_numpy(shard_noise(spec, state["pieces"][name], tuple(p.shape))).to(p.device)
                p.copy_((state["base"][name].float() + sigma * eps).to(p.dtype))

    def thickets_restore(self) -> None:
        import torch

        state = self._thickets_state()
        with torch.no_grad():
            for name, p in state["params"].items():
                p.copy_(state["base"][name])


def vllm_requests(tokenizer: Any, prompts: Sequence[str], add_special_tokens: bool) -> list[dict[str, list[int]]]:
    """Token ids, not strings: vLLM would tokenize a string with special tokens, so a chat template
    that already holds the BOS text would get a second BOS. The ids are the transformers engine's."""
    return [{"prompt_token_ids": ids} for ids in prompt_token_ids(tokenizer, prompts, add_special_tokens)]


class VLLMEngine:
    """Engine protocol on vLLM: generate, perturb, restore."""

    def __init__(
        self,
        model_folder: str,
        *,
        dtype: str = "float32",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        batch_size: int = 256,
    ):
        from vllm import LLM

        self.llm = LLM(
            model=model_folder,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=False,
            worker_extension_cls="thickets.engines.experimental.vllm_engine.ThicketsWorkerExtension",
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.dtype, self.tp, self.batch_size = dtype, tensor_parallel_size, batch_size
        self._perturbed = False

    def perturb(self, spec: PerturbationSpec) -> None:
        if self._perturbed:
            raise RuntimeError("perturb() called twice without restore()")
        self.llm.collective_rpc(
            "thickets_perturb",
            args=(
                spec.seed,
                spec.sigma,
                spec.strategy,
                list(spec.filter.include),
                list(spec.filter.exclude),
                spec.version,
            ),
        )
        self._perturbed = True

    def generate_population(
        self,
        specs: Sequence[PerturbationSpec],
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        *,
        add_special_tokens: bool = False,
    ) -> list[list[str]]:
        raise ThicketsError("the vllm engine cannot batch low-rank experts yet; use --engine transformers")

    def restore(self) -> None:
        self.llm.collective_rpc("thickets_restore")
        self._perturbed = False

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = (), *, add_special_tokens: bool = False
    ) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=0.0, max_tokens=max_new_tokens, stop=list(stop) or None, include_stop_str_in_output=True
        )
        outs = self.llm.generate(vllm_requests(self.tokenizer, prompts, add_special_tokens), params, use_tqdm=False)
        return [cut_at_stop(o.outputs[0].text, stop) for o in outs]

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "vllm",
            "dtype": self.dtype,
            "device": "cuda",
            "tensor_parallel_size": self.tp,
            "experimental": True,
        }
