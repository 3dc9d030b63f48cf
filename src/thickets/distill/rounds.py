"""Iterative RandOpt: search, the top-K experts answer a train split, keep the good traces, fine-tune one
model on them, and search again around that model.

Everything a round makes lives in `RUN/distill/round-N/` (`RUN/NAME/round-N/` with `--distillation NAME`),
each file written whole, so a round killed at any point goes on from its last finished piece when the
same command runs again:

    settings.json    what the round is made with (DistillConfig.round_settings), written before anything
                     else: a later call with other settings is refused, naming the fields

    search/          the round's search (round 1: the run folder itself), around the previous round's model
    traces-K.jsonl   expert K's answers to the train split, scored (one file per expert); with --on-policy,
                     traces-student.jsonl: the round's model's own, judged like the experts', never voting
    kept.jsonl       the traces trained on: the earlier rounds' kept (expert rank 0), which stay, then this
                     round's new ones, judged by this round's experts alone; at most M a question
    teacher-K.safetensors  with --loss kd-*: expert K's top next-token probabilities on the kept traces it
                     agrees with (teacher.py), one file per expert
    model/           the fine-tuned model (merged), a plain Hugging Face folder
    round.json       the round's record: traces, share kept, tokens generated and trained, the model's
                     path and hash, and the test report (original base, the round's top-K vote, the model)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from thickets.analysis.plots import pyplot, save
from thickets.disk import write_whole
from thickets.distill.config import DistillConfig
from thickets.distill.teacher import (
    agreeing,
    combine,
    expert_top,
    pad_id,
    read_expert,
    trace_tokens,
    write_expert,
)
from thickets.distill.traces import Trace, keep, mode_for
from thickets.distill.train import TrainSettings, fine_tune, fine_tune_kd
from thickets.engines import count_tokens, uses_chat_template
from thickets.errors import ThicketsError
from thickets.models import IDENTITY_SCHEME, load_tokenizer, resolve
from thickets.progress import bar
from thickets.randopt.config import SearchConfig
from thickets.randopt.ensemble import StoredAnswers
from thickets.randopt.preflight import load_run_config
from thickets.randopt.scoring import engine_for, evaluate, generate, render_prompts, task_for
from thickets.randopt.search import search
from thickets.randopt.store import BASE, Candidate, RunStore, Summary, candidate_model
from thickets.randopt.vote import fully_scored, paired_gain, vote_outcomes
from thickets.seeds import derive_seed
from thickets.tasks import Example, Score, Task
from thickets.tasks.splits import make_splits, make_train_split
from thickets.tracking import NO_TRACKER, Tracker

if TYPE_CHECKING:
    from thickets.engines.transformers_engine import TransformersEngine


class NothingKept(ThicketsError):
    """A round with nothing to train on: its experts wrote no trace worth keeping and no earlier round kept
    one (so round 1, in practice). A later round without new traces still trains on the earlier rounds'."""

    def __init__(self, message: str, traces: int, tokens_generated: int):
        super().__init__(message)
        self.traces, self.tokens_generated = traces, tokens_generated  # what the round spent all the same


def check(run_dir: Path, cfg: DistillConfig) -> tuple[SearchConfig, Task, list[Example], str]:
    """Everything bad input can break, before anything is written: (run config, task, train split, mode)."""
    config = load_run_config(run_dir)
    task = task_for(config)
    if cfg.loss != "ce" and task.images:
        raise ThicketsError(f"--loss {cfg.loss} does not take images yet: distil a run about images with --loss ce")
    if cfg.loss != "ce" and config.engine != "transformers":
        raise ThicketsError(f"--loss {cfg.loss} reads the experts' probabilities through the transformers engine only")
    mode = mode_for(task, cfg.filter)
    if cfg.top_k > config.population:
        raise ThicketsError(f"top-k {cfg.top_k} is more than the run's population of {config.population}")
    make_splits(task, config.split_seed, config.val_size, cfg.test_size, scheme=config.split_scheme)
    train = make_train_split(
        task, config.split_seed, config.val_size, cfg.test_size, cfg.train_size, scheme=config.split_scheme
    )
    check_settings(run_dir / cfg.name, cfg)
    if mode == "vote":
        with RunStore.open(run_dir, write=False) as store:  # the base's answers, or any candidate's
            models = [BASE] + [candidate_model(c.idx) for c in store.candidates()]
            if not any(s.vote_key is not None for m in models for s in store.scores(m, "val").values()):
                raise ThicketsError(
                    f"task {task.name} gives neither gold answers nor vote keys (none in {run_dir}'s "
                    f"validation results): no trace can be judged"
                )
    return config, task, train, mode


