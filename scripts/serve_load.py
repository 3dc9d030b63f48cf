"""Load test of `thickets serve` on loopback, bounded in count and time, side by side in one run:
the server as configured, the same without batching (max batch 1), and the same asking all K experts
(adaptive off). Each phase starts its own server in this process and sends the same requests from
several concurrent clients; it reports requests/s, p50/p99 latency, lost requests and server errors.

    .venv/bin/python scripts/serve_load.py --run-dir runs/demo --top-k 5 --clients 8 --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import replace

import httpx

from thickets.randopt.preflight import load_run_config
from thickets.randopt.scoring import task_for
from thickets.ship.serve.config import ServeConfig
from thickets.ship.serve.server import InThread
from thickets.tasks.splits import make_splits


async def drive(url: str, name: str, prompts: list[str], clients: int, limit_s: float, max_tokens: int) -> dict:
    latencies: list[float] = []
    statuses: list[int] = []
    lost = 0
    asked: list[int] = []
    work = iter(enumerate(prompts))
    deadline = time.monotonic() + limit_s

    async def client() -> None:
        nonlocal lost
        async with httpx.AsyncClient(base_url=url, timeout=limit_s) as h:
            for _, prompt in work:
                if time.monotonic() > deadline:
                    return
                body = {"model": name, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
                t0 = time.perf_counter()
                try:
                    r = await h.post("/v1/chat/completions", json=body)
                except httpx.HTTPError:
                    lost += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    asked.append(r.json()["thickets"]["experts_asked"])

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [latencies[0]] * 99
    return {
        "requests": len(statuses) + lost,
        "ok": statuses.count(200),
        "server_errors": sum(s >= 500 for s in statuses),
        "client_errors": sum(400 <= s < 500 for s in statuses),
        "lost": lost,
        "seconds": wall,
        "requests_per_s": len(statuses) / wall,
        "p50_s": q[49],
        "p99_s": q[98],
        "experts_asked": sum(asked) / max(1, len(asked)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds per phase at most")
    p.add_argument("--max-tokens", type=int, default=0, help="0: the run's max new tokens")
    p.add_argument("--json", default="")
    a = p.parse_args()
    run = load_run_config(a.run_dir)
    task = task_for(run)
    _, test = make_splits(task, run.split_seed, run.val_size, a.requests)
    prompts = [ex.prompt for ex in test]
    max_tokens = a.max_tokens or run.max_new_tokens
    base = ServeConfig(run_dir=a.run_dir, top_k=a.top_k, max_tokens_limit=max(512, max_tokens))
    phases = {
        "batched, adaptive exact": base,
        "one request at a time": replace(base, max_batch=1),
        "batched, all K asked": replace(base, adaptive="off"),
    }
    results = {}
    for label, config in phases.items():
        running = InThread(config)
        try:
            results[label] = asyncio.run(drive(running.url, running.name, prompts, a.clients, a.time_limit, max_tokens))
        finally:
            running.stop()
        r = results[label]
        print(
            f"{label:26s} {r['ok']}/{r['requests']} ok, {r['server_errors']} server errors, {r['lost']} lost; "
            f"{r['requests_per_s']:.2f} requests/s, p50 {r['p50_s']:.2f} s, p99 {r['p99_s']:.2f} s, "
            f"{r['experts_asked']:.2f} experts asked"
        )
    first, one, all_k = (results[k] for k in phases)
    print(f"batching: {first['requests_per_s'] / one['requests_per_s']:.2f}x requests/s over one at a time")
    print(f"adaptive: {first['requests_per_s'] / all_k['requests_per_s']:.2f}x requests/s over asking all K")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": vars(a), "phases": results}, f, indent=2)


if __name__ == "__main__":
    main()
