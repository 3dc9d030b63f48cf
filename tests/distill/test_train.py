"""A model fine-tuned on traces moves towards them, and loads in plain transformers."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from thickets.distill.train import TrainSettings, fine_tune
from thickets.engines import render_prompt
from thickets.models import resolve

PAIRS = [(f"What is {a} + {a}?", f"{2 * a}", "Answer with a number.") for a in range(1, 9)]


def _trace_loss(folder, pairs):
    """Mean loss of the completions given their prompts: what the fine-tune minimises."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    total = 0.0
    with torch.no_grad():
        for prompt, completion, system in pairs:
            p = tok(render_prompt(tok, prompt, system), add_special_tokens=False).input_ids
            c = tok(completion + tok.eos_token, add_special_tokens=False).input_ids
            ids = torch.tensor([p + c])
            labels = torch.tensor([[-100] * len(p) + c])
            total += float(model(ids, labels=labels).loss)
    return total / len(pairs)


@pytest.mark.parametrize("lora", [True, False])
def test_fine_tuning_on_traces_teaches_them_and_writes_a_plain_model(tiny_model_dir, tmp_path, lora):
    settings = TrainSettings(lora=lora, lora_r=8, learning_rate=2e-2 if lora else 5e-3, epochs=10, batch_size=8)
    result = fine_tune(str(tiny_model_dir), PAIRS, tmp_path / "distilled", settings, progress=False)
    assert result.losses[-1] < result.losses[0], result.losses
    assert _trace_loss(tmp_path / "distilled", PAIRS) < 0.8 * _trace_loss(tiny_model_dir, PAIRS)
    assert result.sha256 == resolve(str(tmp_path / "distilled")).sha256 != resolve(str(tiny_model_dir)).sha256
    assert result.tokens_trained == 10 * sum(len(c) + 1 for _, c, _ in PAIRS)  # characters + the end token
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "distilled")  # merged: plain transformers
    assert not any("lora" in n for n, _ in model.named_parameters())
