"""Top-K selection and majority vote, evaluated on the held-out test split.

Each of the K best candidates (by validation score, see search.rank) answers every test
question. Answers that could not be extracted do not vote. Among the rest, the vote key with
the most votes wins; a tie goes to the key given by the best-ranked expert. The ensemble's
answer is that expert's answer, so it is correct exactly when the winning answer is.
Test answers are stored, so asking again with other K values generates nothing new.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from thickets.randopt.config import SearchConfig, check_split_size
from thickets.engines import Engine, load_engine
from thickets.errors import ThicketsError
from thickets.progress import bar
from thickets.models import resolve
from thickets.randopt.search import check_prompts, check_unchanged, evaluate, load_run_config, rank, task_for
from thickets.randopt.store import BASE, RunStore, Summary, candidate_model
from thickets.tasks.base import Score
from thickets.tasks.splits import make_splits


def majority_vote(ranked_scores: Sequence[Score]) -> Score | None:
    """The winning answer among experts listed best first; None when no expert gave an answer."""
    keys = [s.vote_key for s in ranked_scores if s.vote_key is not None]
    if not keys:
        return None
    counts = Counter(keys)
    top = max(counts.values())
    winner = next(k for k in keys if counts[k] == top)  # first in rank order among the tied
    return next(s for s in ranked_scores if s.vote_key == winner)


@dataclass(frozen=True)
class Row:
    """One line of the report: accuracy and extractable fraction on the test split."""

    label: str
    k: int
    accuracy: float
    format_rate: float
    score: float | None = None  # mean reward, for single models


def vote_outcomes(per_expert: Sequence[dict[int, Score]], n: int) -> list[Score | None]:
    """The ensemble's answer to each of n questions (None where no expert gave one)."""
    return [majority_vote([scores[ex] for scores in per_expert]) for ex in range(n)]


def vote_accuracy(per_expert: Sequence[dict[int, Score]], n: int) -> tuple[float, float]:
    """(accuracy, fraction of questions with any extractable answer) of the majority vote."""
    won = vote_outcomes(per_expert, n)
    return sum(bool(w and w.correct) for w in won) / n, sum(w is not None for w in won) / n


