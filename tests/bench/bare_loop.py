"""Baseline (a): the bare loop. Two processes, each extracting half the cases with the
same extraction function and SimpleITK at one thread; no orchestration at all."""

from __future__ import annotations

import json
import sys
import time
from multiprocessing import get_context


def _half(args):
    cases, params_path, ring_mm, ring_px = args
    from tasks.features.radiomics import extract_case, limit_threads, load_params, make_extractor

    limit_threads()
    params = load_params(params_path)
    extractor = make_extractor(params)
    first = time.time()  # wall clock: comparable across processes
    rows = 0
    for case in cases:
        try:
            rows += len(extract_case(case, params, ring_mm, ring_px, extractor=extractor))
        except Exception:  # the same cases fail in every contender; count rows only
            pass
    return rows, first, time.time()


def main() -> None:
    cases_json, params_path, ring_mm, ring_px, workers = sys.argv[1:6]
    cases = json.loads(open(cases_json).read())
    n = int(workers)
    halves = [cases[i::n] for i in range(n)]
    with get_context("spawn").Pool(n) as pool:
        parts = pool.map(_half, [(h, params_path, float(ring_mm), int(ring_px)) for h in halves])
    rows = sum(p[0] for p in parts)
    # Extraction time: first case started to last case finished, start-up excluded.
    seconds = max(p[2] for p in parts) - min(p[1] for p in parts)
    print(json.dumps({"rows": rows, "seconds": seconds}))


if __name__ == "__main__":
    main()
