"""Every report thickets writes or prints, in one place: the ensemble's markdown and rich tables,
the landscape's HTML page, and the tables of density, racing replays, the toy experiment, the
baseline comparison and the benchmarks. Computation lives elsewhere; this module only formats.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from thickets.analysis.harm import harm_line
from thickets.analysis.reliability import reliability_line
from thickets.analysis.transfer import transfer_lines
from thickets.engines import Engine
from thickets.randopt.ensemble import ensemble as ensemble_data

# -- the ensemble ----------------------------------------------------------------------------------


def ensemble(
    run_dir: str | Path,
    top_k: Sequence[int],
    test_size: int,
    *,
    engine: Engine | None = None,
    progress: bool = True,
    write_report: bool = True,
    adaptive: str = "off",
) -> dict[str, Any]:
    """`randopt.ensemble.ensemble`, then report.json and report.md in the run folder."""
    report = ensemble_data(run_dir, top_k, test_size, engine=engine, progress=progress, adaptive=adaptive)
    if write_report:
        write_report_files(Path(run_dir), report)
    return report


def write_report_files(run_dir: Path, report: Mapping[str, Any]) -> None:
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    parts = report["tasks"].values() if "tasks" in report else [report]
    (run_dir / "report.md").write_text("\n\n".join(report_markdown(r) for r in parts) + "\n")


def report_markdown(report: Mapping[str, Any]) -> str:
    lines = [
        f"# thickets report: {report['task']} on {report['model']}",
        "",
        f"Population {report['population']}, sigmas {report['sigmas']}, validation {report['val_size']} examples, "
        f"test {report['test_size']} held-out examples.",
        *(["", sigma_auto_line(report["sigma_auto"])] if "sigma_auto" in report else []),
        *(["", unscored_line(report["unscored"])] if any(report.get("unscored", {}).values()) else []),
        *(["", harm_line(report["harm"]) + "."] if report.get("harm") else []),
        "",
        "| model | K | answers per question | test accuracy | answer extracted | gain vs base, points [95% CI] |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['label']} | {r['k']} | {_asked(r)} | {r['accuracy']:.1%} | {r['format_rate']:.1%} | "
            f"{format_gain(r['vs_base'])} |"
        )
    lines += [
        "",
        "Each expert of the largest K on the test split (format = answer extracted):",
        "",
        "| rank | candidate | sigma | validation score | test questions answered | test accuracy | format |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in report["experts"]:
        lines.append(
            f"| {e['rank']} | {e['idx']} | {e['sigma']:g} | {e['val_score']:.3f} | "
            f"{e.get('answered', report['test_size'])} | {e['accuracy']:.1%} | {e['format_rate']:.1%} |"
        )
    return "\n".join(lines)


def unscored_line(unscored: Mapping[str, int]) -> str:
    """The rows a scorer could not judge (RunStore.unscored), as a warning a person reads."""
    counts = ", ".join(f"{n} {split}" for split, n in sorted(unscored.items()))
    return (
        f"warning: {counts} answers unscored (the task's scorer crashed or stalled twice on them); they count "
        f"in no model's mean (a vote counts them as not correct), and a rerun does not score them again"
    )


def sigma_auto_line(choice: Mapping[str, Any]) -> str:
    """One line on what a pilot (--sigma auto) chose, from a report's or a pilot record's fields."""
    if not choice["chosen"]:
        return "Sigma auto: the pilot is not done yet."
    tried = choice["tried"]
    return (
        f"Sigma auto: {', '.join(f'{s:g}' for s in choice['chosen'])} chosen by the {choice['rule']} rule from a "
        f"pilot of {choice['pilot_size']} candidates over sigma {tried[0]:g} to {tried[-1]:g}."
    )


def _asked(row: Mapping[str, Any]) -> str:
    """Models that answered a question, on average: K for a full vote, fewer for an adaptive one."""
    asked = row.get("asked", row["k"])  # reports from before the adaptive vote have no count
    return str(row["k"]) if asked == row["k"] else f"{asked:.2f}"


def format_gain(g: Mapping[str, Any] | None) -> str:
    if g is None:
        return "-"
    lo, hi = g["ci95"]
    return f"{g['gain'] * 100:+.1f} [{lo * 100:+.1f}, {hi * 100:+.1f}]"


def print_table(report: Mapping[str, Any]) -> None:
    t = Table(
        title=f"{report['task']} on {report['model']}: {report['test_size']} held-out test examples",
        caption="extracted: share of answers that could be read; vs base: paired gain on the same questions",
    )
    for col in ("model", "K", "answers/question", "accuracy", "extracted", "vs base, pts [95% CI]"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in report["rows"]:
        t.add_row(
            r["label"],
            str(r["k"]),
            _asked(r),
            f"{r['accuracy']:.1%}",
            f"{r['format_rate']:.1%}",
            format_gain(r["vs_base"]),
        )
    Console().print(t)
    if "sigma_auto" in report:
        print(sigma_auto_line(report["sigma_auto"]))


def print_tables(report: Mapping[str, Any]) -> None:
    """The table of a report, or one per task of a multi-task report."""
    for r in report["tasks"].values() if "tasks" in report else [report]:
        print_table(r)


# -- the landscape ---------------------------------------------------------------------------------


def print_density(rows: Sequence[Mapping[str, Any]], base: float) -> None:
    delta = rows[0]["delta"]
    t = Table(title=f"density of improving perturbations (base validation score {base:.3f})")
    for col in ("sigma", "candidates", "above base", f"above base + {delta:g}", "mean", "best"):
        t.add_column(col, justify="right")
    for d in rows:
        t.add_row(
            "all" if d["sigma"] is None else f"{d['sigma']:g}",
            str(d["n"]),
            f"{d['above_base']:.1%} [{d['above_base_ci95'][0]:.0%}, {d['above_base_ci95'][1]:.0%}]",
            f"{d['above_base_plus_delta']:.1%} [{d['above_base_plus_delta_ci95'][0]:.0%}, "
            f"{d['above_base_plus_delta_ci95'][1]:.0%}]",
            f"{d['mean']:.3f}",
            f"{d['best']:.3f}",
        )
    Console().print(t)


def pilot_rows(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """The pilot's curve (a pilot record, see randopt.pilot.record) as text cells, one row per sigma tried."""
    rows = []
    for p in record["points"]:
        lo, hi = p["density_ci95"]
        marks = ["chosen"] if p["sigma"] in record["chosen"] else []
        marks += ["collapsed"] if p["collapsed"] else []
        rows.append(
            {
                "sigma": f"{p['sigma']:g}",
                "n": str(p["n"]),
                "above": f"{p['density']:.0%} [{lo:.0%}, {hi:.0%}]",
                "mean": f"{p['mean']:.3f}",
                "median": f"{p['median']:.3f}",
                "best": f"{p['best']:.3f}",
                "gain": f"{p['topk_gain']:+.3f}",
                "marks": ", ".join(marks),
            }
        )
    return rows


