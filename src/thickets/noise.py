"""Perturbation noise as a pure function of (seed, canonical parameter name, shape, sigma, strategy).

Each parameter gets its own stream: a Philox key derived from (seed, name) by BLAKE2b, so
same-shaped tensors get independent noise and a filter that keeps fewer parameters never
changes the noise of the ones it keeps. The flattened tensor is cut into fixed chunks of
CHUNK elements; chunk c draws from the Philox counter c << 64. That makes any slice cheap
to generate on its own (an engine that shards or fuses tensors generates only its piece),
and lets chunks be generated in parallel threads. Within a chunk NumPy's float32 ziggurat
turns the bits into standard normals. Nothing here knows about models or engines.
"""

from __future__ import annotations

import fnmatch
import hashlib
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from thickets.errors import SpecError

#: recorded in every run and recipe; bump when the map from spec to noise changes
NOISE_VERSION = "thickets-noise-1 (philox4x64 per name, 2^20-element chunks, numpy ziggurat float32)"
CHUNK = 1 << 20


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

    def __post_init__(self) -> None:
        if not (isinstance(self.sigma, numbers.Real) and self.sigma > 0 and np.isfinite(self.sigma)):
            raise SpecError(f"sigma must be a positive, finite number, got {self.sigma}")
        if self.strategy not in STRATEGIES:
            raise SpecError(f"unknown noise strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if not (isinstance(self.seed, numbers.Integral) and 0 <= self.seed < 2**63):
            raise SpecError(f"seed must be an integer in [0, 2**63), got {self.seed}")


def derive_seed(purpose: bytes, *parts: int) -> int:
    """A 62-bit seed from integers, for one purpose: unrelated seeds for other parts or another purpose.
    Every seed thickets derives (a candidate's, an ES perturbation's) comes from here."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8, person=purpose).digest()
    return int.from_bytes(digest, "little") >> 2


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


def _gaussian(seed: int, name: str, numel: int, start: int, stop: int, out: np.ndarray) -> None:
    """Fill `out` with elements [start, stop) of the standard-normal stream of (seed, name)."""
    key = stream_key(seed, name)
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


#: strategy name -> filler(seed, name, numel, start, stop, out) of *standard* noise
STRATEGIES: dict[str, Callable[[int, str, int, int, int, np.ndarray], None]] = {"gaussian": _gaussian}


def standard_noise(
    spec: PerturbationSpec, name: str, shape: Sequence[int], start: int = 0, stop: int | None = None
) -> np.ndarray:
    """Unit-variance noise for one parameter (flattened slice [start, stop)); multiply by sigma."""
    numel = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    stop = numel if stop is None else stop
    if not 0 <= start <= stop <= numel:
        raise ValueError(f"slice [{start}, {stop}) out of range for {numel} elements")
    out = np.empty(stop - start, dtype=np.float32)
    STRATEGIES[spec.strategy](spec.seed, name, numel, start, stop, out)
    if start == 0 and stop == numel:
        return out.reshape(tuple(shape))
    return out


def noise(spec: PerturbationSpec, name: str, shape: Sequence[int]) -> np.ndarray:
    """sigma * standard noise: what gets added to parameter `name`."""
    out = standard_noise(spec, name, shape)
    out *= np.float32(spec.sigma)
    return out


def _threads() -> int:
    return max(1, int(os.environ.get("THICKETS_NOISE_THREADS", os.cpu_count() or 1)))


def add_noise_(
    spec: PerturbationSpec,
    params: Iterable[tuple[str, np.ndarray]],
    scale: float = 1.0,
    base: Mapping[str, np.ndarray] | None = None,
) -> None:
    """In place: params[name] += scale * sigma * noise(name), chunk by chunk in parallel threads.
    With `base`: params[name] = base[name] + scale * sigma * noise(name), in the same single pass.

    `params` are float32 NumPy views (of torch tensors, say). Each chunk is generated and
    added in one thread while it is in cache; no full-size noise tensor is ever allocated.
    """
    alpha = np.float32(scale * spec.sigma)
    fill = STRATEGIES[spec.strategy]
    jobs = []
    for name, arr in params:
        if not spec.filter.keeps(name):
            continue
        if arr.dtype != np.float32 or not arr.flags.c_contiguous:
            raise TypeError(f"{name}: add_noise_ needs a contiguous float32 array, got {arr.dtype}")
        flat = arr.reshape(-1)
        src = flat
        if base is not None:
            src = base[name].reshape(-1)
            if src.dtype != np.float32 or src.shape != flat.shape:
                raise TypeError(f"{name}: base must be float32 of the same shape as the parameter")
        for lo in range(0, flat.size, CHUNK):
            jobs.append((name, flat, src, lo, min(lo + CHUNK, flat.size)))

    def run(job: tuple[str, np.ndarray, np.ndarray, int, int]) -> None:
        name, flat, src, lo, hi = job
        buf = np.empty(hi - lo, dtype=np.float32)
        fill(spec.seed, name, flat.size, lo, hi, buf)
        buf *= alpha
        np.add(src[lo:hi], buf, out=flat[lo:hi])

    threads = _threads()
    if threads == 1:
        for job in jobs:
            run(job)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, jobs))
