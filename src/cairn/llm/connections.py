"""The HTTP connections to LLM providers: one ``httpx.AsyncClient`` per event loop, whose
connections every call on that loop reuses (keep-alive), with no retries (the engine is
the only retry loop), one TLS context for all, and no cookies kept between calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

__all__ = ["ERROR_BODY_BYTES", "KEEPALIVE_CONNECTIONS", "KEEPALIVE_EXPIRY_SECONDS", "STREAM_END_SECONDS",
           "close_connections", "drain", "error_body", "shared_client"]

ERROR_BODY_BYTES = 16_384  # enough for any provider's error JSON; we keep a short excerpt anyway


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS context of every call, made once: building one loads the CA bundle, and per
    call that was half of a worker's CPU under load (py-spy, bench LLM: 52 % of samples in
    ``ssl.create_default_context``; the worker sent ~35 calls a second). A context is safe
    to share between connections, threads and event loops."""
    return httpx.create_ssl_context()


# ---------------------------------------------------------------- connections

# Idle connections kept per event loop. A worker runs up to activity_concurrency calls at
# once (100 by default) and after a wave of them holds that many idle connections; the next
# wave reuses them instead of paying a TCP and TLS handshake each. No cap on connections in
# use: the worker's concurrency and the fleet limits bound the calls in flight, and a cap
# here would make calls wait for a connection (PoolTimeout), which they never did.
KEEPALIVE_CONNECTIONS = 100
# How long an idle connection is kept: less than servers' own idle timeouts (uvicorn's 5 s,
# so vLLM's and many FastAPI gateways'; nginx's 75 s), so we give a connection up before the
# server does rather than race its close with a request. One the server closed anyway is
# readable while idle, and httpcore discards it before reuse (test_llm_connections.py).
KEEPALIVE_EXPIRY_SECONDS = 4.0
# Seconds to wait for the end of a stream's body after its end marker: it comes with the
# marker or just after it. A server that keeps the stream open past this only loses us the
# connection (closed, not reused), never the answer.
STREAM_END_SECONDS = 0.5
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=KEEPALIVE_CONNECTIONS,
                       keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS)
# Calls stay as independent as they were with a client each: a cookie a provider sets (a
# CDN's bot-management cookie) is not stored, so not sent back with the next call.
_NO_COOKIES = DefaultCookiePolicy(allowed_domains=[])


class _LoopClient:
    """The HTTP client of one event loop, shared by the calls made on it.

    A client's connections belong to the loop that opened them, hence one per loop (a
    worker's; each loop a test or script runs). It holds no key: keys go in each request's
    headers only.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.client = httpx.AsyncClient(
            follow_redirects=False, cookies=CookieJar(_NO_COOKIES),
            transport=httpx.AsyncHTTPTransport(retries=0, verify=_tls(), limits=_LIMITS))
        self.calls = 0  # calls using it now
        self.retired = False  # close_connections() was called: close once the last call ends
        self.closer = self._closed_with(loop)

    async def _closed_with(self, loop: asyncio.AbstractEventLoop) -> AsyncGenerator[None, None]:
        # Started once and left suspended: loop.shutdown_asyncgens() (asyncio.run, uvloop.run,
        # asyncio.Runner, pytest-asyncio) closes every suspended async generator of the loop,
        # so the client is closed with its loop even if nobody calls close_connections().
        try:
            yield
        finally:
            if _clients.get(loop) is self:
                del _clients[loop]
            await self.client.aclose()


_clients: dict[asyncio.AbstractEventLoop, _LoopClient] = {}


@contextlib.asynccontextmanager
async def shared_client() -> AsyncIterator[httpx.AsyncClient]:
    """The running loop's client (made on first use), held for one call."""
    loop = asyncio.get_running_loop()
    shared = _clients.get(loop)
    if shared is None:
        shared = _clients[loop] = _LoopClient(loop)
        await anext(shared.closer)  # registers it with the loop (see _closed_with)
    shared.calls += 1
    try:
        yield shared.client
    finally:
        shared.calls -= 1
        if shared.retired and not shared.calls:
            await shared.closer.aclose()


async def close_connections() -> None:
    """Closes the running loop's connections to providers; the worker calls it as it stops.

    Calls in flight finish first (another worker on the same loop may be making some), and
    the next call opens a new client. Without it the client is closed when its loop shuts
    down (``asyncio.run``, ``uvloop.run``, ``asyncio.Runner``).
    """
    shared = _clients.pop(asyncio.get_running_loop(), None)
    if shared is not None:
        shared.retired = True
        if not shared.calls:
            await shared.closer.aclose()


# ---------------------------------------------------------------- reading bodies


async def drain(chunks: AsyncIterator[bytes]) -> None:
    """Reads what is left of a stream after its end marker (the final empty chunk), so
    the connection goes back to the pool: a body left unread closes it."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(STREAM_END_SECONDS):
            async for _ in chunks:
                pass


async def error_body(response: httpx.Response) -> str:
    """The start of an error answer's body (at most :data:`ERROR_BODY_BYTES`)."""
    out = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            out += chunk
            if len(out) >= ERROR_BODY_BYTES:
                break
    except httpx.HTTPError:
        pass  # the status says enough
    return out[:ERROR_BODY_BYTES].decode("utf-8", "replace")
