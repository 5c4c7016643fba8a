"""Running the app with uvicorn: in the foreground (`finecap serve`) or in a background
thread (tests, notebooks, benchmarks).

    with BackgroundServer(create_app(service)) as server:
        httpx.get(f"{server.url}/healthz")

The listening socket is bound before uvicorn starts, so a port in use is one clear error
(`ServeError`) instead of a log line from inside the server, and port 0 picks a free port.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from finecap.errors import UserError


class ServeError(UserError, OSError):
    """The service cannot listen where it was asked to."""


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening (port 0: any free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ServeError(f"--host {host}: not an address of this machine ({err})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ServeError(f"--host {host} --port {port}: cannot listen ({err.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def _server(app, log_level: str) -> uvicorn.Server:
    # access_log off: the app writes its own line per request (finecap.serve.app._RequestLog).
    config = uvicorn.Config(app, access_log=False, log_level=log_level, lifespan="on")
    return uvicorn.Server(config)


def serve(app, sock: socket.socket, log_level: str = "info") -> None:
    """Serve `app` on `sock` until Ctrl-C / SIGTERM (uvicorn's graceful shutdown)."""
    _server(app, log_level).run(sockets=[sock])


class BackgroundServer:
    """`app` served by uvicorn in a daemon thread on `host` and a free port, while in `with`."""

    def __init__(self, app, host: str = "127.0.0.1", log_level: str = "warning") -> None:
        self.sock = listen(host, 0)
        self.url = url_of(self.sock)
        self.server = _server(app, log_level)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see its log above)")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
