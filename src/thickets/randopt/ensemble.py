"""The top-K vote against the base and the best single expert, on the held-out test split.

Each of the K best candidates (see vote.rank) answers every test question; the answers are
stored, so asking again with other K values generates nothing new. The report is data (a dict,
also written as report.json by `analysis.reports`); a multi-task run gets one per task, its
experts ranked by their validation score on that task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from thickets.engines import Engine
from thickets.errors import ThicketsError
from thickets.models import resolve
from thickets.noise import PerturbationSpec
from thickets.progress import bar
from thickets.randopt.config import SearchConfig, check_split_size
from thickets.randopt.preflight import check_prompts, check_unchanged, load_run_config, population_batch_for
from thickets.randopt.scoring import engine_for, evaluate, evaluate_population, task_for
from thickets.randopt.store import BASE, Candidate, RunStore, Summary, candidate_model
from thickets.randopt.vote import ADAPTIVE_RULES, adaptive_vote, decided, fully_scored, paired_gain, rank_on_task
from thickets.tasks import Example, Score, Task
from thickets.tasks.splits import make_splits


@dataclass(frozen=True)
class Row:
    """One line of the report: accuracy and extractable fraction on the test split."""

    label: str
    k: int
    accuracy: float
    format_rate: float
    score: float | None = None  # mean reward, for single models
    asked: float = 1.0  # models that answered a question, on average (K, or fewer with an adaptive vote)


class StoredAnswers:
    """Stored test answers of each model, generated (and stored) where missing, with one engine loaded
    on first need."""

    def __init__(
        self, store: RunStore, config: SearchConfig, task: Task, test: Sequence[Example], engine: Engine | None
    ):
        self.store, self.config, self.task, self.test, self.engine = store, config, task, test, engine

    def of(self, model: str, spec: PerturbationSpec | None, positions: Sequence[int]) -> dict[int, Score]:
        have = self.store.scores(model, "test")
        for pos, ex_id in self.store.example_ids("test", model).items():
            if pos < len(self.test) and self.test[pos].id != ex_id:
                raise ThicketsError(
                    f"stored test answers of {model} are for other examples (the task changed?); use a new run folder"
                )
        missing = [pos for pos in positions if pos not in have]
        if missing:
            if self.engine is None:
                self.engine = engine_for(self.config)
            rows = evaluate(self.engine, self.task, [self.test[p] for p in missing], self.config, spec)
            self.store.add_results(model, "test", [r._replace(position=missing[r.position]) for r in rows])
            have = self.store.scores(model, "test")
        return {p: have[p] for p in positions}

    def prefetch(self, experts: Sequence[Candidate], positions: Sequence[int]) -> None:
        """Low-rank experts with no stored test answers at these positions answer in one population batch
        (each expert's answers equal its own, as in the search); the rest are left to of()."""
        fresh = [c for c in experts if not self.store.scores(candidate_model(c.idx), "test")]
        if len(fresh) < 2:
            return
        if self.engine is None:
            self.engine = engine_for(self.config)
        specs = [self.config.candidate(c.idx) for c in fresh]
        answers = evaluate_population(self.engine, self.task, [self.test[p] for p in positions], self.config, specs)
        for c, rows in zip(fresh, answers):
            self.store.add_results(
                candidate_model(c.idx), "test", [r._replace(position=positions[r.position]) for r in rows]
            )


def ensemble(
    run_dir: str | Path,
    top_k: Sequence[int],
    test_size: int,
    *,
    engine: Engine | None = None,
    progress: bool = True,
    adaptive: str = "off",
) -> dict[str, Any]:
    """Evaluate base, best single expert and top-K majority votes on the same test examples.

    A multi-task run gets one report per task, its experts ranked by their validation score on
    that task (a candidate can be an expert at one task and not another): {"tasks": {name: report}}.
    With `adaptive` ("exact" or "beta", see vote.decided) experts answer in rank order and a question
    is put to the next expert only while some K's vote on it is undecided; the report counts the
    experts each K's vote asked.
    """
    if adaptive not in ADAPTIVE_RULES:
        raise ThicketsError(f"unknown adaptive rule {adaptive!r}; use {', '.join(ADAPTIVE_RULES)}")
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    check_split_size("test-size", test_size)
    if not top_k or any(k < 1 for k in top_k):
        raise ThicketsError(f"top-k values must be at least 1, got {list(top_k)}")
    task = task_for(config)
    val, test = make_splits(task, config.split_seed, config.val_size, test_size, scheme=config.split_scheme)
    parts: list[str | None] = list(task.parts or [None])
    reports: dict[str | None, dict[str, Any]] = {}
    identity_now = resolve(config.model) if engine is None else None
    with RunStore.open(run_dir) as store:
        check_unchanged(store, task, identity_now, val)
        if identity_now is not None:
            check_prompts(config, identity_now, task, test, "test")
        ranked_all = fully_scored(store.candidates(), max(top_k), run_dir)
        identity = store.meta("model_identity")
        answers = StoredAnswers(store, config, task, test, engine)
        by_model = store.val_reward_by_task() if parts != [None] else {}
        for part in parts:
            if part is None:
                ranked, positions, base_val = ranked_all, list(range(len(test))), None
            else:
                ranked = rank_on_task(ranked_all, by_model, part)
                positions = [p for p, ex in enumerate(test) if ex.data["task"] == part]
                base_val = by_model.get(BASE, {}).get(part)
            experts = ranked[: max(top_k)]
            per_expert: list[dict[int, Score]] = []
            with bar(f"test answers{'' if part is None else ' ' + part}", len(experts) + 1, progress) as update:
                base = answers.of(BASE, None, positions)
                update()
                m = population_batch_for(config, test)
                asking = positions  # the questions some K's vote still needs the next expert for
                for lo in range(0, len(experts), m):
                    group = experts[lo : lo + m]
                    if m > 1:
                        answers.prefetch(group, asking)
                    for c in group:
                        per_expert.append(answers.of(candidate_model(c.idx), config.candidate(c.idx), asking))
                        update()
                        asking = [p for p in asking if not all(_decided(per_expert, p, k, adaptive) for k in top_k)]
            if base_val is None:
                base_val = Summary.of(list(store.scores(BASE, "val").values())).score
            reindex = partial(_reindex, positions=positions)
            reports[part] = _report(
                part or config.task,
                config,
                identity,
                ranked,
                experts,
                reindex(base),
                [reindex(e) for e in per_expert],
                top_k,
                adaptive,
                base_val,
                None
                if part is None
                else {c.idx: by_model.get(candidate_model(c.idx), {}).get(part, 0.0) for c in ranked_all},
            )
    if parts == [None]:
        return reports[None]
    return {"task": config.task, "model": config.model, "tasks": reports}


def _reindex(scores: dict[int, Score], positions: Sequence[int]) -> dict[int, Score]:
    """Scores at the split's positions, renumbered 0.. (one task's questions of a multi-task run); an
    adaptive vote's later experts answered some of them only."""
    return {i: scores[p] for i, p in enumerate(positions) if p in scores}


def _sigma_auto(config: SearchConfig) -> dict[str, Any]:
    """What the pilot of a run with --sigma auto chose (empty lists while it is under way)."""
    return {
        "rule": config.pilot_rule,
        "tried": list(config.pilot_tried),
        "chosen": list(config.pilot_chosen),
        "pilot_size": config.pilot_size if config.calibrated else 0,
    }


def _decided(per_expert: Sequence[dict[int, Score]], position: int, k: int, rule: str) -> bool:
    return decided([e[position] for e in per_expert[:k] if position in e], k, rule)


def _report(
    task_name: str,
    config: SearchConfig,
    identity: dict[str, Any] | None,
    ranked: Sequence[Candidate],
    experts: Sequence[Candidate],
    base: dict[int, Score],
    per_expert: list[dict[int, Score]],
    top_k: Sequence[int],
    adaptive: str,
    base_val: float,
    val_by_candidate: dict[int, float] | None,
) -> dict[str, Any]:
    def single(label: str, scores: dict[int, Score]) -> Row:
        s = Summary.of(list(scores.values()))
        return Row(label, 1, s.accuracy, s.format_rate, s.score)

    val_of = (lambda c: c.score) if val_by_candidate is None else (lambda c: val_by_candidate[c.idx])
    n = len(base)
    base_correct = [base[i].correct for i in range(n)]
    best = ranked[0]
    rows = [single("base", base), single("best single expert", per_expert[0])]
    gains = [None, paired_gain([per_expert[0][i].correct for i in range(n)], base_correct)]
    for k in sorted(set(top_k)):
        votes = [adaptive_vote([e[i] for e in per_expert[:k] if i in e], k, adaptive) for i in range(n)]
        won = [w for w, _ in votes]
        correct = [bool(w and w.correct) for w in won]
        asked = sum(a for _, a in votes) / n
        label = f"top-{k} vote" + ("" if adaptive == "off" else f" ({adaptive} adaptive)")
        rows.append(Row(label, k, sum(correct) / n, sum(w is not None for w in won) / n, asked=asked))
        gains.append(paired_gain(correct, base_correct))
    return {
        "task": task_name,
        "model": config.model,
        "model_identity": identity,
        "population": len(ranked),
        "sigmas": list(config.sigmas_in_use()),
        **({"sigma_auto": _sigma_auto(config)} if config.auto else {}),
        "val_size": config.val_size,
        "test_size": n,
        # test rows without a verdict (the scorer failed twice): out of every single model's means; in a
        # vote they count as not correct
        "unscored": {"test": sum(s.unscored for e in [base, *per_expert] for s in e.values())},
        "base": {
            "accuracy": rows[0].accuracy,
            "format_rate": rows[0].format_rate,
            "score": rows[0].score,
            "val_score": base_val,
        },
        "best_single": {
            "rank": 1,
            "idx": best.idx,
            "seed": best.seed,
            "sigma": best.sigma,
            "val_score": val_of(best),
            "accuracy": rows[1].accuracy,
            "format_rate": rows[1].format_rate,
            "score": rows[1].score,
            "vs_base": gains[1],
        },
        "experts": [
            {
                "rank": r,
                "idx": c.idx,
                "seed": c.seed,
                "sigma": c.sigma,
                "val_score": val_of(c),
                **_summary_dict(per_expert[r - 1]),
                "answered": len(per_expert[r - 1]),  # fewer than test_size where an adaptive vote stopped early
            }
            for r, c in enumerate(experts, 1)
        ],
        "ensembles": [
            {"k": r.k, "accuracy": r.accuracy, "format_rate": r.format_rate, "experts_asked": r.asked, "vs_base": g}
            for r, g in zip(rows[2:], gains[2:])
        ],
        "adaptive": adaptive,
        "rows": [{**asdict(r), "vs_base": g} for r, g in zip(rows, gains)],
        "tie_rules": {
            "ranking": "validation score (on this task, in a multi-task run), then overall validation "
            "score, then earlier candidate",
            "vote": "unextractable answers do not vote; ties go to the best-ranked expert's answer",
            "adaptive": "experts asked in rank order; exact: stop once the leading answer cannot be overtaken "
            "(the full vote's answer, always); beta: once a Beta posterior gives the leader a 95% lead",
        },
    }


def _summary_dict(scores: dict[int, Score]) -> dict[str, float]:
    s = Summary.of(list(scores.values()))
    return {"accuracy": s.accuracy, "format_rate": s.format_rate, "score": s.score}
