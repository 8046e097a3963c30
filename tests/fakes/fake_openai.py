"""A fake OpenAI-compatible server: `POST /v1/chat/completions` over real HTTP (vLLM flavour).

Answers deterministically: choice = `expected_choice(prompt, seed)` with `prompt` the message
contents joined by newlines. `response_format: json_schema` gives `{"reasoning", "answer"}`;
`chat_template_kwargs.enable_thinking: true` adds `reasoning_content` as vLLM's reasoning
parser does. `answer_fn(body) -> str | Reply` replaces the answer (a Reply also sets the
finish_reason: length, content_filter). Every body is recorded, so tests can check pass-through options (top_k,
presence_penalty, repetition_penalty, chat_template_kwargs, response_format).

Batch mode, as the OpenAI Batch API: `POST /v1/files` (multipart, purpose=batch) stores a JSONL
file; `POST /v1/batches` makes a job of it (`FakeBatchJob`, keyed by each line's custom_id);
`GET /v1/batches/{id}` reports status and request_counts; once ended, its answers are in
`output_file_id` and its per-request errors in `error_file_id` (`GET /v1/files/{id}/content`).
`output_line`/`error_line` are also the format `vllm run-batch` writes.
"""

from __future__ import annotations

import json
import time
from typing import Any

from . import FAULT_STATUS, FakeLLMServer, FaultPlan, Reply, as_reply, expected_choice, run_main, token_count

__all__ = ["FakeOpenAIServer", "FaultPlan", "openai_prompt"]


