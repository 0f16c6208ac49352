"""optuna-dashboard over a dal-search storage, behind a token and read-only unless told otherwise.

The figures of `dal-search report` (pushed with `search.report.push_to_dashboard`) appear on each study's
page in the dashboard, beside its own history, importance and intermediate-value plots.

optuna-dashboard itself has no authentication and lets anyone who reaches it delete studies, so its WSGI app
(`optuna_dashboard.wsgi`) runs inside `TokenGate`:

- Credentials: the token (`--token`, else $DAL_SEARCH_DASHBOARD_TOKEN, else a fresh random one printed in the
  start-up URL), sent as `Authorization: Bearer TOKEN`, as HTTP Basic with any user name and the token as the
  password, or once as `/?token=TOKEN` (any page), which sets an HttpOnly, SameSite=Strict cookie and
  redirects (303) to the same page without the token in its URL. Tokens are compared in constant time.
- Without valid credentials every request is answered 401 with `WWW-Authenticate: Basic realm="dal-search"`
  (a browser then asks for a user name and password); a wrong `?token=` is a 401 as well.
- Read-only by default: with valid credentials, every method but GET and HEAD is answered 403 (creating,
  renaming and deleting studies, notes, artifacts, tell); `--allow-writes` lets them through.

It is served by a threaded wsgiref server (the one optuna-dashboard's own CLI uses); request lines are not
logged, so no token from a URL lands in a log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import socket
from http.cookies import CookieError, SimpleCookie
from socketserver import ThreadingMixIn
from typing import Callable, Iterable
from urllib.parse import parse_qsl, quote, urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

TOKEN_ENV = "DAL_SEARCH_DASHBOARD_TOKEN"
REALM = "dal-search"
COOKIE = "dal_search_dashboard"
READ_METHODS = frozenset({"GET", "HEAD"})

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


class TokenGate:
    """WSGI middleware: lets a request through to `app` only with the token, and only GET/HEAD unless
    `allow_writes`. The cookie holds an HMAC of the token, not the token itself."""

    def __init__(self, app: WSGIApp, token: str, *, allow_writes: bool = False) -> None:
        if not token:
            raise ValueError("an empty token would let everyone in")
        self.app = app
        self.allow_writes = allow_writes
        self._token = token.encode()
        self._cookie = hmac.new(self._token, b"dal-search dashboard cookie", hashlib.sha256).hexdigest().encode()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        offered = [v for k, v in query if k == "token"]
        if offered:
            if not self._is_token(offered[-1]):
                return self._deny(start_response)
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            path = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""), safe="/:@!$&'()*+,;=-._~")
            location = "/" + path.lstrip("/")  # never "//host": that would send the browser to another site
            start_response("303 See Other", [
                ("Location", location + (f"?{rest}" if rest else "")),
                ("Set-Cookie", f"{COOKIE}={self._cookie.decode()}; Path=/; HttpOnly; SameSite=Strict"),
                ("Cache-Control", "no-store"), ("Referrer-Policy", "no-referrer"),
                ("Content-Type", "text/plain; charset=utf-8")])
            return [b"signed in; continue without the token in the address\n"]
        if not self._authenticated(environ):
            return self._deny(start_response)
        if environ.get("REQUEST_METHOD", "GET").upper() not in READ_METHODS and not self.allow_writes:
            body = (b"this dashboard is read-only: restart it with 'dal-search dashboard --allow-writes' to "
                    b"edit notes or studies\n")
            start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8"),
                                              ("Content-Length", str(len(body)))])
            return [body]
        return self.app(environ, start_response)

    def _is_token(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode(), self._token)

    def _authenticated(self, environ: dict) -> bool:
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and self._is_token(value.strip()):
            return True
        if scheme.lower() == "basic":
            try:
                _, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                password = ""
            if password and self._is_token(password):
                return True
        try:
            jar = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        except CookieError:
            return False
        morsel = jar.get(COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value.encode(), self._cookie)

    @staticmethod
    def _deny(start_response: Callable) -> list[bytes]:
        body = (b"this dashboard needs its token: open /?token=TOKEN once, or send 'Authorization: Bearer TOKEN', "
                b"or HTTP Basic with any user name and the token as the password\n")
        start_response("401 Unauthorized", [("WWW-Authenticate", f'Basic realm="{REALM}"'),
                                             ("Content-Type", "text/plain; charset=utf-8"),
                                             ("Content-Length", str(len(body)))])
        return [body]


def resolve_token(given: str | None, environ: dict | None = None) -> tuple[str, bool]:
    """(token, generated): `given` (--token), else $DAL_SEARCH_DASHBOARD_TOKEN, else a fresh 256-bit token.
    An empty value counts as not given."""
    token = given or (environ if environ is not None else os.environ).get(TOKEN_ENV, "")
    if token:
        return token, False
    return secrets.token_hex(32), True


def public_url(host: str, port: int) -> str:
    """The URL to open for a server bound to `host`: a wildcard bind is reached through loopback."""
    shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's idle keep-alive connection does not hold up Ctrl-C


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code="-", size="-") -> None:  # request lines carry ?token=: never log them
        pass


def make_dashboard_server(storage_url: str, host: str, port: int, token: str, *, allow_writes: bool = False):
    """A bound, not yet serving, server of the gated optuna-dashboard app over `storage_url`, opened as a
    reader (no heartbeats; a missing SQLite or journal file is an error, not a new empty store).
    OSError if the address cannot be bound."""
    from optuna_dashboard import wsgi

    from dal_search.storage import open_storage

    app = TokenGate(wsgi(open_storage(storage_url, heartbeat_interval=None, for_workers=False)), token,
                    allow_writes=allow_writes)
    server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6}) if ":" in host else _Server
    return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)


def run_dashboard(storage_url: str, host: str = "127.0.0.1", port: int = 8080, *, token: str,
                  allow_writes: bool = False, announce: Callable[[str], None] | None = None) -> None:
    """Serve until Ctrl-C; `announce(url)` is called once the address is bound."""
    server = make_dashboard_server(storage_url, host, port, token, allow_writes=allow_writes)
    try:
        if announce is not None:
            announce(public_url(host, server.server_address[1]))
        server.serve_forever()
    finally:
        server.server_close()


def announce_line(url: str, token: str, generated: bool, allow_writes: bool) -> str:
    """The one start-up line: the URL to open (with the token when it was generated here, since nobody else
    knows it), and what the server allows."""
    mode = "notes and edits allowed" if allow_writes else "read-only"
    if generated:
        return f"optuna-dashboard on {url}?token={token} ({mode}; Ctrl-C stops it)"
    return f"optuna-dashboard on {url} ({mode}; token from --token or ${TOKEN_ENV}; Ctrl-C stops it)"


__all__ = ["TokenGate", "TOKEN_ENV", "resolve_token", "run_dashboard", "make_dashboard_server", "public_url",
           "announce_line"]
