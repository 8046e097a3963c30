"""Logit scoring side by side with lm-evaluation-harness, on the same model, prompts and items.

    python benchmarks/eval_vs_lmeval.py [--data DIR_OR_FILE ...] [--repeats 4] [--batch_sizes 1,8] [--threads 2]

What is compared: the same random Qwen3-shaped model (hidden 512, 8 layers, ~29M parameters,
fp32, a byte-level BPE tokenizer of 8k tokens trained here on the bundled corpus and the
competition train passages) scores the same items from the same prompt text:
- `evaluate`'s scorer, `distill.scoring.score_choices` (shared-prefix key/value caching);
- lm-evaluation-harness (`lm_eval`, pinned below) with its `hf` model, on a task generated here:
  a JSONL of the project's rendered prompts (`scoring_prompt`: chat template + `정답: `) and
  an `output_type: multiple_choice` task YAML whose `doc_to_text` is that prompt, `doc_to_choice`
  the labels "1".."K" and `target_delimiter` empty, so lm-eval scores exactly log P(label | prompt).
lm-eval is installed in its own virtual environment under `$DISTILL_HOME/benchmarks/eval_vs_lmeval`
(it conflicts with the project's pins), with the same torch and transformers versions as the
project, so both sides run the same modelling code.

Two workloads from the KICE files in ../shared/data (45 questions of a 수능 국어 exam each, 3 to 6
questions per passage): `passages` (the exams as they are) and `standalone` (each question
alone: its passage is dropped, so no two prompts share more than the system prompt). Runs are
interleaved (lm-eval, distill, lm-eval, distill, ...) and the best of `--repeats` is kept for
each, because this machine is shared; the timing covers scoring only (model loaded, warm-up
done), on `--threads` CPU threads. Printed per workload and batch size: items/s of each, the
ratio, and the argmax agreement (items on which both pick the same label).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_DATA = [str(SHARED / "kice" / "2018_11_KICE.json"), str(SHARED / "kice" / "2019_11_KICE.json")]
TOKENIZER_CORPUS = SHARED / "competition" / "cleaned_category_labeled_train.cp949.csv"
LM_EVAL = "lm_eval[hf]==0.4.13"
MODEL_SHAPE = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}
VOCAB_SIZE = 8192
TASK = "distill_mcq"

# Runs inside lm-eval's environment: load the model once, warm up, then time `simple_evaluate`
# on the generated task, and write the per-item argmax and the seconds.
LM_EVAL_DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import torch
    torch.set_num_threads(int(sys.argv[4]))
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model_dir, task_dir, out, threads, batch_size, repeats, task = sys.argv[1:8]
    lm = HFLM(pretrained=model_dir, dtype="float32", device="cpu", batch_size=int(batch_size))
    manager = TaskManager(include_path=task_dir)
    simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=2, log_samples=False)  # warm-up
    times, preds = [], None
    for _ in range(int(repeats)):
        started = time.perf_counter()
        result = simple_evaluate(model=lm, tasks=[task], task_manager=manager, log_samples=True)
        times.append(time.perf_counter() - started)
        samples = sorted(result["samples"][task], key=lambda s: s["doc_id"])
        preds = [max(range(len(s["resps"])), key=lambda k: (s["resps"][k][0][0], -k)) + 1 for s in samples]
    json.dump({"seconds": times, "preds": preds}, open(out, "w"))
    """
)


def cache_root() -> Path:
    from distill.paths import distill_home

    root = distill_home() / "benchmarks" / "eval_vs_lmeval"
    root.mkdir(parents=True, exist_ok=True)
    return root


