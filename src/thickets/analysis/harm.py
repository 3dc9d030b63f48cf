"""Do no harm: what a perturbation breaks outside the task, as bits per byte on a plain text the user holds
out (any text the run never saw), for the base and the chosen experts.

A language model's bits per byte on general text measure what it still knows of the language; an expert
that gained on the task while losing much here has traded breadth for it. The text is cut into windows of
the model's context (at most 1024 tokens); every token but the first is predicted once, from the window it
falls in; bits per byte = the summed negative log-likelihood in bits / the text's UTF-8 bytes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from thickets.errors import ThicketsError

#: the most of a text that is scored (bytes): enough for a stable figure, bounded work
MAX_BYTES = 1 << 20
WINDOW = 1024


def read_text(path: str | Path) -> str:
    """A held-out text, checked: a readable UTF-8 file with some text in it, at most MAX_BYTES."""
    p = Path(path)
    try:
        data = p.read_bytes()[:MAX_BYTES]
    except OSError as e:
        raise ThicketsError(f"--harm-text {path}: cannot read it ({e.strerror or e})") from None
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut at MAX_BYTES is dropped; anything else is no text
        text = data[: e.start].decode("utf-8") if e.start >= len(data) - 3 else None
    if text is None or not text.strip():
        raise ThicketsError(f"--harm-text {path}: give a plain UTF-8 text with words in it")
    return text


def bits_per_byte(engine: Any, text: str, window: int = WINDOW) -> float:
    """The engine's model (as perturbed now) on `text`: bits per UTF-8 byte."""
    import torch

    tok, model = engine.tokenizer, engine.model
    ids = tok(text, add_special_tokens=False).input_ids
    if len(ids) < 2:
        raise ThicketsError("the held-out text is shorter than two tokens")
    device = next(model.parameters()).device
    nll = 0.0
    step = max(2, window) - 1
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, step):
            piece = torch.tensor([ids[start : start + step + 1]], device=device)
            logits = model(piece).logits.float()
            logp = torch.log_softmax(logits[0, :-1], dim=-1)
            nll -= float(logp.gather(1, piece[0, 1:, None]).sum())
    return nll / math.log(2) / len(text.encode("utf-8"))


def harm_report(run_dir: str | Path, text_path: str | Path, top_k: int = 5, *, progress: bool = True) -> dict[str, Any]:
    """Bits per byte of the base and the top-K experts of a run on a held-out text."""
    from thickets.progress import bar
    from thickets.randopt.preflight import load_run_config
    from thickets.randopt.scoring import engine_for
    from thickets.randopt.store import RunStore
    from thickets.randopt.vote import fully_scored, rank

    text = read_text(text_path)
    config = load_run_config(run_dir)
    with RunStore.open(run_dir, write=False) as store:
        experts = fully_scored(rank(store.candidates()))[:top_k]
    engine = engine_for(config)
    out = []
    with bar("held-out text", len(experts) + 1, progress) as update:
        base = bits_per_byte(engine, text)
        update()
        for r, c in enumerate(experts, 1):
            engine.perturb(config.candidate(c.idx))
            try:
                out.append({"rank": r, "idx": c.idx, "bits_per_byte": bits_per_byte(engine, text)})
            finally:
                engine.restore()
            update()
    return {
        "text": str(Path(text_path).resolve()),
        "bytes": len(text.encode("utf-8")),
        "base": base,
        "experts": out,
        "mean_expert": sum(e["bits_per_byte"] for e in out) / len(out) if out else None,
    }


def harm_line(report: dict[str, Any]) -> str:
    worst = max(report["experts"], key=lambda e: e["bits_per_byte"], default=None)
    line = (
        f"held-out text {Path(report['text']).name} ({report['bytes']:,} bytes): the base {report['base']:.3f} "
        f"bits per byte"
    )
    if worst is not None:
        line += (
            f", the top {len(report['experts'])} {report['mean_expert']:.3f} on average "
            f"(worst: rank {worst['rank']}, {worst['bits_per_byte']:.3f})"
        )
    return line
