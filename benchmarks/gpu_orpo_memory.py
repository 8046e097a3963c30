"""GPU benchmark: ORPO steps on a Qwen3-14B-shaped model, 4-bit + LoRA r=16, 4096-token sequences.

Measures, for plain TRL (QLoRA: bitsandbytes NF4 + peft, distill's `qlora` backend) and for
Unsloth (its loader and LoRA, distill's `unsloth` backend): peak GPU memory during training and
training throughput (tokens/s over the measured steps). Each variant trains through
`distill.training.load_for_training` + `train_preference`, i.e. exactly what `train` runs, on
synthetic pairs whose prompt is cut to 3072 tokens and whose completions fill the rest of 4096
(`overlong=truncate`), batch 1 pair (2 sequences of 4096 tokens) per step.

The model has random weights, built from Qwen3-14B's published shape (no download): it is
written once, in bf16, under `$DISTILL_HOME/bench/` (about 30 GB of disk) and loaded in 4-bit
by each variant, each in its own process (Unsloth must be imported before transformers, and
each process's peak memory is its own).

Targets (issue 3): peak under 32 GiB (the V100 32GB of the reference study) and Unsloth at
least 1.5x plain TRL's tokens/s. The closing table says PASS/FAIL for each; the JSON results
go to `--out` (default `$OUT` if set, else `outputs/bench`).

    python benchmarks/gpu_orpo_memory.py                      # build if needed, both variants
    python benchmarks/gpu_orpo_memory.py --variant trl        # one variant
    python benchmarks/gpu_orpo_memory.py --build-only         # just write the random model
    python benchmarks/gpu_orpo_memory.py --shape tiny --allow-cpu --steps 1 --warmup 1
                                                              # the code path on a CPU (figures meaningless)

Without a CUDA GPU (and without --allow-cpu) it prints why and exits 0: there is nothing to
measure. Every figure it prints is read from the run, none is assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

QWEN3_14B_SHAPE = {
    "vocab_size": 151936,
    "hidden_size": 5120,
    "intermediate_size": 17408,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": False,
}
"""Qwen3-14B's config.json (the architecture numbers only)."""


SHAPES = ("qwen3-14b", "tiny")


def shape_config(shape: str) -> dict:
    """Qwen3-14B's numbers, or the test suite's tiny Qwen3 (distill.tiny_qwen3) untied like Qwen3-14B."""
    if shape == "qwen3-14b":
        return QWEN3_14B_SHAPE
    from distill.tiny_qwen3 import MODEL_CONFIG, VOCAB_SIZE_TARGET

    return {**MODEL_CONFIG, "vocab_size": VOCAB_SIZE_TARGET, "tie_word_embeddings": False}


TARGET_PEAK_GIB = 32.0
TARGET_SPEEDUP = 1.5
GIB = 1024**3


def why_off(allow_cpu: bool) -> str | None:
    """None when the benchmark can run here, else the reason it cannot."""
    try:
        import torch
    except Exception as exc:  # a machine without torch at all
        return f"torch cannot be imported ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available() and not allow_cpu:
        build = (
            "a CPU-only build"
            if torch.version.cuda is None
            else f"CUDA {torch.version.cuda} build, but no GPU is visible"
        )
        return f"no CUDA GPU (torch {torch.__version__}, {build}); this benchmark measures GPU memory and speed"
    return None


def model_dir(shape: str) -> Path:
    from distill.paths import distill_home

    return distill_home() / "bench" / f"{shape}-random-bf16"


