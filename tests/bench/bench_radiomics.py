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
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from tasks.config import Settings
from tasks.data.ingest import ingest, with_perturbation
from tasks.data.schema import REPEAT_COLUMNS
from tasks.data.store import FeatureStore
from tasks.data.tables import current_cohort
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


class MachineProbe:
    """This machine's speed just before each contender: CPU seconds of one fixed piece of
    work (the first cases' regions, ``execute`` per region, in this process, best of 2).
    The speed of these shared machines moves by up to 40% over minutes; a contender that ran
    while the probe was slow ran on a slow machine, whatever its own code did."""

    def __init__(self, prep: dict, cases: int = 2) -> None:
        from tasks.features.radiomics import load_params, make_extractor

        records = json.loads(prep["cases_json"].read_text())[:cases]
        self.regions = [r for c in records for r in case_regions(c, perturb=prep["perturb"])]
        self.extractor = make_extractor(load_params(Settings().radiomics_params))
        self.seconds: dict[str, float] = {}
        self.measure()  # warm: imports and first-call costs stay out of the probe

    def measure(self) -> float:
        best = float("inf")
        for _ in range(2):
            started = time.process_time()
            for region in self.regions:
                self.extractor.execute(region.image, region.mask)
            best = min(best, time.process_time() - started)
        return round(best, 3)

    def run(self, name: str, cmd: list[str], env: dict | None = None) -> Timing:
        self.seconds[name] = self.measure()
        return timed(name, cmd, env=env)


def summary_value(out: str, key: str) -> float:
    match = re.search(rf"^{key}: ([0-9.]+)$", out, re.M)
    return float(match.group(1)) if match else float("nan")


def cli_command(csv: Path, params: str, out: Path) -> list[str]:
    return [str(BIN / "pyradiomics"), str(csv), "--param", params, "--jobs", str(WORKERS),
            "-o", str(out), "-f", "csv"]  # fmt: skip


