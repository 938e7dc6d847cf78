"""Where tasks run: the local cluster's GPU worker, and the pre-flight check on a cluster."""

from __future__ import annotations

import dask
import pytest
from distributed import LocalCluster

from flows.runtime.runners import check_gpu_workers, local_cluster, run_cluster, task_runner
from tasks.config import Settings


def test_local_cluster_has_exactly_one_gpu_worker():
    with local_cluster(n_workers=2, gpu_workers=1) as cluster:
        cluster.scale(2)
        from distributed import Client

        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=60)
            assert check_gpu_workers(cluster.scheduler_address) == ["gpu-0"]
            info = client.scheduler_info(n_workers=-1)["workers"].values()
            assert sorted(str(w["name"]) for w in info) == ["cpu-0", "gpu-0"]
            assert all(w["nthreads"] == 1 for w in info)
            # Dask's housekeeping timers, quieted in every server (flows.runtime.env): the
            # scheduler and nannies here, the worker processes through their nanny.
            servers = [
                _timers(cluster.scheduler),
                *(_timers(nanny) for nanny in cluster.workers.values()),
                *client.run(_timers).values(),
            ]
            assert len(servers) == 5
            assert all(s["tick"] == 1000 and s["monitor"] == 2000 for s in servers), servers
            assert client.run(lambda: dask.config.get("distributed.worker.profile.enabled")) == {
                address: False for address in client.scheduler_info()["workers"]
            }


def _timers(server=None, dask_worker=None) -> dict[str, float]:
    """A Dask server's periodic callbacks: name -> interval in ms."""
    server = server or dask_worker
    return {name: pc.callback_time for name, pc in server.periodic_callbacks.items()}


def test_cluster_without_gpu_worker_fails_fast():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster:
        with pytest.raises(RuntimeError, match="no worker with the GPU=1 resource"):
            check_gpu_workers(cluster.scheduler_address)


def test_one_run_shares_one_local_cluster_started_at_first_use():
    """Every task runner handed out inside ``run_cluster`` points at one cluster, which
    starts only when the first is asked for and is closed when the block ends."""
    from distributed import Client

    settings = Settings(cluster="local", n_workers=1)
    with run_cluster(settings) as shared:
        assert shared is not None and shared.cluster is None  # nothing asked: none started
        first, second = task_runner(settings), task_runner(settings)
        assert first.address == second.address == shared.cluster.scheduler_address
        assert shared.start_seconds > 0
        with Client(first.address, timeout=30) as client:
            assert client.wait_for_workers(1, timeout=60) is None
        with run_cluster(settings) as inner:  # nested: the outer cluster is kept
            assert inner is None and task_runner(settings).address == first.address
    assert shared.cluster is None and shared.stop_seconds > 0
    with pytest.raises(OSError):
        Client(first.address, timeout=3)
    # Outside the block each runner brings its own cluster again.
    assert task_runner(settings).address is None


def test_an_external_cluster_is_not_shared_by_run_cluster():
    settings = Settings(cluster="slurm")
    with run_cluster(settings) as shared:
        assert shared is None


# What a radiomics worker must never load: torch (with torchvision, triton and the CUDA
# libraries it held about 1.15 GB per worker when flows/extract.py imported the CNN tasks at
# module level), MLflow, matplotlib, scikit-learn.
HEAVY = ("torch", "torchvision", "mlflow", "matplotlib", "sklearn")
LEAN_WORKER_MB = 600  # issue 12: peak RSS per radiomics worker


def _worker_report() -> dict:
    import sys

    import psutil

    return {"modules": set(sys.modules), "rss_mb": psutil.Process().memory_info().rss / 2**20}


def _loaded_after(imports: str, modules: tuple[str, ...]) -> str:
    """Which of ``modules`` a fresh process holds after ``import <imports>``."""
    import subprocess
    import sys

    code = f"import sys, {imports}; print(sorted(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_worker_imports_stay_lean_in_a_fresh_process():
    """What a worker imports to run a radiomics chunk: the task's module, and the flow's
    module (prefect-dask ships the flow run's context, flow included, with every task)."""
    imports = "distributed, prefect_dask, tasks.features.radiomics, flows.extract"
    assert _loaded_after(imports, HEAVY) == "[]"


def test_the_flow_process_loads_no_dask_cluster_code_until_a_run_extracts():
    """A re-run with nothing to extract pays only its start-up: distributed and prefect-dask
    (about 0.5 s of imports) load when a cluster or task runner is made, not at import."""
    imports = "flows.cohort, flows.retrain, flows.validate"
    assert _loaded_after(imports, ("distributed", "prefect_dask")) == "[]"


def test_the_cohort_flow_process_loads_no_scipy_or_pydicom():
    """The cohort flow's process validates files and commits rows; scipy (about 0.3 s of
    imports, for the rings and perturbed masks the workers draw) and pydicom (about 0.15 s,
    for DICOM cohorts only) load on first use only."""
    modules = ("scipy", "scipy.ndimage", "pydicom")
    assert _loaded_after("flows.cohort, flows.cli", modules) == "[]"


@pytest.mark.slow
def test_a_radiomics_worker_stays_lean_after_real_chunks(tiny_cohort, tmp_path, prefect_api):
    """The real subflow runs radiomics chunks on a local cluster's workers; afterwards each
    worker that ran one holds none of the heavy libraries and stays under 600 MB."""
    from distributed import Client

    from flows.extract import run_extraction
    from tasks.config import Settings
    from tasks.data.ingest import ingest
    from tasks.data.store import FeatureStore
    from tasks.data.tables import COHORT, current_cohort
    from tasks.features.work import plan_work

    with local_cluster(n_workers=2, gpu_workers=1) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        settings = Settings(
            store=str(tmp_path / "store"),
            chunk_size=1,
            cluster="address",
            DASK_SCHEDULER_ADDRESS=cluster.scheduler_address,
        )
        store = FeatureStore(settings.store)
        ingest(str(tiny_cohort), store, settings, "ingest")
        work = plan_work(
            current_cohort(store.read(COHORT)).head(4), store, settings, embeddings=False
        )
        assert run_extraction(work, settings, "lean")["radiomics"].cases == 4
        reports = client.run(_worker_report)
    ran = [r for r in reports.values() if "tasks.features.radiomics" in r["modules"]]
    assert ran, "no worker ran a radiomics chunk"
    for report in ran:
        assert "flows.extract" in report["modules"]  # the flow's module is loaded there too
        assert not [m for m in HEAVY if m in report["modules"]]
        assert report["rss_mb"] < LEAN_WORKER_MB
