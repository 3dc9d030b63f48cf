"""Perturbation noise as a pure function of (seed, canonical parameter name, shape, sigma, strategy, version).

Every parameter gets its own stream keyed by (seed, name) through BLAKE2b, so same-shaped tensors
get independent noise and a filter that keeps fewer parameters never changes the noise of the ones
it keeps. Any slice of a stream can be made on its own (an engine that shards or fuses tensors
makes only its piece). Two versions of the map exist; a run records which it was made with:

1. Philox4x64 per name, cut into 2^20-element chunks (chunk c at counter c << 64), NumPy's float32
   ziggurat within a chunk. About 5 ns per parameter on the host: the runs of release 0.1.
2. One table of 2^25 standard normals, made once per process from a fixed Philox key with the
   version-1 generator; a stream is a sequence of 4096-element windows of the table, window c of
   (seed, name) starting at a keyed 64-bit hash of c. Making noise is a gather of contiguous
   windows, so it runs at memory speed on whatever device holds the table and the weight, and every
   device reads the same float32 values: they are copies of the table's. Salimans et al. (2017)
   share a table the same way; keying every 4096-element window (not one offset per perturbation)
   keeps streams apart: two windows coincide in part with probability about 2^-12 per pair.

3. Version 2's gaussian and relative maps unchanged; the low-rank product A @ B.T made the same on
   every machine (lowrank_product): version 2 took it from a float32 matrix multiply, whose blocking
   and use of fused multiply-adds depend on the BLAS, the CPU and the shape of the piece made, so two
   machines (or two piece sizes on one) could give an expert weights a rounding apart.

Strategies are maps within a version: (2, "gaussian") is the one above; (2, "lowrank") multiplies
two slices of the same stream; (2, "relative") scales the gaussian stream of each tensor by that
tensor's RMS (tensor_scale). Adding a strategy changes no existing (version, strategy) map, so it
needs no new version: a version is bumped only when a map that runs were made with would change.

Nothing here knows about models, engines or torch; engines gather on their device with the
offsets from window_offsets().
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thickets.errors import SpecError
from thickets.seeds import derive_seed

#: every map from spec to noise thickets has made, by the number a run records; add one, never change one
NOISE_VERSIONS = {
    1: "thickets-noise-1 (philox4x64 per name, 2^20-element chunks, numpy ziggurat float32)",
    2: "thickets-noise-2 (keyed 4096-element windows of one 2^25-entry float32 normal table)",
    3: "thickets-noise-3 (version 2's table; low-rank products summed in float64 in rank order, rounded once)",
}
#: what new runs use
NOISE_VERSION = 3
CHUNK = 1 << 20  # version 1's chunk; also the unit add_noise_ hands to a thread
WINDOW = 1 << 12
TABLE_SIZE = 1 << 25
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class ParamFilter:
    """Which parameters a perturbation touches: shell-style patterns on canonical names."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def keeps(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.include) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.exclude
        )


@dataclass(frozen=True)
class PerturbationSpec:
    """Everything that defines one perturbed model relative to its base."""

    seed: int
    sigma: float
    strategy: str = "gaussian"
    filter: ParamFilter = field(default_factory=ParamFilter)
    version: int = NOISE_VERSION
    rank: int = 0  #: the low-rank strategy's R; 0 for full-rank strategies

    def __post_init__(self) -> None:
        if not (isinstance(self.sigma, numbers.Real) and self.sigma > 0 and np.isfinite(self.sigma)):
            raise SpecError(f"sigma must be a positive, finite number, got {self.sigma}")
        if self.version not in NOISE_VERSIONS:
            raise SpecError(f"unknown noise version {self.version!r}; this thickets makes {sorted(NOISE_VERSIONS)}")
        if (self.version, self.strategy) not in _FILLERS:
            known = sorted(s for v, s in _FILLERS if v == self.version)
            raise SpecError(
                f"unknown noise strategy {self.strategy!r} for noise version {self.version}; known: {', '.join(known)}"
            )
        if self.strategy == "lowrank" and not (isinstance(self.rank, numbers.Integral) and self.rank >= 1):
            raise SpecError(f"the lowrank strategy needs a rank of at least 1, got {self.rank}")
        if self.strategy != "lowrank" and self.rank:
            raise SpecError(f"a rank ({self.rank}) is for the lowrank strategy, not {self.strategy!r}")
        if not (isinstance(self.seed, numbers.Integral) and 0 <= self.seed < 2**63):
            raise SpecError(f"seed must be an integer in [0, 2**63), got {self.seed}")


