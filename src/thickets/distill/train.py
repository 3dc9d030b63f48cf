"""Fine-tune one model on the kept traces with TRL's SFTTrainer: LoRA through peft (merged on save) or
full fine-tuning, on the prompts exactly as the search rendered them.

A vision-language model trains on its traces with their images, through its processor (TRL's vision
collator); LoRA then adapts the language model only, as the search perturbed it, and the processor is
saved with the distilled model.

Each example is a prompt (the task's prompt through the chat template the search used, ending where
the model starts to answer) and a completion (the trace, then the end-of-sequence token, so the
distilled model learns to stop where the expert did); the loss is on the completion only.
"""

from __future__ import annotations

import io
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thickets.disk import written_whole
from thickets.engines import render_prompt
from thickets.errors import ThicketsError
from thickets.models import VISION_PARTS, load, load_processor, resolve
from thickets.progress import bar


@dataclass(frozen=True)
class TrainSettings:
    lora: bool = True
    lora_r: int = 64
    learning_rate: float = 1e-4
    epochs: float = 2.0
    batch_size: int = 8
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    sha256: str  # the distilled model's identity: the hash of its weights, as for any model
    tokens_trained: int  # completion tokens the loss saw, times epochs
    losses: list[float]
    seconds: float


def fine_tune(
    model: str,
    pairs: Sequence[tuple[str, str, str | None]],
    out: Path,
    settings: TrainSettings,
    *,
    chat_template: bool = True,
    progress: bool = True,
    label: str = "",
    images: Sequence[bytes] | None = None,
) -> TrainResult:
    """Train `model` on (prompt, completion, system prompt) pairs (with `images`, one encoded image each, for
    a vision-language model); the merged model is written whole to `out` (a Hugging Face folder plain
    transformers loads)."""
    try:
        from datasets import Dataset
        from datasets.utils.logging import disable_progress_bar
        from transformers import PrinterCallback
        from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]  # trl exports them lazily
    except ImportError:
        raise ThicketsError("distillation needs TRL: pip install 'thickets[baselines]'") from None
    if not pairs:
        raise ThicketsError("no traces to train on")
    disable_progress_bar()  # TRL's dataset preparation: five bars a run, none a user watches
    m, tok, identity = load(model)
    processor = load_processor(identity) if images is not None else None
    m.requires_grad_(True)
    m.train()
    rows: list[dict[str, Any]] = [
        {
            "prompt": render_prompt(tok, prompt, system, chat_template, image=images is not None),
            "completion": completion + tok.eos_token,
        }
        for prompt, completion, system in pairs
    ]
    if images is not None:
        from PIL import Image

        for row, image in zip(rows, images, strict=True):
            row["images"] = [Image.open(io.BytesIO(image)).convert("RGB")]
    tokens = sum(len(tok(r["completion"], add_special_tokens=False).input_ids) for r in rows)
    scratch = tempfile.TemporaryDirectory(prefix="thickets-sft-")  # TRL's own output; nothing kept there
    args = SFTConfig(
        output_dir=scratch.name,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not _cuda(),
        bf16=False,
        fp16=False,
        seed=settings.seed,
        disable_tqdm=True,  # our bar instead: a terminal's, or plain lines in a cluster job's log
        dataloader_num_workers=0,
        completion_only_loss=True,
    )
    peft_config = _lora_config(settings, vision=processor is not None) if settings.lora else None
    trainer = SFTTrainer(
        model=m,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor if processor is not None else tok,
        peft_config=peft_config,
    )
    steps = math.ceil(len(rows) / settings.batch_size) * math.ceil(settings.epochs)
    t0 = time.perf_counter()
    with scratch, bar(f"{label}fine-tune ({'LoRA' if settings.lora else 'full'})", steps, progress) as update:
        trainer.add_callback(_progress(update))
        trainer.remove_callback(PrinterCallback)  # with tqdm off it prints every log dict: our bar shows the loss
        trainer.train()
    seconds = time.perf_counter() - t0
    _write_model(trainer.model, settings.lora, processor if processor is not None else tok, out)
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    return TrainResult(out, resolve(str(out)).sha256, int(tokens * settings.epochs), losses, seconds)


