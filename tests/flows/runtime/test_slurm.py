"""Dask workers as Slurm jobs (flows/runtime/slurm.py).

Fast tests check the job scripts, the environment split and the per-pool scaling targets
without Slurm. The slow test runs the cohort, retrain and validate commands with
``SLN_CLUSTER=slurm`` on a real one-node Slurm (the ``slurm`` fixture), a real Prefect
server and moto's S3 server, and checks where every job ran, what every job was given,
and that nothing is left running.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import dask
import pytest

from flows.runtime import slurm as slurm_runtime
from flows.runtime.runners import task_runner
from flows.runtime.tls import make_certs
from tasks.config import Settings
from tests.conftest import original_only_params

SLN = str(Path(sys.executable).parent / "sln")
SECRET = "AWS_SECRET_ACCESS_KEY"


# -- environment of the jobs ----------------------------------------------------------------
def test_secrets_are_only_named_and_plain_settings_are_exported():
    environ = {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        SECRET: "s3cr3t/with+chars",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "SLN_STORE": "s3://bucket/store",
        "SLN_CLUSTER": "slurm",
        "PREFECT_API_URL": "http://127.0.0.1:4200/api",
        "PREFECT_API_KEY": "pnu_secret",
        "PREFECT_API_DATABASE_PASSWORD": "db-secret",
        "HOME": "/root",
        "DASK_SCHEDULER_ADDRESS": "tcp://elsewhere:8786",
    }
    plain, secrets = slurm_runtime.worker_env(environ)
    assert secrets == [
        "AWS_ACCESS_KEY_ID",
        SECRET,
        "PREFECT_API_KEY",
        "PREFECT_API_DATABASE_PASSWORD",  # credential-looking names go by name too
    ]
    assert plain["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert plain["SLN_STORE"] == "s3://bucket/store"
    assert plain["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert plain["OMP_NUM_THREADS"] == "1"
    for name in ("HOME", "SLN_CLUSTER", "DASK_SCHEDULER_ADDRESS", *secrets):
        assert name not in plain
    assert slurm_runtime.export_directive(secrets[:2]) == (
        "--export=AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY"
    )
    assert slurm_runtime.export_directive([]) == "--export=NONE"


def test_site_jobqueue_config_comes_first_and_cannot_export_all(tmp_path):
    site = {
        "jobqueue.slurm.job-extra-directives": ["--qos=short", "--export=ALL"],
        "jobqueue.slurm.job-script-prologue": ["module load cuda"],
    }
    with dask.config.set(site):
        kwargs = slurm_runtime.cluster_kwargs(Settings(tls_dir=make_certs(tmp_path)), {})
    assert kwargs["job_extra_directives"] == ["--qos=short", "--export=NONE"]
    assert kwargs["job_script_prologue"][0] == "module load cuda"


@pytest.fixture
def slurm_settings(tmp_path):
    return Settings(
        tls_dir=make_certs(tmp_path / "tls"),
        slurm_log_dir=tmp_path / "jobs",
        slurm_cpu_jobs=3,
        slurm_gpu_jobs=2,
    )


@pytest.fixture
def cluster(slurm_settings, monkeypatch):
    """A SlurmCluster with its (TLS) scheduler in this process and no job submitted."""
    monkeypatch.setenv(SECRET, "never-in-a-script")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    kwargs = slurm_runtime.cluster_kwargs(slurm_settings)
    with slurm_runtime.make_cluster(**kwargs) as cluster:
        yield cluster


def test_job_scripts_cpu_and_gpu_partitions_tls_and_no_export_all(cluster, slurm_settings):
    cpu, gpu = cluster.job_script(), cluster.gpu_job_script()
    assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
    for script in (cpu, gpu):
        exports = re.findall(r"^#SBATCH --export=(\S+)$", script, re.MULTILINE)
        assert len(exports) == 1 and "ALL" not in exports[0].split(",")
        assert SECRET in exports[0].split(",")
        assert "never-in-a-script" not in script
        assert "export AWS_ENDPOINT_URL=http://127.0.0.1:1" in script
        assert "export OMP_NUM_THREADS=1" in script
        assert "--nthreads 1" in script and "--host 127.0.0.1" in script
        assert "--protocol tls://" in script
        assert f"--tls-cert {slurm_settings.tls_dir.resolve()}/worker.pem" in script
        assert f"--tls-key {slurm_settings.tls_dir.resolve()}/worker-key.pem" in script
        assert sys.executable in script
    assert "#SBATCH -p cpu" in cpu and "--resources" not in cpu and "--gres" not in cpu
    assert "#SBATCH -p gpu" in gpu and "--resources GPU=1" in gpu
    assert "#SBATCH --gres=gpu:1" in gpu


def test_pools_scale_with_their_own_tasks(cluster):
    from distributed import Client

    adaptive = slurm_runtime.PoolAdaptive(cluster, interval=0, maximum=3, gpu_maximum=2)
    assert adaptive.targets() == {"gpu": 0, "cpu": 0}
    with Client(cluster) as client:
        cpu = client.map(abs, range(-5, 0), pure=False)
        with dask.annotate(resources={"GPU": 1}):
            gpu = client.map(abs, range(-2, 0), pure=False)
        deadline = time.monotonic() + 10
        while adaptive.wanted() != {"gpu": 2, "cpu": 5} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert adaptive.wanted() == {"gpu": 2, "cpu": 5}
        assert adaptive.targets() == {"gpu": 2, "cpu": 3}  # capped by the maxima
        # not-yet-started jobs are the first to go when the work shrinks
        cluster.worker_spec.update(cluster.new_pool_spec("gpu"))
        cluster.worker_spec.update(cluster.new_pool_spec("cpu"))
        cluster.worker_spec.update(cluster.new_pool_spec("cpu"))
        assert sorted(cluster.worker_spec) == ["cpu-0", "cpu-1", "gpu-0"]
        assert adaptive.closable("cpu", 1, set()) == ["cpu-1"]
        assert cluster.worker_spec["gpu-0"]["options"]["job_name"] == "sln-gpu-0"
        assert cluster.worker_spec["gpu-0"]["options"]["queue"] == "gpu"
        assert cluster.worker_spec["cpu-1"]["options"]["queue"] == "cpu"
        cluster.worker_spec.clear()
        client.cancel(cpu + gpu)


def test_cpu_jobs_leave_room_for_gpu_jobs_on_shared_nodes(monkeypatch):
    partitions = {"cpu": {"n1": 2}, "gpu": {"n1": 2}, "big": {"a": 64, "b": 64}, "gpus": {"g": 8}}
    monkeypatch.setattr(slurm_runtime, "partition_cpus", lambda p: partitions.get(p, {}))
    assert slurm_runtime.cpu_job_cap("cpu", "gpu", 1) == 1  # make slurm's one 2-core node
    assert slurm_runtime.cpu_job_cap("big", "gpus", 4) == 128  # separate GPU nodes
    assert slurm_runtime.cpu_job_cap("missing", "gpu", 1) is None  # sinfo cannot tell


def test_task_runner_picks_slurm_from_settings(slurm_settings):
    runner = task_runner(slurm_settings.model_copy(update={"cluster": "slurm"}))
    assert runner.cluster_class is slurm_runtime.make_cluster
    assert runner.cluster_kwargs["queue"] == "cpu"
    assert runner.cluster_kwargs["gpu_queue"] == "gpu"
    assert runner.adapt_kwargs == {"minimum": 0, "maximum": 3, "gpu_maximum": 2}
    with pytest.raises(ValueError, match="DASK_SCHEDULER_ADDRESS"):
        task_runner(slurm_settings.model_copy(update={"cluster": "address"}))


# -- end to end on a real Slurm -------------------------------------------------------------
class JobWatch(threading.Thread):
    """Polls ``squeue`` while the commands run: every job seen (partition, name), its batch
    script, and whether slurmctld holds the secret in the job's environment."""

    def __init__(self, env: dict[str, str], state: Path, secret: str):
        super().__init__(daemon=True)
        self.env, self.state, self.secret = env, state, secret
        self.jobs: dict[str, dict] = {}
        self.halt = threading.Event()

    def _run(self, *cmd: str) -> str:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True).stdout

    def run(self) -> None:
        while not self.halt.is_set():
            for line in self._run("squeue", "-h", "-o", "%i|%P|%j|%T").splitlines():
                job_id, partition, name, state = line.split("|")
                job = self.jobs.setdefault(
                    job_id, {"partition": partition, "name": name, "states": set()}
                )
                job["states"].add(state)
                if "script" not in job:
                    script = self._run("scontrol", "write", "batch_script", job_id, "-")
                    if script.startswith("#!"):
                        job["script"] = script
                if "secret_in_env" not in job:
                    env_file = self.state / f"hash.{int(job_id) % 10}" / f"job.{job_id}"
                    if (env_file / "environment").is_file():
                        job["secret_in_env"] = self.secret in (
                            (env_file / "environment").read_text(errors="replace")
                        )
            self.halt.wait(0.3)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)


