"""Any OpenAI-compatible `/v1/chat/completions` server (vLLM, Ollama, a hosted API), over httpx.

Base URL and key come from the arguments or `OPENAI_BASE_URL` / `OPENAI_API_KEY` (the URL
includes the `/v1` part, as the OpenAI client expects). Sampling options the OpenAI API lacks
but vLLM accepts (top_k, repetition_penalty, `chat_template_kwargs: {enable_thinking}`) are sent
only when set, so a plain request stays valid for a hosted API. A returned reasoning trace
(`reasoning_content`, or `reasoning` in newer vLLM) is put before the answer in a think block.
"""

from __future__ import annotations

import json
import os
from typing import Any

from distill.llm.base import (
    CachedBackend,
    Request,
    Response,
    TransientError,
    build_response,
    parse_retry_after,
)
from distill.llm.errors import check_api_key, check_base_url, client_error, status_error
from distill.llm.gemini import REQUEST_KEY_HEADER

DEFAULT_BASE_URL = "http://localhost:8000/v1"

OPENAI_BATCH_MAX_REQUESTS = 50_000
OPENAI_BATCH_MAX_BYTES = 190_000_000
"""The Batch API takes up to 50,000 requests and a 200 MB input file per job."""

_BATCH_STATES = {
    "validating": "PENDING",
    "in_progress": "RUNNING",
    "finalizing": "RUNNING",
    "cancelling": "RUNNING",
    "completed": "SUCCEEDED",
    "failed": "FAILED",
    "expired": "EXPIRED",
    "cancelled": "CANCELLED",
}


OPENAI_LIST_PAGE_SIZE = 100
OPENAI_LIST_MAX_PAGES = 100
"""The batch list is searched for a lost job up to this many pages (newest first)."""


def _state(job: dict[str, Any]) -> str:
    """A batch's status in distill.llm.batch's names; one this table lacks is passed on in capitals
    (not ended: polled and logged once), an absent one is PENDING."""
    status = str(job.get("status") or "")
    return _BATCH_STATES.get(status, status.upper() or "PENDING")


def _reply_id(reply: Any, path: str) -> str:
    """The `id` of a reply to POST /v1/<path>; a reply without one is a server that does not speak
    the batch API as expected (retrying the same call cannot help): a PermanentError."""
    from distill.llm.errors import PermanentError

    value = reply.get("id") if isinstance(reply, dict) else None
    if not isinstance(value, str) or not value:
        raise PermanentError(
            f"POST /v1/{path} answered without an id ({json.dumps(reply, ensure_ascii=False)[:200]}): this server "
            "does not speak the OpenAI batch API",
            kind="malformed batch reply",
        )
    return value


class _OpenAIBatch:
    """Batch mode (distill/llm/batch.py) over `/v1/files` + `/v1/batches`: the input is the
    OpenAI batch JSONL (`custom_id` = the request key, `body` = the online payload), which is
    also what `vllm run-batch` reads in export mode; results are parsed by the online parser."""

    def batch_limits(self) -> tuple[int, int]:
        return OPENAI_BATCH_MAX_REQUESTS, OPENAI_BATCH_MAX_BYTES

    def batch_line(self, key: str, request: Request) -> dict[str, Any]:
        return {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": self.payload(request)}

    async def _batch_http(self, method: str, path: str, **kwargs):
        import httpx

        try:
            reply = await self._client.request(method, f"{self.base_url}/{path}", **kwargs)
        except httpx.TimeoutException:
            raise TransientError(f"timed out after {self.retry.timeout_s:g}s", kind="timeout") from None
        except Exception as exc:
            raise client_error(exc) from None
        if reply.status_code != 200:
            detail = reply.text[:300].replace("\n", " ")
            raise status_error(reply.status_code, detail, parse_retry_after(reply.headers.get("retry-after")))
        return reply

    async def _batch_json(self, method: str, path: str, **kwargs) -> dict[str, Any]:
        reply = await self._batch_http(method, path, **kwargs)
        try:
            return json.loads(reply.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TransientError(f"malformed JSON body ({exc})", kind="malformed body") from None

    async def _batch_list(self, display_name: str) -> list[tuple[str, str]]:
        """(id, state) of the batches whose `metadata.display_name` is `display_name`, from
        `GET /v1/batches` (newest first; pages by `limit` and `after`, while `has_more`)."""
        found, after = [], None
        for _ in range(OPENAI_LIST_MAX_PAGES):
            params = {"limit": OPENAI_LIST_PAGE_SIZE, **({"after": after} if after else {})}
            page = await self._batch_json("GET", "batches", params=params)
            data = page.get("data") or []
            for job in data:
                if (job.get("metadata") or {}).get("display_name") == display_name and job.get("id"):
                    found.append((job["id"], _state(job)))
            after = page.get("last_id") or (data[-1].get("id") if data else None)
            if not page.get("has_more") or not after:
                break
        return found

    async def _batch_create(self, lines, display_name: str) -> tuple[str, str]:
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for _, line in lines).encode("utf-8")
        uploaded = await self._batch_json(
            "POST",
            "files",
            data={"purpose": "batch"},
            files={"file": (f"{display_name}.jsonl", data, "application/jsonl")},
        )
        job = await self._batch_json(
            "POST",
            "batches",
            json={
                "input_file_id": _reply_id(uploaded, "files"),
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"display_name": display_name},
            },
        )
        return _reply_id(job, "batches"), _state(job)

    async def _batch_status(self, name: str):
        from distill.llm.batch import JobStatus

        job = await self._batch_json("GET", f"batches/{name}")
        counts = job.get("request_counts") or {}
        errors = [e.get("message", "") for e in ((job.get("errors") or {}).get("data") or [])]
        return JobStatus(
            _state(job),
            int(counts.get("completed") or 0) + int(counts.get("failed") or 0),
            int(counts.get("total") or 0),
            "; ".join(errors),
        )

    async def _batch_results(self, name: str) -> dict[str, Any]:
        job = await self._batch_json("GET", f"batches/{name}")
        lines: dict[str, Any] = {}
        # The error file first: a request in both (a retried line) keeps its answer.
        for file_id in (job.get("error_file_id"), job.get("output_file_id")):
            if not file_id:
                continue
            reply = await self._batch_http("GET", f"files/{file_id}/content")
            for text in reply.text.splitlines():
                if text.strip():
                    try:
                        line = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise TransientError(
                            f"malformed batch result line ({exc.msg})", kind="malformed body"
                        ) from None
                    lines[str(line.get("custom_id"))] = line
        return lines

    def _batch_outcome(self, raw: dict[str, Any], request: Request):
        from distill.llm.batch import openai_outcome

        return openai_outcome(raw, request, _to_response)


