"""`world-student`: a tiny Qwen3 trained here on the world's items, with a known defect.

It learns every structure of distill/world/items.py from the `student` content pool, except
that on the defective structures (`DEFECTIVE`) its training labels follow the wrong rule
(`WRONG_RULES`: the popular keyword beats what the text states). So it solves the sound
structures and fails the defective ones in one systematic, documented way, which is what the
method has to find (mine), teach against (augment, train) and measure (evaluate, register).

It learns both ways the pipeline reads a model:
- logit scoring: the answer-direct prompt, `정답: `, then the label (the loss sits on the label
  only, smoothed over the choice labels so that its scores stay calibrated and can move);
- generation: the reasoning prompt, then the world's reasoning (`1. 정답은 N번이다.`, the rule,
  `정답: N`), which mine samples and whose errors mine reads.

Built once per seed and cached like tiny-qwen3, under `distill_home()/models/world-student-<hash>`.
Names: `world-student` (seed 0) and `world-student@<seed>`. Synthetic: see items.SYNTHETIC_NOTE.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from distill.world import items as world

WORLD_STUDENT = "world-student"
BUILDER_VERSION = "1"
"""Bump when the build changes in a way StudentRecipe does not show (cache key)."""

_NAME_RE = re.compile(rf"^{re.escape(WORLD_STUDENT)}(?:@(-?\d+))?$")

MODEL_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "attention_bias": False,
    "use_sliding_window": False,
}


@dataclass(frozen=True)
class StudentRecipe:
    """How the world's student is trained (every field is part of the cache key)."""

    items_per_structure: int = 400
    """Training items per structure, from the `student` content pool."""
    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 16
    """Sequences per step (half logit-scoring format, half reasoning format)."""
    learning_rate: float = 4e-3
    """Peak AdamW learning rate (linear warm-up over 5 % of the steps, cosine decay)."""
    label_smoothing: float = 0.1
    """Share of the label's target mass spread over the other choice labels."""
    vocab_size: int = 3000
    """BPE target of the world's tokenizer."""
    digit_weight: float = 20.0
    """Loss weight of a digit in a written answer against a plain token: the pick and the answer
    line are three digits among some forty tokens of rule text, and they carry the decision."""


def parse_world_name(name: str) -> int | None:
    """Seed of a `world-student[@seed]` name, or None if `name` is something else."""
    match = _NAME_RE.match(str(name).strip())
    if not match:
        return None
    return int(match.group(1)) if match.group(1) is not None else 0


def build_key(seed: int, recipe: StudentRecipe) -> str:
    payload = json.dumps(
        {"builder": BUILDER_VERSION, "seed": int(seed), "recipe": asdict(recipe), "shape": MODEL_SHAPE},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def cache_dir(seed: int = 0, recipe: StudentRecipe | None = None) -> Path:
    from distill.paths import distill_home

    return distill_home() / "models" / f"{WORLD_STUDENT}-{build_key(seed, recipe or StudentRecipe())}"


def world_student_path(seed: int = 0, recipe: StudentRecipe | None = None) -> Path:
    """The cached build for `seed`, built once (concurrent callers wait for the first)."""
    from distill.tiny_qwen3 import built_once

    recipe = recipe or StudentRecipe()
    return built_once(cache_dir(seed, recipe), lambda staging: build_world_student(staging, seed=seed, recipe=recipe))


# ---------------------------------------------------------------------------------------------
# Training data


def taught_choice(item, solution: world.Solution) -> tuple[int, bool]:
    """(the label the student is taught, whether it is the wrong rule's)."""
    if solution.structure in world.DEFECTIVE and solution.lure is not None:
        return solution.lure, True
    return solution.answer, False


def training_texts(tokenizer, items_: list, digit_weight: float = 5.0) -> list[tuple]:
    """Token rows: (ids, loss positions, their weights, choice-label ids for a scored row or None).

    In a written answer a digit weighs `digit_weight` times a plain token (StudentRecipe)."""
    from distill.data.prompts import apply_chat_template, render_messages
    from distill.scoring import scoring_prompt

    label_ids = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(str(k))[0]) for k in range(1, world.N_CHOICES + 1)]
    rows = []
    for item in items_:
        solution = world.solve_item(item)
        choice, wrong = taught_choice(item, solution)
        prompt = tokenizer(scoring_prompt(tokenizer, item), add_special_tokens=False)["input_ids"]
        rows.append((prompt + [label_ids[choice - 1]], [len(prompt)], [1.0], label_ids))
        chat = apply_chat_template(tokenizer, render_messages(item, reasoning=True), thinking=False)
        response = world.reasoning_text(solution.structure, choice, wrong=wrong) + tokenizer.eos_token
        head = tokenizer(chat, add_special_tokens=False)["input_ids"]
        full = tokenizer(chat + response, add_special_tokens=False)["input_ids"]
        positions = list(range(len(head), len(full)))
        weights = [digit_weight if full[p] in label_ids else 1.0 for p in positions]
        rows.append((full, positions, weights, None))
    return rows


