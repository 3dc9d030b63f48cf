"""Experiment trackers, as TRL and transformers users know them (`--report-to`): trackio, TensorBoard, W&B
and MLflow, each through its own library, each optional.

Offline by default: TensorBoard's event files, W&B in offline mode and MLflow's file store go in the run
folder, trackio in its local store (TRACKIO_DIR). A tracker is never required and can never fail a run:
one that cannot start or errors is reported once, as one warning line, and dropped; the run goes on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thickets.errors import ThicketsError
from thickets.options import commas, option, parse_patterns

log = logging.getLogger(__name__)

REPORTERS = ("trackio", "tensorboard", "wandb", "mlflow")
NONE = "none"


def check_report_to(names: Iterable[str]) -> tuple[str, ...]:
    """The trackers asked for, in order, without repeats; an unknown name is refused in one line."""
    asked = tuple(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    unknown = [n for n in asked if n not in REPORTERS + (NONE,)]
    if unknown:
        raise ThicketsError(f"--report-to {unknown[0]!r} is not a tracker; use some of {', '.join(REPORTERS)} or none")
    return () if NONE in asked else asked


@dataclass(frozen=True)
class TrackingOptions:
    """Where a command's figures go besides its own folder (not part of the run: it changes no result)."""

    report_to: tuple[str, ...] = option(
        (),
        f"experiment trackers, several allowed: {', '.join(REPORTERS)} or none; offline (local files), "
        "and one that fails is dropped with a warning, never failing the run",
        parse=parse_patterns,
        show=commas,
    )

    def __post_init__(self) -> None:
        check_report_to(self.report_to)


class _TensorBoard:
    def __init__(self, folder: Path, name: str, config: Mapping[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard" / name))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Trackio:
    def __init__(self, folder: Path, name: str, config: Mapping[str, Any]):
        import trackio

        self.run = trackio.init(project="thickets", name=f"{folder.name}-{name}", config=dict(config))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()  # type: ignore[no-untyped-call]  # trackio's finish has no annotations


class _WandB:
    def __init__(self, folder: Path, name: str, config: Mapping[str, Any]):
        import wandb

        self.run = wandb.init(project="thickets", name=f"{folder.name}-{name}", dir=str(folder), mode="offline",
                              config=dict(config), reinit="finish_previous")  # fmt: skip

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, folder: Path, name: str, config: Mapping[str, Any]):
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=(folder / "mlruns").absolute().as_uri())
        experiment = self.client.get_experiment_by_name("thickets")
        eid = experiment.experiment_id if experiment else self.client.create_experiment("thickets")
        self.run_id = self.client.create_run(eid, run_name=f"{folder.name}-{name}").info.run_id
        for key, value in config.items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key.replace("/", "."), value, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_BACKENDS = {"tensorboard": _TensorBoard, "trackio": _Trackio, "wandb": _WandB, "mlflow": _MLflow}


class Tracker:
    """The trackers of one command (`name`: search, distill, es, ...) on one run folder. `log` takes numbers
    by name at a step; what is not a finite number is left out. The trackers start with the first figure."""

    def __init__(self, report_to: Iterable[str], folder: str | Path, name: str, config: Mapping[str, Any]):
        self.asked = check_report_to(report_to)
        self.folder, self.name, self.config = Path(folder), name, dict(config)
        self.backends: dict[str, Any] = {}
        self.started = False

    def _start(self) -> None:
        """On the first figure, never before: a command's checks run and refuse before anything is written."""
        self.started = True
        for key in self.asked:
            try:
                self.backends[key] = _BACKENDS[key](self.folder, self.name, self.config)
            except Exception as e:  # a missing library, a bad environment: this tracker only
                self._drop(key, "cannot start", e)

    def _drop(self, key: str, what: str, e: BaseException) -> None:
        self.backends.pop(key, None)
        log.warning("warning: %s %s (%s: %s); the run goes on without it", key, what, type(e).__name__, e)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        numbers = {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if not numbers or not self.asked:
            return
        if not self.started:
            self._start()
        for key, backend in list(self.backends.items()):
            try:
                backend.log(numbers, step)
            except Exception as e:
                self._drop(key, "failed to log", e)

    def close(self) -> None:
        for key, backend in list(self.backends.items()):
            try:
                backend.close()
            except Exception as e:
                self._drop(key, "failed to close", e)
        self.backends.clear()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: what a library function takes when no tracker is asked for
NO_TRACKER = Tracker((), ".", "none", {})
