"""`thickets serve`: a run folder's experts behind an OpenAI-compatible endpoint.

Everything a bad flag can break (the run, K, the rank, the model's identity) is checked before the
model loads; then the engine loads once and uvicorn serves until stopped (Ctrl-C or SIGTERM), giving
in-flight requests `graceful_shutdown_s` to finish.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from thickets.engines import uses_chat_template
from thickets.errors import ThicketsError
from thickets.models import model_limits, resolve
from thickets.noise import PerturbationSpec
from thickets.randopt.scoring import check_unchanged, engine_for, load_run_config, task_for
from thickets.randopt.store import RunStore
from thickets.randopt.vote import fully_scored
from thickets.ship.serve.app import Served, make_app
from thickets.ship.serve.batcher import Settings
from thickets.ship.serve.config import ServeConfig
from thickets.ship.serve.voter import Verdict, Voter


def experts_of(config: ServeConfig) -> tuple[list[PerturbationSpec | None], list[dict[str, Any]]]:
    """The specs that answer (best first) and what to report of each; refused in one line if the run
    does not have them."""
    run = load_run_config(config.run_dir)
    if config.base:
        return [None], [{"rank": 0, "candidate": "base"}]
    with RunStore.open(config.run_dir, write=False) as store:
        what = f"rank {config.rank}" if config.rank else f"top-k {config.top_k}"
        ranked = fully_scored(store.candidates(), config.rank or config.top_k, config.run_dir, what)
    chosen = [ranked[config.rank - 1]] if config.rank else ranked[: config.top_k]
    first = config.rank or 1
    return [run.candidate(c.idx) for c in chosen], [
        {"rank": first + i, "candidate": c.idx, "seed": c.seed, "sigma": c.sigma, "val_score": c.score}
        for i, c in enumerate(chosen)
    ]


def build(config: ServeConfig) -> FastAPI:
    """The app, with its model loaded: what `serve` runs, and what tests drive in-process."""
    run = load_run_config(config.run_dir)
    task = task_for(run)
    specs, described = experts_of(config)
    identity = resolve(run.model)
    with RunStore.open(config.run_dir, write=False) as store:
        check_unchanged(store, task, identity)
    engine = engine_for(run)
    voter = Voter(engine, specs, task, adaptive=config.adaptive if len(specs) > 1 else "off")
    name = config.name or f"{Path(config.run_dir).resolve().name}-{config.experts}"

    def answer(prompts: list[str], s: Settings) -> list[Verdict]:
        return voter.answer(prompts, s.max_new_tokens, s.stop, add_special_tokens=s.add_special_tokens)

    served = Served(
        name=name,
        tokenizer=engine.tokenizer,
        chat_template=uses_chat_template(engine.tokenizer, run.chat_template),
        system_prompt=task.system_prompt,
        task_stop=tuple(task.stop),
        default_max_tokens=min(run.max_new_tokens, config.max_tokens_limit),
        context=model_limits(identity).context,
        describe={
            "run": str(Path(config.run_dir).resolve()),
            "task": run.task,
            "base_model": run.model,
            "experts": described,
            "adaptive": voter.adaptive,
            "working_copies": voter.keep_copies,
        },
    )
    return make_app(served, config, answer)


class InThread:
    """The server in a thread of this process, on a free loopback port (notebooks, load tests, tests);
    `stop()` shuts it down as Ctrl-C would."""

    def __init__(self, config: ServeConfig, start_timeout_s: float = 120.0):
        import socket
        import threading
        import time

        import uvicorn

        self.app = build(config)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                timeout_graceful_shutdown=int(config.graceful_shutdown_s),
            )
        )
        self.thread = threading.Thread(target=self.server.run, name="thickets-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise ThicketsError("the server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"
        self.name: str = self.app.state.served.name

    def stop(self, timeout_s: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise ThicketsError(f"the server did not stop within {timeout_s:g} s")


def serve(config: ServeConfig) -> None:
    import uvicorn

    app = build(config)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        timeout_graceful_shutdown=int(config.graceful_shutdown_s),
        log_level="info",
    )
