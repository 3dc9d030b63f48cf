"""What the tests share: test tasks, a tiny model with a tokenizer of its own, and the command line
in a subprocess. Importing this module registers the test tasks, so a subprocess gets them with
THICKETS_PLUGINS=tests.support (see `cli_env`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

from thickets.tasks import Example, Score, Task, register_task

REPO = Path(__file__).resolve().parents[1]
#: the command line in a subprocess: `[*CLI, "search", ...]`, run with `env=cli_env()`
CLI = [sys.executable, "-m", "thickets.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a `thickets` subprocess that knows the test tasks."""
    return {**os.environ, "PYTHONPATH": str(REPO), "THICKETS_PLUGINS": "tests.support", **extra}


class ToyTask(Task):
    """Reward depends on the first character a model writes, so perturbed tiny models score differently."""

    name = "toy"
    description = "test task: is the first character of the answer in the first half of the alphabet"
    stop = ("\n",)

    def examples(self, seed: int) -> Iterator[Example]:
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

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        text = completion.strip()
        if not text:
            return None, None
        return text[0].lower(), text[0].lower()


class SmallTask(ToyTask):
    """Only five examples exist: splits beyond that must be refused."""

    name = "small"

    def examples(self, seed: int) -> Iterator[Example]:
        for i in range(5):
            yield Example(id=f"small:{i}", prompt=f"Item {i}.", data={"i": i})


class KeylessTask(ToyTask):
    """Prompts only, and no answer to vote on: a reward scores it, and nothing can judge a trace."""

    name = "keyless"
    needs_reward = True

    def score(self, example: Example, completion: str) -> Score:
        return Score(None, None, 0.0, False)

    def extract(self, completion: str) -> tuple[str | None, str | None]:
        return None, None


register_task("toy", ToyTask, ToyTask.description)
register_task("keyless", KeylessTask, KeylessTask.__doc__ or "")
register_task("small", SmallTask, SmallTask.__doc__ or "")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_tokenizer():
    """A character tokenizer: one token per printable ASCII character (and newline, tab), four special
    tokens, a ChatML template. Every text encodes (other characters become <unk>), a random model
    writes readable characters, the vocabulary is tiny, and no model package is needed."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n", "\t"]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # no merges: one token a character
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tiny_model(out: Path, family: str = "llama", tokenizer=None) -> Path:
    """A tiny random model (seeded): a Llama with tied embeddings (like SmolLM2), or a Qwen2 with an
    untied output head and q/k/v biases that matter; with the tiny tokenizer unless one is given."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if (out / "config.json").exists():
        return out
    tok = tokenizer or make_tiny_tokenizer()
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


def search_argv(
    model: Path | str,
    run_dir: Path | str,
    *extra: str,
    task: str = "toy",
    population: int | str = 2,
    sigma: str = "0.05",
    val_size: int | str = 3,
    max_new_tokens: int | str = 3,
) -> list[str]:
    """`thickets search` on a tiny model with small sizes: what most command-line tests run."""
    return [
        "search",
        "--model",
        str(model),
        "--task",
        task,
        "--population",
        str(population),
        "--sigma",
        sigma,
        "--val-size",
        str(val_size),
        "--max-new-tokens",
        str(max_new_tokens),
        "--run-dir",
        str(run_dir),
        *extra,
    ]
