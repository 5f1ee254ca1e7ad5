"""The labelling web server: a static page plus a small JSON API over a :class:`LabelSession`.

Routes (anything else is 404; a known route with another method is 405)::

    GET    /                       the page (also /app.js, /app.css)
    GET    /api/state              grid, target, labelled, current, ids, is_labelled, model, retrain
    GET    /api/image/<index>      image bytes of the index-th image of the session order
    GET    /api/labels/<id>        {"id", "index", "grid", "labelled", "mask"}
    PUT    /api/labels/<id>        body {"grid": R, "mask": "0101..."} -> saved at once; the counter
    DELETE /api/labels/<id>        unlabel the image
    GET    /api/prediction/<id>    {"probabilities": [R*R floats], "grid", "model_version"} (with a model)
    GET    /api/retrain            retrain status
    POST   /api/retrain            start a short segmenter training on the labels so far

``<id>`` is URL-encoded (ImageFolder ids hold ``/``). Images are addressed only by their
index in the session order and static files come from a fixed table, so no request names
a file path. Hardening:

- bound to 127.0.0.1 unless asked;
- the Host header must be one of the names of the address the server is bound to (for
  0.0.0.0 / ``::``: this machine's host names and addresses), never just whatever the request
  says: a DNS-rebinding page's ``Host: evil.example`` is refused;
- requests that change state must come without an Origin or with one of those same names,
  and, with a body, as ``application/json`` (no cross-site form posts);
- beyond loopback every request needs the secret token of :attr:`LabelServer.url`: the
  ``?token=`` of the printed URL, which the answer turns into an ``HttpOnly; SameSite=Strict``
  cookie that the page then uses (the page drops the token from the address bar);
- bodies are capped at 1 MiB and parsed by :func:`parse_json_body`; bad input gets 4xx with a
  JSON ``{"error": ...}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import socket
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from dali_abs.errors import DaliAbsError
from dali_abs.labeling.session import LabelSession, RequestError

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"), "/app.css": ("app.css", "text/css; charset=utf-8")}
MAX_BODY = 1 << 20
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARDS = ("0.0.0.0", "::", "")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(addr: str) -> str:
    """An address or name as it appears in a Host header: lower case, IPv6 in brackets."""
    addr = addr.strip().lower()
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr


def _addresses_of(name: str) -> set[str]:
    try:
        return {_host_name(str(info[4][0]).split("%")[0]) for info in socket.getaddrinfo(name, None)}
    except (OSError, UnicodeError):
        return set()


def _primary_address() -> str | None:
    """The address this machine reaches others from (no packet is sent), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def _interface_addresses() -> set[str]:
    """IPv4 addresses of this machine's network interfaces (Linux ioctl; empty elsewhere)."""
    out: set[str] = set()
    try:
        import fcntl
        import struct

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
                    out.add(socket.inet_ntoa(packed[20:24]))
                except OSError:
                    continue
    except (ImportError, OSError, AttributeError):
        pass
    return out


def _machine_names() -> set[str]:
    """Names and addresses under which this machine can be reached (for a wildcard binding)."""
    names = set(LOOPBACK_NAMES)
    for n in {socket.gethostname(), socket.getfqdn()}:
        if n:
            names.add(_host_name(n))
            names |= _addresses_of(n)
    names |= {_host_name(a) for a in _interface_addresses()}
    primary = _primary_address()
    if primary:
        names.add(primary)
    return names


