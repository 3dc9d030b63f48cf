"""GRPO through TRL: our task reward drives TRL's trainer, and a step changes the weights."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from thickets.baselines.grpo import GRPOSettings, run_grpo, task_reward
from thickets.models import load
from thickets.tasks import get_task
from thickets.tasks.splits import make_splits


def _changed(a, b) -> float:
    return sum(float((x - y).abs().sum()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("lora", [False, True])
def test_one_grpo_step_through_trl_changes_the_weights(tiny_model_dir, tmp_path, lora):
    base, _, _ = load(str(tiny_model_dir))
    log = run_grpo(
        GRPOSettings(
            model=str(tiny_model_dir),
            task="toy",
            steps=1,
            num_generations=4,
            prompts_per_step=2,
            max_new_tokens=4,
            val_size=4,
            learning_rate=1e-2,
            lora=lora,
        ),
        tmp_path,
        progress=False,
    )
    trained, _, _ = load(log["model_dir"])
    assert _changed(base, trained) > 0
    assert len(log["steps"]) == 1 and 0 <= log["steps"][0]["reward"] <= 1
    assert 2 * 4 <= log["tokens"] <= 2 * 4 * 4  # 2 prompts x 4 generations of 1 to 4 tokens


def test_the_trl_reward_is_the_task_reward_for_chat_and_plain_completions():
    task = get_task("products")
    val, _ = make_splits(task, 0, 3)
    reward = task_reward(task, val)
    answers = [str(ex.data.get("answer", "")) for ex in val]
    plain = reward([f"{a}" for a in answers], example_index=[0, 1, 2])
    chat = reward([[{"role": "assistant", "content": a}] for a in answers], example_index=[0, 1, 2])
    expected = [task.score(ex, a).reward for ex, a in zip(val, answers)]
    assert plain == chat == expected
    assert torch.tensor(expected).sum() > 0  # the right answers earn reward
