"""The HTTP side of `thickets serve`: OpenAI's chat and completion routes, the model list and a health
check, on FastAPI.

Bodies are read and checked here (size, JSON, fields) so every bad request gets a 4xx in OpenAI's
error shape with one clear message; the vote itself runs on the batcher's worker thread. Answers
are greedy (a vote of sampled answers would be another method), so sampling fields are accepted and
ignored, as the response's `thickets` field says. A streamed answer starts once the vote is decided:
the chosen completion, in pieces, then a last chunk with the vote; so a vote that fails, or a server
that stops first, is answered with a 503 in OpenAI's error shape, streamed or not, never an empty 200.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from thickets.engines import count_tokens
from thickets.ship.serve.batcher import Answer, Batcher, Settings, ShuttingDown
from thickets.ship.serve.config import ServeConfig
from thickets.ship.serve.voter import Verdict
from thickets.tasks.files.vqa import unreadable


@dataclass(frozen=True)
class Served:
    """What the routes need to know of the model behind them."""

    name: str
    tokenizer: Any
    chat_template: bool  # render chat requests with the tokenizer's template (as the search rendered prompts)
    system_prompt: str | None  # the task's, added to a chat request that has none
    task_stop: tuple[str, ...]
    default_max_tokens: int
    context: int
    describe: dict[str, Any]
    vision: bool = False  # a vision-language model: chat messages may carry one image (image_url parts)


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str = ""
    image_url: dict[str, Any] | str | None = None

    def url(self) -> str:
        return self.image_url.get("url", "") if isinstance(self.image_url, dict) else self.image_url or ""


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_Part] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content if p.type == "text")
        return self.content or ""


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, top_p, seed...: accepted, answers stay greedy
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)

    def stops(self) -> tuple[str, ...]:
        given = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in given if s)


B = TypeVar("B", bound=BaseModel)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


#: prompts one completion request may hold (OpenAI's limit for a list of prompts)
MAX_PROMPTS = 128


class CompletionRequest(_Common):
    # a string, a list of strings, token ids, or a list of lists of token ids, as OpenAI's API takes
    prompt: str | list[str] | list[int] | list[list[int]]


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize, which lm-eval's remote tokenizer calls (the model field is optional): a text prompt,
    or chat messages (as `messages`, or as the prompt itself, as lm-eval sends them with a chat template),
    rendered as the chat route renders them."""

    model: str | None = None
    prompt: str | list[Message] | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool | None = None  # default: True for text, False for chat (the template has them)


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: list[int]


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def image_bytes(url: str, where: str) -> bytes:
    """The bytes of an image sent as a base64 data URL; the server fetches nothing, so any other URL is refused."""
    if not url.startswith("data:"):
        raise BadRequest(400, f"{where}: send the image as a base64 data URL; this server fetches nothing", where)
    head, _, body = url.partition(",")
    if ";base64" not in head:
        raise BadRequest(400, f"{where}: the data URL must be base64-encoded", where)
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, f"{where}: the data URL is not valid base64", where) from None
    if unreadable(data) is not None:
        raise BadRequest(400, f"{where}: the image is not one PIL can read", where)
    return data