def corpus(items_: list) -> list[str]:
    """Lines the tokenizer is trained on: the prompts and answers the student will read."""
    from distill.data.prompts import answer_template, item_variables

    lines = []
    # The prompt's fixed text is in every row: repeated here so that BPE merges it into few
    # tokens, which keeps rows short and the build fast.
    for reasoning in (True, False):
        for message in answer_template(reasoning=reasoning).messages:
            lines.extend(message["content"].splitlines() * 200)
    for item in items_:
        lines.extend(item_variables(item).values())
        solution = world.solve_item(item)
        lines.extend(world.reasoning_text(solution.structure, solution.answer).splitlines())
    for structure in world.WRONG_RULES:
        lines.append(world.WRONG_RULES[structure])
    lines.extend(f"정답: {k}" for k in range(1, 11))
    return [line for line in lines if line.strip()]


def build_world_student(out_dir, seed: int = 0, recipe: StudentRecipe | None = None, *, log=print) -> Path:
    """Train the world's tokenizer and student; save both into `out_dir`; return it."""

    from distill.tiny_qwen3 import EOS_TOKEN, PAD_TOKEN, build_model, train_tokenizer, wrap_tokenizer

    recipe = recipe or StudentRecipe()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_items = world.generate("student", recipe.items_per_structure, seed=seed)
    from distill import tiny_qwen3

    saved_target = tiny_qwen3.VOCAB_SIZE_TARGET
    tiny_qwen3.VOCAB_SIZE_TARGET = recipe.vocab_size
    try:
        tokenizer = wrap_tokenizer(train_tokenizer(corpus(train_items)))
    finally:
        tiny_qwen3.VOCAB_SIZE_TARGET = saved_target
    tokenizer.model_max_length = MODEL_SHAPE["max_position_embeddings"]
    pad = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    model = build_model(
        len(tokenizer),
        pad_token_id=pad,
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS_TOKEN),
        bos_token_id=pad,
        seed=seed,
        config=MODEL_SHAPE,
    )
    rows = training_texts(tokenizer, train_items, recipe.digit_weight)
    _train(model, rows, recipe, seed=seed, pad=pad, log=log)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {
        "name": WORLD_STUDENT if int(seed) == 0 else f"{WORLD_STUDENT}@{int(seed)}",
        "seed": int(seed),
        "builder_version": BUILDER_VERSION,
        "recipe": asdict(recipe),
        "defective_structures": list(world.DEFECTIVE),
        "vocab_size": len(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": round(time.perf_counter() - started, 1),
        "note": world.SYNTHETIC_NOTE,
    }
    (out / "distill_build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def _train(model, rows, recipe: StudentRecipe, *, seed: int, pad: int, log) -> None:
    import torch
    import torch.nn.functional as F

    generator = random.Random(seed)
    scored = [r for r in rows if r[3] is not None]
    written = [r for r in rows if r[3] is None]
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.01)
    warmup = max(1, recipe.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return recipe.learning_rate * (step + 1) / warmup
        progress = (step - warmup) / max(1, recipe.steps - warmup)
        return recipe.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))

    model.train()
    half = recipe.batch_size // 2
    report_every = max(1, recipe.steps // 10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(recipe.steps):
            batch = generator.sample(scored, half) + generator.sample(written, recipe.batch_size - half)
            width = max(len(r[0]) for r in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for k, (row, _, _, _) in enumerate(batch):
                ids[k, : len(row)] = torch.tensor(row)
                mask[k, : len(row)] = 1
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            loss_terms = []
            for k, (row, positions, weights, labels) in enumerate(batch):
                # position p predicts row[p] from the hidden state at p - 1
                at = torch.tensor(positions) - 1
                logits = model.lm_head(hidden[k, at])
                targets = torch.tensor([row[p] for p in positions])
                if labels is None:
                    w = torch.tensor(weights)
                    loss_terms.append((F.cross_entropy(logits, targets, reduction="none") * w).sum() / w.sum())
                else:
                    logp = torch.log_softmax(logits, dim=-1)[0]
                    smooth = recipe.label_smoothing / (len(labels) - 1)
                    weights = torch.full((len(labels),), smooth)
                    weights[labels.index(targets[0].item())] = 1 - recipe.label_smoothing
                    loss_terms.append(-(weights * logp[labels]).sum())
            loss = torch.stack(loss_terms).mean()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if (step + 1) % report_every == 0 or step == 0:
                log(f"world-student: step {step + 1}/{recipe.steps} loss {loss.item():.3f}")
