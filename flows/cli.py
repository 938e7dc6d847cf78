"""``sln``: the one command that make targets and operators call."""

from __future__ import annotations

import atexit
import gc
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import typer

from tasks.config import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

# On exit, Python's last garbage collections walk every object Prefect, pandas and pyarrow
# made; the OS frees them at once. Registered at import, before Prefect's handlers, so it
# runs after them all (atexit is last in, first out; Prefect's log and event drains run
# before any atexit handler).
atexit.register(gc.freeze)


def _setup_logging(verbose: bool = True) -> None:
    """INFO lines on stderr with ``verbose``; else warnings only, the flow commands showing
    progress bars instead (:mod:`flows.runtime.console`). The Prefect UI keeps every log."""
    from flows.runtime.console import setup_logging

    setup_logging(verbose)


VERBOSE = typer.Option(
    False, "--verbose", "-v", help="Print every INFO log line (Prefect, Dask, the steps)"
)


def _settings(**overrides: object) -> Settings:
    """The run's settings, built once here: the environment plus the options given."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def new_run_id(kind: str) -> str:
    return f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


@app.command()
def synth(
    out: Path = typer.Option(..., help="Folder for manifest.csv and images"),
    patients: int = typer.Option(450, help="Number of patients (one lesion each)"),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same cohort"),
    repeat_share: float = typer.Option(0.3, help="Share of cases with reader-2/repeat masks"),
    preview: bool = typer.Option(False, help="Also write preview.png (a contact sheet)"),
    dicom: bool = typer.Option(
        False, help="Write ultrasound DICOM (spacing in its regions) and DICOM SEG masks"
    ),
) -> None:
    """Write a synthetic two-site cohort (B-mode, colour Doppler, masks, labels)."""
    _setup_logging()
    from tasks.data.sources.synthetic import generate_cohort

    log = logging.getLogger("sln.synth")

    def progress(done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            log.info("synthesised %d/%d patients", done, total)

    manifest = generate_cohort(
        out,
        n_patients=patients,
        seed=seed,
        repeat_share=repeat_share,
        preview=preview,
        progress=progress,
        dicom=dicom,
    )
    typer.echo(f"wrote {manifest}")


@app.command()
def busbra(
    out: Path = typer.Option(..., help="Manifest CSV to write"),
    data: Path = typer.Option(None, help="BUS-BRA folder (default: <shared data>/busbra)"),
    validation_site: str = typer.Option("APLIO300", help="Scanner held out as external validation"),
    limit_patients: int = typer.Option(0, help="Keep a seeded subset of patients (0: all)"),
    seed: int = typer.Option(0),
) -> None:
    """Write a manifest over the BUS-BRA dataset (label = malignant, site = scanner)."""
    from tasks.data.sources.busbra import busbra_manifest

    data = data or Settings().shared_data / "busbra"
    manifest = busbra_manifest(data, out, validation_site, limit_patients or None, seed)
    counts = manifest.groupby(["site", "split"]).size().to_string()
    typer.echo(f"wrote {out}: {len(manifest)} images\n{counts}")
    typer.echo(f"paths point into {Path(data).resolve()}: ingest with SLN_DATA_ROOTS set to it")


@app.command()
def ingest(
    manifest: str = typer.Argument(..., help="Manifest CSV/Parquet (path or s3:// URI)"),
    store: str = typer.Option(None, help="Store root (folder or s3://bucket/prefix)"),
) -> None:
    """Validate a manifest; write the cohort and quarantine tables."""
    _setup_logging()
    from tasks.data.ingest import ingest as ingest_manifest
    from tasks.data.store import FeatureStore
    from tasks.data.validate import ManifestError

    settings = _settings(store=store)
    try:
        report = ingest_manifest(
            manifest, FeatureStore(settings.store), settings, new_run_id("ingest")
        )
    except ManifestError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(report.summary())
    for case, reasons in sorted(report.problems.items()):
        typer.echo(f"  quarantined {case}: {'; '.join(reasons)}")
    typer.echo(f"cohort table version {report.cohort_version} at {settings.store}")


def _with_api(fn):
    """Run ``fn`` against a live Prefect API (configured, or the local embedded server).

    Flow-run heartbeats are off for these foreground runs unless configured
    (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, env or profile): they only feed a crash-detection
    automation a Prefect admin may add, and a foreground run's crash reaches its caller as
    the exit status. Their thread sleeps in 1 s steps and is joined at the end of every flow
    and subflow run (up to 1 s each). Deployment runs under ``sln serve`` keep Prefect's
    default."""
    from flows.runtime.server import ensure_api

    url = ensure_api()
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    with temporary_settings(
        updates={PREFECT_API_URL: url}, set_defaults={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    ):
        return fn()


@app.command()
def run(
    manifest: str = typer.Argument(..., help="Manifest CSV/Parquet (path or s3:// URI)"),
    store: str = typer.Option(None, help="Store root (folder or s3://bucket/prefix)"),
    workers: int = typer.Option(None, help="Local Dask process workers (default: cores)"),
    chunk_size: int = typer.Option(None, help="Cases per Dask task"),
    exam_from: str = typer.Option(None, "--from", help="Only exams on/after this ISO date"),
    exam_to: str = typer.Option(None, "--to", help="Only exams on/before this ISO date"),
    force: bool = typer.Option(False, help="Re-extract the window, replacing stored rows"),
    verbose: bool = VERBOSE,
) -> None:
    """Run the cohort flow: ingest, then radiomics (and embeddings) on Dask workers."""
    _setup_logging(verbose)
    from flows.cohort import cohort
    from flows.runtime.console import progress

    settings = _settings(store=store, n_workers=workers, chunk_size=chunk_size)
    with progress(verbose):
        summary = _with_api(
            lambda: cohort(manifest, settings, exam_from=exam_from, exam_to=exam_to, force=force)
        )
    _print(summary)


@app.command()
def server(
    stop: bool = typer.Option(False, help="Stop the local server started by this command"),
) -> None:
    """Start (or find) the local Prefect server; the UI is at http://127.0.0.1:4200."""
    from flows.runtime.server import PORT, api_url, start_server, stop_server

    if stop:
        typer.echo("stopped" if stop_server() else "no server started by sln is running")
        return
    url, proc = start_server()
    state = f"started (pid {proc.pid})" if proc else "already running"
    typer.echo(f"Prefect server {state}: UI http://127.0.0.1:{PORT}  API {api_url()}")
    typer.echo("stop it with: sln server --stop")


