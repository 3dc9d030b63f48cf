import hashlib
import subprocess
import sys

import numpy as np
import pytest

from thickets.noise import (
    CHUNK,
    NOISE_VERSION,
    NOISE_VERSIONS,
    WINDOW,
    ParamFilter,
    PerturbationSpec,
    add_noise_,
    noise,
    standard_noise,
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
}


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