def _unquote(text: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise RequestError(f"image id {text!r} is not valid percent-encoded UTF-8") from None


def parse_json_body(raw: bytes):
    """A request body (at most :data:`MAX_BODY` bytes) as JSON; every way it can fail is a 400:
    not UTF-8, not JSON, an integer over Python's digit limit (4,300), nesting past the
    recursion limit."""
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise RequestError("body is not valid JSON: nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"body is not valid JSON: {e}") from None
    except ValueError:  # int()'s digit limit (sys.get_int_max_str_digits, Python >= 3.10.7)
        digits = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
        raise RequestError(f"body is not valid JSON: a number has more than {digits} digits") from None


class LabelServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, session: LabelSession, host: str = "127.0.0.1", port: int = 0, quiet: bool = True):
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise DaliAbsError(f"--port {port} is not a port number: use 1..65535, or 0 for any free port")
        self.session = session
        self.quiet = quiet
        if ":" in host:  # IPv6 literal
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)
        self.host = host
        self.loopback = _is_loopback(host)
        # Beyond loopback anyone on the network (and any page that rebinds a name to this machine)
        # can connect: every request then needs this secret (printed in the URL, then a cookie).
        self.token = None if self.loopback else secrets.token_urlsafe(24)
        self.cookie_name = f"dali_abs_token_{self.port}"  # cookies ignore the port: one per server
        if host in WILDCARDS:
            self.names = _machine_names()
            hostname = socket.gethostname()
            self.public_name = _primary_address() or (_host_name(hostname) if hostname and _addresses_of(hostname)
                                                      else "127.0.0.1")
        else:
            self.names = {_host_name(host)} | _addresses_of(host)
            if _host_name(host) in ("127.0.0.1", "localhost", "[::1]"):
                self.names |= set(LOOPBACK_NAMES)
            self.public_name = _host_name(host)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        """The address to open: this server's name, and beyond loopback its token."""
        query = f"?token={self.token}" if self.token else ""
        return f"http://{self.public_name}:{self.port}/{query}"

    def allowed_hosts(self) -> set[str]:
        """Host (and Origin) values this server answers to: its names, with its port or bare (what
        matters against DNS rebinding is the name; browsers always send the port)."""
        return {f"{n}:{self.port}" for n in self.names} | set(self.names)

    def token_ok(self, value: str | None) -> bool:
        return bool(self.token) and value is not None and hmac.compare_digest(value.encode(), self.token.encode())

    def start_background(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, args=(0.05,), name="dali-abs-label-server", daemon=True)
        t.start()
        return t