class OpenAIBackend(_OpenAIBatch, CachedBackend):
    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        cache,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 16,
        retry=None,
        prices=None,
        seed: int = 0,
        extra_body: dict[str, Any] | None = None,
    ):
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        # A bad paste or a URL without http:// is refused now, not retried for a minute per request.
        check_api_key(self._api_key, "api_key" if api_key else "OPENAI_API_KEY")
        super().__init__(
            model,
            cache=cache,
            concurrency=concurrency,
            retry=retry,
            prices=prices,
            api_key=self._api_key,
            seed=seed,
        )
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        check_base_url(self.base_url, "base_url" if base_url else "OPENAI_BASE_URL")
        self.extra_body = dict(extra_body or {})
        """Sent with every request (not part of the cache key: keep it to transport options)."""
        self._client = None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    async def _open(self) -> None:
        import httpx

        # No default Content-Type: `json=` sets it per request, and a batch file upload is multipart.
        headers: dict[str, str] = {}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._client = httpx.AsyncClient(headers=headers, limits=limits, timeout=httpx.Timeout(self.retry.timeout_s))
        self._resources.closers.append(self._client.aclose)

    def payload(self, request: Request) -> dict[str, Any]:
        p = request.params
        body: dict[str, Any] = {"model": self.model, "messages": list(request.messages)}
        optional = {
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_output_tokens,
            "presence_penalty": p.presence_penalty,
            "seed": p.seed_for(request.sample_index),
            "top_k": p.top_k,
            "repetition_penalty": p.repetition_penalty,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if p.thinking is not None:
            body["chat_template_kwargs"] = {"enable_thinking": bool(p.thinking)}
        if request.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema.__name__, "schema": request.schema_json()},
            }
        body.update(self.extra_body)
        return body

    async def _call_once(self, request: Request, key: str) -> Response:
        import httpx

        assert self._client is not None, "generate_many opens the client"
        body = self.payload(request)
        try:
            reply = await self._client.post(
                f"{self.base_url}/chat/completions", json=body, headers={REQUEST_KEY_HEADER: key}
            )
        except httpx.TimeoutException:
            raise TimeoutError() from None
        except Exception as exc:
            raise client_error(exc) from None
        if reply.status_code != 200:
            detail = reply.text[:300].replace("\n", " ")
            raise status_error(reply.status_code, detail, parse_retry_after(reply.headers.get("retry-after")))
        try:
            data = json.loads(reply.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            # Garbled on the way: nothing readable arrived, so nothing can be stored.
            raise TransientError(f"malformed JSON body ({exc})", kind="malformed body") from None
        return _to_response(data, request)


def _to_response(data: Any, request: Request) -> Response:
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        raise TransientError("response has no choices", kind="no choices") from None
    usage = data.get("usage") or {}
    return build_response(
        request,
        answer=message.get("content") or "",
        thoughts=message.get("reasoning_content") or message.get("reasoning") or "",
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=choice.get("finish_reason"),
    )
