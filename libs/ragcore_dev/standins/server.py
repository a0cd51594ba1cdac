"""What every stand-in shares: a threaded HTTP/1.1 server, routing, bearer auth, faults, a request
log.

A stand-in is an `App` (routes over JSON) served by `StandInServer`. Requests under `/_control` are
the test's own API: they skip auth, faults and the log. Start one with `start_in_thread` (tests) or
`run_until_signalled` (the `python -m ragcore_dev.standins.<name>` entrypoints).
"""

from __future__ import annotations

import collections
import contextlib
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, unquote

import orjson

CONTROL_PREFIX = "/_control"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Message
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON; a malformed body is the caller's fault (400)."""
        if not self.body:
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise HTTPError(400, f"body is not JSON: {exc}") from exc


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"


class HTTPError(Exception):
    """Raised by a route to answer `status` with the app's error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(value: Any, status: int = 200) -> Response:
    """Serialise with orjson; numpy arrays are written as JSON arrays."""
    return Response(status, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))


@dataclass
class Fault:
    remaining: int
    status: int | None = None
    hang: bool = False
    #: answered, but only once released: a page served now that arrives late
    hold: bool = False
    after: bool = False
    path: str | None = None
    skip: int = 0  # matching requests that pass untouched before the fault starts

    def snapshot(self) -> dict[str, Any]:
        return {
            "remaining": self.remaining,
            "status": self.status,
            "hang": self.hang,
            "hold": self.hold,
            "after": self.after,
            "path": self.path,
            "skip": self.skip,
        }


class Faults:
    """Injected failures, consumed in order by the requests they match.

    A fault answers `status` or hangs (the client times out). With `after=True` the request is
    processed first and only its answer is lost: the case idempotency keys exist for.
    """

    def __init__(self, stopping: threading.Event) -> None:
        self._lock = threading.Condition()
        self._pending: list[Fault] = []
        self._generation = 0
        self._stopping = stopping
        self.delay_seconds = 0.0
        #: Requests answered and held back now (`hold`).
        self.holding = 0
        self._outage: tuple[int, float] | None = None  # (status, monotonic deadline)

    def fail(
        self,
        status: int,
        times: int = 1,
        path: str | None = None,
        after: bool = False,
        skip: int = 0,
    ) -> None:
        """The next `times` requests (under `path`), after `skip` that pass, answer `status`."""
        with self._lock:
            self._pending.append(Fault(times, status=status, after=after, path=path, skip=skip))

    def outage(self, status: int = 503, seconds: float = float("inf")) -> None:
        """Every request answers `status` for `seconds` (until `clear()` by default): a neighbour
        down."""
        with self._lock:
            self._outage = (status, time.monotonic() + seconds)

    def hang(self, times: int = 1, path: str | None = None, after: bool = False) -> None:
        """The next `times` requests (under `path`) never get an answer until released."""
        with self._lock:
            self._pending.append(Fault(times, hang=True, after=after, path=path))

    def hold(self, times: int = 1, path: str | None = None, skip: int = 0) -> None:
        """The next `times` requests (under `path`), after `skip` that pass, are answered as of
        now, but the answer goes out only when released (`clear()`): a delayed page."""
        with self._lock:
            self._pending.append(Fault(times, hold=True, after=True, path=path, skip=skip))

    def set_delay(self, seconds: float) -> None:
        """Delay every request by `seconds`."""
        self.delay_seconds = seconds

    def clear(self) -> None:
        """Drop pending faults and the delay, and release hanging requests."""
        with self._lock:
            self._pending.clear()
            self._outage = None
            self.delay_seconds = 0.0
            self._generation += 1
            self._lock.notify_all()

    def take(self, path: str) -> Fault | None:
        """The fault this request consumes, if any."""
        with self._lock:
            if self._outage is not None and time.monotonic() < self._outage[1]:
                return Fault(1, status=self._outage[0], path=path)
            for fault in self._pending:
                if fault.path is None or path.startswith(fault.path):
                    if fault.skip:
                        fault.skip -= 1
                        return None
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._pending.remove(fault)
                    return fault
        return None

    def wait_released(self) -> None:
        """Block a hanging request until `clear()` or server stop."""
        with self._lock:
            generation = self._generation
            self._lock.wait_for(lambda: self._generation != generation or self._stopping.is_set())

    def wait_held(self) -> None:
        """Block a held answer until `clear()` or server stop, counted in `holding`."""
        with self._lock:
            self.holding += 1
            generation = self._generation
            self._lock.wait_for(lambda: self._generation != generation or self._stopping.is_set())
            self.holding -= 1

    def wake_all(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            outage = self._outage is not None and time.monotonic() < self._outage[1]
            return {
                "pending": [f.snapshot() for f in self._pending],
                "delay_seconds": self.delay_seconds,
                "outage_status": self._outage[0] if outage and self._outage else None,
            }


class RequestLog:
    """Count of every non-control request, and the most recent ones."""

    def __init__(self, keep: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self.count = 0

    def record(self, request: Request, status: int | None) -> None:
        entry = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "status": status,  # None: the request hung and got no answer
            "headers": {k.lower(): v for k, v in request.headers.items()},
        }
        with self._lock:
            self.count += 1
            self._entries.append(entry)

    def entries(self, path: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._entries if path is None or e["path"].startswith(path)]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.count = 0


Route = Callable[[Request], Response]
_PARAM = re.compile(r"\{(\w+)\}")


class App:
    """Routes plus the controls every stand-in shares; subclasses add their own routes."""

    name = "standin"

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.stopping = threading.Event()
        self.faults = Faults(self.stopping)
        self.log = RequestLog()
        self._routes: list[tuple[str, re.Pattern[str], Route]] = []
        self.route("GET", "/_control/requests", self._control_requests)
        self.route("DELETE", "/_control/requests", self._control_clear_requests)
        self.route("GET", "/_control/faults", lambda _: json_response(self.faults.snapshot()))
        self.route("POST", "/_control/faults", self._control_add_fault)
        self.route("DELETE", "/_control/faults", self._control_clear_faults)

    def route(self, method: str, pattern: str, handler: Route) -> None:
        """Serve `method pattern`; `{name}` matches one path segment, given to the handler
        URL-decoded."""
        regex = re.compile("^" + _PARAM.sub(r"(?P<\1>[^/]+)", pattern) + "$")
        self._routes.append((method, regex, handler))

    def error(self, status: int, message: str) -> Response:
        """The error body; Qdrant's stand-in answers in Qdrant's shape."""
        return json_response({"error": message, "status": status}, status)

    def authorized(self, request: Request) -> bool:
        return self.token is None or request.headers.get("Authorization") == f"Bearer {self.token}"

    def close(self) -> None:
        """Release what the app holds (files, engines); called once the server has stopped."""

    def handle(self, request: Request) -> Response | None:
        """Answer one request; None means drop the connection without an answer."""
        if request.path.startswith(CONTROL_PREFIX):
            return self._dispatch(request)
        fault = self.faults.take(request.path)
        if self.faults.delay_seconds:
            self.stopping.wait(self.faults.delay_seconds)
        if fault is None or fault.after:
            if self.authorized(request):
                response = self._dispatch(request)
            else:
                response = self.error(401, "missing or wrong bearer token")
        if fault is not None:
            if fault.hang:
                self.log.record(request, None)
                self.faults.wait_released()
                return None
            if fault.hold:
                self.faults.wait_held()
                self.log.record(request, response.status)
                return response
            assert fault.status is not None
            response = self.error(fault.status, "injected fault")
        self.log.record(request, response.status)
        return response

    def _dispatch(self, request: Request) -> Response:
        allowed = False
        for method, regex, handler in self._routes:
            match = regex.match(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed = True
                continue
            request.params = {k: unquote(v) for k, v in match.groupdict().items()}
            try:
                return handler(request)
            except HTTPError as exc:
                return self.error(exc.status, exc.message)
            # a stand-in bug must show up as a 500 and a traceback, not a hang
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                return self.error(500, f"{type(exc).__name__}: {exc}")
        if allowed:
            return self.error(405, f"{request.method} not allowed on {request.path}")
        return self.error(404, f"no route for {request.method} {request.path}")

    def _control_requests(self, request: Request) -> Response:
        return json_response(
            {"count": self.log.count, "requests": self.log.entries(request.query.get("path"))}
        )

    def _control_clear_requests(self, _: Request) -> Response:
        self.log.clear()
        return json_response({"ok": True})

    def _control_add_fault(self, request: Request) -> Response:
        spec = request.json() or {}
        times, path, after = (
            int(spec.get("times", 1)),
            spec.get("path"),
            bool(spec.get("after", False)),
        )
        if "delay_ms" in spec:
            self.faults.set_delay(float(spec["delay_ms"]) / 1000)
        if "outage_seconds" in spec:
            self.faults.outage(int(spec.get("status", 503)), float(spec["outage_seconds"]))
        elif spec.get("hang"):
            self.faults.hang(times, path, after)
        elif "status" in spec:
            self.faults.fail(int(spec["status"]), times, path, after)
        elif "delay_ms" not in spec:
            raise HTTPError(400, "a fault needs `status`, `hang`, `outage_seconds` or `delay_ms`")
        return json_response(self.faults.snapshot())

    def _control_clear_faults(self, _: Request) -> Response:
        self.faults.clear()
        return json_response(self.faults.snapshot())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections
    disable_nagle_algorithm = True  # small answers must not wait for the client's delayed ACK
    server: StandInServer

    def _handle(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            self.send_error(
                HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not supported; send Content-Length"
            )
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        request = Request(
            self.command, path, dict(parse_qsl(query, keep_blank_values=True)), self.headers, body
        )
        response = self.server.app.handle(request)
        if response is None:
            self.close_connection = True
            return
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # One write: headers and body leave together.
        self.wfile.write(head + response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the app's request log is the record."""


