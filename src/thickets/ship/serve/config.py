"""`thickets serve`'s settings: one field per flag."""

from __future__ import annotations

from dataclasses import dataclass

from thickets.errors import ThicketsError
from thickets.options import option
from thickets.randopt.vote import ADAPTIVE_RULES


@dataclass(frozen=True)
class ServeConfig:
    """An OpenAI-compatible server answering by the vote of a run's top-K experts (or one expert, or the base)."""

    run_dir: str = option(..., "the run folder whose experts answer")
    top_k: int = option(5, "experts in the vote")
    rank: int = option(0, "serve one expert alone, this rank (1 = best on validation); 0: the vote")
    base: bool = option(False, "serve the unperturbed base model alone")
    adaptive: str = option(
        "exact",
        "stop asking experts once the vote is decided: exact (never changes the answer), beta (a 95 percent "
        "Beta posterior lead; may change it) or off (ask all K)",
        choices=ADAPTIVE_RULES,
    )
    name: str = option("", "the model name clients ask for (default: RUN-topK, RUN-rankR or RUN-base)")
    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8000, "port to listen on")
    max_batch: int = option(16, "requests answered together at most")
    batch_window_ms: float = option(10.0, "how long the first request of a batch waits for others to join it")
    max_tokens_limit: int = option(512, "largest max_tokens a request may ask for")
    max_body_bytes: int = option(1 << 20, "largest request body, in bytes")
    graceful_shutdown_s: float = option(30.0, "on shutdown, seconds in-flight requests get to finish")

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.rank < 0:
            raise ThicketsError(f"top-k must be at least 1 and rank at least 0, got {self.top_k} and {self.rank}")
        if self.base and self.rank:
            raise ThicketsError("--base and --rank each name one model: give one of them")
        if not 0 < self.port < 65536:
            raise ThicketsError(f"port must be between 1 and 65535, got {self.port}")
        if self.max_batch < 1 or self.max_tokens_limit < 1 or self.max_body_bytes < 1024:
            raise ThicketsError("max-batch and max-tokens-limit must be positive, and max-body-bytes at least 1024")
        if not 0 <= self.batch_window_ms <= 10_000 or not 0 < self.graceful_shutdown_s <= 3600:
            raise ThicketsError("batch-window-ms must be in [0, 10000] and graceful-shutdown-s in (0, 3600]")

    @property
    def experts(self) -> str:
        return "base" if self.base else f"rank{self.rank}" if self.rank else f"top{self.top_k}"
