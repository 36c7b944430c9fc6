"""The nginx `make cluster` puts in front of its edges (llmchat_common.launch.platform.Proxy),
run for real against two small HTTP servers standing in for edges: requests reach both, a
server-sent event goes through before the response ends (no buffering), the client's address
travels in X-Forwarded-For, and an edge whose /readyz fails is taken out until it is ready
again."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from llmchat_common.launch.platform import Proxy
from llmchat_common.launch.process import find_binary


class Edge:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ready = True
        self.forwarded: list[str] = []
        edge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/readyz":
                    self._send(200 if edge.ready else 503, b"{}")
                elif self.path == "/stream":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for part in (b"data: first\n\n", b"data: second\n\n"):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                        self.wfile.flush()
                        time.sleep(1.0)
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    edge.forwarded.append(self.headers.get("X-Forwarded-For", ""))
                    self._send(200, edge.name.encode())

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Proxy, dict[str, Edge]]]:
    if find_binary("nginx", [Path("/usr/sbin")]) is None:
        pytest.fail("nginx is missing: make setup installs Debian's package")
    edges = {name: Edge(name) for name in ("chat-1", "chat-2")}
    proxy = Proxy(tmp_path / "nginx", tmp_path / "logs", 0, {n: e.port for n, e in edges.items()})
    proc = proxy.start()
    try:
        yield proxy, edges
    finally:
        proc.stop()
        for edge in edges.values():
            edge.server.shutdown()


def spread(port: int, n: int = 20) -> Counter[str]:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        return Counter(http.get("/v1/models").text for _ in range(n))


def test_requests_reach_both_edges_with_the_clients_address(proxied: tuple[Proxy, dict[str, Edge]]) -> None:
    proxy, edges = proxied
    assert set(spread(proxy.port)) == {"chat-1", "chat-2"}
    assert {f for e in edges.values() for f in e.forwarded} == {"127.0.0.1"}


def test_an_event_goes_through_before_the_stream_ends(proxied: tuple[Proxy, dict[str, Edge]]) -> None:
    proxy, _ = proxied
    started = time.monotonic()
    with httpx.stream("GET", f"http://127.0.0.1:{proxy.port}/stream", timeout=10) as response:
        first = next(response.iter_lines())
        at = time.monotonic() - started
    assert first == "data: first"
    assert at < 0.8, f"the first event came after {at:.2f} s: buffered"
    # (This nginx forwarded small chunks at once even with buffering on; the setting is what
    # the documentation asks for SSE, and what a response larger than its buffers needs.)
    assert "proxy_buffering off;" in proxy.config()


def test_an_unready_edge_gets_no_requests_until_it_is_ready(proxied: tuple[Proxy, dict[str, Edge]]) -> None:
    proxy, edges = proxied
    edges["chat-2"].ready = False
    proxy.check_edges(every_s=0)
    time.sleep(0.5)  # nginx reloads: new workers take the new upstream list
    assert proxy.down == {"chat-2"}
    assert set(spread(proxy.port)) == {"chat-1"}
    edges["chat-2"].ready = True
    proxy.check_edges(every_s=0)
    time.sleep(0.5)
    assert set(spread(proxy.port)) == {"chat-1", "chat-2"}
    # Both unready: both stay listed (a client then sees what the edges answer).
    for edge in edges.values():
        edge.ready = False
    proxy.check_edges(every_s=0)
    assert proxy.down == frozenset()
