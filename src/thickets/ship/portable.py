"""An exported folder that the transformers releases people serve with read as the same model, with how
to prompt it written beside the weights.

transformers 5 writes RoPE only as `rope_parameters` and names its tokenizer class `TokenizersBackend`;
transformers 4.5x (what much of the serving stack pins) reads neither: it loads the config silently
with rope_theta 10000 (another model) and refuses the tokenizer. So every export also carries the
4.x keys (`rope_theta`, `rope_scaling`, `rope_local_base_freq`, `torch_dtype`) and names the tokenizer
`PreTrainedTokenizerFast`, which both releases load from tokenizer.json, with 5.x's inputs (4.x's default
adds token_type_ids, which a Llama's generate() refuses). And a harness user should not
have to dig the prompt out of a run's config: `generation_config.json` holds the run's decoding (greedy,
max_new_tokens) and `thickets_prompt.json` the chat template choice, system prompt and stop strings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROMPT_NAME = "thickets_prompt.json"
#: what transformers 5 calls the fast tokenizer, and the name both 4.x and 5.x load it by
_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def _rope_keys(rope: dict[str, Any]) -> dict[str, Any]:
    """transformers 4.x's RoPE keys for one `rope_parameters` dict (theta, and scaling unless default)."""
    out: dict[str, Any] = {}
    if "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    if scaling.get("rope_type", "default") != "default":
        out["rope_scaling"] = scaling
    return out


def legacy_config_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The keys a transformers 4.x config.json holds for what this (5.x) one says, where they are missing."""
    extra: dict[str, Any] = {}
    rope = config.get("rope_parameters")
    if isinstance(rope, dict):
        if all(isinstance(v, dict) for v in rope.values()):  # per layer type (Gemma 3): full and sliding
            extra.update(_rope_keys(rope.get("full_attention", {})))
            local = rope.get("sliding_attention", {})
            if "rope_theta" in local:
                extra["rope_local_base_freq"] = local["rope_theta"]
        else:
            extra.update(_rope_keys(rope))
    if "dtype" in config:
        extra["torch_dtype"] = config["dtype"]
    return {k: v for k, v in extra.items() if k not in config}


def _update_json(path: Path, change: Any) -> None:
    if path.is_file():
        data = json.loads(path.read_text())
        changed = change(data)
        path.write_text(json.dumps(changed, indent=2, sort_keys=True) + "\n")


def make_portable(folder: Path, prompting: dict[str, Any] | None = None) -> None:
    """Make a saved model folder read the same under transformers 4.5x and 5.x, and, given the run's
    prompting (`prompting_of`), write its decoding into generation_config.json and the rest beside it.
    Runs on the temporary folder of an export, before it appears."""
    text_keys = ("text_config",)

    def config(data: dict[str, Any]) -> dict[str, Any]:
        data.update(legacy_config_keys(data))
        for key in text_keys:  # a vision-language model's language part
            if isinstance(data.get(key), dict):
                data[key].update(legacy_config_keys(data[key]))
        return data

    def tokenizer(data: dict[str, Any]) -> dict[str, Any]:
        name = data.get("tokenizer_class")
        if name in _TOKENIZER_CLASSES:
            data["tokenizer_class"] = _TOKENIZER_CLASSES[name]
            # 5.x's default inputs; 4.x's fast tokenizer would add token_type_ids, which generate() refuses
            data.setdefault("model_input_names", ["input_ids", "attention_mask"])
        return data

    _update_json(folder / "config.json", config)
    _update_json(folder / "tokenizer_config.json", tokenizer)
    if prompting is None:
        return

    def generation(data: dict[str, Any]) -> dict[str, Any]:
        for key in ("temperature", "top_p", "top_k"):  # greedy: sampling settings would only warn
            data.pop(key, None)
        data.update(do_sample=False, max_new_tokens=prompting["max_new_tokens"])
        return data

    if not (folder / "generation_config.json").is_file():
        (folder / "generation_config.json").write_text("{}\n")
    _update_json(folder / "generation_config.json", generation)
    (folder / PROMPT_NAME).write_text(json.dumps(prompting, indent=2) + "\n")


def prompting_of(
    chat_template: bool, system_prompt: str | None, stop: tuple[str, ...], max_new_tokens: int
) -> dict[str, Any]:
    """How the run asked its questions, for whoever prompts the export the same way."""
    return {
        "chat_template": chat_template,
        "system_prompt": system_prompt,
        "stop": list(stop),
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
        "how": (
            "the user's question as the user message of the tokenizer's chat template, after the system prompt "
            "as a system message when there is one, with the generation prompt added"
            if chat_template
            else "the system prompt, a blank line, then the question, as plain text with the tokenizer's own "
            "special tokens"
        )
        + "; generation stops at the first stop string (the text after it is dropped)",
    }
