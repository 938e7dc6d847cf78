"""Where tasks run: the local cluster's GPU worker, and the pre-flight check on a cluster."""

from __future__ import annotations

import pytest
from distributed import LocalCluster

from flows.runtime.runners import check_gpu_workers, local_cluster


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


def test_cluster_without_gpu_worker_fails_fast():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster:
        with pytest.raises(RuntimeError, match="no worker with the GPU=1 resource"):
            check_gpu_workers(cluster.scheduler_address)
