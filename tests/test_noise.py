import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest

from thickets.noise import (
    CHUNK,
    NOISE_VERSION,
    NOISE_VERSIONS,
    STRATEGIES,
    WINDOW,
    ParamFilter,
    PerturbationSpec,
    add_noise_,
    noise,
    noise_factor,
    standard_noise,
    tensor_scale,
)

VERSIONS = pytest.mark.parametrize("version", sorted(NOISE_VERSIONS))


@VERSIONS
def test_same_seed_and_name_give_the_same_noise_in_another_process(version):
    code = (
        "from thickets.noise import *; import hashlib;"
        f"noise = standard_noise(PerturbationSpec(7, 1e-3, version={version}), "
        "'model.layers.0.mlp.up_proj.weight', (300, 70));"
        "print(hashlib.sha256(noise.tobytes()).hexdigest())"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    here = hashlib.sha256(
        standard_noise(
            PerturbationSpec(7, 1e-3, version=version), "model.layers.0.mlp.up_proj.weight", (300, 70)
        ).tobytes()
    ).hexdigest()
    assert outs == {here + "\n"}


@VERSIONS
def test_same_shaped_tensors_get_uncorrelated_noise(version):
    spec = PerturbationSpec(3, 1.0, version=version)
    a = standard_noise(spec, "model.layers.0.self_attn.k_proj.weight", (256, 512)).ravel()
    b = standard_noise(spec, "model.layers.0.self_attn.v_proj.weight", (256, 512)).ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(a.size)
    assert abs(a.mean()) < 0.01 and abs(a.std() - 1) < 0.01


@VERSIONS
def test_different_seeds_give_different_noise_and_sigma_scales_it(version):
    a = noise(PerturbationSpec(1, 1e-3, version=version), "w", (1000,))
    b = noise(PerturbationSpec(2, 1e-3, version=version), "w", (1000,))
    c = noise(PerturbationSpec(1, 2e-3, version=version), "w", (1000,))
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(c, 2 * a, rtol=1e-6)


@VERSIONS
@pytest.mark.parametrize(
    "start,stop",
    [(0, 10), (CHUNK - 5, CHUNK + 5), (CHUNK + 1, 2 * CHUNK + 3), (17, 3 * CHUNK), (WINDOW - 1, WINDOW + 1), (5, 5)],
)
def test_any_slice_can_be_generated_on_its_own(version, start, stop):
    spec = PerturbationSpec(11, 1e-3, version=version)
    full = standard_noise(spec, "big", (3 * CHUNK + 7,)).ravel()
    np.testing.assert_array_equal(standard_noise(spec, "big", (3 * CHUNK + 7,), start, stop), full[start:stop])


@VERSIONS
def test_a_filter_does_not_change_the_noise_of_the_parameters_it_keeps(version):
    shapes = {"a.weight": (64, 32), "b.weight": (64, 32), "c.bias": (64,)}

    def perturbed(filt):
        params = {n: np.zeros(s, np.float32) for n, s in shapes.items()}
        add_noise_(PerturbationSpec(5, 0.01, filter=filt, version=version), params.items())
        return params

    every = perturbed(ParamFilter())
    some = perturbed(ParamFilter(include=("*.weight",), exclude=("a.*",)))
    np.testing.assert_array_equal(some["b.weight"], every["b.weight"])
    assert not some["a.weight"].any() and not some["c.bias"].any()
    assert every["a.weight"].any()


@VERSIONS
def test_add_noise_matches_noise_and_is_independent_of_threads(monkeypatch, version):
    spec = PerturbationSpec(9, 0.02, version=version)
    shape = (CHUNK // 512 + 3, 1024)  # more than two chunks
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("THICKETS_NOISE_THREADS", threads)
        x = np.ones(shape, np.float32)
        add_noise_(spec, [("w", x)])
        results.append(x)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], np.float32(1) + noise(spec, "w", shape))
    # from a base: the same sum in the output, the base untouched
    base = np.full(shape, 1, np.float32)
    out = np.zeros(shape, np.float32)
    add_noise_(spec, [("w", out)], base={"w": base})
    np.testing.assert_array_equal(out, results[0])
    assert (base == 1).all()


def test_bad_specs_are_refused():
    with pytest.raises(ValueError):
        PerturbationSpec(1, 0.0)
    with pytest.raises(ValueError):
        PerturbationSpec(1, 1e-3, strategy="nope")
    with pytest.raises(ValueError, match="unknown noise version"):
        PerturbationSpec(1, 1e-3, version=99)


