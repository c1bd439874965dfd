"""One chat call to an LLM provider: the request in the provider's dialect, the deadlines
(connect, read, time to first token, total), and the classification of its failure.

The API key is read from ``os.environ[provider.api_key_env]`` inside :func:`call_chat`, put
in one request header, and kept nowhere: not in configs, errors, logs or results.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from cairn.errors import ProviderError
from cairn.llm import classify
from cairn.llm.classify import Classification
from cairn.llm.connections import drain, error_body, shared_client
from cairn.llm.dialects import DIALECTS, Answer, Failed, Malformed, OnChunk
from cairn.llm.pricing import cost
from cairn.llm.types import ChatRequest, Completion
from cairn.redaction import remember

if TYPE_CHECKING:
    from cairn.llm.providers import ProviderConfig

__all__ = ["call_chat"]

log = logging.getLogger("cairn.llm")


async def call_chat(provider: ProviderConfig, request: ChatRequest, *, on_chunk: OnChunk | None = None,
                    validate: Callable[[Completion], bool] | None = None) -> Completion:
    """Makes one chat call; never retries, never sleeps.

    The call reuses an idle connection of the running loop's client when one is open to
    the provider (see :func:`~cairn.llm.connections.close_connections`).

    Streams when ``request.stream`` is set or ``on_chunk`` is given (``on_chunk`` gets each
    text delta, sync or async). Deadlines: ``connect_timeout``; ``read_timeout`` of
    silence; ``ttft_timeout`` from the start of the call to the first token — the first
    content delta (text, tool-call fragment, reasoning delta or finish reason) of a stream,
    or the first non-whitespace byte of a JSON body, so keep-alive comments and whitespace
    do not count; ``timeout`` for the whole call.

    Args:
        provider: where to send it.
        request: what to ask.
        on_chunk: called with each text delta as it arrives.
        validate: a predicate on the completion; ``False`` makes the call fail as
            ``retryable`` (reason ``invalid_output``).

    Returns:
        The completion; ``usage`` is ``None`` (and so is cost) when the provider sent none.

    Raises:
        ProviderError: classified (see :mod:`cairn.llm.classify`); its message carries the
            provider, model, status and a short sanitized excerpt, never the key.
    """
    model = request.model

    def failure(c: Classification, status: int | None = None) -> ProviderError:
        return ProviderError.from_classification(c, provider=provider.name, model=model, status=status)

    key: str | None = None
    if provider.api_key_env is not None:
        key = os.environ.get(provider.api_key_env) or None
        remember(key)  # masked in every error text from now on
        if key is None:
            raise ProviderError("non_retryable", f"environment variable {provider.api_key_env} is not set",
                                provider=provider.name, model=model, reason="no_key")
    stream = request.stream or on_chunk is not None
    build_request, read_json, read_stream = DIALECTS[provider.dialect]
    if provider.dialect == "anthropic" and request.response_format is not None:
        raise ProviderError("non_retryable", "the anthropic dialect has no response_format",
                            provider=provider.name, model=model, reason="unsupported")
    url, headers, body = build_request(provider, request, key, stream)
    del key  # from here on only the headers dict holds it, and it dies with this call

    loop = asyncio.get_running_loop()
    started = loop.time()
    total_deadline = started + provider.timeout
    ttft_deadline = started + provider.ttft_timeout if provider.ttft_timeout is not None else None
    answer = Answer(on_chunk, loop.time)
    request_id: str | None = None
    error: ProviderError | None = None
    timeouts = httpx.Timeout(connect=provider.connect_timeout, read=provider.read_timeout,
                             write=provider.read_timeout, pool=provider.connect_timeout)
    try:
        # One deadline: the TTFT limit until the first token arrives, then the total one.
        async with asyncio.timeout_at(min(total_deadline, ttft_deadline or total_deadline)) as deadline:
            answer.on_first = lambda: deadline.reschedule(total_deadline)
            async with (
                shared_client() as client,
                client.stream("POST", url, headers=headers, json=body, timeout=timeouts) as response,
            ):
                if not 200 <= response.status_code < 300:
                    text = await error_body(response)
                    error = failure(classify.classify_status(response.status_code, response.headers, text),
                                    response.status_code)
                else:
                    request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
                    if not stream:
                        await read_json(response, answer)
                    else:
                        chunks = response.aiter_bytes()
                        await read_stream(chunks, answer)
                        if answer.ended:  # the answer is whole: no deadline but the drain's own
                            deadline.reschedule(None)
                            await drain(chunks)
                    if not answer.ended:
                        error = failure(classify.truncated_stream())
    except TimeoutError:
        if answer.first_token_at is None and ttft_deadline is not None and ttft_deadline < total_deadline:
            error = failure(classify.ttft_exceeded(ttft_deadline - started))
        else:
            error = failure(classify.total_timeout(provider.timeout))
    except httpx.TransportError as exc:
        error = failure(classify.classify_transport(exc))
    except Malformed as exc:
        error = failure(classify.malformed_body(str(exc)))
    except Failed as exc:
        error = failure(exc.classification)
    del headers
    duration = loop.time() - started
    if error is not None:
        # Raised outside the except blocks: no chained httpx exception (which holds the
        # request and so its headers) travels with it.
        log.debug("llm call %s/%s failed after %.3f s: %s", provider.name, model, duration, error)
        raise error
    served = answer.model or model
    usage = answer.usage
    if usage is not None:
        price = cost(usage, served, provider)
        usage = usage.model_copy(update={"cost_usd": price if price is not None else cost(usage, model, provider)})
    completion = Completion(
        text="".join(answer.text), tool_calls=answer.tool_calls(), finish_reason=answer.finish_reason,
        model=served, provider=provider.name, request_id=request_id or answer.body_id, usage=usage,
        ttft_seconds=None if answer.first_token_at is None else answer.first_token_at - started,
        duration_seconds=duration)
    if validate is not None and not validate(completion):
        raise failure(classify.invalid_output())
    log.debug("llm call %s/%s ok in %.3f s (request %s)", provider.name, model, duration, completion.request_id)
    return completion

