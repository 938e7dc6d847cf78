"""The store-level lease: exclusive across real processes, broken when its holder died,
on a folder and on a real S3 server (moto)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import time

import pytest

from tasks.data.lease import LeaseTimeout, _read, lease


@pytest.fixture(params=["folder", "s3"])
def lock_uri(request, tmp_path) -> str:
    if request.param == "folder":
        return str(tmp_path / "store" / "_locks" / "t.lock")
    return f"{request.getfixturevalue('s3_bucket')}/store/_locks/t.lock"


def _hold(uri: str, log: str, env: dict, rounds: int) -> None:
    os.environ.update(env)
    for _ in range(rounds):
        with lease(uri, "test", wait=120):
            with open(log, "a") as fh:
                fh.write(f"in {os.getpid()}\n")
                fh.flush()
            time.sleep(0.02)
            with open(log, "a") as fh:
                fh.write(f"out {os.getpid()}\n")
                fh.flush()


def test_holders_in_separate_processes_never_overlap(lock_uri, tmp_path):
    log = tmp_path / "log.txt"
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hold, args=(lock_uri, str(log), env, 5)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    lines = log.read_text().split()
    events = list(zip(lines[::2], lines[1::2], strict=True))
    assert len(events) == 30
    for enter, leave in zip(events[::2], events[1::2], strict=True):
        assert enter[0] == "in" and leave[0] == "out" and enter[1] == leave[1]
    assert _read(lock_uri) is None  # released


def _write(uri: str, holder: dict) -> None:
    import fsspec

    with fsspec.open(uri, "wb") as fh:
        fh.write(json.dumps(holder).encode())


def test_an_expired_lease_is_broken(lock_uri):
    _write(lock_uri, {"token": "x", "host": "elsewhere", "pid": 1, "expires": time.time() - 1})
    with lease(lock_uri, "test", wait=5):
        assert _read(lock_uri).token != "x"


def test_a_lease_of_a_dead_process_on_this_host_is_broken(lock_uri):
    proc = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    proc.start()
    proc.join()
    holder = {"token": "x", "host": socket.gethostname(), "pid": proc.pid, "expires": 1e12}
    _write(lock_uri, holder)
    with lease(lock_uri, "test", wait=5):
        assert _read(lock_uri).token != "x"


def test_a_live_holder_makes_the_wait_time_out_with_a_clear_message(lock_uri):
    holder = {"token": "x", "host": "elsewhere", "pid": 1, "expires": time.time() + 600}
    _write(lock_uri, holder)
    with pytest.raises(LeaseTimeout, match="store S, table T: still locked by elsewhere"):
        with lease(lock_uri, "store S, table T", wait=0.5):
            pass
    assert _read(lock_uri).token == "x"  # a live lease is never taken over