def openai_prompt(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content", "")) for m in body.get("messages", []))


class FakeOpenAIServer(FakeLLMServer):
    def __init__(self, *, require_key: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.require_key = require_key
        self.reply_without_id = ""
        """"files" or "batches": that POST answers without its `id` (a server that speaks the API badly)."""

    def add_routes(self, app) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{file_id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create_batch)
        app.router.add_get("/v1/batches/{batch_id}", self._get_batch)
        app.router.add_get("/v1/batches", self._list_batches)
        self.files: dict[str, bytes] = {}

    def _authorised(self, request) -> bool:
        return self.require_key is None or request.headers.get("Authorization") == f"Bearer {self.require_key}"

    async def _upload(self, request):
        from aiohttp import web

        if not self._authorised(request):
            return web.json_response(_error(401, "invalid api key"), status=401)
        form = await request.post()
        upload = form.get("file")
        if form.get("purpose") != "batch" or upload is None:
            return web.json_response(_error(400, "need purpose=batch and a file"), status=400)
        file_id = f"file-{len(self.files):06d}"
        self.files[file_id] = upload.file.read()
        reply = {"id": file_id, "object": "file", "purpose": "batch", "bytes": len(self.files[file_id])}
        if self.reply_without_id == "files":
            reply.pop("id")
        return web.json_response(reply)

    async def _file_content(self, request):
        from aiohttp import web

        if not self._authorised(request):
            return web.json_response(_error(401, "invalid api key"), status=401)
        data = self.files.get(request.match_info["file_id"])
        if data is None:
            return web.json_response(_error(404, "no such file"), status=404)
        return web.Response(body=data, content_type="application/jsonl")

    async def _create_batch(self, request):
        from aiohttp import web

        if not self._authorised(request):
            return web.json_response(_error(401, "invalid api key"), status=401)
        body = await request.json()
        data = self.files.get(body.get("input_file_id", ""))
        if data is None or body.get("endpoint") != "/v1/chat/completions":
            return web.json_response(_error(400, "unknown input_file_id or endpoint"), status=400)
        lines = [json.loads(text) for text in data.decode("utf-8").splitlines() if text.strip()]
        model = lines[0]["body"].get("model", "") if lines else ""
        job = self.create_job(
            model,
            (body.get("metadata") or {}).get("display_name", ""),
            [(line["custom_id"], line["body"]) for line in lines],
        )
        created = self._batch_json(job, "PENDING", 0, body.get("input_file_id", ""))
        if self.reply_without_id == "batches":
            created.pop("id")
        reply = web.json_response(created)
        if self.take_lost_create():
            return await self.lost_reply(request, reply)
        return reply

    async def _list_batches(self, request):
        """GET /v1/batches?limit=&after=: `{"object": "list", "data", "first_id", "last_id", "has_more"}`."""
        from aiohttp import web

        if not self._authorised(request):
            return web.json_response(_error(401, "invalid api key"), status=401)
        ordered = sorted(self.jobs.values(), key=lambda job: job.ordinal, reverse=True)
        after = request.query.get("after")
        start = next((i + 1 for i, job in enumerate(ordered) if job.id == after), 0) if after else 0
        jobs, next_start = self.listed_jobs(start, int(request.query.get("limit") or 0))
        data = [self._batch_json(job, *self.advance(job, self._body), "") for job in jobs]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": next_start is not None,
            }
        )

    async def _get_batch(self, request):
        from aiohttp import web

        if not self._authorised(request):
            return web.json_response(_error(401, "invalid api key"), status=401)
        job = self.jobs.get(request.match_info["batch_id"])
        if job is None:
            return web.json_response(_error(404, "no such batch"), status=404)
        state, done = self.advance(job, self._body)
        return web.json_response(self._batch_json(job, state, done, ""))

    def _batch_json(self, job, state: str, done: int, input_file_id: str) -> dict[str, Any]:
        status = {"PENDING": "validating", "RUNNING": "in_progress", "SUCCEEDED": "completed"}.get(
            state, state.lower()
        )
        failed = sum(1 for _, fault, _ in job.results or () if fault is not None)
        out: dict[str, Any] = {
            "id": job.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(job.created),
            "request_counts": {"total": len(job.requests), "completed": done - failed, "failed": failed},
            "metadata": {"display_name": job.display_name},
        }
        if job.results is not None and state != "SUCCEEDED" and self.job_error_message:
            out["errors"] = {"object": "list", "data": [{"code": "batch_failed", "message": self.job_error_message}]}
        if job.results is not None:
            ok = [output_line(key, answer) for key, fault, answer in job.results if fault is None]
            bad = [error_line(key, FAULT_STATUS.get(fault, 500)) for key, fault, _ in job.results if fault is not None]
            for name, lines in (("output_file_id", ok), ("error_file_id", bad)):
                if lines:
                    file_id = f"file-{job.id}-{name[:3]}"
                    self.files[file_id] = "".join(
                        json.dumps(line, ensure_ascii=False) + "\n" for line in lines
                    ).encode()
                    out[name] = file_id
        return out

    async def _chat(self, request):
        from aiohttp import web

        if self.require_key is not None and request.headers.get("Authorization") != f"Bearer {self.require_key}":
            return web.json_response(_error(401, "invalid api key"), status=401)
        return await self.serve(request, self._body, _error)

    def _body(self, body: dict[str, Any], path: str) -> dict[str, Any]:
        prompt = openai_prompt(body)
        choice = expected_choice(prompt, body.get("seed"))
        wants_json = (body.get("response_format") or {}).get("type") == "json_schema"
        reply = Reply()
        if self.answer_fn is not None:
            reply = as_reply(self.answer_fn(body))
            content = reply.text
        elif wants_json:
            content = json.dumps(
                {"reasoning": f"{choice}번이 조건을 모두 만족한다.", "answer": choice}, ensure_ascii=False
            )
        else:
            content = f"각 선택지를 검토했다.\n정답: {choice}"
        message: dict[str, Any] = {"role": "assistant", "content": content}
        thinking = (body.get("chat_template_kwargs") or {}).get("enable_thinking")
        reasoning = ""
        if thinking:
            reasoning = f"먼저 지문을 읽는다. {choice}번이 맞아 보인다."
            message["reasoning_content"] = reasoning
        prompt_tokens = token_count(prompt)
        completion_tokens = token_count(content) + (token_count(reasoning) if reasoning else 0)
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason or "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def output_line(key: str, answer: dict[str, Any]) -> dict[str, Any]:
    """One line of a batch output file: the answer to request `key`."""
    return {
        "id": f"batch_req_{key[:12]}",
        "custom_id": key,
        "response": {"status_code": 200, "request_id": f"req_{key[:8]}", "body": answer},
        "error": None,
    }


def error_line(key: str, status: int) -> dict[str, Any]:
    """One line of a batch error file: request `key` failed with HTTP `status`."""
    return {
        "id": f"batch_req_{key[:12]}",
        "custom_id": key,
        "response": {"status_code": status, "request_id": "", "body": _error(status, "injected fault")},
        "error": None,
    }


def _error(code: int, message: str) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "server_error" if code >= 500 else "invalid_request_error", "code": code}
    }


if __name__ == "__main__":
    run_main(FakeOpenAIServer)
