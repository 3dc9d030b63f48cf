"""`thickets bench` measures both sides on the same candidates; the figures it reports are consistent."""

from __future__ import annotations

import json

import pytest

from thickets.bench.config import BenchConfig
from thickets.bench.runner import bench
from thickets.cli.commands import main
from thickets.engines import fast_decode


@pytest.fixture(scope="module")
def figures(tiny_model_dir, tmp_path_factory):
    """`thickets bench --json` on the tiny model: the figures as a user's file holds them."""
    out = tmp_path_factory.mktemp("bench") / "figures.json"
    assert (
        main(
            [
                "--quiet",
                "bench",
                "--model",
                str(tiny_model_dir),
                "--task",
                "products",
                "--candidates",
                "3",
                "--val-size",
                "4",
                "--max-new-tokens",
                "4",
                "--batch-sizes",
                "1,3",
                "--decode-tokens",
                "3",
                "--population-batch",
                "2",
                "--rank",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    return json.loads(out.read_text())


def test_the_figures_benchmarks_md_records_are_written(figures):
    for key in (
        "decode_vs_hf_b3",
        "roofline_fraction_b3",
        "search_vs_naive",
        "perturb_share",
        "warm_load_s",
        "peak_rss_gb",
    ):
        assert isinstance(figures[key], float), key


def test_search_and_naive_loop_score_the_same_candidates_alike(figures):
    """Both sides score the same candidates on the same prompts: only their speed may differ."""
    assert figures["same_scores"] is True and figures["same_top_k"] is True
    assert figures["search_candidates_per_hour"] > 0 and figures["naive_candidates_per_hour"] > 0


def test_decode_figures_for_each_batch_size(figures):
    for b in (1, 3):
        d = figures["decode"][str(b)]
        # both fast paths gave generate's tokens, at every batch size timed, and the compiled step the eager one's
        assert d["same_tokens"] is True and d["loop_same_tokens"] is True
        if fast_decode.has_cxx_compiler():
            assert d["compiled_same_tokens"] is True
            ratio = d["compiled_step_tok_s"] / d["ours_step_tok_s"]
            assert figures[f"compiled_vs_eager_step_b{b}"] == pytest.approx(ratio)
            assert isinstance(figures[f"compile_s_b{b}"], float)
        else:
            assert "compiled_same_tokens" not in d and f"compile_s_b{b}" not in figures
        assert d["matmul_gflop_s"] > 0 and d["ours_tok_s"] > 0 and d["hf_tok_s"] > 0 and d["loop_tok_s"] > 0


def test_memory_and_load_figures(figures):
    """Every part of a candidate's time is measured; a search's peak memory is above the interpreter's."""
    assert figures["perturb_share"] > 0 and figures["perturb_restore_s"] > 0 and figures["candidate_s"] > 0
    assert figures["noise_v1_ns_per_param"] > 0 and figures["noise_v2_ns_per_param"] > 0
    # a perturbation reads and writes every moved tensor at least once: it cannot beat a plain copy by much
    assert figures["copy_floor_s"] > 0 and figures["perturb_vs_copy"] > 0
    assert figures["peak_rss_gb"] > figures["loaded_rss_gb"] >= figures["baseline_rss_gb"] > 0
    # the named parts and the rest add up to the peak above the interpreter
    parts = ("memory_budget_gb", "noise_table_gb", "load_overhead_gb", "unnamed_gb")
    assert sum(figures[k] for k in parts) == pytest.approx(figures["peak_above_baseline_gb"])
    assert figures["noise_table_gb"] == 0.125


def test_population_figures_compare_the_same_rows(figures):
    pop = figures["population"]
    assert pop["experts"] == 2 and pop["rank"] == 2
    assert pop["population_tok_s"] > 0 and pop["inference_tok_s"] > 0 and pop["one_at_a_time_tok_s"] > 0
    assert figures["search_vs_inference"] == pytest.approx(pop["population_tok_s"] / pop["inference_tok_s"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-sizes", "1,x"], "--batch-sizes must be integers"),
        (["--batch-sizes", "0"], "must be at least 1"),
        (["--decode-tokens", "1"], "--decode-tokens at least 2"),
        (["--json", "/nonexistent/dir/out.json"], "folder /nonexistent/dir does not exist"),
    ],
)
def test_bad_bench_input_is_one_line_before_any_work(args, message, capsys):
    assert main(["--quiet", "bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bench_from_python_takes_a_config(tiny_model_dir):
    cfg = BenchConfig(
        model=str(tiny_model_dir),
        task="products",
        candidates=1,
        val_size=2,
        max_new_tokens=2,
        batch_sizes=(2,),
        decode_tokens=2,
        top_k=1,
    )
    r = bench(cfg, progress=False)
    assert set(r["decode"]) == {2} and "decode_vs_hf_b2" in r and r["config"]["candidates"] == 1


def test_without_a_cxx_compiler_the_bench_leaves_the_compiled_step_out_and_still_prints(
    tiny_model_dir, monkeypatch, capsys
):
    from thickets.analysis.reports import print_bench
    from thickets.bench.runner import TARGETS

    monkeypatch.setattr(fast_decode, "has_cxx_compiler", lambda: False)
    cfg = BenchConfig(
        model=str(tiny_model_dir), task="products", candidates=1, val_size=2, max_new_tokens=2, batch_sizes=(2,),
        decode_tokens=2, top_k=1,
    )  # fmt: skip
    r = bench(cfg, progress=False)
    assert "compiled_vs_eager_step_b2" not in r and "compiled_same_tokens" not in r["decode"][2]
    print_bench(r, TARGETS)
    assert "no C++ compiler" in capsys.readouterr().out