PILOT_COLUMNS = [
    ("sigma", "sigma"),
    ("n", "candidates"),
    ("above", "above base [95% CI]"),
    ("mean", "mean"),
    ("median", "median"),
    ("best", "best"),
    ("gain", "best 1/4 - base"),
    ("marks", ""),
]


def pilot_summary(record: Mapping[str, Any]) -> str:
    """One line: what the pilot chose, and where it stopped."""
    line = sigma_auto_line(record)
    untried = [s for s in record["grid"] if s not in record["tried"]]
    if record["collapsed_at"] is not None:
        line += f" It stopped at {record['collapsed_at']:g}, which collapsed"
        line += f"; {', '.join(f'{s:g}' for s in untried)} never tried." if untried else "."
    return line + (f" {record['note']}." if record["note"] else "")


def print_pilot(record: Mapping[str, Any]) -> None:
    """The pilot of --sigma auto: its curve, and the choice."""
    t = Table(
        title=f"pilot of --sigma auto (base validation score {record['base']:.3f}, rule {record['rule']})",
        caption=f"collapsed: the median candidate below {record['collapse']:g} x the base; the walk stops there",
    )
    for _, label in PILOT_COLUMNS:
        t.add_column(label, justify="left" if not label else "right")
    for row in pilot_rows(record):
        t.add_row(*(row[key] for key, _ in PILOT_COLUMNS))
    Console(width=max(Console().width, 110)).print(t)
    print(pilot_summary(record))


def print_rounding(rounding: Mapping[str, Any]) -> None:
    """What half-precision rounding leaves of each sigma's perturbation, per tensor group."""
    t = Table(
        title=f"{rounding['dtype']}: share of the perturbation the rounded weights keep (entries moved)",
        caption=f"candidate 0's noise on the first {rounding['sample']:,} entries of each tensor",
    )
    names = _sigma_names(rounding)
    t.add_column("tensor group", justify="left")
    for n in names:
        t.add_column(n, justify="right")
    for row in rounding_rows(rounding):
        t.add_row(row["group"], *(row[n] for n in names))
    Console(width=max(Console().width, 110)).print(t)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def _table(rows: Sequence[Mapping[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row[key]))}</td>" for key, _ in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _sigma_names(rounding: Mapping[str, Any]) -> list[str]:
    return [f"sigma {row['sigma']:g}" for row in rounding["sigmas"]]


def rounding_rows(rounding: Mapping[str, Any]) -> list[dict[str, str]]:
    """One row per tensor group: kept energy (entries moved) at each sigma (engines/rounding.py)."""
    names = _sigma_names(rounding)
    groups = sorted({g for row in rounding["sigmas"] for g in row["groups"]})
    return [
        {
            "group": g,
            **{
                n: f"{row['groups'][g]['kept']:.0%} ({row['groups'][g]['changed']:.0%})" if g in row["groups"] else "-"
                for n, row in zip(names, rounding["sigmas"])
            },
        }
        for g in groups
    ]


def html_report(summary: Mapping[str, Any], figures: dict[str, Path]) -> str:
    dens_rows = [
        {
            "sigma": "all" if d["sigma"] is None else f"{d['sigma']:g}",
            "n": d["n"],
            "above": f"{d['above_base']:.1%}",
            "above_delta": f"{d['above_base_plus_delta']:.1%}",
            "mean": f"{d['mean']:.3f}",
            "best": f"{d['best']:.3f}",
        }
        for d in summary["density"]
    ]
    delta = summary["density"][0]["delta"]
    parts = [
        f"<h1>thickets: {html.escape(summary['task'])} on {html.escape(summary['model'])}</h1>",
        f"<p>{summary['candidates']} candidates; base validation score {summary['base']:.3f}.</p>",
        *([f"<p>{html.escape(unscored_line(summary['unscored']))}</p>"] if summary.get("unscored") else []),
        *([f"<p>{html.escape(reliability_line(summary['reliability']))}.</p>"] if "reliability" in summary else []),
        "<h2>Density of improving perturbations</h2>",
        _table(
            dens_rows,
            [
                ("sigma", "sigma"),
                ("n", "candidates"),
                ("above", "above base"),
                ("above_delta", f"above base + {delta:g}"),
                ("mean", "mean score"),
                ("best", "best"),
            ],
        ),
        _img(figures["histogram"]),
        _img(figures["sigma"]),
    ]
    rounding = summary.get("rounding")
    if rounding:
        parts += [
            f"<h2>What {html.escape(rounding['dtype'])} rounding leaves of the perturbation</h2>",
            f"<p>Share of each group's perturbation energy the rounded weights carry (and of its entries that "
            f"moved at all), candidate 0's noise on the first {rounding['sample']:,} entries of each tensor. "
            f"Below 50%, most of the perturbation is rounded away.</p>",
            _table(rounding_rows(rounding), [("group", "tensor group")] + [(s, s) for s in _sigma_names(rounding)]),
        ]
    record = summary.get("calibration")
    if record is not None:
        parts += [
            "<h2>Sigma chosen automatically (the pilot)</h2>",
            f"<p>{html.escape(pilot_summary(record))}</p>",
            _table(pilot_rows(record), PILOT_COLUMNS),
            _img(figures["pilot"]),
        ]
    if "topk" in figures:
        parts += ["<h2>Top-K vote on the test split</h2>", _img(figures["topk"])]
    else:
        parts += ["<p>No test answers stored: run <code>thickets ensemble</code> for the top-K curve.</p>"]
    spec = summary.get("specialisation")
    if spec is not None:
        tasks = spec["tasks"]
        corr_rows = [
            {"task": t, **{u: f"{spec['correlation'][i][j]:.2f}" for j, u in enumerate(tasks)}}
            for i, t in enumerate(tasks)
        ]
        parts += [
            "<h2>Specialisation across tasks</h2>",
            f"<p>{spec['improve_one_hurt_another']:.0%} of candidates improve one task while hurting another; "
            f"{spec['improve_all']:.0%} improve every task. Above the base per task: "
            + ", ".join(f"{html.escape(t)} {v:.0%}" for t, v in spec["above_base_per_task"].items())
            + ".</p>",
            _img(figures["specialisation"]),
            "<p>Correlation of the candidates' gains between tasks:</p>",
            _table(corr_rows, [("task", "")] + [(t, t) for t in tasks]),
        ]
    if summary.get("harm"):
        parts += ["<h2>Do no harm: a held-out text</h2>", f"<p>{html.escape(harm_line(summary['harm']))}.</p>"]
    if "transfer" in figures:
        parts += [
            "<h2>Does the selection transfer?</h2>",
            *(f"<p>{html.escape(line)}.</p>" for line in transfer_lines(summary["transfer"])),
            _img(figures["transfer"]),
        ]
    if "population" in figures:
        note = summary.get("population_note")
        parts += [
            "<h2>What the population buys</h2>",
            "<p>The best validation score of the first N candidates and of resampled populations of N, and the "
            "top-K vote's test accuracy from the first N, all from stored results.</p>",
            *([f"<p>{html.escape(note)}</p>"] if note else []),
            _img(figures["population"]),
        ]
    if "projection" in figures:
        parts += ["<h2>Perturbation directions</h2>", _img(figures["projection"])]
    style = (
        "body{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
        "img{max-width:100%;display:block;margin:1em 0}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>thickets report</title><style>{style}</style>"
        f"</head><body>{''.join(parts)}</body></html>\n"
    )


