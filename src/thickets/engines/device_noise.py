"""Version-2 noise made on the device that holds the weight: a gather of table windows, then one add
(full rank), or two gathered factors and one matrix product (low rank).

The table (noise.noise_table) is copied to each device once per process; after that a candidate's
noise never crosses the bus: only its window offsets do (8 bytes per 4096 parameters). The values
are copies of the table's, so CPU and CUDA hold bitwise the same noise, and sigma * noise and
base + that are single correctly rounded float32 operations on both.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from thickets.noise import (
    TABLE_SIZE,
    WINDOW,
    PerturbationSpec,
    check_rank,
    matrix_shape,
    noise_factor,
    noise_table,
    standard_noise,
    window_offsets,
    window_span,
)

_tables: dict[torch.device, torch.Tensor] = {}
_tables_lock = threading.Lock()
#: each thread's own scratch buffers: two threads perturbing at once (two in-process servers, a user's
#: threads) must never gather into one buffer (39 of 80 perturbations came out wrong when they did)
_local = threading.local()
#: elements made per gather (a multiple of WINDOW): bounds the scratch buffer to 16 MiB per device
PIECE = 1 << 22


def _scratch_on(device: torch.device, windows: int) -> torch.Tensor:
    """A reused [windows, WINDOW] buffer: gathering into fresh memory costs its page faults, about
    five times the gather itself on a CPU (1.1 against 0.2 ns per element, measured)."""
    scratch: dict[torch.device, torch.Tensor] = _local.__dict__.setdefault("scratch", {})
    buf = scratch.get(device)
    if buf is None or buf.shape[0] < windows:
        buf = scratch[device] = torch.empty((max(windows, PIECE // WINDOW + 1), WINDOW), device=device)
    return buf[:windows]


def table_on(device: torch.device) -> torch.Tensor:
    """The noise table on `device`, as (TABLE_SIZE - WINDOW + 1, WINDOW) overlapping windows (a view)."""
    with _tables_lock:  # made once per device, whichever thread asks first
        if device not in _tables:
            with warnings.catch_warnings():  # read-only: torch is never given a way to write it (views, gathers)
                warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
                host = torch.from_numpy(noise_table())  # on the CPU, the host table's own memory: no second copy
            _tables[device] = host.to(device)
    return _tables[device].as_strided((TABLE_SIZE - WINDOW + 1, WINDOW), (1, 1))


def stream_on(
    seed: int, name: str, start: int, stop: int, device: torch.device, *, scratch: bool = False
) -> torch.Tensor:
    """Elements [start, stop) of (seed, name)'s version-2 stream, float32 on `device`. With `scratch`,
    in the device's reused buffer: valid until the next call that uses it."""
    first, count, skip = window_span(start, stop)
    offsets = torch.from_numpy(window_offsets(seed, name, first, count)).to(device)
    table = table_on(device)
    rows = torch.index_select(table, 0, offsets, out=_scratch_on(device, count)) if scratch else table[offsets]
    return rows.view(-1)[skip : skip + stop - start]


def standard_noise_on(
    spec: PerturbationSpec,
    name: str,
    numel: int,
    device: torch.device,
    start: int = 0,
    stop: int | None = None,
    *,
    scratch: bool = False,
) -> torch.Tensor:
    """Elements [start, stop) of (spec.seed, name)'s standard-normal stream, float32 on `device`."""
    stop = numel if stop is None else stop
    if spec.version == 1:  # release 0.1's stream is made on the host
        return torch.from_numpy(standard_noise(spec, name, (numel,), start, stop).reshape(-1)).to(device)
    return stream_on(spec.seed, name, start, stop, device, scratch=scratch)


def lowrank_factors_on(spec: PerturbationSpec, name: str, shape: Sequence[int], device: torch.device) -> LowRank:
    """A [rows, R] and B [cols, R] of a low-rank perturbation, on `device`, and the scale sigma / sqrt(R)."""
    mat = matrix_shape(shape)
    if mat is None:
        raise ValueError(f"{name} {tuple(shape)} is a vector: the low-rank strategy leaves it alone")
    check_rank(spec, name, shape)
    rows, cols = mat
    r = spec.rank
    a = stream_on(spec.seed, name, 0, rows * r, device).view(rows, r)
    b = stream_on(spec.seed, name, rows * r, (rows + cols) * r, device).view(cols, r)
    return LowRank(a, b, float(np.float32(1 / np.sqrt(r))), spec.sigma, exact=spec.version >= 3)


@dataclass(frozen=True)
class LowRank:
    """delta = sigma * (a @ b.T) * inv_sqrt_rank: the exact LoRA pair of one perturbed weight."""

    a: torch.Tensor
    b: torch.Tensor
    inv_sqrt_rank: float
    sigma: float
    exact: bool = True  #: the product as noise.lowrank_product makes it (version 3 on), else a float32 matmul

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows lo..hi of delta, float32, in the order of operations noise.noise uses."""
        a = self.a[lo:hi]
        if not self.exact:
            block = a @ self.b.T
        else:  # noise.lowrank_product: exact float64 products, summed in rank order, rounded once
            a64, b64 = a.double(), self.b.double()
            acc = a64[:, :1] * b64[:, 0]
            for r in range(1, a.shape[1]):
                acc.addcmul_(a64[:, r : r + 1], b64[:, r])  # fused or not, the same: the product is exact
            block = acc.float()
        return block.mul_(self.inv_sqrt_rank).mul_(self.sigma)


def _add_into(out: torch.Tensor, base: torch.Tensor, delta: torch.Tensor) -> None:
    """out = base + delta, in float32, rounded once to out's dtype."""
    if base.dtype == torch.float32:
        torch.add(base, delta, out=out)
    else:
        out.copy_(base.float().add_(delta))


@torch.no_grad()
def perturbed_into_(
    out: torch.Tensor, base: torch.Tensor, spec: PerturbationSpec, name: str, scale: float | None = None
) -> None:
    """out = base + sigma * noise(name), piece by piece on base's device; out may be in any float dtype.
    The relative strategy needs the base tensor's `scale` (noise.tensor_scale): out = base + the float32
    noise_factor(spec, scale) times the gaussian stream, the same two float32 operations as on the host."""
    if spec.strategy == "lowrank":
        factors = lowrank_factors_on(spec, name, base.shape, base.device)
        rows, cols = factors.a.shape[0], factors.b.shape[0]
        out2, base2 = out.view(rows, cols), base.reshape(rows, cols)
        step = max(1, PIECE // cols)
        for lo in range(0, rows, step):
            hi = min(lo + step, rows)
            _add_into(out2[lo:hi], base2[lo:hi], factors.rows(lo, hi))
        return
    # float32(sigma) for gaussian noise (what torch makes of spec.sigma too), float32(sigma * scale) for relative
    factor = float(noise_factor(spec, scale)) if spec.strategy == "relative" else spec.sigma
    flat_out, flat_base = out.view(-1), base.reshape(-1)
    n = flat_base.numel()
    for lo in range(0, n, PIECE):
        hi = min(lo + PIECE, n)
        eps = standard_noise_on(spec, name, n, base.device, lo, hi, scratch=True)
        _add_into(flat_out[lo:hi], flat_base[lo:hi], eps.mul_(factor))
