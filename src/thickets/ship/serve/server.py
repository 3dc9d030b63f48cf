"""`thickets serve`: a run folder's experts behind an OpenAI-compatible endpoint.

Everything a bad flag can break (the address, the run, K, the rank, the model's identity) is checked
before the model loads; then the engine loads once and uvicorn serves until stopped (Ctrl-C or
SIGTERM), giving in-flight requests `graceful_shutdown_s` to finish.
"""

from __future__ import annotations

import math
import socket
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from thickets.engines import uses_chat_template
from thickets.errors import ThicketsError
from thickets.models import model_limits, resolve
from thickets.noise import PerturbationSpec
from thickets.randopt.preflight import check_unchanged, load_run_config
from thickets.randopt.scoring import engine_for, task_for
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

    def answer(prompts: list[str], s: Settings, images: list[bytes] | None) -> list[Verdict]:
        return voter.answer(prompts, s.max_new_tokens, s.stop, add_special_tokens=s.add_special_tokens, images=images)

    served = Served(
        name=name,
        tokenizer=engine.tokenizer,
        chat_template=uses_chat_template(engine.tokenizer, run.chat_template),
        system_prompt=task.system_prompt,
        vision=getattr(engine, "processor", None) is not None,
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


def check_address(host: str, port: int) -> None:
    """Refuse in one line an address uvicorn could not listen on (it would log a traceback and exit 3):
    each of the host's addresses is bound as asyncio would bind it, then let go."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise ThicketsError(f"cannot listen on {host}:{port}: the host does not resolve ({e})") from None
    for family, kind, proto, _, address in found:
        try:
            s = socket.socket(family, kind, proto)
        except OSError:  # a family this machine lacks: asyncio skips it too
            continue
        with s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does: TIME_WAIT is no conflict
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(address)
            except OSError as e:
                raise ThicketsError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _uvicorn(app: FastAPI, config: ServeConfig, host: str, port: int, log_level: str) -> Any:
    """uvicorn's server, closing the batcher as soon as shutdown starts (the lifespan's shutdown comes only
    once every connection has ended): requests still waiting after `graceful_shutdown_s` get a 503, a few
    seconds before uvicorn's own limit would cut them off."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            close = app.state.batcher.close
            threading.Thread(target=close, args=(config.graceful_shutdown_s,), daemon=True).start()
            await super().shutdown(sockets)

    limit = math.ceil(config.graceful_shutdown_s) + 5
    return Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=limit))


class InThread:
    """The server in a thread of this process, on a free loopback port (notebooks, load tests, tests);
    `stop()` shuts it down as Ctrl-C would. `app`: one made by `make_app` (tests serve a scripted vote)."""

    def __init__(self, config: ServeConfig, start_timeout_s: float = 120.0, app: FastAPI | None = None):
        import time

        self.app = app or build(config)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = _uvicorn(self.app, config, "127.0.0.1", self.port, "warning")
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
    check_address(config.host, config.port)
    server = _uvicorn(build(config), config, config.host, config.port, "info")
    server.run()
    if not server.started:
        raise ThicketsError(f"the server did not start on {config.host}:{config.port} (uvicorn's log above says why)")
