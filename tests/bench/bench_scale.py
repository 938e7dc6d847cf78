"""Scale: does radiomics stay flat per case as the cohort grows, and do planning and commits
stay fast as the feature table grows?

1. ``sln run`` (radiomics only, 2 workers) on synthetic cohorts of growing size (default
   500, 1,000, 2,000 cases): wall, extraction seconds, cases/s, seconds per case, peak RSS of
   the flow process and of the largest worker.
2. A store holding ``--store-cases`` synthesised cases (cohort-like rows in memory; their
   ``radiomics`` rows written with the real feature columns and random values, no images):
   planning time (the step's ``plan_radiomics``: key columns only), then ``--chunks``
   successive chunk commits (``commit_radiomics``, 20 new cases each) timed one by one
   with the table's version and file count, then the files compacted and the Delta log
   checkpointed (``FeatureStore.compact``, which every run does once a table holds
   ``compact_at_files`` files) and commits timed again.

Usage: ``python -m tests.bench.bench_scale --sizes 500,1000,2000 --store-cases 100000
--write`` (``make bench-scale``). Tables go to ``--out`` and, with ``--write``, BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.config import Settings
from tasks.data.store import FeatureStore
from tasks.data.tables import RADIOMICS
from tests.bench.bench_radiomics import BENCH_KEY, WORKERS, summary_value
from tests.bench.common import BIN, ROOT, machine_line, save, timed, write_section

CHUNK = 20  # cases per committed chunk (Settings.chunk_size)
REGIONS = ("intratumoral", "peritumoral")


def run_sizes(sizes: list[int], work: Path) -> tuple[list[dict], list[float]]:
    from tasks.data.sources.synthetic import generate_cohort

    # One radiomics pass (no image-normalised harmonisation pass): the scale of one pass.
    env = {"SLN_EMBED": "false", "SLN_PERTURB_REPEATS": "true", "SLN_HARMONISATION": "none"}
    results, loads = [], []
    for n in sizes:
        manifest = generate_cohort(work / f"cohort-{n}", n_patients=n, seed=5)
        env["SLN_DATA_ROOTS"] = str(manifest.parent)
        store = str(work / f"store-{n}")
        cmd = [str(BIN / "sln"), "run", str(manifest), "--store", store]
        first = timed(f"sln run, {n} cases", [*cmd, "--workers", str(WORKERS)], env=env)
        loads.extend(first.load)
        extract = summary_value(first.stdout_tail, "extract_seconds")
        cases = summary_value(first.stdout_tail, "cases_new")
        results.append(
            {
                "cases": n,
                "run": first,
                "extract_s": extract,
                "cases_extracted": cases,
                "cases_per_s": round(n / first.wall_s, 3),
                "s_per_case_extract": round(extract / n, 4),
                "flow_mb": first.main_mb,
                **flow_memory(first.main_series),
                "worker_mb": first.children_mb,
            }
        )
    return results, loads


def flow_memory(series: list[tuple[float, float]]) -> dict:
    """The flow process's RSS over the run: its median over the run's middle half and its
    last quarter (the level it runs at), and when its peak came (a moment, such as a commit
    or the end-of-run compaction, or the end of a growth)."""
    if not series:
        return {}
    seconds = np.array([t for t, _ in series])
    rss = np.array([mb for _, mb in series])
    middle = rss[(seconds >= 0.25 * seconds[-1]) & (seconds <= 0.75 * seconds[-1])]
    peak = int(np.argmax(rss))
    return {
        "flow_mid_median_mb": float(np.median(middle if middle.size else rss)),
        "flow_last_quarter_median_mb": float(np.median(rss[seconds >= 0.75 * seconds[-1]])),
        "flow_peak_at_s": float(seconds[peak]),
        "flow_peak_at_share": round(float(seconds[peak] / seconds[-1]), 3),
    }


def template_rows(work: Path) -> list[dict]:
    """Real radiomics rows of one synthetic case: the columns and types a store holds."""
    from tasks.data.sources.synthetic import generate_cohort
    from tasks.features.radiomics import extract_case, load_params

    manifest = generate_cohort(work / "template", n_patients=1, seed=3, repeat_share=0.0)
    case = pd.read_csv(manifest).iloc[0].to_dict()
    for column in ("bmus_image", "bmus_mask"):
        case[column] = str(manifest.parent / case[column])
        case[f"{column}_sha256"] = f"sha-{column}"
    return extract_case(case, load_params(Settings().radiomics_params))


def synthetic_rows(template: list[dict], first: int, count: int, rng) -> pd.DataFrame:
    """``count`` cases' reader-1 rows (lesion, ring) with random feature values."""
    ids = np.repeat([f"S{first + i:07d}" for i in range(count)], 2)
    columns = list(template[0])
    features = [c for c in columns if isinstance(template[0][c], float)]
    meta = pd.DataFrame([{c: template[0][c] for c in columns if c not in features}] * len(ids))
    meta["case_id"] = ids
    meta["image_sha256"] = [f"img-{c}" for c in ids]
    meta["mask_sha256"] = [f"mask-{c}" for c in ids]
    meta["region"] = list(REGIONS) * count
    values = pd.DataFrame(rng.normal(size=(len(ids), len(features))), columns=features)
    return pd.concat([meta, values], axis=1)[columns]