def unmerged(spec: PerturbationSpec) -> bool:
    """Whether the expert is its adapter applied unmerged (low-rank, noise version 3 on), not merged weights;
    version 2's low-rank experts were merged into the weights, and runs made with it keep that. Unmerged,
    the change is made and added in float32, so no rounding of the weights loses any of it."""
    return spec.strategy == "lowrank" and spec.version >= 3


def candidate_seed(run_seed: int, index: int) -> int:
    """The seed of candidate `index` of a run: different run seeds give unrelated populations."""
    return derive_seed(b"thickets-cand", run_seed, index)


def stream_key(seed: int, name: str) -> int:
    """The 128-bit Philox key of one parameter's stream."""
    digest = hashlib.blake2b(f"{seed}\x00{name}".encode(), digest_size=16, person=b"thickets-noise").digest()
    return int.from_bytes(digest, "little")


def _standard_chunk(key: int, chunk: int, out: np.ndarray) -> None:
    gen = np.random.Generator(np.random.Philox(key=key, counter=chunk << 64))
    gen.standard_normal(out=out, dtype=np.float32)


def _numel(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def _gaussian(spec: PerturbationSpec, name: str, shape: Sequence[int], start: int, stop: int, out: np.ndarray) -> None:
    """Fill `out` with elements [start, stop) of the standard-normal stream of (seed, name)."""
    key, numel = stream_key(spec.seed, name), _numel(shape)
    pos = start
    while pos < stop:
        c = pos // CHUNK
        lo, hi = c * CHUNK, min((c + 1) * CHUNK, numel)
        if pos == lo and hi <= stop:
            _standard_chunk(key, c, out[pos - start : hi - start])
        else:  # a partial chunk: generate it whole, keep the slice asked for
            tmp = np.empty(hi - lo, dtype=np.float32)
            _standard_chunk(key, c, tmp)
            end = min(hi, stop)
            out[pos - start : end - start] = tmp[pos - lo : end - lo]
        pos = min(hi, stop)


_TABLE_KEY = stream_key(0, "thickets-noise-table")


@functools.cache
def noise_table() -> np.ndarray:
    """The 2^25 standard normals of version 2, made once per process (about 0.1 s), read-only."""
    table = np.empty(TABLE_SIZE, dtype=np.float32)
    _parallel(lambda c: _standard_chunk(_TABLE_KEY, c, table[c * CHUNK : (c + 1) * CHUNK]), range(TABLE_SIZE // CHUNK))
    table.flags.writeable = False
    return table


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    out: np.ndarray = x ^ (x >> np.uint64(31))
    return out


def window_offsets(seed: int, name: str, first: int, count: int) -> np.ndarray:
    """Where in the table windows first..first+count-1 of (seed, name)'s version-2 stream start (int64)."""
    key = stream_key(seed, name)
    c = np.arange(first, first + count, dtype=np.uint64)
    x = _mix64(c * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key & _MASK64))
    x = _mix64(x ^ np.uint64(key >> 64))
    return (x % np.uint64(TABLE_SIZE - WINDOW + 1)).astype(np.int64)


def window_span(start: int, stop: int) -> tuple[int, int, int]:
    """The windows that cover elements [start, stop): (first window, count, start's place in the first)."""
    first = start // WINDOW
    return first, max(0, -(-stop // WINDOW) - first), start - first * WINDOW


def table_stream(seed: int, name: str, start: int, stop: int) -> np.ndarray:
    """Elements [start, stop) of (seed, name)'s version-2 stream: copies of table windows."""
    first, count, skip = window_span(start, stop)
    windows = np.lib.stride_tricks.sliding_window_view(noise_table(), WINDOW)
    rows: np.ndarray = windows[window_offsets(seed, name, first, count)]
    return rows.reshape(-1)[skip : skip + stop - start]


def _table_gaussian(
    spec: PerturbationSpec, name: str, shape: Sequence[int], start: int, stop: int, out: np.ndarray
) -> None:
    out[:] = table_stream(spec.seed, name, start, stop)


def matrix_shape(shape: Sequence[int]) -> tuple[int, int] | None:
    """The (rows, columns) a low-rank perturbation sees: a 2-D or larger weight flattened after its first
    axis; None for a vector (norms, biases), which a low-rank strategy leaves alone."""
    return (int(shape[0]), _numel(shape[1:])) if len(shape) >= 2 else None


def check_rank(spec: PerturbationSpec, name: str, shape: Sequence[int]) -> None:
    mat = matrix_shape(shape)
    if spec.strategy == "lowrank" and mat is not None and spec.rank > min(mat):
        raise SpecError(
            f"rank {spec.rank} is above the smaller side of {name} {tuple(shape)}; use --rank {min(mat)} or less"
        )


@functools.lru_cache(maxsize=8)
def lowrank_factors(seed: int, name: str, rows: int, cols: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """A [rows, rank] and B [cols, rank], standard normal, read-only: A the first rows * rank elements of
    (seed, name)'s version-2 stream, B the next cols * rank."""
    a = table_stream(seed, name, 0, rows * rank).reshape(rows, rank)
    b = table_stream(seed, name, rows * rank, (rows + cols) * rank).reshape(cols, rank)
    a.flags.writeable = b.flags.writeable = False
    return a, b


def lowrank_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b.T in float32, the same bits on every machine and library: each product of two float32s is
    exact in float64, the products are summed in float64 in rank order, and the sum is rounded once.
    (A float32 matmul's order of summation and fused multiply-adds depend on the BLAS and the shape.)"""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    acc = a64[:, :1] * b64[:, 0]
    for r in range(1, a.shape[1]):
        acc += a64[:, r : r + 1] * b64[:, r]
    return acc.astype(np.float32)


def _lowrank(spec: PerturbationSpec, name: str, shape: Sequence[int], start: int, stop: int, out: np.ndarray) -> None:
    """A @ B.T / sqrt(rank): every entry has unit variance, as in the full-rank stream; vectors get zero.
    Version 2 multiplies in float32 by the BLAS; later versions by lowrank_product."""
    mat = matrix_shape(shape)
    if mat is None:
        out[:] = 0
        return
    check_rank(spec, name, shape)
    rows, cols = mat
    a, b = lowrank_factors(spec.seed, name, rows, cols, spec.rank)
    r0, r1 = start // cols, -(-stop // cols)
    product = a[r0:r1] @ b.T if spec.version == 2 else lowrank_product(a[r0:r1], b)
    block = product * np.float32(1 / np.sqrt(spec.rank))
    out[:] = block.reshape(-1)[start - r0 * cols : stop - r0 * cols]


Filler = Callable[[PerturbationSpec, str, Sequence[int], int, int, np.ndarray], None]
#: (version, strategy) -> filler(spec, name, shape, start, stop, out) of *standard* noise
_FILLERS: dict[tuple[int, str], Filler] = {
    (1, "gaussian"): _gaussian,
    (2, "gaussian"): _table_gaussian,
    (2, "lowrank"): _lowrank,
    (2, "relative"): _table_gaussian,  # the gaussian stream; noise_factor() carries the tensor's scale
    (3, "gaussian"): _table_gaussian,
    (3, "lowrank"): _lowrank,
    (3, "relative"): _table_gaussian,
}
#: the strategies new runs can choose
STRATEGIES = tuple(s for v, s in _FILLERS if v == NOISE_VERSION)


def tensor_scale(array: np.ndarray) -> float:
    """The relative strategy's scale of one base tensor: its RMS, sqrt(sum(x^2) / n), as a float32 value.

    Made bit for bit the same on any machine, device and engine: the values as the engine holds them
    (in its dtype), upcast exactly to float64 on the host; each square is exact in float64; each
    2^20-element block (CHUNK) is summed by NumPy's pairwise float64 sum, and the block sums by
    math.fsum (correctly rounded); then the square root of the mean, rounded once to float32. So the
    order of the sum is fixed by the element count alone, and the memory it takes by one block.

    A tensor whose values are all zero gets scale 0, and so no noise: relative noise is proportional to
    the tensor, as in the authors' 'frobenius' scaling. No floor: any floor would be a size in the
    weights' own units that this function cannot know, and it would make the scale jump at an arbitrary
    RMS rather than shrink with it; and an all-zero tensor in a pretrained model is one pretraining
    never moved (a bias the architecture does not use, say). To move such a tensor, use the gaussian
    strategy. A tensor with a non-finite value is refused.
    """
    flat = np.asarray(array).reshape(-1)
    if flat.size == 0:
        return 0.0
    sums = [float(np.sum(np.square(flat[lo : lo + CHUNK].astype(np.float64)))) for lo in range(0, flat.size, CHUNK)]
    total = math.fsum(sums)
    if not math.isfinite(total):
        raise SpecError("a tensor with non-finite values has no relative noise scale")
    return float(np.float32(math.sqrt(total / flat.size)))


def noise_factor(spec: PerturbationSpec, scale: float | None = None) -> np.float32:
    """What a parameter's standard noise is multiplied by: float32(sigma); for the relative strategy,
    float32(sigma * scale), the product of sigma and the tensor's float32 scale (tensor_scale) taken in
    float64 and rounded once. Every engine multiplies by this one float32 number."""
    if spec.strategy != "relative":
        return np.float32(spec.sigma)
    if scale is None:
        raise SpecError("relative noise needs the base tensor's scale (noise.tensor_scale)")
    return np.float32(spec.sigma * float(scale))


def standard_noise(
    spec: PerturbationSpec, name: str, shape: Sequence[int], start: int = 0, stop: int | None = None
) -> np.ndarray:
    """Unit-variance noise for one parameter (flattened slice [start, stop)); multiply by
    noise_factor(spec, scale) (sigma, or for the relative strategy sigma times the tensor's scale)."""
    numel = _numel(shape)
    stop = numel if stop is None else stop
    if not 0 <= start <= stop <= numel:
        raise ValueError(f"slice [{start}, {stop}) out of range for {numel} elements")
    out = np.empty(stop - start, dtype=np.float32)
    _FILLERS[spec.version, spec.strategy](spec, name, tuple(shape), start, stop, out)
    if start == 0 and stop == numel:
        return out.reshape(tuple(shape))
    return out


def noise(spec: PerturbationSpec, name: str, shape: Sequence[int], scale: float | None = None) -> np.ndarray:
    """sigma * standard noise: what gets added to parameter `name`. The relative strategy needs the base
    tensor's `scale` (tensor_scale of it) and gives sigma * scale * standard noise."""
    factor = noise_factor(spec, scale)
    out = standard_noise(spec, name, shape)
    out *= factor
    return out


def _threads() -> int:
    return max(1, int(os.environ.get("THICKETS_NOISE_THREADS", os.cpu_count() or 1)))


def add_noise_(
    spec: PerturbationSpec,
    params: Iterable[tuple[str, np.ndarray]],
    scale: float = 1.0,
    base: Mapping[str, np.ndarray] | None = None,
    tensor_scales: Mapping[str, float] | None = None,
) -> None:
    """In place: params[name] += scale * sigma * noise(name), chunk by chunk in parallel threads.
    With `base`: params[name] = base[name] + scale * sigma * noise(name), in the same single pass.

    `params` are float32 NumPy views (of torch tensors, say). Each chunk is generated and
    added in one thread while it is in cache; no full-size noise tensor is ever allocated.

    The relative strategy multiplies each tensor's noise by its scale: `tensor_scales[name]`, or else
    tensor_scale() of `base[name]`, or else of the parameter as it is before the noise is added. A
    tensor of scale 0 is left as it is.
    """
    fill = _FILLERS[spec.version, spec.strategy]
    jobs = []
    for name, arr in params:
        if not spec.filter.keeps(name) or (spec.strategy == "lowrank" and matrix_shape(arr.shape) is None):
            continue
        alpha = np.float32(scale * spec.sigma)
        if spec.strategy == "relative":
            ts = (
                tensor_scales[name]
                if tensor_scales is not None
                else tensor_scale(base[name] if base is not None else arr)
            )
            if ts == 0:
                if base is not None:
                    np.copyto(arr, base[name])
                continue
            alpha = np.float32(scale * spec.sigma * float(ts))
        if arr.dtype != np.float32 or not arr.flags.c_contiguous:
            raise TypeError(f"{name}: add_noise_ needs a contiguous float32 array, got {arr.dtype}")
        flat = arr.reshape(-1)
        src = flat
        if base is not None:
            src = base[name].reshape(-1)
            if src.dtype != np.float32 or src.shape != flat.shape:
                raise TypeError(f"{name}: base must be float32 of the same shape as the parameter")
        for lo in range(0, flat.size, CHUNK):
            jobs.append((name, arr.shape, flat, src, lo, min(lo + CHUNK, flat.size), alpha))

    def run(job: tuple[str, tuple[int, ...], np.ndarray, np.ndarray, int, int, np.float32]) -> None:
        name, shape, flat, src, lo, hi, alpha = job
        buf = np.empty(hi - lo, dtype=np.float32)
        fill(spec, name, shape, lo, hi, buf)
        buf *= alpha
        np.add(src[lo:hi], buf, out=flat[lo:hi])

    _parallel(run, jobs)


def _parallel(fn: Callable[[Any], None], jobs: Iterable[Any]) -> None:
    threads = _threads()
    if threads == 1:
        for job in jobs:
            fn(job)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fn, jobs))