def bench_workload(
    kind: str, workload: str, manifest: Path, work: Path, settings: Settings, rounds: int = 2
):
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
    bare_cmd = [
        str(BIN / "python"),
        str(ROOT / "tests/bench/bare_loop.py"),
        str(prep["cases_json"]),
        params,
        str(settings.ring_mm),
        str(settings.ring_px),
        str(WORKERS),
        "1" if prep["perturb"] else "0",
    ]  # fmt: skip
    probe = MachineProbe(prep)
    head = work / f"cli-head-{workload}.csv"
    pd.read_csv(prep["cli_csv"]).head(2).to_csv(head, index=False)

    def sln_run(k: int) -> tuple[Timing, list[str]]:
        store = str(work / f"sln-store-{workload}-{k}")  # a fresh store: every case extracted
        cmd = [str(BIN / "sln"), "run", str(manifest), "--store", store, "--workers", str(WORKERS)]
        return probe.run(f"sln run --workers {WORKERS} (run {k})", cmd, env), cmd

    # This machine's speed drifts by up to 40% over minutes, so the bare loop and `sln run`
    # run in ABBA order (bare, sln, ..., sln, bare): a linear drift cancels in the sums.
    bare_name = f"bare loop: {WORKERS} processes, execute per region (run {{}})"
    bares, slns = [probe.run(bare_name.format(1), bare_cmd)], []
    first, sln_cmd = sln_run(1)
    slns.append(first)
    second = probe.run("sln run again (unchanged cohort)", sln_cmd, env)
    cli_startup = timed("CLI, 2 regions", cli_command(head, params, work / "cli-head.out"))
    cli = probe.run(
        f"pyradiomics CLI --jobs {WORKERS}",
        cli_command(prep["cli_csv"], params, work / f"cli-{workload}.out"),
    )
    for k in range(2, rounds + 1):
        slns.append(sln_run(k)[0])
        bares.append(probe.run(bare_name.format(k), bare_cmd))
    bare_inner = [json.loads(b.stdout_tail.strip().splitlines()[-1])["seconds"] for b in bares]
    extract_s = [summary_value(s.stdout_tail, "extract_seconds") for s in slns]
    bare_wall = sum(b.wall_s for b in bares) / len(bares)
    sln_wall = sum(s.wall_s for s in slns) / len(slns)
    split = {key: summary_value(first.stdout_tail, key) for key in SPLIT_KEYS}
    pairs = zip(bares, slns, strict=True)  # each sln run next to the bare run beside it
    result = {
        "dataset": kind,
        "workload": workload,
        "cases": prep["cases"],
        "regions": prep["regions"],
        "perturbed_masks": prep["perturb"],
        "bare_runs": bares,
        "bare_loop_startup_s": round(bares[0].wall_s - bare_inner[0], 2),
        "cli": cli,
        "cli_startup_s": cli_startup.wall_s,
        "sln_runs": slns,
        "sln_run_extract_s": extract_s,
        "sln_run_startup_s": round(first.wall_s - extract_s[0], 2),
        "sln_run_split": split,
        "bare_loop_inner_s": bare_inner,
        "sln_run_again": second,
        "sln_run_again_cases_new": summary_value(second.stdout_tail, "cases_new"),
        "probes": probe.seconds,
        "bare_wall_mean": round(bare_wall, 2),
        "sln_wall_mean": round(sln_wall, 2),
        "speed_cli": round(bare_wall / cli.wall_s, 3),
        "speed_sln_wall": round(bare_wall / sln_wall, 3),
        "speed_sln_pairs": [round(b.wall_s / s.wall_s, 3) for b, s in pairs],
        "speed_sln_extract": round(sum(bare_inner) / sum(extract_s), 3),
        "rerun_share": round(second.wall_s / first.wall_s, 3),
        "sln_vs_cli": round(cli.wall_s / sln_wall, 3),
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
    columns = [split_rows(r["sln_runs"][0], r["sln_run_split"]) for r in results]
    for i, (label, _) in enumerate(columns[0]):
        lines.append(f"| {label} | " + " | ".join(col[i][1] for col in columns) + " |")
    bare = [
        f"{r['bare_loop_startup_s']:.1f} + {r['bare_loop_inner_s'][0]:.1f}; "
        f"CPU {r['bare_runs'][0].cpu_s:.1f}"
        for r in results
    ]
    lines.append("| bare loop: start-up + extraction s; CPU s | " + " | ".join(bare) + " |")
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    lines = [
        "| dataset / workload | cases (regions) | contender | wall s | speed vs bare loop "
        "| CPU s, all processes | peak RSS MB: main / largest child | start-up s "
        "| machine probe s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        label = f"{r['dataset']} / {r['workload']}"
        size = f"{r['cases']} ({r['regions']})"
        bares, slns = r["bare_runs"], r["sln_runs"]
        # In the order they ran (ABBA); an sln run's speed is against its neighbouring bare run.
        ordered = [(bares[0], "1.0", r["bare_loop_startup_s"])]
        ordered.append((slns[0], r["speed_sln_pairs"][0], r["sln_run_startup_s"]))
        ordered += [(r["sln_run_again"], "", ""), (r["cli"], "", r["cli_startup_s"])]
        for k in range(1, len(slns)):
            ordered += [(slns[k], r["speed_sln_pairs"][k], ""), (bares[k], "1.0", "")]
        for timing, speed, startup in ordered:
            lines.append(
                f"| {label} | {size} | {timing.name} | {timing.wall_s} | {speed} | "
                f"{timing.cpu_s} | {timing.main_mb:.0f} / {timing.children_mb:.0f} | {startup} | "
                f"{r['probes'].get(timing.name, '')} |"
            )
        n = len(slns)
        for name, wall, speed in (
            (f"**bare loop, mean of {len(bares)}**", r["bare_wall_mean"], 1.0),
            (f"**sln run, mean of {n}**", r["sln_wall_mean"], r["speed_sln_wall"]),
            ("**pyradiomics CLI --jobs 2** (once, between them)", r["cli"].wall_s, r["speed_cli"]),
            (f"sln extraction phase only, sum of {n}", sum(r["sln_run_extract_s"]),
             r["speed_sln_extract"]),
        ):  # fmt: skip
            lines.append(f"| {label} | | {name} | {wall:.2f} | **{speed}** | | | | |")
        versus_cli = f"| {label} | | sln vs CLI (CLI wall / mean sln wall) | | {r['sln_vs_cli']} |"
        lines.append(versus_cli + " | | | |")
        lines.append(
            f"| {label} | | re-run / first run | {r['rerun_share']:.1%} "
            f"({r['sln_run_again_cases_new']:.0f} cases extracted) | | | | | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--datasets", default="busbra")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--profile-cases", type=int, default=20)
    parser.add_argument(
        "--rounds", type=int, default=2, help="bare loop and sln runs each (ABBA order)"
    )
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
            result, prep = bench_workload(kind, workload, manifest, work, settings, args.rounds)
            save(args.out / f"radiomics-{kind}-{workload}.json", result)
            # kept for tests.bench.worker_layers (make bench runs it next, on the icc cases)
            shutil.copy(prep["cases_json"], args.out / f"cases-{kind}-{workload}.json")
            results.append(result)
            for timing in (*result["bare_runs"], *result["sln_runs"], result["cli"]):
                loads.extend(timing.load)
            if workload == "icc" and args.profile_cases:
                profiles.append((kind, profile_table(prep, args.profile_cases)))
    split = f"Where `sln run`'s wall time went (from its summary):\n\n{split_table(results)}"
    text = f"{table(results)}\n\n{server_line}\n\n{split}"
    command = (
        f"python -m tests.bench.bench_radiomics --cases {args.cases} --datasets "
        f"{args.datasets} --workloads {args.workloads} --rounds {args.rounds}"
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
