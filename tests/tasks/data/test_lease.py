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


# -- renewal: a lease held longer than its TTL is kept; a hung or dead holder's expires -----
def _hold_long(uri: str, log: str, env: dict, ttl: float, seconds: float) -> None:
    os.environ.update(env)
    with lease(uri, "test", ttl=ttl, wait=60):
        with open(log, "a") as fh:
            fh.write(f"in {time.time()!r}\n")
        time.sleep(seconds)
        with open(log, "a") as fh:
            fh.write(f"out {time.time()!r}\n")


def _start_holder(uri: str, log, ttl: float, seconds: float):
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    proc = mp.get_context("spawn").Process(
        target=_hold_long, args=(uri, str(log), env, ttl, seconds)
    )
    proc.start()
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text().startswith("in")):
        assert time.monotonic() < deadline and proc.is_alive(), "the holder never took the lease"
        time.sleep(0.05)
    return proc


def test_a_lease_held_past_its_ttl_is_renewed_and_never_broken(lock_uri, tmp_path):
    """A 1 s lease held for 4 s: the second writer waits for the release (without the
    heartbeat it broke the expired lease after about 1 s, while the first still held it)."""
    log = tmp_path / "log.txt"
    proc = _start_holder(lock_uri, log, ttl=1.0, seconds=4.0)
    first = _read(lock_uri)
    time.sleep(1.8)
    renewed = _read(lock_uri)
    assert renewed.token == first.token and renewed.expires > first.expires
    assert renewed.expires > time.time()  # never let expire while held
    with lease(lock_uri, "test", ttl=1.0, wait=60):
        entered = time.time()
        mine = _read(lock_uri).token
    proc.join(30)
    assert proc.exitcode == 0
    released = float(log.read_text().split()[3])
    assert entered >= released  # the second writer entered only after the release
    assert mine != first.token
    assert _read(lock_uri) is None  # released, and no late renewal recreated it


@pytest.mark.parametrize("signal_name", ["SIGSTOP", "SIGKILL"])
def test_a_hung_or_dead_holder_s_lease_still_expires(lock_uri, tmp_path, signal_name):
    """A holder stopped (alive, but its heartbeat frozen) loses its 1 s lease one TTL
    after its last renewal; a killed one at once on this host (its pid is gone)."""
    import signal

    log = tmp_path / "log.txt"
    proc = _start_holder(lock_uri, log, ttl=1.0, seconds=120)
    held = _read(lock_uri)
    try:
        os.kill(proc.pid, getattr(signal, signal_name))
        stopped = time.time()
        with lease(lock_uri, "test", ttl=1.0, wait=30):
            took = time.time()
            assert _read(lock_uri).token != held.token
        assert took - stopped < 10
        if signal_name == "SIGSTOP":  # broken on expiry, not before its last renewal's TTL
            assert took >= held.expires - 0.05
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
