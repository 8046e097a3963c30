"""A fake Gemini API: `POST /{v1,v1beta}/models/{model}:generateContent` over real HTTP.

It reads what google-genai sends (contents, systemInstruction, generationConfig with
responseMimeType/responseSchema, thinkingConfig, seed) and answers deterministically from the
request: the choice is `expected_choice(prompt, seed)` where `prompt` is the text of every
content part joined with newlines (system instruction first). With `application/json` it
answers `{"reasoning": ..., "answer": N}`; otherwise a Korean explanation ending `정답: N`.
With includeThoughts it adds a thought part. usageMetadata counts ~3 characters per token.
A test can replace the answer with `answer_fn(request_json) -> str | Reply` (a Reply also sets
the finish reason, or blocks the prompt: no candidate, `promptFeedback.blockReason`).

Batch mode: `POST .../models/{model}:batchGenerateContent` with inline requests (each carrying
`metadata.key`) creates a job (`FakeBatchJob`); `GET /{version}/batches/{id}` returns it as the
Developer API does (a long-running operation whose `metadata` is the batch, with `batchStats`
and, once ended, `output.inlinedResponses`; a per-request fault is a google.rpc.Status error).

Run alone (for benchmarks): `python -m tests.fakes.fake_gemini --latency 0.2 --port-file F`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from . import FAULT_STATUS, FakeLLMServer, FaultPlan, Reply, as_reply, expected_choice, run_main, token_count

__all__ = ["FakeGeminiServer", "FaultPlan", "Reply", "gemini_prompt", "gemini_seed"]


def gemini_prompt(body: dict[str, Any]) -> str:
    texts = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if system:
        texts += [p.get("text", "") for p in system.get("parts", [])]
    for content in body.get("contents", []):
        texts += [p.get("text", "") for p in content.get("parts", [])]
    return "\n".join(texts)


def gemini_seed(body: dict[str, Any]) -> int | None:
    return (body.get("generationConfig") or {}).get("seed")


def _thinking_requested(config: dict[str, Any]) -> bool:
    thinking = config.get("thinkingConfig") or {}
    value = thinking.get("includeThoughts", thinking.get("include_thoughts"))
    return bool(value)


class FakeGeminiServer(FakeLLMServer):
    def add_routes(self, app) -> None:
        app.router.add_post("/{version}/models/{model_action}", self._generate)
        app.router.add_get("/{version}/batches/{job_id}", self._get_batch)
        app.router.add_get("/{version}/batches", self._list_batches)
        self.report_state: dict[str, str] = {}
        """Override the state a job reports, e.g. {"RUNNING": "JOB_STATE_PAUSED"} or
        {"EXPIRED": "JOB_STATE_PARTIALLY_SUCCEEDED"} (google-genai's JobState names)."""

    async def _generate(self, request):
        from aiohttp import web

        model, _, action = request.match_info["model_action"].partition(":")
        if action not in ("generateContent", "batchGenerateContent"):
            return web.json_response(_error(404, f"unknown action {action!r}"), status=404)
        if not request.headers.get("x-goog-api-key"):
            return web.json_response(_error(401, "API key not valid."), status=401)
        if action == "batchGenerateContent":
            return await self._create_batch(request, model)
        return await self.serve(request, self._body, _error)

    async def _create_batch(self, request, model: str):
        from aiohttp import web

        body = await request.json()
        batch = body.get("batch") or {}
        lines = (((batch.get("inputConfig") or {}).get("requests") or {}).get("requests")) or []
        if not lines or any(not (line.get("metadata") or {}).get("key") for line in lines):
            return web.json_response(_error(400, "inline requests need metadata.key"), status=400)
        job = self.create_job(
            model, batch.get("displayName", ""), [(line["metadata"]["key"], line["request"]) for line in lines]
        )
        reply = web.json_response(self._job_json(job, "PENDING", 0))
        if self.take_lost_create():
            return await self.lost_reply(request, reply)
        return reply

    async def _list_batches(self, request):
        """ListBatches: `{"operations": [...], "nextPageToken": ...}`, as google-genai's batches.list reads it."""
        from aiohttp import web

        if not request.headers.get("x-goog-api-key"):
            return web.json_response(_error(401, "API key not valid."), status=401)
        start = int(request.query.get("pageToken") or 0)
        jobs, next_start = self.listed_jobs(start, int(request.query.get("pageSize") or 0))
        page: dict[str, Any] = {"operations": [self._job_json(job, *self.advance(job, self._body)) for job in jobs]}
        if next_start is not None:
            page["nextPageToken"] = str(next_start)
        return web.json_response(page)

    async def _get_batch(self, request):
        from aiohttp import web

        if not request.headers.get("x-goog-api-key"):
            return web.json_response(_error(401, "API key not valid."), status=401)
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return web.json_response(_error(404, "batch not found"), status=404)
        state, done = self.advance(job, self._body)
        return web.json_response(self._job_json(job, state, done))

    def _job_json(self, job, state: str, done: int) -> dict[str, Any]:
        total = len(job.requests)
        failed = sum(1 for _, fault, _ in job.results or () if fault is not None)
        meta: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            "name": f"batches/{job.id}",
            "model": f"models/{job.model}",
            "displayName": job.display_name,
            "state": self.report_state.get(state, f"BATCH_STATE_{state}"),
            "batchStats": {
                "requestCount": str(total),
                "successfulRequestCount": str(done - failed),
                "failedRequestCount": str(failed),
                "pendingRequestCount": str(total - done),
            },
        }
        if job.results is not None:
            meta["output"] = {
                "inlinedResponses": {
                    "inlinedResponses": [_inline_result(key, fault, answer) for key, fault, answer in job.results]
                }
            }
        out = {"name": f"batches/{job.id}", "metadata": meta, "done": job.results is not None}
        if job.results is not None and state != "SUCCEEDED" and self.job_error_message:
            out["error"] = {"code": 13, "message": self.job_error_message, "status": "INTERNAL"}
        return out

    def _body(self, body: dict[str, Any], path: str) -> dict[str, Any]:
        config = body.get("generationConfig") or {}
        prompt = gemini_prompt(body)
        choice = expected_choice(prompt, gemini_seed(body))
        json_mode = config.get("responseMimeType") == "application/json"
        reply = Reply()
        if self.answer_fn is not None:
            reply = as_reply(self.answer_fn(body))
            text = reply.text
        elif json_mode:
            text = json.dumps(
                {"reasoning": f"선택지를 차례로 검토하면 {choice}번이 맞다.", "answer": choice}, ensure_ascii=False
            )
        else:
            text = f"선택지를 차례로 검토하였다.\n정답: {choice}"
        parts = []
        thought = ""
        if _thinking_requested(config):
            thought = f"문제를 읽고 {choice}번을 확인한다."
            parts.append({"text": thought, "thought": True})
        parts.append({"text": text})
        prompt_tokens = token_count(prompt)
        out_tokens = token_count(text)
        thought_tokens = token_count(thought) if thought else 0
        usage = {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": out_tokens,
            "totalTokenCount": prompt_tokens + out_tokens + thought_tokens,
        }
        if thought_tokens:
            usage["thoughtsTokenCount"] = thought_tokens
        if reply.block_reason:
            return {
                "promptFeedback": {"blockReason": reply.block_reason},
                "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
            }
        finish = reply.finish_reason or "STOP"
        if finish in ("SAFETY", "RECITATION"):  # the answer is withheld
            parts, usage["candidatesTokenCount"] = [], 0
        return {
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
            "usageMetadata": usage,
            "modelVersion": path.rsplit("/", 1)[-1].split(":")[0],
        }