class StandInServer(ThreadingHTTPServer):
    """One thread per connection; `stop()` closes them all and joins their threads."""

    daemon_threads = True  # a forgotten server must never keep a process alive

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self._lock = threading.Lock()
        self._connections: dict[threading.Thread, socket.socket] = {}
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def name(self) -> str:
        """Prefix of this server's thread names, e.g. `ingest:7101`."""
        return f"{self.app.name}:{self.port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"{self.name}-conn",
            daemon=True,
        )
        with self._lock:
            self._connections[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._connections.pop(threading.current_thread(), None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout) or a connection cut by stop() is expected, not a stand-in
        # bug.
        if self.app.stopping.is_set() or isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def stop(self) -> None:
        """Stop accepting, end open connections (idle keep-alives, delays, hangs) and wait for
        them."""
        self.app.stopping.set()
        self.app.faults.wake_all()
        self.shutdown()
        with self._lock:
            connections = list(self._connections.items())
        for _, sock in connections:
            with contextlib.suppress(OSError):  # already closed by its own thread
                sock.shutdown(socket.SHUT_RDWR)
        for thread, _ in connections:
            thread.join(timeout=10)
        self.server_close()
        self.app.close()


A = TypeVar("A", bound=App)


@dataclass
class Running(Generic[A]):
    """A stand-in serving in a background thread."""

    app: A
    server: StandInServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(timeout=10)

    def __enter__(self) -> Running[A]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(app: A, host: str = "127.0.0.1", port: int = 0) -> Running[A]:
    """Serve `app` on a background thread; port 0 picks a free port."""
    server = StandInServer(app, host, port)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},
        name=f"{server.name}-server",
        daemon=True,
    )
    thread.start()
    return Running(app, server, thread)


def run_until_signalled(app: App, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then stop cleanly; prints the URL once listening."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    running = start_in_thread(app, host, port)
    print(f"{app.name} listening on {running.url}", flush=True)
    while not stop.wait(0.5):
        pass
    running.stop()