DEFAULTS = {f.name: f.default for f in fields(DistillConfig)}


def recorded_settings(folder: Path) -> dict[str, Any] | None:
    """What a round was made with: its settings.json, or the config a finished round recorded (rounds made
    before settings.json existed); None for a folder with neither (nothing of the round was written)."""
    for path, key in ((folder / "settings.json", None), (folder / "round.json", "config")):
        if path.is_file():
            data = json.loads(path.read_text())
            found = data if key is None else data.get(key)
            return found if isinstance(found, dict) else None
    return None


def check_settings(distillation: Path, cfg: DistillConfig) -> None:
    """Refuse, in one line naming the fields, a call whose settings differ from those a round of this
    distillation was made with: its rounds would mix, and its records would report the wrong settings."""
    wanted = cfg.round_settings()
    rounds = sorted(
        distillation.glob("round-*"), key=lambda p: int(p.name.split("-")[1]) if p.name[6:].isdigit() else 0
    )
    for folder in rounds:
        then = recorded_settings(folder)
        if then is None:
            continue
        # a field a round's record lacks did not exist when it was made: the round had its default behaviour
        changed = [k for k in wanted if then.get(k, DEFAULTS.get(k)) != wanted[k]]
        if changed:
            was = ", ".join(f"{k} {then.get(k, DEFAULTS.get(k))!r}" for k in changed)
            now = ", ".join(f"{k} {wanted[k]!r}" for k in changed)
            raise ThicketsError(
                f"{folder} was made with {was}, and this call asks {now}: give the round's settings to resume or "
                f"extend it, or --distillation NAME to start another distillation beside it"
            )


def distill(
    run_dir: str | Path, cfg: DistillConfig, *, progress: bool = True, tracker: Tracker = NO_TRACKER
) -> list[dict[str, Any]]:
    """Run (or resume) cfg.rounds rounds; returns each round's record."""
    run_dir = Path(run_dir)
    config, task, train, mode = check(run_dir, cfg)
    records: list[dict[str, Any]] = []
    kept_before: list[Trace] = []
    model = config.model
    for r in range(1, cfg.rounds + 1):
        folder = run_dir / cfg.name / f"round-{r}"
        done = folder / "round.json"
        if done.exists():
            record = json.loads(done.read_text())
        else:
            record = _round(r, folder, run_dir, config, model, task, train, mode, cfg, kept_before, progress)
        records.append(record)
        test = record["test"]
        tracker.log(
            {
                "distill/vote_accuracy": test["ensemble"]["accuracy"],
                "distill/distilled_accuracy": test["distilled"]["accuracy"],
                "distill/base_accuracy": test["base"]["accuracy"],
                "distill/kept_this_round": record["kept_this_round"],
                "distill/tokens_generated": record["tokens_generated"],
                "distill/tokens_trained": record["tokens_trained"],
            },
            r,
        )
        # traces kept so far: they stay in every later round (rank 0: kept in an earlier round)
        kept_before = [replace(t, expert_rank=0) for t in _read_traces(folder / "kept.jsonl")]
        model = (best_round(records) if cfg.keep_best else record)["model"]["path"]
    plot_rounds(records, run_dir / cfg.name / "accuracy_by_round.png")
    if cfg.keep_best:
        best = best_round(records)
        kept = {"round": best["round"], "val_score": best["val_score"], "model": best["model"]}
        write_whole(run_dir / cfg.name / "best.json", json.dumps(kept, indent=2) + "\n")
    return records


