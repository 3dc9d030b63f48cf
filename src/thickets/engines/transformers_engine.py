"""The transformers engine: batched greedy generation on CPU or GPU, in-place perturbation, exact restore."""

from __future__ import annotations

from typing import Sequence

import torch

from ..noise import PerturbationSpec, add_noise_, standard_noise
from .base import cut_at_stop


def canonical_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Hugging Face parameter names -> tensors, each shared (tied) tensor once, under its first name."""
    return dict(model.named_parameters(remove_duplicate=True))


class TransformersEngine:
    """Keeps a copy of the base weights and restores by copying it back: exact in any dtype."""

    def __init__(self, model, tokenizer, *, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.params = canonical_parameters(model)
        self._base = {n: p.detach().clone() for n, p in self.params.items()}
        self._touched: list[str] = []
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    # -- weights -------------------------------------------------------------------------------

    def perturb(self, spec: PerturbationSpec) -> None:
        if self._touched:
            raise RuntimeError("perturb() called twice without restore()")
        names = [n for n in self.params if spec.filter.keeps(n)]
        self._touched = names
        fast = [(n, self.params[n]) for n in names if self.params[n].dtype == torch.float32 and self.params[n].device.type == "cpu"]
        with torch.no_grad():
            add_noise_(spec, [(n, p.detach().numpy()) for n, p in fast])
            for n in names:
                p = self.params[n]
                if p.dtype == torch.float32 and p.device.type == "cpu":
                    continue
                eps = torch.from_numpy(standard_noise(spec, n, tuple(p.shape))).to(p.device)
                p.copy_((p.float() + spec.sigma * eps).to(p.dtype))

    def restore(self) -> None:
        with torch.no_grad():
            for n in self._touched:
                self.params[n].copy_(self._base[n])
        self._touched = []

    # -- generation ----------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        tok = self.tokenizer
        lengths = [len(tok(p, add_special_tokens=False).input_ids) for p in prompts]
        # bucket by length (longest first) so padding is small; results go back in input order
        order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
        out: list[str] = [""] * len(prompts)
        device = next(self.model.parameters()).device
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo : lo + self.batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            gen = self.model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                stop_strings=list(stop) or None,
                tokenizer=tok if stop else None,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, text in zip(idx, texts):
                out[i] = cut_at_stop(text, stop)
        return out

    def describe(self) -> dict:
        p = next(iter(self.params.values()))
        return {"engine": "transformers", "dtype": str(p.dtype).removeprefix("torch."), "device": p.device.type, "batch_size": self.batch_size}
