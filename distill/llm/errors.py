"""What can go wrong with an LLM request, in three classes; every network backend uses this one taxonomy.

- **transient**: another identical try may succeed: 408, 429, 5xx, timeouts, connection
  resets, a body cut off or garbled on the wire (nothing readable arrived, so nothing was
  stored). `TransientError`: retried with backoff, up to `max_retries`.
- **permanent**: no identical try can succeed: 400, 401, 403, 404 and other 4xx, and a
  configuration the HTTP layer refuses (a base URL without http://, a key with a control
  character). `PermanentError`: never retried; the batch stops at the first one
  (`BackendStopped`), and what was already paid stays in the cache. A configuration that is
  wrong on its face is refused before any request (`check_base_url`, `check_api_key`).
- **paid but unusable**: a 200 whose answer cannot be used: it fails the response schema, the
  provider blocked it (Gemini `promptFeedback.blockReason`, finish reasons SAFETY,
  RECITATION, ...; OpenAI `content_filter`), or it was cut off at the token limit where a
  schema needed the whole of it. Not an exception: the backend returns a `Response` with
  `unusable` set, stores it and counts it as paid like any other answer, and never sends the
  same request again. A schema failure may be repaired by a new, different request (the bad
  answer shown back with what was wrong: `distill.llm.base.repair_request`), at most
  `max_repairs` times.

A circuit breaker stops a backend whose first `circuit_breaker` requests all ended the same way
without a usable answer (the same HTTP status after every retry, the same schema failure, ...):
a misconfigured run stops after a handful of requests instead of paying for all of them.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit

from distill.errors import ConfigError, StageFailed

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})

BLOCKED_FINISH = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "LANGUAGE",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
        "content_filter",
    }
)
"""Finish reasons that mean the provider withheld the answer (Gemini's, and OpenAI's content_filter)."""
TRUNCATED_FINISH = frozenset({"MAX_TOKENS", "length"})
"""Finish reasons that mean the answer stopped at the output token limit."""
PROMPT_BLOCKED_PREFIX = "BLOCKED:"
"""finish_reason of a Gemini answer with no candidate because the prompt itself was blocked."""


class TransientError(Exception):
    """Worth retrying: 429, 5xx, timeouts, connection errors, bodies garbled in transit.

    `kind` is a short signature of the failure (e.g. `HTTP 503`, `ClientConnectorError`): the
    circuit breaker compares them."""

    def __init__(self, message: str, retry_after_s: float | None = None, *, kind: str = "transient"):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.kind = kind


class PermanentError(Exception):
    """Retrying cannot help (400 bad request, 401/403 auth, 404 unknown model, a configuration
    the HTTP layer refuses)."""

    def __init__(self, message: str, *, kind: str = "permanent", config: bool = False):
        super().__init__(message)
        self.kind = kind
        self.config = config
        """True when the fault is the run's configuration (base URL, key), not the request."""


class BackendStopped(StageFailed):
    """A backend stopped sending requests: a permanent error (`permanent_error`, or
    `config_error` when the configuration is at fault) or the circuit breaker
    (`circuit_breaker`). Requests in flight were finished and stored first."""


def status_error(status: int, message: str, retry_after_s: float | None = None) -> Exception:
    """An HTTP error status as a TransientError (408, 429, 5xx) or a PermanentError (the rest)."""
    text = f"HTTP {status}: {message}".strip()
    if status in RETRYABLE_STATUS:
        return TransientError(text, retry_after_s, kind=f"HTTP {status}")
    return PermanentError(text, kind=f"HTTP {status}")


def client_error(exc: BaseException) -> BaseException:
    """What an HTTP client (aiohttp, httpx) raised, in the taxonomy; other exceptions unchanged
    (timeouts are left as they are: the retry loop counts them as timeouts)."""
    name = type(exc).__name__
    text = f"{name}: {exc}"
    if _is_configuration_error(exc):
        return PermanentError(f"the request cannot be sent as configured: {text}", kind=name, config=True)
    if isinstance(exc, TimeoutError):
        return exc
    if isinstance(exc, OSError) or _is_transport_error(exc):
        return TransientError(text, kind=name)
    if isinstance(exc, ValueError):  # a body the library could not decode (garbled on the way)
        return TransientError(text, kind="undecodable body")
    return exc


def _is_configuration_error(exc: BaseException) -> bool:
    """A URL the client cannot use or a header value it refuses: fixed only by the user."""
    try:
        import aiohttp

        if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
            return True
    except (ImportError, AttributeError):
        pass
    try:
        import httpx

        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL, httpx.LocalProtocolError)):
            return True
    except ImportError:
        pass
    # aiohttp: "Forbidden control character detected in headers"; h11: "Illegal header value".
    return isinstance(exc, ValueError) and "header" in str(exc).lower()


def _is_transport_error(exc: BaseException) -> bool:
    try:
        import aiohttp

        if isinstance(exc, aiohttp.ClientError):
            return True
    except ImportError:
        pass
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True
    except ImportError:
        pass
    return False


def check_base_url(url: str | None, source: str) -> None:
    """A ConfigError unless `url` (when set) is an http:// or https:// URL with a host."""
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc and not any(_is_bad_char(ch) for ch in url):
        return
    shown = url if "@" not in url else "<a URL with credentials>"
    raise ConfigError(f"{source} must be an http:// or https:// URL with a host, got {shown!r}")


def check_api_key(key: str | None, source: str) -> None:
    """A ConfigError when the key holds a space or a control character (a bad paste): no HTTP
    client can send it, and retrying only repeats that. The key itself is never shown."""
    if not key:
        return
    for position, ch in enumerate(key):
        if _is_bad_char(ch):
            what = "space" if ch.isspace() and ch.isprintable() else "control character"
            raise ConfigError(
                f"{source} holds a {what} at position {position + 1} of {len(key)}; set the key again without it"
            )


def _is_bad_char(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch).startswith("C")


def finish_kind(finish_reason: str | None) -> str | None:
    """`blocked`, `truncated`, or None for a finish reason (any provider's spelling)."""
    if not finish_reason:
        return None
    if finish_reason.startswith(PROMPT_BLOCKED_PREFIX) or finish_reason in BLOCKED_FINISH:
        return "blocked"
    if finish_reason in TRUNCATED_FINISH:
        return "truncated"
    return None


def blocked_reason(finish_reason: str | None) -> str | None:
    """Why the provider withheld the answer (SAFETY, RECITATION, content_filter, ...), or None."""
    if finish_kind(finish_reason) != "blocked":
        return None
    return finish_reason.removeprefix(PROMPT_BLOCKED_PREFIX)  # type: ignore[union-attr]


def schema_problem(schema: type, text: str) -> tuple[dict | None, str | None]:
    """(the validated JSON, None), or (None, what is wrong with it) for an answer that must
    match a pydantic schema."""
    try:
        return schema.model_validate_json(text).model_dump(mode="json"), None  # type: ignore[attr-defined]
    except Exception as exc:  # pydantic.ValidationError, ValueError
        errors = getattr(exc, "errors", None)
        if callable(errors):
            first = errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ())) or "(root)"
            if first.get("type") == "json_invalid":
                return None, f"is not valid JSON ({first.get('msg')})"
            return None, f"does not match {schema.__name__}: {where}: {first.get('msg')}"
        return (
            None,
            f"does not match {schema.__name__}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
        )
