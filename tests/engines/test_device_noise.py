"""Noise made on the weight's device is the noise thickets.noise defines, bitwise, on every device."""

import numpy as np
import pytest
import torch

from thickets.engines import device_noise
from thickets.engines.device_noise import perturbed_into_, standard_noise_on
from thickets.noise import WINDOW, PerturbationSpec, add_noise_, noise, standard_noise, tensor_scale

CPU = torch.device("cpu")
DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("start,stop", [(0, 3 * WINDOW + 7), (5, WINDOW + 3), (2 * WINDOW, 2 * WINDOW + 1)])
def test_device_noise_is_the_host_noise_bitwise(version, start, stop):
    spec = PerturbationSpec(21, 1e-3, version=version)
    host = standard_noise(spec, "layer.weight", (3 * WINDOW + 7,), start, stop).reshape(-1)
    for device in DEVICES:
        made = standard_noise_on(spec, "layer.weight", 3 * WINDOW + 7, device, start, stop)
        assert made.device.type == device.type
        np.testing.assert_array_equal(made.cpu().numpy(), host)


@pytest.mark.parametrize("version", [1, 2])
def test_perturbed_weights_equal_add_noise_in_float32_and_any_piece_size(version, monkeypatch):
    spec = PerturbationSpec(8, 2e-3, version=version)
    base = torch.randn(37, 3 * WINDOW + 11)
    expected = base.numpy().copy()
    add_noise_(spec, [("w", expected)])
    for piece in (device_noise.PIECE, WINDOW, 3 * WINDOW):  # pieces never change the values
        monkeypatch.setattr(device_noise, "PIECE", piece)
        for device in DEVICES:
            out = torch.empty_like(base, device=device)
            perturbed_into_(out, base.to(device), spec, "w")
            np.testing.assert_array_equal(out.cpu().numpy(), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_are_perturbed_in_float32_then_rounded_once(dtype):
    spec = PerturbationSpec(3, 1e-2)
    base = torch.randn(64, 96).to(dtype)
    out = torch.empty_like(base)
    perturbed_into_(out, base, spec, "w")
    expected = (base.float() + torch.from_numpy(noise(spec, "w", (64, 96)))).to(dtype)
    assert out.dtype == dtype and torch.equal(out, expected)
    assert not torch.equal(out, base)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_and_cpu_make_the_same_perturbed_float32_weights():
    spec = PerturbationSpec(5, 1e-3)
    base = torch.randn(1000, 777)
    on_cpu, on_gpu = torch.empty_like(base), torch.empty_like(base, device="cuda")
    perturbed_into_(on_cpu, base, spec, "w")
    perturbed_into_(on_gpu, base.cuda(), spec, "w")
    assert torch.equal(on_cpu, on_gpu.cpu())


def test_lowrank_weights_on_the_device_are_the_host_noise_and_a_true_rank_r_change():
    spec = PerturbationSpec(12, 1e-2, "lowrank", rank=3)
    base = torch.randn(70, 50)
    expected = base.numpy() + noise(spec, "w", (70, 50))
    for device in DEVICES:
        out = torch.empty_like(base, device=device)
        perturbed_into_(out, base.to(device), spec, "w")
        np.testing.assert_array_equal(out.cpu().numpy(), expected)  # the host's bits, on any device
        s = torch.linalg.svdvals((out.cpu() - base).double())
        assert int((s > 1e-3 * s[0]).sum()) == 3  # rank 3, up to the rounding of base + delta


def test_lowrank_pieces_of_rows_change_nothing(monkeypatch):
    spec = PerturbationSpec(12, 1e-2, "lowrank", rank=5)
    base = torch.randn(64, 40)
    whole = torch.empty_like(base)
    perturbed_into_(whole, base, spec, "w")
    monkeypatch.setattr(device_noise, "PIECE", 100)  # two rows a piece
    pieces = torch.empty_like(base)
    perturbed_into_(pieces, base, spec, "w")
    assert torch.equal(whole, pieces)


def test_relative_weights_on_the_device_are_the_host_noise_bitwise(monkeypatch):
    spec = PerturbationSpec(8, 2e-3, "relative")
    base = torch.randn(37, 3 * WINDOW + 11) * 0.3
    scale = tensor_scale(base.numpy())
    expected = base.numpy().copy()
    add_noise_(spec, [("w", expected)])
    np.testing.assert_array_equal(expected, base.numpy() + noise(spec, "w", tuple(base.shape), scale))
    for piece in (device_noise.PIECE, WINDOW):
        monkeypatch.setattr(device_noise, "PIECE", piece)
        for device in DEVICES:
            out = torch.empty_like(base, device=device)
            perturbed_into_(out, base.to(device), spec, "w", scale)
            np.testing.assert_array_equal(out.cpu().numpy(), expected)
    with pytest.raises(ValueError, match="needs the base tensor's scale"):
        perturbed_into_(torch.empty_like(base), base, spec, "w")


def test_relative_half_precision_weights_are_perturbed_in_float32_then_rounded_once():
    spec = PerturbationSpec(3, 1e-2, "relative")
    base = (torch.randn(64, 96) * 4).to(torch.bfloat16)
    scale = tensor_scale(base.float().numpy())  # the values as held, upcast exactly
    out = torch.empty_like(base)
    perturbed_into_(out, base, spec, "w", scale)
    expected = (base.float() + torch.from_numpy(noise(spec, "w", (64, 96), scale))).to(torch.bfloat16)
    assert torch.equal(out, expected) and not torch.equal(out, base)


def test_threads_perturbing_at_once_each_get_their_own_noise(monkeypatch):
    """Each thread gathers into its own scratch buffer: with one buffer a process, two threads wrote into
    each other's noise."""
    import threading

    monkeypatch.setattr(device_noise, "PIECE", WINDOW)  # many gathers, so the threads interleave
    base = torch.zeros(64, 3 * WINDOW)
    specs = [PerturbationSpec(s, 1.0) for s in range(8)]
    want = []
    for spec in specs:
        out = torch.empty_like(base)
        perturbed_into_(out, base, spec, "w")
        want.append(out)
    wrong = []

    def work(spec, expected):
        for _ in range(5):
            out = torch.empty_like(base)
            perturbed_into_(out, base, spec, "w")
            wrong.append(not torch.equal(out, expected))

    threads = [threading.Thread(target=work, args=(s, w)) for s, w in zip(specs, want)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wrong) == 40 and not any(wrong)


def test_the_cpu_table_is_the_host_tables_memory_not_a_second_copy():
    """128 MiB held once on a CPU: the table torch gathers from is the NumPy table itself."""
    from thickets.engines.device_noise import table_on
    from thickets.noise import noise_table

    table = table_on(torch.device("cpu"))
    host = noise_table()
    assert table.data_ptr() == host.ctypes.data
    assert np.array_equal(table[0].numpy(), host[:4096])