def best_round(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The round whose model scores best on validation (the earliest of equals): with --keep-best, the next
    round starts from its model, and the distillation names it."""
    return max(records, key=lambda rec: (rec.get("val_score", float("-inf")), -rec["round"]))


def plot_rounds(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Test accuracy by round: the original base (a line), each round's top-K vote and distilled model,
    with the distilled model's paired 95% interval against the base."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    rounds = [r["round"] for r in records]
    base = records[0]["test"]["base"]["accuracy"]
    ax.axhline(base, color="black", ls="--", label="original base")
    vote = [r["test"]["ensemble"]["accuracy"] for r in records]
    ax.plot(rounds, vote, marker="s", color="C1", label=f"top-{records[0]['test']['ensemble']['k']} vote")
    dist = [r["test"]["distilled"]["accuracy"] for r in records]
    low = [a - (base + r["test"]["distilled"]["vs_base"]["ci95"][0]) for a, r in zip(dist, records)]
    high = [base + r["test"]["distilled"]["vs_base"]["ci95"][1] - a for a, r in zip(dist, records)]
    ax.errorbar(rounds, dist, yerr=[low, high], marker="o", color="C0", capsize=3, label="distilled (1 answer)")
    ax.set_xticks(rounds)
    ax.set_xlabel("round")
    ax.set_ylabel(f"test accuracy ({records[0]['test']['test_size']} questions)")
    ax.legend(fontsize=8)
    return save(fig, path)


def _round(
    r: int,
    folder: Path,
    run_dir: Path,
    config: SearchConfig,
    model: str,
    task: Task,
    train: list[Example],
    mode: str,
    cfg: DistillConfig,
    kept_before: list[Trace],
    progress: bool,
) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "settings.json").exists():
        write_whole(folder / "settings.json", json.dumps(cfg.round_settings(), indent=2) + "\n")
    # 1. the round's search: the run's own in round 1, else a new one around the last round's model
    round_config = config if r == 1 else replace(config, model=model)
    search_dir = run_dir if r == 1 else folder / "search"
    search(round_config, search_dir, progress=progress)
    with RunStore.open(search_dir, write=False) as store:
        experts = fully_scored(store.candidates())[: cfg.top_k]

    # 2. the experts answer the train split, one file per expert; the model loads only if one is missing
    # (with --on-policy, the round's model itself answers too: its traces are judged, never vote)
    student = len(experts) + 1
    answerers = [*experts, None] if cfg.on_policy else list(experts)
    missing = [k for k in range(1, len(answerers) + 1) if not (folder / _traces_file(k, student)).exists()]
    engine = engine_for(round_config) if missing else None
    tokenizer = engine.tokenizer if engine is not None else load_tokenizer(resolve(round_config.model))
    traces: list[Trace] = []
    own: list[Trace] = []
    tokens_generated = 0
    with bar(f"round {r}: traces", len(answerers), progress) as update:  # then "round r: fine-tune"
        for k, c in enumerate(answerers, start=1):
            path = folder / _traces_file(k, student)
            if engine is not None and k in missing:
                if c is not None:
                    engine.perturb(round_config.candidate(c.idx))
                try:
                    answers = _answers(engine, task, train, round_config, cfg, derive_seed(b"distill", cfg.seed, r, k))
                finally:
                    if c is not None:
                        engine.restore()
                _write_traces(path, [Trace(ex_id, k, i, c, sc) for ex_id, i, c, sc in answers])
            mine = _read_traces(path)
            (traces if c is not None else own).extend(mine)
            tokens_generated += count_tokens(tokenizer, [t.completion for t in mine])
            update(traces=len(traces) + len(own))

    # 3. keep this round's good ones besides the earlier rounds', which stay, at most M a question; a
    # trace of a question the train split no longer holds (a near-copy of a held-out one, left out since
    # noise version 3's release) is not trained on
    train_ids = {ex.id for ex in train}
    kept_before = [t for t in kept_before if t.example_id in train_ids]
    traces = [t for t in traces if t.example_id in train_ids]
    own = [t for t in own if t.example_id in train_ids]
    new = keep(traces, mode, cfg.max_traces, earlier=kept_before, judged=own)
    kept = kept_before + new
    if not kept:
        del engine
        good = "correct" if mode == "gold" else "agreeing with the vote"
        raise NothingKept(
            f"round {r} kept no new traces ({len(traces) + len(own)} generated, none {good}); nothing was trained",
            len(traces) + len(own),
            tokens_generated,
        )
    _write_traces(folder / "kept.jsonl", kept)

    # 4. fine-tune the round's base on them
    by_id = {ex.id: ex for ex in train}
    settings = TrainSettings(
        lora=not cfg.full,
        lora_r=cfg.lora_r,
        learning_rate=cfg.learning_rate,
        epochs=cfg.epochs,
        batch_size=cfg.train_batch_size,
        seed=derive_seed(b"distill-train", cfg.seed, r) % 2**32,  # numpy's seeds are 32-bit
    )
    if cfg.loss == "ce":
        del engine  # the fine-tune loads the model again, for training
        pairs = [(by_id[t.example_id].prompt, t.completion, task.system_prompt) for t in kept]
        trained = fine_tune(
            model,
            pairs,
            folder / "model",
            settings,
            chat_template=config.chat_template,
            progress=progress,
            label=f"round {r}: ",
            images=[task.image_of(by_id[t.example_id]) or b"" for t in kept] if task.images else None,
        )
    else:  # the agreeing experts' probabilities on every kept trace, one file per expert, then the loss over them
        examples = [by_id[t.example_id] for t in kept]
        special = not uses_chat_template(tokenizer, round_config.chat_template)
        rows = trace_tokens(
            tokenizer, render_prompts(tokenizer, task, examples, round_config), [t.completion for t in kept], special
        )
        agree = agreeing(kept, traces, mode)
        keys = [(t.example_id, t.completion) for t in kept]
        per_expert = {}
        with bar(f"round {r}: teacher", len(experts), progress) as update:
            for k, c in enumerate(experts, start=1):
                path = folder / f"teacher-{k}.safetensors"
                if not path.exists():
                    engine = engine if engine is not None else engine_for(round_config)
                    at = [j for j, a in enumerate(agree) if k in a]
                    tops = _tops(engine, round_config.candidate(c.idx), [rows[j] for j in at], cfg, tokenizer)
                    write_expert(path, [keys[j] for j in at], tops)
                per_expert[k] = read_expert(path)
                update()
        del engine
        teachers = [
            combine(rows[j][1], [per_expert[k][keys[j]] for k in agree[j]], cfg.top_probs) for j in range(len(kept))
        ]
        trained = fine_tune_kd(
            model, rows, teachers, folder / "model", settings, cfg.loss, progress=progress, label=f"round {r}: "
        )

    # 5. the report: the original base, the round's top-K vote and the distilled model on one test split
    report, val_score = _report(run_dir, search_dir, round_config, trained.model_dir, task, cfg, experts, progress)
    extra = {"val_score": val_score} if cfg.keep_best else {}
    record = {
        "round": r,
        "mode": mode,
        "base_model": model,
        "search_dir": str(search_dir),
        "experts": [c.idx for c in experts],
        "traces": len(traces) + len(own),  # the experts' and (with --on-policy) the student's
        "kept_this_round": len(new),
        "kept_total": len(kept),
        "share_kept": len(new) / max(1, len(traces) + len(own)),
        "questions_covered": len({t.example_id for t in kept}),
        "tokens_generated": tokens_generated,
        "tokens_trained": trained.tokens_trained,
        "train_losses": trained.losses,
        "train_seconds": trained.seconds,
        "model": {"path": str(trained.model_dir), "sha256": trained.sha256, "scheme": IDENTITY_SCHEME},
        "config": asdict(cfg),
        "test": report,
        **extra,
    }
    write_whole(folder / "round.json", json.dumps(record, indent=2) + "\n")
    return record


def _answers(
    engine: Any, task: Task, train: list[Example], config: SearchConfig, cfg: DistillConfig, seed: int
) -> list[tuple[str, int, str, Score]]:
    """(example id, sample, completion, score) of one expert on the train split."""
    if cfg.samples == 0:
        completions = [[c] for c in generate(engine, task, train, config)]
    else:
        prompts = render_prompts(engine.tokenizer, task, train, config)
        completions = engine.sample(
            prompts, config.max_new_tokens, task.stop, samples=cfg.samples, temperature=cfg.temperature, seed=seed
        )
    flat = [(ex, i, c) for ex, cs in zip(train, completions) for i, c in enumerate(cs)]
    scores = task.score_batch([ex for ex, _, _ in flat], [c for _, _, c in flat])
    return [(ex.id, i, c, s) for (ex, i, c), s in zip(flat, scores)]


def _write_traces(path: Path, traces: Sequence[Trace]) -> None:
    """Written whole: a killed round never leaves a partial file to be taken for a finished one."""
    write_whole(path, "".join(json.dumps({**asdict(t), "score": asdict(t.score)}) + "\n" for t in traces))


def _tops(
    engine: Any, spec: Any, rows: list[tuple[list[int], list[int]]], cfg: DistillConfig, tokenizer: Any
) -> list[Any]:
    """One expert's top next tokens on the traces it agrees with (nothing of the expert outlives the call)."""
    engine.perturb(spec)
    try:
        return expert_top(cast("TransformersEngine", engine).model, rows, cfg.top_probs, pad_id(tokenizer))
    finally:
        engine.restore()


def _traces_file(k: int, student: int) -> str:
    """Expert K's traces, or (K = student, with --on-policy) the round's model's own."""
    return "traces-student.jsonl" if k == student else f"traces-{k}.jsonl"


def _read_traces(path: Path) -> list[Trace]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        out.append(Trace(d["example_id"], d["expert_rank"], d["sample"], d["completion"], Score(**d["score"])))
    return out


def _report(
    run_dir: Path,
    search_dir: Path,
    config: SearchConfig,
    model_dir: Path,
    task: Task,
    cfg: DistillConfig,
    experts: Sequence[Candidate],
    progress: bool,
) -> tuple[dict[str, Any], float | None]:
    """Test accuracy of the original base, the round's top-K vote and the distilled model, on the same
    questions, with paired intervals against the base (and, with --keep-best, the distilled model's
    validation score, by the same engine). The base's and the experts' answers are stored in their run
    folders (as `ensemble` stores them), so a resumed report generates nothing twice."""
    val, test = make_splits(task, config.split_seed, config.val_size, cfg.test_size, scheme=config.split_scheme)
    positions = list(range(len(test)))
    with bar("test answers", len(experts) + 2, progress) as update:
        with RunStore.open(run_dir) as store:
            base = StoredAnswers(store, load_run_config(run_dir), task, test, None).of(BASE, None, positions)
        update()
        with RunStore.open(search_dir) as store:
            answers = StoredAnswers(store, config, task, test, None)
            per_expert = []
            for c in experts:
                per_expert.append(answers.of(candidate_model(c.idx), config.candidate(c.idx), positions))
                update()
        distilled = replace(config, model=str(model_dir))
        engine = engine_for(distilled)
        tokenizer = engine.tokenizer
        rows = evaluate(engine, task, test, distilled)
        update()
        val_score = None
        if cfg.keep_best:  # the model's validation score: what --keep-best chooses rounds by (never the test's)
            val_score = Summary.of([row.score for row in evaluate(engine, task, val, distilled)]).score
    vote = vote_outcomes(per_expert, len(test))
    base_ok = [base[i].correct for i in positions]
    vote_ok = [bool(v and v.correct) for v in vote]
    model_ok = [r.score.correct for r in rows]
    report = {
        "test_size": len(test),
        "base": {"accuracy": sum(base_ok) / len(test), "answers_per_question": 1},
        "ensemble": {
            "k": len(experts),
            "accuracy": sum(vote_ok) / len(test),
            "answers_per_question": len(experts),
            "vs_base": paired_gain(vote_ok, base_ok),
        },
        "distilled": {
            "accuracy": sum(model_ok) / len(test),
            "answers_per_question": 1,
            "tokens_per_answer": count_tokens(tokenizer, [r.completion for r in rows]) / len(test),
            "vs_base": paired_gain(model_ok, base_ok),
        },
    }
    return report, val_score
