"""GRPO through TRL's GRPOTrainer (no GRPO of our own): the gradient baseline on the same task.

Our task's reward becomes a TRL reward function; the prompts are the task's validation split
(what RandOpt and ES select on), given to TRL as chat messages so it applies the same chat
template. LoRA through peft is an option. CPU-capable at small scale.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thickets.engines.base import cut_at_stop
from thickets.errors import ThicketsError
from thickets.models import load
from thickets.options import MAX_RATE, SEEDS, check_bounds, option
from thickets.randopt.config import MAX_NEW_TOKENS, MAX_SPLIT, SearchConfig
from thickets.randopt.scoring import task_for
from thickets.tasks import Example, Task
from thickets.tasks.splits import SPLIT_SCHEME, make_splits


@dataclass(frozen=True)
class GRPOSettings:
    """GRPO through TRL's GRPOTrainer, with the task's reward as its reward function."""

    model: str = option("smollm2-135m", "HF model folder, .gguf file, or smollm2-135m")
    task: str = option("countdown", "task name (see `thickets tasks`)")
    steps: int = option(10, "optimizer steps", bounds=(1, 1_000_000))
    num_generations: int = option(4, "completions per prompt (the group GRPO normalises within)", bounds=(2, 1024))
    prompts_per_step: int = option(2, "prompts per step", bounds=(1, 65_536))
    learning_rate: float = option(1e-5, "learning rate", bounds=(0, MAX_RATE))
    max_new_tokens: int = option(128, "tokens generated at most per completion", bounds=(1, MAX_NEW_TOKENS))
    val_size: int = option(32, "training prompts: the validation split", bounds=(1, MAX_SPLIT))
    lora: bool = option(False, "train LoRA adapters (peft), merged when saved")
    lora_r: int = option(8, "LoRA rank", bounds=(1, 65_536))
    seed: int = option(0, "training seed", bounds=SEEDS)
    split_seed: int = option(0, "seed of the validation/test splits", bounds=SEEDS)
    split_scheme: int = option(SPLIT_SCHEME, "how the validation examples are drawn (thickets.tasks.splits)", cli=False)

    def __post_init__(self) -> None:
        check_bounds(self)
        if not self.learning_rate > 0:
            raise ThicketsError(f"--learning-rate must be above 0, got {self.learning_rate}")


def task_reward(task: Task, examples: Sequence[Example]) -> Callable[..., list[float | None]]:
    """A TRL reward function scoring completions with the task (chat-style or plain completions)."""

    # list[float | None] is TRL's type of a reward function's result (None: "does not apply")
    def reward(completions: Sequence[Any], example_index: Sequence[int], **_: Any) -> list[float | None]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        texts = [cut_at_stop(t, task.stop) for t in texts]
        return [float(s.reward) for s in task.score_batch([examples[i] for i in example_index], texts)]

    reward.__name__ = f"thickets_{task.name.replace(':', '_').replace(',', '_')}"
    return reward


def run_grpo(
    cfg: GRPOSettings, out_dir: str | Path, *, progress: bool = True, report_to: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Train with GRPO; returns the log (steps, rewards, generated tokens, seconds) and saves the model."""
    try:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer  # type: ignore[attr-defined]  # trl exports them lazily, no __all__
    except ImportError:
        raise ThicketsError("the GRPO baseline needs TRL: pip install 'thickets[baselines]'") from None

    out_dir = Path(out_dir)
    task = task_for(SearchConfig(model=cfg.model, task=cfg.task))
    train, _ = make_splits(task, cfg.split_seed, cfg.val_size, scheme=cfg.split_scheme)
    model, tok, identity = load(cfg.model)
    model.requires_grad_(True)
    model.train()
    system = [{"role": "system", "content": task.system_prompt}] if task.system_prompt else []
    data = Dataset.from_list(
        [
            {"prompt": system + [{"role": "user", "content": ex.prompt}], "example_index": i}
            for i, ex in enumerate(train)
        ]
    )
    args = GRPOConfig(
        output_dir=str(out_dir / "trl"),
        max_steps=cfg.steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_new_tokens,
        logging_steps=1,
        save_strategy="no",
        report_to=list(report_to),  # TRL's own integrations, the names thickets' --report-to takes
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=cfg.seed,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=task_reward(task, train),
        args=args,
        train_dataset=data,
        processing_class=tok,
        peft_config=peft_config,
    )
    if not progress:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # it prints every log dict when tqdm is off: quiet means quiet
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    steps = [h for h in trainer.state.log_history if "reward" in h]
    per_step = cfg.prompts_per_step * cfg.num_generations
    tokens = int(sum(h.get("completions/mean_length", 0.0) * per_step for h in steps))
    trained_model: Any = trainer.model  # a peft model with LoRA (TRL types it as a plain Module)
    trained = trained_model.merge_and_unload() if cfg.lora else trained_model
    trained.save_pretrained(out_dir / "model")
    tok.save_pretrained(out_dir / "model")
    return {
        "config": asdict(cfg),
        "model_identity": identity.to_dict(),
        "seconds": seconds,
        "tokens": tokens,
        "steps": [
            {"step": i + 1, "reward": h["reward"], "mean_length": h.get("completions/mean_length")}
            for i, h in enumerate(steps)
        ],
        "model_dir": str(out_dir / "model"),
    }
