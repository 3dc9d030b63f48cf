"""The `thickets` command: one subcommand per task a user has, its flags generated from dataclasses.

A subcommand is a row of COMMANDS: its help, the dataclasses its flags come from (the configs of
the library, and small argument classes below for what is not a config), and its handler. Every
handler calls the library; every error a user can fix is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from thickets.analysis.harm import harm_line, harm_report, read_text
from thickets.analysis.landscape import RunScores, analyze, density
from thickets.analysis.racing_replay import replay_run
from thickets.analysis.reliability import reliability_line, split_half
from thickets.analysis.reports import (
    ensemble,
    print_bench,
    print_compare,
    print_density,
    print_distill,
    print_merge,
    print_pilot,
    print_replay,
    print_rounding,
    print_tables,
    print_toy,
    print_vote_replay,
    unscored_line,
    write_report_files,
)
from thickets.analysis.transfer import TransferConfig, transfer_lines
from thickets.analysis.vote_replay import vote_replay
from thickets.baselines.compare import CompareConfig, compare
from thickets.baselines.es import ESConfig, run_es
from thickets.baselines.grpo import GRPOSettings, run_grpo
from thickets.bench.config import BenchConfig
from thickets.cli.args import add_fields, read_config_file, values
from thickets.cli.demo import demo
from thickets.distill.config import DistillConfig
from thickets.errors import ThicketsError
from thickets.noise import ParamFilter, PerturbationSpec
from thickets.options import check_bounds, commas, option, parse_ints, parse_patterns
from thickets.randopt.calibrate import calibrate
from thickets.randopt.config import AUTO, SearchConfig
from thickets.randopt.executors import ExecutorOptions, make_executor
from thickets.randopt.preflight import check_inputs, load_run_config
from thickets.randopt.scoring import task_for
from thickets.randopt.search import SearchResult, search
from thickets.randopt.vote import ADAPTIVE_RULES
from thickets.ship.export import export_base, export_candidate, export_round, export_spec, run_prompting
from thickets.ship.merge_config import MergeConfig
from thickets.ship.serve.config import ServeConfig
from thickets.tasks import describe_tasks, get_task, score_one
from thickets.tasks.files.data import parse_columns
from thickets.toy.config import ToyConfig
from thickets.tracking import Tracker, TrackingOptions, check_report_to

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# -- what the commands take besides the library's configs ---------------------------------------


@dataclass(frozen=True)
class RunFolder:
    run_dir: str = option(..., "run folder (created, or resumed if it exists)")


@dataclass(frozen=True)
class EnsembleArgs:
    run_dir: str = option(..., "the run folder")
    top_k: tuple[int, ...] = option((1, 5), "K values, e.g. 1,5,10", parse=parse_ints, show=commas)
    test_size: int = option(100, "held-out test examples")
    adaptive: str = option(
        "off",
        "ask experts in rank order and stop once the vote is decided: exact (never changes the answer) "
        "or beta (stops at a 95 percent Beta posterior lead; may change it)",
        choices=ADAPTIVE_RULES,
    )
    harm_text: str | None = option(
        None, "a plain text held out from the task: bits per byte of the base and the top K on it (do no harm)"
    )


@dataclass(frozen=True)
class VoteReplayArgs:
    run_dir: str = option(..., "a run folder whose top-K experts' test answers are stored (`thickets ensemble`)")
    top_k: tuple[int, ...] = option((5,), "K values, e.g. 5,9", parse=parse_ints, show=commas)


@dataclass(frozen=True)
class ExportArgs:
    out: str = option(..., "folder to write the model to")
    run_dir: str | None = option(None, "export from this run (with --rank)")
    rank: int = option(1, "1 = best candidate on validation")
    round: int | None = option(None, "export distillation round N's model instead (with --run-dir)")
    distillation: str = option("distill", "with --round: the distillation it is of (distill's --distillation)")
    base: bool = option(False, "export the unperturbed base model (the run's with --run-dir, else --model)")
    adapter_base: str | None = option(
        None, "the base folder a low-rank expert's adapter names (default: the base model's folder here)"
    )
    model: str = option("smollm2-135m", "base model (with --seed and --sigma)")
    seed: int | None = option(None, "noise seed (without --run-dir)")
    sigma: float | None = option(None, "noise scale (without --run-dir)")
    include: tuple[str, ...] = option(("*",), "parameter name patterns perturbed", parse=parse_patterns, show=commas)
    exclude: tuple[str, ...] = option((), "parameter name patterns left alone", parse=parse_patterns, show=commas)


@dataclass(frozen=True)
class DemoArgs:
    run_dir: str = option("runs/demo", "run folder of the demo")


@dataclass(frozen=True)
class ScoreArgs:
    task: str = option(..., "task name, gym:NAME or KIND:DATA_FILE")
    example: str = option(..., 'the example as JSON, e.g. \'{"numbers": [3, 5, 7], "target": 22}\'')
    completion_file: str = option(..., "file with the model's completion, or - for stdin")
    columns: tuple[str, ...] = option(
        (), "for KIND:DATA_FILE tasks: FIELD=COLUMN pairs", parse=parse_patterns, show=commas
    )
    reward: str | None = option(None, "a TRL-style reward function, module:function or file.py:function")
    reward_timeout: float = option(300.0, "seconds the --reward function may take")


@dataclass(frozen=True)
class JsonOut:
    json: str | None = option(None, "write the figures to this file")


@dataclass(frozen=True)
class ReplayArgs:
    run_dir: str = option(..., "a finished run folder")
    top_k: tuple[int, ...] = option((1, 3, 5), "K values", parse=parse_ints, show=commas)
    chunk: int = option(8, "examples scored between racing decisions")
    orders: int = option(200, "random example and candidate orders to replay")


@dataclass(frozen=True)
class ToyArgs:
    quick: bool = option(False, "a smaller grid (population 300 and fewer signals), under 2 minutes on 2 cores")
    out: str = option("runs/toy", "folder for results.json and the figures")


@dataclass(frozen=True)
class AnalyzeArgs:
    run_dir: str = option(..., "the run folder")
    delta: float = option(0.02, "also count candidates above base + delta")
    map: bool = option(True, "the perturbation map (N+2 noise passes; --no-map skips it)")
    harm_text: str | None = option(
        None, "a plain text held out from the task: bits per byte of the base and the top K on it (do no harm)"
    )
    harm_top_k: int = option(5, "with --harm-text: the experts scored on it", bounds=(1, 10_000))

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class DensityArgs:
    delta: float = option(0.02, "also count candidates above base + delta")


@dataclass(frozen=True)
class OutFolder:
    out: str = option(..., "folder for what the command writes")


T = TypeVar("T")


@dataclass
class Parsed:
    """Each dataclass of a command, built from the flags and the config file (`a[SearchConfig]`), and
    what was given explicitly, per class (the toy's --quick fills the rest from its own defaults)."""

    configs: dict[type, Any] = field(default_factory=dict)
    given: dict[type, dict[str, Any]] = field(default_factory=dict)

    def __getitem__(self, cls: type[T]) -> T:
        config: T = self.configs[cls]
        return config


# -- the commands --------------------------------------------------------------------------------


def _search(a: Parsed, quiet: bool) -> SearchResult:
    """search() with the executor the command line asked for."""
    config, where, run_dir = a[SearchConfig], a[ExecutorOptions], a[RunFolder].run_dir
    with Tracker(a[TrackingOptions].report_to, run_dir, "search", config.to_dict()) as tracker:
        if where.executor == "inprocess":
            return search(config, run_dir, progress=not quiet, tracker=tracker)
        executor = make_executor(where, config)
        try:
            return search(config, run_dir, executor=executor, progress=not quiet, tracker=tracker)
        finally:
            executor.close()


def cmd_search(a: Parsed, quiet: bool) -> None:
    result = _search(a, quiet)
    if result.calibration is not None:
        print_pilot(result.calibration)
    best = result.ranked[0]
    stopped = sum(not c.complete for c in result.ranked)
    raced = f" ({stopped} stopped early by racing)" if stopped else ""
    print(
        f"base validation score {result.base.score:.3f}; best of {len(result.ranked)} candidates{raced} "
        f"{best.score:.3f} (seed {best.seed}, sigma {best.sigma:g}); run stored in {a[RunFolder].run_dir}"
    )
    if result.unscored:
        print(unscored_line(result.unscored))
    print(reliability_line(split_half(result.run_dir)))


def cmd_calibrate(a: Parsed, quiet: bool) -> None:
    if a.given[SearchConfig].get("sigmas", AUTO) != AUTO:
        raise ThicketsError("calibrate chooses sigma itself: leave --sigma out (or give --sigma auto)")
    config, where, run_dir = a[SearchConfig], a[ExecutorOptions], a[RunFolder].run_dir
    executor = None if where.executor == "inprocess" else make_executor(where, config)
    try:
        with Tracker(a[TrackingOptions].report_to, run_dir, "calibrate", config.to_dict()) as tracker:
            record = calibrate(config, run_dir, executor=executor, progress=not quiet, tracker=tracker)
    finally:
        if executor is not None:
            executor.close()
    print_pilot(record)
    print(
        f"pilot stored in {run_dir} ({run_dir}/calibration.json); go on with the same settings and "
        f"`thickets search --run-dir {run_dir} --sigma auto --population N`"
    )


def cmd_ensemble(a: Parsed, quiet: bool) -> None:
    e = a[EnsembleArgs]
    if e.harm_text is not None:
        read_text(e.harm_text)  # a bad text: one line, before anything is written
    report = ensemble(e.run_dir, e.top_k, e.test_size, progress=not quiet, adaptive=e.adaptive)
    print_tables(report)
    if e.harm_text is not None:
        report["harm"] = harm_report(e.run_dir, e.harm_text, max(e.top_k), progress=not quiet)
        write_report_files(Path(e.run_dir), report)
        print(harm_line(report["harm"]))
    print(f"report written to {Path(e.run_dir) / 'report.json'} and report.md")


@dataclass(frozen=True)
class DistillRun:
    run_dir: str = option(..., "the run folder whose search starts round 1")


def cmd_distill(a: Parsed, quiet: bool) -> None:
    from thickets.distill.rounds import distill  # torch, transformers and TRL: only for this command

    run_dir, cfg = Path(a[DistillRun].run_dir), a[DistillConfig]
    with Tracker(a[TrackingOptions].report_to, run_dir, cfg.name, asdict(cfg)) as tracker:
        records = distill(run_dir, cfg, progress=not quiet, tracker=tracker)
    print_distill(records)
    print(f"rounds recorded in {run_dir / a[DistillConfig].name}/round-N/round.json")


def cmd_transfer(a: Parsed, quiet: bool) -> None:
    from thickets.analysis.transfer import transfer

    cfg = a[TransferConfig]
    load_run_config(cfg.run_dir)  # a clear error when the folder holds no run
    report = transfer(cfg, progress=not quiet)
    for line in transfer_lines(report):
        print(line)
    print(f"written: {cfg.run_dir}/transfer.json (thickets analyze plots it)")


def cmd_merge(a: Parsed, quiet: bool) -> None:
    from thickets.ship.merge import merge  # torch and transformers: only for this command

    cfg = a[MergeConfig]
    report = merge(cfg, progress=not quiet)
    print_merge(report)
    print(f"merged model in {cfg.out} (its recipe: {cfg.out}/thickets_merge.json)")


def cmd_export(a: Parsed, quiet: bool) -> None:
    e = a[ExportArgs]
    if e.base:
        if e.round is not None or e.seed is not None or e.sigma is not None:
            raise ThicketsError("--base exports the unperturbed model: give it without --round, --seed or --sigma")
        config = load_run_config(e.run_dir) if e.run_dir else None
        out = export_base(
            config.model if config else e.model,
            e.out,
            dtype=config.dtype if config else "float32",
            prompting=run_prompting(config) if config else None,
        )
    elif e.run_dir and e.round is not None:
        out = export_round(e.run_dir, e.round, e.out, e.distillation)
    elif e.run_dir:
        out = export_candidate(e.run_dir, e.rank, e.out, adapter_base=e.adapter_base)
    else:
        if e.seed is None or e.sigma is None:
            raise ThicketsError("export needs --run-dir D [--rank R], or --model M --seed X --sigma S")
        out = export_spec(e.model, PerturbationSpec(e.seed, e.sigma, filter=ParamFilter(e.include, e.exclude)), e.out)
    print(f"exported to {out}")


def cmd_demo(a: Parsed, quiet: bool) -> None:
    demo(a[DemoArgs].run_dir, progress=not quiet)


def cmd_score(a: Parsed, quiet: bool) -> None:
    s = a[ScoreArgs]
    try:
        example = json.loads(s.example)
    except json.JSONDecodeError as e:
        raise ThicketsError(f"--example is not valid JSON: {e}") from None
    if not isinstance(example, dict):
        raise ThicketsError("--example must be a JSON object")
    try:
        completion = sys.stdin.read() if s.completion_file == "-" else Path(s.completion_file).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ThicketsError(f"cannot read --completion-file {s.completion_file}: {e}") from None
    task = get_task(s.task, parse_columns(s.columns), s.reward, s.reward_timeout)
    print(json.dumps(score_one(task, example, completion), indent=2))


def cmd_tasks(a: Parsed, quiet: bool) -> None:
    for name, description in describe_tasks():
        print(f"{name:<28} {description}")


def cmd_bench(a: Parsed, quiet: bool) -> None:
    from thickets.bench.runner import (  # torch and transformers: only for this command
        TARGETS,
        bench,
    )

    json_out = a[JsonOut].json
    if json_out and not Path(json_out).parent.is_dir():
        raise ThicketsError(f"cannot write --json {json_out}: folder {Path(json_out).parent} does not exist")
    results = bench(a[BenchConfig], progress=not quiet)
    print_bench(results, TARGETS)
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {json_out}")


def cmd_race_replay(a: Parsed, quiet: bool) -> None:
    r = a[ReplayArgs]
    if r.chunk < 1 or r.orders < 1:
        raise ThicketsError(f"--chunk must be at least 1 and --orders must be at least 1, got {r.chunk} and {r.orders}")
    reward_range = task_for(load_run_config(r.run_dir)).reward_range
    if reward_range is None:
        raise ThicketsError("the run's reward has no declared range (a --reward function), so racing cannot bound it")
    rows = [
        (k, x) for k in r.top_k for x in replay_run(r.run_dir, k, r.chunk, orders=r.orders, reward_range=reward_range)
    ]
    print_replay(f"racing replayed on {r.run_dir}: {r.orders} random orders, chunks of {r.chunk} examples", rows)


def cmd_serve(a: Parsed, quiet: bool) -> None:
    from thickets.ship.serve.server import serve  # FastAPI, uvicorn and the model: only for this command

    serve(a[ServeConfig])


def cmd_vote_replay(a: Parsed, quiet: bool) -> None:
    r = a[VoteReplayArgs]
    result = vote_replay(r.run_dir, r.top_k)
    print_vote_replay(result)
    (Path(r.run_dir) / "vote_replay.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {r.run_dir}/vote_replay.json, {r.run_dir}/vote_replay.png")


def cmd_toy(a: Parsed, quiet: bool) -> None:
    from thickets.toy.experiment import run  # torch: only for this command
    from thickets.toy.report import specific_cells, summary, write

    t = a[ToyArgs]
    cfg = ToyConfig.quick(**a.given[ToyConfig]) if t.quick else a[ToyConfig]
    if cfg.population < 1:
        raise ThicketsError(f"--population must be at least 1, got {cfg.population}")
    if cfg.top_k > cfg.population:
        raise ThicketsError(f"--population must be at least top-K ({cfg.top_k})")
    if not cfg.sigmas or not all(s > 0 and math.isfinite(s) for s in cfg.sigmas):
        raise ThicketsError(f"--sigmas must be positive numbers, got {','.join(map(str, cfg.sigmas))}")
    if not (cfg.gain > 1 and math.isfinite(cfg.gain)):
        raise ThicketsError(f"--gain must be a number above 1, got {cfg.gain}")
    if not (cfg.level > 0 and math.isfinite(cfg.level)):
        raise ThicketsError(f"--level must be a positive error, got {cfg.level}")
    out = Path(t.out)
    if out.exists() and not out.is_dir():
        raise ThicketsError(f"--out {t.out} exists and is not a folder")
    result = run(cfg, progress=not quiet)
    files = write(result, out)
    head = f"1D signals: RandOpt, N={cfg.population} per sigma, K={cfg.top_k}, each cell at its best sigma"
    print_toy(f"{head} ({result['seconds']:.0f} s): every target", summary(result), cfg.gain, cfg.level)
    print_toy("one fixed signal per target", summary(result, specific_only=True), cfg.gain, cfg.level)
    print_toy("per regime and fixed signal", specific_cells(result), cfg.gain, cfg.level)
    print("written: " + ", ".join(str(f) for f in files))


def cmd_analyze(a: Parsed, quiet: bool) -> None:
    x = a[AnalyzeArgs]
    if not x.delta >= 0:
        raise ThicketsError(f"--delta must be a number >= 0, got {x.delta}")
    load_run_config(x.run_dir)  # a clear error when the folder holds no run
    harm = None
    if x.harm_text is not None:  # the text is checked first thing, before the model loads or analyze writes
        harm = harm_report(x.run_dir, x.harm_text, x.harm_top_k, progress=not quiet)
    s = analyze(x.run_dir, x.delta, projection_map=x.map, progress=not quiet, harm=harm)
    if s["calibration"] is not None:
        print_pilot(s["calibration"])
    if s["rounding"]:
        print_rounding(s["rounding"])
    if s["unscored"]:
        print(unscored_line(s["unscored"]))
    print(reliability_line(s["reliability"]))
    for line in transfer_lines(s["transfer"]) if s["transfer"] else []:
        print(line)
    if s["population_note"]:
        print(s["population_note"])
    if harm is not None:
        print(harm_line(harm))
    print_density(s["density"], s["base"])
    print(f"report: {s['html']} (figures in {Path(x.run_dir) / 'analysis'})")


def cmd_density(a: Parsed, quiet: bool) -> None:
    delta = a[DensityArgs].delta
    if not delta >= 0:
        raise ThicketsError(f"--delta must be a number >= 0, got {delta}")
    result = _search(a, quiet)
    print_density(density(RunScores.read(result.run_dir), delta), result.base.score)


def cmd_es(a: Parsed, quiet: bool) -> None:
    cfg, run_dir = a[ESConfig], a[RunFolder].run_dir
    check_inputs(cfg.task, cfg.model, cfg.split_seed, cfg.val_size)
    with Tracker(a[TrackingOptions].report_to, run_dir, "es", asdict(cfg)) as tracker:
        log = run_es(cfg, run_dir, progress=not quiet, tracker=tracker)
    means = " ".join(f"{r['mean_reward']:.3f}" for r in log["iterations"])
    print(
        f"ES: mean population reward per iteration {means}; final weights {log['final_val_reward']:.3f} on "
        f"validation; {sum(r['tokens'] for r in log['iterations'])} tokens generated; log in {run_dir}/es.json"
    )


def cmd_grpo(a: Parsed, quiet: bool) -> None:
    cfg, out = a[GRPOSettings], a[OutFolder].out
    check_inputs(cfg.task, cfg.model, cfg.split_seed, cfg.val_size)
    log = run_grpo(cfg, out, progress=not quiet, report_to=check_report_to(a[TrackingOptions].report_to))
    (Path(out) / "grpo.json").write_text(json.dumps(log, indent=2) + "\n")
    rewards = " ".join(f"{s['reward']:.3f}" for s in log["steps"])
    print(
        f"GRPO: mean reward per step {rewards}; {log['tokens']} tokens generated in {log['seconds']:.0f} s; "
        f"model in {log['model_dir']}"
    )


def cmd_compare(a: Parsed, quiet: bool) -> None:
    cfg, out = a[CompareConfig], a[OutFolder].out
    check_inputs(cfg.task, cfg.model, 0, cfg.val_size, cfg.test_size)
    with Tracker(a[TrackingOptions].report_to, out, "compare", asdict(cfg)) as tracker:
        result = compare(cfg, out, progress=not quiet, tracker=tracker)
    print_compare(
        f"{cfg.task} on {cfg.model}: budget {cfg.budget} generated tokens, {result['test_size']} test questions",
        result["rows"],
    )
    print(f"written: {out}/compare.json, {out}/compare.png")


Command = tuple[str, Sequence[type["DataclassInstance"]], Callable[[Parsed, bool], None]]
COMMANDS: dict[str, Command] = {
    "search": (
        "score N random perturbations on the validation split",
        (SearchConfig, ExecutorOptions, TrackingOptions, RunFolder),
        cmd_search,
    ),
    "calibrate": (
        "--sigma auto's pilot alone: a short search over a log grid of sigma that chooses it (population "
        "and sigma are not used); `search --sigma auto` of the same folder goes on from it",
        (SearchConfig, ExecutorOptions, TrackingOptions, RunFolder),
        cmd_calibrate,
    ),
    "ensemble": ("top-K majority vote vs base vs best single, on held-out test data", (EnsembleArgs,), cmd_ensemble),
    "distill": (
        "iterative RandOpt: the top-K experts' good traces on a train split fine-tune one model, then search again",
        (DistillRun, DistillConfig, TrackingOptions),
        cmd_distill,
    ),
    "export": ("write a candidate as a standalone Hugging Face model folder", (ExportArgs,), cmd_export),
    "transfer": (
        "does the selection transfer? a random sample besides the top K answers the test split: rank correlations, "
        "the winner's curse",
        (TransferConfig,),
        cmd_transfer,
    ),
    "merge": (
        "one model without gradients: the top-K experts' perturbations summed, scaled on validation, gated on test",
        (MergeConfig,),
        cmd_merge,
    ),
    "serve": (
        "an OpenAI-compatible server answering by the vote of a run's top-K experts",
        (ServeConfig,),
        cmd_serve,
    ),
    "demo": ("the embedded model end to end: search, then ensemble", (DemoArgs,), cmd_demo),
    "score": ("score one completion: extracted answer, vote key, reward, correct", (ScoreArgs,), cmd_score),
    "bench": (
        "speed, side by side: our decoder vs generate, search vs a naive loop",
        (BenchConfig, JsonOut),
        cmd_bench,
    ),
    "race-replay": (
        "how racing would have done on a finished run: same top-K, work saved",
        (ReplayArgs,),
        cmd_race_replay,
    ),
    "vote-replay": (
        "how an adaptive vote would have done on a finished run: experts asked, same answers",
        (VoteReplayArgs,),
        cmd_vote_replay,
    ),
    "toy": (
        "the 1D signal experiment: where pretraining makes improving perturbations dense",
        (ToyConfig, ToyArgs),
        cmd_toy,
    ),
    "analyze": (
        "landscape of a run: densities, sigma curve, top-K curve, map, report.html",
        (AnalyzeArgs,),
        cmd_analyze,
    ),
    "density": (
        "a search without ensemble, then the density of improving perturbations",
        (SearchConfig, ExecutorOptions, TrackingOptions, RunFolder, DensityArgs),
        cmd_density,
    ),
    "es": (
        "evolution strategies (Qiu et al. 2025) on the same engine: the ES baseline",
        (ESConfig, TrackingOptions, RunFolder),
        cmd_es,
    ),
    "grpo": (
        "GRPO through TRL's GRPOTrainer on the same task reward: the gradient baseline",
        (GRPOSettings, TrackingOptions, OutFolder),
        cmd_grpo,
    ),
    "compare": (
        "RandOpt vs ES vs GRPO at an equal budget of generated tokens",
        (CompareConfig, TrackingOptions, OutFolder),
        cmd_compare,
    ),
    "tasks": ("list the tasks", (), cmd_tasks),
}


class _OneLineParser(argparse.ArgumentParser):
    """Bad flags get the one-line error every other bad input gets (with a pointer to --help), not the
    whole usage block above it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="thickets", description="RandOpt: post-training by random perturbation and top-K majority vote"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    for name, (help_text, classes, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if classes:
            p.add_argument(
                "--config",
                help="a JSON or YAML file of settings, keyed by the names the flags stand "
                "for (sigmas, val_size, ...); flags given here override it",
            )
        seen: set[str] = set()
        for cls in classes:
            add_fields(p, cls, skip=tuple(seen))
            seen.update(f.name for f in cls.__dataclass_fields__.values())
    return parser


def _parse(args: argparse.Namespace) -> Parsed:
    """Each dataclass of the command, from its flags over its config file; `given` holds what was given
    explicitly, per class (the toy's --quick fills the rest from its own defaults)."""
    _, classes, _ = COMMANDS[args.command]
    file = read_config_file(args.config, classes) if getattr(args, "config", None) else None
    parsed = Parsed()
    for cls in classes:
        given = values(args, cls, file)
        parsed.given[cls] = given
        parsed.configs[cls] = cls(**given)
    return parsed


def load_plugins() -> None:
    """Import the modules named in THICKETS_PLUGINS (comma-separated): a module of yours that registers
    tasks with `register_task` makes them available to every command."""
    for name in filter(None, (n.strip() for n in os.environ.get("THICKETS_PLUGINS", "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as e:  # a plugin's import error is the user's to fix: say which module
            raise ThicketsError(f"cannot import THICKETS_PLUGINS module {name}: {type(e).__name__}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2, its one line already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        load_plugins()
        COMMANDS[args.command][2](_parse(args), args.quiet)
    except ThicketsError as e:
        print(f"thickets: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever it quotes
        return 2
    except BrokenPipeError:  # `thickets tasks | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(
            "thickets: interrupted; finished candidates are stored, rerun the same command to resume", file=sys.stderr
        )
        return 130
    return 0


__all__ = ["COMMANDS", "build_parser", "main"]
