"""LLM calls from workflows: :func:`chat`, its :class:`Fallback` chain and the built-in
``cairn.llm.chat`` activity that makes the call under breakers and rate limits.

The workflow side schedules ONE activity per :func:`chat`; its recorded result (the
completion with usage, cost and the chain's skips) is what replay returns, so a replay
never calls a provider. The activity makes one *attempt* at a time, and inside an attempt
walks the fallback chain (see ARCHITECTURE.md, "LLM activities"):

1. for each model of ``[request.model, *fallback.models]``: its provider, its breaker
   (``provider:model:endpoint``); a breaker that refuses skips to the next model;
2. nothing admitted: ``Reschedule(kind="breaker")`` to the earliest moment one may admit;
3. the deployment's fleet rate limit (rpm/tpm/max_concurrency): refused →
   ``Reschedule(kind="rate_limit")``;
4. the call: success records the breaker outcome and settles the tokens; a throttle trips
   the breaker until Retry-After and reschedules (no attempt burned); quota exhaustion
   forces the breaker open and moves on to the next model; a retryable failure is a
   retryable ``ApplicationError`` (the engine's retry policy); anything else fails for good.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from opentelemetry import trace
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cairn import activity, breakers, ratelimits, workflow
from cairn._telemetry import meter
from cairn.activity import Reschedule
from cairn.common import RetryPolicy
from cairn.engine.queries import q
from cairn.errors import ApplicationError, CairnError, InputValidationError
from cairn.llm import providers
from cairn.llm.providers import ProviderConfig, ProviderError
from cairn.llm.types import ChatRequest, Completion

__all__ = ["CHAT_ACTIVITY", "COMPLETION_TYPE", "ChatResult", "Fallback", "builtin_activities", "chat", "llm_chat"]

log = logging.getLogger("cairn.llm")

CHAT_ACTIVITY = "cairn.llm.chat"          # the built-in activity's type name
COMPLETION_TYPE = "cairn.llm.completion"  # the ``type`` key of its recorded result
DEFAULT_START_TO_CLOSE = 300.0            # seconds one attempt (one walk of the chain) may take
DEFAULT_THROTTLE_DELAY = 5.0              # a throttle without Retry-After is retried this much later
QUOTA_RECHECK_SECONDS = 3600.0            # a quota-forced breaker is looked at again after this
CHARS_PER_TOKEN = 4                       # the token estimate of a prompt (rate limits)
STREAM_BATCH_CHUNKS = 20                  # a streamed batch is written every 20 deltas...
STREAM_BATCH_SECONDS = 0.05               # ...or every 50 ms, whichever comes first

_tokens = meter.create_counter("cairn.llm.tokens", unit="{token}", description="LLM tokens, by kind")
_cost = meter.create_counter("cairn.llm.cost", unit="USD", description="LLM cost from the price table")
_calls = meter.create_counter("cairn.llm.calls", description="LLM calls made, by outcome")


class Fallback(BaseModel):
    """Models to try, in order, when the requested one's breaker is open or its quota is
    exhausted (within the same attempt).

    ``Fallback(["gpt-4o-mini"])``; each model is looked up by name among the configured
    providers.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: list[str] = Field(min_length=1)

    def __init__(self, models: list[str] | None = None, /, **data: Any) -> None:
        if models is not None:
            data["models"] = models
        super().__init__(**data)

    @field_validator("models")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        if any(not isinstance(m, str) or not m.strip() for m in value):
            raise ValueError("fallback models must be non-empty names")
        return value


class ChatResult(Completion):
    """What the chat activity records: the completion, and how the chain was walked.

    Attributes:
        type: always ``cairn.llm.completion`` (how describe/history recognise it).
        requested_model: the model the request named (``model`` is the one that served).
        skipped: models of the chain passed over in the attempt that succeeded, with why
            (``{"model", "reason", "until"}``).
        attempt: the attempt that succeeded.
    """

    type: str = COMPLETION_TYPE
    requested_model: str
    skipped: list[dict[str, Any]] = Field(default_factory=list)
    attempt: int = 1


class _ChatCall(BaseModel):
    """The chat activity's one argument, as history records it."""

    model_config = ConfigDict(extra="forbid")

    request: ChatRequest
    fallback: list[str] = Field(default_factory=list)
    stream: bool = False