def paired_gain(correct: Sequence[bool], baseline: Sequence[bool]) -> dict:
    """Accuracy gain over the base on the same questions, with a 95% normal interval of the paired difference."""
    n = len(correct)
    d = [int(a) - int(b) for a, b in zip(correct, baseline)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    half = 1.96 * math.sqrt(var / n)
    return {"gain": mean, "ci95": [mean - half, mean + half]}


def _test_scores(store: RunStore, model: str, test, engine_box: list, config: SearchConfig, task,
                 spec, positions: Sequence[int] | None = None) -> dict[int, Score]:
    """Stored test scores of one model (at `positions`, default all), generating (and storing) those it lacks."""
    positions = range(len(test)) if positions is None else positions
    have = store.scores(model, "test")
    ids = dict(store.con.execute("SELECT example, example_id FROM results WHERE model=? AND split='test'", (model,)))
    for pos, ex_id in ids.items():
        if pos < len(test) and test[pos].id != ex_id:
            raise ThicketsError(f"stored test answers of {model} are for other examples (the task changed?); "
                                f"use a new run folder")
    missing = [pos for pos in positions if pos not in have]
    if missing:
        if not engine_box[0]:
            engine_box[0] = load_engine(config.model, engine=config.engine, dtype=config.dtype,
                                        batch_size=config.batch_size)[0]
        rows = evaluate(engine_box[0], task, [test[p] for p in missing], config, spec)
        store.add_results(model, "test", [(missing[j], ex, c, s) for j, ex, c, s in rows])
        have = store.scores(model, "test")
    return {p: have[p] for p in positions}


def val_scores_by_task(store: RunStore) -> dict[str, dict[str, float]]:
    """Mean validation reward of every model (base and candidates) on each task of a multi-task run,
    {model: {task: mean}}, in one pass over the stored results."""
    from thickets.tasks.multi import task_of

    sums: dict[str, dict[str, list[float]]] = {}
    for model, ex_id, reward in store.con.execute("SELECT model, example_id, reward FROM results WHERE split='val'"):
        sums.setdefault(model, {}).setdefault(task_of(ex_id), []).append(reward)
    return {m: {t: sum(v) / len(v) for t, v in per.items()} for m, per in sums.items()}


def rank_on_task(candidates: Sequence, by_model: dict[str, dict[str, float]], task: str) -> list:
    """Candidates best first on one task of a multi-task run: that task's validation score, then the
    overall score, then the earlier candidate."""
    return sorted(candidates, key=lambda c: (-by_model.get(candidate_model(c.idx), {}).get(task, 0.0), -c.score, c.idx))


def ensemble(run_dir: str | Path, top_k: Sequence[int], test_size: int, *, engine: Engine | None = None,
             progress: bool = True, write_report: bool = True) -> dict:
    """Evaluate base, best single expert and top-K majority votes on the same test examples.

    A multi-task run gets one report per task, its experts ranked by their validation score on
    that task (a candidate can be an expert at one task and not another): {"tasks": {name: report}}.
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    check_split_size("test-size", test_size)
    if not top_k or any(k < 1 for k in top_k):
        raise ThicketsError(f"top-k values must be at least 1, got {list(top_k)}")
    task = task_for(config)
    val, test = make_splits(task, config.split_seed, config.val_size, test_size)
    parts = list(getattr(task, "parts", None) or [None])
    reports = {}
    identity_now = resolve(config.model) if engine is None else None
    with RunStore.open(run_dir) as store:
        check_unchanged(store, task, identity_now, val)
        if identity_now is not None:
            check_prompts(config, identity_now, task, test, "test")
        ranked_all = [c for c in rank(store.candidates()) if c.complete]
        if max(top_k) > len(ranked_all):
            raise ThicketsError(f"top-k {max(top_k)} is more than the {len(ranked_all)} candidates fully scored in {run_dir}")
        identity = store.meta("model_identity")
        engine_box = [engine]
        by_model = val_scores_by_task(store) if parts != [None] else {}
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
                base = _test_scores(store, BASE, test, engine_box, config, task, None, positions)
                update()
                for c in experts:
                    per_expert.append(_test_scores(store, candidate_model(c.idx), test, engine_box, config, task,
                                                   config.candidate(c.idx), positions))
                    update()
            if base_val is None:
                base_val = Summary.of(list(store.scores(BASE, "val").values())).score
            reindex = lambda scores: {i: scores[p] for i, p in enumerate(positions)}  # noqa: E731
            reports[part] = _report(part or config.task, config, identity, ranked, experts, reindex(base),
                                    [reindex(e) for e in per_expert], top_k, base_val,
                                    None if part is None else {c.idx: by_model.get(candidate_model(c.idx), {})
                                                               .get(part, 0.0) for c in ranked_all})
    report = reports[None] if parts == [None] else {"task": config.task, "model": config.model, "tasks": reports}
    if write_report:
        (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        markdown = [report_markdown(r) for r in reports.values()]
        (run_dir / "report.md").write_text("\n\n".join(markdown) + "\n")
    return report


def _report(task_name: str, config: SearchConfig, identity, ranked, experts, base: dict[int, Score],
            per_expert: list[dict[int, Score]], top_k: Sequence[int], base_val: float,
            val_by_candidate: dict[int, float] | None) -> dict:
    def single(label: str, scores: dict[int, Score]) -> Row:
        s = Summary.of(list(scores.values()))
        return Row(label, 1, s.accuracy, s.format_rate, s.score)

    val_of = (lambda c: c.score) if val_by_candidate is None else (lambda c: val_by_candidate[c.idx])  # noqa: E731
    n = len(base)
    base_correct = [base[i].correct for i in range(n)]
    best = ranked[0]
    rows = [single("base", base), single("best single expert", per_expert[0])]
    gains = [None, paired_gain([per_expert[0][i].correct for i in range(n)], base_correct)]
    for k in sorted(set(top_k)):
        won = vote_outcomes(per_expert[:k], n)
        correct = [bool(w and w.correct) for w in won]
        rows.append(Row(f"top-{k} vote", k, sum(correct) / n, sum(w is not None for w in won) / n))
        gains.append(paired_gain(correct, base_correct))
    return {
        "task": task_name,
        "model": config.model,
        "model_identity": identity,
        "population": len(ranked),
        "sigmas": list(config.sigmas),
        "val_size": config.val_size,
        "test_size": n,
        "base": {"accuracy": rows[0].accuracy, "format_rate": rows[0].format_rate, "score": rows[0].score,
                 "val_score": base_val},
        "best_single": {"rank": 1, "idx": best.idx, "seed": best.seed, "sigma": best.sigma,
                        "val_score": val_of(best), "accuracy": rows[1].accuracy,
                        "format_rate": rows[1].format_rate, "score": rows[1].score, "vs_base": gains[1]},
        "experts": [{"rank": r, "idx": c.idx, "seed": c.seed, "sigma": c.sigma, "val_score": val_of(c),
                     **_summary_dict(per_expert[r - 1])} for r, c in enumerate(experts, 1)],
        "ensembles": [{"k": r.k, "accuracy": r.accuracy, "format_rate": r.format_rate, "vs_base": g}
                      for r, g in zip(rows[2:], gains[2:])],
        "rows": [{**asdict(r), "vs_base": g} for r, g in zip(rows, gains)],
        "tie_rules": {"ranking": "validation score (on this task, in a multi-task run), then overall validation "
                                 "score, then earlier candidate",
                      "vote": "unextractable answers do not vote; ties go to the best-ranked expert's answer"},
    }


def _summary_dict(scores: dict[int, Score]) -> dict:
    s = Summary.of(list(scores.values()))
    return {"accuracy": s.accuracy, "format_rate": s.format_rate, "score": s.score}


def report_markdown(report: dict) -> str:
    lines = [
        f"# thickets report: {report['task']} on {report['model']}",
        "",
        f"Population {report['population']}, sigmas {report['sigmas']}, validation {report['val_size']} examples, "
        f"test {report['test_size']} held-out examples.",
        "",
        "| model | K | test accuracy | answer extracted | gain vs base, points [95% CI] |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['label']} | {r['k']} | {r['accuracy']:.1%} | {r['format_rate']:.1%} | {format_gain(r['vs_base'])} |")
    lines += ["", "Each expert of the largest K on the test split (format = answer extracted):", "",
              "| rank | candidate | sigma | validation score | test accuracy | format |", "|---:|---:|---:|---:|---:|---:|"]
    for e in report["experts"]:
        lines.append(f"| {e['rank']} | {e['idx']} | {e['sigma']:g} | {e['val_score']:.3f} | {e['accuracy']:.1%} | "
                     f"{e['format_rate']:.1%} |")
    return "\n".join(lines)


def format_gain(g: dict | None) -> str:
    if g is None:
        return "-"
    lo, hi = g["ci95"]
    return f"{g['gain'] * 100:+.1f} [{lo * 100:+.1f}, {hi * 100:+.1f}]"
