"""The server's routes and batcher over real HTTP, with a scripted vote in place of a model: a vote that
fails, a shutdown with requests waiting, and clients that hang up while their requests wait."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

httpx = pytest.importorskip("httpx")

from thickets.ship.serve.app import Served, make_app  # noqa: E402
from thickets.ship.serve.batcher import Settings  # noqa: E402
from thickets.ship.serve.config import ServeConfig  # noqa: E402
from thickets.ship.serve.server import InThread  # noqa: E402
from thickets.ship.serve.voter import Verdict  # noqa: E402


class Words:
    """A tokenizer that counts words."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> SimpleNamespace:
        return SimpleNamespace(input_ids=text.split())


class Scripted:
    """The vote: answers each prompt with "answer to ...", raises on "boom", and holds each batch until
    `go` is set; `asked` records every batch it was given."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []
        self.go = threading.Event()
        self.go.set()

    def __call__(self, prompts: list[str], s: Settings, images: list[bytes] | None = None) -> list[Verdict]:
        self.asked.append(list(prompts))
        self.go.wait(60)
        if "boom" in prompts:
            raise RuntimeError("the engine fell over")
        return [Verdict(f"answer to {p}", 1, "a", {"a": 1}, 1, 1, 1, True) for p in prompts]


@pytest.fixture
def serving() -> Iterator[Callable[..., tuple[InThread, Scripted]]]:
    started: list[tuple[InThread, Scripted]] = []

    def start(**settings: float) -> tuple[InThread, Scripted]:
        config = ServeConfig(run_dir="unused", max_batch=1, batch_window_ms=0, **settings)  # type: ignore[arg-type]
        served = Served("scripted", Words(), False, None, (), 8, 1000, {})
        vote = Scripted()
        started.append((InThread(config, app=make_app(served, config, vote)), vote))
        return started[-1]

    yield start
    for server, vote in started:
        vote.go.set()
        if server.thread.is_alive():
            server.stop()


def body(prompt: str, stream: bool = False) -> dict[str, object]:
    return {"model": "scripted", "prompt": prompt, "max_tokens": 4, "stream": stream}


def until(condition: Callable[[], bool], timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def asked_in_thread(
    url: str, route: str, payload: dict[str, object], into: dict[str, httpx.Response]
) -> threading.Thread:
    def ask() -> None:
        into[str(payload.get("prompt", "chat"))] = httpx.post(url + route, json=payload, timeout=60)

    t = threading.Thread(target=ask)
    t.start()
    return t


def assert_openai_error(reply: httpx.Response, status: int, says: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json"), reply.text
    error = reply.json()["error"]
    assert says in error["message"] and error["type"] == "server_error" and "code" in error


def test_a_failed_vote_is_a_503_in_openais_shape_streamed_or_not(serving):
    server, _ = serving()
    h = httpx.Client(base_url=server.url, timeout=60)
    chat = {"model": "scripted", "messages": [{"role": "user", "content": "boom"}], "max_tokens": 4}
    for reply in (
        h.post("/v1/completions", json=body("boom")),
        h.post("/v1/completions", json=body("boom", stream=True)),  # the status comes before any byte
        h.post("/v1/chat/completions", json={**chat, "stream": True}),
        h.post("/v1/chat/completions", json=chat),
    ):
        assert_openai_error(reply, 503, "the vote failed: RuntimeError: the engine fell over")
    # the server goes on; a stream that succeeds ends with [DONE]
    assert h.post("/v1/completions", json=body("fine")).json()["choices"][0]["text"] == "answer to fine"
    events = h.post("/v1/completions", json=body("fine", stream=True)).text.strip().split("\n\n")
    assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["thickets"]["answer"] == "a"


def test_on_shutdown_requests_still_waiting_after_the_grace_period_get_a_503(serving):
    server, vote = serving(graceful_shutdown_s=1)
    vote.go.clear()  # the first batch holds the worker past the grace period
    replies: dict[str, httpx.Response] = {}
    asking = [asked_in_thread(server.url, "/v1/completions", body("first"), replies)]
    assert until(lambda: vote.asked == [["first"]])
    asking += [
        asked_in_thread(server.url, "/v1/completions", body("queued", stream=True), replies),
        asked_in_thread(server.url, "/v1/completions", body("also queued"), replies),
    ]
    assert until(lambda: server.app.state.batcher.pending() == 2)
    stopping = threading.Thread(target=server.stop)
    stopping.start()
    for t in asking:
        t.join(30)
    vote.go.set()
    stopping.join(30)
    assert not stopping.is_alive() and len(replies) == 3
    for prompt in ("first", "queued", "also queued"):  # the batch in hand too, streamed or not
        assert_openai_error(replies[prompt], 503, "shutting down")
    assert vote.asked == [["first"]]


def test_a_request_whose_client_hung_up_while_it_waited_is_never_generated(serving):
    server, vote = serving()
    vote.go.clear()
    replies: dict[str, httpx.Response] = {}
    first = asked_in_thread(server.url, "/v1/completions", body("first"), replies)
    assert until(lambda: vote.asked == [["first"]])
    clients = []
    for prompt, stream in (("gone", False), ("gone streaming", True)):  # each sends its request, then hangs up
        data = json.dumps(body(prompt, stream)).encode()
        c = socket.create_connection(("127.0.0.1", server.port))
        c.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        clients.append(c)
    batcher = server.app.state.batcher
    assert until(lambda: batcher.pending() == 2)
    for c in clients:
        c.close()
    until(lambda: all(job.future.cancelled() for job in list(batcher.queue.queue)))
    vote.go.set()
    first.join(30)
    assert replies["first"].json()["choices"][0]["text"] == "answer to first"
    last = httpx.post(server.url + "/v1/completions", json=body("last"), timeout=60)
    assert last.json()["choices"][0]["text"] == "answer to last"
    assert vote.asked == [["first"], ["last"]]
