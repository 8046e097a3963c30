"""Student models: where they come from, on which device and in which dtype, with which adapter.

Any Hugging Face model id or local directory loads through the Auto classes; the name
`tiny-qwen3[@seed]` is the embedded default built locally (`distill.tiny_qwen3`). The dtype
follows the device, never a constant: bf16 on GPUs that have it, fp16 on older GPUs such as
the V100 (compute capability 7.x, no bf16), fp32 on CPU. 4-bit NF4 loading goes through
transformers' bitsandbytes integration, which also runs on CPU with bitsandbytes >= 0.48.
Adapters are peft LoRA directories, local or inside an MLflow model/artifact URI.

Unsloth is GPU-only and cannot even be imported without one, so it lives elsewhere.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from distill.errors import ConfigError
from distill.tiny_qwen3 import TINY_QWEN3, parse_tiny_name

DTYPE_ALIASES = {
    "auto": "auto",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
}

ADAPTER_CONFIG = "adapter_config.json"

_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
"""`runs:/`, `models:/`, `mlflow-artifacts:/`, `s3://`, ... (a Windows drive letter is one
character, so it never matches)."""


# --------------------------------------------------------------------------- device and dtype


def pick_device(preferred: str | None = None) -> str:
    """The user's device if given (`cpu`, `cuda`, `cuda:1`, `mps`), else `cuda` when available."""
    if preferred and str(preferred).strip().lower() not in {"", "auto"}:
        return str(preferred).strip()
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_dtype_name(device_type: str, capability: tuple[int, int] | None, requested: str = "auto") -> str:
    """`bf16`, `fp16` or `fp32` for a device, as a pure decision (unit-testable without a GPU).

    `capability` is the CUDA compute capability (major, minor), None off CUDA. bf16 needs
    Ampere (8.0) or newer: torch's `is_bf16_supported()` says True on a V100 too, because it
    counts emulation, which is slow, so the capability decides here.
    """
    key = str(requested or "auto").strip().lower()
    if key not in DTYPE_ALIASES:
        raise ConfigError(f"dtype must be one of auto, bf16, fp16, fp32; got {requested!r}")
    name = DTYPE_ALIASES[key]
    if name != "auto":
        return name
    if device_type == "cuda":
        if capability is not None and capability[0] >= 8:
            return "bf16"
        return "fp16"
    return "fp32"


def pick_dtype(device: str, requested: str = "auto"):
    """The torch dtype for `device`: an explicit `bf16`/`fp16`/`fp32` wins; `auto` decides."""
    import torch

    device_type = torch.device(device).type
    capability = None
    if device_type == "cuda" and torch.cuda.is_available():
        if torch.version.hip:  # ROCm GPUs that run torch all handle bf16
            capability = (9, 0)
        else:
            capability = tuple(torch.cuda.get_device_capability(torch.device(device)))
    name = choose_dtype_name(device_type, capability, requested)
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def dtype_name(device: str, requested: str = "auto") -> str:
    """`pick_dtype`'s torch dtype as text (`bfloat16`, `float16`, `float32`): logged, and a cache key."""
    return str(pick_dtype(device, requested)).replace("torch.", "")


# --------------------------------------------------------------------------- where things are


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """`tiny-qwen3[@seed]` or `world-student[@seed]` → its cached build; a local directory →
    itself; else a hub id."""
    text = str(name_or_path).strip()
    if not text:
        raise ConfigError("model name is empty")
    seed = parse_tiny_name(text)
    if seed is not None:
        from distill.tiny_qwen3 import tiny_qwen3_path

        return str(tiny_qwen3_path(seed))
    from distill.world.student import WORLD_STUDENT, parse_world_name

    world_seed = parse_world_name(text)
    if world_seed is not None:
        from distill.world.student import world_student_path

        return str(world_student_path(world_seed))
    if text.startswith(f"{WORLD_STUDENT}@"):
        raise ConfigError(f"model {text!r}: the world's student takes an integer seed, as in '{WORLD_STUDENT}@3'")
    if text.startswith(f"{TINY_QWEN3}@"):
        raise ConfigError(f"model {text!r}: the tiny model takes an integer seed, as in '{TINY_QWEN3}@3'")
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ConfigError(f"model {text!r} is a file; expected a model directory or a hub id")
    if text.startswith((".", "/", "~")):  # clearly a path, and hub ids never look like this
        raise ConfigError(f"model directory {text!r} does not exist")
    return text


def built_here(name: str) -> bool:
    """Whether `name` is a model this package builds from its seed (tiny-qwen3, world-student):
    a record names it, not the cache folder it was built into."""
    from distill.world.student import parse_world_name

    return parse_tiny_name(name) is not None or parse_world_name(name) is not None


def is_mlflow_uri(value: str) -> bool:
    return bool(_URI_RE.match(str(value))) and not str(value).startswith("file:")


def _find_adapter_dir(root: Path, origin: str) -> Path:
    """The folder holding adapter_config.json: `root` itself, else the shallowest one below."""
    if (root / ADAPTER_CONFIG).is_file():
        return root
    found = sorted(root.rglob(ADAPTER_CONFIG), key=lambda p: (len(p.parts), str(p)))
    if not found:
        raise ConfigError(f"adapter {origin!r}: no {ADAPTER_CONFIG} in {root} or below it")
    shallowest = [p for p in found if len(p.parts) == len(found[0].parts)]
    if len(shallowest) > 1:
        listed = ", ".join(str(p.parent.relative_to(root)) for p in shallowest)
        raise ConfigError(f"adapter {origin!r}: several adapters found ({listed}); point at one of them")
    return found[0].parent


