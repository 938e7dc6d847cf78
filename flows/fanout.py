"""Fan-out helpers the flows share: submit chunks to Dask, commit each as it completes.

Radiomics chunks may run on any worker; CNN chunks are submitted under
``dask.annotate(resources={"GPU": 1})`` so only GPU-resource workers take them. Commits
happen in the flow process (the single writer of the Delta tables), chunk by chunk, so a
crash keeps everything finished before it.
"""

from __future__ import annotations

import dask
from prefect import get_run_logger
from prefect.futures import PrefectFuture, as_completed

from tasks.config import Settings
from tasks.data.store import FeatureStore
from tasks.features.cnn.embed import EmbeddingPlan, commit_embeddings_task, embed_chunk_task
from tasks.features.radiomics import commit_radiomics_task, extract_chunk_task

Submitted = dict[PrefectFuture, str]
COMMITS = {"radiomics": commit_radiomics_task, "embeddings": commit_embeddings_task}


def submit_radiomics(chunks: list[list[dict]], params: dict, settings: Settings) -> Submitted:
    return {extract_chunk_task.submit(chunk, params, settings): "radiomics" for chunk in chunks}


def submit_embeddings(
    chunks: list[list[dict]], model: str, dual: bool, settings: Settings
) -> Submitted:
    with dask.annotate(resources={"GPU": 1}):
        return {
            embed_chunk_task.submit(chunk, model, dual, settings): "embeddings" for chunk in chunks
        }


def embedding_chunks(embedding: EmbeddingPlan, settings: Settings) -> list[list[dict]]:
    # CNN chunks are batched inference on few GPU workers: larger than radiomics chunks.
    return embedding.plan.chunks(settings.chunk_size * 4, 1)


def empty_totals() -> dict[str, dict]:
    return {
        "radiomics": {"rows": 0, "cases": 0, "failed": 0},
        "embeddings": {"rows": 0, "cases": 0, "failed": 0, "workers": [], "seconds": 0.0},
    }


def commit_as_completed(
    submitted: Submitted, store: FeatureStore, run_id: str, force: bool = False
) -> dict[str, dict]:
    """Commit every chunk as it finishes; log cases done/total per kind."""
    logger = get_run_logger()
    totals = empty_totals()
    done = {kind: 0 for kind in totals}
    chunks = {kind: list(submitted.values()).count(kind) for kind in totals}
    for future in as_completed(list(submitted)):
        kind = submitted[future]
        committed = COMMITS[kind](future.result(), store, run_id, force)
        for key, value in committed.items():
            if isinstance(value, list):
                totals[kind][key] = sorted(set(totals[kind][key]) | set(value))
            else:
                totals[kind][key] += value
        done[kind] += 1
        cases = totals[kind]["cases"] + totals[kind]["failed"]
        logger.info(
            "%s: chunk %d/%d committed (%d cases so far)", kind, done[kind], chunks[kind], cases
        )
    return totals
