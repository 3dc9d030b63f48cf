"""Do no harm (issue 30): bits per byte of the base and the experts on a held-out text."""

from __future__ import annotations

import math

import pytest
import torch

from tests.support import search_argv
from thickets.analysis.harm import bits_per_byte, harm_report, read_text
from thickets.cli.commands import main
from thickets.engines import load_engine
from thickets.errors import ThicketsError

TEXT = "The quick brown fox jumps over the lazy dog. " * 6


def test_bits_per_byte_is_the_models_negative_log_likelihood_per_byte(tiny_model_dir):
    engine, _ = load_engine(str(tiny_model_dir))
    ids = engine.tokenizer(TEXT, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = engine.model(torch.tensor([ids])).logits[0, :-1]
    nll = -float(torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None]).sum())
    assert bits_per_byte(engine, TEXT) == pytest.approx(nll / math.log(2) / len(TEXT.encode()), rel=1e-5)
    # shorter windows predict every token but the first once too, from less context
    assert bits_per_byte(engine, TEXT, window=8) != pytest.approx(bits_per_byte(engine, TEXT), rel=1e-9)


def test_a_bad_text_is_one_line(tmp_path):
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00\x01" * 10)
    (tmp_path / "blank").write_text("   \n")
    for name, message in (("missing", "cannot read it"), ("binary", "plain UTF-8"), ("blank", "plain UTF-8")):
        with pytest.raises(ThicketsError, match=message):
            read_text(tmp_path / name)
    (tmp_path / "cut").write_bytes("é".encode() * (1 << 20))  # a character cut at the size bound is dropped
    assert set(read_text(tmp_path / "cut")) == {"é"}


def test_analyze_and_ensemble_report_the_experts_bits_per_byte(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(search_argv(tiny_model_dir, run, population=4, sigma="0.1")) == 0
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(TEXT)
    capsys.readouterr()
    assert main(["analyze", "--run-dir", str(tmp_path / "run"), "--harm-text", str(tmp_path / "nope.txt")]) == 2
    assert not (run / "analysis").exists()
    report = harm_report(run, held_out, top_k=2, progress=False)
    assert len(report["experts"]) == 2 and all(e["bits_per_byte"] != report["base"] for e in report["experts"])
    assert main(["analyze", "--run-dir", str(run), "--no-map", "--harm-text", str(held_out)]) == 0
    assert "held-out text held_out.txt" in capsys.readouterr().out
    assert "Do no harm" in (run / "report.html").read_text()
    assert (
        main(["ensemble", "--run-dir", str(run), "--top-k", "1,2", "--test-size", "3", "--harm-text", str(held_out)])
        == 0
    )
    assert "held-out text held_out.txt" in (run / "report.md").read_text()
