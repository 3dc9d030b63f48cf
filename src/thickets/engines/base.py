"""What the search needs from an engine: generate greedily, perturb weights, restore them exactly."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from thickets.noise import PerturbationSpec


@runtime_checkable
class Engine(Protocol):
    tokenizer: object  # a Hugging Face tokenizer: prompts are rendered with its chat template

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, stop: Sequence[str] = (), *, add_special_tokens: bool = False
    ) -> list[str]:
        """Greedy completions, each cut right after the first stop string it contains. Prompts are
        tokenized by `prompt_token_ids`, so every engine feeds the model the same ids."""
        ...

    def generate_population(
        self,
        specs: Sequence[PerturbationSpec],
        prompts: Sequence[str],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        *,
        add_special_tokens: bool = False,
    ) -> list[list[str]]:
        """What generate() gives under each low-rank expert of `specs` ([expert][prompt]), the experts
        sharing batched forward passes over the unperturbed weights."""
        ...

    def perturb(self, spec: PerturbationSpec) -> None:
        """Move the weights to base + sigma * noise(spec). Only one perturbation at a time."""
        ...

    def restore(self) -> None:
        """Bring every weight back, bitwise, to the base."""
        ...

    def describe(self) -> dict[str, Any]:
        """Engine settings that change scores (engine, dtype, device, batch size), for the run record."""
        ...


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut a completion right after the earliest stop string, so every engine agrees on the text."""
    ends = [i + len(s) for s in stop if (i := text.find(s)) >= 0]
    return text[: min(ends)] if ends else text


def count_tokens(tokenizer: Any, texts: Iterable[str]) -> int:
    """Tokens in the texts, as the tokenizer counts generated text (no special tokens): the unit of a budget."""
    return sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)


def uses_chat_template(tokenizer: Any, chat_template: bool = True) -> bool:
    """Whether prompts are rendered with the tokenizer's chat template (asked for, and it has one)."""
    return bool(chat_template and getattr(tokenizer, "chat_template", None))


def render_prompt(
    tokenizer: Any, user_text: str, system_prompt: str | None = None, chat_template: bool = True, image: bool = False
) -> str:
    """The text the model sees: the tokenizer's chat template when it has one (and it is wanted). With
    `image`, the user message is an image part then the text, as vision-language chat templates take it
    (the template writes the model's image placeholder; the processor expands it)."""
    if uses_chat_template(tokenizer, chat_template):
        content: Any = [{"type": "image"}, {"type": "text", "text": user_text}] if image else user_text
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": content}
        ]
        text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text
    return (system_prompt + "\n\n" if system_prompt else "") + user_text


def prompt_token_ids(tokenizer: Any, prompts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
    """The ids a model is fed for rendered prompts, by every engine.

    A chat template's text already holds whatever special tokens the model expects (a BOS among
    them), so it is tokenized without adding any, as transformers' `apply_chat_template` does; a
    raw prompt gets the tokenizer's own (a base model's BOS), as plain `tokenizer(text)` does.
    """
    return [list(ids) for ids in tokenizer(list(prompts), add_special_tokens=add_special_tokens).input_ids]
