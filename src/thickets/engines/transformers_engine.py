"""The transformers engine: batched greedy generation on CPU or GPU, in-place perturbation, exact restore.

Greedy generation goes through `fast_decode` (a hand-written static-cache decoder over the model's own
weights) for Llama-family and Qwen2 models, through `hf_decode` (our decode loop over transformers'
own forward) for every other decoder-only model, both token for token what `generate` gives, and
through transformers' `generate` when built with `fast=False` or for a model neither can take.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy
import torch

from thickets.engines import fast_decode, hf_decode
from thickets.engines.base import cut_at_stop, prompt_token_ids
from thickets.engines.device_noise import perturbed_into_
from thickets.engines.population import PopulationBatch
from thickets.errors import ThicketsError
from thickets.noise import PerturbationSpec, add_noise_, tensor_scale, unmerged
from thickets.seeds import derive_seed


def canonical_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Hugging Face parameter names -> tensors, each shared (tied) tensor once, under its first name."""
    return dict(model.named_parameters(remove_duplicate=True))


@contextlib.contextmanager
def neutral_generation_config(model: Any, tokenizer: Any) -> Iterator[None]:
    """Plain greedy decoding, whatever the model ships: `generate` fills every setting a caller leaves
    unset from `model.generation_config`, so a shipped repetition_penalty (Qwen2.5-Instruct has one),
    no_repeat_ngram_size or suppressed tokens would change the scores. Only the token ids it ends,
    starts and pads with are kept."""
    from transformers import GenerationConfig

    shipped = model.generation_config
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]  # its __init__ is unannotated
        eos_token_id=shipped.eos_token_id,
        bos_token_id=shipped.bos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else shipped.pad_token_id,
        decoder_start_token_id=shipped.decoder_start_token_id,
    )
    try:
        yield
    finally:
        model.generation_config = shipped


@torch.inference_mode()
def hf_generate_greedy(model: Any, tokenizer: Any, enc: Any, max_new_tokens: int, stop: Sequence[str] = ()) -> Any:
    """transformers' own greedy `generate` under the neutral config: the reference our fast decoder must
    match, and the path for architectures it does not cover. Returns only the new tokens."""
    with neutral_generation_config(model, tokenizer):
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            stop_strings=list(stop) or None,
            tokenizer=tokenizer if stop else None,
        )
    return out[:, enc["input_ids"].shape[1] :]


