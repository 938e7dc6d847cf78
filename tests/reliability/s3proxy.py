"""A fault-injecting reverse proxy in front of an S3-protocol server (moto), on loopback.

A seeded random share of requests never reaches the server: half are answered
``503 SlowDown`` (S3's throttling answer), half get their connection reset. Every other
request is forwarded as is (the ``Host`` header included: moto does not check signatures)
and its answer relayed. Failing only before forwarding keeps the fault transient and
unambiguous: the server never acted on a request the client saw fail.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultyS3Proxy:
    """``with FaultyS3Proxy(upstream, share=0.1, seed=1) as proxy: proxy.url``."""

    def __init__(self, upstream: str, share: float = 0.1, seed: int = 0):
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.share = share
        self.counts: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fault(self) -> str | None:
        """None (forward), "503" or "reset", drawn from the seeded stream."""
        with self._lock:
            self.counts["requests"] += 1
            if self._random.random() >= self.share:
                return None
            kind = "503" if self._random.random() < 0.5 else "reset"
            self.counts[kind] += 1
            return kind

    def __enter__(self) -> FaultyS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(proxy: FaultyS3Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        upstream: http.client.HTTPConnection | None = None

        def log_message(self, *args) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                out = bytearray()
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    out += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _relay(self) -> None:
            body = self._body()
            fault = proxy.fault()
            if fault == "reset":
                # RST instead of FIN: the client sees "connection reset by peer".
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                return
            if fault == "503":
                self.send_response(503, "Slow Down")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOW_DOWN)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(SLOW_DOWN)
                self.close_connection = True
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            status, reason, out_headers, data = self._forward(headers, body)
            self.send_response(status, reason)
            for key, value in out_headers:
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            length = next((v for k, v in out_headers if k.lower() == "content-length"), None)
            if self.command == "HEAD":
                self.send_header("Content-Length", length or "0")
            else:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _forward(self, headers: dict, body: bytes):
            for attempt in (0, 1):  # a kept-alive upstream connection may have been closed
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    self.upstream.request(self.command, self.path, body=body, headers=headers)
                    resp = self.upstream.getresponse()
                    data = resp.read()
                    return resp.status, resp.reason, resp.getheaders(), data
                except (OSError, http.client.HTTPException):
                    self.upstream.close()
                    self.upstream = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler
