"""Benchmark plumbing: run a command as a subprocess, time it, sample its memory."""

from __future__ import annotations

import json
import os
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

    @property
    def peak_worker_mb(self) -> float:
        return max(self.peak_rss_mb.values(), default=0.0)


class MemorySampler(threading.Thread):
    """Max RSS of every process in a tree, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, tuple[str, float]] = {}
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
                    label = " ".join(proc.cmdline()[1:3])[-60:] or proc.name()
                except psutil.Error:
                    continue
                if rss > self.peaks.get(proc.pid, ("", 0.0))[1]:
                    self.peaks[proc.pid] = (label, rss)
            time.sleep(self.interval)


def timed(name: str, cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> Timing:
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
    return Timing(name, round(wall, 2), peaks, out[-3000:])


def save(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=lambda o: asdict(o)))
