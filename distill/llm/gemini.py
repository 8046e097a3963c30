"""Gemini through google-genai's async client.

The client honours the library's own environment: `GEMINI_API_KEY` / `GOOGLE_API_KEY` for the
key and `GOOGLE_GEMINI_BASE_URL` for the endpoint (google-genai 3.x reads that variable in
`genai.Client`; we also pass it explicitly through `HttpOptions.base_url`, so releases that do
not read it behave the same). That is how a local fake server stands in for Gemini in tests
and benchmarks. google-genai's own retries are switched off (`HttpRetryOptions(attempts=1)`,
which also disables its hidden one-shot retry on connection errors), so every attempt is
counted and paced by `CachedBackend` (exponential backoff, full jitter, Retry-After honoured).
One client serves a whole `generate_many` call; it is created inside the running event loop
(its aiohttp session belongs to that loop) and closed at the end.

Two transports, same client, same answers, same cache keys:
- `sdk`: `client.aio.models.generate_content(model, contents, config=GenerateContentConfig(...))`,
  the typed path (response_schema from the pydantic class, ThinkingConfig, ...).
- `rest` (default): the generateContent JSON body is built here (`gemini_rest_body`: the
  documented REST format, structured output as `responseJsonSchema`) and posted through the
  same client's HTTP layer (`client.aio._api_client.async_request`, so auth, base URL, API
  version, timeouts and error types stay google-genai's). Why: the typed path spends 1.5-3 ms
  of CPU per request converting pydantic objects; with 32 requests in flight on one event loop
  that CPU serialises and stretched a 500-request batch to ~1.6x its latency floor on a
  2-core machine, against ~1.1x for this path (benchmarks/teacher_throughput.py). The body
  builder is pinned to the SDK's own conversion by a test.
"""

from __future__ import annotations

import json
import os
from typing import Any

from distill.llm.base import (
    CachedBackend,
    PermanentError,
    Request,
    Response,
    TransientError,
    build_response,
    logger,
    parse_retry_after,
)
from distill.llm.errors import PROMPT_BLOCKED_PREFIX, check_api_key, check_base_url, client_error, status_error

BASE_URL_ENV = "GOOGLE_GEMINI_BASE_URL"
REQUEST_KEY_HEADER = "x-distill-request-key"
"""Sent with each request (the cache key, a sha256: no content, no secret) so a server log or
a fake server can tell which cached entry an HTTP call was for."""


TRANSPORTS = ("rest", "sdk")


# ---------------------------------------------------------------------------------------------
# Batch mode (distill/llm/batch.py): batchGenerateContent with inline requests, through the
# same client's HTTP layer as the rest transport. Why not `client.aio.batches`: its BatchJob
# drops the job's batchStats (no progress while a job runs), and its typed inline responses
# would be parsed by a different path than the online rest answers; the REST body and parser
# here are the online ones, so a batch answer is cached byte for byte as an online one.

GEMINI_BATCH_MAX_REQUESTS = 50_000
GEMINI_BATCH_MAX_BYTES = 19_000_000
"""Inline batch requests may total about 20 MB; the rest is headroom for the envelope."""

_GRPC_TO_HTTP = {3: 400, 4: 504, 5: 404, 7: 403, 8: 429, 9: 400, 13: 500, 14: 503, 16: 401}
"""A per-request error in a Gemini batch is a google.rpc.Status (gRPC code): read as its HTTP twin."""


GEMINI_LIST_PAGE_SIZE = 100
GEMINI_LIST_MAX_PAGES = 100
"""The batch list is searched for a lost job up to this many pages (newest first)."""


def _job_state(value: Any) -> str:
    """BATCH_STATE_RUNNING / JOB_STATE_RUNNING -> RUNNING (distill.llm.batch's names). google-genai's
    JobState also has CANCELLING and UPDATING (both go on, or end, by themselves: RUNNING) and
    PARTIALLY_SUCCEEDED (ended, some results missing: kept, an ended state); PAUSED and any
    state added later are passed on as they are (not ended: batch.py polls and logs them once)."""
    state = str(value or "PENDING").rsplit("_STATE_", 1)[-1]
    return {"UNSPECIFIED": "PENDING", "QUEUED": "PENDING", "CANCELLING": "RUNNING", "UPDATING": "RUNNING"}.get(
        state, state
    )


