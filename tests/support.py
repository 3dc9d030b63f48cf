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
    config = config_cls(**tiny_text(tok), tie_word_embeddings=family == "llama")
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


#: a chat template that places each image part where the message puts it (as the models' own templates do)
VLM_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_text(tok) -> dict:
    """The size of every tiny language model the tests build (a decoder of 2 layers, width 32), with the
    tiny tokenizer's vocabulary and special tokens."""
    return dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


TINY_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=28, patch_size=14
)


def make_tiny_vlm(out: Path, family: str = "llava") -> Path:
    """A tiny random vision-language model with a processor built here (nothing downloaded): LLaVA (a CLIP
    vision tower, a projector, a Llama) or Idefics3 (SmolVLM's architecture), saved as a model folder."""
    import torch
    import transformers

    if (out / "config.json").exists():
        return out
    tok = make_tiny_tokenizer()
    if family == "llava":
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
        image_processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        )
        processor = transformers.LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            patch_size=14,
            vision_feature_select_strategy="default",
            image_token="<image>",
            num_additional_image_tokens=1,
            chat_template=VLM_CHAT_TEMPLATE,
        )
        vision = transformers.CLIPVisionConfig(**TINY_VISION)
        extra = dict(image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default")
        config_cls, model_cls = transformers.LlavaConfig, transformers.LlavaForConditionalGeneration
    elif family == "qwen2_vl":
        return _make_tiny_qwen2_vl(out, tok)
    else:
        tok.add_special_tokens({"additional_special_tokens": ["<image>", "<fake_token_around_image>", "<global-img>"]})
        image_processor = transformers.Idefics3ImageProcessor(
            size={"longest_edge": 56}, max_image_size={"longest_edge": 28}, do_image_splitting=False
        )
        processor = transformers.Idefics3Processor(
            image_processor=image_processor, tokenizer=tok, image_seq_len=1, chat_template=VLM_CHAT_TEMPLATE
        )
        vision = transformers.Idefics3VisionConfig(**TINY_VISION)
        extra = dict(image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2)
        config_cls, model_cls = transformers.Idefics3Config, transformers.Idefics3ForConditionalGeneration
    text = transformers.LlamaConfig(**tiny_text(tok))
    config = config_cls(vision_config=vision, text_config=text, **extra)
    torch.manual_seed(0)
    model = model_cls(config)
    with torch.no_grad():  # larger weights than the default init, so small noise changes outputs
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(5.0)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def fill_weights(model, seed: int, std: float = 0.1) -> None:
    """Every matrix drawn from torch's generator by name order, so a test's model does not depend on how a
    transformers release initialises it (norms and biases keep their constant init)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * std)


QWEN2_VL_CHAT_TEMPLATE = VLM_CHAT_TEMPLATE.replace("<image>\n", "<|vision_start|><|image_pad|><|vision_end|>")


def _make_tiny_qwen2_vl(out: Path, tok) -> Path:
    """Qwen2-VL (a vision transformer with 2x2 patch merging, M-RoPE over time, height and width): the model
    with its tokenizer and image processor. Its full processor also needs a video processor, which needs
    torchvision, which this machine cannot install: `qwen2_vl_processor` builds one without video."""
    import transformers

    tok.add_special_tokens({"additional_special_tokens": list(_QWEN2_VL_TOKENS)})
    config = transformers.Qwen2VLConfig(
        text_config=dict(tiny_text(tok), rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(
            depth=1,
            embed_dim=32,
            hidden_size=32,
            num_heads=4,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
    )
    model = transformers.Qwen2VLForConditionalGeneration(config)
    fill_weights(model, seed=2)
    model.save_pretrained(out)
    tok.chat_template = QWEN2_VL_CHAT_TEMPLATE
    tok.save_pretrained(out)
    _qwen2_vl_image_processor().save_pretrained(out)
    return out


_QWEN2_VL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def _qwen2_vl_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2)


def qwen2_vl_processor(folder: Path):
    """Qwen2-VL's processor for images only (what `AutoProcessor` builds where torchvision is installed)."""
    import transformers
    from transformers.processing_utils import ProcessorMixin

    class ImagesOnly(transformers.Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return ImagesOnly(_qwen2_vl_image_processor(), tok, chat_template=QWEN2_VL_CHAT_TEMPLATE)


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def make_shapes_data(out: Path, n: int = 12) -> Path:
    """A small image-question data set: coloured squares, "what colour is the square?", image files beside."""
    import json

    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    with open(out / "shapes.jsonl", "w") as f:
        for i in range(n):
            colour = names[i % len(names)]
            img = Image.new("RGB", (40, 40), (255, 255, 255))
            img.paste(COLOURS[colour], (6 + i % 5, 6 + i % 7, 30 + i % 5, 30 + i % 7))
            img.save(out / f"img{i}.png")
            row = {"id": i, "image": f"img{i}.png", "question": "What colour is the square?", "answer": colour}
            f.write(json.dumps(row) + "\n")
    return out / "shapes.jsonl"