# The streams runs were made with, pinned: a change to either map breaks every run folder made with it.
PINNED = {
    1: "cd52bdd0ebea44dc27d55e5f0c176d1128c48d83cf4e94a555db70b22ff60b81",
    2: "77f86da4f55fc001ea2fef78e5114b4271087a170422dba20b60b4c4bd754f6b",
    3: "77f86da4f55fc001ea2fef78e5114b4271087a170422dba20b60b4c4bd754f6b",  # version 2's gaussian stream
}
#: version 3's low-rank map, the same bits on every machine (version 2's depends on the BLAS, so is not pinned)
PINNED_LOWRANK = "343dec513b3f71dd78090500362f7634598d7c0b8f01429129016e8f3c411db2"


@VERSIONS
def test_each_version_makes_the_noise_it_always_made(version):
    x = standard_noise(PerturbationSpec(123, 1.0, version=version), "model.embed_tokens.weight", (3, WINDOW + 5))
    assert hashlib.sha256(x.tobytes()).hexdigest() == PINNED[version]


def test_new_runs_take_the_newest_version_and_its_noise_is_standard_normal():
    assert max(NOISE_VERSIONS) == NOISE_VERSION
    x = standard_noise(PerturbationSpec(4, 1.0), "w", (1 << 20,)).ravel()
    assert abs(x.mean()) < 5e-3 and abs(x.std() - 1) < 5e-3
    assert abs(np.mean(x**4) - 3) < 0.05  # Gaussian kurtosis, not merely unit variance
    # neighbouring windows of one stream are not copies of each other
    assert abs(np.corrcoef(x[:WINDOW], x[WINDOW : 2 * WINDOW])[0, 1]) < 5 / np.sqrt(WINDOW)


# -- the low-rank strategy --------------------------------------------------------------------


def _rank(x) -> int:
    """Rank up to float32 rounding: singular values above 1e-4 of the largest."""
    s = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
    return int((s > 1e-4 * s[0]).sum())


def test_lowrank_noise_is_exactly_a_rank_r_product_of_stream_factors_with_unit_variance_entries():
    from thickets.noise import lowrank_factors, table_stream

    spec = PerturbationSpec(6, 1.0, "lowrank", rank=4)
    x = standard_noise(spec, "layer.weight", (300, 200))
    a, b = lowrank_factors(6, "layer.weight", 300, 200, 4)
    # the factors are the parameter's own version-2 stream: A first, then B
    np.testing.assert_array_equal(a.ravel(), table_stream(6, "layer.weight", 0, 1200))
    np.testing.assert_array_equal(b.ravel(), table_stream(6, "layer.weight", 1200, 2000))
    np.testing.assert_allclose(x, a @ b.T / 2, rtol=1e-6, atol=1e-6)
    assert _rank(x) == 4
    big = standard_noise(PerturbationSpec(7, 1.0, "lowrank", rank=16), "w", (2000, 1000))
    assert abs(big.var() - 1) < 0.05  # the full-rank stream's per-entry variance


def test_lowrank_products_are_the_same_bits_whatever_the_piece_and_the_blas():
    from thickets.noise import lowrank_factors, lowrank_product

    spec = PerturbationSpec(5, 1.0, "lowrank", rank=7)
    name, shape = "model.layers.0.mlp.up_proj.weight", (300, 170)
    x = standard_noise(spec, name, shape)
    assert hashlib.sha256(x.tobytes()).hexdigest() == PINNED_LOWRANK
    a, b = lowrank_factors(5, name, 300, 170, 7)
    # each entry: the float64 sum of its products in rank order, rounded once (a float64 matmul may reorder)
    reference = np.zeros((300, 170))
    for r in range(7):
        reference += np.outer(a[:, r].astype(np.float64), b[:, r].astype(np.float64))
    np.testing.assert_array_equal(lowrank_product(a, b), reference.astype(np.float32))
    for lo, hi in ((0, 1), (3, 5), (17, 300)):  # rows made alone are the rows of the whole
        np.testing.assert_array_equal(lowrank_product(a[lo:hi], b), lowrank_product(a, b)[lo:hi])
    # version 2's runs keep their float32 matmul: the same matrix up to its rounding
    old = standard_noise(PerturbationSpec(5, 1.0, "lowrank", version=2, rank=7), name, shape)
    np.testing.assert_allclose(old, x, rtol=1e-5, atol=1e-5)


def test_lowrank_leaves_vectors_alone_and_slices_like_the_rest():
    spec = PerturbationSpec(6, 0.1, "lowrank", rank=2)
    assert not standard_noise(spec, "norm.weight", (64,)).any()
    params = {"norm.weight": np.ones(64, np.float32), "w": np.zeros((40, 30), np.float32)}
    add_noise_(spec, params.items())
    assert (params["norm.weight"] == 1).all()
    np.testing.assert_allclose(params["w"], noise(spec, "w", (40, 30)), rtol=1e-6, atol=1e-8)
    full = standard_noise(spec, "w", (40, 30)).ravel()
    np.testing.assert_array_equal(standard_noise(spec, "w", (40, 30), 45, 700), full[45:700])
    # a 3-D weight is seen as (first axis, the rest)
    assert _rank(standard_noise(spec, "conv", (8, 3, 5)).reshape(8, 15)) == 2