class _GeminiBatch:
    """The batch half of GeminiBackend (mixed in below)."""

    def batch_limits(self) -> tuple[int, int]:
        return GEMINI_BATCH_MAX_REQUESTS, GEMINI_BATCH_MAX_BYTES

    def batch_line(self, key: str, request: Request) -> dict[str, Any]:
        return {"request": gemini_rest_body(request), "metadata": {"key": key}}

    def _model_path(self) -> str:
        api_client = self._client.aio._api_client
        if "/" in self.model:
            return self.model
        return f"publishers/google/models/{self.model}" if api_client.vertexai else f"models/{self.model}"

    async def _batch_call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = await self._client.aio._api_client.async_request(method, path, body, None)
            return json.loads(reply.body) if reply.body else {}
        except Exception as exc:
            raise _classify(exc) from None

    async def _batch_create(self, lines, display_name: str) -> tuple[str, str]:
        body = {
            "batch": {
                "displayName": display_name,
                "inputConfig": {"requests": {"requests": [line for _, line in lines]}},
            }
        }
        job = await self._batch_call("post", f"{self._model_path()}:batchGenerateContent", body)
        if not job.get("name"):
            raise TransientError("batch job created without a name", kind="malformed body")
        return job["name"], _job_state((job.get("metadata") or {}).get("state"))

    async def _batch_list(self, display_name: str) -> list[tuple[str, str]]:
        """(name, state) of the jobs named `display_name` in `GET batches` (the Developer API's
        ListBatches: `operations` and `nextPageToken`, as google-genai's `batches.list` reads it)."""
        from urllib.parse import urlencode

        found, token = [], None
        for _ in range(GEMINI_LIST_MAX_PAGES):
            query = {"pageSize": GEMINI_LIST_PAGE_SIZE, **({"pageToken": token} if token else {})}
            page = await self._batch_call("get", f"batches?{urlencode(query)}", {})
            for job in page.get("operations") or []:
                meta = job.get("metadata") or {}
                if meta.get("displayName") == display_name and job.get("name"):
                    found.append((job["name"], _job_state(meta.get("state"))))
            token = page.get("nextPageToken")
            if not token:
                break
        return found

    async def _batch_status(self, name: str):
        from distill.llm.batch import JobStatus

        job = await self._batch_call("get", name, {})
        meta = job.get("metadata") or {}
        stats = meta.get("batchStats") or {}
        total = int(stats.get("requestCount") or 0)
        done = int(stats.get("successfulRequestCount") or 0) + int(stats.get("failedRequestCount") or 0)
        error = job.get("error") or {}
        return JobStatus(_job_state(meta.get("state")), done, total, str(error.get("message") or ""))

    async def _batch_results(self, name: str) -> dict[str, Any]:
        job = await self._batch_call("get", name, {})
        output = (job.get("metadata") or {}).get("output") or job.get("response") or {}
        if output.get("responsesFile"):
            raise PermanentError(
                f"batch job {name} returned its results as a file ({output['responsesFile']}); this client submits "
                "inline requests and reads inline results only"
            )
        lines = (output.get("inlinedResponses") or {}).get("inlinedResponses") or []
        return {str((line.get("metadata") or {}).get("key")): line for line in lines if line.get("metadata")}

    def _batch_outcome(self, raw: dict[str, Any], request: Request):
        error = raw.get("error")
        if error:
            code = int(error.get("code") or 0)
            status = _GRPC_TO_HTTP.get(code, code if code >= 100 else 500)
            return status_error(status, f"{error.get('status', '')}: {error.get('message', '')}".strip(": "))
        try:
            return _rest_to_response(raw.get("response"), request)
        except TransientError as exc:
            return exc


