"""`thickets serve`'s settings: one field per flag."""

from __future__ import annotations

from dataclasses import dataclass

from thickets.errors import ThicketsError
from thickets.options import check_bounds, option
from thickets.randopt.vote import ADAPTIVE_RULES


@dataclass(frozen=True)
class ServeConfig:
    """An OpenAI-compatible server answering by the vote of a run's top-K experts (or one expert, or the base)."""

    run_dir: str = option(..., "the run folder whose experts answer")
    top_k: int = option(5, "experts in the vote", bounds=(1, 10_000))
    rank: int = option(0, "serve one expert alone, this rank (1 = best on validation); 0: the vote", bounds=(0, 10**9))
    base: bool = option(False, "serve the unperturbed base model alone")
    adaptive: str = option(
        "exact",
        "stop asking experts once the vote is decided: exact (never changes the answer), beta (a 95 percent "
        "Beta posterior lead; may change it) or off (ask all K)",
        choices=ADAPTIVE_RULES,
    )
    name: str = option("", "the model name clients ask for (default: RUN-topK, RUN-rankR or RUN-base)")
    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8000, "port to listen on", bounds=(1, 65535))
    max_batch: int = option(16, "requests answered together at most", bounds=(1, 4096))
    batch_window_ms: float = option(
        10.0, "how long the first request of a batch waits for others to join it", bounds=(0, 10_000)
    )
    max_tokens_limit: int = option(512, "largest max_tokens a request may ask for", bounds=(1, 1 << 20))
    max_body_bytes: int = option(1 << 20, "largest request body, in bytes", bounds=(1024, 1 << 30))
    graceful_shutdown_s: float = option(30.0, "on shutdown, seconds in-flight requests get to finish", bounds=(0, 3600))

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.base and self.rank:
            raise ThicketsError("--base and --rank each name one model: give one of them")
        if not self.graceful_shutdown_s > 0:
            raise ThicketsError(f"--graceful-shutdown-s must be above 0, got {self.graceful_shutdown_s}")

    @property
    def experts(self) -> str:
        return "base" if self.base else f"rank{self.rank}" if self.rank else f"top{self.top_k}"
