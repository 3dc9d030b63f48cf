import numpy as np
import pytest
import torch

from thickets.engines.transformers_engine import canonical_parameters
from thickets.noise import ParamFilter, PerturbationSpec, noise


def _state(engine):
    return {k: v.clone() for k, v in engine.model.state_dict().items()}


def test_restore_is_bitwise_exact(tiny_engine):
    before = _state(tiny_engine)
    for seed in range(3):
        tiny_engine.perturb(PerturbationSpec(seed, 0.05))
        assert any(not torch.equal(before[k], v) for k, v in tiny_engine.model.state_dict().items())
        tiny_engine.restore()
    after = tiny_engine.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_base_weights_are_never_written_and_the_working_copy_is_reused(tiny_engine):
    """perturb() writes a working copy, restore() swaps the loaded tensors back: two copies, never three."""
    params = canonical_parameters(tiny_engine.model)
    loaded = {n: p.data for n, p in params.items()}
    snapshot = {n: t.clone() for n, t in loaded.items()}
    tiny_engine.perturb(PerturbationSpec(1, 0.05))
    work = {n: p.data.data_ptr() for n, p in params.items()}
    assert all(work[n] != loaded[n].data_ptr() for n in params)
    tiny_engine.restore()
    assert all(p.data.data_ptr() == loaded[n].data_ptr() for n, p in params.items())
    tiny_engine.perturb(PerturbationSpec(2, 0.05))
    assert {n: p.data.data_ptr() for n, p in params.items()} == work  # no new allocation
    tiny_engine.restore()
    assert all(torch.equal(loaded[n], snapshot[n]) for n in params)
    model = tiny_engine.model
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied weights stay tied


def test_perturbation_adds_sigma_times_the_named_noise_once_to_tied_weights(tiny_engine):
    model = tiny_engine.model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    names = list(canonical_parameters(model))
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    spec = PerturbationSpec(4, 0.01)
    base = {n: p.detach().clone() for n, p in canonical_parameters(model).items()}
    tiny_engine.perturb(spec)
    for n, p in canonical_parameters(model).items():
        expected = base[n].numpy() + noise(spec, n, tuple(p.shape))
        np.testing.assert_array_equal(p.detach().numpy(), expected)
    tiny_engine.restore()


def test_filter_limits_what_is_perturbed(tiny_engine):
    before = _state(tiny_engine)
    tiny_engine.perturb(PerturbationSpec(1, 0.05, filter=ParamFilter(include=("*mlp*",))))
    changed = {k for k, v in tiny_engine.model.state_dict().items() if not torch.equal(before[k], v)}
    tiny_engine.restore()
    assert changed and all("mlp" in k for k in changed)


def test_held_working_copies_swap_back_in_as_the_perturbation_that_made_them(tiny_engine):
    """A server keeps each expert's weights: hold() takes them, a later perturb() writes elsewhere, and
    use() puts the held ones back bitwise; restore() still brings back the base."""
    before = _state(tiny_engine)
    held, perturbed = [], []
    for seed in (1, 2):
        tiny_engine.perturb(PerturbationSpec(seed, 0.05))
        perturbed.append(_state(tiny_engine))
        held.append(tiny_engine.hold())
        tiny_engine.restore()
    for copy, expected in zip(held, perturbed):
        tiny_engine.use(copy)
        now = tiny_engine.model.state_dict()
        assert all(torch.equal(expected[k], now[k]) for k in expected)
        with pytest.raises(RuntimeError, match="while perturbed"):
            tiny_engine.use(copy)
        tiny_engine.restore()
        after = tiny_engine.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(perturbed[0][k], perturbed[1][k]) for k in before)


def test_perturb_twice_without_restore_is_an_error(tiny_engine):
    tiny_engine.perturb(PerturbationSpec(1, 0.01))
    with pytest.raises(RuntimeError):
        tiny_engine.perturb(PerturbationSpec(2, 0.01))
    tiny_engine.restore()


def test_generation_is_deterministic_in_input_order_and_cut_at_stop(tiny_engine):
    prompts = ["Hello there, how", "A", "Tell me about the weather in a long sentence please", "B c d"]
    a = tiny_engine.generate(prompts, 12, stop=("\n",))
    b = tiny_engine.generate(prompts, 12, stop=("\n",))
    assert a == b and len(a) == 4
    single = [tiny_engine.generate([p], 12, stop=("\n",))[0] for p in prompts]
    # left padding in a batch may change float rounding, but not which prompt an answer belongs to
    assert sum(x == y for x, y in zip(a, single)) >= 3
    for text in a:
        assert "\n" not in text[:-1]