_GRPC = {400: (3, "INVALID_ARGUMENT"), 429: (8, "RESOURCE_EXHAUSTED"), 500: (13, "INTERNAL"), 503: (14, "UNAVAILABLE")}


def _inline_result(key: str, fault: str | None, answer: Any) -> dict[str, Any]:
    if fault is None:
        return {"response": answer, "metadata": {"key": key}}
    code, status = _GRPC[FAULT_STATUS.get(fault, 500)]
    return {"error": {"code": code, "message": f"injected {fault}", "status": status}, "metadata": {"key": key}}


def _error(code: int, message: str) -> dict[str, Any]:
    status = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
    }.get(code, "UNKNOWN")
    return {"error": {"code": code, "message": message, "status": status}}


if __name__ == "__main__":
    run_main(FakeGeminiServer)


LIVE_TEACHER_FIELDS = (
    "teacher",
    "cache_path",
    "output_dir",
    "timeout_s",
    "max_retries",
    "backoff_base_s",
    "backoff_max_s",
    "concurrency",
)
"""The fields mine and augment both take for a live teacher: always passed to the child."""


def stage_process(
    stage: str,
    cfg: Any,
    base_url: str,
    *,
    extra_fields: tuple[str, ...] = (),
    cwd: Any = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """`python -m distill <stage>` in a child process, its teacher the fake Gemini server at
    base_url, its parameters `cfg`'s values of LIVE_TEACHER_FIELDS and `extra_fields` (the child
    is killed in fault tests); `env` overrides the child's environment."""
    args = ["--teacher_backend", "gemini"]
    for name in (*LIVE_TEACHER_FIELDS, *extra_fields):
        args += [f"--{name}", str(getattr(cfg, name))]
    env = {
        **os.environ,
        "GOOGLE_GEMINI_BASE_URL": base_url,
        "GEMINI_API_KEY": "dummy-key-for-the-fake-server",
        **(env or {}),
    }
    env.pop("GOOGLE_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "distill", stage, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
