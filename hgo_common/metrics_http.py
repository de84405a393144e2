"""A /metrics HTTP endpoint with a bounded number of connections (issue 20; docs/operations.md).

prometheus_client's ``start_http_server`` runs one thread per connection with no limit and
no timeout: a red team held 299 threads with 289 idle connections to a worker's
endpoint. :func:`serve` serves the same exposition (``prometheus_client.make_wsgi_app``)
but closes a connection at once when :data:`MAX_CONNECTIONS` are being served, and drops
a client that sends nothing for :data:`TIMEOUT_S` seconds. A Prometheus scrape is one
short request, so neither limit touches it.
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

MAX_CONNECTIONS = 16
TIMEOUT_S = 10.0


class _Handler(WSGIRequestHandler):
    timeout = TIMEOUT_S  # socket timeout: an idle or trickling client is dropped

    def log_message(self, format: str, *args: Any) -> None:
        return None  # no line per scrape on stderr


class BoundedServer(ThreadingMixIn, WSGIServer):
    """A threading WSGI server serving at most ``max_connections`` connections at once."""

    daemon_threads = True
    max_connections = MAX_CONNECTIONS
    refused = 0

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)  # over the cap: closed at once, no thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _BoundedServer6(BoundedServer):
    address_family = socket.AF_INET6


def serve(registry: Any, port: int, addr: str, max_connections: int = MAX_CONNECTIONS) -> BoundedServer:
    """Serve ``registry`` on ``addr:port`` (0: a free port) in a daemon thread; returns the server
    (``server.server_port`` is the bound port). OSError when the address cannot be bound."""
    from prometheus_client import make_wsgi_app

    cls: type[BoundedServer] = _BoundedServer6 if ":" in addr else BoundedServer
    bounded = type("Bounded", (cls,), {"max_connections": max_connections})
    httpd: Any = make_server(addr.strip("[]"), port, make_wsgi_app(registry), server_class=bounded,
                             handler_class=_Handler)  # fmt: skip
    threading.Thread(target=httpd.serve_forever, name="hgo-metrics", daemon=True).start()
    assert isinstance(httpd, BoundedServer)
    return httpd