class Handler(BaseHTTPRequestHandler):
    server: LabelServer
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a connection may sit idle (or dribble a request) before it is dropped
    server_version = "dali-abs-label"
    sys_version = ""

    # ------------------------------------------------------------- plumbing
    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's signature)
        if not self.server.quiet:
            sys.stderr.write("%s - %s\n" % (self.address_string(), format % args))

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        if getattr(self, "_set_cookie", None):
            self.send_header("Set-Cookie", self._set_cookie)
            self._set_cookie = None
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, extra: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", extra)

    def _error(self, status: int, message: str, extra: dict | None = None) -> None:
        self._json(status, {"error": message}, extra)

    def send_error(self, code, message=None, explain=None):
        """BaseHTTPRequestHandler's own errors (bad request line, header too long) as JSON."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # answer with a status line even to a garbled request
        try:
            self._error(code, message or self.responses.get(code, ("error",))[0], {"Connection": "close"})
        except Exception:  # the client is gone
            pass

    def __getattr__(self, name: str):
        # Any other method (PATCH, OPTIONS, TRACE, FOO...): 405 rather than the base class's 501.
        if name.startswith("do_"):
            return self._not_allowed_any
        raise AttributeError(name)

    def _not_allowed_any(self) -> None:
        self._dispatch()

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    # ------------------------------------------------------------- checks
    def _check_host(self) -> bool:
        host = (self.headers.get("Host") or "").strip().lower()
        if host in self.server.allowed_hosts():
            return True
        names = ", ".join(sorted(self.server.names))
        self._error(403, f"Host {host!r} refused: this server answers only to {names} (port {self.server.port}); "
                         f"to reach it under another name, start it with --host <that name>")
        return False

    def _check_token(self) -> bool:
        """Beyond loopback: the ``token`` query parameter (answered with the cookie) or the cookie."""
        srv = self.server
        if srv.token is None:
            return True
        given = parse_qs(urlsplit(self.path).query).get("token", [None])[0]
        if srv.token_ok(given):
            self._set_cookie = f"{srv.cookie_name}={srv.token}; Path=/; HttpOnly; SameSite=Strict"
            return True
        from http.cookies import CookieError, SimpleCookie

        try:
            jar = SimpleCookie(self.headers.get("Cookie") or "")
        except CookieError:
            jar = {}
        morsel = jar.get(srv.cookie_name)
        if srv.token_ok(morsel.value if morsel is not None else None):
            return True
        self._error(403, "this server needs its secret token: open the URL it printed at start "
                         "(http://...:PORT/?token=...)")
        return False

    def _check_origin(self) -> bool:
        origin = self.headers.get("Origin")
        if origin is None:  # not a browser cross-site request (curl, scripts, same-origin GET)
            return True
        netloc = urlsplit(origin).netloc.lower() if origin.lower().startswith(("http://", "https://")) else ""
        if netloc and netloc in self.server.allowed_hosts():
            return True
        self._error(403, f"Origin {origin!r} refused: requests that change labels must come from this page")
        return False

    def _read_json(self):
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            raise RequestError("chunked bodies are not accepted; send Content-Length", 411)
        if length is None:
            raise RequestError("missing Content-Length", 411)
        try:
            n = int(length)
        except ValueError:
            raise RequestError(f"bad Content-Length {length!r}") from None
        if n < 0:
            raise RequestError(f"bad Content-Length {length!r}")
        if n > MAX_BODY:
            self.close_connection = True
            raise RequestError(f"body of {n} bytes is over the {MAX_BODY}-byte limit", 413)
        raw = self.rfile.read(n)
        self._body_read = True
        if n == 0:
            return None
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise RequestError(f"Content-Type must be application/json, got {ctype or 'none'!r}", 415)
        return parse_json_body(raw)

    # ------------------------------------------------------------- routing
    def _dispatch(self) -> None:
        self._body_read = False
        try:
            self._dispatch_checked()
        finally:
            unread = (self.headers.get("Content-Length") or "0").strip() not in ("", "0") \
                or self.headers.get("Transfer-Encoding")
            if not self._body_read and unread:
                self.close_connection = True  # an unread body would be taken for the next request

    def _dispatch_checked(self) -> None:
        self._set_cookie = None
        try:
            if not self._check_host() or not self._check_token():
                return
            path = urlsplit(self.path).path
            route, arg, allowed = self._route(path)
            if route is None:
                self._error(404, f"no such page or API route: {path}")
                return
            method = "GET" if self.command == "HEAD" else self.command
            if method not in allowed:
                self._error(405, f"{self.command} not allowed on {path}; allowed: {', '.join(allowed)}",
                            {"Allow": ", ".join(allowed)})
                return
            if method != "GET" and not self._check_origin():
                return
            route(method, arg)
        except RequestError as e:
            self._error(e.status, str(e))
        except DaliAbsError as e:  # e.g. an image file that no longer decodes
            self._error(422, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # a bug: report it, keep serving
            traceback.print_exc()
            try:
                self._error(500, f"internal error: {type(e).__name__}: {e}")
            except Exception:
                pass

    def _route(self, path: str):
        if path in STATIC:
            return self._static, path, ("GET",)
        if path == "/favicon.ico":
            return self._no_icon, None, ("GET",)
        parts = path.split("/")
        if len(parts) < 3 or parts[0] != "" or parts[1] != "api":
            return None, None, ()
        name, rest = parts[2], "/".join(parts[3:])
        if len(parts) == 3:
            table = {"state": (self._state, ("GET",)), "retrain": (self._retrain, ("GET", "POST"))}
            if name in table:
                return table[name][0], None, table[name][1]
            return None, None, ()
        if not rest:
            return None, None, ()
        if name == "image":
            return self._image, rest, ("GET",)
        if name == "labels":
            return self._labels, _unquote(rest), ("GET", "PUT", "DELETE")
        if name == "prediction":
            return self._prediction, _unquote(rest), ("GET",)
        return None, None, ()

    # ------------------------------------------------------------- handlers
    def _static(self, method, path):
        name, ctype = STATIC[path]
        self._send(200, (STATIC_DIR / name).read_bytes(), ctype,
                   {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                                               "frame-ancestors 'none'"})

    def _no_icon(self, method, _):
        self._send(204, b"", "image/x-icon")

    def _state(self, method, _):
        self._json(200, self.server.session.state())

    def _image(self, method, text):
        if not text.isascii() or not text.isdigit() or len(text) > 9:
            raise RequestError(f"image index must be a non-negative integer, got {text!r}", 404)
        data, ctype = self.server.session.image_bytes(int(text))
        self._send(200, data, ctype)

    def _labels(self, method, image_id):
        s = self.server.session
        if method == "GET":
            self._json(200, s.get_label(image_id))
        elif method == "PUT":
            body = self._read_json()
            s.check_id(image_id)
            self._json(200, s.set_label(image_id, body))
        else:
            self._json(200, s.delete_label(image_id))

    def _prediction(self, method, image_id):
        self._json(200, self.server.session.prediction(image_id))

    def _retrain(self, method, _):
        s = self.server.session
        if method == "GET":
            self._json(200, s.state()["retrain"])
        else:
            self._read_json()  # optional {} body; refuses non-JSON content types
            self._json(202, s.start_retrain())


def serve(session: LabelSession, host: str = "127.0.0.1", port: int = 0, quiet: bool = True) -> LabelServer:
    """Bind a :class:`LabelServer` (not yet serving: call ``serve_forever`` or ``start_background``)."""
    return LabelServer(session, host, port, quiet)
