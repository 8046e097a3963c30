"""Role backends (distill/llm/roles.py): one check of a role's backend and model, whose errors
name the field at fault, and one report of what each role's backend used."""

from __future__ import annotations

import pytest

from distill.errors import ConfigError
from distill.llm.base import Usage
from distill.llm.roles import BackendSettings, check_role, usage_metrics, usage_summary


@pytest.mark.parametrize(
    "role, kind, model, field",
    [
        ("verifier", "vllm", "m", "verifier_backend"),
        ("student", "", "m", "student_backend"),
        ("teacher", "gemini", "  ", "teacher"),
        ("judge", "openai", "example-teacher", "judge"),
    ],
)
def test_a_role_error_names_the_field(role, kind, model, field):
    with pytest.raises(ConfigError) as error:
        check_role(role, kind, model)
    assert str(error.value).startswith(f"{field} ")


def test_check_role_normalises_and_lets_the_example_models_replay():
    assert check_role("teacher", " Gemini ", " gemini-2.5-flash ") == ("gemini", "gemini-2.5-flash")
    assert check_role("student", "replay", "example-student") == ("replay", "example-student")


@pytest.mark.parametrize(
    "config, field",
    [
        ("mine", "student_backend"),
        ("augment", "verifier_backend"),
    ],
)
def test_both_stage_configs_check_their_roles_with_it(config, field):
    from distill.stages.augment import AugmentConfig
    from distill.stages.mine import MineConfig

    cls = {"mine": MineConfig, "augment": AugmentConfig}[config]
    with pytest.raises(ConfigError, match=f"^{field} must be one of"):
        cls(**{field: "vllm"})


def test_backend_settings_are_read_from_either_stage_config():
    from distill.stages.augment import AugmentConfig
    from distill.stages.mine import MineConfig

    mine = BackendSettings.of(MineConfig(concurrency=3, device="cpu", student_batch_size=4))
    assert (mine.concurrency, mine.device, mine.batch_size) == (3, "cpu", 4)
    augment = BackendSettings.of(AugmentConfig(max_retries=2))
    assert (augment.max_retries, augment.device, augment.batch_size) == (2, None, 8)
    assert BackendSettings.of(MineConfig()).device is None  # "auto"


def test_usage_metrics_per_role_and_summed():
    teacher, verifier = Usage(requests=3, cache_hits=1, cost_usd=0.5), Usage(requests=2, cached_output_tokens=7)
    metrics = usage_metrics({"teacher": teacher, "verifier": verifier})
    assert metrics["llm/teacher/requests"] == 3 and metrics["llm/verifier/requests"] == 2
    assert metrics["llm/requests"] == 5 and metrics["llm/cost_usd"] == 0.5
    assert all(isinstance(v, float) for v in metrics.values())
    assert usage_summary(teacher).endswith("cached tokens in/out 0/0") and "cached" not in usage_summary(verifier)
