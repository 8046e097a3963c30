"""Estimated cost of fetched tokens: USD per 1M input and per 1M output tokens, per model.

The built-in table is data, not logic: published list prices (standard tier, prompts up to
200k tokens, reasoning tokens billed as output) as of the date below. Prices change; pass your
own table as a YAML or JSON file (`PriceTable.from_file`) whose entries replace or extend these:

    gemini-2.5-flash: {input: 0.30, output: 2.50, batch_input: 0.15, batch_output: 1.25}
    my-vllm-model:    {input: 0, output: 0}

The batch columns are the provider's batch-mode prices (Gemini batch mode and the OpenAI Batch
API both bill half the online price); an entry without them is billed in batch mode at
`BATCH_DISCOUNT` times its online price.

A model is matched exactly first, then by the longest table entry that prefixes it (so
`gemini-2.5-flash-preview-09-2025` is priced as `gemini-2.5-flash`). An unknown model costs 0
and gets one warning, so a missing price is visible but never stops a run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("distill.llm")

PRICES_AS_OF = "2025-10"

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    # model prefix: (USD per 1M input tokens, USD per 1M output tokens)
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.0-flash-lite": (0.075, 0.30),
    "gemini-3-pro-preview": (2.00, 12.00),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
}

DEFAULT_BATCH_PRICES: dict[str, tuple[float, float]] = {
    # The batch column: published batch-mode prices (USD per 1M input, per 1M output tokens).
    "gemini-2.5-pro": (0.625, 5.00),
    "gemini-2.5-flash": (0.15, 1.25),
    "gemini-2.5-flash-lite": (0.05, 0.20),
    "gemini-2.0-flash": (0.05, 0.20),
    "gemini-2.0-flash-lite": (0.0375, 0.15),
    "gemini-3-pro-preview": (1.00, 6.00),
    "gpt-4o": (1.25, 5.00),
    "gpt-4o-mini": (0.075, 0.30),
    "gpt-4.1": (1.00, 4.00),
    "gpt-4.1-mini": (0.20, 0.80),
}

BATCH_DISCOUNT = 0.5
"""Batch price / online price for a model the batch column does not list (both providers' rate)."""


@dataclass
class PriceTable:
    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    batch_prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_BATCH_PRICES))
    """The batch column; a model missing here is billed BATCH_DISCOUNT times its online price."""
    _warned: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def default(cls) -> PriceTable:
        return cls()

    @classmethod
    def free(cls) -> PriceTable:
        """Every model costs 0 without warnings (local and replay backends)."""
        table = cls(prices={}, batch_prices={})
        table._warned = _Everything()
        return table

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, extend_defaults: bool = True) -> PriceTable:
        from distill.errors import InputError

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(path, f"cannot read price table ({exc.strerror})") from None
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"not valid JSON ({exc.msg})", row=exc.lineno) from None
        else:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise InputError(path, f"not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(path, "a price table maps model names to {input, output} prices")
        table = cls() if extend_defaults else cls(prices={}, batch_prices={})
        for model, entry in data.items():
            table.prices[str(model)] = _parse_entry(path, str(model), entry)
            batch = _parse_batch_entry(path, str(model), entry)
            if batch is not None:
                table.batch_prices[str(model)] = batch
            else:  # a new online price must not keep an old batch price
                table.batch_prices.pop(str(model), None)
        return table

    def lookup(self, model: str, *, batch: bool = False) -> tuple[float, float] | None:
        """(input, output) USD per 1M tokens; `batch`: the batch-mode column."""
        if batch:
            own = _match(self.batch_prices, model)
            online = _match(self.prices, model)
            if own is not None and (online is None or len(own[0]) >= len(online[0])):
                return own[1]
            if online is None:
                return None
            return online[1][0] * BATCH_DISCOUNT, online[1][1] * BATCH_DISCOUNT
        found = _match(self.prices, model)
        return None if found is None else found[1]

    def cost(self, model: str, input_tokens: int, output_tokens: int, *, batch: bool = False) -> float:
        """Estimated USD of these tokens, at online prices or (`batch`) at batch-mode prices."""
        price = self.lookup(model, batch=batch)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                logger.warning(
                    "no price known for model %r: its cost is counted as 0 (give a price table file)",
                    model,
                )
            return 0.0
        return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000


def _match(prices: dict[str, tuple[float, float]], model: str) -> tuple[str, tuple[float, float]] | None:
    """(matched entry, price): the exact name, then the longest entry that prefixes it."""
    if model in prices:
        return model, prices[model]
    name = model.split("/")[-1]  # "models/gemini-2.5-flash" and "org/model" forms
    if name in prices:
        return name, prices[name]
    prefixes = [p for p in prices if name.startswith(p)]
    if not prefixes:
        return None
    best = max(prefixes, key=len)
    return best, prices[best]


class _Everything(set):
    def __contains__(self, item) -> bool:  # every model is "already warned"
        return True


def _parse_entry(path, model: str, entry) -> tuple[float, float]:
    from distill.errors import InputError

    if isinstance(entry, dict):
        try:
            return float(entry["input"]), float(entry["output"])
        except (KeyError, TypeError, ValueError):
            raise InputError(path, "needs numeric 'input' and 'output' (USD per 1M tokens)", field=model) from None
    if isinstance(entry, (list, tuple)) and len(entry) == 2:
        try:
            return float(entry[0]), float(entry[1])
        except (TypeError, ValueError):
            pass
    raise InputError(path, "needs {input: USD per 1M, output: USD per 1M}", field=model)


def _parse_batch_entry(path, model: str, entry) -> tuple[float, float] | None:
    from distill.errors import InputError

    if not isinstance(entry, dict) or ("batch_input" not in entry and "batch_output" not in entry):
        return None
    try:
        return float(entry["batch_input"]), float(entry["batch_output"])
    except (KeyError, TypeError, ValueError):
        raise InputError(path, "needs numeric 'batch_input' and 'batch_output' together", field=model) from None


def load_prices(spec: PriceTable | str | os.PathLike | None) -> PriceTable:
    """A PriceTable from an instance, a file path, or None (the built-in table)."""
    if isinstance(spec, PriceTable):
        return spec
    if spec is None or str(spec).strip() == "":
        return PriceTable.default()
    return PriceTable.from_file(spec)
