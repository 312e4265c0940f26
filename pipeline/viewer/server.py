"""`fmpipe view`: a local, read-only web viewer that draws any map of any image on request.

The standard library's ThreadingHTTPServer (one thread per connection, HTTP/1.1 keep-alive)
in front of `routes.App`; nothing else is needed for one user on a loopback port, and it
keeps the viewer free of dependencies. It binds 127.0.0.1 unless told otherwise (and warns
then), answers GET and HEAD only, checks the Host header on loopback (a web page elsewhere
cannot reach it through DNS rebinding), and sends a Content-Security-Policy that allows only
its own scripts, styles and pictures. SIGTERM and Ctrl-C stop it cleanly. No torch.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..errors import UsageError
from .catalog import Catalog
from .config import ViewConfig
from .routes import App, Response

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 30  # a keep-alive connection idle this long is closed (its thread ends)
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback, in any spelling the socket layer accepts:
    localhost, ::1, [::1], 127.0.0.1, 127.x.y.z, and inet_aton's short forms (127.1, 0x7f.1, 2130706433)."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:  # what bind() does with an IPv4 string Python's ipaddress refuses
        return ipaddress.IPv4Address(socket.inet_aton(name)).is_loopback
    except OSError:
        return False


class Viewer:
    """A bound viewer: `url`, `serve_forever()` (blocking), `shutdown()` from another thread, `close()`."""

    def __init__(self, config: ViewConfig):
        self.config = config
        self.catalog = Catalog(config.path, config.images_root)
        try:
            self.app = App(self.catalog)
            self.httpd = _bind(config.host, config.port)
        except BaseException:
            self.catalog.close()
            raise
        self.httpd.app = self.app
        # The address the socket is bound to decides too, whatever --host's spelling (127.1 binds 127.0.0.1).
        loopback = is_loopback(config.host) or is_loopback(str(self.httpd.server_address[0]))
        self.httpd.allowed_hosts = _allowed_hosts(config.host, self.port) if loopback else None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        self.httpd.shutdown()

    def close(self) -> None:
        self.httpd.server_close()
        self.catalog.close()

    def __enter__(self) -> Viewer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(config: ViewConfig) -> None:
    """Serve the file until Ctrl-C or SIGTERM (blocking); prints the URL to open when ready."""
    if not is_loopback(config.host):
        log.warning(
            "serving on %s: anyone who can reach this address can read the maps and source images of %s; "
            "prefer the default 127.0.0.1 with SSH port forwarding (see the README)",
            config.host,
            config.path,
        )
    with Viewer(config) as viewer:
        previous = _interrupt_on_sigterm()
        catalog = viewer.catalog
        state = f", partial: {len(catalog.rows)} of {len(catalog)} images done" if catalog.partial else ""
        print(f"fmpipe view: {catalog.path}{state}\nopen {viewer.url}  (Ctrl-C stops)", flush=True)
        try:
            viewer.serve_forever()
        except KeyboardInterrupt:
            log.info("viewer stopped")
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _interrupt_on_sigterm():
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does (main thread only); returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _allowed_hosts(host: str, port: int) -> frozenset[str]:
    """Host headers a loopback viewer answers: loopback names, with or without the port. A page
    elsewhere that rebinds its own name to 127.0.0.1 still sends that name, and is refused."""
    names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
    return frozenset(n.lower() for name in names for n in (name, f"{name}:{port}"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    app: App
    allowed_hosts: frozenset[str] | None

    def handle_error(self, request, client_address) -> None:
        """A client that went away mid-response (a page left while its pictures load) is one log
        line; anything else keeps socketserver's traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.info("client %s went away mid-response (%s)", client_address[0], type(error).__name__)
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


def _bind(host: str, port: int) -> _Server:
    kind = _Server6 if ":" in host else _Server
    try:
        return kind((host, port), _Handler)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on {host} is in use (another fmpipe view?); pass --port 0 for any free port."
            ) from None
        raise UsageError(f"cannot listen on {host}:{port} ({err.strerror or err}); check --host and --port.") from None


class _Handler(BaseHTTPRequestHandler):
    """GET and HEAD through the App; every other method is a 405."""

    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "fmpipe-view"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S
    # Headers and body go out as two writes; with Nagle's algorithm on, the second waits for the
    # client's delayed ACK: 40 ms on every keep-alive request (measured by scripts/bench_view.py).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # any other method (POST, PUT, DELETE, FOO): not allowed
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._send(Response(405, "text/plain; charset=utf-8", b"only GET and HEAD\n"), head=False, allow=True)

    def _answer(self, head: bool) -> None:
        allowed = self.server.allowed_hosts
        host = (self.headers.get("Host") or "").lower()
        if allowed is not None and host and host not in allowed:
            response = Response(403, "text/plain; charset=utf-8", b"this viewer answers only on loopback\n")
        elif not self.path.startswith("/"):
            response = Response(400, "text/plain; charset=utf-8", b"the request target must be a path\n")
        else:
            response = self.server.app.get(self.path)
        self._send(response, head)

    def _send(self, response: Response, head: bool, allow: bool = False) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", response.cache)
        if response.download:
            self.send_header("Content-Disposition", f'attachment; filename="{response.download}"')
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        if allow:
            self.send_header("Allow", "GET, HEAD")
        if response.status >= 400 and self.command not in ("GET", "HEAD"):
            self.close_connection = True  # a body we did not read may follow
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)
