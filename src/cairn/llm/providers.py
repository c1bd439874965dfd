"""LLM providers: their configuration, and the process's registry of them.

A provider is an account at one endpoint, configured by name (:class:`ProviderConfig`):
in code (:func:`configure_providers`) or in a TOML or JSON file named by
``CAIRN_LLM_PROVIDERS``. ``base_url`` is the URL up to and including the API version
(``https://api.openai.com/v1``, ``https://api.deepseek.com/v1``, ``http://localhost:11434/v1``,
``https://api.anthropic.com/v1``). A config names the environment variable that holds the
key, never the key.

The call itself is :func:`cairn.llm.calls.call_chat` (over :mod:`cairn.llm.dialects`, the
wire formats, and :mod:`cairn.llm.connections`, the HTTP connections); it and the provider
errors (in :mod:`cairn.errors`) are importable from here as well.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cairn.breakers import BreakerConfig
from cairn.errors import ConfigurationError, InputValidationError, ProviderConfigError, ProviderError
from cairn.llm.calls import call_chat
from cairn.llm.connections import close_connections
from cairn.llm.pricing import Price
from cairn.llm.types import ChatRequest
from cairn.redaction import remember

__all__ = [
    "ENV_PROVIDERS",
    "ProviderConfig",
    "ProviderConfigError",
    "ProviderError",
    "call_chat",
    "close_connections",
    "configure_providers",
    "configured_providers",
    "get_provider",
    "load_providers",
    "parse_providers",
    "provider_for",
    "providers_from_env",
    "resolve_provider",
]

ENV_PROVIDERS = "CAIRN_LLM_PROVIDERS"  # path of a providers file, read when none are configured
ANTHROPIC_VERSION = "2023-06-01"  # the anthropic-version header's default

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Field names under which people paste keys, and prefixes of well-known key formats.
_SECRET_FIELDS = {"api_key", "apikey", "key", "token", "secret", "authorization", "password", "bearer"}
_KEYLIKE = re.compile(r"^\s*(?:Bearer\s|(?:sk|pk|rk)[-_]|sk-ant-|xai-|gsk_|AIza)", re.IGNORECASE)


class ProviderConfig(BaseModel):
    """One provider (an account at one endpoint), configured by name.

    Attributes:
        name: what requests and breakers call it (``deepseek``, ``openai``, ``local``).
        base_url: the API root including its version (``https://api.deepseek.com/v1``).
        api_key_env: the NAME of the environment variable holding the key (never the key);
            ``None`` for servers that need none (Ollama, llama.cpp).
        dialect: ``openai`` (chat completions) or ``anthropic`` (messages).
        models: model names this provider serves (for :func:`provider_for`).
        timeout: seconds for the whole call, streaming included.
        connect_timeout: seconds to connect.
        read_timeout: seconds of silence (no byte at all) tolerated while reading.
        ttft_timeout: seconds to the first token (see :func:`call_chat`); ``None``: no limit.
        rpm, tpm, max_concurrency: fleet limits per deployment (enforced by the rate limiter).
        rate_window_seconds: the window rpm and tpm count over.
        rate_enforcement: how the provider enforces rpm: ``even`` (default) when it may
            enforce a minute's limit over shorter periods (OpenAI's guide: 60,000 RPM may be
            enforced as 1,000 a second), so requests are paced at most 1.5x the even rate
            per second; ``sliding`` when it counts over its whole sliding window only, so an
            empty window may be spent at once.
        rate_counts_throttled: whether the provider counts a request it answers 429 toward
            its limit (OpenAI: unsuccessful requests count; the default); ``False`` gives
            such a request's reservation back.
        breaker: circuit-breaker settings (a ``BreakerConfig`` as a dict), ``None`` for none.
        prices: per-model price overrides, USD per million tokens.
        context_windows: per-model context windows in tokens (for fallback on context length).
        anthropic_version: the ``anthropic-version`` header (anthropic dialect).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(min_length=1, max_length=100)
    base_url: str
    api_key_env: str | None = None
    dialect: Literal["openai", "anthropic"] = "openai"
    models: list[str] = Field(default_factory=list)
    timeout: float = Field(default=600.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=120.0, gt=0)
    ttft_timeout: float | None = Field(default=None, gt=0)
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, gt=0)
    # The window rpm and tpm are counted over: a minute, as their names say; shorter in
    # tests and for providers that enforce per-second limits.
    rate_window_seconds: float = Field(default=60.0, gt=0, le=3600)
    rate_enforcement: Literal["even", "sliding"] = "even"
    rate_counts_throttled: bool = True
    # The circuit breaker of each of this provider's models (one breaker per
    # provider:model:endpoint); None: the defaults of BreakerConfig.
    breaker: BreakerConfig | None = None
    prices: dict[str, Price] = Field(default_factory=dict)
    # Context windows in tokens, by model: a fallback chain moves on at once from a model
    # that rejects a prompt as too long to a later one with a larger window.
    context_windows: dict[str, int] = Field(default_factory=dict)
    anthropic_version: str = ANTHROPIC_VERSION

    @model_validator(mode="before")
    @classmethod
    def _refuse_literal_keys(cls, data: Any) -> Any:
        # Raised as InputValidationError (not ValueError) so pydantic does not wrap it with
        # the input, which would echo the key we are refusing.
        if not isinstance(data, dict):
            return data
        name = data.get("name", "?")
        for field, value in data.items():
            if str(field).lower() in _SECRET_FIELDS:
                raise InputValidationError(
                    f"provider {name!r}: the config has a literal {field!r}; put the key in an environment "
                    "variable and give its NAME as api_key_env (e.g. api_key_env = \"DEEPSEEK_API_KEY\")")
            if field not in cls.model_fields:
                raise InputValidationError(f"provider {name!r}: unknown setting {field!r} "
                                           f"(known: {', '.join(cls.model_fields)})")
            if isinstance(value, str) and _KEYLIKE.match(value):
                raise InputValidationError(
                    f"provider {name!r}: {field!r} looks like an API key; the config must name the "
                    "environment variable that holds the key (api_key_env), never the key itself")
        return data

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise InputValidationError(
                "api_key_env must be the NAME of an environment variable (letters, digits and _, "
                "like OPENAI_API_KEY), not a key")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return value.rstrip("/")


