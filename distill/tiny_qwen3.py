"""The embedded default student `tiny-qwen3`: a Qwen3-shaped model built locally, no download.

A byte-level BPE tokenizer is trained with the `tokenizers` library on bundled Korean text
(`resources/tokenizer_corpus.txt`), and a `Qwen3ForCausalLM` with a small config is initialised
from a seed. Byte-level means any text encodes (Korean, emoji, stray bytes), so the tiny model
can be fed every prompt the real student sees. The chat template follows Qwen3: one
`<|im_start|>{role}\\n{content}<|im_end|>\\n` block per message, and with thinking off the
generation prompt carries the empty `<think>\\n\\n</think>\\n\\n` block, as Qwen3 does.

The build is deterministic (same seed, same files) and cached under
`distill_home()/models/tiny-qwen3-<hash>`, where the hash covers the config, the corpus, the
seed and `BUILDER_VERSION`; change any of them and a new directory is built.

Names: `tiny-qwen3` (seed 0) and `tiny-qwen3@<seed>`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

TINY_QWEN3 = "tiny-qwen3"

BUILDER_VERSION = "1"
"""Bump when the build changes in a way the config and corpus do not show (cache key)."""

CORPUS_RESOURCE = "tokenizer_corpus.txt"

VOCAB_SIZE_TARGET = 4096
"""BPE target; the learned vocabulary can stay below it on a small corpus."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
"""Control tokens: special (removed by `skip_special_tokens`)."""

THINK_TOKENS = ["<think>", "</think>"]
"""Single tokens but, as in Qwen3, not special: decoding keeps them, so a think block can be
found and stripped in generated text."""

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"

# Split before byte-level BPE: letter runs (with one leading non-letter, so " 정답" is one
# piece), digits one by one (so "정답: 3" always ends in the same digit token whatever
# follows), punctuation runs, and newlines apart from other whitespace.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)
"""Qwen3-style. `enable_thinking` reaches the template as a keyword of `apply_chat_template`
(transformers passes extra keywords into the template's variables). Assistant content is
rendered as given (no think-block rewriting); `{% generation %}` marks it for
`return_assistant_tokens_mask`."""

MODEL_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
    "hidden_act": "silu",
    "attention_bias": False,
    "use_sliding_window": False,
}
"""Small enough to train in seconds on a CPU; long enough context for whole 수능 passages."""

_NAME_RE = re.compile(rf"^{re.escape(TINY_QWEN3)}(?:@(-?\d+))?$")


def parse_tiny_name(name: str) -> int | None:
    """Seed of a `tiny-qwen3[@seed]` name, or None if `name` is something else."""
    match = _NAME_RE.match(str(name).strip())
    if not match:
        return None
    return int(match.group(1)) if match.group(1) is not None else 0


def corpus_text() -> str:
    from distill.resources import resource_path

    return resource_path(CORPUS_RESOURCE).read_text(encoding="utf-8")


def corpus_lines(text: str) -> list[str]:
    """Training lines: comment lines (`#`) are the file's own header, not corpus."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def build_key(seed: int = 0) -> str:
    """Short hash of everything that decides the built files."""
    payload = json.dumps(
        {
            "builder": BUILDER_VERSION,
            "seed": int(seed),
            "model": MODEL_CONFIG,
            "vocab_target": VOCAB_SIZE_TARGET,
            "special": SPECIAL_TOKENS,
            "think": THINK_TOKENS,
            "pattern": PRETOKENIZE_PATTERN,
            "template": CHAT_TEMPLATE,
            "corpus": hashlib.sha256(corpus_text().encode("utf-8")).hexdigest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def train_tokenizer(lines: list[str]):
    """A byte-level BPE `tokenizers.Tokenizer` trained on `lines` (deterministic)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    # NFC so that decomposed Hangul (common in text from macOS) encodes like composed Hangul.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE_TARGET,
        min_frequency=2,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tokenizer


def wrap_tokenizer(raw_tokenizer):
    """The trained tokenizer as a transformers fast tokenizer with Qwen3's conventions."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw_tokenizer,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(
    vocab_size: int, *, pad_token_id: int, eos_token_id: int, bos_token_id: int, seed: int, config: dict | None = None
):
    """A freshly initialised `Qwen3ForCausalLM`, weights decided by `seed` alone.

    `config`: the shape (MODEL_CONFIG's keys); MODEL_CONFIG when None."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
        **(MODEL_CONFIG if config is None else config),
    )
    # Initialise under a private generator state so that building never disturbs (or depends
    # on) the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.bos_token_id = bos_token_id
    return model.to(torch.float32).eval()


def build_tiny_qwen3(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Train the tokenizer, initialise the model, save both into `out_dir`; return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = wrap_tokenizer(train_tokenizer(corpus_lines(corpus_text())))
    model = build_model(
        len(tokenizer),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS_TOKEN),
        bos_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        seed=seed,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {
        "name": TINY_QWEN3 if int(seed) == 0 else f"{TINY_QWEN3}@{int(seed)}",
        "seed": int(seed),
        "builder_version": BUILDER_VERSION,
        "vocab_size": len(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    (out / "distill_build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    _log_build_seconds(time.perf_counter() - started)
    return out


_BUILD_SECONDS: list[float] = []
"""Wall time of each build in this process (read by tests to count builds, and by reports)."""


def _log_build_seconds(seconds: float) -> None:
    _BUILD_SECONDS.append(seconds)


def build_count() -> int:
    """How many times this process has built tiny-qwen3 (cache hits do not count)."""
    return len(_BUILD_SECONDS)


def cache_dir(seed: int = 0) -> Path:
    from distill.paths import distill_home

    return distill_home() / "models" / f"{TINY_QWEN3}-{build_key(seed)}"


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def tiny_qwen3_path(seed: int = 0) -> Path:
    """The cached build for `seed`, built once (concurrent callers wait for the first)."""
    return built_once(cache_dir(seed), lambda staging: build_tiny_qwen3(staging, seed=seed))


def built_once(target: Path, build: Callable[[Path], object]) -> Path:
    """`target`, made by `build(staging_dir)` the first time only; concurrent callers wait for
    the first, and a killed build leaves no half-written `target`."""
    if (target / "config.json").is_file():
        return target
    with _exclusive_lock(target.with_name(f".{target.name}.lock")):
        if (target / "config.json").is_file():  # another process built it while we waited
            return target
        # Build beside the target and rename into place: the target either is complete or
        # does not exist, even if this process is killed mid-build.
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            build(staging)
            os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is not secret
            if target.exists():  # a partial leftover from an older, unlocked layout
                shutil.rmtree(target)
            os.rename(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target