def cohort_rows(count: int) -> pd.DataFrame:
    """What the planner reads of the cohort: ids, dates, the reader-1 file and hashes."""
    ids = [f"S{i:07d}" for i in range(count)]
    return pd.DataFrame(
        {
            "case_id": ids,
            "exam_date": "2024-01-01",
            "bmus_image": [f"images/{c}.png" for c in ids],
            "bmus_mask": [f"masks/{c}.png" for c in ids],
            "bmus_image_sha256": [f"img-{c}" for c in ids],
            "bmus_mask_sha256": [f"mask-{c}" for c in ids],
        }
    )


def files(store: FeatureStore) -> int:
    return len(store.table(RADIOMICS).file_uris())


def store_scale(n_cases: int, chunks: int, work: Path) -> dict:
    from tasks.features.plan import ChunkResult
    from tasks.features.radiomics import commit_radiomics, current_params_hash, plan_radiomics

    rng = np.random.default_rng(0)
    template = template_rows(work)
    store = FeatureStore(str(work / "store-small"))
    # Reader 1 only (no perturbed masks), rows carrying the current params hash: a fully
    # extracted store, so planning finds only the new cases.
    settings = Settings(store=store.root, perturb_repeats=False)
    phash = current_params_hash(settings)

    def commit_series(offset: int) -> list[dict]:
        """``chunks`` successive 20-case commits on ``store`` (the one bound at the call)."""
        out = []
        for k in range(chunks):
            frame = synthetic_rows(template, offset + k * CHUNK, CHUNK, rng)
            frame["params_hash"] = phash
            began = time.perf_counter()
            commit_radiomics(ChunkResult(frame.to_dict("records"), []), store, "bench")
            out.append(
                {
                    "seconds": round(time.perf_counter() - began, 3),
                    "version": store.version(RADIOMICS),
                    "files": files(store),
                }
            )
        return out

    # The same commits on a store that starts empty: the baseline a large table is held to.
    small = commit_series(0)
    store = FeatureStore(str(work / "store-100k"))
    started = time.perf_counter()
    batch = 10_000
    for first in range(0, n_cases, batch):
        frame = synthetic_rows(template, first, min(batch, n_cases - first), rng)
        # What commit_chunk adds, without a dict per row (10,000 x 760 values per batch).
        extra = {"run_id": "bench-seed", "code_version": "bench"}
        frame = frame.assign(params_hash=phash, **extra)
        frame[RADIOMICS.timestamp] = pd.Timestamp.now(tz="UTC")
        store.insert_new(RADIOMICS, frame)
    seed_s = time.perf_counter() - started
    cohort = cohort_rows(n_cases + chunks * CHUNK)
    started = time.perf_counter()
    plan, _ = plan_radiomics(cohort, store, settings)
    plan_s = time.perf_counter() - started

    before = commit_series(n_cases)
    began = time.perf_counter()
    compacted = store.compact(RADIOMICS, at_files=0)  # what a run does at compact_at_files
    maintain_s = time.perf_counter() - began
    after = commit_series(n_cases + chunks * CHUNK)
    return {
        "store_cases": n_cases,
        "store_rows": n_cases * 2,
        "seed_s": round(seed_s, 1),
        "plan_s": round(plan_s, 2),
        "plan_todo": len(plan.todo),
        "commits_small": small,
        "commits_before": before,
        "compact_checkpoint_s": round(maintain_s, 2),
        "compacted": compacted,
        "commits_after": after,
    }