class GeminiBackend(_GeminiBatch, CachedBackend):
    name = "gemini"

    def __init__(
        self,
        model: str,
        *,
        cache,
        api_key: str | None = None,
        base_url: str | None = None,
        concurrency: int = 16,
        retry=None,
        prices=None,
        seed: int = 0,
        transport: str = "rest",
    ):
        if transport not in TRANSPORTS:
            from distill.errors import ConfigError

            raise ConfigError(f"gemini transport must be one of {TRANSPORTS}, got {transport!r}")
        self._api_key = api_key or os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY")
        # A bad paste or a URL without http:// is refused now, not retried for a minute per request.
        check_api_key(
            self._api_key,
            "api_key" if api_key else ("GOOGLE_API_KEY" if os.environ.get("GOOGLE_API_KEY") else "GEMINI_API_KEY"),
        )
        super().__init__(
            model,
            cache=cache,
            concurrency=concurrency,
            retry=retry,
            prices=prices,
            api_key=self._api_key,
            seed=seed,
        )
        self.base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        check_base_url(self.base_url, "base_url" if base_url else BASE_URL_ENV)
        self.transport = transport
        self._client = None
        # Import now (about a second): inside generate_many it would stall the event loop.
        from google import genai  # noqa: F401
        from google.genai import types  # noqa: F401

    def __repr__(self) -> str:  # never show the key
        return f"GeminiBackend(model={self.model!r}, base_url={self.base_url!r}, transport={self.transport!r})"

    async def _open(self) -> None:
        from google import genai
        from google.genai import types

        if not self._api_key:
            from distill.errors import ConfigError

            raise ConfigError("the gemini backend needs an API key: set GEMINI_API_KEY (or GOOGLE_API_KEY)")
        http_options = types.HttpOptions(
            retry_options=types.HttpRetryOptions(attempts=1),
            timeout=int(self.retry.timeout_s * 1000),
        )
        if self.base_url:
            http_options.base_url = self.base_url
        session = _aiohttp_session(self.base_url or "https://generativelanguage.googleapis.com/")
        if session is not None:
            http_options.aiohttp_client = session
            self._resources.closers.append(session.close)
        self._client = genai.Client(api_key=self._api_key, http_options=http_options)
        self._resources.closers.append(self._client.aio.aclose)
        if self.transport == "rest" and not hasattr(getattr(self._client.aio, "_api_client", None), "async_request"):
            logger.warning("this google-genai has no async_request; using the sdk transport")
            self.transport = "sdk"

    # -- the typed (sdk) request ---------------------------------------------------------------

    def sdk_config(self, request: Request, key: str):
        from google.genai import types

        p = request.params
        kwargs: dict[str, Any] = {
            "system_instruction": request.system_text(),
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k,
            "max_output_tokens": p.max_output_tokens,
            "presence_penalty": p.presence_penalty,
            "seed": p.seed_for(request.sample_index),
            "http_options": types.HttpOptions(headers={REQUEST_KEY_HEADER: key}),
            # No tools are ever sent; switching automatic function calling off skips its
            # per-request bookkeeping (and a log line per request).
            "automatic_function_calling": types.AutomaticFunctionCallingConfig(disable=True),
        }
        if request.schema is not None:
            kwargs["response_mime_type"] = "application/json"
            kwargs["response_schema"] = request.schema
        if p.thinking is True:
            kwargs["thinking_config"] = types.ThinkingConfig(include_thoughts=True, thinking_budget=p.thinking_budget)
        elif p.thinking is False:
            kwargs["thinking_config"] = types.ThinkingConfig(thinking_budget=0)
        return types.GenerateContentConfig(**{k: v for k, v in kwargs.items() if v is not None})

    @staticmethod
    def sdk_contents(request: Request):
        from google.genai import types

        return [
            types.Content(
                role="model" if m["role"] == "assistant" else "user",
                parts=[types.Part(text=m["content"])],
            )
            for m in request.dialogue()
        ]

    async def _call_once(self, request: Request, key: str) -> Response:
        assert self._client is not None, "generate_many opens the client"
        if self.transport == "sdk":
            contents, config = self.sdk_contents(request), self.sdk_config(request, key)
            call = self._client.aio.models.generate_content(model=self.model, contents=contents, config=config)
        else:
            call = self._post_rest(request, key)
        try:
            result = await call
        except Exception as exc:
            raise _classify(exc) from None
        if self.transport == "sdk":
            return _sdk_to_response(result, request)
        return _rest_to_response(result, request)

    async def _post_rest(self, request: Request, key: str) -> dict[str, Any]:
        api_client = self._client.aio._api_client
        model = (
            self.model
            if "/" in self.model
            else (f"publishers/google/models/{self.model}" if api_client.vertexai else f"models/{self.model}")
        )
        reply = await api_client.async_request(
            "post",
            f"{model}:generateContent",
            gemini_rest_body(request),
            {"headers": {REQUEST_KEY_HEADER: key}},
        )
        return json.loads(reply.body) if reply.body else {}


def _aiohttp_session(base_url: str):
    """Our own aiohttp session for the client, or None to let google-genai make its own.

    google-genai's session has `trust_env=True`, which makes aiohttp read ~/.netrc and the proxy
    environment in a worker thread on EVERY request: two thread hops per call that, under load,
    cost more than the request itself. Here the proxy environment is read once, for the one
    host we talk to, and the session is told the result.
    """
    try:
        import aiohttp
        from aiohttp.helpers import get_env_proxy_for_url
        from yarl import URL
    except ImportError:
        return None
    proxy = None
    try:
        proxy, _ = get_env_proxy_for_url(URL(base_url))
    except LookupError:
        proxy = None
    except Exception:
        proxy = None
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, trust_env=False, proxy=proxy)