async def chat(request: ChatRequest, *, fallback: Fallback | list[str] | None = None,
               start_to_close_timeout: timedelta | float | None = DEFAULT_START_TO_CLOSE,
               schedule_to_close_timeout: timedelta | float | None = None,
               retry_policy: RetryPolicy | None = None, throttle_budget: timedelta | float | None = None,
               stream: bool = False, queue: str | None = None) -> ChatResult:
    """Calls a model from workflow code, durably; returns the recorded completion.

    One activity (type ``cairn.llm.chat``) is scheduled; any worker whose process has
    providers configured runs it. Throttles (429/Retry-After), open breakers and rate
    limits reschedule it without burning attempts (up to ``throttle_budget``); retryable
    failures (5xx, timeouts, dropped streams) are retried by ``retry_policy``.

    Args:
        request: the chat request (its ``model`` is tried first).
        fallback: models tried next, in the same attempt, while a model's breaker is open
            or its quota is exhausted.
        start_to_close_timeout: the most one attempt may take (default 300 s).
        schedule_to_close_timeout: the most the whole call may take, reschedules included.
        retry_policy: how retryable failures are retried (default: the engine's).
        throttle_budget: the most time spent rescheduled (default 600 s).
        stream: stream the answer and publish its tokens as they arrive
            (``cairn history --follow``, ``WorkflowHandle.stream()``).
        queue: the activity queue (default: the workflow's).

    Raises:
        ActivityError: the call failed for good (non-retryable error, quota exhausted on
            every model, retries or throttle budget exhausted).
    """
    if not isinstance(request, ChatRequest):
        raise InputValidationError(f"chat() takes a ChatRequest, not {type(request).__name__}")
    models = fallback.models if isinstance(fallback, Fallback) else list(fallback or [])
    call = _ChatCall(request=request, fallback=Fallback(models).models if models else [], stream=stream)
    result = await workflow.execute_activity(
        CHAT_ACTIVITY, call.model_dump(mode="json", exclude_defaults=True),
        start_to_close_timeout=start_to_close_timeout, schedule_to_close_timeout=schedule_to_close_timeout,
        retry_policy=retry_policy, queue=queue, throttle_budget=throttle_budget)
    return ChatResult.model_validate(result)


def builtin_activities() -> list[Any]:
    """The built-in LLM activity, if this process has LLM providers configured
    (``configure_providers`` or ``CAIRN_LLM_PROVIDERS``); a worker adds it by itself."""
    return [llm_chat] if providers.configured_providers() else []


# ---------------------------------------------------------------- the activity


def breaker_name(provider: ProviderConfig, model: str) -> str:
    """``provider:model:endpoint``: one breaker per model of each provider endpoint."""
    return f"{provider.name}:{model}:{provider.base_url}"


def estimate_tokens(request: ChatRequest) -> int:
    """Prompt characters / 4 plus the output limit: what a call reserves before it is made."""
    chars = sum(len(str(m.get("content") or "")) for m in request.messages)
    return chars // CHARS_PER_TOKEN + (request.max_tokens or 0)


class _Stream:
    """Writes an attempt's text deltas to ``cairn.llm_stream`` in small batches."""

    def __init__(self, pool: AsyncConnectionPool, info: activity.ActivityInfo) -> None:
        self.pool, self.info = pool, info
        self.buffer: list[str] = []
        self.chunk = 0
        self.last = time.monotonic()

    async def add(self, text: str) -> None:
        self.buffer.append(text)
        if len(self.buffer) >= STREAM_BATCH_CHUNKS or time.monotonic() - self.last >= STREAM_BATCH_SECONDS:
            await self.flush()

    async def flush(self) -> None:
        self.last = time.monotonic()
        if not self.buffer:
            return
        text, self.buffer = "".join(self.buffer), []
        async with self.pool.connection() as conn:
            await conn.execute(q("llm_stream_append"), {"run_id": self.info.run_id, "seq": self.info.seq,
                                                        "attempt": self.info.attempt, "chunk": self.chunk,
                                                        "text": text})
        self.chunk += 1


async def _db_now(pool: AsyncConnectionPool) -> datetime:
    async with pool.connection() as conn:
        row = await (await conn.execute(q("db_now"))).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _fail(message: str, *, kind: str, non_retryable: bool, details: dict[str, Any] | None = None) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=non_retryable, details=details)


