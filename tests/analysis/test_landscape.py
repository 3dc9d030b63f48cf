"""`thickets analyze` on a run folder whose scores are known."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from thickets.analysis.landscape import RunScores, analyze, density, projection
from thickets.cli.commands import main
from thickets.noise import PerturbationSpec, standard_noise
from thickets.randopt.config import SearchConfig
from thickets.randopt.store import BASE, RunStore, candidate_model
from thickets.tasks.base import Example, Score, ScoredExample

VAL = 10


def _rows(n_correct: int, n: int = VAL):
    return [
        ScoredExample(i, Example(f"e{i}", "q"), "a", Score("1", "1", float(i < n_correct), i < n_correct))
        for i in range(n)
    ]


@pytest.fixture()
def known_run(tmp_path, tiny_model_dir):
    """Base 0.4; sigma 0.01 candidates score 0.2..0.7, sigma 0.02 ones 0.1..0.5; test answers for 4 experts."""
    config = SearchConfig(model=str(tiny_model_dir), task="toy", population=8, sigmas=(0.01, 0.02), val_size=VAL)
    correct = {0: 7, 1: 1, 2: 5, 3: 5, 4: 4, 5: 2, 6: 2, 7: 3}  # idx 0,2,4,6 sigma .01; 1,3,5,7 sigma .02
    run = tmp_path / "run"
    with RunStore.open(run, config) as store:
        store.add_results(BASE, "val", _rows(4))
        for idx, c in correct.items():
            spec = config.candidate(idx)
            store.add_candidate(idx, spec.seed, spec.sigma, _rows(c), 1.0)
        store.add_results(BASE, "test", _rows(3, 6))
        for idx, c in [(0, 6), (2, 1), (3, 1), (4, 5)]:  # ranked order: 0 (0.7), 2 and 3 (0.5), 4 (0.4)
            store.add_results(candidate_model(idx), "test", _rows(c, 6))
    return run


def test_densities_per_sigma_are_counted_from_the_store(known_run):
    r = RunScores.read(known_run)
    assert r.base == pytest.approx(0.4)
    rows = {d["sigma"]: d for d in density(r, 0.15)}
    # sigma 0.01: 0.7, 0.5, 0.4, 0.2 -> above 0.4: 2 of 4; above 0.55: 1 of 4
    assert rows[0.01]["above_base"] == 0.5 and rows[0.01]["above_base_plus_delta"] == 0.25
    # sigma 0.02: 0.1, 0.5, 0.2, 0.3 -> above 0.4: 1 of 4; above 0.55: none
    assert rows[0.02]["above_base"] == 0.25 and rows[0.02]["above_base_plus_delta"] == 0.0
    assert rows[None]["n"] == 8 and rows[None]["above_base"] == 3 / 8
    assert rows[0.01]["best"] == pytest.approx(0.7) and rows[0.02]["mean"] == pytest.approx(0.275)


def test_analyze_writes_figures_summary_and_a_self_contained_report(known_run):
    s = analyze(known_run, delta=0.15, projection_map=True, progress=False)
    curve = s["topk_curves"]["toy"]
    # test answers "1" everywhere, correct on the first c questions: votes agree, so top-K = best expert
    assert curve["k"] == [1, 2, 3, 4] and curve["accuracy"][0] == pytest.approx(1.0) and curve["base"] == 0.5
    html = (known_run / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == 5 and "http" not in html
    assert "What the population buys" in html and "split-half reliability" in html
    for name in ("histogram", "sigma_curve", "topk", "population", "projection"):
        assert (known_run / "analysis" / f"{name}.png").stat().st_size > 1000


def test_the_perturbation_map_equals_the_projection_of_the_full_noise(tiny_model_dir):
    shapes = [("a.weight", (3, 5)), ("b.bias", (7,))]
    specs = [PerturbationSpec(11, 0.01), PerturbationSpec(12, 0.02)]
    xy = projection(specs, shapes, progress=False)
    dirs = [PerturbationSpec(20260 + j, 1.0) for j in range(2)]

    def flat(spec):
        return np.concatenate([standard_noise(spec, n, s).reshape(-1) for n, s in shapes])

    for i, spec in enumerate(specs):
        expected = [spec.sigma * flat(d) @ flat(spec) / np.sqrt(22) for d in dirs]
        np.testing.assert_allclose(xy[i], expected, rtol=1e-5)


def test_the_perturbation_map_of_relative_noise_scales_each_tensor(tiny_model_dir, tmp_path):
    shapes = [("a.weight", (3, 5)), ("b.bias", (7,))]
    scales = {"a.weight": 0.5, "b.bias": 3.0}
    specs = [PerturbationSpec(11, 0.01, "relative"), PerturbationSpec(12, 0.02, "relative")]
    xy = projection(specs, shapes, progress=False, scales=scales)
    dirs = [PerturbationSpec(20260 + j, 1.0) for j in range(2)]

    def flat(spec, scaled):
        return np.concatenate(
            [standard_noise(spec, n, s).reshape(-1) * (scales[n] if scaled else 1) for n, s in shapes]
        )

    for i, spec in enumerate(specs):
        expected = [spec.sigma * flat(d, False) @ flat(spec, True) / np.sqrt(22) for d in dirs]
        np.testing.assert_allclose(xy[i], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="base tensors' scales"):
        projection(specs, shapes, progress=False)

    # analyze takes the scales from the run's model, as its engine makes them
    from thickets.analysis import landscape
    from thickets.engines import load_engine

    config = SearchConfig(model=str(tiny_model_dir), task="toy", population=3, strategy="relative", val_size=VAL)
    run = tmp_path / "run"
    with RunStore.open(run, config) as store:
        store.add_results(BASE, "val", _rows(4))
        for idx in range(3):
            spec = config.candidate(idx)
            store.add_candidate(idx, spec.seed, spec.sigma, _rows(3 + idx), 1.0)
    engine, _ = load_engine(str(tiny_model_dir))
    assert landscape._tensor_scales(RunScores.read(run).config) == engine.tensor_scales()
    analyze(run, projection_map=True, progress=False)
    assert (run / "analysis" / "projection.png").stat().st_size > 1000


def test_analyze_bad_input(tmp_path, capsys):
    assert main(["analyze", "--run-dir", str(tmp_path / "none")]) == 2
    assert "no thickets run" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs Debian's package)")
def test_the_report_renders_in_headless_chromium_with_every_image_loaded(known_run, tmp_path):
    analyze(known_run, delta=0.15, projection_map=False, progress=False)
    page = tmp_path / "probe.html"
    probe = (
        "<script>window.addEventListener('load',()=>{const ok=[...document.images]"
        ".filter(i=>i.complete&&i.naturalWidth>0).length;document.title='loaded '+ok+' of '"
        "+document.images.length})</script>"
    )
    page.write_text((known_run / "report.html").read_text().replace("</body>", probe + "</body>"))
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-500:]
    assert "<title>loaded 4 of 4</title>" in out.stdout  # histogram, sigma curve, top-K and population curves


def _task_rows(per_task: dict[str, int], n: int = 4):
    """Validation rows of a multi-task run: for each task, n examples, the first c of them correct."""
    rows, pos = [], 0
    for task, c in per_task.items():
        for i in range(n):
            rows.append(ScoredExample(pos, Example(f"{task}|e{i}", "q"), "a", Score("1", "1", float(i < c), i < c)))
            pos += 1
    return rows


def test_specialisation_matrix_of_a_known_multi_task_run(tmp_path, tiny_model_dir):
    from thickets.analysis.landscape import specialisation

    config = SearchConfig(model=str(tiny_model_dir), task="toy,small", population=4, val_size=8)
    run = tmp_path / "multi"
    gains = {0: (3, 1), 1: (1, 3), 2: (3, 3), 3: (2, 1)}  # correct of 4 on toy, small; base 2, 2
    with RunStore.open(run, config) as store:
        store.add_results(BASE, "val", _task_rows({"toy": 2, "small": 2}))
        for idx, (a, b) in gains.items():
            spec = config.candidate(idx)
            store.add_candidate(idx, spec.seed, spec.sigma, _task_rows({"toy": a, "small": b}), 1.0)
    s = specialisation(run)
    assert s["tasks"] == ["toy", "small"]
    np.testing.assert_allclose(s["gains"], [[0.25, -0.25], [-0.25, 0.25], [0.25, 0.25], [0.0, -0.25]])
    assert s["improve_one_hurt_another"] == 0.5  # candidates 0 and 1
    assert s["improve_all"] == 0.25
    assert s["trade_offs"]["toy up, small down"] == 0.25 and s["trade_offs"]["small up, toy down"] == 0.25
    g = np.array(s["gains"])
    assert s["correlation"][0][1] == pytest.approx(np.corrcoef(g[:, 0], g[:, 1])[0, 1])
    summary = analyze(run, projection_map=False, progress=False)
    assert summary["specialisation"]["improve_all"] == 0.25
    assert "Specialisation across tasks" in (run / "report.html").read_text()


def test_a_multi_task_search_scores_every_task_and_ensembles_per_task(tmp_path, tiny_model_dir):
    from thickets.randopt.ensemble import ensemble
    from thickets.randopt.search import search

    config = SearchConfig(
        model=str(tiny_model_dir),
        task="toy,small",
        population=3,
        sigmas=(0.05,),
        val_size=4,
        max_new_tokens=2,
        batch_size=4,
    )
    result = search(config, tmp_path / "run", progress=False)
    with RunStore.open(tmp_path / "run", write=False) as store:
        ids = [i for (i,) in store.con.execute("SELECT example_id FROM results WHERE model='base' AND split='val'")]
    assert sorted(i.split("|")[0] for i in ids) == ["small", "small", "toy", "toy"]
    assert len(result.ranked) == 3
    report = ensemble(tmp_path / "run", [1, 2], 2, progress=False)
    assert set(report["tasks"]) == {"toy", "small"}
    assert all(r["test_size"] == 1 for r in report["tasks"].values())
    s = analyze(tmp_path / "run", projection_map=False, progress=False)
    assert s["specialisation"]["tasks"] == ["toy", "small"]
    assert set(s["topk_curves"]) == {"toy", "small"}  # per task, as ensemble ranked them
    assert all(c["n_test"] == 1 and c["k"] == [1, 2] for c in s["topk_curves"].values())


def test_density_intervals_are_wilsons_and_cover_the_share():
    from thickets.analysis.landscape import wilson

    lo, hi = wilson(0, 96)
    assert lo == 0.0 and 0.03 < hi < 0.05  # no improving candidate in 96 still allows a few percent
    lo, hi = wilson(48, 96)
    assert lo < 0.5 < hi and abs((lo + hi) / 2 - 0.5) < 1e-12 and 0.09 < hi - 0.5 < 0.11
    assert wilson(96, 96)[1] == 1.0 and wilson(0, 0) == [0.0, 1.0]