# ---------------------------------------------------------------- the registry

_registry: list[ProviderConfig] | None = None


def configure_providers(providers: list[ProviderConfig]) -> None:
    """Sets the process-wide providers (replacing any earlier ones).

    Raises:
        InputValidationError: two providers share a name.
    """
    global _registry
    names = [p.name for p in providers]
    _remember_keys(providers)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputValidationError(f"provider names must be unique: {', '.join(dupes)} repeated")
    _registry = list(providers)


def configured_providers() -> list[ProviderConfig]:
    """The configured providers; if none were, those of the file named by ``CAIRN_LLM_PROVIDERS``."""
    global _registry
    if _registry is None:
        path = os.environ.get(ENV_PROVIDERS)
        if not path:
            return []
        _registry = providers_from_env(path)
        _remember_keys(_registry)
    return list(_registry)


def _remember_keys(providers: list[ProviderConfig]) -> None:
    """Masks the providers' key values in error text (see :mod:`cairn.redaction`)."""
    for p in providers:
        if p.api_key_env is not None:
            remember(os.environ.get(p.api_key_env))


def get_provider(name: str) -> ProviderConfig:
    """The provider called ``name``.

    Raises:
        ConfigurationError: no such provider (the message lists the known ones).
    """
    providers = configured_providers()
    for p in providers:
        if p.name == name:
            return p
    known = ", ".join(p.name for p in providers) or f"none (call configure_providers or set {ENV_PROVIDERS})"
    raise ConfigurationError(f"no LLM provider named {name!r}; known providers: {known}")


