"""benchmarks/gpu_orpo_memory.py stays importable and says why it is off on a machine without CUDA."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_orpo_memory.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_orpo_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_reports_why_it_is_off_or_that_it_can_run(tmp_path):
    import torch

    bench = _module()
    reason = bench.why_off(allow_cpu=False)
    if torch.cuda.is_available():
        assert reason is None  # on a GPU machine it would measure (not here: minutes of GPU time)
        return
    assert reason is not None and "no CUDA GPU" in reason
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"gpu_orpo_memory: off: {reason}."
    assert list(tmp_path.iterdir()) == [], "nothing measured, nothing written"


def test_benchmark_shape_is_qwen3_14b_and_report_judges_the_targets():
    bench = _module()
    shape = bench.QWEN3_14B_SHAPE
    assert (shape["hidden_size"], shape["num_hidden_layers"], shape["num_key_value_heads"], shape["vocab_size"]) == (
        5120,
        40,
        8,
        151936,
    )
    text = bench.report(
        [
            {
                "variant": "trl",
                "status": "ok",
                "backend": "qlora",
                "peak_allocated_gib": 20.0,
                "peak_reserved_gib": 22.0,
                "median_step_s": 3.0,
                "tokens_per_s": 1000.0,
            },
            {
                "variant": "unsloth",
                "status": "ok",
                "backend": "unsloth",
                "peak_allocated_gib": 14.0,
                "peak_reserved_gib": 40.0,
                "median_step_s": 2.0,
                "tokens_per_s": 1400.0,
            },
        ]
    )
    assert "trl: peak reserved 22.00 GiB vs target < 32 GiB: PASS" in text
    assert "unsloth: peak reserved 40.00 GiB vs target < 32 GiB: FAIL" in text
    assert "unsloth / trl tokens/s = 1.40x (baseline: plain TRL QLoRA) vs target >= 1.5x: FAIL" in text
