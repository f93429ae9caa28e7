"""A real HTTP server on loopback that drops the connection instead of answering the first request.

For clients' handling of a lost answer: the request arrived (it is recorded), the reply did not.
Later requests get ``status`` with ``{"detail": detail}``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def lossy_server(status: int, detail: str) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """Yields (base URL, the (method, body) of every request received)."""
    received: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append((self.command, body))
            if len(received) == 1:
                self.close_connection = True  # the request arrived, its answer is lost
                return
            data = json.dumps({"detail": detail}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _handle

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
