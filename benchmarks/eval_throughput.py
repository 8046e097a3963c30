"""Throughput of batched logit scoring against the one-item-one-choice reference.

    python benchmarks/eval_throughput.py [--data PATH] [--n 200] [--batch_size 8] [--model tiny-qwen3]

Scores the same items twice on the same model:
- baseline, "one-item-one-choice reference": `distill.scoring.score_choices_reference`, one
  forward pass per (item, choice), no padding;
- `distill.scoring.score_choices`: length-sorted batches, one forward pass per batch, all K
  labels read from one position when the labels are single tokens.
Prints items/s of each, the ratio, and checks that both give the same argmax on every item
(and the largest score difference). Default data: the first N rows of the competition train
file in ../shared/data (CP949), read through `distill.data.loaders.load_items`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "competition" / "cleaned_category_labeled_train.cp949.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="MCQ file (any format load_items reads)")
    parser.add_argument("--format", default="auto")
    parser.add_argument("--n", type=int, default=200, help="items to score")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--model", default="tiny-qwen3")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)

    import torch

    from distill.data.loaders import load_items
    from distill.models import load_student
    from distill.scoring import choice_tokens, predict, score_choices, score_choices_reference, scoring_prompt

    if args.threads:
        torch.set_num_threads(args.threads)
    # The real competition file has one item with two identical choices (a translation
    # artifact); it is still a valid item to score.
    items = load_items(args.data, args.format, require_answer=True, allow_duplicate_choices=True)[: args.n]
    model, tokenizer = load_student(args.model, device=args.device)
    device = next(model.parameters()).device
    lengths = [
        len(choice_tokens(tokenizer, scoring_prompt(tokenizer, item), item.n_choices).context) for item in items
    ]
    print(
        f"model {args.model} on {device} ({torch.get_num_threads()} CPU threads), {len(items)} items from {args.data}"
    )
    print(
        f"prompt tokens: min {min(lengths)}, median {sorted(lengths)[len(lengths) // 2]}, max {max(lengths)}; "
        f"choices: {sorted({item.n_choices for item in items})}"
    )

    score_choices(model, tokenizer, items[:2], batch_size=2, progress=False)  # warm-up

    started = time.perf_counter()
    reference = score_choices_reference(model, tokenizer, items, progress=True)
    reference_s = time.perf_counter() - started

    started = time.perf_counter()
    batched = score_choices(model, tokenizer, items, batch_size=args.batch_size, progress=True)
    batched_s = time.perf_counter() - started

    same_argmax = predict(batched) == predict(reference)
    max_diff = max(abs(a - b) for row_a, row_b in zip(batched, reference) for a, b in zip(row_a, row_b))
    reference_rate = len(items) / reference_s
    batched_rate = len(items) / batched_s
    print()
    print(f"one-item-one-choice reference : {reference_rate:8.2f} items/s  ({reference_s:.1f} s)")
    print(f"batched score_choices (bs={args.batch_size:<2d}): {batched_rate:8.2f} items/s  ({batched_s:.1f} s)")
    print(f"ratio batched / reference     : {batched_rate / reference_rate:8.2f}x")
    print(f"same argmax on every item: {same_argmax}; largest score difference {max_diff:.2e}")
    return 0 if same_argmax and max_diff < 1e-3 else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
