"""LLM calls from workflows: :func:`chat`, its :class:`Fallback` chain and the built-in
``cairn.llm.chat`` activity that makes the call under breakers and rate limits.

The workflow side schedules ONE activity per :func:`chat`; its recorded result (the
completion with usage, cost and the chain's skips) is what replay returns, so a replay
never calls a provider. The activity makes one *attempt* at a time, and inside an attempt
walks the fallback chain (ARCHITECTURE.md, "Invariants": idempotency keys of LLM calls):

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
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cairn import activity, breakers, payloads, ratelimits, workflow
from cairn.activity import Reschedule
from cairn.errors import ApplicationError, CairnError, InputValidationError, ProviderError
from cairn.llm import providers
from cairn.llm.providers import ProviderConfig
from cairn.llm.types import ChatRequest, Completion
from cairn.options import RetryPolicy
from cairn.store import llm as store
from cairn.telemetry import meter

if TYPE_CHECKING:
    from cairn.store.db import Pool

__all__ = ["CHAT_ACTIVITY", "COMPLETION_TYPE", "ChatResult", "Fallback", "builtin_activities", "chat", "llm_chat"]

log = logging.getLogger("cairn.llm")

CHAT_ACTIVITY = "cairn.llm.chat"          # the built-in activity's type name
COMPLETION_TYPE = "cairn.llm.completion"  # the ``type`` key of its recorded result
DEFAULT_START_TO_CLOSE = 300.0            # seconds one attempt (one walk of the chain) may take
DEFAULT_THROTTLE_DELAY = 5.0              # a throttle without Retry-After is retried this much later
DEFAULT_FALLBACK_AFTER_ATTEMPTS = 2       # failed attempts of a call on a model before the next one serves
QUOTA_RECHECK_SECONDS = 3600.0            # a quota-forced breaker is looked at again after this
CHARS_PER_TOKEN = 4                       # the token estimate of a prompt (rate limits)
STREAM_BATCH_CHUNKS = 20                  # a streamed batch is written every 20 deltas...
STREAM_BATCH_SECONDS = 0.05               # ...or every 50 ms, whichever comes first
MESSAGE_REF_BYTES = 256                   # a message larger than this (as JSON) is recorded by reference
# A chat call's retries of 5xx, timeouts and dropped streams: 0.5 s doubling, capped at 8 s, as
# the OpenAI and Anthropic SDKs retry. The fleet breaker and rate limits, not a per-call delay
# growing to the engine's 100 s, are what keep load off a failing provider; under a 30 % storm
# the 100 s cap made the unluckiest call of 3,000 wait 63 s between attempts, and the calls
# with four or five 500s in a row set the makespan's tail (bench LLM).
DEFAULT_CHAT_RETRY_POLICY = RetryPolicy(initial_interval=timedelta(seconds=0.5), maximum_interval=timedelta(seconds=8))

_tokens = meter.create_counter("cairn.llm.tokens", unit="{token}", description="LLM tokens, by kind")
_cost = meter.create_counter("cairn.llm.cost", unit="USD", description="LLM cost from the price table")
_calls = meter.create_counter("cairn.llm.calls", description="LLM calls made, by outcome")


class Fallback(BaseModel):
    """Models to try, in order, after the requested one, and when to move on to them.

    ``Fallback(["gpt-4o-mini"])``; each model is looked up by name among the configured
    providers. Within one attempt the chain moves on when a model's breaker refuses, when
    its quota is exhausted, and (``on_context_length``) when it rejects the prompt as too
    long and a later model has a larger context window. Across attempts,
    ``after_attempts`` gives each model that many failed attempts of *this* call before
    the next model serves the retries, so a dead primary costs this call two attempts, not
    the breaker's ``minimum_calls``.

    Attributes:
        models: the fallback models, in order.
        after_attempts: failed attempts of this call on a model before the next model
            serves (the last model serves every later attempt); ``None``: only breakers,
            quota and context length move the chain.
        on_context_length: move on at once on a context-length error to the next model with
            a larger known ``context_windows`` entry (an unknown window counts as none).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: list[str] = Field(min_length=1)
    after_attempts: int | None = Field(default=DEFAULT_FALLBACK_AFTER_ATTEMPTS, ge=1)
    on_context_length: bool = True

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
    # Left out of history when at their defaults (older histories replay unchanged).
    fallback_after_attempts: int | None = DEFAULT_FALLBACK_AFTER_ATTEMPTS
    fallback_on_context_length: bool = True


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
        fallback: models tried next (a :class:`Fallback` says when; a list takes its
            defaults): in the same attempt while a model's breaker is open, its quota is
            exhausted or the prompt is too long for it, and for the retries after a model
            failed ``after_attempts`` attempts of this call.
        start_to_close_timeout: the most one attempt may take (default 300 s).
        schedule_to_close_timeout: the most the whole call may take, reschedules included.
        retry_policy: how retryable failures are retried (default: 1 s doubling up to 8 s,
            unlimited attempts: :data:`DEFAULT_CHAT_RETRY_POLICY`).
        throttle_budget: the most time spent rescheduled by throttles and open breakers
            (default 600 s; waits for the fleet rate limit do not count).
        stream: stream the answer and publish its tokens as they arrive
            (``cairn history --follow``, ``WorkflowHandle.stream()``).
        queue: the activity queue (default: the workflow's).

    Raises:
        ActivityError: the call failed for good (non-retryable error, quota exhausted on
            every model, retries or throttle budget exhausted).
    """
    if not isinstance(request, ChatRequest):
        raise InputValidationError(f"chat() takes a ChatRequest, not {type(request).__name__}")
    chain = fallback if isinstance(fallback, Fallback) else Fallback(list(fallback)) if fallback else None
    policy = {"fallback_after_attempts": chain.after_attempts,
              "fallback_on_context_length": chain.on_context_length} if chain else {}
    call = _ChatCall(request=request, fallback=chain.models if chain else [], stream=stream, **policy)
    result = await workflow.execute_activity(
        CHAT_ACTIVITY, _by_reference(call.model_dump(mode="json", exclude_defaults=True)),
        start_to_close_timeout=start_to_close_timeout, schedule_to_close_timeout=schedule_to_close_timeout,
        retry_policy=retry_policy or DEFAULT_CHAT_RETRY_POLICY, queue=queue, throttle_budget=throttle_budget)
    return ChatResult.model_validate(result)


def _by_reference(call: dict[str, Any]) -> dict[str, Any]:
    """The call as history records it: with the payload store on, each message larger than
    ``MESSAGE_REF_BYTES`` is a reference to the message stored once (content-addressed), so
    the N-th call of a conversation adds its new messages and N references, not a copy of
    the whole conversation (the activity gets the messages resolved)."""
    if not payloads.STORE_PAYLOAD_BYTES:
        return call
    messages = call["request"]["messages"]
    out = [message if payloads.ref_of(message) is not None else payloads.make_ref(message, above=MESSAGE_REF_BYTES)
           for message in messages]
    return {**call, "request": {**call["request"], "messages": out}}


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

    def __init__(self, pool: Pool, info: activity.ActivityInfo) -> None:
        self.pool, self.info = pool, info
        self.buffer: list[str] = []
        self.chunk = 0
        self.last = time.monotonic()
        self.lost = False  # a batch could not be written: the rest is not streamed

    async def add(self, text: str) -> None:
        self.buffer.append(text)
        if len(self.buffer) >= STREAM_BATCH_CHUNKS or time.monotonic() - self.last >= STREAM_BATCH_SECONDS:
            await self.flush()

    async def flush(self) -> None:
        self.last = time.monotonic()
        if not self.buffer:
            return
        text, self.buffer = "".join(self.buffer), []
        if self.lost:
            return
        # Best effort: the call is being answered (and paid), so a database that is away
        # must not fail it. After a lost batch nothing more is written, so what followers
        # saw stays a prefix of the answer, which they complete from the recorded result.
        try:
            async with self.pool.connection() as conn:
                await store.append_stream(conn, self.info.run_id, self.info.seq, self.info.attempt, self.chunk, text)
            self.chunk += 1
        except Exception as exc:
            self.lost = True
            log.warning("streaming of %s stopped, a batch not written: %s", self.info.workflow_id, exc)


def _fail(message: str, *, kind: str, non_retryable: bool, details: dict[str, Any] | None = None) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=non_retryable, details=details)


def _context_window(provider: ProviderConfig, model: str) -> int:
    return provider.context_windows.get(model, 0)


# Connections: every database step of an attempt checks a connection out for that one step
# and gives it back; none is held across the provider call and none is taken while another
# is held. The worker gives activities a pool of their own, so however many calls fail
# together they cannot starve each other, lease renewals or outcome records.


@activity.defn(name=CHAT_ACTIVITY)
async def llm_chat(call: dict[str, Any]) -> dict[str, Any]:
    """The built-in chat activity: one attempt over the fallback chain (module docstring)."""
    try:
        parsed = _ChatCall.model_validate(call)
    except ValueError as exc:
        raise _fail(f"malformed chat call: {exc}", kind="InvalidChatCall", non_retryable=True) from None
    info = activity.info()
    pool: Pool | None = info._pool
    if pool is None:
        raise _fail("the chat activity runs only in a cairn Worker", kind="ConfigurationError", non_retryable=True)
    span = trace.get_current_span()
    request = parsed.request
    chain = [request.model, *[m for m in parsed.fallback if m != request.model]]
    skipped: list[dict[str, Any]] = []
    # The per-call policy: after `after_attempts` failed attempts of this call on a model,
    # the next model serves (the last one serves every later attempt).
    first = 0
    if parsed.fallback_after_attempts is not None and len(chain) > 1:
        first = min((info.attempt - 1) // parsed.fallback_after_attempts, len(chain) - 1)
        for model in chain[:first]:
            skipped.append({"model": model, "provider": None, "until": None,
                            "reason": f"{parsed.fallback_after_attempts} failed attempts of this call"})
    refused_until: datetime | None = None
    decided_at: datetime | None = None
    last_error: ProviderError | None = None
    index = first
    while index < len(chain):
        model = chain[index]
        req = request if index == 0 else request.model_copy(update={"model": model, "provider": None})
        try:
            provider = providers.resolve_provider(req)
        except CairnError as exc:
            raise _fail(str(exc), kind="ConfigurationError", non_retryable=True) from None
        name = breaker_name(provider, model)
        config = provider.breaker or breakers.BreakerConfig()
        async with pool.connection() as conn:
            admission = await breakers.admit(conn, name, config)
        decided_at = admission.now
        if not admission.permitted:
            until = admission.retry_at
            skipped.append({"model": model, "provider": provider.name, "reason": f"breaker {admission.state}",
                            "until": until.isoformat() if until else None})
            if until is not None and (refused_until is None or until < refused_until):
                refused_until = until
            _calls.add(1, {"provider": provider.name, "model": model, "outcome": "not_permitted"})
            index += 1
            continue
        span.set_attributes({"cairn.breaker": name, "cairn.breaker.state": admission.state})
        outcome = await _attempt_model(pool, info, parsed, req, provider, name, admission, skipped, span)
        if isinstance(outcome, dict):
            return outcome
        if outcome.kind == "fatal":
            last_error = outcome  # quota exhausted: the breaker is forced open; next model
            skipped.append({"model": model, "provider": provider.name, "until": None,
                            "reason": f"{outcome.reason or 'quota'} (HTTP {outcome.status})"})
            index += 1
            continue
        # The prompt is too long for this model: on to the next one with a larger window.
        window = _context_window(provider, model)
        larger = next((i for i in range(index + 1, len(chain)) if _window_of(chain[i], request) > window), None) \
            if parsed.fallback_on_context_length else None
        if larger is None:
            raise _rejected(outcome)
        skipped.append({"model": model, "provider": provider.name, "until": None,
                        "reason": f"context length exceeded (window {window or 'unknown'})"})
        log.info("%s: context length exceeded; trying %s, which has a larger window", name, chain[larger])
        index = larger
    if last_error is not None:
        # The chain ended on exhausted quota: no model is left to serve in this attempt.
        raise _fail(f"no model of the chain could serve: {last_error.message} ({last_error.provider}/"
                    f"{last_error.model}, HTTP {last_error.status})", kind="LLMQuotaExhausted",
                    non_retryable=True, details={"skipped": skipped})
    now = decided_at or datetime.now(UTC)
    delay = max(((refused_until or now) - now).total_seconds(), 0.0)
    raise Reschedule(delay, kind="breaker", reason="every model's breaker is open: " +
                     ", ".join(f"{s['model']} ({s['reason']})" for s in skipped))


def _window_of(model: str, request: ChatRequest) -> int:
    """A chain model's known context window (0 when unknown or unresolvable)."""
    try:
        provider = providers.resolve_provider(request.model_copy(update={"model": model, "provider": None}))
    except CairnError:
        return 0
    return _context_window(provider, model)


async def _attempt_model(pool: Pool, info: activity.ActivityInfo, parsed: _ChatCall,
                         req: ChatRequest, provider: ProviderConfig, name: str, admission: breakers.Admission,
                         skipped: list[dict[str, Any]], span: trace.Span) -> dict[str, Any] | ProviderError:
    """One model's call under its (admitted) breaker; returns the result, or the error that
    moves the chain on (quota exhausted, or a context-length rejection). Always settles
    the reservation and the probe lease."""
    model = req.model
    labels = {"provider": provider.name, "model": model}
    config = provider.breaker or breakers.BreakerConfig()
    recorded = False
    reservation: ratelimits.Reservation | None = None
    uncounted = False  # a 429 the provider does not count: the reservation is given back
    used_tokens = 0
    limited = provider.rpm is not None or provider.tpm is not None or provider.max_concurrency is not None
    try:
        if limited:
            async def reserve_once() -> ratelimits.Reservation:
                async with pool.connection() as conn:  # not held while waiting for a turn
                    return await ratelimits.reserve(
                        conn, f"{provider.name}:{model}", rpm=provider.rpm, tpm=provider.tpm,
                        max_concurrency=provider.max_concurrency, tokens=estimate_tokens(req),
                        window_seconds=provider.rate_window_seconds, holder=info.idempotency_key,
                        pace=None if provider.rate_enforcement == "sliding" else ratelimits.PACE_BURST,
                        priority=1 if info.attempt > 1 else 0)  # a retry goes before first attempts

            reservation = await ratelimits.reserve_in_turn(reserve_once)
            if not reservation.ok:
                _calls.add(1, {**labels, "outcome": "rate_limited"})
                raise Reschedule(reservation.put_off, kind="rate_limit", reason=reservation.reason)
            if admission.probe_id is None:
                # The admission may be stale: the wait for the limiter's row lock can be long
                # under load, and a 429 may have opened the breaker meanwhile (a provider's
                # burst). Look again before sending; give the reservation back if it refuses.
                async with pool.connection() as conn:
                    refusing = await breakers.refusing_for(conn, name)
                    if refusing is not None:
                        await ratelimits.cancel(conn, reservation)
                if refusing is not None:
                    reservation = None
                    _calls.add(1, {**labels, "outcome": "not_permitted"})
                    raise Reschedule(refusing, kind="breaker",
                                     reason=f"breaker {name} opened meanwhile, for {refusing:.1f} s more")
        stream = _Stream(pool, info) if parsed.stream else None
        try:
            async with breakers.hold_probe(pool, admission, config):
                completion = await providers.call_chat(provider, req, on_chunk=stream.add if stream else None)
        except ProviderError as exc:
            recorded = True  # _provider_failed records the outcome (or frees the probe)
            uncounted = exc.kind == "throttle" and not provider.rate_counts_throttled
            return await _provider_failed(pool, exc, provider, name, admission, labels, span)
        finally:
            if stream is not None:
                await stream.flush()
        ttft = completion.ttft_seconds if completion.ttft_seconds is not None else completion.duration_seconds
        # The call is answered (and paid): from here no bookkeeping may fail the attempt, or
        # the engine would retry it and pay for it again. A database that is away (restarted,
        # connection terminated) costs the breaker one success; a probe's lease expires.
        try:
            async with pool.connection() as conn:
                await breakers.record(conn, name, admission, success=True, duration=ttft,
                                      slow=ttft > config.slow_call_duration_threshold)
            recorded = True
        except Exception as exc:
            log.warning("breaker %s: success not recorded: %s", name, exc)
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
        elif reservation is not None:
            used_tokens = reservation.tokens  # unknown usage: keep the estimate
        _calls.add(1, {**labels, "outcome": "ok"})
        span.set_attributes({"cairn.llm.provider": provider.name, "cairn.llm.model": completion.model,
                             "cairn.llm.breaker": name, "cairn.llm.breaker_state": admission.state})
        result = ChatResult(**completion.model_dump(), requested_model=parsed.request.model, skipped=skipped,
                            attempt=info.attempt)
        return result.model_dump(mode="json")
    finally:
        if reservation is not None and reservation.ok and reservation.window_start is not None:
            try:
                async with pool.connection() as conn:
                    if uncounted:
                        await ratelimits.cancel(conn, reservation)
                    else:
                        await ratelimits.settle(conn, reservation, tokens=used_tokens)
            except Exception as exc:  # the lease expires by itself
                log.warning("rate limit %s/%s: not settled: %s", provider.name, model, exc)
        if not recorded:
            try:
                async with pool.connection() as conn:
                    await breakers.release(conn, admission)
            except Exception as exc:  # the probe lease expires by itself
                log.warning("breaker %s: probe not released: %s", name, exc)


async def _provider_failed(pool: Pool, exc: ProviderError, provider: ProviderConfig, name: str,
                           admission: breakers.Admission, labels: dict[str, str], span: trace.Span,
                           ) -> ProviderError:
    """What a classified provider failure does (module docstring); returns the error that
    moves the chain on (quota, context length), raises otherwise."""
    config = provider.breaker or breakers.BreakerConfig()
    span.set_attributes({"cairn.llm.provider": provider.name, "cairn.llm.model": labels["model"],
                         "cairn.llm.breaker": name, "cairn.llm.error": exc.kind})
    _calls.add(1, {**labels, "outcome": exc.kind})
    throttle_for = (exc.retry_after if exc.retry_after is not None else DEFAULT_THROTTLE_DELAY) \
        if exc.kind == "throttle" else None
    async with pool.connection() as conn:  # one connection for the whole bookkeeping
        if exc.kind in ("throttle", "non_retryable"):
            # Neither is the model failing: a throttle is the provider asking us to wait,
            # a rejection is the request's fault. No breaker outcome (the probe is freed).
            await breakers.release(conn, admission)
        else:
            await breakers.record(conn, name, admission, success=False)
        if throttle_for is not None:
            # Fleet-wide: every worker waits out the Retry-After, then resumes as it was
            # (no escalation, no half-open round).
            await breakers.trip(conn, name, seconds=throttle_for, config=config,
                                reason=f"{exc.status or 429}: retry after {throttle_for:g} s")
        elif exc.kind == "fatal":
            await breakers.trip(conn, name, seconds=QUOTA_RECHECK_SECONDS, forced=True,
                                config=config, reason=f"{exc.reason or 'quota'}: {exc.message}"[:300])
    if throttle_for is not None:
        raise Reschedule(throttle_for, kind="throttle", reason=str(exc))
    if exc.kind == "fatal":
        log.info("%s: quota exhausted, breaker forced open; trying the next model", name)
        return exc
    if exc.kind == "retryable":
        raise _fail(str(exc), kind=f"LLM{_camel(exc.reason) or 'Retryable'}", non_retryable=False,
                    details=_details(exc))
    if exc.reason == "context_length":
        return exc  # the chain may hold a model with a larger window
    raise _rejected(exc)


def _details(exc: ProviderError) -> dict[str, Any]:
    return {"provider": exc.provider, "model": exc.model, "status": exc.status, "reason": exc.reason}


def _rejected(exc: ProviderError) -> ApplicationError:
    """A non-retryable provider error as the activity's failure."""
    return _fail(str(exc), kind=f"LLM{_camel(exc.reason) or 'Rejected'}", non_retryable=True, details=_details(exc))


def _camel(reason: str) -> str:
    return "".join(part.capitalize() for part in reason.replace("-", "_").split("_") if part)
