"""Test helpers for scoring and evaluation: MCQ items of mixed shapes, and a throwaway tokenizer
whose byte-level BPE merges the answer prefix's space with the digit (" 3" as one token), so
the prompt/label boundary is NOT stable — the case `distill.scoring` must handle honestly."""

from __future__ import annotations

import random

from distill.contracts import MCQItem

SUBJECTS = ["국어", "한국사", "화법·작문"]

_WORDS = (
    "다음 글을 읽고 물음에 답하시오 조선 후기 실학자 정약용 목민심서 백성 농업 상업 화폐 "
    "경제 정치 제도 개혁 주장 근거 설명 적절한 것은 윗글의 내용과 일치하지 않는 것 보기 "
    "화자 태도 표현 방식 시적 대상 비유 상징 반어 역설 설득 토론 발표 청중 자료"
).split()


def make_items(n: int = 12, seed: int = 0, *, with_ten: bool = False) -> list[MCQItem]:
    """Items with 4 or 5 choices (plus, optionally, one with 10), of clearly different lengths."""
    rng = random.Random(seed)
    items = []
    for index in range(n):
        n_choices = 4 if index % 2 == 0 else 5
        if with_ten and index == n - 1:
            n_choices = 10
        paragraph_len = rng.choice([0, 5, 20, 60])
        items.append(
            MCQItem(
                id=f"t{index:03d}",
                paragraph=" ".join(rng.choice(_WORDS) for _ in range(paragraph_len)),
                question=" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))) + "?",
                question_plus="ㄱ. 보기 내용" if index % 5 == 0 else "",
                choices=tuple(
                    f"{k}번 " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 6)))
                    for k in range(1, n_choices + 1)
                ),
                answer=rng.randint(1, n_choices),
                subject=SUBJECTS[index % len(SUBJECTS)],
                source="test",
            )
        )
    return items


QWEN_STYLE_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def merging_tokenizer():
    """A GPT-2-style byte-level BPE (' ?\\p{N}+' pre-tokens) trained so that ' 1'..' 5' are tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from distill.contracts import ANSWER_PREFIX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(_WORDS)] * 20 + [f"{ANSWER_PREFIX}{d}" for d in range(1, 11)] * 50
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = QWEN_STYLE_TEMPLATE
    return fast


def tiny_model_for(tokenizer, seed: int = 0):
    """A small random Qwen3ForCausalLM sized to `tokenizer`."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    model = Qwen3ForCausalLM(config).eval()
    return model
