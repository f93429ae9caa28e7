"""A site's secure-aggregation POSTs against a real HTTP server that loses one answer."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from datasite import secure_rounds


class LosesFirstAnswer(BaseHTTPRequestHandler):
    """Stores every POST; drops the connection instead of answering the first one."""

    protocol_version = "HTTP/1.1"
    received: list[bytes]
    conflict: str

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(body)
        if len(self.received) == 1:
            self.close_connection = True  # the message arrived, its answer is lost
            return
        data = json.dumps({"detail": self.conflict}).encode()
        self.send_response(409)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


Served = tuple[secure_rounds.OrchestratorCalls, list[bytes], ThreadingHTTPServer]


def _calls(conflict: str, monkeypatch) -> Served:
    monkeypatch.setattr(secure_rounds, "POLL_SECONDS", 0.01)
    received: list[bytes] = []
    handler = type("Handler", (LosesFirstAnswer,), {"received": received, "conflict": conflict})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = secure_rounds.OrchestratorCalls.__new__(secure_rounds.OrchestratorCalls)
    api.http = httpx.Client(base_url=f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
    return api, received, server


def test_a_retry_told_already_sent_counts_as_delivered(monkeypatch) -> None:
    api, received, server = _calls("site-a already sent its masked input", monkeypatch)
    try:
        secure_rounds.send(api, "/masked", time.monotonic() + 10, content=b"blob")
    finally:
        api.close()
        server.shutdown()
    assert received == [b"blob", b"blob"]


def test_other_conflicts_after_a_retry_still_abort(monkeypatch) -> None:
    api, received, server = _calls("masked inputs are not accepted now (phase unmask)", monkeypatch)
    try:
        with pytest.raises(secure_rounds.SecureAbort, match="HTTP 409: masked inputs are not accepted"):
            secure_rounds.send(api, "/masked", time.monotonic() + 10, content=b"blob")
    finally:
        api.close()
        server.shutdown()
    assert len(received) == 2