def squeue_empty(env: dict[str, str], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout
        if not out.strip():
            return True
        time.sleep(0.5)
    return False


def no_process_mentions(text: str, timeout: float = 30) -> bool:
    """True once no process has ``text`` in its command line (jobs get KillWait=5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if text in cmdline.read_bytes().decode(errors="replace"):
                    found.append(cmdline.parent.name)
            except OSError:
                continue
        if not found or time.monotonic() > deadline:
            return not found
        time.sleep(1)


def completed_jobs(slurm_dir: Path) -> dict[str, dict[str, str]]:
    """slurmctld's jobcomp/filetxt records: one ``Key=Value ...`` line per finished job."""
    log = slurm_dir / "log" / "jobcomp.log"
    jobs = {}
    for line in log.read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        jobs[fields["JobId"]] = fields
    return jobs


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cohort_retrain_validate_on_slurm(slurm, prefect_api, s3_endpoint, tmp_path):
    import boto3
    import s3fs

    from tasks.data.store import FeatureStore
    from tasks.data.tables import EMBEDDINGS, RADIOMICS

    started = time.monotonic()
    secret = f"sln-e2e-{uuid.uuid4().hex}"  # moto takes any secret; this one is traceable
    bucket = f"sln-slurm-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    store = f"s3://{bucket}/store"
    jobs_dir, tls_dir = tmp_path / "jobs", tmp_path / "tls"
    env = {
        **os.environ,  # the S3 endpoint and credentials of the s3_endpoint fixture
        **slurm["env"],
        "PREFECT_API_URL": prefect_api,
        SECRET: secret,
        "SLN_CLUSTER": "slurm",
        "SLN_TLS_DIR": str(tls_dir),
        "SLN_SLURM_LOG_DIR": str(jobs_dir),
        "SLN_SLURM_MEMORY": "3GB",  # job counts: the defaults, capped by the node's cores
        "SLN_CNN_SIZE": "64",
        "SLN_CNN_EPOCHS": "1",
        "SLN_CNN_BATCH_SIZE": "8",
        # Two cross-fitted fold CNNs, not five: the fold jobs' path is the same, and the
        # suite stays under 30 minutes on two cores.
        "SLN_CNN_FOLDS": "2",
        "SLN_RADIOMICS_PARAMS": str(original_only_params(tmp_path)),
        # the model registry of this test only (with an s3:// store it would otherwise be
        # the project's .mlflow/, shared with every other run)
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    logs: dict[str, str] = {}

    def sln(name: str, *args: str, timeout: float = 400) -> str:
        t0 = time.monotonic()
        done = subprocess.run(
            [SLN, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path
        )
        logs[name] = done.stdout + done.stderr
        assert done.returncode == 0, f"sln {' '.join(args)}:\n{logs[name][-4000:]}"
        print(f"sln {name}: {time.monotonic() - t0:.1f} s")
        return done.stdout

    sln("certs", "certs", "--out", str(tls_dir))
    # 40 patients: the smallest synthetic cohort whose training split has 10 cases per
    # class, as LASSO's 10-fold CV in retrain needs.
    sln("synth", "synth", "--out", str(tmp_path / "cohort"), "--patients", "40", "--seed", "13")
    # The cohort on S3: radiomics and CNN workers read images with the AWS credentials.
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(f"{tmp_path / 'cohort'}/", f"{bucket}/cohort/", recursive=True)

    watch = JobWatch(env, slurm["dir"] / "state", secret)
    watch.start()
    try:
        sln("run", "run", f"s3://{bucket}/cohort/manifest.csv", "--store", store)
        assert squeue_empty(env), "worker jobs left after the cohort run"
        sln("retrain", "retrain", "--store", store)
        assert squeue_empty(env), "worker jobs left after retrain"
        sln("validate", "validate", "--store", store, "--auc-floor", "0")
        assert squeue_empty(env), "worker jobs left after validate"
    finally:
        watch.stop()

    # Worker jobs appeared on the right partitions, and all of them have ended.
    seen = watch.jobs
    assert {job["partition"] for job in seen.values()} == {"cpu", "gpu"}
    for job in seen.values():
        assert job["name"].startswith(f"sln-{job['partition']}-"), job
    finished = completed_jobs(slurm["dir"])
    assert set(seen) <= set(finished)
    gpu_workers = set()
    for record in finished.values():
        assert record["Partition"] in ("cpu", "gpu")
        assert record["Name"].startswith(f"sln-{record['Partition']}-"), record
        if record["Partition"] == "gpu":
            gpu_workers.add(record["Name"].removeprefix("sln-"))

    # No worker process outlived its job (they all carry the test's certificate folder).
    assert no_process_mentions(str(tls_dir)), "worker processes left after the jobs ended"

    # Every CNN row came from a gpu-partition worker; every case is stored exactly once.
    feature_store = FeatureStore(store)
    cohort = feature_store.read("cohort")
    cases = set(cohort["case_id"])
    assert len(cases) == 40
    embeddings = feature_store.read("embeddings")
    assert set(embeddings["worker"]) <= gpu_workers and gpu_workers
    assert embeddings.groupby(list(EMBEDDINGS.keys)).size().max() == 1
    # Full models (start, final) embed every case; the cross-fitted fold models between them
    # embed each labelled training case once.
    by_model = {v: set(rows["case_id"]) for v, rows in embeddings.groupby("model_version")}
    folds = [ids for ids in by_model.values() if ids != cases]
    assert len(by_model) > len(folds)
    training = cohort[(cohort["split"] == "training") & cohort["label"].notna()]
    assert folds and sum(map(len, folds)) == len(training)
    assert set().union(*folds) == set(training["case_id"])
    radiomics = feature_store.read("radiomics")
    assert radiomics.groupby(list(RADIOMICS.keys)).size().max() == 1
    assert set(radiomics["case_id"]) == cases
    assert "cases_new: 40" in logs["run"]

    # Comms were TLS: every worker registered over tls://, none over plain tcp://.
    worker_logs = {p.name: p.read_text() for p in jobs_dir.glob("*.err")}
    assert len(worker_logs) >= len(seen)
    for name, text in worker_logs.items():
        assert re.search(r"Registered to:\s+tls://127\.0\.0\.1:", text), name
        assert "tcp://" not in text, name

    # The secret travelled by name (--export=<names>, never ALL): slurmctld held it in the
    # job's environment, and no job script, job log, Slurm log or command output shows it.
    scripts = [job["script"] for job in seen.values() if "script" in job]
    assert len(scripts) == len(seen)
    for script in scripts:
        (export,) = re.findall(r"^#SBATCH --export=(\S+)$", script, re.MULTILINE)
        assert "ALL" not in export.split(",") and SECRET in export.split(",")
        assert secret not in script
    assert any(job.get("secret_in_env") for job in seen.values())
    for folder in (jobs_dir, slurm["dir"] / "log"):
        for path in folder.rglob("*"):
            if path.is_file():
                assert secret not in path.read_text(errors="replace"), path
    for name, text in logs.items():
        assert secret not in text, name
    print(f"slurm end-to-end: {len(seen)} jobs, {time.monotonic() - started:.1f} s")
