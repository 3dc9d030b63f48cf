"""`thickets merge` (issue 29): the top-K experts' perturbations summed into one model, the scale chosen on
validation, gated on held-out questions, written with a recipe that rebuilds it bitwise."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from thickets.cli.commands import main
from thickets.engines import load_engine
from thickets.engines.transformers_engine import canonical_parameters
from thickets.noise import ParamFilter, PerturbationSpec
from thickets.randopt.config import SearchConfig
from thickets.randopt.search import search


def test_a_weighted_sum_is_the_experts_deltas_summed_directly(tiny_model_dir):
    engine, _ = load_engine(str(tiny_model_dir))
    base = {n: p.detach().clone() for n, p in engine.params.items()}
    a, b = PerturbationSpec(3, 0.05), PerturbationSpec(9, 0.02, filter=ParamFilter(include=("*mlp*",)))
    deltas = []
    for spec in (a, b):  # each expert's own delta, as perturb() makes it
        engine.perturb(spec)
        deltas.append({n: p.detach().float() - base[n].float() for n, p in engine.params.items()})
        engine.restore()
    engine.perturb(a)
    alone = {n: p.detach().clone() for n, p in engine.params.items()}
    engine.restore()
    engine.perturb_sum([(a, 1.0)])
    assert all(torch.equal(engine.params[n], alone[n]) for n in alone)  # one term of weight 1: the expert
    engine.restore()
    engine.perturb_sum([(a, 0.5), (b, 0.25)])
    for n, p in engine.params.items():
        want = base[n].float() + (deltas[0][n] * 0.5 + deltas[1][n] * 0.25)
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-6)
        if "mlp" not in n:  # only a's delta here
            torch.testing.assert_close(p.detach(), base[n] + deltas[0][n] * 0.5, rtol=0, atol=1e-6)
    engine.restore()
    assert all(torch.equal(p, base[n]) for n, p in engine.params.items())


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    config = SearchConfig(
        model=str(tiny_model_dir), task="toy", population=6, sigmas=(0.05,), val_size=6, max_new_tokens=4
    )
    run_dir = tmp_path_factory.mktemp("merge") / "run"
    search(config, run_dir, progress=False)
    return run_dir


def test_merge_writes_a_gated_model_that_its_recipe_rebuilds_bitwise(run, tmp_path, capsys):
    from thickets.ship.merge import rebuild

    out = tmp_path / "merged"
    argv = ["merge", "--run-dir", str(run), "--out", str(out), "--top-k", "3", "--scale", "1,2", "--gate-size", "5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "merged top-3 (mean" in printed and "top-3 vote" in printed
    recipe = json.loads((out / "thickets_merge.json").read_text())
    gate = recipe["gate"]
    assert [r["label"].split(" (")[0] for r in gate["rows"]] == [
        "base",
        "best single expert",
        "top-3 vote",
        "merged top-3",
    ]
    assert gate["gate_size"] == 5 and len(gate["scales_tried"]) == 2 and gate["scale"] in (1.0, 2.0)
    assert all(r["vs_base"] is None or len(r["vs_base"]["ci95"]) == 2 for r in gate["rows"])
    assert len(recipe["terms"]) == 3 and sum(t["weight"] for t in recipe["terms"]) == pytest.approx(gate["scale"])
    written = canonical_parameters(AutoModelForCausalLM.from_pretrained(out))
    rebuilt = canonical_parameters(rebuild(out / "thickets_merge.json").model)
    assert set(written) == set(rebuilt)
    assert all(torch.equal(written[n], rebuilt[n]) for n in written)
    base = canonical_parameters(AutoModelForCausalLM.from_pretrained(run.parent.parent / "tiny0" / "model"))
    assert any(not torch.equal(written[n], base[n]) for n in written if n in base)


def test_refusals_are_one_line_and_write_nothing(run, tmp_path, capsys):
    out = tmp_path / "merged"
    cases = [
        (["--top-k", "99"], "more than the 6 fully scored candidates"),
        (["--method", "median"], "invalid choice"),
        (["--scale", "0"], "--scale must be numbers in (0, 100]"),
        (["--gate-size", "1000000"], "--gate-size must be a number from 1 to"),
        (["--top-k", "0"], "--top-k must be a number from 1"),
    ]
    for flags, message in cases:
        assert main(["merge", "--run-dir", str(run), "--out", str(out), *flags]) == 2, flags
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (flags, err)
    assert not out.exists()


def test_low_rank_experts_merge_into_weights_the_recipe_rebuilds_and_one_adapter_of_rank_k_r(tiny_model_dir, tmp_path):
    """Each low-rank expert's delta is its merged product (what export writes); their sum is a merged model,
    and one peft adapter of rank K x R whose merge is those weights."""
    from peft import PeftConfig, PeftModel

    from thickets.ship.merge import MergeConfig, merge, rebuild

    config = SearchConfig(
        model=str(tiny_model_dir),
        task="toy",
        population=3,
        sigmas=(0.05,),
        val_size=3,
        max_new_tokens=3,
        strategy="lowrank",
        rank=2,
    )
    search(config, tmp_path / "run", progress=False)
    report = merge(
        MergeConfig(run_dir=str(tmp_path / "run"), out=str(tmp_path / "m"), top_k=2, scales=(1.0,), gate_size=3)
    )
    assert report["scale"] == 1.0 and len(report["rows"]) == 4
    written = canonical_parameters(AutoModelForCausalLM.from_pretrained(tmp_path / "m"))
    rebuilt = canonical_parameters(rebuild(tmp_path / "m" / "thickets_merge.json").model)
    assert all(torch.equal(written[n], rebuilt[n]) for n in written)
    base = canonical_parameters(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    vectors = [n for n in written if written[n].dim() == 1]
    assert vectors and all(torch.equal(written[n], base[n]) for n in vectors)  # low-rank experts move matrices only
    assert PeftConfig.from_pretrained(tmp_path / "m" / "adapter").r == 2 * 2
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "m" / "adapter")
    adapted = canonical_parameters(peft.merge_and_unload())
    moved = [n for n in written if not torch.equal(written[n], base[n])]
    assert moved and set(adapted) == set(written)
    for n in written:  # float32 rounding of another order of products, far below the perturbation
        torch.testing.assert_close(adapted[n], written[n], rtol=0, atol=1e-5)


def test_the_gram_of_the_experts_deltas_and_corps_weights(tiny_model_dir):
    """<delta_i, delta_j> from one streamed pass equals the inner products of the deltas perturb() makes;
    CoRP weights a rewarded expert by its agreement with the rewarded direction."""
    from thickets.ship.merge import compatibility

    engine, _ = load_engine(str(tiny_model_dir))
    base = {n: p.detach().clone() for n, p in engine.params.items()}
    specs = [PerturbationSpec(s, 0.05) for s in (1, 2)] + [PerturbationSpec(3, 0.05, "lowrank", rank=2)]
    flat = []
    for spec in specs:
        engine.perturb(spec, merge=True)
        flat.append(torch.cat([(p.detach().double() - base[n].double()).reshape(-1) for n, p in engine.params.items()]))
        engine.restore()
    want = torch.stack(flat) @ torch.stack(flat).T
    got = torch.from_numpy(engine.delta_gram(specs))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # two experts along one direction and one against it: the one against gets no weight
    gram = [[1.0, 0.9, -0.8], [0.9, 1.0, -0.7], [-0.8, -0.7, 1.0]]
    c = compatibility(gram, [1.0, 1.0, 0.5])
    assert c[0] > 0 and c[1] > 0 and c[2] < 0
    assert compatibility([[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0]) == pytest.approx([2**-0.5, 2**-0.5])


def test_merge_by_corp_records_its_weights_and_compatibility(run, tmp_path):
    from thickets.ship.merge import MergeConfig, merge

    cfg = MergeConfig(run_dir=str(run), out=str(tmp_path / "m"), top_k=3, method="corp", scales=(1.0,), gate_size=3)
    report = merge(cfg)  # the fixture's top three beat the base on validation (0.1 against 0.067)
    assert sum(report["weights"]) == pytest.approx(1.0) and len(report["compatibility"]) == 3
    assert all(w == 0 or c > 0 for w, c in zip(report["weights"], report["compatibility"]))