class TransformersEngine:
    """Keeps the base weights untouched and swaps a perturbed working copy in: restore is exact in
    any dtype and costs nothing.

    The base tensors are the ones the model was loaded with (often pages of the safetensors file,
    mapped by transformers), never written. The first perturb() allocates one working tensor per
    parameter; every perturb() writes base + sigma * noise into it in one pass and points the
    model's parameters at it; restore() points them back at the base. Two copies of the weights in
    memory, never three, and no copy-back pass. A low-rank expert (noise version 3 on) writes nothing:
    its adapter is applied unmerged through forward hooks, which restore() removes.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 32,
        fast: bool = True,
        processor: Any = None,
        compiled: bool = False,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        #: a vision-language model's processor (images to pixel values, image tokens in the prompt), else None
        self.processor = processor
        #: which greedy decoder this model takes: ours where they apply, else transformers' generate (always, for
        #: a vision-language model: the image enters at prefill)
        self.decoder = (
            ("fast_decode" if fast_decode.supports(model) else "hf_decode" if hf_decode.supports(model) else "generate")
            if fast and processor is None
            else "generate"
        )
        self.fast = self.decoder != "generate"
        if compiled and self.decoder != "fast_decode":
            raise ThicketsError(
                f"a compiled decode step is for {' and '.join(fast_decode.SUPPORTED_ARCHITECTURES)} text models; "
                f"{type(model).__name__} decodes through {self.decoder}, uncompiled"
            )
        if compiled:  # a Ray worker, or an engine built from Python, meets what preflight checked for a search
            refusal = fast_decode.compile_refusal(next(model.parameters()).device.type)
            if refusal:
                raise ThicketsError(refusal)
        #: decode steps through torch.compile (fast_decode.generate_greedy's `compiled`)
        self.compiled = compiled
        self.params = canonical_parameters(model)
        self._base = {n: p.data for n, p in self.params.items()}
        self._work: dict[str, torch.Tensor] = {}
        self._touched: list[str] = []
        self._adapter: PopulationBatch | None = None  # a low-rank expert applied unmerged
        self._scales: dict[str, float] | None = None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    # -- weights -------------------------------------------------------------------------------

    def tensor_scales(self) -> dict[str, float]:
        """The relative strategy's scale of every base tensor (noise.tensor_scale), made once per engine on
        the host: a tensor on a GPU is copied over once, one at a time, and upcast exactly to float32."""
        if self._scales is None:
            self._scales = {
                n: tensor_scale(t.detach().to(device="cpu", dtype=torch.float32).numpy()) for n, t in self._base.items()
            }
        return self._scales

    def perturb(self, spec: PerturbationSpec, *, merge: bool = False) -> None:
        """The expert `spec` defines: base + sigma * noise written into the working copy, or, for a low-rank
        expert of noise version 3 on, its adapter applied unmerged (population.py; nothing is copied).
        `merge=True` writes the merged weights in any case (an export of the low-rank expert's weights)."""
        if self._touched or self._adapter is not None:
            raise RuntimeError("perturb() called twice without restore()")
        if unmerged(spec) and not merge:
            self._adapter = PopulationBatch(self.model, self.params, [spec])
            return
        scales = self.tensor_scales() if spec.strategy == "relative" else {}
        names = self._moved(spec, scales)
        for n in names:
            if n not in self._work:
                self._work[n] = torch.empty_like(self._base[n])
        with torch.no_grad():
            if spec.version == 1:  # release 0.1's stream, made on the host
                numpy_ok = [
                    n for n in names if self._base[n].dtype == torch.float32 and self._base[n].device.type == "cpu"
                ]
                add_noise_(
                    spec,
                    [(n, self._work[n].numpy()) for n in numpy_ok],
                    base={n: self._base[n].numpy() for n in numpy_ok},
                )
                on_device = [n for n in names if n not in numpy_ok]
            else:
                on_device = names
            for n in on_device:
                perturbed_into_(self._work[n], self._base[n], spec, n, scales.get(n))
            for n in names:
                self.params[n].data = self._work[n]
        self._touched = names

    def _moved(self, spec: PerturbationSpec, scales: dict[str, float]) -> list[str]:
        """The parameters `spec` moves: those its filter keeps, matrices only for a low-rank expert, and no
        relative tensor of scale 0 (it gets no noise: it stays the base)."""
        return [
            n
            for n in self.params
            if spec.filter.keeps(n) and (spec.strategy != "lowrank" or self._base[n].dim() >= 2) and scales.get(n) != 0
        ]

    def _deltas(self, specs: Sequence[PerturbationSpec]) -> Iterator[tuple[str, Iterator[tuple[int, torch.Tensor]]]]:
        """Per parameter any spec moves: (name, its deltas), each delta (i, spec i's float32 delta, the values
        perturb() adds, merged for low-rank experts) made on the weight's device into one buffer that the
        next delta of the same parameter overwrites: a tensor's K deltas are never held at once."""
        relative = any(spec.strategy == "relative" for spec in specs)
        scales = self.tensor_scales() if relative else {}
        moved = [set(self._moved(spec, scales if spec.strategy == "relative" else {})) for spec in specs]

        def each(n: str, which: list[int]) -> Iterator[tuple[int, torch.Tensor]]:
            base = self._base[n]
            zero = torch.zeros(base.shape, dtype=torch.float32, device=base.device)
            delta = torch.empty_like(zero)
            for i in which:
                perturbed_into_(delta, zero, specs[i], n, scales.get(n))  # 0 + delta: the delta, exactly
                yield i, delta

        for n in self.params:
            which = [i for i, m in enumerate(moved) if n in m]
            if which:
                yield n, each(n, which)

    @torch.no_grad()
    def delta_gram(self, specs: Sequence[PerturbationSpec]) -> numpy.ndarray:
        """G[i, j] = <delta_i, delta_j> over every parameter, in float64: how the experts' perturbations align
        (CoRP's compatibility), in one pass over the weights (a tensor's K deltas held at once, as float64)."""
        gram = numpy.zeros((len(specs), len(specs)))
        for _, deltas in self._deltas(specs):
            pairs = [(i, d.reshape(-1).double()) for i, d in deltas]  # .double() copies: the buffer moves on
            idx = [i for i, _ in pairs]
            flat = torch.stack([row for _, row in pairs])
            gram[numpy.ix_(idx, idx)] += (flat @ flat.T).cpu().numpy()
        return gram

    def perturb_sum(self, terms: Sequence[tuple[PerturbationSpec, float]]) -> None:
        """base + sum_i w_i * delta_i, one weighted sum of several experts' perturbations (a merge): each
        parameter's deltas (the float32 values perturb() adds, merged for low-rank experts), each times its
        weight in float32, summed in the order of `terms`, added to the base and rounded once, tensor by
        tensor; restore() as ever."""
        if self._touched or self._adapter is not None:
            raise RuntimeError("perturb_sum() while perturbed")
        names = []
        with torch.no_grad():
            for n, deltas in self._deltas([spec for spec, _ in terms]):
                base = self._base[n]
                acc = torch.zeros(base.shape, dtype=torch.float32, device=base.device)
                for i, delta in deltas:
                    acc.add_(delta.mul_(terms[i][1]))  # two roundings, never fused: the same bits anywhere
                names.append(n)
                if n not in self._work:
                    self._work[n] = torch.empty_like(base)
                self._work[n].copy_(base.float() + acc)  # a new sum: .float() of a float32 base is the base itself
                self.params[n].data = self._work[n]
        self._touched = names

    def own_base(self) -> list[tuple[str, numpy.ndarray]]:
        """Hand the base weights over to ES, once: writable float32 arrays this engine owns (copied
        from what was loaded, which may be the model file's pages). ES moves them between
        iterations, and every later perturb() and restore() is relative to where they are. A second
        call is refused: its caller would take moved weights for the loaded ones."""
        if self._touched or self._adapter is not None:
            raise RuntimeError("own_base() while perturbed")
        if getattr(self, "_owned", False):
            raise RuntimeError("the base weights were already handed to ES; load a fresh engine")
        for n, t in self._base.items():
            if t.dtype != torch.float32 or t.device.type != "cpu":
                raise ValueError(f"ES needs float32 weights on the CPU; {n} is {t.dtype} on {t.device}")
            self._base[n] = t.clone()
            self.params[n].data = self._base[n]
        self._scales = None  # of the weights as loaded; ES moves them
        self._owned = True
        return [(n, t.numpy()) for n, t in self._base.items()]

    def hold(self) -> dict[str, torch.Tensor]:
        """Hand the current perturbation's weights to the caller, who keeps them (a server's working copy
        of an expert): the next perturb() writes into new buffers, and use() swaps these back in without
        making the noise again. The weights stay perturbed until restore()."""
        if self._adapter is not None:
            raise ValueError("a low-rank expert is applied unmerged: it has no weights to hold")
        return {n: self._work.pop(n) for n in self._touched}

    def use(self, held: dict[str, torch.Tensor]) -> None:
        """Swap in weights hold() gave out (no copy); restore() brings the base back, as after perturb()."""
        if self._touched or self._adapter is not None:
            raise RuntimeError("use() called while perturbed")
        for n, t in held.items():
            self.params[n].data = t
        self._touched = list(held)

    def restore(self) -> None:
        if self._adapter is not None:
            self._adapter.close()
            self._adapter = None
        for n in self._touched:
            self.params[n].data = self._base[n]
        self._touched = []

    # -- generation ----------------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = (), *, add_special_tokens: bool = False
    ) -> list[str]:
        """Greedy completions in the order of `prompts`, batch_size at a time, each batch padded to its
        longest prompt (callers decide which prompts share a batch: see search.evaluate)."""
        return self._batches(prompts, max_new_tokens, stop, add_special_tokens)[0]

    @torch.inference_mode()
    def generate_images(
        self, prompts: Sequence[str], images: Sequence[bytes], max_new_tokens: int, stop: Sequence[str] = ()
    ) -> list[str]:
        """Greedy completions of rendered prompts that each hold one image placeholder, with their images
        (encoded bytes), through the processor and transformers' generate, batch_size at a time in the given
        order. The prompts' text already holds the chat template's special tokens."""
        if self.processor is None:
            raise ThicketsError(f"{type(self.model).__name__} is not a vision-language model: it cannot see images")
        from PIL import Image

        tok = self.tokenizer
        device = next(self.model.parameters()).device
        out: list[str] = []
        for lo in range(0, len(prompts), self.batch_size):
            pictures = [Image.open(io.BytesIO(b)).convert("RGB") for b in images[lo : lo + self.batch_size]]
            enc = self.processor(
                text=list(prompts[lo : lo + self.batch_size]),
                images=pictures,
                padding=True,
                add_special_tokens=False,
                return_tensors="pt",
            ).to(device)
            if "pixel_values" in enc:
                enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
            new = hf_generate_greedy(self.model, tok, enc, max_new_tokens, stop)
            out += [cut_at_stop(t, stop) for t in tok.batch_decode(new, skip_special_tokens=True)]
        return out

    def generate_population(
        self,
        specs: Sequence[PerturbationSpec],
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        *,
        add_special_tokens: bool = False,
    ) -> list[list[str]]:
        """Every expert's greedy completions, out[expert][prompt]: each batch of prompts (batch_size,
        longest first, as generate() cuts them) is one batch of len(specs) x prompts rows through the
        engine's decoder, every row adding its own expert's low-rank products to the shared base ones."""
        if self._touched or self._adapter is not None:
            raise RuntimeError("generate_population() while perturbed")
        if self.decoder == "generate":
            raise ValueError(f"{type(self.model).__name__} takes transformers' generate, which cannot batch experts")
        with PopulationBatch(self.model, self.params, specs) as population:
            return self._batches(prompts, max_new_tokens, stop, add_special_tokens, len(specs), population.set_rows)

    @torch.inference_mode()
    def sample(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        *,
        samples: int,
        temperature: float,
        seed: int,
        add_special_tokens: bool = False,
    ) -> list[list[str]]:
        """`samples` completions of each prompt at `temperature` (pure sampling: no top-k, no top-p),
        out[prompt][sample]. transformers' own sampling; batch b draws from torch's generator seeded with
        derive_seed(seed, b), so the same call gives the same texts in any process (distillation's traces
        resume bitwise)."""
        tok = self.tokenizer
        ids = prompt_token_ids(tok, prompts, add_special_tokens)
        out: list[list[str]] = []
        device = next(self.model.parameters()).device
        per_batch = max(1, self.batch_size // samples)
        for b, lo in enumerate(range(0, len(ids), per_batch)):
            enc = tok.pad({"input_ids": ids[lo : lo + per_batch]}, padding=True, return_tensors="pt").to(device)
            torch.manual_seed(derive_seed(b"thickets-sample", seed, b))
            with neutral_generation_config(self.model, tok):
                new = self.model.generate(
                    **enc,
                    do_sample=True,
                    temperature=temperature,
                    top_k=0,
                    top_p=1.0,
                    num_return_sequences=samples,
                    max_new_tokens=max_new_tokens,
                    stop_strings=list(stop) or None,
                    tokenizer=tok if stop else None,
                )[:, enc["input_ids"].shape[1] :]
            texts = [cut_at_stop(t, stop) for t in tok.batch_decode(new, skip_special_tokens=True)]
            out += [texts[i * samples : (i + 1) * samples] for i in range(len(texts) // samples)]
        return out

    @torch.inference_mode()
    def _batches(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str],
        add_special_tokens: bool,
        experts: int = 1,
        on_rows: Callable[[torch.Tensor], None] | None = None,
    ) -> list[list[str]]:
        """Longest prompts first, batch_size prompts a batch, each prompt once per expert (expert-major
        rows, which `on_rows` is told); results go back in input order, out[expert][prompt]."""
        tok = self.tokenizer
        ids = prompt_token_ids(tok, prompts, add_special_tokens)
        order = sorted(range(len(prompts)), key=lambda i: (-len(ids[i]), i))
        out = [[""] * len(prompts) for _ in range(experts)]
        device = next(self.model.parameters()).device
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo : lo + self.batch_size]
            rows = [ids[i] for _ in range(experts) for i in idx]
            enc = tok.pad({"input_ids": rows}, padding=True, return_tensors="pt").to(device)
            if self.fast:
                groups = torch.arange(experts, device=device).repeat_interleave(len(idx))
                new = (fast_decode if self.decoder == "fast_decode" else hf_decode).generate_greedy(
                    self.model,
                    enc["input_ids"],
                    enc["attention_mask"],
                    max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    tokenizer=tok,
                    stop_strings=stop,
                    groups=groups,
                    on_rows=on_rows,
                    **({"compiled": True} if self.compiled else {}),
                )
            else:
                new = hf_generate_greedy(self.model, tok, enc, max_new_tokens, stop)
            texts = tok.batch_decode(new, skip_special_tokens=True)
            for e in range(experts):
                for j, i in enumerate(idx):
                    out[e][i] = cut_at_stop(texts[e * len(idx) + j], stop)
        return out

    def describe(self) -> dict[str, Any]:
        p = next(iter(self.params.values()))
        return {
            "engine": "transformers",
            "dtype": str(p.dtype).removeprefix("torch."),
            "device": p.device.type,
            "batch_size": self.batch_size,
            "fast_decode": self.fast,
            "decoder": self.decoder,
        }