# -- racing replays, the toy experiment, the baselines, the benchmarks ---------------------------------


def print_replay(title: str, rows: Sequence[tuple[int, Mapping[str, Any]]]) -> None:
    t = Table(title=title)
    for col in ("K", "rule", "same top-K", "top-K overlap", "generation saved"):
        t.add_column(col, justify="right")
    for k, r in rows:
        rule = "exact" if r["mode"] == "exact" else f"hoeffding d={r['delta']:g}"
        t.add_row(str(k), rule, f"{r['same_top_k']:.1%}", f"{r['top_k_overlap']:.1%}", f"{r['generation_saved']:.1%}")
    Console().print(t)


def print_vote_replay(result: Mapping[str, Any]) -> None:
    t = Table(
        title=f"adaptive vote replayed on {result['run_dir']}: {result['questions']} stored test questions",
        caption="exact: stop once the leader cannot be overtaken; beta: once a Beta posterior gives it a 95% lead",
    )
    for col in ("K", "rule", "experts asked", "saved", "agreement with full vote", "accuracy"):
        t.add_column(col, justify="right")
    for r in result["rows"]:
        t.add_row(
            str(r["k"]),
            r["rule"],
            f"{r['experts_asked']:.2f}",
            f"{1 - r['experts_asked'] / r['k']:.0%}",
            f"{r['agreement']:.1%}",
            f"{r['accuracy']:.1%}",
        )
    Console().print(t)


def print_toy(title: str, rows: Sequence[Mapping[str, Any]], gain: float, level: float) -> None:
    """The toy's table: per group, or per regime and target (with the cell's sigma and errors), both
    densities and the gains."""
    t = Table(title=title)
    cells = "sigma" in rows[0] if rows else False
    heads = ["regime", "target", "sigma", "base error", "best error"] if cells else ["pretraining", "cells"]
    for col in (
        *heads,
        "beats base",
        f"error / {gain:g} or less",
        f"error {level:g} or less",
        "best / base",
        "top-K / base",
    ):
        t.add_column(col, justify="left" if col in ("regime", "target", "pretraining") else "right")
    for r in rows:
        first = (
            [r["regime"], r["target"], f"{r['sigma']:g}", f"{r['base_mse']:.3g}", f"{r['best_mse']:.3g}"]
            if cells
            else [r["group"], str(r["cells"])]
        )
        t.add_row(
            *first,
            f"{r['density']:.1%}",
            f"{r['density_gain']:.1%}",
            f"{r['density_level']:.1%}",
            f"{r['best_over_base']:.3f}",
            f"{r['topk_over_base']:.3f}",
        )
    Console(width=max(Console().width, 120)).print(t)