def test_a_perturbation_changes_what_the_model_says(tiny_engine):
    prompts = [f"Write about {i}" for i in range(4)]
    base = tiny_engine.generate(prompts, 8)
    tiny_engine.perturb(PerturbationSpec(2, 0.2))
    moved = tiny_engine.generate(prompts, 8)
    tiny_engine.restore()
    assert moved != base
    assert tiny_engine.generate(prompts, 8) == base


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_weights_are_perturbed_on_their_device_and_restored_exactly(tiny_model_dir, dtype):
    from thickets.engines import load_engine
    from thickets.noise import noise

    engine, _ = load_engine(str(tiny_model_dir), dtype=dtype)
    base = {n: p.detach().clone() for n, p in engine.params.items()}
    for spec in (PerturbationSpec(4, 0.05), PerturbationSpec(4, 0.05, "lowrank", rank=2)):
        engine.perturb(spec, merge=True)  # a low-rank expert's merged weights: what an export writes
        name = "model.layers.0.mlp.up_proj.weight"
        want = (base[name].float() + torch.from_numpy(noise(spec, name, tuple(base[name].shape)))).to(base[name].dtype)
        assert torch.equal(engine.params[name], want)  # the same float32 sum, rounded once
        engine.restore()
        assert all(torch.equal(p, base[n]) for n, p in engine.params.items())
    assert engine.describe()["dtype"] == dtype and engine.describe()["device"] == "cpu"


def test_sampling_is_seeded_per_call_and_gives_each_prompt_its_samples(tiny_engine):
    prompts = ["Hello there", "A", "Tell me a long story about the sea"]
    a = tiny_engine.sample(prompts, 8, samples=3, temperature=1.0, seed=5)
    assert [len(x) for x in a] == [3, 3, 3]
    assert tiny_engine.sample(prompts, 8, samples=3, temperature=1.0, seed=5) == a  # the same call, the same texts
    assert tiny_engine.sample(prompts, 8, samples=3, temperature=1.0, seed=6) != a
    assert any(len(set(x)) > 1 for x in a)  # samples of one prompt differ
    cold = tiny_engine.sample(prompts, 8, samples=1, temperature=1e-4, seed=1)
    assert [c[0] for c in cold] == tiny_engine.generate(prompts, 8)  # temperature to zero: greedy


def test_relative_noise_is_each_base_tensors_scale_times_its_stream_and_restores_exactly(tiny_engine):
    from thickets.noise import tensor_scale

    model = tiny_engine.model
    base = {n: p.detach().clone() for n, p in canonical_parameters(model).items()}
    scales = tiny_engine.tensor_scales()
    assert tiny_engine.tensor_scales() is scales  # made once per engine
    assert scales.keys() == base.keys() and "lm_head.weight" not in scales  # a tied weight once
    spec = PerturbationSpec(4, 0.01, "relative")
    tiny_engine.perturb(spec)
    for n, p in canonical_parameters(model).items():
        assert scales[n] == tensor_scale(base[n].numpy()) > 0
        expected = base[n].numpy() + noise(spec, n, tuple(p.shape), scales[n])
        np.testing.assert_array_equal(p.detach().numpy(), expected)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    tiny_engine.restore()
    assert all(torch.equal(p, base[n]) for n, p in canonical_parameters(model).items())
    # the relative size is the same in every tensor, whatever its own size (sigma * RMS)
    tiny_engine.perturb(spec)
    moved = {n: (p.detach() - base[n]).double() for n, p in canonical_parameters(model).items()}
    tiny_engine.restore()
    big = [n for n in moved if moved[n].numel() >= 2048]
    ratios = [float(moved[n].pow(2).mean().sqrt() / base[n].double().pow(2).mean().sqrt()) for n in big]
    assert len(big) >= 4 and all(abs(r / 0.01 - 1) < 0.1 for r in ratios), ratios


def test_relative_noise_leaves_a_zero_tensor_alone_and_matches_on_the_device(tiny_qwen2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thickets.engines.transformers_engine import TransformersEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    bias = model.model.layers[0].self_attn.q_proj.bias
    bias.data = torch.zeros_like(bias)  # a bias pretraining never moved
    engine = TransformersEngine(model, AutoTokenizer.from_pretrained(tiny_qwen2_dir))
    base = {n: p.detach().clone() for n, p in engine.params.items()}
    name = "model.layers.0.self_attn.q_proj.bias"
    assert engine.tensor_scales()[name] == 0.0
    spec = PerturbationSpec(6, 0.05, "relative")
    loaded = engine.params[name].data_ptr()
    engine.perturb(spec)
    assert engine.params[name].data_ptr() == loaded and torch.equal(engine.params[name], base[name])  # untouched
    assert not torch.equal(
        engine.params["model.layers.0.self_attn.k_proj.bias"], base["model.layers.0.self_attn.k_proj.bias"]
    )
    on_cpu = {n: p.detach().clone() for n, p in engine.params.items()}
    engine.restore()
    assert all(torch.equal(p, base[n]) for n, p in engine.params.items())
    if torch.cuda.is_available():  # the scales and the noise on the GPU: bitwise what the CPU made
        engine.model.cuda()
        gpu = TransformersEngine(engine.model, engine.tokenizer)
        assert gpu.tensor_scales() == engine.tensor_scales()
        gpu.perturb(spec)
        assert all(torch.equal(p.cpu(), on_cpu[n]) for n, p in gpu.params.items())
        gpu.restore()
