"""Radiomics throughput: ``sln run`` vs the bare per-region pyradiomics loop vs pyradiomics'
batch CLI, on two workloads, same inputs, one run.

- ``icc``: what the demo extracts for the ICC filter: both regions for reader 1 plus the
  reader-2 / repeat masks, or perturbed reader-1 masks where a cohort has none (BUS-BRA).
- ``reader1``: both regions, reader 1 only.

All three contenders measure the same regions (``case_regions``: the same float32 image,
spacing, masks and rings) with the same params. Reported per workload: wall seconds, speed
relative to the bare loop (>1 is faster), peak RSS of each contender's main process and of its
largest child (pool process, Dask worker), start-up; then ``sln run`` again on the unchanged
cohort (share of the first run). Also a profile table (seconds per feature class and for the
filters, per region). Tables go to ``--out`` and, with ``--write``, into BENCHMARKS.md.

Usage: ``python -m tests.bench.bench_radiomics --cases 400 --datasets busbra --write``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from tasks.config import Settings
from tasks.data.ingest import current_cohort, ingest, with_perturbation
from tasks.data.schema import REPEAT_COLUMNS
from tasks.data.store import FeatureStore
from tasks.features.imaging import case_regions
from tests.bench.common import BIN, ROOT, Timing, machine_line, save, timed, write_section

WORKERS = 2
WORKLOADS = ("icc", "reader1")
BENCH_KEY = "benchmark-only-pseudonym-key-not-a-secret"  # pseudonymises bench case ids only


def make_manifest(kind: str, n: int, work: Path, settings: Settings) -> Path:
    if kind == "busbra":
        from tasks.data.sources.busbra import busbra_manifest

        manifest = work / "busbra.csv"
        frame = busbra_manifest(settings.shared_data / "busbra", manifest)
        frame.head(n).to_csv(manifest, index=False)
        return manifest
    from tasks.data.sources.synthetic import generate_cohort

    return generate_cohort(work / "synthetic", n_patients=n, seed=11)


def reader1_manifest(manifest: Path) -> Path:
    """The same cases without reader-2 / repeat masks (same folder: relative paths hold)."""
    frame = pd.read_csv(manifest)
    out = manifest.with_name(f"{manifest.stem}-reader1.csv")
    frame.drop(columns=[c for c in REPEAT_COLUMNS if c in frame]).to_csv(out, index=False)
    return out


def prepare(manifest: Path, work: Path, settings: Settings, name: str) -> dict:
    """Untimed: resolved cases (JSON) for the bare loop, NRRD inputs for the CLI that carry
    the same float32 image, spacing and masks as our regions, and the perturb flag."""
    store = FeatureStore(str(work / f"prep-store-{name}"))
    ingest(str(manifest), store, settings, run_id=f"bench-prep-{name}")
    cases = current_cohort(store.read("cohort"))
    perturb = with_perturbation(cases, settings).perturb_repeats
    records = json.loads(cases.to_json(orient="records", date_format="iso"))
    cases_json = work / f"cases-{name}.json"
    cases_json.write_text(json.dumps(records))
    nrrd = work / "nrrd"
    nrrd.mkdir(exist_ok=True)
    rows = []
    for case in records:
        regions = case_regions(case, settings.ring_mm, settings.ring_px, perturb)
        image_path = nrrd / f"{case['case_id']}_image.nrrd"
        sitk.WriteImage(regions[0].image, str(image_path))
        for region in regions:
            mask_path = nrrd / f"{case['case_id']}_{region.mask_variant}_{region.region}.nrrd"
            sitk.WriteImage(region.mask, str(mask_path))
            rows.append({"Image": str(image_path), "Mask": str(mask_path)})
    cli_csv = work / f"cli-{name}.csv"
    pd.DataFrame(rows).to_csv(cli_csv, index=False)
    return {"cases_json": cases_json, "cli_csv": cli_csv, "regions": len(rows),
            "cases": len(records), "perturb": perturb}  # fmt: skip


def summary_value(out: str, key: str) -> float:
    match = re.search(rf"^{key}: ([0-9.]+)$", out, re.M)
    return float(match.group(1)) if match else float("nan")


def cli_command(csv: Path, params: str, out: Path) -> list[str]:
    return [str(BIN / "pyradiomics"), str(csv), "--param", params, "--jobs", str(WORKERS),
            "-o", str(out), "-f", "csv"]  # fmt: skip


def bench_workload(kind: str, workload: str, manifest: Path, work: Path, settings: Settings):
    env = {
        "SLN_DATA_ROOTS": f"{manifest.parent}:{settings.shared_data}",
        "SLN_EMBED": "false",
        # The contenders' features only: no second, image-normalised pass (harmonisation).
        "SLN_HARMONISATION": "none",
        "SLN_PERTURB_REPEATS": "true" if workload == "icc" else "false",
    }
    if workload == "reader1":
        manifest = reader1_manifest(manifest)
    run_settings = Settings(
        data_roots=env["SLN_DATA_ROOTS"].split(":"), perturb_repeats=workload == "icc"
    )
    prep = prepare(manifest, work, run_settings, workload)
    params = str(settings.radiomics_params)
    bare = timed(
        f"bare loop: {WORKERS} processes, execute per region",
        [
            str(BIN / "python"),
            str(ROOT / "tests/bench/bare_loop.py"),
            str(prep["cases_json"]),
            params,
            str(settings.ring_mm),
            str(settings.ring_px),
            str(WORKERS),
            "1" if prep["perturb"] else "0",
        ],  # fmt: skip
    )
    bare_inner = json.loads(bare.stdout_tail.strip().splitlines()[-1])["seconds"]
    head = work / f"cli-head-{workload}.csv"
    pd.read_csv(prep["cli_csv"]).head(2).to_csv(head, index=False)
    cli_startup = timed("CLI, 2 regions", cli_command(head, params, work / "cli-head.out"))
    cli = timed(
        f"pyradiomics CLI --jobs {WORKERS}",
        cli_command(prep["cli_csv"], params, work / f"cli-{workload}.out"),
    )
    store = str(work / f"sln-store-{workload}")
    sln = [str(BIN / "sln"), "run", str(manifest), "--store", store, "--workers", str(WORKERS)]
    first = timed(f"sln run --workers {WORKERS}", sln, env=env)
    second = timed("sln run again (unchanged cohort)", sln, env=env)
    extract_s = summary_value(first.stdout_tail, "extract_seconds")
    split = {key: summary_value(first.stdout_tail, key) for key in SPLIT_KEYS}
    result = {
        "dataset": kind,
        "workload": workload,
        "cases": prep["cases"],
        "regions": prep["regions"],
        "perturbed_masks": prep["perturb"],
        "bare_loop": bare,
        "bare_loop_startup_s": round(bare.wall_s - bare_inner, 2),
        "cli": cli,
        "cli_startup_s": cli_startup.wall_s,
        "sln_run": first,
        "sln_run_extract_s": extract_s,
        "sln_run_startup_s": round(first.wall_s - extract_s, 2),
        "sln_run_split": split,
        "bare_loop_inner_s": bare_inner,
        "sln_run_again": second,
        "sln_run_again_cases_new": summary_value(second.stdout_tail, "cases_new"),
        "speed_cli": round(bare.wall_s / cli.wall_s, 3),
        "speed_sln_wall": round(bare.wall_s / first.wall_s, 3),
        "speed_sln_extract": round(bare_inner / extract_s, 3),
        "rerun_share": round(second.wall_s / first.wall_s, 3),
        "sln_vs_cli": round(cli.wall_s / first.wall_s, 3),
    }
    return result, prep


# What `sln run` prints about where its time went (flows/cohort.py's summary).
SPLIT_KEYS = (
    "seconds",
    "extract_seconds",
    "ingest_plan_seconds",
    "cluster_start_seconds",
    "cluster_stop_seconds",
    "commit_seconds",
)


def split_rows(run: Timing, t: dict) -> list[tuple[str, str]]:
    """Where one ``sln run``'s wall time went. The commits run in the flow process while
    the workers go on extracting, so they overlap the extraction phase: shown inside it."""
    cluster = t["cluster_start_seconds"] + t["cluster_stop_seconds"]
    wall = run.wall_s

    def part(seconds: float) -> str:
        return f"{seconds:.1f} ({seconds / wall:.0%})"

    return [
        (
            "process start-up and exit (imports, Prefect flow run, summary)",
            part(wall - t["seconds"]),
        ),
        ("ingest and planning (flow process)", part(t["ingest_plan_seconds"])),
        ("local cluster start + shutdown", part(cluster)),
        (
            "extraction phase: chunks on the workers, to the last commit",
            part(t["extract_seconds"] - cluster),
        ),
        (
            "of which the flow process was committing (overlaps the workers)",
            part(t["commit_seconds"]),
        ),
        ("**wall**", f"{wall:.1f}"),
        (
            "CPU s: flow process (commits, scheduler, nannies) / workers",
            f"{run.main_cpu_s:.1f} / {run.cpu_s - run.main_cpu_s:.1f}",
        ),
    ]


def split_table(results: list[dict]) -> str:
    """Where each workload's ``sln run`` wall time went, next to the bare loop's."""
    heads = [f"{r['dataset']} / {r['workload']}" for r in results]
    lines = [
        "| part of `sln run` | " + " | ".join(f"{h}: s (share)" for h in heads) + " |",
        "| --- |" + " --- |" * len(results),
    ]
    columns = [split_rows(r["sln_run"], r["sln_run_split"]) for r in results]
    for i, (label, _) in enumerate(columns[0]):
        lines.append(f"| {label} | " + " | ".join(col[i][1] for col in columns) + " |")
    bare = [
        f"{r['bare_loop_startup_s']:.1f} + {r['bare_loop_inner_s']:.1f}; "
        f"CPU {r['bare_loop'].cpu_s:.1f}"
        for r in results
    ]
    lines.append("| bare loop: start-up + extraction s; CPU s | " + " | ".join(bare) + " |")
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    lines = [
        "| dataset / workload | cases (regions) | contender | wall s | speed vs bare loop "
        "| CPU s, all processes | peak RSS MB: main / largest child | start-up s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        label = f"{r['dataset']} / {r['workload']}"
        size = f"{r['cases']} ({r['regions']})"
        for timing, speed, startup in (
            (r["bare_loop"], 1.0, r["bare_loop_startup_s"]),
            (r["cli"], r["speed_cli"], r["cli_startup_s"]),
            (r["sln_run"], r["speed_sln_wall"], r["sln_run_startup_s"]),
            (r["sln_run_again"], None, None),
        ):
            lines.append(
                f"| {label} | {size} | {timing.name} | {timing.wall_s} | "
                f"{'' if speed is None else speed} | {timing.cpu_s} | {timing.main_mb:.0f} / "
                f"{timing.children_mb:.0f} | {'' if startup is None else startup} |"
            )
        lines.append(
            f"| {label} | | sln extraction phase only | {r['sln_run_extract_s']} | "
            f"{r['speed_sln_extract']} | | | |"
        )
        versus_cli = f"| {label} | | sln vs CLI (CLI wall / sln wall) | | {r['sln_vs_cli']} |"
        lines.append(versus_cli + " | | |")
        lines.append(
            f"| {label} | | re-run / first run | {r['rerun_share']:.1%} "
            f"({r['sln_run_again_cases_new']:.0f} cases extracted) | | | | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--datasets", default="busbra")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--profile-cases", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    os.environ.setdefault("SLN_PSEUDONYM_KEY", BENCH_KEY)  # ingest refuses to run without one
    settings = Settings()
    results, loads, profiles = [], [os.getloadavg()[0]], []
    # The Prefect server is up before any contender runs, as for a nightly run under
    # `sln serve`: a cold start (about 15 s) would otherwise land in the first run's wall.
    server = timed("Prefect server", [str(BIN / "sln"), "server"])
    started = (
        "already running"
        if "already running" in server.stdout_tail
        else (f"started ({server.wall_s:.1f} s)")
    )
    server_line = (
        f"The local Prefect server was {started} before the contenders and stays up, as for "
        "nightly runs under `sln serve`: no wall time in the table holds its start."
    )
    for kind in args.datasets.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
        manifest = make_manifest(kind, args.cases, work, settings)
        for workload in args.workloads.split(","):
            result, prep = bench_workload(kind, workload, manifest, work, settings)
            save(args.out / f"radiomics-{kind}-{workload}.json", result)
            results.append(result)
            for key in ("bare_loop", "cli", "sln_run", "sln_run_again"):
                loads.extend(result[key].load)
            if workload == "icc" and args.profile_cases:
                profiles.append((kind, profile_table(prep, args.profile_cases)))
    split = f"Where `sln run`'s wall time went (from its summary):\n\n{split_table(results)}"
    text = f"{table(results)}\n\n{server_line}\n\n{split}"
    command = (
        f"python -m tests.bench.bench_radiomics --cases {args.cases} --datasets "
        f"{args.datasets} --workloads {args.workloads}"
    )
    header = f"Command: `{command}`. {machine_line(loads)}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "radiomics.md").write_text(f"{header}\n\n{text}\n")
    print(header, text, sep="\n\n")
    profile_text = "\n\n".join(f"{kind}, ICC workload:\n\n{t}" for kind, t in profiles)
    print(profile_text)
    if args.write:
        write_section("radiomics", f"{header}\n\n{text}")
        if profile_text:
            write_section("radiomics-profile", f"{header}\n\n{profile_text}")


def profile_table(prep: dict, n: int) -> str:
    from tasks.features.radiomics import load_params
    from tests.bench.profile_radiomics import cpu_versus_execute, profile
    from tests.bench.profile_radiomics import table as profile_md

    cases = json.loads(prep["cases_json"].read_text())[:n]
    params = load_params(Settings().radiomics_params)
    clock = profile(cases, params, prep["perturb"])
    versus = cpu_versus_execute(cases, params, prep["perturb"])
    return f"{len(cases)} cases, one process:\n\n{profile_md(clock)}\n\n{versus}"


if __name__ == "__main__":
    main()
