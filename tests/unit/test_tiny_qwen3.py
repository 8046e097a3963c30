"""tiny-qwen3: deterministic local build, cache, tokenizer, chat template, forward pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from distill import tiny_qwen3
from distill.tiny_qwen3 import (
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    THINK_TOKENS,
    TINY_QWEN3,
    build_tiny_qwen3,
    parse_tiny_name,
    tiny_qwen3_path,
)

KOREAN_TEXTS = [
    "고려 광종은 노비안검법을 실시하여 호족 세력을 약화시켰다.",
    "흥선대원군은 서원을 정리하고 경복궁을 중건하였다. 정답: 2",
    # Words that are not in the corpus, rare syllables, Hanja, emoji, control bytes, mixed scripts.
    "뷁꿿쀍 똠얌꿍 — 漢字 混用, naïve café 🙂🇰🇷\t탭\r\n줄바꿈\x00끝",
    "<보기>\nㄱ. 기회비용은 포기한 대안의 가치이다.\nㄴ. 매몰 비용은 고려하지 않는다.\n\n선택지:\n1. ㄱ\n2. ㄴ\n3. ㄱ, ㄴ",
    "  leading and trailing spaces   ",
]


def _tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return tiny_qwen3_path()


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


# ----------------------------------------------------------------------------- build and cache


def test_different_seed_gives_different_weights_same_tokenizer(tmp_path, tiny_dir):
    import torch

    other = build_tiny_qwen3(tmp_path / "seed1", seed=1)
    assert (other / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()
    mine, theirs = _tensors(tiny_dir), _tensors(other)
    embed = "model.embed_tokens.weight"
    assert not torch.equal(mine[embed], theirs[embed])
    random_init = [n for n in mine if n.endswith("proj.weight")]
    assert random_init and all(not torch.equal(mine[n], theirs[n]) for n in random_init)


def test_build_leaves_global_rng_untouched(tmp_path):
    import torch

    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    build_tiny_qwen3(tmp_path / "b", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_cache_builds_once_and_lives_under_distill_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    before = tiny_qwen3.build_count()
    first = tiny_qwen3_path(seed=3)
    assert tiny_qwen3.build_count() == before + 1
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    second = tiny_qwen3_path(seed=3)
    assert second == first
    assert tiny_qwen3.build_count() == before + 1
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp

    assert first.parent == tmp_path / "home" / "models"
    assert first.name.startswith(f"{TINY_QWEN3}-")
    assert tiny_qwen3_path(seed=4) != first  # the seed is part of the cache key
    # nothing half-built is left next to the finished directories
    leftovers = [p.name for p in first.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_concurrent_first_use_builds_once_and_matches_this_process(tmp_path, tiny_dir):
    """Two fresh processes ask at once: the lock makes one build and the other reuse it, and
    that build (new Rust and Python hash seeds) is byte-identical to this process's build."""
    env = {**os.environ, "DISTILL_HOME": str(tmp_path / "home")}
    code = "from distill import tiny_qwen3; p = tiny_qwen3.tiny_qwen3_path(0); print(p, tiny_qwen3.build_count())"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in outputs]
    lines = [out.strip().splitlines()[-1].rsplit(" ", 1) for out, _ in outputs]
    assert lines[0][0] == lines[1][0]
    assert sorted(int(count) for _, count in lines) == [0, 1]

    other = Path(lines[0][0])
    assert other.parent == tmp_path / "home" / "models"
    assert other.name == tiny_dir.name  # same cache key
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        assert (other / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    mine, theirs = _tensors(tiny_dir), _tensors(other)
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert mine[name].dtype == theirs[name].dtype
        assert mine[name].equal(theirs[name]), name


def test_names_resolve():
    from distill.models import resolve_model_path

    assert parse_tiny_name("tiny-qwen3") == 0
    assert parse_tiny_name("tiny-qwen3@5") == 5
    assert parse_tiny_name(" tiny-qwen3@12 ") == 12
    assert parse_tiny_name("tiny-qwen3-instruct") is None
    assert parse_tiny_name("Qwen/Qwen3-14B") is None
    assert resolve_model_path("tiny-qwen3") == str(tiny_qwen3_path(0))
    assert resolve_model_path("tiny-qwen3@0") == str(tiny_qwen3_path(0))


def test_build_record_matches_model(tiny_dir, model, tokenizer):
    info = json.loads((tiny_dir / "distill_build.json").read_text())
    assert info["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert info["vocab_size"] == len(tokenizer) == model.config.vocab_size
    assert model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert model.config.max_position_embeddings >= 2048
    assert model.config.model_type == "qwen3"


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_is_byte_level_bpe_of_the_requested_size(tokenizer):
    assert 3000 <= len(tokenizer) <= 4200
    assert tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.padding_side == "right"


@pytest.mark.parametrize("text", KOREAN_TEXTS)
def test_tokenizer_round_trips_any_text(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_tokenizer_learned_korean_merges(tokenizer):
    """Trained on Korean: common words are far fewer tokens than their UTF-8 bytes."""
    text = "고려 광종은 노비안검법을 실시하여 호족 세력을 약화시켰다."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) * 4 < len(text.encode("utf-8"))


def test_decomposed_hangul_encodes_like_composed(tokenizer):
    composed = "정답은 광종이다"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert tokenizer(decomposed)["input_ids"] == tokenizer(composed)["input_ids"]


@pytest.mark.parametrize("token", SPECIAL_TOKENS + THINK_TOKENS)
def test_control_tokens_are_single_tokens(tokenizer, token):
    ids = tokenizer(f"앞{token}뒤", add_special_tokens=False)["input_ids"]
    token_id = tokenizer.convert_tokens_to_ids(token)
    assert ids.count(token_id) == 1
    assert tokenizer.decode([token_id]) == token


def test_think_tags_survive_skip_special_tokens(tokenizer):
    """As in Qwen3, <think> is not special: answer extraction can still find the block."""
    text = "<think>\n추론\n</think>\n\n정답: 3<|im_end|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>\n추론\n</think>\n\n정답: 3"


def test_answer_digits_are_single_tokens(tokenizer):
    prefix = tokenizer("정답:", add_special_tokens=False)["input_ids"]
    for digit in "12345":
        ids = tokenizer(f"정답: {digit}", add_special_tokens=False)["input_ids"]
        assert ids[: len(prefix)] == prefix
        assert tokenizer.convert_ids_to_tokens(ids[-1]) == digit


def test_no_bos_is_added(tokenizer):
    ids = tokenizer("질문")["input_ids"]
    assert ids == tokenizer("질문", add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- chat template

MESSAGES = [
    {"role": "system", "content": "당신은 수능 문제를 푸는 전문가입니다."},
    {"role": "user", "content": "지문:\n광종의 정책은?\n\n선택지:\n1. 과거제\n2. 호포제"},
]


def test_chat_template_thinking_off_appends_empty_think_block(tokenizer):
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert text == (
        "<|im_start|>system\n당신은 수능 문제를 푸는 전문가입니다.<|im_end|>\n"
        "<|im_start|>user\n지문:\n광종의 정책은?\n\n선택지:\n1. 과거제\n2. 호포제<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


@pytest.mark.parametrize("kwargs", [{"enable_thinking": True}, {}])
def test_chat_template_thinking_on_leaves_the_turn_open(tokenizer, kwargs):
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True, **kwargs)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "<think>" not in text


def test_chat_template_without_generation_prompt(tokenizer):
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=False, enable_thinking=False)
    assert text.endswith("2. 호포제<|im_end|>\n")
    assert "assistant" not in text and "<think>" not in text


def test_assistant_history_is_rendered_as_given(tokenizer):
    answer = "<think>\n광종은 과거제를 시행했다.\n</think>\n\n정답: 1"
    conversation = MESSAGES + [{"role": "assistant", "content": answer}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, enable_thinking=False)
    assert text.endswith(f"<|im_start|>assistant\n{answer}<|im_end|>\n")
    encoded = tokenizer.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert tokenizer.decode(masked) == answer + "<|im_end|>"


def test_prompt_contract_helper_uses_the_template(tokenizer):
    from distill.data.prompts import apply_chat_template

    off = apply_chat_template(tokenizer, MESSAGES, thinking=False)
    on = apply_chat_template(tokenizer, MESSAGES, thinking=True)
    assert off == on + "<think>\n\n</think>\n\n"


# ----------------------------------------------------------------------------- model


def test_forward_pass_gives_finite_logits(model, tokenizer):
    import torch

    batch = tokenizer(KOREAN_TEXTS[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, len(tokenizer))
    assert torch.isfinite(logits).all()
    assert logits.std() > 0


def test_right_padding_does_not_change_real_token_logits(model, tokenizer):
    import torch

    short, long = "정답: 3", "고려 광종은 노비안검법을 실시하였다. 정답: 2"
    alone = tokenizer(short, return_tensors="pt")
    batch = tokenizer([short, long], return_tensors="pt", padding=True)
    n = alone["input_ids"].shape[1]
    with torch.no_grad():
        single = model(**alone).logits[0]
        batched = model(**batch).logits[0, :n]
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_generate_stops_within_budget(model, tokenizer):
    import torch

    prompt = tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, enable_thinking=False, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= prompt["input_ids"].shape[1] + 5
    assert out.shape[1] > prompt["input_ids"].shape[1]