def _print(summary: dict) -> None:
    for key, value in summary.items():
        typer.echo(f"{key}: {value}")


@app.command()
def retrain(
    store: str = typer.Option(None, help="Store root"),
    workers: int = typer.Option(None, help="Local Dask process workers"),
    promote: bool = typer.Option(True, help="Allow promotion to champion"),
    verbose: bool = VERBOSE,
) -> None:
    """Fine-tune the CNN, fit the three models, evaluate, register, maybe promote."""
    _setup_logging(verbose)
    from flows.retrain import retrain as retrain_flow
    from flows.runtime.console import progress

    settings = _settings(store=store, n_workers=workers)
    with progress(verbose):
        summary = _with_api(lambda: retrain_flow(settings, promote))
    _print(summary)


@app.command()
def validate(
    store: str = typer.Option(None, help="Store root"),
    auc_floor: float = typer.Option(None, help="Fail when the champion's AUC is below this"),
    workers: int = typer.Option(None, help="Local Dask process workers"),
    verbose: bool = VERBOSE,
) -> None:
    """Score the champion on the current cohort, write predictions and a report."""
    _setup_logging(verbose)
    from flows.validate import validate as validate_flow

    settings = _settings(store=store, n_workers=workers, auc_floor=auc_floor)
    state = _with_api(lambda: validate_flow(settings, return_state=True))
    result = state.result(raise_on_failure=False)
    if isinstance(result, dict):
        _print(result)
    if not state.is_completed():
        typer.echo(f"validate FAILED: {state.message}", err=True)
        raise typer.Exit(1)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), help="Folder for the synthetic cohort"),
    store: str = typer.Option("./store", help="Store root"),
    patients: int = typer.Option(450, help="Synthetic patients"),
    seed: int = typer.Option(0),
    cnn_size: int = typer.Option(112, help="CNN input size (224 on a GPU; smaller on CPU)"),
    epochs: int = typer.Option(6, help="CNN fine-tuning epochs"),
    verbose: bool = VERBOSE,
) -> None:
    """The main job on the embedded defaults: synthesise -> cohort -> retrain -> validate."""
    import os

    _setup_logging(verbose)
    from flows.cohort import cohort
    from flows.retrain import retrain as retrain_flow
    from flows.runtime.console import progress
    from flows.validate import validate as validate_flow
    from tasks.data.sources.synthetic import generate_cohort

    manifest = out / "manifest.csv"
    if not manifest.exists():
        typer.echo(f"synthesising {patients} patients into {out} ...")
        with progress(verbose) as bars:
            generate_cohort(
                out,
                n_patients=patients,
                seed=seed,
                preview=True,
                progress=bars and (lambda done, total: bars.update("synthesise", done, total)),
            )
    # CPU defaults for the demo, unless the environment sets them.
    cpu = {"cnn_size": cnn_size, "cnn_epochs": epochs}
    settings = _settings(
        store=store, **{k: v for k, v in cpu.items() if f"SLN_{k.upper()}" not in os.environ}
    )
    from tasks.data.secrets import ENV, create_local_key

    if not os.environ.get(ENV):  # synthetic patients only: a local key file under the store
        create_local_key(settings.store)

    def pipeline() -> dict:
        typer.echo("== cohort flow: ingest, radiomics, embeddings")
        _print(cohort(str(manifest), settings))
        typer.echo("== retrain flow: fine-tune CNN, select features, fit ONLY_HF / ONLY_DF / COMB")
        _print(retrain_flow(settings))
        typer.echo("== validate flow: score the champion, predictions, report")
        state = validate_flow(settings, return_state=True)
        return state.result(raise_on_failure=False)

    with progress(verbose):
        summary = _with_api(pipeline)
    if isinstance(summary, dict):
        _print(summary)
        typer.echo(f"report: {summary['report']}")
    typer.echo("Prefect UI: http://127.0.0.1:4200")