def test_lowrank_ranks_are_checked():
    with pytest.raises(ValueError, match="needs a rank of at least 1"):
        PerturbationSpec(1, 1e-3, "lowrank")
    with pytest.raises(ValueError, match="is for the lowrank strategy"):
        PerturbationSpec(1, 1e-3, rank=3)
    with pytest.raises(ValueError, match="rank 9 is above the smaller side of w"):
        standard_noise(PerturbationSpec(1, 1e-3, "lowrank", rank=9), "w", (8, 100))
    with pytest.raises(ValueError, match="unknown noise strategy 'lowrank' for noise version 1"):
        PerturbationSpec(1, 1e-3, "lowrank", rank=2, version=1)


# -- the relative strategy --------------------------------------------------------------------


def _base(shape, rms, seed=0):
    """A float32 tensor of about the given RMS."""
    return (np.random.default_rng(seed).standard_normal(shape) * rms).astype(np.float32)


def _reference_scale(x) -> float:
    """The RMS in exact arithmetic (math.fsum of exact squares), rounded once to float32."""
    flat = np.asarray(x, np.float64).reshape(-1)
    return float(np.float32(math.sqrt(math.fsum((flat * flat).tolist()) / flat.size)))


def test_relative_noise_is_sigma_times_the_tensor_scale_times_the_gaussian_stream():
    base = _base((300, 70), 0.37)
    scale = tensor_scale(base)
    rel, gauss = PerturbationSpec(7, 2e-3, "relative"), PerturbationSpec(7, 2e-3)
    eps = standard_noise(gauss, "model.layers.0.mlp.up_proj.weight", (300, 70))
    np.testing.assert_array_equal(standard_noise(rel, "model.layers.0.mlp.up_proj.weight", (300, 70)), eps)
    made = noise(rel, "model.layers.0.mlp.up_proj.weight", (300, 70), scale=scale)
    # one float32 factor, sigma * scale rounded once, times the stream: elementwise, bit for bit
    assert noise_factor(rel, scale) == np.float32(2e-3 * scale) and noise_factor(gauss) == np.float32(2e-3)
    np.testing.assert_array_equal(made, np.float32(2e-3 * scale) * eps)
    # the map it adds is the gaussian stream's, pinned above: adding the strategy moved nothing
    x = standard_noise(PerturbationSpec(123, 1.0, "relative"), "model.embed_tokens.weight", (3, WINDOW + 5))
    assert hashlib.sha256(x.tobytes()).hexdigest() == PINNED[2]


def test_relative_noise_has_the_promised_rms_in_each_tensor():
    small, large = _base((1024, 1024), 0.02, seed=1), _base((1 << 20,), 3.0, seed=2)
    spec = PerturbationSpec(5, 1e-3, "relative")
    for name, base in (("a.weight", small), ("b.weight", large)):
        made = noise(spec, name, base.shape, scale=tensor_scale(base)).astype(np.float64)
        rms = np.sqrt(np.mean(base.astype(np.float64) ** 2))
        assert abs(np.sqrt(np.mean(made**2)) / (1e-3 * rms) - 1) < 0.01  # 2^20 draws: about 0.07% sd
        assert abs(made.mean()) < 5 / np.sqrt(made.size) * 1e-3 * rms


def test_tensor_scale_is_the_correctly_rounded_rms_whatever_the_layout():
    assert tensor_scale(np.full(10, 3.0, np.float32)) == 3.0
    assert tensor_scale(np.array([3.0, 4.0], np.float32)) == float(np.float32(math.sqrt(12.5)))
    for x in (_base((37, 51), 0.05, 3), _base((CHUNK + 5,), 1.7, 4), np.linspace(-4, 9, 999, dtype=np.float32)):
        assert tensor_scale(x) == _reference_scale(x)
        assert isinstance(tensor_scale(x), float) and tensor_scale(x) == float(np.float32(tensor_scale(x)))
    x = _base((64, 48), 0.3, 5)
    assert tensor_scale(x.T) == tensor_scale(np.ascontiguousarray(x.T))  # a view: its own element order
    assert tensor_scale(x.astype(np.float16).astype(np.float32)) == tensor_scale(x.astype(np.float16))
    # a tensor of zeros gets scale 0 (no floor: relative noise is proportional to the tensor)
    assert tensor_scale(np.zeros((4, 4), np.float32)) == 0.0 and tensor_scale(np.zeros(0, np.float32)) == 0.0
    with pytest.raises(ValueError, match="non-finite"):
        tensor_scale(np.array([1.0, np.nan], np.float32))


