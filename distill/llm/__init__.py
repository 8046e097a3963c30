"""LLM backends (gemini, openai, local, replay, world) behind one protocol, with a durable cache.

from distill.llm import Request, make_backend
teacher = make_backend("gemini", "gemini-2.5-flash", cache="outputs/llm_cache.sqlite")
responses = teacher.generate([Request.chat("...", temperature=0.0)])
teacher.usage.as_dict("teacher/")

Beside the backends: `errors` (the one taxonomy of failures: transient, permanent, paid but
unusable), `roles` (check a stage role's backend and model, build its backend, report its
usage, fail a stage past its failure rate), `tracing` (each batch a trace of the active MLflow
run), `recording` (the one format of recorded responses and its importer) and `templates`
(the one prompt-filling engine over distill/resources/prompts), `batch` (gemini and openai
requests as provider batch jobs at batch prices, stored in the cache database and re-attached
after a kill; export for `vllm run-batch` and `python -m distill llm import-batch`).
"""

from distill.llm.base import (
    Backend,
    GenerationParams,
    ReplayMissError,
    Request,
    Response,
    Usage,
    request_key,
)
from distill.llm.cache import ResponseCache, open_cache
from distill.llm.errors import BackendStopped
from distill.llm.factory import BACKENDS, make_backend
from distill.llm.pricing import PriceTable, load_prices

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendStopped",
    "GenerationParams",
    "PriceTable",
    "ReplayMissError",
    "Request",
    "Response",
    "ResponseCache",
    "Usage",
    "load_prices",
    "make_backend",
    "open_cache",
    "request_key",
]