def build_random_model(shape: str) -> Path:
    """Write a randomly initialised Qwen3 of `shape` (bf16) plus tiny-qwen3's tokenizer, once."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from distill.models import resolve_model_path

    target = model_dir(shape)
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("tiny-qwen3"))
    config = Qwen3Config(
        **shape_config(shape),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # 14.8B parameters: ~30 GB in bf16, twice that in fp32
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    staging = target.with_name(target.name + ".tmp")
    model.save_pretrained(staging, max_shard_size="4GB")
    tokenizer.save_pretrained(staging)
    staging.rename(target)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"built {shape} ({n_params / 1e9:.2f}B parameters, random) in {time.perf_counter() - started:.0f} s -> {target}"
    )
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return target


def synthetic_rows(tokenizer, n: int, prompt_tokens: int, completion_tokens: int) -> list[dict]:
    """n pairs whose prompt and completions are longer than the limits (truncation makes them exact)."""
    import random

    rng = random.Random(0)
    words = "조선 후기 실학 경제 정책 왕권 강화 토지 제도 개혁 백성 상업 화폐 지문 선택지 근거 추론".split()

    def text(n_tokens: int) -> str:
        pieces, count = [], 0
        while count < n_tokens + 64:
            piece = " ".join(rng.choice(words) for _ in range(64))
            pieces.append(piece)
            count += len(tokenizer(piece, add_special_tokens=False)["input_ids"])
        return " ".join(pieces)

    rows = []
    for index in range(n):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": text(prompt_tokens)}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        rows.append(
            {
                "id": str(index),
                "subject": "bench",
                "prompt": prompt,
                "chosen": text(completion_tokens) + "\n\n정답: 1" + tokenizer.eos_token,
                "rejected": text(completion_tokens) + "\n\n정답: 2" + tokenizer.eos_token,
            }
        )
    return rows


def worker(variant: str, shape: str, seq_len: int, prompt_len: int, warmup: int, steps: int, out: Path) -> dict:
    """Train one variant; return (and write) its figures."""
    result: dict = {"variant": variant, "shape": shape, "seq_len": seq_len, "prompt_len": prompt_len, "status": "ok"}
    if variant == "unsloth":
        try:
            import unsloth  # noqa: F401  (first, before transformers: it patches them)
        except Exception as exc:
            result.update(status="unavailable", reason=f"unsloth import failed: {type(exc).__name__}: {exc}")
            return result
    import torch
    from transformers import TrainerCallback

    from distill.stages.train import TrainConfig
    from distill.training import load_for_training, resolve_backend, split_completion_tokens, train_preference

    path = str(model_dir(shape))
    cuda = torch.cuda.is_available()
    cfg = TrainConfig(
        student=path,
        lora_rank=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules="all-linear",
        per_device_batch_size=1,
        gradient_accumulation_steps=1,
        max_length=seq_len,
        max_prompt_length=prompt_len,
        overlong="truncate",
        max_steps=warmup + steps,
        learning_rate=1e-4,
        logging_steps=1,
        load_in_4bit="true",
        use_unsloth="true" if variant == "unsloth" else "false",
        output_dir=str(out / "work"),
    )
    backend = resolve_backend(
        "true", cfg.use_unsloth, cuda=cuda, has_bitsandbytes=True, has_unsloth=variant == "unsloth"
    )
    result["backend"] = backend.name
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    load_started = time.perf_counter()
    model, tokenizer, peft_config = load_for_training(cfg, backend, path)
    result["load_s"] = time.perf_counter() - load_started
    if cuda:
        torch.cuda.synchronize()
        result["after_load_allocated_gib"] = torch.cuda.memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()

    rows = synthetic_rows(tokenizer, warmup + steps, prompt_len, seq_len - prompt_len)
    # Tokens the model actually sees per step (one pair: chosen + rejected after truncation).
    lengths = []
    for row in rows:
        for side in ("chosen", "rejected"):
            context, completion = split_completion_tokens(tokenizer, row["prompt"], row[side])
            kept_prompt = min(len(context), prompt_len)
            lengths.append(kept_prompt + min(len(completion), seq_len - kept_prompt))
    tokens_per_step = sum(lengths) / len(rows)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.started)

    timer = StepTimer()
    train_preference(cfg, backend, model, tokenizer, peft_config, rows, out / "work" / variant, callbacks=[timer])
    measured = sorted(timer.times[warmup:])
    middle = len(measured) // 2
    median = measured[middle] if len(measured) % 2 else (measured[middle - 1] + measured[middle]) / 2
    result.update(
        step_times_s=timer.times,
        median_step_s=median,
        tokens_per_step=tokens_per_step,
        sequence_lengths=sorted(set(lengths)),
        tokens_per_s=tokens_per_step / median,
        device=torch.cuda.get_device_name() if cuda else "cpu",
        torch=torch.__version__,
    )
    if cuda:
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    return result


def report(results: list[dict]) -> str:
    lines = ["variant   backend   status       peak alloc  peak reserved  median step  tokens/s"]
    by_variant = {r["variant"]: r for r in results}
    for r in results:
        if r["status"] != "ok":
            lines.append(f"{r['variant']:<9} {'-':<9} {r['status']:<12} {r.get('reason', '')}")
            continue
        peak = f"{r['peak_allocated_gib']:.2f} GiB" if "peak_allocated_gib" in r else "n/a"
        reserved = f"{r['peak_reserved_gib']:.2f} GiB" if "peak_reserved_gib" in r else "n/a"
        lines.append(
            f"{r['variant']:<9} {r['backend']:<9} {'ok':<12} {peak:>10}  {reserved:>13}  {r['median_step_s']:>9.2f} s  {r['tokens_per_s']:>8.0f}"
        )
    for r in results:
        if r["status"] == "ok" and "peak_reserved_gib" in r:
            verdict = "PASS" if r["peak_reserved_gib"] < TARGET_PEAK_GIB else "FAIL"
            lines.append(
                f"{r['variant']}: peak reserved {r['peak_reserved_gib']:.2f} GiB vs target < {TARGET_PEAK_GIB:.0f} GiB: {verdict}"
            )
    trl, fast = by_variant.get("trl"), by_variant.get("unsloth")
    if trl and fast and trl["status"] == fast["status"] == "ok":
        ratio = fast["tokens_per_s"] / trl["tokens_per_s"]
        verdict = "PASS" if ratio >= TARGET_SPEEDUP else "FAIL"
        lines.append(
            f"unsloth / trl tokens/s = {ratio:.2f}x (baseline: plain TRL QLoRA) vs target >= {TARGET_SPEEDUP}x: {verdict}"
        )
    else:
        lines.append("unsloth / trl ratio: n/a (a variant did not run)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["both", "trl", "unsloth"], default="both")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-14b")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--prompt-len", type=int, default=3072)
    parser.add_argument("--warmup", type=int, default=2, help="steps not timed (allocator, kernels)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--out", default=os.environ.get("OUT") or "outputs/bench")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="run the code path without a GPU (tests; figures meaningless)"
    )
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--worker", choices=["build", "trl", "unsloth"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    reason = why_off(args.allow_cpu)
    if reason is not None:
        print(f"gpu_orpo_memory: off: {reason}.")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.worker == "build":
        build_random_model(args.shape)
        return 0
    if args.worker in ("trl", "unsloth"):
        result = worker(args.worker, args.shape, args.seq_len, args.prompt_len, args.warmup, args.steps, out)
        (out / f"orpo_{args.worker}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return 0

    # The parent: build once, then each variant in a fresh process.
    base = [sys.executable, os.path.abspath(__file__), "--shape", args.shape, "--out", str(out)]
    if args.allow_cpu:
        base.append("--allow-cpu")
    subprocess.run(base + ["--worker", "build"], check=True)
    if args.build_only:
        return 0
    variants = ["trl", "unsloth"] if args.variant == "both" else [args.variant]
    results = []
    for variant in variants:
        (out / f"orpo_{variant}.json").unlink(missing_ok=True)
        command = base + [
            "--worker",
            variant,
            "--seq-len",
            str(args.seq_len),
            "--prompt-len",
            str(args.prompt_len),
            "--warmup",
            str(args.warmup),
            "--steps",
            str(args.steps),
        ]
        started = time.perf_counter()
        done = subprocess.run(command)
        path = out / f"orpo_{variant}.json"
        if done.returncode == 0 and path.is_file():
            results.append(json.loads(path.read_text(encoding="utf-8")))
        else:
            results.append(
                {
                    "variant": variant,
                    "status": "failed",
                    "reason": f"exit code {done.returncode} after {time.perf_counter() - started:.0f} s",
                }
            )
    text = report(results)
    print(text)
    (out / "orpo_summary.txt").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
