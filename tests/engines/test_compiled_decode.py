"""The compiled decode step gives the eager step's tokens, and is refused in one line where it cannot run."""

from __future__ import annotations

import pytest
import torch

from tests.engines.test_fast_decode import PROMPTS
from thickets.engines import fast_decode
from thickets.engines.transformers_engine import TransformersEngine
from thickets.errors import ThicketsError
from thickets.models import load
from thickets.noise import PerturbationSpec

#: what compiles needs a C++ compiler for inductor (a machine without one is refused, tested below)
compiles = pytest.mark.skipif(not fast_decode.has_cxx_compiler(), reason="inductor needs a C++ compiler")


@pytest.fixture(autouse=True)
def fresh_compiles(monkeypatch, tmp_path_factory):
    """Each test compiles from a clean slate and may not fall back to eager in silence: past dynamo's
    recompile limit a compiled function quietly runs eagerly, and these tests would compare eager with
    eager. Kernels go to the session's temporary folder, not the developer's cache."""
    import torch._dynamo

    torch._dynamo.reset()
    fast_decode._compiled_block_in.cache_clear()
    fast_decode._compiled_block_out.cache_clear()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "inductor"))
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield


@pytest.fixture(scope="module", params=["llama", "qwen2", "llama-bfloat16"])
def loaded(request, tiny_model_dir, tiny_qwen2_dir):
    family, _, dtype = request.param.partition("-")
    model, tok, _ = load(str(tiny_model_dir if family == "llama" else tiny_qwen2_dir), dtype=dtype or "float32")
    tok.padding_side = "left"
    return model, tok


@pytest.fixture()
def counted(monkeypatch):
    """How many layer blocks ran through the compiled functions."""
    calls = {"in": 0, "out": 0}
    real_in, real_out = fast_decode._compiled_block_in(), fast_decode._compiled_block_out()

    def spy(which, fn):
        def wrapped(*a):
            calls[which] += 1
            return fn(*a)

        return lambda: wrapped

    monkeypatch.setattr(fast_decode, "_compiled_block_in", spy("in", real_in))
    monkeypatch.setattr(fast_decode, "_compiled_block_out", spy("out", real_out))
    return calls


def _tokens(model, tok, prompts, n, **kw):
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return fast_decode.generate_greedy(
        model, enc["input_ids"], enc["attention_mask"], n, pad_token_id=tok.pad_token_id, tokenizer=tok, **kw
    )


@compiles
def test_the_compiled_step_gives_the_eager_steps_tokens(loaded, counted):
    """Padded prompts, a shared-prefix-free batch, and rows ending at different steps (EOS ids the model
    emits), so finished rows leave the batch and the compiled step sees several batch sizes."""
    model, tok = loaded
    free = _tokens(model, tok, PROMPTS, 20)
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = sorted({int(free[0, 3]), int(free[2, 9]), int(free[4, 14])})
    try:
        eager = _tokens(model, tok, PROMPTS, 20, compact=lambda *a: True)
        assert (eager == tok.pad_token_id).any(), "some rows should end early"
        compiled = _tokens(model, tok, PROMPTS, 20, compact=lambda *a: True, compiled=True)
    finally:
        model.generation_config.eos_token_id = saved
    assert compiled.shape == eager.shape and torch.equal(compiled, eager)
    layers = model.config.num_hidden_layers
    steps = eager.shape[1] - 1  # the first token comes from the prompt's forward, which stays eager
    assert counted["in"] == counted["out"] == layers * steps
    assert torch.equal(_tokens(model, tok, PROMPTS[:1], 12, compiled=True), _tokens(model, tok, PROMPTS[:1], 12))


@compiles
def test_a_perturbed_model_decodes_compiled_through_its_new_weights(tiny_model_dir):
    """The compiled blocks take the modules as inputs, not constants: a perturbation swapped in afterwards
    is what they read, and restore brings the base tokens back."""
    m, tok, _ = load(str(tiny_model_dir))
    engine = TransformersEngine(m, tok, batch_size=4, compiled=True)
    eager = TransformersEngine(m, tok, batch_size=4)
    base = engine.generate(PROMPTS, 12)
    assert base == eager.generate(PROMPTS, 12)
    engine.perturb(PerturbationSpec(3, 0.2))
    try:
        moved = engine.generate(PROMPTS, 12)
        assert moved != base
        assert moved == eager.generate(PROMPTS, 12)  # the same model object, perturbed
    finally:
        engine.restore()
    assert engine.generate(PROMPTS, 12) == base


@compiles
def test_a_low_rank_expert_decodes_eagerly_under_a_compiled_engine(tiny_model_dir, counted):
    m, tok, _ = load(str(tiny_model_dir))
    engine = TransformersEngine(m, tok, batch_size=4, compiled=True)
    spec = PerturbationSpec(3, 0.2, "lowrank", rank=2, version=3)
    engine.perturb(spec)
    try:
        ours = engine.generate(PROMPTS, 10)
    finally:
        engine.restore()
    plain = TransformersEngine(m, tok, batch_size=4)
    plain.perturb(spec)
    try:
        assert ours == plain.generate(PROMPTS, 10)
    finally:
        plain.restore()
    assert counted["in"] == 0  # the adapter's hooks: the eager blocks ran


def test_models_the_hand_written_decoder_lacks_are_refused_in_one_line(tiny_model_dir):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2)).eval()
    with pytest.raises(ThicketsError, match="compiled decode step is for LlamaForCausalLM and Qwen2ForCausalLM") as e:
        TransformersEngine(model, tok, compiled=True)
    assert "\n" not in str(e.value)


