"""`workpool dashboard`: the pages over HTTP (the standard library's threaded server), with the
security a queue's control panel needs: loopback by default and a token for anything else, a
read-only mode, actions only as POSTs carrying a CSRF token (double submit, SameSite=Strict
cookies, same-origin check), each action logged with who asked, and taken only through the
pool's own calls (the Lua transitions)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from workpool.core.logs import logger
from workpool.errors import ConfigurationError, JobNotFound, WorkpoolError
from workpool.operate.dashboard import actions, flows, pages, reads
from workpool.operate.dashboard.html import e, live, page, segment
from workpool.operate.prometheus import registry_of

if TYPE_CHECKING:
    from workpool.client.pool import Workpool

TOKEN_ENV = "WORKPOOL_DASHBOARD_TOKEN"
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
_MAX_FORM = 65536  #: bytes of a POSTed form at most


@dataclass(frozen=True)
class Dashboard:
    """What one dashboard serves and how: its pools, read-only or not, its token."""

    pools: Sequence[Workpool]
    read_only: bool = False
    token: str | None = None

    def pool(self, name: str) -> Workpool:
        """The pool of that name; JobNotFound (a 404) if the dashboard has none."""
        for pool in self.pools:
            if pool.name == name:
                return pool
        msg = f"no pool {name!r} on this dashboard"
        raise JobNotFound(msg)


def check_bind(host: str, token: str | None) -> None:
    """A dashboard answers beyond this machine only with a token: ConfigurationError naming
    --token otherwise."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        msg = f"--token (or ${TOKEN_ENV}) is required to listen on {host!r}: the dashboard " \
              "can cancel jobs and change limits; without a token bind 127.0.0.1"
        raise ConfigurationError(msg)


def serve(dashboard: Dashboard, host: str, port: int) -> ThreadingHTTPServer:
    """Listen on host:port and answer in a background thread (stop it with shutdown())."""
    check_bind(host, dashboard.token)
    handler = type("BoundHandler", (Handler,), {"dashboard": dashboard})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="dashboard", daemon=True).start()
    return server


