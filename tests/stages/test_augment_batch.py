"""The augment stage with its Gemini teacher and verifier in provider batch mode (the fake
server's batch jobs): the same pairs, byte for byte, as an online run, the blueprints and the
verifying re-solves each sent once in jobs, at half the estimated cost."""

from __future__ import annotations

import pytest

from distill.stages.augment import run
from tests.fakes.fake_gemini import FakeGeminiServer, gemini_prompt
from tests.stages.test_augment_faults import live_config, recorded_answers


def test_batch_mode_augments_what_online_mode_augments_at_half_the_cost(mlflow_store, gemini_env, tmp_path, capsys):
    table = recorded_answers()

    def scripted(body) -> str:
        return table.get(gemini_prompt(body), "알 수 없는 요청이다.\n정답: 1")

    with FakeGeminiServer(answer_fn=scripted) as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        online = run(live_config(tmp_path, "online"))
        online_calls = len(server.calls)
        server.reset()
        server.batch_duration_s = 0.3
        cfg = live_config(tmp_path, "batch", teacher_mode="batch", batch_poll_s=0.05)
        assert cfg.verifier_mode == "batch"  # the verifier follows the teacher's mode by default
        batch = run(cfg)
        capsys.readouterr()

    assert batch.pairs_path.read_bytes() == online.pairs_path.read_bytes()
    assert batch.rejected_path.read_bytes() == online.rejected_path.read_bytes()
    assert batch.accepted == online.accepted > 0
    assert batch.metrics["llm/requests"] == online.metrics["llm/requests"] == online_calls
    assert server.submitted_twice() == [] and sum(server.submissions.values()) == online_calls
    assert batch.metrics["llm/teacher/batch_jobs"] >= 1 and batch.metrics["llm/verifier/batch_jobs"] >= 1
    assert batch.metrics["llm/cost_usd"] == pytest.approx(online.metrics["llm/cost_usd"] / 2)
    assert batch.metrics["llm/online_cost_usd"] == pytest.approx(online.metrics["llm/cost_usd"])