def print_compare(title: str, rows: Sequence[Mapping[str, Any]]) -> None:
    t = Table(title=title)
    for col in (
        "method",
        "train tokens",
        "wall time",
        "test accuracy",
        "answers per question",
        "test tokens per question",
    ):
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        t.add_row(
            r["method"],
            str(r["train_tokens"]),
            f"{r['seconds']:.0f} s",
            f"{r['accuracy']:.1%}",
            str(r["test_answers_per_question"]),
            f"{r['test_tokens_per_question']:.1f}",
        )
    Console().print(t)
    for r in rows:  # distilled and merged RandOpt: where their budgets went
        parts = []
        if "tokens" in r:
            parts.append("tokens " + ", ".join(f"{what} {n}" for what, n in r["tokens"].items()))
        if "traces_kept" in r:
            parts.append(f"{r['traces_kept']} traces kept from {r['train_questions']} train questions")
        if "scale" in r:
            parts.append(f"{r['candidates']} candidates searched, the merge at scale {r['scale']:g}")
        parts += [
            f"not {what}: {r[key]}" for key, what in (("not_trained", "trained"), ("not_merged", "merged")) if key in r
        ]
        if parts:
            print(f"{r['method']}: {'; '.join(parts)}")


def print_bench(r: Mapping[str, Any], targets: Mapping[str, tuple[float, bool]]) -> None:
    """The decode table per batch size, then each target (figure: (target, higher is better)) with the
    figure measured."""
    t = Table(title=f"decode, {r['config']['decode_tokens']} new tokens per row (tokens/s)")
    for col in (
        "batch",
        "ours",
        "loop",
        "HF",
        "ratio",
        "ours step",
        "HF step",
        "ratio ",
        "limit",
        "ours/lim",
        "HF/lim",
        "compiled step",
        "compiled/ours",
        "compile s",
        "same",
    ):
        t.add_column(col, justify="right")
    for b, d in r["decode"].items():
        t.add_row(
            str(b),
            f"{d['ours_tok_s']:.0f}",
            f"{d['loop_tok_s']:.0f}",
            f"{d['hf_tok_s']:.0f}",
            f"{r[f'decode_vs_hf_b{b}']:.2f}x",
            f"{d['ours_step_tok_s']:.0f}",
            f"{d['hf_step_tok_s']:.0f}",
            f"{r[f'decode_step_vs_hf_b{b}']:.2f}x",
            f"{d['limit_tok_s']:.0f}",
            f"{r[f'roofline_fraction_b{b}']:.0%}",
            f"{r[f'hf_roofline_fraction_b{b}']:.0%}",
            *(
                (
                    f"{d['compiled_step_tok_s']:.0f}",
                    f"{r[f'compiled_vs_eager_step_b{b}']:.2f}x",
                    f"{r[f'compile_s_b{b}']:.1f}",
                )
                if "compiled_step_tok_s" in d
                else ("-", "-", "no C++ compiler")
            ),
            "/".join(
                ("yes" if d[k] else "NO") if k in d else "-"
                for k in ("same_tokens", "loop_same_tokens", "compiled_same_tokens")
            ),
        )
    console = Console(width=max(Console().width, 160))
    console.print(t)
    s = Table(title="targets")
    for col in ("figure", "measured", "target", "met"):
        s.add_column(col)
    for key, (target, higher) in targets.items():
        if key not in r:
            continue
        met = r[key] >= target if higher else r[key] <= target
        s.add_row(key, f"{r[key]:.3g}", f"{'>=' if higher else '<='} {target:g}", "yes" if met else "no")
    s.add_row("same_top_k (search vs naive)", str(r["same_top_k"]), "True", "yes" if r["same_top_k"] else "no")
    console.print(s)
    console.print(
        f"search {r['search_candidates_per_hour']:.0f} candidates/h vs naive "
        f"{r['naive_candidates_per_hour']:.0f}; a candidate {r['candidate_s']:.2f} s, perturb + restore "
        f"{r['perturb_restore_s']:.3f} s"
    )
    pop = r["population"]
    console.print(
        f"population: {pop['experts']} rank-{pop['rank']} experts x {pop['prompts']} prompts in one batch "
        f"{pop['population_tok_s']:.0f} tokens/s, the base model on the same rows {pop['inference_tok_s']:.0f}, "
        f"full-rank candidates one at a time {pop['one_at_a_time_tok_s']:.0f}; candidates/h "
        f"{pop['population_candidates_per_hour']:.0f} vs {pop['one_at_a_time_candidates_per_hour']:.0f} "
        f"({r['lowrank_batched_vs_fullrank_candidates']:.2f}x)"
    )
    console.print(
        f"noise: {r['noise_v1_ns_per_param']:.2f} ns per parameter with version 1 (host Philox), "
        f"{r['noise_v2_ns_per_param']:.2f} with version 2 (table windows on the weight's device): "
        f"{r['noise_v1_vs_v2']:.1f}x; perturb + restore {r['perturb_vs_copy']:.2f}x a plain copy of the weights "
        f"({r['copy_floor_s']:.3f} s: reading the base and writing the working copy once, the floor on this memory)"
    )
    console.print(
        f"memory: search peak RSS {r['peak_rss_gb']:.2f} GB; {r['peak_above_baseline_gb']:.2f} GB above the "
        f"interpreter with torch and transformers ({r['baseline_rss_gb']:.2f} GB); budget 2 x model "
        f"{r['model_gb']:.2f} GB + KV cache {r['kv_cache_gb']:.3f} GB = {r['memory_budget_gb']:.2f} GB; "
        f"held besides: the noise table {r['noise_table_gb']:.3f} GB, what loading holds before a weight is read "
        f"{r['load_overhead_gb']:.3f} GB, the rest {r['unnamed_gb']:.3f} GB"
    )
    console.print(
        f"load: warm {r['warm_load_s']:.2f} s (libraries imported); a fresh process to a ready engine "
        f"{r['process_ready_s']:.2f} s, of which importing torch and transformers {r['import_s']:.2f} s; "
        f"first load here {r['first_load_s']:.1f} s"
    )


