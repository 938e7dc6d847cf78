"""One writing run per store: the store's Prefect global concurrency limit
(:func:`flows.extract.store_writer`), on a real Prefect server, held by a real process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from flows.extract import store_limit_name, store_writer
from tests.reliability.helpers import ROOT

HOLDER = """
import sys, time
from prefect import flow
from flows.extract import store_writer

@flow(name="store-writer-holder", persist_result=False)
def hold(store: str, log: str, seconds: float) -> None:
    with store_writer(store):
        with open(log, "a") as fh:
            fh.write(f"in {time.time()!r}\\n")
        time.sleep(seconds)
        with open(log, "a") as fh:
            fh.write(f"out {time.time()!r}\\n")

hold(sys.argv[1], sys.argv[2], float(sys.argv[3]))
"""


def _holder(store: str, log, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, store, str(log), str(seconds)], cwd=ROOT)
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().startswith("in")):
        assert proc.poll() is None and time.monotonic() < deadline, "the holder never got in"
        time.sleep(0.1)
    return proc


def _limit(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def test_a_second_writer_of_one_store_waits_another_store_does_not(prefect_api, tmp_path):
    store, other = str(tmp_path / "store"), f"s3://bucket/{tmp_path.name}/store"
    log = tmp_path / "holder.log"
    holder = _holder(store, log, seconds=12.0)
    try:
        name = store_limit_name(store)
        assert name == store_limit_name(store + "/") and name != store_limit_name(other)
        assert tmp_path.name not in name and len(name) <= 32  # a hash, never the path
        limit = _limit(name)
        assert limit.limit == 1 and limit.active_slots == 1

        started = time.monotonic()
        with store_writer(other, timeout=10):  # another store: no wait
            assert time.monotonic() - started < 10
        with pytest.raises(TimeoutError):
            with store_writer(store, timeout=2):
                pytest.fail("took the slot while another process held it")

        with store_writer(store, timeout=120) as waited:
            entered = time.time()
            assert _limit(name).active_slots == 1
        assert holder.wait(60) == 0
        released = float(log.read_text().split()[3])
        assert entered >= released and waited > 0
        assert _limit(name).active_slots == 0  # released on exit
    finally:
        holder.kill()


def test_the_slot_is_reentrant_in_a_run_and_exclusive_across_threads(prefect_api, tmp_path):
    """A flow holding the slot may call run_extraction (which takes it again) without
    waiting for itself; another thread of the process (its own context) does wait."""
    store = str(tmp_path / "store")
    events: list[tuple[str, float]] = []

    def other() -> None:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # A new thread starts without the test's settings context: the same server.
        with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
            with store_writer(store, timeout=60):
                events.append(("other in", time.time()))

    with store_writer(store, timeout=30):
        with store_writer(store, timeout=5) as again:  # no deadlock
            assert again == 0.0
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(3)
        events.append(("first out", time.time()))
    thread.join(90)
    assert [e[0] for e in events] == ["first out", "other in"]
    assert _limit(store_limit_name(store)).active_slots == 0


LEASE_STORAGE = "prefect.server.concurrency.lease_storage.{}"


@pytest.mark.parametrize("storage", ["memory", "filesystem"])
def test_a_slot_held_across_a_prefect_server_restart(tmp_path, free_tcp_port, monkeypatch, storage):
    """Prefect's default lease storage is in memory: a server restart while a run holds the
    slot forgets the lease, the release is a no-op and the slot stays taken for good (every
    later run would wait for ``STORE_WAIT_SECONDS``). With the filesystem lease storage
    (``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE``, the server's setting) it is released."""
    import os
    import signal

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.runtime.server import start_server

    monkeypatch.setenv(  # the server inherits it (flows.runtime.server.server_env)
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASE_STORAGE.format(storage)
    )
    home, port = tmp_path / "prefect", free_tcp_port()
    url, server = start_server(home=home, port=port, timeout=180)
    store = str(tmp_path / "store")
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            with store_writer(store, timeout=30):
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)
                _, server = start_server(home=home, port=port, timeout=180)
                assert _limit(store_limit_name(store)).active_slots == 1
            left = _limit(store_limit_name(store)).active_slots
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert left == (1 if storage == "memory" else 0)