class Handler(BaseHTTPRequestHandler):
    """One request: authenticate, then a page, a live part, an asset, metrics or an action."""

    dashboard: Dashboard
    server_version = "workpool-dashboard"

    def log_message(self, format: str, *args: Any) -> None:
        logger().debug("dashboard request", client=self.client_address[0], line=format % args)

    # -- reading ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        """A page, a live part, a static asset, the metrics, or the login."""
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [unquote(p) for p in url.path.split("/") if p]
        if parts[:1] == ["static"] and len(parts) == 2 and parts[1] in _STATIC:
            body = (resources.files("workpool.operate.dashboard") / "static" / parts[1])
            self._send(HTTPStatus.OK, body.read_bytes(), _STATIC[parts[1]])
            return
        if parts == ["login"]:
            self._login(q.get("token", ""))
            return
        if not self._authorized():
            self._send(HTTPStatus.UNAUTHORIZED, page("sign in", _LOGIN, read_only=True))
            return
        try:
            self._get(parts, q)
        except JobNotFound as exc:
            self._send(HTTPStatus.NOT_FOUND, page("not found", f"<p>{e(exc)}</p>",
                                                  read_only=self.dashboard.read_only))
        except (WorkpoolError, redis.RedisError) as exc:  # Redis away or refusing: say so
            logger().warning("dashboard: cannot read", path=self.path, error=str(exc))
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, page(
                "unavailable", f"<p>{e(exc)}</p>", read_only=self.dashboard.read_only))

    def _get(self, parts: list[str], q: dict[str, str]) -> None:
        d, csrf = self.dashboard, self._csrf()
        if parts == ["metrics"]:
            self._send(HTTPStatus.OK, generate_latest(registry_of(d.pools)), CONTENT_TYPE_LATEST)
            return
        fragment = parts[:1] == ["part"]
        what = parts[1:] if fragment else parts
        if what == ["find"]:
            found = reads.find(d.pool(q.get("pool", "")), q.get("q", "").strip())
            if found is None:
                raise JobNotFound(f"no job with the id or idempotency key {q.get('q')!r}")
            self._redirect(f"/job/{segment(q.get('pool', ''))}/{segment(found.id)}")
            return
        title, render = self._route(what, q, csrf)
        inner = render()
        if fragment:
            self._send(HTTPStatus.OK, inner)
            return
        path = "/".join(segment(p) for p in what)
        query = self.path.partition("?")[2]
        body = live(f"/part/{path}" + (f"?{query}" if query else ""), inner)
        if what[:1] == ["jobs"]:
            body = pages.filters(list(d.pools), self._jobs_pool(q), reads.job_filter(q)) + body
        self._send(HTTPStatus.OK, page(title, body, read_only=d.read_only), cookie=csrf)

    def _route(self, what: list[str], q: dict[str, str],
               csrf: str) -> tuple[str, Callable[[], str]]:
        d = self.dashboard
        actions_on = None if d.read_only else csrf
        if not what:
            return "pools", lambda: pages.pools_part(list(d.pools))
        if what[0] == "pool" and len(what) == 2:
            return what[1], lambda: pages.pool_part(d.pool(what[1]), actions_on)
        if what[0] == "jobs" and len(what) == 1:
            return "jobs", lambda: pages.jobs_part(self._jobs_pool(q), reads.job_filter(q),
                                                   actions_on)
        if what[0] == "job" and len(what) == 3:
            return f"job {what[2]}", lambda: pages.job_part(d.pool(what[1]), what[2], actions_on)
        if what[0] == "workflows" and len(what) == 2:
            return "workflows", lambda: flows.workflows_part(d.pool(what[1]))
        if what[0] == "workflow" and len(what) == 3:
            return f"workflow {what[2]}", lambda: flows.workflow_part(d.pool(what[1]), what[2],
                                                                      actions_on)
        raise JobNotFound(f"no page {'/'.join(what)!r}")

    def _jobs_pool(self, q: dict[str, str]) -> Workpool:
        return self.dashboard.pool(q["pool"]) if q.get("pool") else self.dashboard.pools[0]

    # -- acting ----------------------------------------------------------------------------

    def do_POST(self) -> None:
        """An action (or the login form), checked: token, read-only, CSRF, same origin."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_FORM:
            self._refuse(HTTPStatus.BAD_REQUEST, f"a form is 0 to {_MAX_FORM} bytes")
            return
        body = self.rfile.read(length).decode(errors="replace")
        form = {k: v[-1] for k, v in parse_qs(body).items()}
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        if parts == ["login"]:
            self._login(form.get("token", ""))
            return
        if not self._authorized():
            self._refuse(HTTPStatus.UNAUTHORIZED, "sign in first")
        elif self.dashboard.read_only:
            self._refuse(HTTPStatus.FORBIDDEN, "this dashboard is read-only")
        elif not self._same_origin() or not hmac.compare_digest(
                form.get("csrf", ""), self._cookie("wp_csrf") or "\0"):
            self._refuse(HTTPStatus.FORBIDDEN, "the form's CSRF token is missing or wrong: "
                         "reload the page and try again")
        elif len(parts) != 3 or parts[0] != "action":
            self._refuse(HTTPStatus.NOT_FOUND, "no such action")
        else:
            self._act(parts[1], parts[2], form)

    def _act(self, pool_name: str, action: str, form: dict[str, str]) -> None:
        log = logger().bind(client=self.client_address[0], token=self._fingerprint(),
                            pool=pool_name, action=action,
                            fields={k: v for k, v in form.items() if k != "csrf"})
        try:
            pool = self.dashboard.pool(pool_name)
            done, back = actions.run(pool, action, form)
        # a value it cannot use, no such job, one not finished, Redis away...
        except (WorkpoolError, redis.RedisError) as exc:
            log.warning("dashboard action refused", error=str(exc))
            self._refuse(HTTPStatus.BAD_REQUEST, str(exc))
            return
        log.info("dashboard action", result=done)
        self._redirect(back)

    # -- security --------------------------------------------------------------------------

    def _authorized(self) -> bool:
        token = self.dashboard.token
        if not token:
            return True
        given = self._cookie("wp_token") or ""
        bearer = self.headers.get("Authorization", "")
        if bearer.startswith("Bearer "):
            given = bearer[7:]
        return hmac.compare_digest(given.encode(), token.encode())

    def _login(self, token: str) -> None:
        if not self.dashboard.token or not hmac.compare_digest(token.encode(),
                                                               self.dashboard.token.encode()):
            logger().warning("dashboard sign-in refused", client=self.client_address[0])
            self._send(HTTPStatus.UNAUTHORIZED, page("sign in", "<p>wrong token</p>" + _LOGIN,
                                                     read_only=True))
            return
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", "/")
        self.send_header("Set-Cookie", _cookie("wp_token", token))
        self.end_headers()

    def _fingerprint(self) -> str:
        token = self.dashboard.token
        return hashlib.sha256(token.encode()).hexdigest()[:8] if token else "none"

    def _cookie(self, name: str) -> str | None:
        jar = SimpleCookie(self.headers.get("Cookie", ""))
        return jar[name].value if name in jar else None

    def _csrf(self) -> str:
        return self._cookie("wp_csrf") or secrets.token_urlsafe(24)

    def _same_origin(self) -> bool:
        origin = self.headers.get("Origin") or self.headers.get("Referer")
        return origin is None or urlsplit(origin).netloc == self.headers.get("Host")

    # -- replies ---------------------------------------------------------------------------

    def _send(self, status: HTTPStatus, body: str | bytes, kind: str = "text/html; charset=utf-8",
              *, cookie: str | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'self'")
        if cookie is not None and self._cookie("wp_csrf") != cookie:
            self.send_header("Set-Cookie", _cookie("wp_csrf", cookie))
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, status: HTTPStatus, why: str) -> None:
        self._send(status, page("refused", f"<p class=\"refused\">{e(why)}</p>",
                                read_only=self.dashboard.read_only))

    def _redirect(self, to: str) -> None:
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", to)
        self.end_headers()


def _cookie(name: str, value: str) -> str:
    return f"{name}={value}; Path=/; HttpOnly; SameSite=Strict"


_LOGIN = ('<form method="post" action="/login" class="login"><label>token <input name="token" '
          'type="password" autofocus></label><button>sign in</button></form>')
