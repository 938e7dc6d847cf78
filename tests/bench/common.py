"""Benchmark plumbing: run a command as a subprocess, time it, sample its memory; write the
generated tables into BENCHMARKS.md (between markers, so no figure there is typed by hand)."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Timing:
    name: str
    wall_s: float
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # per process name
    stdout_tail: str = ""
    main_mb: float = 0.0  # the command's own process (for ``sln run``: the flow process)
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before / after
    pid: int = 0
    cpu_s: float = 0.0  # CPU seconds of the whole process tree (less sensitive to load)
    # CPU seconds of the command's own process (``sln run``: the flow process, with the
    # local cluster's scheduler and nannies, which run in it).
    main_cpu_s: float = 0.0
    # The command's own process over the run: (seconds since start, RSS MB), one per sample.
    main_series: list[tuple[float, float]] = field(default_factory=list)

    @property
    def peak_worker_mb(self) -> float:
        return max(self.peak_rss_mb.values(), default=0.0)

    @property
    def children_mb(self) -> float:
        """Largest child process that computes (Dask workers, pool processes), not servers."""
        return max(
            (
                mb
                for name, mb in self.peak_rss_mb.items()
                if not name.startswith(f"{self.pid}:") and not _is_service(name)
            ),
            default=0.0,
        )


def _is_service(label: str) -> bool:
    # The Prefect server sln may start, and Dask's nannies (they only supervise a worker).
    return any(word in label for word in ("prefect", "uvicorn", "server", "nanny"))


class MemorySampler(threading.Thread):
    """Max RSS of every process in a tree, sampled every ``interval`` seconds, and the root
    process's RSS over time (``series``: whether a peak is growth or a moment)."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, tuple[str, float]] = {}
        self.cpu: dict[int, float] = {}  # user + system seconds, at the last sample
        self.series: list[tuple[float, float]] = []
        self.started = time.perf_counter()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            for proc in procs:
                try:
                    rss = proc.memory_info().rss / 2**20
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = times.user + times.system
                    label = " ".join(proc.cmdline()[1:3])[-60:] or proc.name()
                except psutil.Error:
                    continue
                if rss > self.peaks.get(proc.pid, ("", 0.0))[1]:
                    self.peaks[proc.pid] = (label, rss)
                if proc.pid == self.pid:
                    self.series.append((round(time.perf_counter() - self.started, 2), round(rss)))
            time.sleep(self.interval)


def timed(name: str, cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> Timing:
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sampler = MemorySampler(proc.pid)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - started
    sampler.stop.set()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{out[-4000:]}")
    peaks: dict[str, float] = {}
    for pid, (label, rss) in sampler.peaks.items():
        peaks[f"{pid}:{label}"] = round(rss, 1)
    main = sampler.peaks.get(proc.pid, ("", 0.0))[1]
    load = (round(load_before, 2), round(os.getloadavg()[0], 2))
    cpu = round(sum(sampler.cpu.values()), 1)
    main_cpu = round(sampler.cpu.get(proc.pid, 0.0), 1)
    return Timing(
        name,
        round(wall, 2),
        peaks,
        out[-3000:],
        round(main, 1),
        load,
        proc.pid,
        cpu,
        main_cpu,
        sampler.series,
    )


def save(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=lambda o: asdict(o)))


def machine_line(loads: list[float]) -> str:
    """When and where a table was made, with the machine's load over the run."""
    cores = os.cpu_count() or 1
    high = max(loads, default=0.0)
    note = (
        f" **Load above the {cores} cores: other work shared the CPUs, timings are distorted.**"
        if high > cores
        else ""
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Generated {stamp} on {cores} cores, no GPU; 1-minute load average "
        f"{min(loads, default=0.0):.1f}-{high:.1f} during the run.{note}"
    )


def write_section(name: str, text: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace the generated section ``name`` of BENCHMARKS.md (markers added if missing)."""
    start, end = f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    body = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    body = pattern.sub(lambda _: block, body) if pattern.search(body) else f"{body}\n{block}\n"
    path.write_text(body)