@pytest.mark.parametrize("start,stop", [(0, 10), (CHUNK - 5, CHUNK + 5), (WINDOW - 1, 2 * WINDOW + 1), (5, 5)])
def test_relative_slices_are_the_slices_of_the_whole(start, stop):
    spec = PerturbationSpec(11, 1e-3, "relative")
    shape = (2 * CHUNK + 7,)
    full = standard_noise(spec, "big", shape).ravel()
    np.testing.assert_array_equal(standard_noise(spec, "big", shape, start, stop), full[start:stop])
    factor = noise_factor(spec, 0.25)
    np.testing.assert_array_equal(factor * standard_noise(spec, "big", shape, start, stop), (factor * full)[start:stop])


def test_relative_noise_is_independent_of_parameter_order_and_filter_and_of_the_other_tensors():
    bases = {"a.weight": _base((64, 32), 0.5, 1), "b.weight": _base((64, 32), 2.0, 2), "c.bias": _base((64,), 0.1, 3)}

    def perturbed(filt, order):
        params = {n: bases[n].copy() for n in order}
        add_noise_(PerturbationSpec(5, 0.01, "relative", filter=filt), params.items())
        return params

    every = perturbed(ParamFilter(), ["a.weight", "b.weight", "c.bias"])
    backwards = perturbed(ParamFilter(), ["c.bias", "b.weight", "a.weight"])
    some = perturbed(ParamFilter(include=("*.weight",), exclude=("a.*",)), ["a.weight", "b.weight", "c.bias"])
    for n in bases:
        np.testing.assert_array_equal(backwards[n], every[n])
        expected = bases[n] + noise(PerturbationSpec(5, 0.01, "relative"), n, bases[n].shape, tensor_scale(bases[n]))
        np.testing.assert_array_equal(every[n], expected)
    np.testing.assert_array_equal(some["b.weight"], every["b.weight"])
    assert (some["a.weight"] == bases["a.weight"]).all() and (some["c.bias"] == bases["c.bias"]).all()


def test_same_shaped_tensors_of_the_same_rms_get_independent_relative_noise():
    a = _base((256, 512), 0.3, 1)
    b = a[::-1].copy()  # the same values in another order: the same scale
    assert tensor_scale(a) == tensor_scale(b)
    spec = PerturbationSpec(3, 1e-3, "relative")
    na = noise(spec, "model.layers.0.self_attn.k_proj.weight", a.shape, tensor_scale(a)).ravel()
    nb = noise(spec, "model.layers.0.self_attn.v_proj.weight", b.shape, tensor_scale(b)).ravel()
    assert abs(np.corrcoef(na, nb)[0, 1]) < 5 / np.sqrt(na.size)


def test_add_noise_makes_relative_noise_from_the_base_and_leaves_a_zero_tensor_alone(monkeypatch):
    spec = PerturbationSpec(9, 0.02, "relative")
    base = _base((CHUNK // 512 + 3, 1024), 0.8, 6)  # more than two chunks
    expected = base + noise(spec, "w", base.shape, tensor_scale(base))
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("THICKETS_NOISE_THREADS", threads)
        x = base.copy()
        add_noise_(spec, [("w", x)])  # the scale of the parameter as it was
        results.append(x)
        out = np.zeros_like(base)
        add_noise_(spec, [("w", out)], base={"w": base})  # the scale of the base
        results.append(out)
    for r in results:
        np.testing.assert_array_equal(r, expected)
    given = np.zeros_like(base)
    add_noise_(spec, [("w", given)], tensor_scales={"w": 2.0})  # an explicit scale wins
    np.testing.assert_array_equal(given, noise(spec, "w", base.shape, 2.0))
    zero, out = np.zeros((8, 8), np.float32), np.full((8, 8), 7.0, np.float32)
    add_noise_(spec, [("z", zero)])
    add_noise_(spec, [("z", out)], base={"z": zero})
    assert not zero.any() and not out.any() and not np.signbit(out).any()


def test_relative_specs_are_checked():
    with pytest.raises(ValueError, match="needs the base tensor's scale"):
        noise(PerturbationSpec(1, 1e-3, "relative"), "w", (4,))
    with pytest.raises(ValueError, match="is for the lowrank strategy"):
        PerturbationSpec(1, 1e-3, "relative", rank=2)
    with pytest.raises(ValueError, match="unknown noise strategy 'relative' for noise version 1"):
        PerturbationSpec(1, 1e-3, "relative", version=1)
    assert "relative" in STRATEGIES and PerturbationSpec(1, 1e-3, "relative", version=2)  # a strategy within 2
