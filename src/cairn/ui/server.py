"""The web view's HTTP server (aiohttp): read-only pages and a JSON API over the client.

Routes (GET only; any other method is 405):

- ``/``: the workflow list, filtered by ``status``, ``type``, ``where`` (the
  ``cairn list --where`` language) and ``limit``, with status counts.
- ``/runs/{workflow_id}`` (``?run_id=``): one run — summary, failure, payloads,
  timeline, LLM calls, sagas, children, history.
- ``/workers`` (``?all=1``, ``?queue=``): the workers, live ones (``cairn workers``).
- ``/api/runs``, ``/api/runs/{workflow_id}`` and ``/api/workers``: the same data as JSON.

Everything goes through :class:`~cairn.client.Client` (``list``, ``describe``,
``history``) on a pool whose sessions are read-only (``default_transaction_read_only``),
so the view cannot write to the database even by mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import signal
import webbrowser
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from cairn.client import Client
from cairn.errors import CairnError, InputValidationError, WorkflowNotFound
from cairn.store import runs
from cairn.store.filters import parse_filter
from cairn.ui import pages
from cairn.ui.timeline import build_timeline

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "connect_read_only", "create_app", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8233  # Temporal's UI port, so the habit carries over
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
READ_ONLY_OPTIONS = "-c default_transaction_read_only=on"
# No script may run on these pages (they have none); styles are inline (bar positions).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

CLIENT_KEY = web.AppKey("client", Client)
CHECK_HOST_KEY = web.AppKey("check_host", bool)


async def connect_read_only(url: str | None = None, *, namespace: str = "default") -> Client:
    """A client whose sessions cannot write (``default_transaction_read_only=on``).

    Resolves the URL like :meth:`Client.connect` (the embedded server when none is given)
    and checks that the schema is up to date.
    """
    return await Client._open(url, namespace=namespace, max_size=4, check_schema=True, options=READ_ONLY_OPTIONS)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _dumps(value: Any) -> str:
    def default(o: Any) -> Any:
        return o.isoformat() if isinstance(o, datetime) else str(o)

    return json.dumps(value, default=default)


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def _error(request: web.Request, status: int, title: str, message: str) -> web.Response:
    if _wants_json(request):
        return web.json_response({"error": message}, status=status, dumps=_dumps)
    return web.Response(text=pages.message_page(title, message), status=status, content_type="text/html")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host check, error pages and security headers around every request."""
    if request.app[CHECK_HOST_KEY] and not is_loopback((request.url.host or "").strip("[]")):
        # A page on another site that rebinds its DNS name to 127.0.0.1 would send its own
        # name as Host: refuse it, so only pages served from localhost can read the runs.
        response: web.StreamResponse = _error(request, 403, "Forbidden", "this view answers localhost only")
    else:
        try:
            response = await handler(request)
        except WorkflowNotFound as exc:
            response = _error(request, 404, "Not found", str(exc))
        except InputValidationError as exc:
            response = _error(request, 400, "Bad request", str(exc))
        except web.HTTPNotFound:
            response = _error(request, 404, "Not found", f"nothing at {request.path}")
        except web.HTTPException:
            raise
        except CairnError as exc:
            response = _error(request, 500, "Error", str(exc))
    response.headers.update(SECURITY_HEADERS)
    return response


