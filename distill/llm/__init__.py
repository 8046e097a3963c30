"""LLM backends (gemini, openai, local, replay) behind one protocol, with a durable cache.

from distill.llm import Request, make_backend
teacher = make_backend("gemini", "gemini-2.5-flash", cache="outputs/llm_cache.sqlite")
responses = teacher.generate([Request.chat("...", temperature=0.0)])
teacher.usage.as_dict("teacher/")

Beside the backends: `roles` (check a stage role's backend and model, build its backend, report
its usage), `recording` (the one format of recorded responses and its importer) and `templates`
(the one prompt-filling engine over distill/resources/prompts).
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
from distill.llm.factory import BACKENDS, make_backend
from distill.llm.pricing import PriceTable, load_prices

__all__ = [
    "BACKENDS",
    "Backend",
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
