"""Reward functions in the form TRL's GRPOTrainer takes, usable unchanged with `thickets search --reward`.

    thickets search --task gsm8k:examples/word_problems.jsonl \
        --reward examples/grpo_rewards.py:number_reward --run-dir runs/words
"""

import re

_NUMBER = re.compile(r"-?\d+")


def number_reward(completions, answer, **kwargs):
    """Chat-style completions, as GRPOTrainer passes them for conversational data.

    1.0 when the last number written is the answer, 0.2 when the answer appears elsewhere,
    0.1 for writing a number at all: a shaped reward of the kind people write for GRPO.
    """
    rewards = []
    for completion, gold in zip(completions, answer):
        text = completion[0]["content"]
        target = gold.split("####")[-1].strip()
        numbers = _NUMBER.findall(text[-2000:])
        if not numbers:
            rewards.append(0.0)
        elif numbers[-1] == target:
            rewards.append(1.0)
        elif target in numbers:
            rewards.append(0.2)
        else:
            rewards.append(0.1)
    return rewards
