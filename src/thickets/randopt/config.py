"""Run configuration as dataclasses (as TRL does), validated before anything touches the store.

Each field's help text is on the field; the command line is generated from these (cli/args.py).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from thickets.engines import ENGINES
from thickets.errors import ThicketsError
from thickets.models import DEVICES, DTYPES
from thickets.noise import NOISE_VERSION, STRATEGIES, ParamFilter, PerturbationSpec, candidate_seed
from thickets.options import commas, option, parse_floats, parse_patterns
from thickets.randopt.pilot import DEFAULT_GRID, RULES, pilot_sigma
from thickets.randopt.racing import MODES, Race
from thickets.tasks.splits import SPLIT_SCHEME

#: `sigmas` of a run that chooses its sigma itself (`--sigma auto`): a pilot over `pilot_grid` first
AUTO: tuple[float, ...] = ()


def parse_sigmas(text: str, what: str = "value") -> tuple[float, ...]:
    """`--sigma`: a number, a grid a,b,c, or auto."""
    if text.strip().lower() == "auto":
        return AUTO
    sigmas = parse_floats(text, what)
    if not sigmas:
        raise ThicketsError(f"{what} must be a number, a grid a,b,c or auto, got {text!r}")
    return sigmas


def show_sigmas(value: tuple[float, ...]) -> str:
    return commas(value) if value else "auto"


@dataclass(frozen=True)
class SearchConfig:
    """Everything that fixes a search's population and scores. Stored in the run folder."""

    model: str = option("smollm2-135m", "HF model folder, .gguf file, or smollm2-135m (the embedded default)")
    task: str = option(
        "countdown", "task name, gym:NAME, KIND:DATA_FILE, or several separated by commas (see `thickets tasks`)"
    )
    population: int = option(32, "number of candidates N (a larger number extends an existing run)")
    sigmas: tuple[float, ...] = option(
        (1e-3,),
        "noise scale, a grid a,b,c taken in round robin, or auto: a pilot over --pilot-grid chooses it "
        "(see README: choosing sigma)",
        flag="--sigma",
        parse=parse_sigmas,
        show=show_sigmas,
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
    compile_decode: bool = option(
        False,
        "decode steps through torch.compile (Llama and Qwen2 text models; the first batch pays a few seconds "
        "of compiling; no faster on a CPU, see BENCHMARKS.md)",
        flag="--compile",
    )
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
    split_scheme: int = option(
        SPLIT_SCHEME,
        "how the validation and test examples are drawn (thickets.tasks.splits), fixed by the run folder: new "
        "runs take the newest (no question twice, across splits); runs made before 0.2 keep scheme 1",
        cli=False,
    )
    pilot_grid: tuple[float, ...] = option(
        DEFAULT_GRID,
        "--sigma auto: the sigmas the pilot walks, ascending, stopping after the first that collapses",
        parse=parse_floats,
        show=commas,
    )
    pilot_per_sigma: int = option(6, "--sigma auto: pilot candidates at each sigma of the grid")
    pilot_rule: str = option(
        "density",
        "--sigma auto: density (the share of candidates beating the base) or topk (the mean of the best "
        "quarter of a sigma's candidates minus the base) chooses",
        choices=RULES,
    )
    pilot_keep: int = option(1, "--sigma auto: how many sigmas to keep (more than 1: the best few, as a grid)")
    pilot_collapse: float = option(
        0.5, "--sigma auto: a sigma collapses when its median candidate scores below this share of the base"
    )
    pilot_tried: tuple[float, ...] = option(
        (), "--sigma auto: the sigmas the pilot walked, recorded once it is done", cli=False
    )
    pilot_chosen: tuple[float, ...] = option(
        (), "--sigma auto: the sigmas chosen, recorded once the pilot is done", cli=False
    )
    #: fields a later call may change without changing what the finished candidates mean
    EXTENDABLE = ("population", "reward_timeout", "device", "population_batch", "compile_decode")
    #: fields an existing run folder decides, whatever a later call says (the pilot's choice: once it is made
    #: there; a new run folder starts without one, see `starting`)
    INHERITED = ("batching", "noise_version", "split_scheme", "pilot_tried", "pilot_chosen")
    #: the pilot's settings, which matter only to a run with --sigma auto
    PILOT = ("pilot_grid", "pilot_per_sigma", "pilot_rule", "pilot_keep", "pilot_collapse")

    def __post_init__(self) -> None:
        for name in ("sigmas", "pilot_grid", "pilot_tried", "pilot_chosen"):
            value = getattr(self, name)
            value = parse_sigmas(value) if isinstance(value, str) else value  # sigmas="auto" from Python
            object.__setattr__(self, name, tuple(float(s) for s in value))
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "reward", self.reward or None)
        self.validate()

    def validate(self) -> None:
        if not 1 <= self.population <= MAX_POPULATION:
            raise ThicketsError(f"population must be between 1 and {MAX_POPULATION:,}, got {self.population}")
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
        for s in self.sigmas + self.pilot_grid:
            # sigma, strategy and noise version are checked there, and only there
            PerturbationSpec(0, s, self.strategy, self.filter, self.noise_version, self.rank)
        if len(set(self.sigmas)) != len(self.sigmas):
            raise ThicketsError(f"sigma grid has repeated values: {self.sigmas}")
        self._validate_pilot()
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

    def _validate_pilot(self) -> None:
        grid = self.pilot_grid
        if not grid:
            raise ThicketsError("--pilot-grid needs at least one sigma")
        if any(b <= a for a, b in itertools.pairwise(grid)):
            raise ThicketsError(f"--pilot-grid must be increasing, got {commas(grid)}")
        if not 1 <= self.pilot_per_sigma <= MAX_POPULATION:
            raise ThicketsError(f"--pilot-per-sigma must be at least 1, got {self.pilot_per_sigma}")
        if self.pilot_rule not in RULES:
            raise ThicketsError(f"unknown --pilot-rule {self.pilot_rule!r}; use {' or '.join(RULES)}")
        if not 1 <= self.pilot_keep <= len(grid):
            raise ThicketsError(
                f"--pilot-keep must be between 1 and the grid's {len(grid)} sigmas, got {self.pilot_keep}"
            )
        if not 0 <= self.pilot_collapse < 1:
            raise ThicketsError(f"--pilot-collapse must be in [0, 1), got {self.pilot_collapse}")
        tried, chosen = self.pilot_tried, self.pilot_chosen
        if (tried or chosen) and not self.auto:
            raise ThicketsError("pilot_tried and pilot_chosen belong to a run with --sigma auto")
        if bool(tried) != bool(chosen) or tried != grid[: len(tried)] or not set(chosen) <= set(tried):
            raise ThicketsError(
                f"inconsistent pilot record: tried {commas(tried)} of the grid {commas(grid)}, chose {commas(chosen)}"
            )

    @property
    def filter(self) -> ParamFilter:
        return ParamFilter(self.include, self.exclude)

    @property
    def auto(self) -> bool:
        """Sigma is chosen by a pilot (`--sigma auto`)."""
        return not self.sigmas

    @property
    def calibrated(self) -> bool:
        """The pilot is done and its choice recorded (always true of a run with a fixed sigma)."""
        return not self.auto or bool(self.pilot_chosen)

    @property
    def pilot_size(self) -> int:
        """Candidates 0..pilot_size-1 are the pilot's: those it took once done, else the most it can take."""
        if not self.auto:
            return 0
        return (len(self.pilot_tried) if self.calibrated else len(self.pilot_grid)) * self.pilot_per_sigma

    def sigmas_in_use(self) -> tuple[float, ...]:
        """Every sigma the run's candidates have (the grid, or the pilot's and the chosen ones), ascending."""
        if not self.auto:
            return self.sigmas
        return tuple(sorted(set(self.pilot_tried + self.pilot_chosen) if self.calibrated else set(self.pilot_grid)))

    def with_choice(self, tried: tuple[float, ...], chosen: tuple[float, ...]) -> SearchConfig:
        """This config once its pilot walked `tried` and chose `chosen`."""
        return replace(self, pilot_tried=tuple(tried), pilot_chosen=tuple(chosen))

    def starting(self) -> SearchConfig:
        """This config as it begins a new run folder: no pilot has been walked there yet."""
        return replace(self, pilot_tried=(), pilot_chosen=())

    def candidate_sigma(self, index: int) -> float:
        """Candidate `index`'s sigma: the grid in round robin; with --sigma auto, the pilot's grid point
        (index // pilot_per_sigma) for a pilot candidate, and the chosen sigmas in round robin after."""
        if not self.auto:
            return self.sigmas[index % len(self.sigmas)]
        if index < self.pilot_size:
            return pilot_sigma(self.pilot_grid, self.pilot_per_sigma, index)
        if not self.calibrated:
            raise ThicketsError(f"candidate {index} comes after the pilot, and the pilot has not chosen sigma yet")
        return self.pilot_chosen[(index - self.pilot_size) % len(self.pilot_chosen)]

    def candidate(self, index: int) -> PerturbationSpec:
        """Candidate `index` of the population: its own seed, and its sigma (`candidate_sigma`)."""
        return PerturbationSpec(
            seed=candidate_seed(self.seed, index),
            sigma=self.candidate_sigma(index),
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
        values = {"batching": "split", "noise_version": 1, "split_scheme": 1, **d}
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**kwargs)

    def differences(self, other: SearchConfig) -> list[str]:
        """Fields that differ and may not change on an existing run folder."""
        a, b = asdict(self), asdict(other)
        free = self.EXTENDABLE + self.INHERITED + (() if self.auto or other.auto else self.PILOT)
        return [k for k in a if k not in free and a[k] != b[k]]

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