@activity.defn(name=CHAT_ACTIVITY)
async def llm_chat(call: dict[str, Any]) -> dict[str, Any]:
    """The built-in chat activity: one attempt over the fallback chain (module docstring)."""
    try:
        parsed = _ChatCall.model_validate(call)
    except ValueError as exc:
        raise _fail(f"malformed chat call: {exc}", kind="InvalidChatCall", non_retryable=True) from None
    info = activity.info()
    pool: AsyncConnectionPool | None = info._pool
    if pool is None:
        raise _fail("the chat activity runs only in a cairn Worker", kind="ConfigurationError", non_retryable=True)
    span = trace.get_current_span()
    request = parsed.request
    chain = [request.model, *[m for m in parsed.fallback if m != request.model]]
    skipped: list[dict[str, Any]] = []
    refused_until: datetime | None = None
    last_error: ProviderError | None = None
    for index, model in enumerate(chain):
        req = request if index == 0 else request.model_copy(update={"model": model, "provider": None})
        try:
            provider = providers.resolve_provider(req)
        except CairnError as exc:
            raise _fail(str(exc), kind="ConfigurationError", non_retryable=True) from None
        name = breaker_name(provider, model)
        config = provider.breaker or breakers.BreakerConfig()
        async with pool.connection() as conn:
            admission = await breakers.admit(conn, name, config)
        if not admission.permitted:
            until = admission.retry_at
            skipped.append({"model": model, "provider": provider.name, "reason": f"breaker {admission.state}",
                            "until": until.isoformat() if until else None})
            if until is not None and (refused_until is None or until < refused_until):
                refused_until = until
            _calls.add(1, {"provider": provider.name, "model": model, "outcome": "not_permitted"})
            continue
        span.set_attributes({"cairn.breaker": name, "cairn.breaker.state": admission.state})
        outcome = await _attempt_model(pool, info, parsed, req, provider, name, admission, skipped, span)
        if isinstance(outcome, dict):
            return outcome
        last_error = outcome  # quota exhausted: the breaker is forced open; next model
        skipped.append({"model": model, "provider": provider.name, "until": None,
                        "reason": f"{outcome.reason or 'quota'} (HTTP {outcome.status})"})
    if last_error is not None:
        # The chain ended on exhausted quota: no model is left to serve in this attempt.
        raise _fail(f"no model of the chain could serve: {last_error.message} ({last_error.provider}/"
                    f"{last_error.model}, HTTP {last_error.status})", kind="LLMQuotaExhausted",
                    non_retryable=True, details={"skipped": skipped})
    now = await _db_now(pool)
    delay = max(((refused_until or now) - now).total_seconds(), 0.0)
    raise Reschedule(delay, kind="breaker", reason="every model's breaker is open: " +
                     ", ".join(f"{s['model']} ({s['reason']})" for s in skipped))