def plot(sizes: list[dict], store: dict | None, path: Path) -> Path:
    """Per-case extraction time and worker memory against cohort size; each commit's seconds
    in order (empty store, then the large store before and after compaction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4))
    if sizes:
        n = [r["cases"] for r in sizes]
        left.plot(n, [r["s_per_case_extract"] for r in sizes], "o-", label="extraction s/case")
        left.set_xlabel("cohort size (cases)")
        left.set_ylabel("extraction seconds per case")
        left.set_ylim(bottom=0)
        memory = left.twinx()
        memory.plot(n, [r["worker_mb"] for r in sizes], "s--", color="tab:red")
        memory.set_ylabel("largest worker peak RSS (MB)", color="tab:red")
        memory.set_ylim(bottom=0)
        left.set_title("sln run, radiomics only, 2 workers")
        for r in sizes:
            series = r["run"].main_series
            if series:
                end = series[-1][0] or 1.0
                middle.plot([t / end for t, _ in series], [mb for _, mb in series], lw=0.7,
                            label=f"{r['cases']:,} cases ({end:.0f} s)")  # fmt: skip
        middle.set_xlabel("share of the run's wall time")
        middle.set_ylabel("flow process RSS (MB)")
        middle.set_ylim(bottom=0)
        middle.legend()
        middle.set_title("flow process memory over each run")
    if store:
        start = 0
        for key, label in (
            ("commits_small", "empty store"),
            ("commits_before", f"{store['store_cases']:,} cases stored"),
            ("commits_after", "same, after compaction"),
        ):
            secs = [c["seconds"] for c in store[key]]
            right.plot(range(start, start + len(secs)), secs, ".-", label=label)
            start += len(secs)
        right.set_xlabel("commit (20 cases each), in order")
        right.set_ylabel("seconds")
        right.set_ylim(bottom=0)
        right.legend()
        right.set_title("chunk commits as the table grows")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def tables(sizes: list[dict], store: dict | None) -> str:
    lines = [
        "| cases | wall s | extraction s | cases/s (wall) | extraction s/case "
        "| peak RSS MB: flow / largest worker | flow RSS MB: median mid-run / last quarter "
        "| flow peak at |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sizes:
        level = peak_at = "n/a"
        if "flow_mid_median_mb" in r:
            level = f"{r['flow_mid_median_mb']:.0f} / {r['flow_last_quarter_median_mb']:.0f}"
            peak_at = f"{r['flow_peak_at_s']:.0f} s ({r['flow_peak_at_share']:.0%} of the run)"
        lines.append(
            f"| {r['cases']} | {r['run'].wall_s} | {r['extract_s']} | {r['cases_per_s']} | "
            f"{r['s_per_case_extract']} | {r['flow_mb']:.0f} / {r['worker_mb']:.0f} | "
            f"{level} | {peak_at} |"
        )
    if len(sizes) > 1:
        per_case = [r["s_per_case_extract"] for r in sizes]
        lines.append(
            f"\nExtraction s/case, largest over smallest cohort: "
            f"{per_case[-1] / per_case[0]:.2f} (1.00 = flat)."
        )
    if store:
        b, a = store["commits_before"], store["commits_after"]

        def span(series: list[dict]) -> str:
            secs = [c["seconds"] for c in series]
            half = max(len(secs) // 2, 1)
            return (
                f"first half median {np.median(secs[:half]):.2f} s, second half median "
                f"{np.median(secs[half:] or secs):.2f} s; versions {series[0]['version']}-"
                f"{series[-1]['version']}, files {series[0]['files']}-{series[-1]['files']}"
            )

        lines += [
            "",
            f"Store of {store['store_cases']:,} synthesised cases ({store['store_rows']:,} "
            f"radiomics rows, real columns, written in {store['seed_s']} s):",
            "",
            "| step | result |",
            "| --- | --- |",
            f"| planning (`plan_radiomics`, key columns) | {store['plan_s']} s "
            f"({store['plan_todo']} cases to do) |",
            f"| {len(store['commits_small'])} chunk commits of {CHUNK} cases on an empty store "
            f"(baseline) | {span(store['commits_small'])} |",
            f"| {len(b)} chunk commits of {CHUNK} cases | {span(b)} |",
            f"| compaction + log checkpoint (`FeatureStore.compact`) | "
            f"{store['compact_checkpoint_s']} s, {store['compacted']['files_before']} files "
            f"into {store['compacted']['files_after']} |",
            f"| {len(a)} chunk commits after it | {span(a)} |",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="500,1000,2000")
    parser.add_argument("--store-cases", type=int, default=100_000)
    parser.add_argument("--chunks", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    os.environ.setdefault("SLN_PSEUDONYM_KEY", BENCH_KEY)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    sizes = [int(s) for s in args.sizes.split(",") if s]
    loads = [os.getloadavg()[0]]
    results, run_loads = run_sizes(sizes, work) if sizes else ([], [])
    loads += run_loads
    store = store_scale(args.store_cases, args.chunks, work) if args.store_cases else None
    loads.append(os.getloadavg()[0])
    save(args.out / "scale.json", {"sizes": results, "store": store})
    command = (
        f"python -m tests.bench.bench_scale --sizes {args.sizes} --store-cases "
        f"{args.store_cases} --chunks {args.chunks}"
    )
    text = f"Command: `{command}`. {machine_line(loads)}\n\n{tables(results, store)}"
    png = plot(results, store, args.out / "scale.png")
    (args.out / "scale.md").write_text(text + "\n")
    print(text)
    if args.write:
        shutil.copy(png, ROOT / "docs" / "bench-scale.png")
        write_section(
            "scale", f"{text}\n\n![scale: per-case time, memory, commits](docs/bench-scale.png)"
        )


if __name__ == "__main__":
    main()