def lm_eval_python(root: Path) -> Path:
    """lm-eval's own virtual environment (made once): same torch and transformers as here."""
    import torch
    import transformers

    venv = root / "venv"
    python = venv / "bin" / "python"
    pins = [LM_EVAL, f"torch=={torch.__version__}", f"transformers=={transformers.__version__}"]
    marker = venv / "distill-pins.json"
    if marker.is_file() and json.loads(marker.read_text()) == pins:
        return python
    print(f"installing {', '.join(pins)} into {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    marker.write_text(json.dumps(pins))
    return python


def tokenizer_lines() -> list[str]:
    """The bundled tokenizer corpus plus the competition train passages and questions."""
    from distill.data.loaders import load_items
    from distill.tiny_qwen3 import corpus_lines, corpus_text

    lines = corpus_lines(corpus_text())
    for item in load_items(TOKENIZER_CORPUS, require_answer=False, allow_duplicate_choices=True):
        lines += [item.paragraph, item.question, *item.choices]
    return [line for line in lines if line.strip()]


def build_model(root: Path, seed: int = 0) -> Path:
    """The random 29M-parameter Qwen3 and its 8k tokenizer, saved as an `hf`-loadable folder (once)."""
    from distill import tiny_qwen3

    out = root / f"qwen3-h512-l8-v{VOCAB_SIZE}-s{seed}"
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    # The project's tiny-model tokenizer recipe, with a larger vocabulary than its default.
    default_target = tiny_qwen3.VOCAB_SIZE_TARGET
    tiny_qwen3.VOCAB_SIZE_TARGET = VOCAB_SIZE
    try:
        tokenizer = tiny_qwen3.wrap_tokenizer(tiny_qwen3.train_tokenizer(tokenizer_lines()))
    finally:
        tiny_qwen3.VOCAB_SIZE_TARGET = default_target
    pad = tokenizer.convert_tokens_to_ids(tiny_qwen3.PAD_TOKEN)
    eos = tokenizer.convert_tokens_to_ids(tiny_qwen3.EOS_TOKEN)
    config = Qwen3Config(
        vocab_size=len(tokenizer), pad_token_id=pad, eos_token_id=eos, bos_token_id=pad, **MODEL_SHAPE
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).eval()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def workloads(paths: list[str]) -> dict[str, list]:
    """`passages`: the exams as they are; `standalone`: the same questions without their passage."""
    import dataclasses

    from distill.data.loaders import load_items

    items = [item for path in paths for item in load_items(path, require_answer=True)]
    alone = [dataclasses.replace(item, paragraph="") for item in items]
    return {"passages": items, "standalone": alone}


def write_task(folder: Path, tokenizer, items) -> Path:
    """An lm-eval task over the project's own rendered prompts (one JSONL row per item)."""
    from distill.scoring import scoring_prompt

    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "id": item.id,
            "prompt": scoring_prompt(tokenizer, item),
            "choices": [str(k) for k in range(1, item.n_choices + 1)],
            "gold": item.answer - 1,
        }
        for item in items
    ]
    data = folder / "items.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    # The prompt already ends in the answer prefix: the label follows it with no delimiter, and
    # the chat template's text is used as is (no lm-eval chat template, no few-shot, no BOS).
    (folder / f"{TASK}.yaml").write_text(
        textwrap.dedent(
            f"""\
            task: {TASK}
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {data}
            test_split: test
            output_type: multiple_choice
            doc_to_text: "{{{{prompt}}}}"
            doc_to_choice: "{{{{choices}}}}"
            doc_to_target: gold
            target_delimiter: ""
            num_fewshot: 0
            metric_list:
              - metric: acc
            """
        ),
        encoding="utf-8",
    )
    return folder


def run_lm_eval(python: Path, model_dir: Path, task_dir: Path, *, threads: int, batch_size: int) -> dict:
    out = task_dir / f"lm_eval_bs{batch_size}.json"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}
    env["HF_DATASETS_OFFLINE"] = env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        [
            str(python),
            "-c",
            LM_EVAL_DRIVER,
            str(model_dir),
            str(task_dir),
            str(out),
            str(threads),
            str(batch_size),
            "1",
            TASK,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"lm-eval failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=DEFAULT_DATA, help="KICE (or other) MCQ files")
    parser.add_argument("--repeats", type=int, default=4, help="interleaved runs of each; the best is kept")
    parser.add_argument("--batch_sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workloads", default="passages,standalone")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.scoring import choice_tokens, predict, prefix_groups, score_choices, scoring_prompt

    torch.set_num_threads(args.threads)
    root = cache_root()
    python = lm_eval_python(root)
    model_dir = build_model(root)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model: random Qwen3, {n_params / 1e6:.1f}M parameters, vocab {len(tokenizer)}, fp32, "
        f"{args.threads} CPU threads; lm-eval {LM_EVAL.split('==')[1]} in {python.parent.parent}"
    )
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    all_ok = True
    for name, items in workloads(args.data).items():
        if name not in args.workloads.split(","):
            continue
        contexts = [choice_tokens(tokenizer, scoring_prompt(tokenizer, i), i.n_choices).context for i in items]
        root_length, groups = prefix_groups(contexts)
        distinct = sum(len(c) - length for length, members in groups for c in (contexts[i] for i in members))
        distinct += sum(length for length, _ in groups) - root_length * (len(groups) - 1)
        print(
            f"\n[{name}] {len(items)} items from {', '.join(Path(p).name for p in args.data)}: "
            f"{sum(map(len, contexts))} prompt tokens, {distinct} after sharing prefixes ({len(groups)} prefix groups)"
        )
        task_dir = write_task(root / "tasks" / name, tokenizer, items)
        for batch_size in batch_sizes:
            lm_times, ours_times, lm_preds, ours_preds = [], [], None, None
            score_choices(model, tokenizer, items[:4], batch_size=batch_size, progress=False)  # warm-up
            for _ in range(args.repeats):
                result = run_lm_eval(python, model_dir, task_dir, threads=args.threads, batch_size=batch_size)
                lm_times.append(min(result["seconds"]))
                lm_preds = result["preds"]
                started = time.perf_counter()
                ours_preds = predict(score_choices(model, tokenizer, items, batch_size=batch_size, progress=False))
                ours_times.append(time.perf_counter() - started)
            lm_rate, ours_rate = len(items) / min(lm_times), len(items) / min(ours_times)
            agree = sum(a == b for a, b in zip(lm_preds, ours_preds))
            all_ok &= agree == len(items)
            print(
                f"  batch {batch_size}: lm-eval {lm_rate:6.2f} items/s   evaluate {ours_rate:6.2f} items/s   "
                f"ratio {ours_rate / lm_rate:5.2f}x   argmax agreement {agree}/{len(items)}   "
                f"(best of {args.repeats}; all runs lm-eval {', '.join(f'{t:.1f}' for t in lm_times)} s, "
                f"evaluate {', '.join(f'{t:.1f}' for t in ours_times)} s)",
                flush=True,
            )
    return 0 if all_ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
