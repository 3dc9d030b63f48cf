"""Run configuration as dataclasses (as TRL does), validated before anything touches the store.

Each field's help text is on the field; the command line is generated from these (cli/args.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from thickets.engines import ENGINES
from thickets.errors import ThicketsError
from thickets.models import DEVICES, DTYPES
from thickets.noise import NOISE_VERSION, STRATEGIES, ParamFilter, PerturbationSpec, candidate_seed
from thickets.options import commas, option, parse_floats, parse_patterns
from thickets.randopt.racing import MODES, Race


@dataclass(frozen=True)
class SearchConfig:
    """Everything that fixes a search's population and scores. Stored in the run folder."""

    model: str = option("smollm2-135m", "HF model folder, .gguf file, or smollm2-135m (the embedded default)")
    task: str = option(
        "countdown", "task name, gym:NAME, KIND:DATA_FILE, or several separated by commas (see `thickets tasks`)"
    )
    population: int = option(32, "number of candidates N (a larger number extends an existing run)")
    sigmas: tuple[float, ...] = option(
        (1e-3,), "noise scale, or a grid a,b,c taken in round robin", flag="--sigma", parse=parse_floats, show=commas
    )
    val_size: int = option(64, "validation examples each candidate is scored on")
    max_new_tokens: int = option(256, "tokens generated at most per answer")
    seed: int = option(0, "population seed: candidate i's noise seed comes from it and i")
    split_seed: int = option(0, "seed of the validation/test splits")
    include: tuple[str, ...] = option(("*",), "parameter name patterns to perturb", parse=parse_patterns, show=commas)
    exclude: tuple[str, ...] = option((), "parameter name patterns to leave alone", parse=parse_patterns, show=commas)
    strategy: str = option(
        "gaussian",
        "noise strategy: gaussian (full rank), lowrank (each 2-D weight moves by sigma * A @ B.T / sqrt(R), "
        "vectors stay: every expert is a rank-R LoRA adapter), or relative (full rank, each tensor's noise "
        "sigma times that tensor's RMS: the same size relative to every tensor; experimental)",
        flag="--noise",
        choices=STRATEGIES,
    )
    rank: int = option(0, "the lowrank strategy's rank R")
    population_batch: int = option(
        1,
        "low-rank candidates scored together, sharing every batched forward pass over the base weights "
        "(0: as many as memory allows, at most 16)",
    )
    batch_size: int = option(32, "prompts generated together")
    engine: str = option("transformers", "vllm: GPUs only, experimental (see README)", choices=ENGINES)
    dtype: str = option("float32", "weights' dtype", choices=DTYPES)
    device: str = option("cpu", "where the weights live and candidates are made", choices=DEVICES)
    chat_template: bool = option(
        True, "feed the prompt through the tokenizer's chat template (--no-chat-template: the raw prompt)"
    )
    columns: tuple[str, ...] = option(
        (),
        "for KIND:DATA_FILE tasks: FIELD=COLUMN pairs, e.g. question=problem,answer=solution",
        parse=parse_patterns,
        show=commas,
    )
    reward: str | None = option(
        None, "a TRL-style reward function, module:function or file.py:function, replacing the task's reward"
    )
    racing: str = option(
        "off", "stop scoring candidates that cannot reach the top K (see BENCHMARKS.md)", choices=MODES
    )
    racing_top_k: int = option(5, "the K racing keeps exact")
    racing_delta: float = option(0.05, "hoeffding racing: the chance of dropping a candidate as good as the K-th")
    reward_timeout: float = option(300.0, "seconds a --reward function may take per batch before the run stops")
    batching: str = option(
        "chunks",
        "how examples are cut into generation batches, fixed by the run folder: "
        "'chunks' (batch_size at a time in validation order, the batches racing "
        "scores) or 'split' (runs made before 0.2: the whole split by length)",
        cli=False,
    )
    noise_version: int = option(
        NOISE_VERSION,
        "the map from a candidate's seed to its noise (thickets.noise.NOISE_VERSIONS), fixed by the run folder: "
        "new runs take the newest; runs made before 0.2 keep version 1",
        cli=False,
    )
    #: fields a later call may change without changing what the finished candidates mean
    EXTENDABLE = ("population", "reward_timeout", "device", "population_batch")
    #: fields an existing run folder decides, whatever a later call says
    INHERITED = ("batching", "noise_version")

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
        if not self.include:
            raise ThicketsError("the parameter filter includes nothing")
        if self.strategy == "lowrank" and self.rank < 1:
            raise ThicketsError(f"--noise lowrank needs --rank R of at least 1, got {self.rank}")
        if self.strategy != "lowrank" and self.rank:
            raise ThicketsError(f"--rank is for --noise lowrank, not --noise {self.strategy}")
        if not 0 <= self.population_batch <= MAX_BATCH:
            raise ThicketsError(f"population-batch must be between 0 and {MAX_BATCH:,}, got {self.population_batch}")
        if self.population_batch != 1 and self.strategy != "lowrank":
            raise ThicketsError("--population-batch needs low-rank candidates (--noise lowrank --rank R)")
        if self.population_batch != 1 and self.racing != "off":
            raise ThicketsError("--population-batch scores candidates together; it cannot race them (--racing off)")
        for s in self.sigmas:
            # sigma, strategy and noise version are checked there, and only there
            PerturbationSpec(0, s, self.strategy, self.filter, self.noise_version, self.rank)
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
        if self.engine not in ENGINES:
            raise ThicketsError(f"unknown engine {self.engine!r}; use {' or '.join(ENGINES)}")
        if self.strategy == "lowrank" and self.engine != "transformers":
            raise ThicketsError(f"the {self.engine} engine cannot make low-rank experts yet; use --engine transformers")
        if self.strategy == "relative" and self.engine != "transformers":
            raise ThicketsError(f"the {self.engine} engine cannot make relative noise; use --engine transformers")
        if self.device not in DEVICES:
            raise ThicketsError(f"unknown device {self.device!r}; use {' or '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise ThicketsError(f"unknown dtype {self.dtype!r}; use {', '.join(DTYPES)}")
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
            version=self.noise_version,
            rank=self.rank,
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        """A stored config; one written before a field existed gets the value that release used."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ThicketsError(f"run config has unknown fields: {', '.join(sorted(unknown))}")
        values = {"batching": "split", "noise_version": 1, **d}
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**kwargs)

    def differences(self, other: SearchConfig) -> list[str]:
        """Fields that differ and may not change on an existing run folder."""
        a, b = asdict(self), asdict(other)
        return [k for k in a if k not in self.EXTENDABLE + self.INHERITED and a[k] != b[k]]

    def resuming(self, stored: SearchConfig) -> SearchConfig:
        """This config as it applies to an existing run: the fields the run folder decides taken from it.
        A population below the stored one is refused: the run's extra candidates would still be ranked."""
        if self.population < stored.population:
            raise ThicketsError(
                f"population {self.population} is smaller than the {stored.population} this run "
                f"already has; a run can grow, not shrink (use a new --run-dir)"
            )
        return replace(self, **{k: getattr(stored, k) for k in self.INHERITED})


MAX_POPULATION = 10**9
MAX_SPLIT = 100_000  # examples in a validation or test split: held in memory, generated up front
MAX_NEW_TOKENS = 1 << 20
MAX_BATCH = 1 << 16
BATCHINGS = ("chunks", "split")


def check_split_size(what: str, n: int) -> None:
    if not 1 <= n <= MAX_SPLIT:
        raise ThicketsError(f"{what} must be between 1 and {MAX_SPLIT:,} (a split is held in memory), got {n}")