def _list_args(request: web.Request) -> dict[str, Any]:
    """The list filters from the query string ('' means not given)."""
    qs = request.query
    raw_limit = qs.get("limit") or str(DEFAULT_LIMIT)
    try:
        limit = int(raw_limit)
    except ValueError:
        raise InputValidationError(f"limit must be a whole number, not {raw_limit!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InputValidationError(f"limit must be between 1 and {MAX_LIMIT}")
    return {"status": qs.get("status") or None, "workflow_type": qs.get("type") or None,
            "where": qs.get("where") or None, "limit": limit}


async def status_counts(client: Client, *, workflow_type: str | None, where: str | None) -> dict[str, int]:
    """Runs per status matching the type and ``where`` filters (``ui_status_counts``)."""
    flt = parse_filter(where) if where is not None else None
    return await client._read(lambda c: runs.status_counts(c, client.namespace, workflow_type, flt))


async def _workflow_types(client: Client) -> list[str]:
    return await client._read(lambda c: runs.workflow_type_names(c, client.namespace))


async def _list_data(client: Client, args: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    rows = await client.list(**args)
    counts = await status_counts(client, workflow_type=args["workflow_type"], where=args["where"])
    return rows, counts


async def index(request: web.Request) -> web.StreamResponse:
    client = request.app[CLIENT_KEY]
    qs = request.query
    error = None
    try:
        args = _list_args(request)
        rows, counts = await _list_data(client, args)
    except InputValidationError as exc:
        # The form stays on the page, filled in, with the message under it.
        error, rows, counts = str(exc), [], {}
        args = {"status": qs.get("status") or None, "workflow_type": qs.get("type") or None,
                "where": qs.get("where") or None, "limit": DEFAULT_LIMIT}
    page = pages.list_page(rows, counts, status=args["status"], workflow_type=args["workflow_type"],
                           where=args["where"], limit=args["limit"], types=await _workflow_types(client),
                           error=error)
    return web.Response(text=page, content_type="text/html", status=400 if error else 200)


async def api_runs(request: web.Request) -> web.StreamResponse:
    rows, counts = await _list_data(request.app[CLIENT_KEY], _list_args(request))
    return web.json_response({"runs": rows, "counts": counts}, dumps=_dumps)


async def _run_data(request: web.Request) -> tuple[Any, list[Any], Any]:
    client = request.app[CLIENT_KEY]
    workflow_id = request.match_info["workflow_id"]
    d = await client.get_handle(workflow_id, request.query.get("run_id") or None).describe()
    events = await client.get_handle(workflow_id, d.run_id).history()  # the run described
    now = await client._read(runs.db_now)
    return d, events, build_timeline(events, now, d.pending_activities)


async def run_page(request: web.Request) -> web.StreamResponse:
    d, events, tl = await _run_data(request)
    return web.Response(text=pages.run_page(d, events, tl), content_type="text/html")


async def api_run(request: web.Request) -> web.StreamResponse:
    d, events, tl = await _run_data(request)
    return web.json_response({"description": d.to_json(), "events": [e.to_json() for e in events],
                              "timeline": tl.to_json()}, dumps=_dumps)


async def _workers_data(request: web.Request) -> tuple[list[Any], bool, str | None]:
    qs = request.query
    include_inactive = qs.get("all", "") not in ("", "0")
    queue = qs.get("queue") or None
    rows = await request.app[CLIENT_KEY].list_workers(include_inactive=include_inactive, queue=queue)
    return rows, include_inactive, queue


async def workers_page(request: web.Request) -> web.StreamResponse:
    rows, include_inactive, queue = await _workers_data(request)
    return web.Response(text=pages.workers_page(rows, include_inactive=include_inactive, queue=queue),
                        content_type="text/html")


async def api_workers(request: web.Request) -> web.StreamResponse:
    rows, _, _ = await _workers_data(request)
    return web.json_response({"workers": [w.to_json() for w in rows]}, dumps=_dumps)


def create_app(client: Client, *, check_host: bool = True) -> web.Application:
    """The web view's application over ``client`` (which the caller opens and closes).

    Args:
        client: a connected client; :func:`connect_read_only` gives one that cannot write.
        check_host: answer only requests whose Host header names this machine (set it
            when listening on a loopback address; it defeats DNS rebinding).
    """
    app = web.Application(middlewares=[_guard])
    app[CLIENT_KEY] = client
    app[CHECK_HOST_KEY] = check_host
    app.router.add_get("/", index)
    app.router.add_get("/api/runs", api_runs)
    app.router.add_get("/workers", workers_page)
    app.router.add_get("/api/workers", api_workers)
    # `.+`: a workflow id may hold slashes (percent-encoded in links, decoded here).
    app.router.add_get("/api/runs/{workflow_id:.+}", api_run)
    app.router.add_get("/runs/{workflow_id:.+}", run_page)
    return app


async def serve(url: str | None, *, namespace: str = "default", host: str = DEFAULT_HOST,
                port: int = DEFAULT_PORT, open_browser: bool = False,
                ready: Callable[[str], None] = print) -> None:
    """Serves the web view until SIGINT or SIGTERM; ``ready(address)`` once it listens."""
    client = await connect_read_only(url, namespace=namespace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(client, check_host=is_loopback(host)), access_log=None)
    try:
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise CairnError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound_port = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        address = f"http://{shown}:{bound_port}/"
        ready(address)
        if open_browser:
            await asyncio.to_thread(webbrowser.open, address)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await runner.cleanup()
        await client.close()
