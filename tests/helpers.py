"""Test helpers usable from subprocesses too (see run_cli.py)."""

from __future__ import annotations

from pathlib import Path

from thickets.tasks import register_task
from thickets.tasks.base import Example, Score


class ToyTask:
    """Reward depends on the first character a model writes, so perturbed tiny models score differently."""

    name = "toy"
    description = "test task: is the first character of the answer in the first half of the alphabet"
    stop = ("\n",)
    system_prompt = None

    def examples(self, seed: int):
        i = 0
        while True:
            yield Example(id=f"toy:{seed}:{i}", prompt=f"Write something about item {seed}-{i}.", data={"i": i})
            i += 1

    def score(self, example: Example, completion: str) -> Score:
        text = completion.strip()
        if not text:
            return Score(None, None, 0.0, False)
        ch = text[0].lower()
        good = "a" <= ch <= "m"
        return Score(ch, ch, 1.0 if good else 0.1, good)


class SmallTask(ToyTask):
    """Only five examples exist: splits beyond that must be refused."""

    name = "small"

    def examples(self, seed: int):
        for i in range(5):
            yield Example(id=f"small:{i}", prompt=f"Item {i}.", data={"i": i})


def register_toy_task() -> None:
    register_task("toy", ToyTask, ToyTask.description)
    register_task("small", SmallTask, SmallTask.__doc__)


def make_tiny_model(out: Path, family: str = "llama") -> Path:
    """A tiny random model with the embedded model's tokenizer: a Llama with tied embeddings (like
    SmolLM2), or a Qwen2 with an untied output head and q/k/v biases that matter."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from thickets.models import embedded_gguf_path

    if (out / "config.json").exists():
        return out
    gguf = embedded_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=family == "llama",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0 if family == "llama" else 1)
    model = model_cls(config)
    with torch.no_grad():  # larger weights than the default init, so small noise changes outputs
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.mul_(5.0)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.5)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
