"""A fault-injecting HTTP proxy on loopback, between one node and the orchestrator.

The node joins through :attr:`FaultProxy.url`; the proxy forwards every request to
:attr:`FaultProxy.target` and its answer back. Once it has forwarded a request that
``kill_after(method, path)`` matches, and its answer, it SIGKILLs the process that sent it
(found from the connection's socket in ``/proc``): a crash at exactly that point of the
protocol, injected from outside the product.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

HOP_BY_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class FaultProxy:
    def __init__(self, kill_after: Callable[[str, str], bool]):
        self.target = ""  # the orchestrator's URL, set before the node joins
        self.killed: list[tuple[int, str]] = []  # (pid, request) of each process killed
        self._kill_after = kill_after
        self._lock = threading.Lock()
        self._upstream = httpx.Client(timeout=600)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._upstream.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Accept-Encoding"] = "identity"
                answer = proxy._upstream.request(
                    self.command, proxy.target + self.path, content=body, headers=headers
                )
                victim = None
                if proxy._kill_after(self.command, self.path):  # found while it awaits the answer
                    victim = proxy._sender(self.client_address[1], f"{self.command} {self.path}")
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)
                self.wfile.flush()
                if victim is not None:
                    os.kill(victim, signal.SIGKILL)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

            def log_message(self, *args) -> None:
                pass

        return Handler

    def _sender(self, peer_port: int, request: str) -> int:
        pid = _socket_owner(peer_port, self._server.server_address[1])
        if pid is None:
            raise RuntimeError(f"no process owns the connection that sent {request}")
        with self._lock:
            self.killed.append((pid, request))
        return pid


def _socket_owner(local_port: int, remote_port: int) -> int | None:
    """The process holding the loopback TCP socket ``local_port`` → ``remote_port`` (Linux)."""
    wanted = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if (
                int(local.rsplit(":", 1)[1], 16) == local_port
                and int(remote.rsplit(":", 1)[1], 16) == remote_port
            ):
                wanted.add(f"socket:[{inode}]")
    for fds in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) in wanted for fd in fds.iterdir()):
                return int(fds.parent.name)
        except OSError:  # gone, or not ours to read
            continue
    return None


@contextmanager
def fault_proxy(kill_after: Callable[[str, str], bool]) -> Iterator[FaultProxy]:
    proxy = FaultProxy(kill_after)
    try:
        yield proxy
    finally:
        proxy.close()