def resolve_adapter(adapter: str | os.PathLike) -> Path:
    """A local LoRA adapter directory for `adapter`.

    Local: a directory with adapter_config.json, or with one in a subfolder (a downloaded
    MLflow model keeps it under `artifacts/`). MLflow: `runs:/<id>/<path>`,
    `models:/<name>@<alias>`, `models:/<name>/<version>`, `models:/<model id>` or any
    artifact URI; it is downloaded with `mlflow.artifacts.download_artifacts` (from a local
    store MLflow returns the stored folder itself: read it, never write into it).
    """
    text = str(adapter).strip()
    if not text:
        raise ConfigError("adapter is empty")
    if is_mlflow_uri(text):
        from distill import tracking

        try:
            local = Path(tracking.download_artifacts(artifact_uri=text))
        except Exception as exc:  # MlflowException, OSError, ...: all mean "not there"
            raise ConfigError(f"adapter {text!r} could not be downloaded from MLflow: {exc}") from None
        if local.is_file():
            local = local.parent
        return _find_adapter_dir(local, text)
    path = Path(text.removeprefix("file://")).expanduser()
    if not path.exists():
        raise ConfigError(f"adapter {text!r}: no such directory")
    if not path.is_dir():
        if path.name == ADAPTER_CONFIG:
            return path.parent
        raise ConfigError(f"adapter {text!r} is a file; expected a directory holding {ADAPTER_CONFIG}")
    return _find_adapter_dir(path, text)


# --------------------------------------------------------------------------- loading


class _DropHubKernelHint(logging.Filter):
    """bitsandbytes' CPU backend logs, on import, that an optional kernel from the Hugging Face
    hub could not be loaded and falls back to its bundled one; offline that is always so."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


def _require_bitsandbytes() -> None:
    cpu_ops_logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    hint_filter = _DropHubKernelHint()
    cpu_ops_logger.addFilter(hint_filter)
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a broken native library
        raise ConfigError(
            "load_in_4bit needs bitsandbytes, which could not be imported "
            f"({type(exc).__name__}: {exc}); install it (`pip install bitsandbytes`) or load without 4-bit"
        ) from None
    finally:
        cpu_ops_logger.removeFilter(hint_filter)


def _device_map(device: str) -> dict[str, Any]:
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return {"": dev.index if dev.index is not None else torch.cuda.current_device()}
    return {"": str(dev)}


def load_student(
    name_or_path: str | os.PathLike,
    *,
    adapter: str | os.PathLike | None = None,
    device: str | None = None,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    for_training: bool = False,
):
    """(model, tokenizer) for a student, on `device`, with an optional LoRA adapter.

    The tokenizer always has a pad token (eos when the model defines none) and pads on the
    right; a caller that generates sets `padding_side = "left"` itself. The model is in eval
    mode unless `for_training`. The adapter is applied with `PeftModel.from_pretrained`,
    not merged (trainable when `for_training`). With `load_in_4bit` the weights are NF4 with
    double quantisation and compute in the picked dtype.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name_or_path)
    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    adapter_dir = resolve_adapter(adapter) if adapter else None

    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if load_in_4bit:
        _require_bitsandbytes()
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch_dtype,
            bnb_4bit_use_double_quant=True,
        )
    if load_in_4bit or torch.device(device).type == "cuda":
        # Straight onto the GPU: a 14B model in bf16 never has to fit in host memory first.
        kwargs["device_map"] = _device_map(device)

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        if Path(path).is_dir():
            raise ConfigError(f"model {path!r} could not be loaded: {exc}") from None
        raise ConfigError(
            f"model {str(name_or_path)!r} could not be found locally and could not be fetched "
            f"from the Hugging Face hub (offline or unreachable): {exc}"
        ) from None

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    if "device_map" not in kwargs:
        model = model.to(device)

    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=for_training)

    if for_training:
        model.train()
    else:
        model.eval()
    return model, tokenizer


def describe_model(model) -> dict[str, Any]:
    """Parameter counts, dtype and device of a (possibly peft-wrapped, possibly 4-bit) model.

    A 4-bit weight is stored packed (two values per byte), so its tensor's `numel` is half
    the weight's size; `quant_storage` tensors are counted by their logical shape.
    """
    total = 0
    trainable = 0
    for param in model.parameters():
        count = param.numel()
        quant_state = getattr(param, "quant_state", None)
        if quant_state is not None and getattr(quant_state, "shape", None) is not None:
            count = 1
            for size in quant_state.shape:
                count *= int(size)
        total += count
        if param.requires_grad:
            trainable += count
    first = next(model.parameters(), None)
    config = getattr(model, "config", None)
    compute_dtype = getattr(config, "dtype", None) if config is not None else None
    return {
        "num_parameters": total,
        "num_trainable_parameters": trainable,
        "trainable_fraction": (trainable / total) if total else 0.0,
        "dtype": str(compute_dtype or (first.dtype if first is not None else None)).replace("torch.", ""),
        "device": str(first.device) if first is not None else "cpu",
        "load_in_4bit": bool(getattr(model, "is_loaded_in_4bit", False)),
    }