async def _attempt_model(pool: AsyncConnectionPool, info: activity.ActivityInfo, parsed: _ChatCall,
                         req: ChatRequest, provider: ProviderConfig, name: str, admission: breakers.Admission,
                         skipped: list[dict[str, Any]], span: trace.Span) -> dict[str, Any] | ProviderError:
    """One model's call under its (admitted) breaker; returns the result, or the fatal
    error that moves the chain on. Always settles the reservation and the probe lease."""
    model = req.model
    labels = {"provider": provider.name, "model": model}
    recorded = False
    reservation: ratelimits.Reservation | None = None
    used_tokens = 0
    try:
        async with pool.connection() as conn:
            reservation = await ratelimits.reserve(conn, f"{provider.name}:{model}", rpm=provider.rpm,
                                                   tpm=provider.tpm, max_concurrency=provider.max_concurrency,
                                                   tokens=estimate_tokens(req),
                                                   window_seconds=provider.rate_window_seconds)
        if not reservation.ok:
            _calls.add(1, {**labels, "outcome": "rate_limited"})
            raise Reschedule(reservation.delay, kind="rate_limit", reason=reservation.reason)
        stream = _Stream(pool, info) if parsed.stream else None
        try:
            completion = await providers.call_chat(provider, req, on_chunk=stream.add if stream else None)
        except ProviderError as exc:
            recorded = True  # _provider_failed records the outcome (or frees the probe)
            return await _provider_failed(pool, exc, provider, name, admission, labels, span)
        finally:
            if stream is not None:
                await stream.flush()
        config = provider.breaker or breakers.BreakerConfig()
        ttft = completion.ttft_seconds if completion.ttft_seconds is not None else completion.duration_seconds
        async with pool.connection() as conn:
            await breakers.record(conn, name, admission, success=True, duration=ttft,
                                  slow=ttft > config.slow_call_duration_threshold)
        recorded = True
        usage = completion.usage
        if usage is not None:
            used_tokens = usage.input_tokens + usage.output_tokens
            _tokens.add(usage.input_tokens - usage.cached_input_tokens, {**labels, "kind": "input"})
            _tokens.add(usage.cached_input_tokens, {**labels, "kind": "cached_input"})
            _tokens.add(usage.output_tokens, {**labels, "kind": "output"})
            if usage.cost_usd is not None:
                _cost.add(usage.cost_usd, labels)
            span.set_attributes({"cairn.llm.input_tokens": usage.input_tokens,
                                 "cairn.llm.cached_input_tokens": usage.cached_input_tokens,
                                 "cairn.llm.output_tokens": usage.output_tokens})
            if usage.cost_usd is not None:
                span.set_attribute("cairn.llm.cost_usd", usage.cost_usd)
        else:
            used_tokens = reservation.tokens  # unknown usage: keep the estimate
        _calls.add(1, {**labels, "outcome": "ok"})
        span.set_attributes({"cairn.llm.provider": provider.name, "cairn.llm.model": completion.model,
                             "cairn.llm.breaker": name, "cairn.llm.breaker_state": admission.state})
        result = ChatResult(**completion.model_dump(), requested_model=parsed.request.model, skipped=skipped,
                            attempt=info.attempt)
        return result.model_dump(mode="json")
    finally:
        if reservation is not None and reservation.ok:
            try:
                async with pool.connection() as conn:
                    await ratelimits.settle(conn, reservation, tokens=used_tokens)
            except Exception as exc:  # the lease expires by itself
                log.warning("rate limit %s/%s: not settled: %s", provider.name, model, exc)
        if not recorded:
            try:
                async with pool.connection() as conn:
                    await breakers.release(conn, admission)
            except Exception as exc:  # the probe lease expires by itself
                log.warning("breaker %s: probe not released: %s", name, exc)


async def _provider_failed(pool: AsyncConnectionPool, exc: ProviderError, provider: ProviderConfig, name: str,
                           admission: breakers.Admission, labels: dict[str, str], span: trace.Span,
                           ) -> ProviderError:
    """What a classified provider failure does (module docstring); returns the fatal
    error that moves the chain on, raises otherwise."""
    config = provider.breaker or breakers.BreakerConfig()
    span.set_attributes({"cairn.llm.provider": provider.name, "cairn.llm.model": labels["model"],
                         "cairn.llm.breaker": name, "cairn.llm.error": exc.kind})
    _calls.add(1, {**labels, "outcome": exc.kind})
    async with pool.connection() as conn:
        if exc.kind == "non_retryable":
            # The request's fault, not the provider's: no breaker outcome (the probe is freed).
            await breakers.release(conn, admission)
        else:
            await breakers.record(conn, name, admission, success=False)
        now = await _db_now(pool)
        if exc.kind == "throttle" and exc.retry_after is not None:
            await breakers.trip(conn, name, now + timedelta(seconds=exc.retry_after), config=config,
                                reason=f"429: retry after {exc.retry_after:g} s")
        elif exc.kind == "fatal":
            await breakers.trip(conn, name, now + timedelta(seconds=QUOTA_RECHECK_SECONDS), forced=True,
                                config=config, reason=f"{exc.reason or 'quota'}: {exc.message}"[:300])
    if exc.kind == "throttle":
        delay = exc.retry_after if exc.retry_after is not None else DEFAULT_THROTTLE_DELAY
        raise Reschedule(delay, kind="throttle", reason=str(exc))
    if exc.kind == "fatal":
        log.info("%s: quota exhausted, breaker forced open; trying the next model", name)
        return exc
    details = {"provider": exc.provider, "model": exc.model, "status": exc.status, "reason": exc.reason}
    if exc.kind == "retryable":
        raise _fail(str(exc), kind=f"LLM{_camel(exc.reason) or 'Retryable'}", non_retryable=False, details=details)
    raise _fail(str(exc), kind=f"LLM{_camel(exc.reason) or 'Rejected'}", non_retryable=True, details=details)


def _camel(reason: str) -> str:
    return "".join(part.capitalize() for part in reason.replace("-", "_").split("_") if part)
