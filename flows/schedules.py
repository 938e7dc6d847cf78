"""Deployments and schedules (UTC cron): what ``make serve`` runs on this machine.

- ``cohort/nightly``       02:00 every day: ingest the night's manifest, extract features
- ``validate/nightly``     05:00 every day: score the champion, report, drift, floor check
- ``retrain/weekly``       03:00 every Sunday: fine-tune, select, fit, evaluate, promote
- ``backfill/on-demand``   no schedule: ``exam_from``/``exam_to`` dates, optional ``force``

``infra/prefect.yaml`` declares the same deployments for ``prefect deploy`` onto a work
pool (production); ``serve`` is the embedded default: one long-running process that polls
the Prefect server and runs the flows itself.

The two deployments that write a store's feature tables (``cohort/nightly``,
``backfill/on-demand``) each run one at a time (:data:`ONE_AT_A_TIME`: Prefect's deployment
concurrency limit; a run that finds its deployment busy waits in the queue, ENQUEUE). A
nightly and a backfill may still overlap with ``serve``: the store's table leases
(:mod:`tasks.data.lease`) keep their rows single, at the cost of some repeated extraction.
With ``prefect deploy`` both deployments also share the ``store-writers`` work queue
(``infra/prefect.yaml``), whose limit of 1 serialises them.
"""

from __future__ import annotations

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment

from flows.cohort import backfill, cohort
from flows.retrain import retrain
from flows.validate import validate
from tasks.config import Settings

NIGHTLY_COHORT = "0 2 * * *"
NIGHTLY_VALIDATE = "0 5 * * *"
WEEKLY_RETRAIN = "0 3 * * 0"
# One run at a time per store-writing deployment; the next waits (never dropped).
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def deployments(settings: Settings, manifest: str | None) -> list[RunnerDeployment]:
    # The settings built by `sln serve` travel whole as each deployment's parameter.
    return [
        cohort.to_deployment(
            name="nightly",
            cron=NIGHTLY_COHORT,
            tags=["nightly"],
            parameters={"manifest": manifest, "settings": settings},
            concurrency_limit=ONE_AT_A_TIME,
            description="Nightly cohort run: ingest, radiomics and CNN embeddings.",
        ),
        validate.to_deployment(
            name="nightly",
            cron=NIGHTLY_VALIDATE,
            tags=["nightly"],
            parameters={"settings": settings},
            description="After the nightly run: score the champion, predictions, report.",
        ),
        retrain.to_deployment(
            name="weekly",
            cron=WEEKLY_RETRAIN,
            tags=["weekly"],
            parameters={"settings": settings},
            description="Weekly retrain and re-validation; promotes only if not worse.",
        ),
        backfill.to_deployment(
            name="on-demand",
            tags=["backfill"],
            parameters={"settings": settings, "manifest": None},
            concurrency_limit=ONE_AT_A_TIME,
            description="Backfill by exam date; idempotent, FORCE re-extracts and MERGEs.",
        ),
    ]


def serve_all(settings: Settings, manifest: str | None) -> None:
    """Register the deployments and run their schedules in this process (blocks)."""
    serve(*deployments(settings, manifest))
