"""The loopback cluster of `make cluster`: real scheduler and worker processes."""

from __future__ import annotations

import psutil
import pytest

from flows.runtime.cluster import start_cluster, stop_cluster, worker_command


def test_worker_command_is_one_thread_on_loopback_and_gpu_only_when_asked(tmp_path):
    cpu = worker_command("tcp://127.0.0.1:1", "cpu-0", gpu=False, tls_dir=None)
    gpu = worker_command("tcp://127.0.0.1:1", "gpu-0", gpu=True, tls_dir=None)
    assert cpu[cpu.index("--nthreads") + 1] == "1" and cpu[cpu.index("--host") + 1] == "127.0.0.1"
    assert "--no-dashboard" in cpu
    assert "--resources" not in cpu and gpu[gpu.index("--resources") + 1] == "GPU=1"


@pytest.mark.slow
def test_start_and_stop_a_loopback_cluster(tmp_path, free_tcp_port):
    from distributed import Client

    port = free_tcp_port()
    address = start_cluster(cpu_workers=1, port=port, state=tmp_path, timeout=120)
    try:
        assert address == f"tcp://127.0.0.1:{port}"
        with Client(address, timeout=30) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
            names = {str(w["name"]): w.get("resources", {}) for w in workers}
        assert names == {"cpu-0": {}, "gpu-0": {"GPU": 1}}
        # Every socket the cluster's processes listen on is on loopback.
        pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
        procs = [psutil.Process(pid) for pid in pids]
        procs += [child for proc in procs for child in proc.children(recursive=True)]
        listening = [
            conn.laddr.ip
            for proc in procs
            for conn in proc.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
        assert listening and set(listening) == {"127.0.0.1"}
    finally:
        stopped = stop_cluster(tmp_path)
    assert stopped == 3 and not list(tmp_path.glob("*.pid"))


def test_tls_commands_carry_the_role_files_and_make_cluster_tls_makes_and_uses_them(tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    from flows.runtime.tls import cli_args

    worker = worker_command("tls://127.0.0.1:1", "cpu-0", gpu=False, tls_dir=tmp_path)
    assert worker[-6:] == cli_args(tmp_path, "worker")
    assert worker[worker.index("--tls-key") + 1].endswith("worker-key.pem")
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make")
    root = Path(__file__).resolve().parents[3]
    dry = subprocess.run(
        [make, "-n", "-C", str(root), "cluster", "TLS=1", f"TLS_DIR={tmp_path}/tls"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"sln certs --out {tmp_path}/tls" in dry
    assert f"SLN_TLS_DIR={tmp_path}/tls" in dry and "sln cluster" in dry