@app.command("local-key")
def local_key(store: str = typer.Option(..., help="Store root")) -> None:
    """Make a store's local pseudonymisation key file (0600), for public or synthetic data
    only: real patients need SLN_PSEUDONYM_KEY from a secret manager."""
    from tasks.data.secrets import create_local_key

    typer.echo(f"key file: {create_local_key(store)}")


@app.command()
def backfill(
    exam_from: str = typer.Option(..., "--from", help="First exam date (YYYY-MM-DD)"),
    exam_to: str = typer.Option(..., "--to", help="Last exam date (YYYY-MM-DD)"),
    store: str = typer.Option(None, help="Store root"),
    force: bool = typer.Option(False, help="Re-extract the window, MERGE-replacing rows"),
    manifest: str = typer.Option(None, help="Ingest this manifest first (optional)"),
    verbose: bool = VERBOSE,
) -> None:
    """Extract features for cases examined in a date window (idempotent)."""
    _setup_logging(verbose)
    from flows.cohort import backfill as backfill_flow
    from flows.runtime.console import progress

    settings = _settings(store=store)
    with progress(verbose):
        summary = _with_api(lambda: backfill_flow(exam_from, exam_to, settings, force, manifest))
    _print(summary)


@app.command()
def serve(
    manifest: str = typer.Option(
        None, envvar="SLN_NIGHTLY_MANIFEST", help="Manifest the nightly run ingests"
    ),
    store: str = typer.Option(None, help="Store root"),
) -> None:
    """Register the deployments and run their schedules here (nightly, weekly, backfill)."""
    _setup_logging()
    from flows.schedules import serve_all

    _with_api(lambda: serve_all(_settings(store=store), manifest))


@app.command()
def cluster(
    stop: bool = typer.Option(False, help="Stop the cluster started by this command"),
    cpu_workers: int = typer.Option(2, help="CPU workers (plus one GPU=1 worker)"),
    port: int = typer.Option(8786, help="Scheduler port on 127.0.0.1"),
) -> None:
    """Start a Dask scheduler, CPU workers and one GPU=1 worker as processes on loopback."""
    from flows.runtime.cluster import start_cluster, stop_cluster

    if stop:
        typer.echo(f"stopped {stop_cluster()} processes")
        return
    address = start_cluster(cpu_workers, port)
    typer.echo(f"Dask cluster up: {address} ({cpu_workers} CPU workers + gpu-0 with GPU=1)")
    tls = f" SLN_TLS_DIR={Settings().tls_dir}" if address.startswith("tls://") else ""
    typer.echo(f"use it: export DASK_SCHEDULER_ADDRESS={address}{tls}   stop: sln cluster --stop")


@app.command("worker-gpu")
def worker_gpu(
    scheduler: str = typer.Argument(..., help="Scheduler address, tcp://host:port"),
    name: str = typer.Option("gpu-0", help="Worker name"),
) -> None:
    """Run one GPU=1 worker in the foreground, joined to an existing scheduler."""
    import os

    from flows.runtime.cluster import worker_command
    from flows.runtime.env import WORKER_ENV

    cmd = worker_command(scheduler, name, gpu=True)
    os.execvpe(cmd[0], cmd, {**os.environ, **WORKER_ENV})


weights_app = typer.Typer(no_args_is_help=True, help="Offline CNN start weights.")
app.add_typer(weights_app, name="weights")


@weights_app.command("convert-tflite")
def convert_tflite_cmd(
    src: Path = typer.Argument(None, help="TFLite MobileNetV2 (default: the shared uint8 file)"),
    out: str = typer.Option(..., help="Destination .pth (path or s3:// URI)"),
) -> None:
    """Dequantise Google's TFLite MobileNetV2 into a torchvision mobilenet_v2 checkpoint."""
    from tasks.features.cnn.start import TFLITE_FILE
    from tasks.features.cnn.weights import convert_tflite

    src = src or Settings().shared_data / "mobilenet_v2_tflite" / TFLITE_FILE
    meta = convert_tflite(src, out)
    typer.echo(f"wrote {out} (from {meta['source']}, sha256 {meta['source_sha256'][:12]}...)")


@app.command()
def certs(
    out: Path = typer.Option(..., help="Folder for ca.pem and the role certificates/keys"),
    host: list[str] = typer.Option([], help="Extra DNS name or IP for the certificates"),
    days: int = typer.Option(365, help="Validity in days"),
) -> None:
    """Make a CA and scheduler/worker/client certificates for Dask comms over TLS."""
    from flows.runtime.tls import make_certs

    folder = make_certs(out, hosts=host, days=days)
    typer.echo(f"wrote {folder}: ca.pem, {{scheduler,worker,client}}{{.pem,-key.pem}}")
    typer.echo(f"use them: export SLN_TLS_DIR={folder.resolve()}")


if __name__ == "__main__":
    app()
