"""Baseline (a): the bare per-region pyradiomics loop. Two processes, each extracting half
the cases: the same regions our step measures (read by ``case_regions``, so the same float32
image, spacing and masks), one ``RadiomicsFeatureExtractor.execute`` per region, SimpleITK at
one thread; no orchestration at all. This is how a radiomics team runs pyradiomics on its
own; ``sln run`` filters each image once instead (tasks/features/radiomics_shared.py).

Usage: ``bare_loop.py CASES_JSON PARAMS RING_MM RING_PX WORKERS PERTURB`` (PERTURB 0/1).
Prints one JSON line: rows, extraction seconds (first case started to last finished).
"""

from __future__ import annotations

import json
import sys
import time
from multiprocessing import get_context


def _half(args):
    cases, params_path, ring_mm, ring_px, perturb = args
    from tasks.features.imaging import case_regions
    from tasks.features.radiomics import limit_threads, load_params, make_extractor

    limit_threads()
    extractor = make_extractor(load_params(params_path))
    first = time.monotonic()  # system-wide on Linux: comparable across processes
    rows = 0
    for case in cases:
        try:
            for region in case_regions(case, ring_mm, ring_px, perturb):
                extractor.execute(region.image, region.mask)
                rows += 1
        except Exception:  # the same cases fail in every contender; count rows only
            pass
    return rows, first, time.monotonic()


def main() -> None:
    cases_json, params_path, ring_mm, ring_px, workers = sys.argv[1:6]
    perturb = len(sys.argv) > 6 and sys.argv[6] == "1"
    cases = json.loads(open(cases_json).read())
    n = int(workers)
    halves = [cases[i::n] for i in range(n)]
    jobs = [(h, params_path, float(ring_mm), int(ring_px), perturb) for h in halves]
    with get_context("spawn").Pool(n) as pool:
        parts = pool.map(_half, jobs)
    rows = sum(p[0] for p in parts)
    seconds = max(p[2] for p in parts) - min(p[1] for p in parts)
    print(json.dumps({"rows": rows, "seconds": seconds}))


if __name__ == "__main__":
    main()
