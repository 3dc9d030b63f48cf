"""A low-rank expert as the LoRA adapter it is, loaded by peft alone (what an adapter-serving stack does:
vLLM's --enable-lora and LoRARequest read the same adapter_config.json and adapter_model.safetensors).

    thickets search --noise lowrank --rank 4 --run-dir runs/lr ...
    thickets export --run-dir runs/lr --out best-model
    python examples/adapter_with_peft.py best-model

The adapter names its base (thickets export --adapter-base to name another copy); merged, it is the
exported model: the script prints the largest weight difference and the greedy answers of both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(folder: str) -> None:
    exported = Path(folder)
    expert = AutoPeftModelForCausalLM.from_pretrained(exported / "adapter").eval()
    merged = expert.merge_and_unload()
    model = AutoModelForCausalLM.from_pretrained(exported).eval()
    gap = max((a - b).abs().max().item() for a, b in zip(merged.state_dict().values(), model.state_dict().values()))
    print(f"largest weight difference, adapter merged vs exported model: {gap:.2e}")
    tok = AutoTokenizer.from_pretrained(exported)
    prompting = json.loads((exported / "thickets_prompt.json").read_text())
    question = "What is 12 * 7?"
    messages = [{"role": "user", "content": question}]
    if prompting["system_prompt"]:
        messages.insert(0, {"role": "system", "content": prompting["system_prompt"]})
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    for name, m in (("adapter, merged", merged), ("exported model", model)):
        with torch.no_grad():
            out = m.generate(**ids, max_new_tokens=prompting["max_new_tokens"], do_sample=False)
        print(f"{name}: {tok.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "best-model")
