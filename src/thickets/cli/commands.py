"""The `thickets` command: parses arguments and calls the library; every error is one line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from thickets.randopt.config import BenchConfig, SearchConfig, parse_floats, parse_ints
from thickets.errors import ThicketsError


def _add_search_args(p: argparse.ArgumentParser, defaults: SearchConfig) -> None:
    p.add_argument("--model", default=defaults.model, help="HF model folder, .gguf file, or smollm2-135m (default)")
    p.add_argument("--task", default=defaults.task, help="task name, gym:NAME, or KIND:DATA_FILE (see `thickets tasks`)")
    _add_task_source_args(p)
    p.add_argument("--population", type=int, default=defaults.population, help="number of candidates N")
    p.add_argument("--sigma", default=",".join(map(str, defaults.sigmas)), help="noise scale, or a grid a,b,c")
    p.add_argument("--val-size", type=int, default=defaults.val_size, help="validation examples per candidate")
    p.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    p.add_argument("--seed", type=int, default=defaults.seed, help="population seed")
    p.add_argument("--split-seed", type=int, default=defaults.split_seed, help="seed of the validation/test splits")
    p.add_argument("--include", default=",".join(defaults.include), help="parameter name patterns to perturb")
    p.add_argument("--exclude", default=",".join(defaults.exclude), help="parameter name patterns to leave alone")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--dtype", default=defaults.dtype, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--engine", default=defaults.engine, choices=["transformers", "vllm"],
                   help="vllm: GPUs only, experimental (see README)")
    p.add_argument("--no-chat-template", action="store_true", help="feed the raw prompt, not the chat template")
    p.add_argument("--racing", default=defaults.racing, choices=["off", "exact", "hoeffding"],
                   help="stop scoring candidates that cannot reach the top K (see BENCHMARKS.md)")
    p.add_argument("--racing-top-k", type=int, default=defaults.racing_top_k, help="the K racing keeps exact")
    p.add_argument("--racing-delta", type=float, default=defaults.racing_delta,
                   help="hoeffding racing: chance of dropping a true top-K candidate")
    p.add_argument("--executor", default="inprocess", choices=["inprocess", "ray"],
                   help="where candidates are scored: this process, or Ray actors (see README: Scaling out)")
    p.add_argument("--address", default=None, help="ray: an existing cluster (ray start --head ...); default: a local Ray")
    p.add_argument("--workers", type=int, default=2, help="ray: actors, each loading the model once")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="ray: GPUs per actor (0: CPU)")
    p.add_argument("--run-dir", required=True, help="run folder (created, or resumed if it exists)")


def _add_task_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--columns", default="", help="for KIND:DATA_FILE tasks: FIELD=COLUMN pairs, e.g. question=problem,answer=solution")
    p.add_argument("--reward", default=None, help="a TRL-style reward function, module:function or file.py:function")
    p.add_argument("--reward-timeout", type=float, default=SearchConfig.reward_timeout,
                   help="seconds a --reward function may take per batch before the run stops")


def _patterns(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _config(a: argparse.Namespace) -> SearchConfig:
    return SearchConfig(
        model=a.model, task=a.task, population=a.population, sigmas=parse_floats(a.sigma, "--sigma"),
        val_size=a.val_size, max_new_tokens=a.max_new_tokens, seed=a.seed, split_seed=a.split_seed,
        include=_patterns(a.include), exclude=_patterns(a.exclude), batch_size=a.batch_size, dtype=a.dtype,
        engine=a.engine,
        chat_template=not a.no_chat_template, columns=_patterns(a.columns), reward=a.reward,
        reward_timeout=a.reward_timeout,
        racing=a.racing, racing_top_k=a.racing_top_k, racing_delta=a.racing_delta,
    )


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{report['task']} on {report['model']}: {report['test_size']} held-out test examples",
              caption="extracted: share of answers that could be read; vs base: paired gain on the same questions")
    from thickets.randopt.ensemble import format_gain

    for col in ("model", "K", "accuracy", "extracted", "vs base, pts [95% CI]"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in report["rows"]:
        t.add_row(r["label"], str(r["k"]), f"{r['accuracy']:.1%}", f"{r['format_rate']:.1%}", format_gain(r["vs_base"]))
    Console().print(t)


def _search(a, config: SearchConfig):
    """search() with the executor the command line asked for."""
    from thickets.randopt.search import search

    if a.executor == "inprocess":
        return search(config, a.run_dir, progress=not a.quiet)
    from thickets.randopt.executors import RayOptions, make_executor

    executor = make_executor("ray", config, ray_options=RayOptions(a.address, a.workers, a.gpus_per_worker))
    try:
        return search(config, a.run_dir, executor=executor, progress=not a.quiet)
    finally:
        executor.close()


def cmd_search(a) -> None:
    result = _search(a, _config(a))
    best = result.ranked[0]
    stopped = sum(not c.complete for c in result.ranked)
    raced = f" ({stopped} stopped early by racing)" if stopped else ""
    print(f"base validation score {result.base.score:.3f}; best of {len(result.ranked)} candidates{raced} "
          f"{best.score:.3f} (seed {best.seed}, sigma {best.sigma:g}); run stored in {a.run_dir}")


def cmd_ensemble(a) -> None:
    from thickets.randopt.ensemble import ensemble

    report = ensemble(a.run_dir, parse_ints(a.top_k, "--top-k"), a.test_size, progress=not a.quiet)
    for r in report["tasks"].values() if "tasks" in report else [report]:
        print_table(r)
    print(f"report written to {Path(a.run_dir) / 'report.json'} and report.md")


def cmd_export(a) -> None:
    from thickets.ship.export import export_candidate, export_spec
    from thickets.noise import ParamFilter, PerturbationSpec

    if a.run_dir:
        out = export_candidate(a.run_dir, a.rank, a.out)
    else:
        if a.seed is None or a.sigma is None:
            raise ThicketsError("export needs --run-dir D [--rank R], or --model M --seed X --sigma S")
        if not a.sigma > 0:
            raise ThicketsError(f"sigma must be a positive number, got {a.sigma}")
        spec = PerturbationSpec(a.seed, a.sigma, filter=ParamFilter(
            tuple(x for x in a.include.split(",") if x), tuple(x for x in a.exclude.split(",") if x)))
        out = export_spec(a.model, spec, a.out)
    print(f"exported to {out}")


def cmd_demo(a) -> None:
    from thickets.cli.demo import demo

    demo(a.run_dir, progress=not a.quiet)


def cmd_score(a) -> None:
    from thickets.tasks import get_task, score_one
    from thickets.tasks.files.data import parse_columns

    try:
        example = json.loads(a.example)
    except json.JSONDecodeError as e:
        raise ThicketsError(f"--example is not valid JSON: {e}") from None
    if not isinstance(example, dict):
        raise ThicketsError("--example must be a JSON object")
    try:
        completion = sys.stdin.read() if a.completion_file == "-" else Path(a.completion_file).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ThicketsError(f"cannot read --completion-file {a.completion_file}: {e}") from None
    task = get_task(a.task, parse_columns(_patterns(a.columns)), a.reward, a.reward_timeout)
    print(json.dumps(score_one(task, example, completion), indent=2))


def cmd_tasks(a) -> None:
    from thickets.tasks import describe_tasks

    for name, description in describe_tasks():
        print(f"{name:<28} {description}")


def cmd_bench(a) -> None:
    from thickets.bench.runner import bench, print_bench

    sizes = parse_ints(a.batch_sizes, "--batch-sizes")
    if not sizes or a.candidates < 1 or a.val_size < 1 or a.decode_tokens < 2 or min(sizes) < 1:
        raise ThicketsError("--candidates, --val-size and --batch-sizes must be at least 1, --decode-tokens at least 2")
    if a.json:
        out = Path(a.json)
        if not out.parent.is_dir():
            raise ThicketsError(f"cannot write --json {a.json}: folder {out.parent} does not exist")
    cfg = BenchConfig(model=a.model, task=a.task, candidates=a.candidates, val_size=a.val_size,
                      max_new_tokens=a.max_new_tokens, batch_sizes=sizes, decode_tokens=a.decode_tokens)
    results = bench(cfg, progress=not a.quiet)
    print_bench(results)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {a.json}")


def cmd_race_replay(a) -> None:
    from rich.console import Console
    from rich.table import Table

    from thickets.randopt.racing import replay_run
    from thickets.randopt.search import load_run_config, task_for

    if a.chunk < 1 or a.orders < 1:
        raise ThicketsError(f"--chunk must be at least 1 and --orders must be at least 1, got {a.chunk} and {a.orders}")

    reward_range = getattr(task_for(load_run_config(a.run_dir)), "reward_range", (0.0, 1.0))
    if reward_range is None:
        raise ThicketsError("the run's reward has no declared range (a --reward function), so racing cannot bound it")
    t = Table(title=f"racing replayed on {a.run_dir}: {a.orders} random orders, chunks of {a.chunk} examples")
    for col in ("K", "rule", "same top-K", "top-K overlap", "generation saved"):
        t.add_column(col, justify="right")
    for k in parse_ints(a.top_k, "--top-k"):
        for r in replay_run(a.run_dir, k, a.chunk, orders=a.orders, reward_range=reward_range):
            rule = "exact" if r["mode"] == "exact" else f"hoeffding d={r['delta']:g}"
            t.add_row(str(k), rule, f"{r['same_top_k']:.1%}", f"{r['top_k_overlap']:.1%}", f"{r['generation_saved']:.1%}")
    Console().print(t)


def cmd_toy(a) -> None:
    from rich.console import Console
    from rich.table import Table

    from thickets.toy.experiment import ToyConfig, run
    from thickets.toy.report import summary, write

    if a.population is not None and a.population < 1:
        raise ThicketsError(f"--population must be at least 1, got {a.population}")
    over = {"seed": a.seed, **({"population": a.population} if a.population else {})}
    cfg = ToyConfig.quick(**over) if a.quick else ToyConfig(**over)
    if cfg.top_k > cfg.population:
        raise ThicketsError(f"--population must be at least top-K ({cfg.top_k})")
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise ThicketsError(f"--out {a.out} exists and is not a folder")
    result = run(cfg, progress=not a.quiet)
    files = write(result, out)
    t = Table(title=f"1D signals: RandOpt, N={cfg.population}, K={cfg.top_k} "
                    f"({result['seconds']:.0f} s); improving = at least {cfg.margin:.0%} below the base's error")
    for col in ("pretraining", "cells", "beats base", "improving", "best / base", "top-K / base"):
        t.add_column(col, justify="right")
    for r in summary(result):
        t.add_row(r["group"], str(r["cells"]), f"{r['density']:.1%}", f"{r['density_margin']:.1%}",
                  f"{r['best_over_base']:.2f}", f"{r['topk_over_base']:.2f}")
    Console().print(t)
    print("written: " + ", ".join(str(f) for f in files))


def print_density(rows: list[dict], base: float) -> None:
    from rich.console import Console
    from rich.table import Table

    delta = rows[0]["delta"]
    t = Table(title=f"density of improving perturbations (base validation score {base:.3f})")
    for col in ("sigma", "candidates", "above base", f"above base + {delta:g}", "mean", "best"):
        t.add_column(col, justify="right")
    for d in rows:
        t.add_row("all" if d["sigma"] is None else f"{d['sigma']:g}", str(d["n"]), f"{d['above_base']:.1%}",
                  f"{d['above_base_plus_delta']:.1%}", f"{d['mean']:.3f}", f"{d['best']:.3f}")
    Console().print(t)


def cmd_analyze(a) -> None:
    from thickets.analysis.landscape import analyze
    from thickets.randopt.search import load_run_config

    if not a.delta >= 0:
        raise ThicketsError(f"--delta must be a number >= 0, got {a.delta}")
    load_run_config(a.run_dir)  # a clear error when the folder holds no run
    s = analyze(a.run_dir, a.delta, projection_map=not a.no_map, progress=not a.quiet)
    print_density(s["density"], s["base"])
    print(f"report: {s['html']} (figures in {Path(a.run_dir) / 'analysis'})")


def cmd_density(a) -> None:
    from thickets.analysis.landscape import RunScores, density

    if not a.delta >= 0:
        raise ThicketsError(f"--delta must be a number >= 0, got {a.delta}")
    result = _search(a, _config(a))
    print_density(density(RunScores.read(result.run_dir), a.delta), result.base.score)


def _check_inputs(task: str, model: str, split_seed: int, val_size: int, test_size: int = 0) -> None:
    """Bad task, data or model for the baselines: one line, before any model loads."""
    from thickets.models import resolve
    from thickets.randopt.search import task_for
    from thickets.tasks.splits import make_splits

    make_splits(task_for(SearchConfig(task=task)), split_seed, val_size, test_size)
    resolve(model)


def cmd_es(a) -> None:
    from thickets.baselines.es import ESConfig, run_es

    cfg = ESConfig(model=a.model, task=a.task, iterations=a.iterations, population=a.population, sigma=a.sigma,
                   alpha=a.alpha, val_size=a.val_size, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size,
                   seed=a.seed)
    _check_inputs(cfg.task, cfg.model, cfg.split_seed, cfg.val_size)
    log = run_es(cfg, a.run_dir, progress=not a.quiet)
    means = " ".join(f"{r['mean_reward']:.3f}" for r in log["iterations"])
    print(f"ES: mean population reward per iteration {means}; final weights {log['final_val_reward']:.3f} on "
          f"validation; {sum(r['tokens'] for r in log['iterations'])} tokens generated; log in {a.run_dir}/es.json")


def cmd_grpo(a) -> None:
    from thickets.baselines.grpo import GRPOSettings, run_grpo

    cfg = GRPOSettings(model=a.model, task=a.task, steps=a.steps, num_generations=a.num_generations,
                       prompts_per_step=a.prompts_per_step, learning_rate=a.learning_rate,
                       max_new_tokens=a.max_new_tokens, val_size=a.val_size, lora=a.lora, seed=a.seed)
    _check_inputs(cfg.task, cfg.model, cfg.split_seed, cfg.val_size)
    log = run_grpo(cfg, a.out, progress=not a.quiet)
    (Path(a.out) / "grpo.json").write_text(json.dumps(log, indent=2) + "\n")
    rewards = " ".join(f"{s['reward']:.3f}" for s in log["steps"])
    print(f"GRPO: mean reward per step {rewards}; {log['tokens']} tokens generated in {log['seconds']:.0f} s; "
          f"model in {log['model_dir']}")


def cmd_compare(a) -> None:
    from rich.console import Console
    from rich.table import Table

    from thickets.baselines.compare import CompareConfig, compare

    cfg = CompareConfig(model=a.model, task=a.task, budget=a.budget, val_size=a.val_size, test_size=a.test_size,
                        max_new_tokens=a.max_new_tokens, top_k=a.top_k, seed=a.seed)
    _check_inputs(cfg.task, cfg.model, 0, cfg.val_size, cfg.test_size)
    result = compare(cfg, a.out, progress=not a.quiet)
    t = Table(title=f"{cfg.task} on {cfg.model}: budget {cfg.budget} generated tokens, "
                    f"{result['test_size']} test questions")
    for col in ("method", "train tokens", "wall time", "test accuracy", "answers per question",
                "test tokens per question"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in result["rows"]:
        t.add_row(r["method"], str(r["train_tokens"]), f"{r['seconds']:.0f} s", f"{r['accuracy']:.1%}",
                  str(r["test_answers_per_question"]), f"{r['test_tokens_per_question']:.1f}")
    Console().print(t)
    print(f"written: {a.out}/compare.json, {a.out}/compare.png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thickets", description="RandOpt: post-training by random perturbation "
                                     "and top-K majority vote")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = SearchConfig()

    p = sub.add_parser("search", help="score N random perturbations on the validation split")
    _add_search_args(p, defaults)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("ensemble", help="top-K majority vote vs base vs best single, on held-out test data")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--top-k", default="1,5", help="K values, e.g. 1,5,10")
    p.add_argument("--test-size", type=int, default=100)
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("export", help="write a candidate as a standalone Hugging Face model folder")
    p.add_argument("--run-dir", help="export from this run (with --rank)")
    p.add_argument("--rank", type=int, default=1, help="1 = best candidate on validation")
    p.add_argument("--model", default=defaults.model, help="base model (with --seed and --sigma)")
    p.add_argument("--seed", type=int)
    p.add_argument("--sigma", type=float)
    p.add_argument("--include", default="*")
    p.add_argument("--exclude", default="")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="the embedded model end to end: search, then ensemble")
    p.add_argument("--run-dir", default="runs/demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("score", help="score one completion: extracted answer, vote key, reward, correct")
    p.add_argument("--task", required=True)
    _add_task_source_args(p)
    p.add_argument("--example", required=True, help='the example as JSON, e.g. \'{"numbers": [3, 5, 7], "target": 22}\'')
    p.add_argument("--completion-file", required=True, help="file with the model's completion, or - for stdin")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("bench", help="speed, side by side: our decoder vs generate, search vs a naive loop")
    bdef = BenchConfig()
    p.add_argument("--model", default=bdef.model)
    p.add_argument("--task", default=bdef.task)
    p.add_argument("--candidates", type=int, default=bdef.candidates, help="candidates per side of the search comparison")
    p.add_argument("--val-size", type=int, default=bdef.val_size)
    p.add_argument("--max-new-tokens", type=int, default=bdef.max_new_tokens)
    p.add_argument("--batch-sizes", default=",".join(map(str, bdef.batch_sizes)))
    p.add_argument("--decode-tokens", type=int, default=bdef.decode_tokens)
    p.add_argument("--json", help="write the figures to this file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("race-replay", help="how racing would have done on a finished run: same top-K, work saved")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--top-k", default="1,3,5")
    p.add_argument("--chunk", type=int, default=8, help="examples scored between racing decisions")
    p.add_argument("--orders", type=int, default=200, help="random example and candidate orders to replay")
    p.set_defaults(func=cmd_race_replay)

    p = sub.add_parser("toy", help="the 1D signal experiment: where pretraining makes improving perturbations dense")
    p.add_argument("--quick", action="store_true", help="a smaller grid, under 2 minutes on 2 cores")
    p.add_argument("--population", type=int, help="perturbations per cell (default 1000, quick 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/toy", help="folder for results.json and the figures")
    p.set_defaults(func=cmd_toy)

    p = sub.add_parser("analyze", help="landscape of a run: densities, sigma curve, top-K curve, map, report.html")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--delta", type=float, default=0.02, help="also count candidates above base + delta")
    p.add_argument("--no-map", action="store_true", help="skip the perturbation map (N+2 noise passes)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("density", help="a search without ensemble, then the density of improving perturbations")
    _add_search_args(p, defaults)
    p.add_argument("--delta", type=float, default=0.02)
    p.set_defaults(func=cmd_density)

    p = sub.add_parser("es", help="evolution strategies (Qiu et al. 2025) on the same engine: the ES baseline")
    p.add_argument("--model", default=defaults.model)
    p.add_argument("--task", default=defaults.task)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--population", type=int, default=30)
    p.add_argument("--sigma", type=float, default=1e-3)
    p.add_argument("--alpha", type=float, default=5e-4)
    p.add_argument("--val-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", required=True, help="ES log (es.json), resumed if it exists")
    p.set_defaults(func=cmd_es)

    p = sub.add_parser("grpo", help="GRPO through TRL's GRPOTrainer on the same task reward: the gradient baseline")
    p.add_argument("--model", default=defaults.model)
    p.add_argument("--task", default=defaults.task)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--num-generations", type=int, default=4, help="completions per prompt (the GRPO group)")
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--val-size", type=int, default=32, help="training prompts: the validation split")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (peft), merged when saved")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder for the trained model and grpo.json")
    p.set_defaults(func=cmd_grpo)

    p = sub.add_parser("compare", help="RandOpt vs ES vs GRPO at an equal budget of generated tokens")
    p.add_argument("--model", default=defaults.model)
    p.add_argument("--task", default="products")
    p.add_argument("--budget", type=int, default=100_000, help="generated tokens per method")
    p.add_argument("--val-size", type=int, default=32)
    p.add_argument("--test-size", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tasks", help="list the tasks")
    p.set_defaults(func=cmd_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ThicketsError as e:
        print(f"thickets: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, whatever it quotes
        return 2
    except BrokenPipeError:  # `thickets tasks | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("thickets: interrupted; finished candidates are stored, rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
