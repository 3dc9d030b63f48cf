"""Requests that arrive together are answered together: one worker thread owns the engine and takes
whatever the queue holds (up to max_batch, waiting a few milliseconds for more after the first),
groups it by generation settings, and answers each group with one Voter call.

The HTTP side awaits an asyncio future per request; a client that goes away cancels its future, and
the worker leaves cancelled requests out when it comes to them. Closing stops taking new work, gives
the requests held a grace period, and fails whatever is still waiting then: nothing waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from thickets.ship.serve.voter import Verdict


@dataclass(frozen=True)
class Settings:
    """What must be equal for requests to share a batch."""

    max_new_tokens: int
    stop: tuple[str, ...]
    add_special_tokens: bool
    images: bool = False  # each prompt comes with one image (a vision-language model's request)


Answer = Callable[[list[str], Settings, list[bytes] | None], list[Verdict]]


@dataclass
class Job:
    prompt: str
    settings: Settings
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Verdict] = field(repr=False)
    image: bytes | None = None

    def settle(self, value: Verdict | BaseException) -> None:
        def put() -> None:
            if self.future.done():  # cancelled: the client went away
                return
            if isinstance(value, BaseException):
                self.future.set_exception(value)
            else:
                self.future.set_result(value)

        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is waiting any more
            self.loop.call_soon_threadsafe(put)


class ShuttingDown(Exception):
    """The server is stopping and this request was not answered within the grace period."""


_STOP = object()


class Batcher:
    def __init__(self, answer: Answer, max_batch: int, window_s: float):
        self.answer, self.max_batch, self.window_s = answer, max_batch, window_s
        self.queue: queue.Queue[Any] = queue.Queue()
        self.closed = False
        self.batches = 0
        self.in_hand: list[Job] = []  # the batch the worker is answering
        self.thread = threading.Thread(target=self._run, name="thickets-voter", daemon=True)
        self.thread.start()

    def submit(self, prompt: str, settings: Settings, image: bytes | None = None) -> asyncio.Future[Verdict]:
        loop = asyncio.get_running_loop()
        job = Job(prompt, settings, loop, loop.create_future(), image)
        if self.closed:
            job.future.set_exception(ShuttingDown("the server is shutting down"))
        else:
            self.queue.put(job)
        return job.future

    def pending(self) -> int:
        return self.queue.qsize()

    def close(self, timeout_s: float) -> None:
        """Stop taking work; the jobs held get up to timeout_s to be answered, and those still waiting then
        (the batch in hand too) fail with ShuttingDown. Closing again does nothing."""
        if self.closed:
            return
        self.closed = True
        self.queue.put(_STOP)
        self.thread.join(timeout_s)
        waiting = list(self.in_hand)
        while True:
            try:
                waiting.append(self.queue.get_nowait())
            except queue.Empty:
                break
        for job in waiting:
            if isinstance(job, Job):
                job.settle(ShuttingDown("the server is shutting down"))
        self.queue.put(_STOP)  # a worker still busy ends after its batch

    def _take(self) -> tuple[list[Job], bool]:
        first = self.queue.get()
        if first is _STOP:
            return [], True
        batch, deadline = [first], time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._take()
            self.in_hand = batch
            groups: dict[Settings, list[Job]] = {}
            for j in batch:
                groups.setdefault(j.settings, []).append(j)
            for settings, group in groups.items():
                jobs = [j for j in group if not j.future.cancelled()]  # their clients are gone
                if not jobs:
                    continue
                try:
                    images = [j.image or b"" for j in jobs] if settings.images else None
                    verdicts = self.answer([j.prompt for j in jobs], settings, images)
                except Exception as e:  # one bad batch fails its requests, never the worker
                    for j in jobs:
                        j.settle(e)
                    continue
                self.batches += 1
                for j, v in zip(jobs, verdicts):
                    j.settle(v)
            self.in_hand = []