def make_app(served: Served, config: ServeConfig, answer: Answer) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = Batcher(answer, config.max_batch, config.batch_window_ms / 1000)
        yield
        app.state.batcher.close(config.graceful_shutdown_s)

    app = FastAPI(title="thickets", lifespan=lifespan)
    app.state.served = served

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, e: BadRequest) -> JSONResponse:
        return error(e.status, e.message, e.param, e.code)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Any]) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
            return error(413, f"request body over the limit of {config.max_body_bytes} bytes")
        response: Response = await call_next(request)
        return response

    async def read(request: Request, model: type[B]) -> B:
        body = b""
        async for chunk in request.stream():  # a body without a length is counted as it arrives
            body += chunk
            if len(body) > config.max_body_bytes:
                raise BadRequest(413, f"request body over the limit of {config.max_body_bytes} bytes")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(400, f"the body is not valid JSON ({e.__class__.__name__}: {e})") from None
        if not isinstance(data, dict):
            raise BadRequest(400, "the body must be a JSON object")
        try:
            req = model.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BadRequest(400, f"{where}: {first['msg']}", param=where) from None
        asked_for = getattr(req, "model", None)  # required of completions; the tokenizer routes may leave it out
        if asked_for is not None and asked_for != served.name:
            raise BadRequest(
                404,
                f"model {asked_for!r} is not served here; this server has {served.name!r}",
                param="model",
                code="model_not_found",
            )
        return req

    def settings(prompt: str, asked: int | None, stops: tuple[str, ...], special: bool) -> tuple[Settings, int]:
        max_tokens = asked or served.default_max_tokens
        if max_tokens > config.max_tokens_limit:
            raise BadRequest(
                400, f"max_tokens {max_tokens} is over this server's limit of {config.max_tokens_limit}", "max_tokens"
            )
        if len(stops) > 4:
            raise BadRequest(400, f"at most 4 stop strings, got {len(stops)}", "stop")
        prompt_tokens = len(served.tokenizer(prompt, add_special_tokens=special).input_ids)
        if prompt_tokens + max_tokens > served.context:
            raise BadRequest(
                400,
                f"the prompt ({prompt_tokens} tokens) plus max_tokens {max_tokens} exceeds the model's context "
                f"of {served.context} tokens",
                "messages",
            )
        return Settings(max_tokens, tuple(dict.fromkeys(served.task_stop + stops)), special), prompt_tokens

    async def vote(request: Request, prompt: str, s: Settings, image: bytes | None = None) -> Verdict:
        """The verdict, or a 503. A client that hangs up while its request waits cancels it, and the worker
        leaves cancelled requests out: a request nobody waits for is never generated."""
        batcher: Batcher = app.state.batcher
        future = batcher.submit(prompt, s, image)
        gone: asyncio.Future[Any] = asyncio.ensure_future(_hung_up(request))
        try:
            await asyncio.wait([future, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            unanswered = future.cancel()  # the client left, or this handler was cancelled
        if unanswered:
            raise BadRequest(499, "the client closed the connection")  # read by no one
        try:
            return future.result()
        except ShuttingDown as e:
            raise BadRequest(503, str(e), code="shutting_down") from None
        except Exception as e:  # the worker's error: this request's, the server goes on
            message = " ".join(f"the vote failed: {type(e).__name__}: {e}".split())
            raise BadRequest(503, message, code="vote_failed") from None

    def finish(v: Verdict, s: Settings, user_stops: tuple[str, ...]) -> tuple[str, str, int]:
        """(text without a user's stop string, finish reason, completion tokens)."""
        text, tokens = v.text, count_tokens(served.tokenizer, [v.text])
        for stop in user_stops:
            if text.endswith(stop):
                return text[: -len(stop)], "stop", tokens
        ended = tokens < s.max_new_tokens or any(text.endswith(t) for t in served.task_stop)
        return text, "stop" if ended else "length", tokens

    def fields(v: Verdict) -> dict[str, Any]:
        return {**v.to_dict(), "decoding": "greedy (sampling fields are ignored)", "model": served.describe}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served.name, "queued": app.state.batcher.pending()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": served.name, "object": "model", "created": 0, "owned_by": "thickets"}],
        }

    def render_chat(given: list[Message]) -> tuple[str, bytes | None]:
        """The text a chat request is answered from, and its image: the task's system prompt where it has
        none, through the tokenizer's chat template as the search rendered prompts (or joined, for a run
        without one), an image part where the message puts it."""
        messages: list[dict[str, Any]] = []
        images: list[bytes] = []
        for i, m in enumerate(given):
            role = m.role if m.role != "developer" else "system"
            if not isinstance(m.content, list) or all(p.type == "text" for p in m.content):
                messages.append({"role": role, "content": m.text()})
                continue
            parts: list[dict[str, Any]] = []
            for j, p in enumerate(m.content):
                if p.type == "text":
                    parts.append({"type": "text", "text": p.text})
                elif p.type == "image_url":
                    images.append(image_bytes(p.url(), f"messages.{i}.content.{j}.image_url"))
                    parts.append({"type": "image"})
                else:
                    raise BadRequest(400, f"messages.{i}.content.{j}: a {p.type!r} part is not taken", "messages")
            messages.append({"role": role, "content": parts})
        if images and not served.vision:
            raise BadRequest(400, "messages: this model reads text only; send no image", "messages")
        if len(images) > 1:
            raise BadRequest(400, f"messages: one image a request, got {len(images)}", "messages")
        if not images and not any(str(m["content"]).strip() for m in messages):
            raise BadRequest(400, "messages: every message is empty", "messages")
        if served.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": served.system_prompt})
        if served.chat_template:
            text: str = served.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text, images[0] if images else None
        return "\n\n".join(str(m["content"]) for m in messages), None

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Response | dict[str, Any]:
        req: ChatRequest = await read(request, ChatRequest)
        prompt, image = render_chat(req.messages)
        s, prompt_tokens = settings(
            prompt, req.max_completion_tokens or req.max_tokens, req.stops(), not served.chat_template
        )
        s = replace(s, images=image is not None)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "created": created, "model": served.name}
        v = await vote(request, prompt, s, image)
        text, reason, tokens = finish(v, s, req.stops())
        if req.stream:
            chunk = {**head, "object": "chat.completion.chunk"}
            return _stream(
                [
                    {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
                    *(
                        {**chunk, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                        for piece in _pieces(text)
                    ),
                    {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}], "thickets": fields(v)},
                ]
            )
        return {
            **head,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            },
            "thickets": fields(v),
        }

    def check_ids(ids: Sequence[int], where: str) -> None:
        vocab = len(served.tokenizer)
        if any(not 0 <= t < vocab for t in ids):
            raise BadRequest(400, f"{where}: token ids must be in [0, {vocab})", where)

    def texts_of(prompt: str | list[str] | list[int] | list[list[int]]) -> list[tuple[str, bool]]:
        """(text, add special tokens) of each prompt: text gets the tokenizer's special tokens, as a raw
        prompt does in a search; token ids are the model's input as given, so they are decoded to the text
        that tokenizes back to them (and refused where no text does)."""
        if isinstance(prompt, str):
            prompts: list[Any] = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [prompt]
        else:
            prompts = list(prompt)
        if not prompts:
            raise BadRequest(400, "prompt: no prompt given", "prompt")
        if len(prompts) > MAX_PROMPTS:
            raise BadRequest(400, f"prompt: at most {MAX_PROMPTS} prompts per request, got {len(prompts)}", "prompt")
        out = []
        for i, p in enumerate(prompts):
            where = "prompt" if len(prompts) == 1 else f"prompt.{i}"
            if isinstance(p, str):
                if not p.strip():
                    raise BadRequest(400, f"{where}: the prompt is empty", where)
                out.append((p, True))
                continue
            if not p:
                raise BadRequest(400, f"{where}: token ids must be a non-empty list", where)
            check_ids(p, where)
            text = served.tokenizer.decode(p, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if served.tokenizer(text, add_special_tokens=False).input_ids != list(p):
                raise BadRequest(
                    400, f"{where}: these token ids are not what any text tokenizes to; send the text instead", where
                )
            out.append((text, False))
        return out

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response | dict[str, Any]:
        req: CompletionRequest = await read(request, CompletionRequest)
        prompts = texts_of(req.prompt)
        asked = [settings(text, req.max_tokens, req.stops(), special) for text, special in prompts]
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": served.name}
        verdicts = await asyncio.gather(*(vote(request, text, s) for (text, _), (s, _) in zip(prompts, asked)))
        done = [finish(v, s, req.stops()) for v, (s, _) in zip(verdicts, asked)]
        # one prompt: the vote as `thickets`, as ever; several: a list, one per choice
        votes: Any = fields(verdicts[0]) if len(verdicts) == 1 else [fields(v) for v in verdicts]
        if req.stream:
            chunks = [
                {**head, "choices": [{"index": i, "text": piece, "finish_reason": None, "logprobs": None}]}
                for i, (text, _, _) in enumerate(done)
                for piece in _pieces(text)
            ]
            chunks += [
                {**head, "choices": [{"index": i, "text": "", "finish_reason": reason, "logprobs": None}]}
                for i, (_, reason, _) in enumerate(done)
            ]
            chunks[-1]["thickets"] = votes
            return _stream(chunks)
        prompt_tokens = sum(n for _, n in asked)
        tokens = sum(t for _, _, t in done)
        return {
            **head,
            "choices": [
                {"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                for i, (text, reason, _) in enumerate(done)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            },
            "thickets": votes,
        }

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        """What lm-eval's remote tokenizer asks first (as vLLM answers it), so a harness downloads nothing."""
        tok = served.tokenizer
        return {
            "tokenizer_class": type(tok).__name__,
            "eos_token": tok.eos_token,
            "bos_token": tok.bos_token,
            "pad_token": tok.pad_token,
            "unk_token": getattr(tok, "unk_token", None),
            "chat_template": getattr(tok, "chat_template", None) if served.chat_template else None,
            "model_max_length": served.context,
            "vocab_size": len(tok),
        }

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        req: TokenizeRequest = await read(request, TokenizeRequest)
        chat = req.messages if req.messages is not None else req.prompt if isinstance(req.prompt, list) else None
        if chat is not None:
            text, special = render_chat(chat)[0], bool(req.add_special_tokens)
        elif isinstance(req.prompt, str):
            text, special = req.prompt, req.add_special_tokens is not False
        else:
            raise BadRequest(400, "give a prompt or messages to tokenize", "prompt")
        ids = served.tokenizer(text, add_special_tokens=special).input_ids
        return {"tokens": list(ids), "count": len(ids), "max_model_len": served.context}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        req: DetokenizeRequest = await read(request, DetokenizeRequest)
        check_ids(req.tokens, "tokens")
        return {"prompt": served.tokenizer.decode(req.tokens, skip_special_tokens=False)}

    return app


_PIECE = re.compile(r"\s*\S+|\s+")


def _pieces(text: str) -> list[str]:
    """The streamed completion, a word (with the space before it) at a time."""
    return _PIECE.findall(text) or [""]


async def _hung_up(request: Request) -> None:
    """Returns once the client has gone: after the body, its hang-up is the only message left to receive.
    (Not `request.is_disconnected()`: under an `http` middleware its cancelled read loses the message.)"""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _stream(chunks: list[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events: each chunk, then [DONE]. Made after the vote, so nothing can fail mid-stream."""

    async def events() -> AsyncIterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
