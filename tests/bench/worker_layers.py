"""What running a radiomics chunk inside ``sln run``'s machinery costs in CPU, layer by layer,
on the same chunk: the step's plain function in this process, the same function as a plain
Dask task on a local-cluster worker (the project's worker settings), and the Prefect task
``sln run`` submits (``extract_chunk_task`` through ``DaskTaskRunner``) on that worker.

This machine's speed drifts by up to 40% over minutes, so the layers run in alternating
order, round after round, and their CPU seconds are summed: a drift slows every layer alike.
Worker CPU is the worker process's own (psutil, every thread: the compute thread, the event
loop, Prefect's API and log clients).

Usage: ``python -m tests.bench.worker_layers CASES_JSON [--cases 20] [--rounds 4] [--perturb]
[--write]`` (CASES_JSON: ``cases-icc.json`` from a ``bench_radiomics`` run's work folder).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import psutil

from tests.bench.common import machine_line, write_section


def plain(chunk: list[dict], params: dict, settings) -> float:
    """The step's function; returns this process's CPU seconds for it."""
    from tasks.features.radiomics import extract_chunk, limit_threads

    limit_threads()
    started = time.process_time()
    result = extract_chunk(chunk, params, settings)
    assert not result.failures, result.failures
    return time.process_time() - started


def main() -> None:
    from distributed import Client
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from flows.runtime.runners import local_cluster
    from flows.runtime.server import ensure_api
    from tasks.config import Settings
    from tasks.features.radiomics import extract_chunk_task, load_params, quiet_radiomics

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("cases_json")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--perturb", action="store_true")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    quiet_radiomics()
    ensure_api()  # the local Prefect server, found or started before anything is timed
    chunk = json.loads(open(args.cases_json).read())[: args.cases]
    settings = Settings(perturb_repeats=args.perturb)
    params = load_params(settings.radiomics_params)
    loads = [os.getloadavg()[0]]

    with local_cluster(n_workers=1, gpu_workers=0) as cluster, Client(cluster) as client:
        worker = psutil.Process(next(iter(client.run(os.getpid).values())))
        me = psutil.Process()

        def cpu(proc: psutil.Process) -> float:
            times = proc.cpu_times()
            return times.user + times.system

        # Unannotated: the flow's parameters are not re-validated (Settings is a local import).
        @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        def one_chunk(chunk, params, settings):
            return len(extract_chunk_task.submit(chunk, params, settings).result().rows)

        def in_process() -> tuple[float, float]:
            return plain(chunk, params, settings), 0.0

        def dask_task() -> tuple[float, float]:
            before, mine = cpu(worker), cpu(me)
            client.submit(plain, chunk, params, settings, pure=False).result()
            return cpu(worker) - before, cpu(me) - mine

        def prefect_task() -> tuple[float, float]:
            before, mine = cpu(worker), cpu(me)
            assert one_chunk(chunk, params, settings) > 0
            return cpu(worker) - before, cpu(me) - mine

        layers: dict[str, Callable[[], tuple[float, float]]] = {
            "the step's function, in one plain process": in_process,
            "plain Dask task on a local-cluster worker": dask_task,
            "Prefect task (`extract-radiomics`) via DaskTaskRunner, same worker": prefect_task,
        }
        # Warm: imports and first calls on both sides stay out of the sums.
        plain(chunk[:1], params, settings)
        client.submit(plain, chunk[:1], params, settings, pure=False).result()
        one_chunk(chunk[:1], params, settings)
        sums = {name: [0.0, 0.0] for name in layers}
        for round_ in range(args.rounds):
            order = list(layers) if round_ % 2 == 0 else list(reversed(layers))
            for name in order:
                compute, caller = layers[name]()
                sums[name][0] += compute
                sums[name][1] += caller
                print(f"round {round_ + 1}: {name}: {compute:.2f} s", flush=True)
        loads.append(os.getloadavg()[0])

    base = next(iter(sums.values()))[0]
    lines = [
        "| layer | CPU s of the computing process | vs plain process | "
        "CPU s of this (client / flow) process |",
        "| --- | --- | --- | --- |",
    ]
    for name, (compute, caller) in sums.items():
        lines.append(f"| {name} | {compute:.2f} | {compute / base:.3f} | {caller:.2f} |")
    regions = "4 regions" if args.perturb else "2 regions"
    command = (
        f"python -m tests.bench.worker_layers CASES_JSON --cases {len(chunk)} "
        f"--rounds {args.rounds}{' --perturb' if args.perturb else ''}"
    )
    text = (
        f"Command: `{command}`. {machine_line(loads)}\n\n"
        f"One chunk of {len(chunk)} BUS-BRA cases ({regions} each), {args.rounds} rounds in "
        f"alternating order, CPU seconds summed over the rounds:\n\n" + "\n".join(lines)
    )
    print(text)
    if args.write:
        write_section("radiomics-layers", text)


if __name__ == "__main__":
    main()
