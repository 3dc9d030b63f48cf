"""Run configuration as dataclasses (as TRL does), validated before anything touches the store."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields, replace

from thickets.errors import ThicketsError
from thickets.noise import ParamFilter, PerturbationSpec, STRATEGIES
from thickets.randopt.racing import Race


@dataclass(frozen=True)
class SearchConfig:
    """Everything that fixes a search's population and scores. Stored in the run folder."""

    model: str = "smollm2-135m"
    task: str = "countdown"
    population: int = 32
    sigmas: tuple[float, ...] = (1e-3,)
    val_size: int = 64
    max_new_tokens: int = 256
    seed: int = 0  # fixes the population
    split_seed: int = 0  # fixes which examples form the validation and test splits
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    strategy: str = "gaussian"
    batch_size: int = 32
    engine: str = "transformers"  # or vllm (GPU, experimental)
    dtype: str = "float32"
    chat_template: bool = True
    #: for tasks read from a file: FIELD=COLUMN pairs naming the columns the task reads
    columns: tuple[str, ...] = ()
    #: a TRL-style reward function, module:function or file.py:function, replacing the task's reward
    reward: str | None = None
    #: stop scoring a candidate once it cannot reach the top `racing_top_k`: off, exact or hoeffding
    racing: str = "off"
    racing_top_k: int = 5
    racing_delta: float = 0.05  # hoeffding only: the chance of dropping a true top-K candidate, per candidate
    #: seconds a user's reward function may take for one batch before the run stops with an error
    reward_timeout: float = 300.0
    #: how validation examples are cut into generation batches; fixed by the run folder, never by a flag:
    #: "chunks" (batch_size examples at a time in validation order, the same batches racing scores) or
    #: "split" (runs made before: the whole split at once, bucketed by length)
    batching: str = "chunks"
    #: fields a later call may change without changing what the finished candidates mean
    EXTENDABLE = ("population", "reward_timeout")
    #: fields an existing run folder decides, whatever a later call says
    INHERITED = ("batching",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "reward", self.reward or None)
        self.validate()

    def validate(self) -> None:
        if not 1 <= self.population <= MAX_POPULATION:
            raise ThicketsError(f"population must be between 1 and {MAX_POPULATION:,}, got {self.population}")
        if not self.sigmas:
            raise ThicketsError("give at least one sigma")
        for s in self.sigmas:
            if not (s > 0 and math.isfinite(s)):
                raise ThicketsError(f"sigma must be a positive number, got {s}")
        if len(set(self.sigmas)) != len(self.sigmas):
            raise ThicketsError(f"sigma grid has repeated values: {self.sigmas}")
        check_split_size("val-size", self.val_size)
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise ThicketsError(f"max-new-tokens must be between 1 and {MAX_NEW_TOKENS:,}, got {self.max_new_tokens}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ThicketsError(f"batch-size must be between 1 and {MAX_BATCH:,}, got {self.batch_size}")
        if not (self.reward_timeout > 0 and math.isfinite(self.reward_timeout)):
            raise ThicketsError(f"reward-timeout must be a positive number of seconds, got {self.reward_timeout}")
        if self.batching not in BATCHINGS:
            raise ThicketsError(f"unknown batching {self.batching!r}; known: {', '.join(BATCHINGS)}")
        for what, v in (("seed", self.seed), ("split-seed", self.split_seed)):
            if not 0 <= v < 2**62:
                raise ThicketsError(f"{what} must be in [0, 2**62), got {v}")
        if self.strategy not in STRATEGIES:
            raise ThicketsError(f"unknown noise strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self.engine not in ("transformers", "vllm"):
            raise ThicketsError(f"unknown engine {self.engine!r}; use transformers or vllm")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ThicketsError(f"unknown dtype {self.dtype!r}; use float32, bfloat16 or float16")
        if not self.include:
            raise ThicketsError("the parameter filter includes nothing")
        Race(self.val_size, self.racing_top_k, self.racing, self.racing_delta)  # raises on a bad setting

    @property
    def filter(self) -> ParamFilter:
        return ParamFilter(self.include, self.exclude)

    def candidate(self, index: int) -> PerturbationSpec:
        """Candidate `index` of the population: its own seed, and the sigma grid in round robin."""
        return PerturbationSpec(
            seed=candidate_seed(self.seed, index),
            sigma=self.sigmas[index % len(self.sigmas)],
            strategy=self.strategy,
            filter=self.filter,
        )

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "SearchConfig":
        """A stored config; one written before a field existed gets the value that release used."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ThicketsError(f"run config has unknown fields: {', '.join(sorted(unknown))}")
        values = {"batching": "split", **d}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def differences(self, other: "SearchConfig") -> list[str]:
        """Fields that differ and may not change on an existing run folder."""
        a, b = asdict(self), asdict(other)
        return [k for k in a if k not in self.EXTENDABLE + self.INHERITED and a[k] != b[k]]

    def resuming(self, stored: "SearchConfig") -> "SearchConfig":
        """This config as it applies to an existing run: the fields the run folder decides taken from it.
        A population below the stored one is refused: the run's extra candidates would still be ranked."""
        if self.population < stored.population:
            raise ThicketsError(f"population {self.population} is smaller than the {stored.population} this run "
                                f"already has; a run can grow, not shrink (use a new --run-dir)")
        return replace(self, **{k: getattr(stored, k) for k in self.INHERITED})


MAX_POPULATION = 10**9
MAX_SPLIT = 100_000  # examples in a validation or test split: held in memory, generated up front
MAX_NEW_TOKENS = 1 << 20
MAX_BATCH = 1 << 16
BATCHINGS = ("chunks", "split")


def check_split_size(what: str, n: int) -> None:
    if not 1 <= n <= MAX_SPLIT:
        raise ThicketsError(f"{what} must be between 1 and {MAX_SPLIT:,} (a split is held in memory), got {n}")


def candidate_seed(run_seed: int, index: int) -> int:
    """A 62-bit seed per (run seed, index): different run seeds give unrelated populations."""
    digest = hashlib.blake2b(f"{run_seed}:{index}".encode(), digest_size=8, person=b"thickets-cand").digest()
    return int.from_bytes(digest, "little") >> 2


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ThicketsError(f"{what} must be numbers separated by commas, got {text!r}") from None


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ThicketsError(f"{what} must be integers separated by commas, got {text!r}") from None


@dataclass(frozen=True)
class BenchConfig:
    """`thickets bench`: the figures of BENCHMARKS.md, measured side by side in one run."""

    model: str = "smollm2-135m"
    task: str = "products"
    candidates: int = 6  # per side of the search comparison
    val_size: int = 32
    max_new_tokens: int = 12
    sigma: float = 1e-3
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    decode_tokens: int = 32  # tokens per row in the decode comparison
    top_k: int = 3