def fine_tune_kd(
    model: str,
    rows: Sequence[tuple[list[int], list[int]]],
    teachers: Sequence[tuple[Any, Any]],
    out: Path,
    settings: TrainSettings,
    loss: str,
    *,
    progress: bool = True,
    label: str = "",
) -> TrainResult:
    """Train `model` towards the experts' next-token probabilities on the kept traces (teacher.py): rows of
    (prompt ids, completion ids), each with its teacher ([L, top] ids and probabilities), the loss over the
    completion tokens only. TRL's trainers distil from a live teacher model; ours is a set of stored
    distributions of an ensemble no single model holds, so the loop is written here with the defaults of
    transformers' Trainer (AdamW without weight decay, linear decay to 0, gradients clipped to norm 1), LoRA
    through peft (merged on save) or full fine-tuning, on the GPU where there is one."""
    import torch

    from thickets.distill.teacher import completion_logits, kd_loss, pad_id

    if not rows:
        raise ThicketsError("no traces to train on")
    torch.manual_seed(settings.seed)
    device = "cuda" if _cuda() else "cpu"
    m, tok, _ = load(model, device=device)
    if settings.lora:
        from peft import get_peft_model

        m = get_peft_model(m, _lora_config(settings, vision=False))
    else:
        m.requires_grad_(True)
    m.train()
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)  # as the Trainer's defaults
    per_epoch = math.ceil(len(rows) / settings.batch_size)
    steps = max(1, math.ceil(settings.epochs * per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    order = torch.Generator().manual_seed(settings.seed)
    pad = pad_id(tok)
    losses: list[float] = []
    t0 = time.perf_counter()
    with bar(f"{label}distil ({loss}, {'LoRA' if settings.lora else 'full'})", steps, progress) as update:
        batches: list[list[int]] = []
        for _ in range(steps):
            if not batches:
                perm = torch.randperm(len(rows), generator=order).tolist()
                batches = [perm[i : i + settings.batch_size] for i in range(0, len(perm), settings.batch_size)]
            batch = batches.pop(0)
            at = torch.cat(completion_logits(m, [rows[i] for i in batch], pad))
            t_ids = torch.cat([teachers[i][0] for i in batch]).to(device)
            t_probs = torch.cat([teachers[i][1] for i in batch]).to(device)
            value = kd_loss(at, t_ids, t_probs, loss)
            value.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # the Trainer's max_grad_norm
            opt.step()
            schedule.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(value.detach()))
            update(advance=1, loss=f"{losses[-1]:.3f}")
    seconds = time.perf_counter() - t0
    m.eval()
    _write_model(m, settings.lora, tok, out)
    tokens = sum(len(c) for _, c in rows)
    return TrainResult(out, resolve(str(out)).sha256, int(tokens * settings.epochs), losses, seconds)


def _write_model(trained: Any, lora: bool, saver: Any, out: Path) -> None:
    """The trained model, its LoRA merged, with its tokenizer or processor, as one folder written whole."""
    if lora:
        trained = trained.merge_and_unload()
    with written_whole(out) as tmp:
        trained.save_pretrained(tmp)
        saver.save_pretrained(tmp)


def _lora_config(settings: TrainSettings, vision: bool) -> Any:
    """The adapter every fine-tune trains: rank r, alpha 2r, on every linear layer; for a vision-language model
    the language model's only (the vision tower's and projector's modules, the patterns a search leaves
    alone, as the one regular expression peft matches module names against)."""
    import fnmatch

    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=2 * settings.lora_r,
        target_modules="all-linear",
        exclude_modules="|".join(f"(?:{fnmatch.translate(p)})" for p in VISION_PARTS) if vision else None,
        task_type="CAUSAL_LM",
    )


def _progress(update: Any) -> Any:
    """A trainer callback that feeds the trainer's steps and loss to our progress bar (transformers is
    imported here, not with the module: only fine-tuning needs it)."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                update(advance=1, loss=f"{logs['loss']:.3f}")

    return Progress()


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())
