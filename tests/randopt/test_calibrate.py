"""Sigma chosen automatically (--sigma auto, thickets calibrate): the pilot's schedule, its curve, its choice
on constructed score surfaces, and the pilot inside a real search (stored, counted, resumable)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from thickets.errors import ThicketsError
from thickets.noise import candidate_seed
from thickets.randopt import pilot
from thickets.randopt.calibrate import calibrate
from thickets.randopt.config import AUTO, SearchConfig
from thickets.randopt.search import search
from thickets.randopt.store import CALIBRATION_FILE, DB_NAME, RunStore, read_config

GRID = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)


def _scores(per_point: list[list[float]], m: int) -> dict[int, float]:
    """Candidate index -> score, grid point by grid point."""
    return {g * m + j: s for g, point in enumerate(per_point) for j, s in enumerate(point)}


def _shares(shares: list[float], m: int, good: float = 0.9, bad: float = 0.4) -> list[list[float]]:
    """Per grid point, round(share * m) candidates at `good` and the rest at `bad` (base 0.5)."""
    return [[good] * round(s * m) + [bad] * (m - round(s * m)) for s in shares]


# -- the pure rules, on constructed surfaces ---------------------------------------------------------


def test_the_schedule_walks_the_grid_ascending_m_candidates_each():
    assert pilot.schedule((1e-3, 2e-3, 5e-3), 2) == [1e-3, 1e-3, 2e-3, 2e-3, 5e-3, 5e-3]
    config = SearchConfig(sigmas=AUTO, pilot_grid=(1e-3, 2e-3, 5e-3), pilot_per_sigma=2, population=10)
    assert [config.candidate(i).sigma for i in range(6)] == pilot.schedule(config.pilot_grid, 2)
    with pytest.raises(ThicketsError, match="not chosen sigma yet"):
        config.candidate(6)
    done = config.with_choice((1e-3, 2e-3), (2e-3,))  # the walk stopped after two points
    assert [done.candidate(i).sigma for i in range(8)] == [1e-3, 1e-3, 2e-3, 2e-3] + [2e-3] * 4
    two = config.with_choice((1e-3, 2e-3, 5e-3), (1e-3, 2e-3))
    assert [two.candidate(i).sigma for i in range(6, 10)] == [1e-3, 2e-3, 1e-3, 2e-3]  # round robin after
    assert [done.candidate(i).seed for i in range(8)] == [candidate_seed(0, i) for i in range(8)]


def test_density_picks_the_known_peak_of_a_constructed_surface():
    m = 8
    shares = [0.125, 0.25, 0.5, 0.875, 0.625, 0.25, 0.0]  # peaked at 1e-3
    points = pilot.curve(GRID, m, _scores(_shares(shares, m), m), base=0.5, collapse=0.5)
    assert [p.sigma for p in points] == list(GRID) and not any(p.collapsed for p in points)
    assert [p.density for p in points] == shares
    assert pilot.choose(points, "density") == (1e-3,)
    assert pilot.choose(points, "density", keep=2) == (1e-3, 2e-3)  # the best two, ascending
    lo, hi = points[3].density_ci95
    assert lo < 0.875 < hi


def test_the_topk_rule_follows_the_upper_tail_where_the_rules_disagree():
    m = 8
    # 5e-4: most candidates a little above the base; 2e-3: few above, but far above
    per_point = [
        [0.45] * 8,
        [0.45] * 8,
        [0.52] * 6 + [0.45] * 2,
        [0.52] * 2 + [0.45] * 6,
        [0.95] * 2 + [0.3] * 6,
        [0.2] * 8,
    ]
    points = pilot.curve(GRID, m, _scores(per_point, m), base=0.5, collapse=0.5)
    assert pilot.choose(points, "density") == (5e-4,)
    assert pilot.choose(points, "topk") == (2e-3,)
    assert points[4].topk_gain == pytest.approx(0.45)  # the best quarter (2 of 8) minus the base
    assert points[-1].collapsed and [p.sigma for p in points][-1] == 5e-3


def test_ties_go_to_the_smaller_sigma_and_the_other_rule_breaks_them_first():
    m = 4
    per_point = [[0.6, 0.6, 0.4, 0.4], [0.6, 0.6, 0.4, 0.4], [0.9, 0.6, 0.4, 0.4]]
    points = pilot.curve(GRID[:3], m, _scores(per_point, m), base=0.5, collapse=0.5)
    assert pilot.choose(points, "density") == (5e-4,)  # equal density: the larger best quarter wins
    assert pilot.choose(points[:2], "density") == (1e-4,)  # equal on both: the smaller sigma
    assert pilot.choose(points[:2], "topk") == (1e-4,)


def test_collapse_ends_the_walk_and_what_lies_beyond_is_never_read():
    m = 4
    per_point = [[0.55] * 4, [0.6] * 4, [0.1, 0.2, 0.2, 0.9], [0.7] * 4, [0.8] * 4]  # 5e-4 collapses
    points = pilot.curve(GRID, m, _scores(per_point, m), base=0.5, collapse=0.5)
    assert [p.sigma for p in points] == [1e-4, 2e-4, 5e-4] and points[-1].collapsed
    assert pilot.walk_over(points, GRID)
    assert pilot.choose(points, "density") == (2e-4,)  # the collapsed point is never chosen
    assert pilot.collapsed([0.0, 0.0, 0.1], base=0.3, collapse=0.5)  # all but nothing, base above zero
    assert not pilot.collapsed([0.0, 0.0, 0.0], base=0.0, collapse=0.5)  # a zero base never collapses
    # a partial walk: a point whose candidates are not all scored ends the curve, and the walk goes on
    partial = pilot.curve(GRID, m, dict.fromkeys(range(6), 0.6), base=0.5, collapse=0.5)
    assert len(partial) == 1 and not pilot.walk_over(partial, GRID)
    every = pilot.curve(GRID, m, _scores([[0.1] * 4], m), base=0.5, collapse=0.5)
    assert pilot.choose(every, "topk") == (1e-4,)  # everything collapsed: the smallest is kept
    assert (
        "collapsed"
        in pilot.record(
            grid=GRID, per_sigma=m, rule="topk", keep=1, collapse=0.5, base=0.5, points=every, chosen=(1e-4,)
        )["note"]
    )


# -- the pilot inside a search, with a model whose score surface is known ------------------------------


class SurfaceEngine:
    """No model: a candidate's answers follow a known surface over sigma. At grid point g, the first
    round(share[g] * m) candidates (by index) answer "apple" (reward 1), the rest write "apple" on a
    third of the prompts (about 0.4); from `dead` on, candidates write nothing (0). The base writes
    "apple" on two thirds (about 0.7)."""

    class _Tok:
        chat_template = None

    tokenizer = _Tok()

    def __init__(self, grid, m, shares, dead=None, seed=0, population=200):
        self.index = {candidate_seed(seed, i): i for i in range(population)}
        self.grid, self.m, self.shares, self.dead = grid, m, shares, dead
        self.quality = 2 / 3
        self.sigmas_seen = []

    def perturb(self, spec):
        self.sigmas_seen.append(spec.sigma)
        i = self.index[spec.seed]
        if self.dead is not None and spec.sigma >= self.dead:
            self.quality = -1.0
        elif i < len(self.grid) * self.m:
            g = self.grid.index(spec.sigma)
            self.quality = 1.0 if i % self.m < round(self.shares[g] * self.m) else 1 / 3
        else:
            self.quality = 1.0 if i % 2 else 1 / 3

    def restore(self):
        self.quality = 2 / 3

    def generate(self, prompts, max_new_tokens, stop=(), add_special_tokens=False):
        out = []
        for p in prompts:
            u = int(hashlib.sha256(p.encode()).hexdigest(), 16) % 3 / 3  # 0, 1/3 or 2/3
            out.append("" if self.quality < 0 else "apple" if u < self.quality - 1e-9 else "zebra")
        return out

    def describe(self):
        return {"engine": "surface"}


def _auto(model, **kw):
    base = dict(
        model=str(model),
        task="toy",
        sigmas=AUTO,
        pilot_grid=(0.01, 0.02, 0.05, 0.1, 0.2),
        pilot_per_sigma=4,
        population=30,
        val_size=12,
        max_new_tokens=2,
        batch_size=4,
    )
    return SearchConfig(**{**base, **kw})


def _candidates(run_dir):
    with sqlite3.connect(Path(run_dir) / DB_NAME) as con:
        return con.execute("SELECT idx, seed, sigma, score FROM candidates ORDER BY idx").fetchall()


def test_a_search_with_sigma_auto_finds_the_peak_and_spends_the_rest_there(tmp_path, tiny_model_dir):
    config = _auto(tiny_model_dir)
    engine = SurfaceEngine(config.pilot_grid, 4, [0.25, 0.5, 1.0, 0.5, 0.25])
    result = search(config, tmp_path / "run", engine=engine, progress=False)
    assert result.calibration["chosen"] == [0.05] and result.calibration["pilot_size"] == 20
    assert [p["density"] for p in result.calibration["points"]] == [0.25, 0.5, 1.0, 0.5, 0.25]
    cands = _candidates(tmp_path / "run")
    assert [c[0] for c in cands] == list(range(30))  # the pilot's 20 count toward the population of 30
    assert [c[2] for c in cands] == pilot.schedule(config.pilot_grid, 4) + [0.05] * 10
    stored = read_config(tmp_path / "run")
    assert stored.pilot_tried == config.pilot_grid and stored.pilot_chosen == (0.05,)
    assert json.loads((tmp_path / "run" / CALIBRATION_FILE).read_text()) == result.calibration


def test_collapse_stops_the_walk_and_no_candidate_is_scored_beyond_it(tmp_path, tiny_model_dir):
    config = _auto(tiny_model_dir, population=24)
    engine = SurfaceEngine(config.pilot_grid, 4, [0.25, 0.75, 0.5, 0.5, 0.5], dead=0.05)
    result = search(config, tmp_path / "run", engine=engine, progress=False)
    assert result.calibration["tried"] == [0.01, 0.02, 0.05] and result.calibration["collapsed_at"] == 0.05
    assert max(engine.sigmas_seen) == 0.05 and engine.sigmas_seen.count(0.05) == 4
    assert result.calibration["chosen"] == [0.02]
    cands = _candidates(tmp_path / "run")
    assert len(cands) == 24 and [c[2] for c in cands] == [0.01] * 4 + [0.02] * 4 + [0.05] * 4 + [0.02] * 12


def test_the_topk_rule_and_two_sigmas_kept_make_a_small_grid(tmp_path, tiny_model_dir):
    config = _auto(tiny_model_dir, pilot_rule="topk", pilot_keep=2, population=26)
    engine = SurfaceEngine(config.pilot_grid, 4, [0.0, 0.25, 0.5, 0.75, 0.0])
    result = search(config, tmp_path / "run", engine=engine, progress=False)
    assert result.calibration["chosen"] == [0.05, 0.1]  # equal best quarters: density, then the smaller
    assert [c[2] for c in _candidates(tmp_path / "run")][20:] == [0.05, 0.1] * 3


def test_a_run_cut_back_into_its_pilot_forgets_the_choice_and_walks_again(tmp_path, tiny_model_dir):
    """RunStore.keep_first (compare's "the run as it stood after N candidates")."""
    config = _auto(tiny_model_dir, population=24)
    shares = [0.25, 0.5, 1.0, 0.5, 0.25]
    first = search(config, tmp_path / "run", engine=SurfaceEngine(config.pilot_grid, 4, shares), progress=False)
    before = _candidates(tmp_path / "run")
    with RunStore.open(tmp_path / "run") as store:
        store.keep_first(22)  # past the pilot: the choice stands
    assert read_config(tmp_path / "run").pilot_chosen == (0.05,)
    with RunStore.open(tmp_path / "run") as store:
        store.keep_first(10)
        assert store.calibration() is None and store.config.pilot_chosen == () and store.config.population == 10
    assert not (tmp_path / "run" / CALIBRATION_FILE).exists()
    again = search(config, tmp_path / "run", engine=SurfaceEngine(config.pilot_grid, 4, shares), progress=False)
    assert again.calibration == first.calibration and _candidates(tmp_path / "run") == before


def test_racing_never_stops_a_pilot_candidate(tmp_path, tiny_model_dir):
    config = _auto(tiny_model_dir, racing="exact", racing_top_k=1, population=28)
    engine = SurfaceEngine(config.pilot_grid, 4, [0.25, 0.5, 1.0, 0.5, 0.25])
    result = search(config, tmp_path / "run", engine=engine, progress=False)
    pilot_idx = set(range(20))
    assert all(c.complete for c in result.ranked if c.idx in pilot_idx)
    assert any(not c.complete for c in result.ranked if c.idx not in pilot_idx)  # the rest is raced


# -- the pilot on the tiny model: stored, resumed, extended --------------------------------------------


def _tiny(model, **kw):
    base = dict(
        model=str(model),
        task="toy",
        sigmas=AUTO,
        pilot_grid=(0.001, 0.003, 0.01),
        pilot_per_sigma=2,
        population=8,
        val_size=4,
        max_new_tokens=3,
        batch_size=4,
        seed=5,
    )
    return SearchConfig(**{**base, **kw})


def _store_content(run_dir):
    with sqlite3.connect(Path(run_dir) / DB_NAME) as con:
        cands = con.execute("SELECT idx, seed, sigma, score, accuracy, format_rate, n_val FROM candidates").fetchall()
        results = con.execute("SELECT * FROM results ORDER BY model, split, example").fetchall()
        config = json.loads(con.execute("SELECT value FROM meta WHERE key='config'").fetchone()[0])
        record = json.loads(con.execute("SELECT value FROM meta WHERE key='calibration'").fetchone()[0])
    return sorted(cands), results, config, record


class FailingEngine:
    """Fails on its `fail_at`-th perturbation: a run killed in the middle."""

    def __init__(self, inner, fail_at):
        self.inner, self.fail_at, self.perturbs = inner, fail_at, 0
        self.tokenizer = inner.tokenizer

    def perturb(self, spec):
        self.perturbs += 1
        if self.perturbs == self.fail_at:
            raise RuntimeError("killed")
        self.inner.perturb(spec)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_run_killed_mid_pilot_resumes_to_the_store_of_an_uninterrupted_one(tmp_path, tiny_model_dir, tiny_engine):
    config = _tiny(tiny_model_dir)
    whole = search(config, tmp_path / "whole", engine=tiny_engine, progress=False)
    assert whole.calibration["pilot_size"] == 6 and len(whole.ranked) == 8
    with pytest.raises(RuntimeError, match="killed"):  # killed on the pilot's fourth candidate: three are stored
        search(config, tmp_path / "killed", engine=FailingEngine(tiny_engine, 4), progress=False)
    with RunStore.open(tmp_path / "killed", write=False) as store:
        assert len(store.candidates()) == 3 and store.calibration() is None and not store.config.calibrated
    counting = FailingEngine(tiny_engine, fail_at=0)
    resumed = search(config, tmp_path / "killed", engine=counting, progress=False)
    assert counting.perturbs == 5  # nothing scored twice
    assert _store_content(tmp_path / "killed") == _store_content(tmp_path / "whole")
    assert resumed.calibration == whole.calibration
    assert (tmp_path / "killed" / CALIBRATION_FILE).read_text() == (tmp_path / "whole" / CALIBRATION_FILE).read_text()


def test_calibrate_then_search_goes_on_from_the_pilot_and_a_run_can_grow(tmp_path, tiny_model_dir, tiny_engine):
    config = _tiny(tiny_model_dir, population=1)  # calibrate takes neither sigma nor population
    counting = FailingEngine(tiny_engine, fail_at=0)
    record = calibrate(replace(config, sigmas=(0.3,)), tmp_path / "run", engine=counting, progress=False)
    pilot_size = record["pilot_size"]
    assert counting.perturbs == pilot_size and read_config(tmp_path / "run").population == pilot_size
    assert calibrate(config, tmp_path / "run", engine=counting, progress=False) == record  # done: nothing more
    assert counting.perturbs == pilot_size
    grown = search(_tiny(tiny_model_dir, population=9), tmp_path / "run", engine=counting, progress=False)
    assert counting.perturbs == 9 and grown.calibration == record
    bigger = search(_tiny(tiny_model_dir, population=11), tmp_path / "run", engine=counting, progress=False)
    assert counting.perturbs == 11 and len(bigger.ranked) == 11
    sigmas = [c[2] for c in sorted(_candidates(tmp_path / "run"))]
    chosen = record["chosen"]
    assert sigmas == pilot.schedule(config.pilot_grid, 2)[:pilot_size] + [chosen[0]] * (11 - pilot_size)
    # the same run folder refuses a fixed sigma, and says the run's is auto
    with pytest.raises(ThicketsError, match="sigmas: 'auto' in the run"):
        search(_tiny(tiny_model_dir, sigmas=(0.1,), population=11), tmp_path / "run", engine=counting, progress=False)


# -- bad input, old configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "over, message",
    [
        (dict(population=5), "smaller than the pilot"),
        (dict(pilot_grid=(0.1, 0.05)), "must be increasing"),
        (dict(pilot_grid=(0.1, 0.1)), "must be increasing"),
        (dict(pilot_grid=()), "at least one sigma"),
        (dict(pilot_rule="best"), "unknown --pilot-rule"),
        (dict(pilot_keep=4), "pilot-keep"),
        (dict(pilot_collapse=1.0), "pilot-collapse"),
        (dict(pilot_per_sigma=0), "pilot-per-sigma"),
    ],
)
def test_bad_pilot_settings_are_refused_before_anything_is_written(tmp_path, tiny_model_dir, over, message):
    with pytest.raises(ThicketsError, match=message):
        search(_tiny(tiny_model_dir, **over), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_config_stored_before_sigma_auto_loads_unchanged():
    old = {"model": "m", "task": "toy", "population": 3, "sigmas": [0.001, 0.002], "val_size": 4, "seed": 1}
    config = SearchConfig.from_dict(old)
    assert not config.auto and config.calibrated and config.pilot_size == 0
    assert [config.candidate(i).sigma for i in range(3)] == [0.001, 0.002, 0.001]
    assert config.pilot_grid == pilot.DEFAULT_GRID and config.pilot_tried == config.pilot_chosen == ()
    again = SearchConfig.from_dict(config.to_dict())
    assert again == config and again.to_dict()["sigmas"] == [0.001, 0.002]
    # a non-auto run ignores pilot settings: another pilot grid is not another run
    assert config.differences(replace(config, pilot_grid=(0.1, 0.2))) == []
    auto = replace(config, sigmas=AUTO)
    assert auto.differences(replace(auto, pilot_grid=(0.1, 0.2))) == ["pilot_grid"]
    assert SearchConfig.from_dict(auto.with_choice((1e-4,), (1e-4,)).to_dict()).pilot_chosen == (1e-4,)
    assert SearchConfig(sigmas="auto").auto  # Python spells it as the command line does
