"""Answers only from the response cache: the embedded, offline default teacher.

A cache entry's key names the backend that recorded it, so a replay backend looks a request up
under each backend it may have come from (by default gemini, then openai, then local) with
the same model name. Anything not in the cache is an error that names the request; nothing is
ever sent anywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from distill.llm.base import DEFAULT_TRACE_REQUESTS, ReplayMissError, Request, Response, Usage, request_key, run_sync
from distill.llm.pricing import PriceTable

RECORDING_BACKENDS = ("gemini", "openai", "local")


class ReplayBackend:
    name = "replay"

    def __init__(self, model: str, *, cache, recorded_by: Sequence[str] = RECORDING_BACKENDS):
        self.model = model
        self.cache = cache
        self.recorded_by = tuple(recorded_by)
        self.usage = Usage()
        self.prices = PriceTable.free()
        self.role = ""
        self.trace_requests = DEFAULT_TRACE_REQUESTS

    def __repr__(self) -> str:
        return f"ReplayBackend(model={self.model!r}, cache={self.cache!r})"

    def key(self, request: Request) -> str:
        """The key under the first recording backend (what a live run of it would store)."""
        return request_key(self.recorded_by[0], self.model, request)

    def candidate_keys(self, request: Request) -> list[str]:
        return [request_key(backend, self.model, request) for backend in self.recorded_by]

    async def generate_many(
        self, requests: Sequence[Request], *, progress: bool = True, role: str | None = None
    ) -> list[Response]:
        from distill.llm.tracing import traced_batch

        requests = list(requests)
        with traced_batch(self, requests, role) as batch:
            batch.responses = self._answer(requests)
        return batch.responses

    def generate(
        self, requests: Sequence[Request], *, progress: bool = True, role: str | None = None
    ) -> list[Response]:
        return run_sync(lambda: self.generate_many(requests, progress=progress, role=role))

    def close(self) -> None:
        pass

    def _answer(self, requests: list[Request]) -> list[Response]:
        candidates = [self.candidate_keys(r) for r in requests]
        found = self.cache.get_many(k for keys in candidates for k in keys)
        results: list[Response] = []
        missing: list[int] = []
        for index, keys in enumerate(candidates):
            key = next((k for k in keys if k in found), None)
            if key is None:
                missing.append(index)
                continue
            results.append(dataclasses.replace(found[key], cached=True, key=key, attempts=0))
        if missing:
            first = requests[missing[0]]
            raise ReplayMissError(
                f"replay cache {getattr(self.cache, 'path', self.cache)} has no response for "
                f"{len(missing)} of {len(requests)} request(s); first: model {self.model!r}, "
                f"{first.describe()}, key {candidates[missing[0]][0]} "
                f"(looked up as recorded by {', '.join(self.recorded_by)}). "
                "Record it with a live backend (gemini, openai or local) and the same cache."
            )
        for response in results:
            self.usage.cache_hits += 1
            self.usage.cached_input_tokens += response.input_tokens
            self.usage.cached_output_tokens += response.output_tokens
        self.usage.count_answers(results)
        self.usage.count_delivered(results)
        return results
