"""A transformers model on this machine, behind the same cache and protocol.

Batched generation with left padding (decoder-only models continue from the right edge).
Thinking on/off goes through the chat template's `enable_thinking` (Qwen3 convention: off
inserts an empty think block). Sampling is seeded per sample index (`seed + sample_index`,
base seed 0 when none is given), so sample k of a prompt is reproducible and samples differ.
Requests are grouped by (parameters, sample index) because one `generate` call takes one set
of sampling options; each batch's responses are written to the cache as soon as it finishes.

A response schema cannot be enforced here: the text is parsed against it when possible
(`parsed` stays None otherwise). Generation runs in a worker thread so a network backend
sharing the event loop keeps its requests flowing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Sequence
from typing import Any

from distill.llm.base import (
    DEFAULT_TRACE_REQUESTS,
    Request,
    Response,
    Usage,
    _progress_bar,
    logger,
    partition_cached,
    request_key,
    request_record,
    run_sync,
)
from distill.llm.pricing import PriceTable


class LocalBackend:
    name = "local"

    def __init__(
        self,
        model: str,
        *,
        cache,
        adapter: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        load_in_4bit: bool = False,
        batch_size: int = 8,
        default_max_new_tokens: int = 512,
        loaded: tuple[Any, Any] | None = None,
    ):
        self.base_model = model
        self.adapter = adapter
        # The adapter changes every answer, so it is part of the model name in the cache key.
        self.model = model if not adapter else f"{model}@{adapter}"
        self.cache = cache
        self.device = device
        self.dtype = dtype
        self.load_in_4bit = load_in_4bit
        self.batch_size = max(1, int(batch_size))
        self.default_max_new_tokens = default_max_new_tokens
        self.usage = Usage()
        self.prices = PriceTable.free()
        self.role = ""
        self.trace_requests = DEFAULT_TRACE_REQUESTS
        self._loaded = loaded

    def __repr__(self) -> str:
        return f"LocalBackend(model={self.model!r})"

    def key(self, request: Request) -> str:
        return request_key(self.name, self.model, request)

    def generate(
        self, requests: Sequence[Request], *, progress: bool = True, role: str | None = None
    ) -> list[Response]:
        return run_sync(lambda: self.generate_many(requests, progress=progress, role=role))

    def close(self) -> None:
        self._loaded = None

    def model_and_tokenizer(self):
        if self._loaded is None:
            from distill.models import load_student

            self._loaded = load_student(
                self.base_model,
                adapter=self.adapter,
                device=self.device,
                dtype=self.dtype,
                load_in_4bit=self.load_in_4bit,
            )
        return self._loaded

    async def generate_many(
        self, requests: Sequence[Request], *, progress: bool = True, role: str | None = None
    ) -> list[Response]:
        from distill.llm.tracing import traced_batch

        requests = list(requests)
        with traced_batch(self, requests, role) as batch:
            batch.responses = await self._generate_many(requests, progress)
            self.usage.count_answers(batch.responses)
            self.usage.count_delivered(batch.responses)
        return batch.responses

    async def _generate_many(self, requests: list[Request], progress: bool) -> list[Response]:
        keys = [self.key(r) for r in requests]
        results, to_fetch = partition_cached(self.cache, keys, self.usage)
        if not to_fetch:
            return results  # type: ignore[return-value]

        groups: dict[tuple, list[str]] = {}
        for key, indices in to_fetch.items():
            request = requests[indices[0]]
            groups.setdefault((request.params, request.sample_index), []).append(key)
        bar = _progress_bar(
            progress, len(requests), f"local:{self.model}", initial=len(requests) - sum(map(len, to_fetch.values()))
        )
        for (params, sample_index), group_keys in groups.items():
            # Similar lengths together waste less padding.
            group_keys.sort(key=lambda k: sum(len(m["content"]) for m in requests[to_fetch[k][0]].messages))
            for start in range(0, len(group_keys), self.batch_size):
                batch_keys = group_keys[start : start + self.batch_size]
                batch = [requests[to_fetch[k][0]] for k in batch_keys]
                started_ns = time.time_ns()
                responses = await asyncio.to_thread(self._generate_batch, batch, params, sample_index)
                ended_ns = time.time_ns()
                for key, request, response in zip(batch_keys, batch, responses):
                    response.key = key
                    response.timing = (started_ns, ended_ns)
                    self.cache.put(key, response, request=request_record(self.name, self.model, request))
                    self.usage.requests += 1
                    self.usage.fetched += 1
                    self.usage.input_tokens += response.input_tokens
                    self.usage.output_tokens += response.output_tokens
                    for position, index in enumerate(to_fetch[key]):
                        results[index] = response if position == 0 else dataclasses.replace(response)
                if bar is not None:
                    bar.update(sum(len(to_fetch[k]) for k in batch_keys))
        if bar is not None:
            bar.close()
        logger.info("local/%s: %s", self.model, self.usage.summary())
        return results  # type: ignore[return-value]

    def prompt_text(self, tokenizer, request: Request) -> str:
        messages = list(request.messages)
        continue_final = messages[-1]["role"] == "assistant"
        kwargs: dict[str, Any] = {}
        if request.params.thinking is not None:
            kwargs["enable_thinking"] = bool(request.params.thinking)
        return tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
            **kwargs,
        )

    def _generate_batch(self, batch: list[Request], params, sample_index: int) -> list[Response]:
        import torch

        model, tokenizer = self.model_and_tokenizer()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        prompts = [self.prompt_text(tokenizer, r) for r in batch]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(model.parameters()).device
        encoded = {k: v.to(device) for k, v in encoded.items()}

        do_sample = params.temperature is not None and params.temperature > 0
        options: dict[str, Any] = {
            "max_new_tokens": params.max_output_tokens or self.default_max_new_tokens,
            "do_sample": do_sample,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if do_sample:
            options["temperature"] = float(params.temperature)
            if params.top_p is not None:
                options["top_p"] = float(params.top_p)
            if params.top_k is not None:
                options["top_k"] = int(params.top_k)
        else:
            # Greedy: silence sampling defaults a model's generation_config may carry.
            options.update(temperature=None, top_p=None, top_k=None)
        if params.repetition_penalty is not None:
            options["repetition_penalty"] = float(params.repetition_penalty)
        torch.manual_seed(params.seed_for(sample_index) if params.seed is not None else sample_index)

        started = time.perf_counter()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            output = model.generate(**encoded, **options)
        if was_training:
            model.train()
        elapsed = time.perf_counter() - started

        prompt_width = encoded["input_ids"].shape[1]
        eos_ids = _eos_ids(model, tokenizer)
        responses = []
        for row, request in enumerate(batch):
            new_tokens = output[row, prompt_width:].tolist()
            finish = "length"
            for position, token in enumerate(new_tokens):
                if token in eos_ids:
                    new_tokens = new_tokens[: position + 1]
                    finish = "stop"
                    break
            text = tokenizer.decode(new_tokens, skip_special_tokens=True)
            responses.append(
                Response(
                    text=text,
                    parsed=_parse_loosely(request.schema, text),
                    input_tokens=int(encoded["attention_mask"][row].sum().item()),
                    output_tokens=len(new_tokens),
                    latency_s=elapsed,
                    backend=self.name,
                    model=self.model,
                    cached=False,
                    finish_reason=finish,
                    attempts=1,
                )
            )
        return responses


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for value in (
        getattr(model.generation_config, "eos_token_id", None),
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    ):
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return ids


_JSON_OBJECT = re.compile(r"\{.*\}", re.S)


def _parse_loosely(schema, text: str):
    if schema is None:
        return None
    from distill.extraction import strip_think

    match = _JSON_OBJECT.search(strip_think(text))
    if not match:
        return None
    try:
        return schema.model_validate(json.loads(match.group(0))).model_dump(mode="json")
    except Exception:
        return None
