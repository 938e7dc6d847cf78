"""CNN benchmark: embedding throughput of the flow vs a plain torch loop (same images, start
weights, input size and batch size, one run), peak memory, and fine-tuning seconds per epoch.

Usage: ``python -m tests.bench.bench_embedding --cases 200 --size 224 --out bench-out --write``
(``--write``: the table goes into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from tasks.config import Settings
from tasks.data.ingest import ingest
from tasks.data.store import FeatureStore
from tests.bench.bench_radiomics import BENCH_KEY
from tests.bench.common import BIN, ROOT, machine_line, save, timed, write_section


def finetune_epoch_seconds(store: FeatureStore, size: int, cases: int) -> dict:
    import torch

    from tasks.features.cnn.start import start_weights
    from tasks.features.cnn.train import finetune
    from tasks.models.features import training_cases

    torch.set_num_threads(os.cpu_count() or 1)
    settings = Settings(store=store.root, cnn_size=size, cnn_epochs=2, cnn_patience=5)
    rows = training_cases(store)[:cases]
    meta = finetune(rows, settings, store, start_weights(settings, store))
    return {
        "training_cases": len(rows),
        "device": meta["device"],
        "seconds_per_epoch": meta["seconds_per_epoch"],
        "curve": meta["curve"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--finetune-cases", type=int, default=96)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    loads = [os.getloadavg()[0]]
    os.environ["SLN_CNN_SIZE"] = str(args.size)
    os.environ.setdefault("SLN_PSEUDONYM_KEY", BENCH_KEY)  # ingest refuses to run without one
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    from tasks.data.sources.synthetic import generate_cohort

    manifest = generate_cohort(work / "cohort", n_patients=args.cases, seed=5)
    results = {"cases": args.cases, "size": args.size, "batch": Settings().cnn_batch_size}
    for name in ("plain", "flow"):
        store = work / f"store-{name}"
        ingest(str(manifest), FeatureStore(str(store)), Settings(store=str(store)), "bench")
        timing = timed(name, [str(BIN / "python"), "-m", "tests.bench.embed_run", name, str(store)])
        marked = [ln for ln in timing.stdout_tail.splitlines() if ln.startswith("RESULT ")]
        inner = json.loads(marked[-1].removeprefix("RESULT "))
        results[name] = {"timing": timing, **inner}
        loads.extend(timing.load)
    plain, flow = results["plain"], results["flow"]
    results["crops_per_s_plain"] = round(plain["crops"] / plain["timing"].wall_s, 2)
    results["crops_per_s_flow"] = round(flow["crops"] / flow["timing"].wall_s, 2)
    # Per crop: the flow also embeds the perturbed masks of cases without a repeat
    # delineation (SLN_PERTURB_REPEATS), so the two contenders may embed different counts.
    results["ratio_wall"] = round(results["crops_per_s_flow"] / results["crops_per_s_plain"], 3)
    results["ratio_inner"] = round(
        (flow["crops"] / flow["task_seconds"]) / (plain["crops"] / plain["seconds"]), 3
    )
    results["finetune"] = finetune_epoch_seconds(
        FeatureStore(str(work / "store-plain")), args.size, args.finetune_cases
    )
    loads.append(os.getloadavg()[0])
    save(args.out / f"embedding-{args.size}.json", results)
    command = (
        f"python -m tests.bench.bench_embedding --cases {args.cases} --size {args.size} "
        f"--finetune-cases {args.finetune_cases}"
    )
    lines = [
        f"Command: `{command}`. {machine_line(loads)}",
        "",
        "| contender | crops | wall s | crops/s | crops/s vs plain loop | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| plain torch loop (1 process, 1 thread) | {plain['crops']} | {plain['timing'].wall_s} "
        f"| {results['crops_per_s_plain']} | 1.0 | {plain['timing'].peak_worker_mb:.0f} |",
        f"| embed flow (Dask, GPU-resource worker) | {flow['crops']} | {flow['timing'].wall_s} "
        f"| {results['crops_per_s_flow']} | {results['ratio_wall']} "
        f"| {flow['timing'].peak_worker_mb:.0f} |",
        f"| steady state (plain loop body vs embed tasks) | | {plain['seconds']:.1f} vs "
        f"{flow['task_seconds']:.1f} "
        f"| | {results['ratio_inner']} | |",
        "",
        f"Fine-tuning at {args.size} px on {results['finetune']['device']}: "
        f"{results['finetune']['seconds_per_epoch']:.1f} s per epoch "
        f"({results['finetune']['training_cases']} training cases)",
    ]
    text = "\n".join(lines)
    (args.out / f"embedding-{args.size}.md").write_text(text + "\n")
    print(text)
    if args.write:
        write_section("embedding", text)


if __name__ == "__main__":
    main()
