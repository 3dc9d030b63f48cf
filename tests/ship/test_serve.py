"""`thickets serve` on loopback with the official openai client: the vote, streaming, batching, bad
requests, a client that leaves mid-stream, and shutdown with requests in flight."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from thickets.engines import load_engine  # noqa: E402
from thickets.randopt.config import SearchConfig  # noqa: E402
from thickets.randopt.preflight import load_run_config  # noqa: E402
from thickets.randopt.search import search  # noqa: E402
from thickets.ship.serve.config import ServeConfig  # noqa: E402
from thickets.ship.serve.server import InThread, build, experts_of  # noqa: E402
from thickets.tasks import get_task  # noqa: E402

PROMPT = "Write something about item 0-3."


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory) -> Path:
    config = SearchConfig(
        model=str(tiny_model_dir), task="toy", population=6, sigmas=(0.002,), val_size=4, max_new_tokens=6
    )
    run_dir = tmp_path_factory.mktemp("serve") / "run"
    search(config, run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def server(run) -> Iterator[InThread]:
    r = InThread(ServeConfig(run_dir=str(run), top_k=5, max_tokens_limit=16, max_body_bytes=4096))
    yield r
    r.stop()


def client(server: InThread):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def alone(run: Path, prompt: str, max_tokens: int, stop: tuple[str, ...] | None = None) -> list[str]:
    """What each of the top-5 experts writes by itself for the rendered prompt."""
    cfg = load_run_config(run)
    engine, _ = load_engine(cfg.model, batch_size=cfg.batch_size)
    specs, _ = experts_of(ServeConfig(run_dir=str(run), top_k=5))
    out = []
    for spec in specs:
        engine.perturb(spec)
        try:
            out.append(engine.generate([prompt], max_tokens, get_task("toy").stop if stop is None else stop)[0])
        finally:
            engine.restore()
    return out


def test_chat_and_completion_requests_are_answered_by_the_vote(server, run):
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["run-top5"]
    reply = c.chat.completions.create(model="run-top5", messages=[{"role": "user", "content": PROMPT}], max_tokens=6)
    vote = reply.model_extra["thickets"]
    assert vote["k"] == 5 and 1 <= vote["experts_asked"] <= 5 and vote["extracted"]
    # the vote by hand: each expert alone on the prompt as the server renders it (the toy's key: first letter)
    tok = server.app.state.served.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    texts = alone(run, prompt, 6)
    keys = [t.strip()[:1].lower() or None for t in texts]
    asked = keys[: vote["experts_asked"]]
    assert vote["votes"] == {k: asked.count(k) for k in dict.fromkeys(asked) if k}
    assert reply.choices[0].message.content == texts[vote["returned_expert"] - 1]
    assert vote["answer"] == keys[vote["returned_expert"] - 1]
    # the full vote of all five agrees with the adaptive one (the exact rule)
    full = {k: keys.count(k) for k in keys if k}
    assert max(full, key=lambda k: (full[k], -keys.index(k))) == vote["answer"]

    done = c.completions.create(model="run-top5", prompt="Item 4.", max_tokens=5)
    assert done.model_extra["thickets"]["k"] == 5 and 0 < done.usage.completion_tokens <= 5
    assert done.choices[0].finish_reason in ("stop", "length")


def test_completions_take_token_ids_and_several_prompts_as_openais_api_does(server):
    """lm-eval's local-completions sends token ids (and several prompts at once) and asks the server's
    tokenizer routes: each prompt gets its own choice, the one a text prompt of the same tokens gets."""
    c = client(server)
    h = httpx.Client(base_url=server.url, timeout=60)
    texts = ["Item 4.", "Write something about item 2-9.", "Item 7."]
    alone = [c.completions.create(model="run-top5", prompt=t, max_tokens=5) for t in texts]
    ids = [h.post("/tokenize", json={"prompt": t}).json()["tokens"] for t in texts]
    tok = server.app.state.served.tokenizer
    assert ids == [tok(t).input_ids for t in texts]  # with the special tokens a text prompt gets
    for prompt in (texts, ids):
        together = c.completions.create(model="run-top5", prompt=prompt, max_tokens=5)
        assert [ch.index for ch in together.choices] == [0, 1, 2]
        assert [ch.text for ch in together.choices] == [a.choices[0].text for a in alone]
        assert together.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
        assert len(together.model_extra["thickets"]) == 3
    one = c.completions.create(model="run-top5", prompt=ids[1], max_tokens=5)
    assert one.choices[0].text == alone[1].choices[0].text and one.model_extra["thickets"]["k"] == 5
    streamed = list(c.completions.create(model="run-top5", prompt=ids, max_tokens=5, stream=True))
    for i, a in enumerate(alone):
        assert "".join(p.choices[0].text for p in streamed if p.choices[0].index == i) == a.choices[0].text
    # what lm-eval's remote tokenizer asks, answered here: nothing is downloaded
    info = h.get("/tokenizer_info").json()
    assert info["eos_token"] == tok.eos_token and info["model_max_length"] > 0
    assert h.post("/detokenize", json={"tokens": ids[0]}).json()["prompt"] == tok.decode(ids[0])
    assert h.post("/tokenize", json={"prompt": "Item", "model": "gpt-4"}).status_code == 404
    # chat messages, as lm-eval sends them with --apply_chat_template: rendered as the chat route renders them
    chat = [{"role": "user", "content": texts[0]}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    for body in ({"prompt": chat}, {"messages": chat}):
        assert h.post("/tokenize", json=body).json()["tokens"] == tok(rendered, add_special_tokens=False).input_ids
    by_ids = c.completions.create(
        model="run-top5", prompt=tok(rendered, add_special_tokens=False).input_ids, max_tokens=5
    )
    by_chat = c.chat.completions.create(model="run-top5", messages=chat, max_tokens=5)
    assert by_ids.choices[0].text == by_chat.choices[0].message.content


def test_streaming_sends_the_chosen_completion_then_the_vote(server):
    c = client(server)
    kw = dict(model="run-top5", messages=[{"role": "user", "content": "Write something about item 2-9."}], max_tokens=6)
    whole = c.chat.completions.create(**kw)
    chunks = list(c.chat.completions.create(**kw, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].model_extra["thickets"]["votes"] == whole.model_extra["thickets"]["votes"]
    pieces = list(c.completions.create(model="run-top5", prompt="Item 4.", max_tokens=5, stream=True))
    plain = c.completions.create(model="run-top5", prompt="Item 4.", max_tokens=5)
    assert "".join(p.choices[0].text for p in pieces) == plain.choices[0].text


def test_requests_that_arrive_together_share_batches_and_none_is_lost(server):
    async def many() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as h:
            replies = await asyncio.gather(
                *(
                    h.post("/v1/completions", json={"model": "run-top5", "prompt": f"Item {i % 3}.", "max_tokens": 4})
                    for i in range(24)
                )
            )
            return [(r.status_code, r.json()["choices"][0]["text"]) for r in replies]

    before = server.app.state.batcher.batches
    got = asyncio.run(many())
    assert [s for s, _ in got] == [200] * 24
    assert server.app.state.batcher.batches - before < 24  # answered together, not one by one
    for i in range(3):  # a prompt's answer does not depend on what it was batched with
        assert len({t for j, (_, t) in enumerate(got) if j % 3 == i}) == 1


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server):
    h = httpx.Client(base_url=server.url, timeout=60)
    chat = "/v1/chat/completions"
    ok = {"model": "run-top5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        (h.post(chat, content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (h.post(chat, json={**ok, "model": "gpt-4"}), 404, "model 'gpt-4' is not served here"),
        (h.post(chat, json={**ok, "messages": []}), 400, "messages"),
        (h.post(chat, json={**ok, "messages": [{"role": "user", "content": "  "}]}), 400, "every message is empty"),
        (h.post(chat, json={**ok, "max_tokens": 17}), 400, "max_tokens 17 is over this server's limit of 16"),
        (h.post(chat, json={**ok, "max_tokens": 0}), 400, "max_tokens"),
        (h.post(chat, json={**ok, "n": 3}), 400, "n:"),
        (h.post(chat, json={**ok, "messages": [{"role": "wizard", "content": "hi"}]}), 400, "role"),
        (h.post(chat, json=[1, 2]), 400, "must be a JSON object"),
        (h.post(chat, json={**ok, "messages": [{"role": "user", "content": "x" * 5000}]}), 413, "over the limit"),
        (h.post("/v1/completions", json={"model": "run-top5", "prompt": []}), 400, "no prompt given"),
        (h.post("/v1/completions", json={"model": "run-top5", "prompt": ["a"] * 129}), 400, "at most 128 prompts"),
        (h.post("/v1/completions", json={"model": "run-top5", "prompt": [10**9]}), 400, "token ids must be in"),
        (h.post("/v1/completions", json={"model": "run-top5", "prompt": [[1], []]}), 400, "prompt.1: token ids must"),
        (h.post("/detokenize", json={"tokens": [1, -1]}), 400, "tokens: token ids must be in [0, "),
        (h.post("/v1/completions", json={"model": "run-top5", "prompt": ["a", " "]}), 400, "prompt.1: the prompt"),
    ]
    for reply, status, message in cases:
        assert reply.status_code == status, reply.text
        assert message in reply.json()["error"]["message"]
    # a body over the limit without a Content-Length (chunked) is refused as it arrives
    chunked = h.post(chat, content=iter([b'{"model": "run-top5", "messages": [', b" " * 5000, b"]}"]))
    assert chunked.status_code == 413
    assert h.post(chat, json=ok).status_code == 200
    assert h.get("/health").json()["status"] == "ok"


def test_a_client_that_leaves_mid_stream_does_not_stop_the_others(server):
    body = {"model": "run-top5", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6, "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as h, h.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the first event, then the client hangs up
    ok = client(server).chat.completions.create(
        model="run-top5", messages=[{"role": "user", "content": PROMPT}], max_tokens=6
    )
    assert ok.choices[0].message.content


def test_shutdown_finishes_the_requests_in_flight_and_refuses_none_silently(run):
    r = InThread(ServeConfig(run_dir=str(run), top_k=5, graceful_shutdown_s=60, batch_window_ms=50))
    results: list[object] = []

    def ask(i: int) -> None:
        try:
            with httpx.Client(base_url=r.url, timeout=60) as h:
                reply = h.post("/v1/completions", json={"model": "run-top5", "prompt": f"Item {i}.", "max_tokens": 6})
                results.append(reply.status_code)
        except httpx.HTTPError as e:  # refused once the server stopped listening: an error, never a hang
            results.append(type(e).__name__)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # the requests are in flight
    r.stop()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == 8 and all(x in (200, 503) or isinstance(x, str) for x in results)
    assert results.count(200) >= 1


def test_bad_flags_are_refused_before_the_model_loads(run, tmp_path):
    from thickets.errors import ThicketsError

    with pytest.raises(ThicketsError, match="top-k 9 is more than the 6 candidates fully scored"):
        build(ServeConfig(run_dir=str(run), top_k=9))
    with pytest.raises(ThicketsError, match="rank 7 is more than the 6 candidates"):
        build(ServeConfig(run_dir=str(run), rank=7))
    with pytest.raises(ThicketsError, match="no thickets run in"):
        build(ServeConfig(run_dir=str(tmp_path / "nothing")))
    with pytest.raises(ThicketsError, match="--base and --rank each name one model"):
        ServeConfig(run_dir=str(run), base=True, rank=2)


def test_serve_on_a_port_in_use_or_a_host_that_does_not_resolve_is_refused_in_one_line_before_the_model_loads(
    run, monkeypatch, capsys
):
    import socket

    import thickets.ship.serve.server as serving
    from thickets.cli.commands import main

    def no_model(*_: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(serving, "engine_for", no_model)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--run-dir", str(run), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"thickets: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert main(["serve", "--run-dir", str(run), "--host", "no-such-host.invalid"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("thickets: error: cannot listen on no-such-host.invalid:8000: the host does not resolve")
    assert err.count("\n") == 1


def test_one_expert_or_the_base_alone_answer_as_they_would_by_themselves(run):
    for config, name in (
        (ServeConfig(run_dir=str(run), rank=2), "run-rank2"),
        (ServeConfig(run_dir=str(run), base=True), "run-base"),
    ):
        r = InThread(config)
        try:
            reply = client(r).chat.completions.create(
                model=name, messages=[{"role": "user", "content": PROMPT}], max_tokens=6
            )
        finally:
            r.stop()
        vote = reply.model_extra["thickets"]
        assert vote["k"] == 1 and vote["experts_asked"] == 1
        tok = r.app.state.served.tokenizer
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
        )
        if config.base:
            cfg = load_run_config(run)
            engine, _ = load_engine(cfg.model, batch_size=cfg.batch_size)
            assert reply.choices[0].message.content == engine.generate([prompt], 6, get_task("toy").stop)[0]
        else:
            assert reply.choices[0].message.content == alone(run, prompt, 6)[1]


def test_the_voter_gives_the_same_verdicts_with_or_without_working_copies_adaptive_or_batched_low_rank(
    run, tiny_model_dir, tmp_path
):
    from thickets.engines import render_prompt
    from thickets.ship.serve.voter import Voter

    task = get_task("toy")
    cfg = load_run_config(run)
    engine, _ = load_engine(cfg.model, batch_size=cfg.batch_size)
    prompts = [render_prompt(engine.tokenizer, f"Item {i}.", task.system_prompt) for i in range(6)]
    specs, _ = experts_of(ServeConfig(run_dir=str(run), top_k=5))

    def seen(verdicts):
        return [(v.text, v.answer, v.expert, v.votes) for v in verdicts]

    full = Voter(engine, specs, task, adaptive="off", keep_copies=False).answer(prompts, 6, task.stop)
    held = Voter(engine, specs, task, adaptive="exact", keep_copies=True)
    first, again = held.answer(prompts, 6, task.stop), held.answer(prompts, 6, task.stop)
    assert len(held._held) == 5 and seen(first) == seen(again)  # the second batch swapped the kept copies in
    assert [v.asked for v in full] == [5] * 6 and all(v.asked <= 5 for v in first)
    # the exact rule stops early but never changes the answer or the text returned
    assert [(v.text, v.answer) for v in first] == [(v.text, v.answer) for v in full]

    low = SearchConfig(
        model=str(tiny_model_dir),
        task="toy",
        population=4,
        sigmas=(0.01,),
        val_size=4,
        max_new_tokens=6,
        strategy="lowrank",
        rank=2,
    )
    search(low, tmp_path / "low", progress=False)
    low_specs, _ = experts_of(ServeConfig(run_dir=str(tmp_path / "low"), top_k=4))
    batched = Voter(engine, low_specs, task)
    assert batched.lowrank
    one_by_one = Voter(engine, low_specs, task, keep_copies=False)
    one_by_one.lowrank = False
    assert seen(batched.answer(prompts, 6, task.stop)) == seen(one_by_one.answer(prompts, 6, task.stop))


def test_thickets_serve_on_the_command_line_answers_the_example_client_and_stops_cleanly_on_sigterm(run):
    """The real command in its own process: examples/openai_client.py against it, then SIGTERM while
    requests are in flight: they finish (or fail cleanly), and the process exits on its own."""
    import signal
    import socket
    import subprocess
    import sys

    from tests.support import CLI, REPO, cli_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [*CLI, "serve", "--run-dir", str(run), "--top-k", "3", "--port", str(port), "--name", "toy-vote"],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        example = subprocess.run(
            [sys.executable, str(REPO / "examples" / "openai_client.py"), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert example.returncode == 0, example.stderr[-2000:]
        assert "model: toy-vote" in example.stdout and example.stdout.count("votes") == 3

        results: list[object] = []

        def ask(i: int) -> None:
            try:
                body = {"model": "toy-vote", "prompt": f"Item {i}.", "max_tokens": 6}
                results.append(httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60).status_code)
            except httpx.HTTPError as e:
                results.append(type(e).__name__)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then lets the signal end the process as it would have
        assert proc.wait(timeout=120) in (0, -signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert len(results) == 6 and all(x in (200, 503) or isinstance(x, str) for x in results)
        assert b"Finished server process" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_prompt_whose_answers_cannot_be_read_gets_the_best_experts_text_marked_so(run):
    from thickets.engines import render_prompt
    from thickets.ship.serve.voter import Voter

    cfg = load_run_config(run)
    engine, _ = load_engine(cfg.model, batch_size=cfg.batch_size)
    specs, _ = experts_of(ServeConfig(run_dir=str(run), top_k=3))
    prompt = render_prompt(engine.tokenizer, PROMPT, None)
    from tests.support import KeylessTask

    (v,) = Voter(engine, specs, KeylessTask()).answer([prompt], 6)  # its extract() reads nothing
    assert not v.extracted and v.answer is None and v.votes == {} and v.expert == 1
    # undecided to the end, so every expert was asked; the text is the best expert's (without the toy's stops)
    assert v.asked == 3 and v.text == alone(run, prompt, 6, stop=())[0]