@compiles
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_compiled_steps_logits_are_the_eager_steps(tiny_model_dir, dtype):
    """bf16: bit for bit (values rounded where eager rounds them); float32: within a fused reduction's
    reordering (the RMSNorm's mean)."""
    model, _, _ = load(str(tiny_model_dir), dtype=dtype)
    dec = fast_decode._Decoder(model, 4, 16, torch.device("cpu"))
    cos, sin = dec.rope_table(17)
    cos, sin = cos[5][None, None, None].expand(4, 1, 1, -1), sin[5][None, None, None].expand(4, 1, 1, -1)
    ids = torch.tensor([[3], [17], [42], [99]])
    with torch.inference_mode():
        dec.k.normal_()
        dec.v.normal_()
        eager = dec.forward(ids, cos, sin, 5, None)
        dec.compiled = True
        compiled = dec.forward(ids, cos, sin, 5, None)
    if dtype == "bfloat16":
        assert torch.equal(compiled, eager)
    else:
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def _one_line(capsys, *texts):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    for text in texts:
        assert text in err, err


@compiles
def test_a_compiled_search_scores_as_the_eager_one(tiny_model_dir, tmp_path, counted):
    from tests.support import search_argv
    from thickets.cli.commands import main
    from thickets.randopt.store import RunStore

    runs = {}
    for name, extra in (("eager", ()), ("compiled", ("--compile",))):
        run = tmp_path / name
        assert main(search_argv(tiny_model_dir, run, *extra, population=3, val_size=4, max_new_tokens=6)) == 0
        with RunStore.open(run, write=False) as store:
            runs[name] = ([(c.seed, c.score) for c in store.candidates()], store.config, counted["in"])
    assert runs["compiled"][0] == runs["eager"][0]
    assert runs["compiled"][1].compile_decode and not runs["eager"][1].compile_decode
    assert runs["eager"][2] == 0 < runs["compiled"][2]  # the eager search never called the compiled blocks


def test_what_the_compiled_step_cannot_do_is_refused_before_anything_is_written(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    from tests.support import search_argv
    from thickets.cli.commands import main

    run = tmp_path / "run"
    lowrank = ("--noise", "lowrank", "--rank", "2")
    assert main(search_argv(tiny_model_dir, run, "--compile", *lowrank)) == 2
    _one_line(capsys, "low-rank experts decode through adapter hooks")
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2)).save_pretrained(gpt2)
    tok.save_pretrained(gpt2)
    assert main(search_argv(gpt2, run, "--compile")) == 2
    _one_line(capsys, "--compile is for LlamaForCausalLM and Qwen2ForCausalLM text models", "is not one")
    monkeypatch.setattr(fast_decode, "has_cxx_compiler", lambda: False)
    assert main(search_argv(tiny_model_dir, run, "--compile")) == 2
    _one_line(capsys, "needs a C++ compiler")
    with pytest.raises(ThicketsError, match="needs a C\\+\\+ compiler"):  # an engine built from Python, a Ray worker
        TransformersEngine(*load(str(tiny_model_dir))[:2], compiled=True)
    assert not run.exists()


@compiles
def test_compiled_kernels_are_kept_in_thickets_cache_unless_the_user_chose_a_place(tiny_model_dir, tmp_path):
    """A later process compiles warm from them; /tmp, torch's default, is emptied by a reboot."""
    import os
    import subprocess
    import sys

    code = (
        "from thickets.engines.transformers_engine import TransformersEngine; from thickets.models import load; "
        f"m, tok, _ = load({str(tiny_model_dir)!r}); TransformersEngine(m, tok, compiled=True).generate(['a b'], 3)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    for cache, chosen in ((tmp_path / "ours", None), (tmp_path / "theirs", tmp_path / "chosen")):
        extra = {"TORCHINDUCTOR_CACHE_DIR": str(chosen)} if chosen else {}
        subprocess.run([sys.executable, "-c", code], env={**env, "THICKETS_CACHE": str(cache), **extra}, check=True)
        kept = chosen or cache / "inductor"
        assert kept.is_dir() and any(kept.iterdir())
    assert not (tmp_path / "theirs" / "inductor").exists()


def test_a_compiler_is_looked_for_where_inductor_looks(monkeypatch, tmp_path):
    """inductor tries its `cpp.cxx` (CXX or g++) and nothing else: a clang++ alone on the PATH is not enough."""
    import sysconfig
    from pathlib import Path

    from torch._inductor import config

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(config.cpp, "cxx", (None, "g++"))
    (tmp_path / "clang++").write_text("#!/bin/sh\n")
    (tmp_path / "clang++").chmod(0o755)
    assert not fast_decode.has_cxx_compiler()
    assert fast_decode.compile_refusal("cpu") is not None and fast_decode.compile_refusal("cuda") is None
    monkeypatch.setattr(config.cpp, "cxx", (None, "clang++"))  # CXX=clang++ when torch started
    headers = Path(sysconfig.get_paths()["include"], "Python.h").is_file()
    assert fast_decode.has_cxx_compiler() is headers
    monkeypatch.setattr(fast_decode.torch, "__version__", "2.12.1+cpu")
    assert "needs torch 2.13 or later; this is torch 2.12.1+cpu" in fast_decode.compile_refusal("cuda")
