"""The local Prefect server of `make ui`: started, found again, stopped; loopback only."""

from __future__ import annotations

import psutil
import pytest

from flows.runtime.server import api_url, healthy, server_env, start_server, stop_server


def test_the_server_env_never_points_the_server_at_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    env = server_env(tmp_path)
    assert "PREFECT_API_URL" not in env
    assert env["PREFECT_HOME"] == str(tmp_path)
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_a_closed_port_is_not_healthy(free_tcp_port):
    assert not healthy(api_url(free_tcp_port()), timeout=0.5)


@pytest.mark.slow
def test_start_find_and_stop_a_server(tmp_path, free_tcp_port):
    port = free_tcp_port()
    url, proc = start_server(home=tmp_path, port=port, timeout=180)
    try:
        assert proc is not None and healthy(url)
        assert (tmp_path / f"server-{port}.pid").read_text() == str(proc.pid)
        # A second start finds the running one instead of starting another.
        assert start_server(home=tmp_path, port=port) == (url, None)
        server = psutil.Process(proc.pid)
        procs = [server, *server.children(recursive=True)]
        listening = {
            conn.laddr.ip
            for p in procs
            for conn in p.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        }
        assert listening == {"127.0.0.1"}
    finally:
        stopped = stop_server(home=tmp_path, port=port)
    assert stopped
    proc.wait(timeout=60)
    assert not healthy(url, timeout=1)
    assert stop_server(home=tmp_path, port=port) is False  # nothing left to stop