def print_distill(records: Sequence[Mapping[str, Any]]) -> None:
    """Per round: the original base, the round's top-K vote (K answers a question) and the distilled
    model (one), on the same test questions, with paired 95% intervals against the base."""
    if not records:
        return
    t = Table(title=f"distillation, {records[0]['test']['test_size']} test questions")
    for col in ("round", "traces kept", "model", "answers/question", "accuracy", "vs base, pts [95% CI]"):
        t.add_column(col, justify="right")
    first = records[0]["test"]
    t.add_row("-", "-", "original base", "1", f"{first['base']['accuracy']:.1%}", "-")
    for r in records:
        test = r["test"]
        for label, key in ((f"top-{test['ensemble']['k']} vote", "ensemble"), ("distilled", "distilled")):
            row = test[key]
            gain = row["vs_base"]
            t.add_row(
                str(r["round"]),
                f"{r['kept_this_round']} ({r['share_kept']:.0%})" if key == "distilled" else "",
                label,
                str(row["answers_per_question"]),
                f"{row['accuracy']:.1%}",
                f"{100 * gain['gain']:+.1f} [{100 * gain['ci95'][0]:+.1f}, {100 * gain['ci95'][1]:+.1f}]",
            )
    Console().print(t)


def print_merge(report: Mapping[str, Any]) -> None:
    """The merged model beside the base, the best single expert and the top-K vote, on the gate's questions."""
    tried = ", ".join(f"{t['scale']:g}: {t['val_score']:.3f}" for t in report["scales_tried"])
    t = Table(
        title=f"merge of the top {report['top_k']} ({report['method']}): {report['gate_size']} held-out questions",
        caption=f"validation score by scale {tried}; chosen {report['scale']:g}",
    )
    for label in ("model", "answers/question", "accuracy", "vs base, pts [95% CI]"):
        t.add_column(label, justify="left" if label == "model" else "right")
    for r in report["rows"]:
        t.add_row(r["label"], str(r["answers_per_question"]), f"{r['accuracy']:.1%}", format_gain(r["vs_base"]))
    Console(width=max(Console().width, 110)).print(t)
    print(f"merged vs the top-{report['top_k']} vote: {format_gain(report['merged_vs_vote'])} points")
