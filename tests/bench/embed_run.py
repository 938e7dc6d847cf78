"""One contender of the embedding benchmark, run as its own process (for memory sampling).

``plain STORE``: a plain torch loop (crops, batches, forward) in one process, one thread.
``flow STORE``: the ``extract-features`` Prefect flow (embeddings only) on a local Dask
cluster (the GPU-resource worker embeds, one thread). Both embed every current case with
the start weights at the same input size and batch size; each prints a JSON line with its
timings.
"""

from __future__ import annotations

import json
import sys
import time


def plain(store_root: str) -> dict:
    import torch

    from tasks.config import Settings
    from tasks.data.store import FeatureStore
    from tasks.data.tables import current_cohort
    from tasks.features.cnn.checkpoints import model_for
    from tasks.features.cnn.crops import case_crops
    from tasks.features.cnn.embed import current_model

    torch.set_num_threads(1)
    settings, store = Settings(store=store_root), FeatureStore(store_root)
    cases = current_cohort(store.read("cohort"))
    records = cases.astype(object).where(cases.notna(), None).to_dict("records")
    started = time.perf_counter()
    model, version, meta = model_for(current_model(store, settings), True, settings)
    crops, outputs = [], 0
    with torch.inference_mode():
        for case in records:
            crops += list(case_crops(case, None, meta["input_size"], meta["margin"], True).values())
            while len(crops) >= settings.cnn_batch_size or (crops and case is records[-1]):
                batch, crops = crops[: settings.cnn_batch_size], crops[settings.cnn_batch_size :]
                bmus = torch.stack([b for b, _ in batch])
                cdus = torch.stack([c for _, c in batch])
                outputs += len(model.embed(bmus, cdus)["fused"])
    return {"crops": outputs, "seconds": time.perf_counter() - started, "version": version}


def flow(store_root: str) -> dict:
    from flows.runtime.server import ensure_api
    from tasks.config import Settings
    from tasks.data.store import FeatureStore
    from tasks.features.cnn.embed import current_model

    ensure_api()
    from flows.extract import run_extraction
    from tasks.data.tables import COHORT, current_cohort
    from tasks.features.work import plan_work

    settings = Settings(store=store_root, n_workers=2)
    store = FeatureStore(store_root)
    started = time.perf_counter()
    cohort = current_cohort(store.read(COHORT))
    work = plan_work(cohort, store, settings, radiomics=False, model=current_model(store, settings))
    totals = run_extraction(work, settings, "bench")
    return {
        "crops": totals["embeddings"].rows,
        "seconds": time.perf_counter() - started,
        "workers": totals["embeddings"].workers,
        "task_seconds": totals["embeddings"].seconds,
    }


if __name__ == "__main__":
    mode, store = sys.argv[1], sys.argv[2]
    print("RESULT " + json.dumps(plain(store) if mode == "plain" else flow(store)), flush=True)