def gemini_rest_body(request: Request) -> dict[str, Any]:
    """The generateContent JSON body for a request (Gemini REST API, v1beta field names)."""
    body: dict[str, Any] = {
        "contents": [
            {"role": "model" if m["role"] == "assistant" else "user", "parts": [{"text": m["content"]}]}
            for m in request.dialogue()
        ]
    }
    system = request.system_text()
    if system is not None:
        body["systemInstruction"] = {"parts": [{"text": system}], "role": "user"}
    p = request.params
    config: dict[str, Any] = {}
    for name, value in (
        ("temperature", p.temperature),
        ("topP", p.top_p),
        ("topK", p.top_k),
        ("maxOutputTokens", p.max_output_tokens),
        ("presencePenalty", p.presence_penalty),
        ("seed", p.seed_for(request.sample_index)),
    ):
        if value is not None:
            config[name] = value
    if request.schema is not None:
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = request.schema_json()
    if p.thinking is True:
        thinking: dict[str, Any] = {"includeThoughts": True}
        if p.thinking_budget is not None:
            thinking["thinkingBudget"] = p.thinking_budget
        config["thinkingConfig"] = thinking
    elif p.thinking is False:
        config["thinkingConfig"] = {"thinkingBudget": 0}
    if config:
        body["generationConfig"] = config
    return body


def _classify(exc: Exception) -> BaseException:
    """Map whatever the client raised to the taxonomy of distill/llm/errors.py (or re-raise)."""
    from google.genai import errors

    if isinstance(exc, errors.APIError):
        code = getattr(exc, "code", None)
        message = f"{getattr(exc, 'status', '') or ''}: {getattr(exc, 'message', '') or ''}".strip(" :")
        return status_error(int(code or 0), message, _retry_after(exc))
    if isinstance(exc, json.JSONDecodeError):
        # The body was garbled on the way: nothing readable arrived, so nothing can be stored.
        return TransientError(f"malformed JSON body ({exc.msg} at char {exc.pos})", kind="malformed body")
    return client_error(exc)


def _retry_after(exc) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        return parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
    except Exception:
        return None


def _sdk_to_response(result, request: Request) -> Response:
    candidates = result.candidates or []
    usage = result.usage_metadata
    tokens = dict(
        input_tokens=int(getattr(usage, "prompt_token_count", 0) or 0),
        output_tokens=int(getattr(usage, "candidates_token_count", 0) or 0)
        + int(getattr(usage, "thoughts_token_count", 0) or 0),
    )
    if not candidates:
        feedback = getattr(result, "prompt_feedback", None)
        reason = getattr(feedback, "block_reason", None)
        if reason is None:
            raise TransientError("response has no candidates", kind="no candidates")
        return _blocked_prompt(getattr(reason, "name", None) or str(reason), request, tokens)
    candidate = candidates[0]
    thoughts, answer = [], []
    for part in candidate.content.parts if candidate.content and candidate.content.parts else []:
        if part.text is None:
            continue
        (thoughts if part.thought else answer).append(part.text)
    finish = candidate.finish_reason
    finish_name = getattr(finish, "name", None) or (str(finish) if finish is not None else None)
    return build_response(
        request, answer="".join(answer), thoughts="".join(thoughts), finish_reason=finish_name, **tokens
    )


def _rest_to_response(data: Any, request: Request) -> Response:
    if not isinstance(data, dict):
        raise TransientError("response body is not a JSON object", kind="malformed body")
    usage = data.get("usageMetadata") or {}
    tokens = dict(
        input_tokens=int(usage.get("promptTokenCount") or 0),
        output_tokens=int(usage.get("candidatesTokenCount") or 0) + int(usage.get("thoughtsTokenCount") or 0),
    )
    candidates = data.get("candidates") or []
    if not candidates:
        reason = (data.get("promptFeedback") or {}).get("blockReason")
        if reason is None:
            raise TransientError("response has no candidates", kind="no candidates")
        return _blocked_prompt(str(reason), request, tokens)
    candidate = candidates[0]
    thoughts, answer = [], []
    for part in (candidate.get("content") or {}).get("parts") or []:
        text = part.get("text")
        if text is None:
            continue
        (thoughts if part.get("thought") else answer).append(text)
    return build_response(
        request,
        answer="".join(answer),
        thoughts="".join(thoughts),
        finish_reason=candidate.get("finishReason"),
        **tokens,
    )


def _blocked_prompt(reason: str, request: Request, tokens: dict[str, int]) -> Response:
    """The prompt itself was blocked: a real, repeatable, paid answer with no text, marked
    blocked (and so unusable), never an empty answer."""
    return build_response(request, answer="", finish_reason=f"{PROMPT_BLOCKED_PREFIX}{reason}", **tokens)
