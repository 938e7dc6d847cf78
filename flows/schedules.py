"""Deployments and schedules (UTC cron): what ``make serve`` runs on this machine.

- ``cohort/nightly``       02:00 every day: ingest the night's manifest, extract features
- ``validate/nightly``     05:00 every day: score the champion, report, drift, floor check
- ``retrain/weekly``       03:00 every Sunday: fine-tune, select, fit, evaluate, promote
- ``backfill/on-demand``   no schedule: ``exam_from``/``exam_to`` dates, optional ``force``

``infra/prefect.yaml`` declares the same deployments for ``prefect deploy`` onto a work
pool (production); ``serve`` is the embedded default: one long-running process that polls
the Prefect server and runs the flows itself.
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.cohort import backfill, cohort
from flows.retrain import retrain
from flows.validate import validate
from tasks.config import Settings

NIGHTLY_COHORT = "0 2 * * *"
NIGHTLY_VALIDATE = "0 5 * * *"
WEEKLY_RETRAIN = "0 3 * * 0"


def deployments(settings: Settings, manifest: str | None) -> list[RunnerDeployment]:
    # The settings built by `sln serve` travel whole as each deployment's parameter.
    return [
        cohort.to_deployment(
            name="nightly",
            cron=NIGHTLY_COHORT,
            tags=["nightly"],
            parameters={"manifest": manifest, "settings": settings},
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
            description="Backfill by exam date; idempotent, FORCE re-extracts and MERGEs.",
        ),
    ]


def serve_all(settings: Settings, manifest: str | None) -> None:
    """Register the deployments and run their schedules in this process (blocks)."""
    serve(*deployments(settings, manifest))
