"""Radiomics throughput: the bare two-process loop vs pyradiomics' batch CLI vs ``sln run``.

Same cases, same params, same regions (lesion + peritumoral ring for every mask variant),
one run, reported as ratios against the bare loop, with peak memory per process and
start-up seconds. Then a second ``sln run`` on the unchanged cohort (must extract 0 cases
in under 10% of the first run's time). Usage: ``python tests/bench/bench_radiomics.py
--cases 400 --out bench-out`` (``make bench`` runs it on BUS-BRA and on a synthetic cohort).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from tasks.config import Settings
from tasks.data.ingest import current_cohort, ingest
from tasks.data.sources.busbra import busbra_manifest
from tasks.data.store import FeatureStore
from tasks.features.imaging import case_regions
from tests.bench.common import BIN, ROOT, save, timed

WORKERS = 2


def make_manifest(kind: str, n: int, work: Path, settings: Settings) -> Path:
    if kind == "busbra":
        manifest = work / "busbra.csv"
        frame = busbra_manifest(settings.shared_data / "busbra", manifest)
        frame.head(n).to_csv(manifest, index=False)
        return manifest
    from tasks.data.sources.synthetic import generate_cohort

    return generate_cohort(work / "synthetic", n_patients=n, seed=11)


def prepare(manifest: Path, work: Path, settings: Settings) -> tuple[Path, Path, int]:
    """Untimed: resolved cases (JSON) for the bare loop, and NRRD inputs for the CLI that
    carry the same float32 image, spacing and ring masks our regions use."""
    store = FeatureStore(str(work / "prep-store"))
    ingest(str(manifest), store, settings, run_id="bench-prep")
    cases = current_cohort(store.read("cohort"))
    records = json.loads(cases.to_json(orient="records", date_format="iso"))
    cases_json = work / "cases.json"
    cases_json.write_text(json.dumps(records))
    nrrd = work / "nrrd"
    nrrd.mkdir(exist_ok=True)
    rows = []
    for case in records:
        regions = case_regions(case, settings.ring_mm, settings.ring_px)
        image_path = nrrd / f"{case['case_id']}_image.nrrd"
        sitk.WriteImage(regions[0].image, str(image_path))
        for region in regions:
            mask_path = nrrd / f"{case['case_id']}_{region.mask_variant}_{region.region}.nrrd"
            sitk.WriteImage(region.mask, str(mask_path))
            rows.append({"Image": str(image_path), "Mask": str(mask_path)})
    cli_csv = work / "cli.csv"
    pd.DataFrame(rows).to_csv(cli_csv, index=False)
    return cases_json, cli_csv, len(rows)


def summary_value(out: str, key: str) -> float:
    match = re.search(rf"^{key}: ([0-9.]+)$", out, re.M)
    return float(match.group(1)) if match else float("nan")


def bench(kind: str, n: int, out: Path) -> dict:
    settings = Settings()
    work = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    manifest = make_manifest(kind, n, work, settings)
    # The same work for all three: radiomics only, reader-1 (and real repeat) masks.
    roots = {
        "SLN_DATA_ROOTS": f"{manifest.parent}:{settings.shared_data}",
        "SLN_EMBED": "false",
        "SLN_PERTURB_REPEATS": "false",
    }
    settings = Settings(data_roots=roots["SLN_DATA_ROOTS"].split(":"))
    cases_json, cli_csv, n_regions = prepare(manifest, work, settings)
    n_cases = len(json.loads(cases_json.read_text()))
    params = str(settings.radiomics_params)

    bare = timed(
        "bare loop (2 processes)",
        [
            str(BIN / "python"),
            str(ROOT / "tests/bench/bare_loop.py"),
            str(cases_json),
            params,
            str(settings.ring_mm),
            str(settings.ring_px),
            str(WORKERS),
        ],
    )
    bare_inner = json.loads(bare.stdout_tail.strip().splitlines()[-1])["seconds"]
    head = work / "cli-head.csv"
    pd.read_csv(cli_csv).head(2).to_csv(head, index=False)
    cli_startup = timed(
        "pyradiomics CLI, 2 regions",
        [
            str(BIN / "pyradiomics"),
            str(head),
            "--param",
            params,
            "--jobs",
            str(WORKERS),
            "-o",
            str(work / "cli-head-out.csv"),
            "-f",
            "csv",
        ],
    )
    cli = timed(
        "pyradiomics CLI --jobs 2",
        [
            str(BIN / "pyradiomics"),
            str(cli_csv),
            "--param",
            params,
            "--jobs",
            str(WORKERS),
            "-o",
            str(work / "cli-out.csv"),
            "-f",
            "csv",
        ],
    )
    store = str(work / "sln-store")
    sln_cmd = [str(BIN / "sln"), "run", str(manifest), "--store", store, "--workers", str(WORKERS)]
    first = timed("sln run (2 workers)", sln_cmd, env=roots)
    second = timed("sln run again (unchanged cohort)", sln_cmd, env=roots)
    extract_s = summary_value(first.stdout_tail, "extract_seconds")
    result = {
        "dataset": kind,
        "cases": n_cases,
        "regions": n_regions,
        "bare_loop": bare,
        "bare_loop_startup_s": round(bare.wall_s - bare_inner, 2),
        "cli": cli,
        "cli_startup_s": cli_startup.wall_s,
        "sln_run": first,
        "sln_run_extract_s": extract_s,
        "sln_run_startup_s": round(first.wall_s - extract_s, 2),
        "sln_run_again": second,
        "sln_run_again_cases_new": summary_value(second.stdout_tail, "cases_new"),
        "ratio_cli": round(bare.wall_s / cli.wall_s, 3),
        "ratio_sln_wall": round(bare.wall_s / first.wall_s, 3),
        "ratio_sln_extract": round(bare_inner / extract_s, 3),
        "rerun_share": round(second.wall_s / first.wall_s, 3),
    }
    save(out / f"radiomics-{kind}.json", result)
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| dataset | cases (regions) | contender | wall s | share of bare loop "
        "| peak RSS per process MB | start-up s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        rows = [
            (r["bare_loop"], 1.0, r["bare_loop_startup_s"]),
            (r["cli"], r["ratio_cli"], r["cli_startup_s"]),
            (r["sln_run"], r["ratio_sln_wall"], r["sln_run_startup_s"]),
            (r["sln_run_again"], None, None),
        ]
        for timing, ratio, startup in rows:
            lines.append(
                f"| {r['dataset']} | {r['cases']} ({r['regions']}) | {timing.name} | "
                f"{timing.wall_s} | {'' if ratio is None else ratio} | "
                f"{timing.peak_worker_mb:.0f} | {'' if startup is None else startup} |"
            )
        lines.append(
            f"| {r['dataset']} | | sln extraction phase only | {r['sln_run_extract_s']} | "
            f"{r['ratio_sln_extract']} | | |"
        )
        lines.append(
            f"| {r['dataset']} | | re-run / first run | {r['rerun_share']} "
            f"({r['sln_run_again_cases_new']:.0f} cases extracted) | | | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--datasets", default="busbra,synthetic")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    args = parser.parse_args()
    results = [bench(kind, args.cases, args.out) for kind in args.datasets.split(",")]
    text = table(results)
    (args.out / "radiomics.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