def provider_for(model: str) -> ProviderConfig:
    """The first configured provider that lists ``model`` in its ``models``.

    Raises:
        ConfigurationError: no provider serves it (the message lists the known models).
    """
    providers = configured_providers()
    for p in providers:
        if model in p.models:
            return p
    known = "; ".join(f"{p.name}: {', '.join(p.models) or '(no models listed)'}" for p in providers)
    raise ConfigurationError(
        f"no LLM provider serves model {model!r}; known models: "
        f"{known or f'none (call configure_providers or set {ENV_PROVIDERS})'}")


def resolve_provider(request: ChatRequest) -> ProviderConfig:
    """The provider a request names, else the one serving its model."""
    return get_provider(request.provider) if request.provider else provider_for(request.model)


def load_providers(path: str | os.PathLike[str]) -> list[ProviderConfig]:
    """Reads providers from a TOML or JSON file.

    Either ``[[providers]]`` tables / ``{"providers": [...]}``, or providers keyed by name
    (``[providers.deepseek]`` / ``{"providers": {"deepseek": {...}}}``); JSON may be a bare list.

    Raises:
        ProviderConfigError: (a ConfigurationError and an InputValidationError) unreadable
            file, bad syntax, or a bad provider (the message says which and why, and never
            repeats a value that looks like a key).
    """
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProviderConfigError(f"LLM provider config {str(p)!r}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProviderConfigError(f"cannot read LLM provider config {str(p)!r}: {exc}") from None
    return parse_providers(raw, str(p), fmt=p.suffix.lower().lstrip(".") or None)


def providers_from_env(value: str) -> list[ProviderConfig]:
    """The providers ``CAIRN_LLM_PROVIDERS`` gives: a file's path, or the providers
    themselves as inline JSON (a value starting with ``{`` or ``[``).

    Raises:
        ProviderConfigError: as :func:`load_providers`.
    """
    if value.lstrip()[:1] in ("{", "["):
        return parse_providers(value, f"{ENV_PROVIDERS} (inline JSON)", fmt="json")
    if not Path(value).exists():
        raise ProviderConfigError(
            f"{ENV_PROVIDERS} names a providers file that does not exist: {value[:200]!r} (it takes a "
            "TOML or JSON file's path, or the providers as inline JSON starting with { or [)")
    return load_providers(value)


def parse_providers(raw: str, label: str, *, fmt: str | None = None) -> list[ProviderConfig]:
    """Providers from TOML or JSON text (``fmt`` "json" or "toml"; else guessed from the
    first character); ``label`` names the source in errors.

    Raises:
        ProviderConfigError: as :func:`load_providers`.
    """
    p = label
    data: Any
    if fmt == "json" or (fmt != "toml" and raw.lstrip()[:1] in ("{", "[")):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ProviderConfigError(f"{p}: not valid JSON: {exc.msg} at line {exc.lineno}") from None
    else:
        try:
            data = tomllib.loads(raw)
        except tomllib.TOMLDecodeError as exc:
            raise ProviderConfigError(f"{p}: not valid TOML: {exc}") from None
    entries = data.get("providers", None) if isinstance(data, dict) else data
    if isinstance(entries, dict):
        entries = [{"name": name, **body} if isinstance(body, dict) else body for name, body in entries.items()]
    if not isinstance(entries, list):
        raise ProviderConfigError(f"{p}: expected a 'providers' list or table")
    out: list[ProviderConfig] = []
    for i, entry in enumerate(entries):
        label = f"provider #{i + 1}" + (f" ({entry.get('name')!r})" if isinstance(entry, dict) else "")
        try:
            out.append(ProviderConfig.model_validate(entry))
        except InputValidationError as exc:
            raise ProviderConfigError(f"{p}: {exc}") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
                                 for e in exc.errors(include_input=False, include_url=False))
            raise ProviderConfigError(f"{p}: {label}: {problems}") from None
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ProviderConfigError(f"{p}: provider names must be unique")
    return out
