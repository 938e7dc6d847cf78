"""What ``sln`` prints: one progress bar per stage (cases done / total, rate, time left) and
the run's summary. Every log record still reaches the Prefect API (the UI keeps the full
logs); on the console the INFO lines of Prefect, Dask and the steps show only with
``--verbose``.

The bars follow the flows' own progress log records (the templates in :data:`STAGES`),
read in the flow process, so the flows need no console code of their own.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Without --verbose, worker processes (spawned with this environment) keep their INFO lines
# off the console too: Prefect's console handler and Dask's loggers. The Prefect API handler
# has its own level, so the UI still gets every record.
QUIET_ENV = {
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "DASK_LOGGING__DISTRIBUTED": "warning",
}
NOISY = ("httpx", "distributed", "distributed.nanny", "distributed.scheduler")

# Progress records the flows and steps log: template -> (event, stage name or None for one
# named by the record's first argument). "plan" records carry (..., cases to do, ...); "done"
# records the cases done so far of the stage their first argument names; "rows" and
# "folds" records (what, done, total).
STAGES = {
    "radiomics: %d cases to extract in %d chunks, %d already stored": ("plan", "radiomics"),
    "embeddings (%s): %d cases to embed in %d chunks, %d already stored": ("plan", "embeddings"),
    "radiomics, image-normalised pass: %d cases to extract, %d already stored": (
        "plan",
        "radiomics (image-normalised)",
    ),
    "%s: chunk %d/%d committed (%d cases so far)": ("done", None),
    "%s %d/%d manifest rows": ("rows", None),
    "%s: LASSO fold %d/%d": ("folds", None),
}


def setup_logging(verbose: bool = False) -> None:
    """Console logging for one ``sln`` command: INFO lines with ``verbose``, else warnings
    only (the progress bars and the summary tell the rest)."""
    if not verbose:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclass
class Stage:
    name: str
    total: int
    unit: str = "cases"
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    shown: int = -1  # ``done`` at the last plain line

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed >= 1 else 0.0  # none yet below a second
        speed = f"{rate:.2f} {self.unit}/s" if rate else f"-- {self.unit}/s"
        left = f"{(self.total - self.done) / rate:.0f} s left" if rate else "-- s left"
        if self.done >= self.total:
            left = f"done in {elapsed:.0f} s"
        pct = 100 * self.done / self.total if self.total else 100
        bar = "#" * int(pct // 5)
        return (
            f"{self.name:<30} [{bar:<20}] {self.done}/{self.total} {self.unit} "
            f"{pct:3.0f}%  {speed}  {left}"
        )


class Progress(logging.Handler):
    """One bar per stage on stderr: a live ``rich`` bar on a terminal, otherwise a plain
    line each time a stage moves by a tenth (and when it ends)."""

    def __init__(self, stream=None) -> None:
        super().__init__(level=logging.INFO)
        self.stream = stream or sys.stderr
        self.stages: dict[str, Stage] = {}
        self.current: dict[str, str] = {}  # kind in "done" records -> its latest stage
        self.live = None
        self.tasks: dict[str, int] = {}
        if getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self.live = RichProgress(
                TextColumn("{task.description:<30}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
            )
            self.live.start()

    # -- stages --------------------------------------------------------------------------
    def start(self, name: str, total: int, unit: str = "cases", show: bool = True) -> None:
        stage = self.stages[name] = Stage(name, total, unit)
        if self.live is not None:
            fields = {"unit": unit, "rate": ""}
            self.tasks[name] = self.live.add_task(name, total=max(total, 1), **fields)
        if show:
            self._show(stage)

    def update(self, name: str, done: int, total: int | None = None, unit: str = "cases") -> None:
        if name not in self.stages:
            self.start(name, total or done, unit, show=False)
        stage = self.stages[name]
        stage.done = min(done, stage.total) if total is None else done
        if total is not None:
            stage.total = total
        self._show(stage)

    def _show(self, stage: Stage) -> None:
        if self.live is not None:
            elapsed = time.monotonic() - stage.started
            rate = f"{stage.done / elapsed:.2f}" if elapsed >= 1 else "--"
            self.live.update(
                self.tasks[stage.name],
                completed=stage.done if stage.total else 1,
                total=max(stage.total, 1),
                rate=f"{rate} {stage.unit}/s",
            )
            return
        step = max(stage.total // 10, 1)
        if stage.done >= stage.total or stage.shown < 0 or stage.done - stage.shown >= step:
            if stage.shown == stage.done and stage.done >= stage.total:
                return
            stage.shown = stage.done
            # Not print(): flows with log_prints=True turn it into a log record.
            self.stream.write(stage.line() + "\n")
            self.stream.flush()

    # -- log records -----------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        event = STAGES.get(str(record.msg))
        if event is None or not isinstance(record.args, tuple):
            return
        kind, name = event
        try:
            if kind == "plan":
                cases = next(a for a in record.args if isinstance(a, int))
                self.current[name.split(" ")[0]] = name
                self.start(name, cases)
            elif kind == "done":
                stage = self.current.get(record.args[0], record.args[0])
                self.update(stage, record.args[3])
            elif kind == "rows":
                what, done, total = record.args
                self.update(f"ingest: {what}", done, total, "rows")
            elif kind == "folds":
                model, fold, folds = record.args
                self.update(f"retrain: {model} LASSO", fold, folds, "folds")
        except Exception:  # a bar must never fail a run
            self.handleError(record)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        super().close()


@contextmanager
def progress(verbose: bool = False, stream=None) -> Iterator[Progress | None]:
    """Progress bars for the flows run inside (none with ``verbose``: the logs say it)."""
    if verbose:
        yield None
        return
    handler = Progress(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        handler.close()
