"""A fake OpenAI-compatible server: `POST /v1/chat/completions` over real HTTP (vLLM flavour).

Answers deterministically: choice = `expected_choice(prompt, seed)` with `prompt` the message
contents joined by newlines. `response_format: json_schema` gives `{"reasoning", "answer"}`;
`chat_template_kwargs.enable_thinking: true` adds `reasoning_content` as vLLM's reasoning
parser does. `answer_fn(body) -> str | Reply` replaces the answer (a Reply also sets the
finish_reason: length, content_filter). Every body is recorded, so tests can check pass-through options (top_k,
presence_penalty, repetition_penalty, chat_template_kwargs, response_format).
"""

from __future__ import annotations

import json
import time
from typing import Any

from . import FakeLLMServer, FaultPlan, Reply, as_reply, expected_choice, run_main, token_count

__all__ = ["FakeOpenAIServer", "FaultPlan", "openai_prompt"]


def openai_prompt(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content", "")) for m in body.get("messages", []))


class FakeOpenAIServer(FakeLLMServer):
    def __init__(self, *, require_key: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.require_key = require_key

    def add_routes(self, app) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)

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


def _error(code: int, message: str) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "server_error" if code >= 500 else "invalid_request_error", "code": code}
    }


if __name__ == "__main__":
    run_main(FakeOpenAIServer)
