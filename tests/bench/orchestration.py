"""What the orchestration costs besides pyradiomics (issue 12 items 1 and 3).

1. ``sln run`` on N BUS-BRA cases (reader 1, radiomics only): peak RSS and CPU seconds of
   every process, and which heavy libraries each Dask worker has mapped (so a worker that
   loads torch again shows at once).
2. Prefect tasks on Dask against plain Dask tasks, on the project's local cluster: CPU per
   task in the workers, the flow process and the Prefect server; worker start-up and the
   imports a radiomics task pulls in.
3. What an idle local cluster costs a minute (Dask's timers and profiler), with Dask's own
   settings and with the project's (``flows.runtime.env.DASK_CONFIG``).

Usage: ``python -m tests.bench.orchestration --cases 12 --write`` (the table goes into the
``orchestration`` section of BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from tests.bench.common import BIN, ROOT, machine_line, write_section

HEAVY = ("torch", "triton", "nvidia", "mlflow", "matplotlib", "sklearn", "pandas", "pyarrow")
BENCH_KEY = "benchmark-only-pseudonym-key-not-a-secret"  # pseudonymises bench case ids only


def _mapped(pid: int) -> list[str]:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    return [lib for lib in HEAVY if f"/{lib}" in maps]


def sln_run(cases: int, work: Path) -> dict:
    """``sln run`` with a sampler: per process peak RSS, CPU seconds, heavy libraries."""
    from tasks.config import Settings
    from tasks.data.schema import REPEAT_COLUMNS
    from tasks.data.sources.busbra import busbra_manifest

    settings = Settings()
    manifest = work / "busbra.csv"
    frame = busbra_manifest(settings.shared_data / "busbra", manifest).head(cases)
    frame.drop(columns=[c for c in REPEAT_COLUMNS if c in frame]).to_csv(manifest, index=False)
    env = {**os.environ, "SLN_DATA_ROOTS": f"{work}:{settings.shared_data}", "SLN_EMBED": "false",
           "SLN_PERTURB_REPEATS": "false", "SLN_PSEUDONYM_KEY": BENCH_KEY}  # fmt: skip
    cmd = [str(BIN / "sln"), "run", str(manifest), "--store", str(work / "store"),
           "--workers", "2"]  # fmt: skip
    procs: dict[int, dict] = {}
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
            except psutil.Error:
                return
            for p in tree:
                try:
                    rss = p.memory_info().rss / 2**20
                    times = p.cpu_times()
                    entry = procs.setdefault(p.pid, {"cmd": " ".join(p.cmdline()),
                                                     "rss": 0.0, "libs": []})  # fmt: skip
                    entry["cpu"] = times.user + times.system
                    entry["cmd"] = " ".join(p.cmdline())  # after the spawn's exec
                    if rss > entry["rss"]:
                        entry["rss"], entry["libs"] = rss, _mapped(p.pid)
                except psutil.Error:
                    continue
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - started
    stop.set()
    if proc.returncode:
        raise RuntimeError(f"sln run failed:\n{out[-3000:]}")
    flow = procs.pop(proc.pid)
    workers = [p for p in procs.values() if "spawn_main" in p["cmd"]]
    return {"wall": wall, "flow": flow, "workers": workers, "out": out}


def _cpu() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def _server_cpu(url: str) -> float:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    for p in psutil.process_iter():
        try:
            if any(c.laddr.port == port and c.status == "LISTEN" for c in p.net_connections()):
                return _tree_cpu([p, *p.children(True)])
        except psutil.Error:
            continue
    return float("nan")


def _imports() -> tuple[float, float]:
    started, cpu = time.perf_counter(), _cpu()
    import flows.extract  # noqa: F401  (the flow's module: prefect-dask ships the flow)
    import tasks.features.radiomics  # noqa: F401

    return time.perf_counter() - started, _cpu() - cpu


def prefect_overhead(n: int) -> dict:
    """CPU per task: ``n`` no-op Prefect tasks on the local cluster, then ``n`` plain ones."""
    from distributed import Client
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_dask import DaskTaskRunner

    from flows.runtime.runners import local_cluster
    from flows.runtime.server import ensure_api

    @task(cache_policy=NO_CACHE)
    def noop(i: int) -> int:
        return i

    @flow(persist_result=False)
    def fan(n: int) -> list[int]:
        return [f.result() for f in [noop.submit(i) for i in range(n)]]

    url = ensure_api()
    os.environ["PREFECT_API_URL"] = url
    result = {}
    with temporary_settings(updates={PREFECT_API_URL: url}):
        started = time.perf_counter()
        with local_cluster(n_workers=2, gpu_workers=1) as cluster, Client(cluster) as client:
            client.wait_for_workers(2, timeout=120)
            result["cluster_start_s"] = time.perf_counter() - started
            result["worker_start_cpu_s"] = max(client.run(_cpu).values())
            imports = list(client.run(_imports).values())
            result["import_wall_s"] = max(w for w, _ in imports)
            result["import_cpu_s"] = max(c for _, c in imports)
            runner = DaskTaskRunner(address=cluster.scheduler_address)
            fan.with_options(task_runner=runner)(2)  # warm: the workers' first task runs
            before = (sum(client.run(_cpu).values()), _cpu(), _server_cpu(url))
            started = time.perf_counter()
            fan.with_options(task_runner=runner)(n)
            result["prefect_wall_s"] = time.perf_counter() - started
            after = (sum(client.run(_cpu).values()), _cpu(), _server_cpu(url))
            result["prefect_ms"] = [1000 * (b - a) / n for a, b in zip(before, after, strict=True)]
            before_w = sum(client.run(_cpu).values())
            started = time.perf_counter()
            client.gather(client.map(lambda i: i, range(n)))
            result["dask_wall_s"] = time.perf_counter() - started
            result["dask_ms"] = 1000 * (sum(client.run(_cpu).values()) - before_w) / n
    return result


def _tree_cpu(procs: list[psutil.Process]) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs)


def idle_cluster(seconds: float) -> dict[str, tuple[float, float]]:
    """CPU seconds a minute of an idle local cluster (2 workers): in this process (the
    scheduler, the nannies and the client run here, as in ``sln run``'s flow process) and in
    the two worker processes; Dask's own settings, then the project's."""
    from distributed import Client

    from flows.runtime.env import DASK_CONFIG
    from flows.runtime.runners import local_cluster

    result = {}
    for name, config in (("dask", {}), ("project", DASK_CONFIG)):
        with (
            local_cluster(n_workers=2, gpu_workers=1, dask_config=config) as cluster,
            Client(cluster) as client,
        ):
            client.wait_for_workers(2, timeout=120)
            time.sleep(5)  # past the start-up
            workers = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
            here, there = _cpu(), _tree_cpu(workers)
            time.sleep(seconds)
            per_minute = 60 / seconds
            result[name] = ((_cpu() - here) * per_minute, (_tree_cpu(workers) - there) * per_minute)
    return result


def table(run: dict, over: dict, cases: int, tasks: int) -> str:
    workers = sorted(run["workers"], key=lambda w: -w["rss"])
    rows = [
        "| process | peak RSS MB | CPU s | heavy libraries mapped |",
        "| --- | --- | --- | --- |",
        f"| flow (`sln run`) | {run['flow']['rss']:.0f} | {run['flow']['cpu']:.1f} | "
        f"{', '.join(run['flow']['libs']) or 'none'} |",
    ]
    for i, w in enumerate(workers, start=1):
        libs = ", ".join(w["libs"]) or "none"
        rows.append(f"| Dask worker {i} | {w['rss']:.0f} | {w['cpu']:.1f} | {libs} |")
    worker_ms, flow_ms, server_ms = over["prefect_ms"]
    return "\n".join(
        [
            f"Command: `python -m tests.bench.orchestration --cases {cases} --tasks {tasks} "
            f"--idle-seconds {over['idle_s']:g}`. " + machine_line(run["loads"]),
            "",
            f"`sln run --workers 2`, {cases} BUS-BRA cases, reader 1, radiomics only (both "
            f"passes: params as stored, then image-normalised, on one shared cluster): "
            f"wall {run['wall']:.1f} s.",
            "",
            *rows,
            "",
            "| per task (no-op task, local cluster, 2 workers) | worker CPU ms | flow process CPU "
            "ms | Prefect server CPU ms | wall s for all |",
            "| --- | --- | --- | --- | --- |",
            f"| Prefect task (`task.submit` on DaskTaskRunner), {tasks} tasks | {worker_ms:.0f} "
            f"| {flow_ms:.0f} | {server_ms:.0f} | {over['prefect_wall_s']:.1f} |",
            f"| plain Dask task (`client.map`), {tasks} tasks | {over['dask_ms']:.1f} | | | "
            f"{over['dask_wall_s']:.2f} |",
            "",
            f"Local cluster start (scheduler, 2 nannies, 2 workers): {over['cluster_start_s']:.1f} "
            f"s wall, {over['worker_start_cpu_s']:.1f} s CPU per worker; then importing what a "
            f"radiomics task needs (`tasks.features.radiomics`, `flows.extract`): "
            f"{over['import_wall_s']:.1f} s wall, {over['import_cpu_s']:.1f} s CPU per worker.",
            "",
            f"An idle local cluster (scheduler, 2 nannies, 2 workers), CPU s per minute over "
            f"{over['idle_s']:.0f} s with nothing to do:",
            "",
            "| settings | this process (scheduler, nannies, client) | 2 workers | total |",
            "| --- | --- | --- | --- |",
            *(
                f"| {label} | {over['idle'][key][0]:.2f} | {over['idle'][key][1]:.2f} | "
                f"{sum(over['idle'][key]):.2f} |"
                for key, label in (
                    ("dask", "Dask's own (20 ms tick, 500 ms monitor, profiler on)"),
                    ("project", "the project's `DASK_CONFIG` (1 s tick, 2 s monitor, no profiler)"),
                )
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="sln-orch-") as tmp:
        run = sln_run(args.cases, Path(tmp))
    loads.append(os.getloadavg()[0])
    over = prefect_overhead(args.tasks)
    loads.append(os.getloadavg()[0])
    over["idle"], over["idle_s"] = idle_cluster(args.idle_seconds), args.idle_seconds
    loads.append(os.getloadavg()[0])
    run["loads"] = loads
    text = table(run, over, args.cases, args.tasks)
    print(text)
    if args.write:
        write_section("orchestration", text, ROOT / "BENCHMARKS.md")


if __name__ == "__main__":
    sys.exit(main())
