"""The augment stage with a live Gemini teacher and verifier (google-genai against the local fake
server), on the first 8 bundled hard negatives (16 candidates, one refused by each of the
answers, decontamination, verification and dedup gates):
- through every fault the server can inject, every candidate finishes and no request is
  answered twice, and the pairs are byte for byte those of a run without faults;
- killed with SIGKILL in the middle of its teacher requests and rerun, it writes the same
  dataset as an uninterrupted run, paying for no response twice, and marks the killed run
  (left RUNNING in MLflow) KILLED;
- a blueprint that fails its schema is paid for once, stored and counted, and repaired by one
  new request, never re-sent as it was; with no usable blueprint the stage fails loudly.

The fake server answers each prompt with the response the bundled recording holds for it, so
the live runs reproduce the embedded default's candidates."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from distill.errors import StageFailed
from distill.stages.augment import AugmentConfig, run
from tests.fakes import FaultPlan, kill_when_settled
from tests.fakes.fake_gemini import FakeGeminiServer, gemini_prompt, stage_process
from tests.mine_helpers import cache_rows

REPO = Path(__file__).resolve().parents[2]
MODEL = "gemini-2.5-flash"
MAX_SEEDS = 8
FAULT_KINDS = ("429", "500", "503", "slow", "malformed", "truncated", "disconnect")


def recorded_answers() -> dict[str, str]:
    """{prompt text: the bundled recording's answer} for every blueprint and verify request of
    the default plan, found through the recording's own keys."""
    from distill.blueprint.candidates import blueprint_requests, new_problem
    from distill.blueprint.gates import check_schema
    from distill.blueprint.prompt import verify_request
    from distill.llm.base import request_key
    from distill.llm.recording import RECORDED_BACKEND, bundled_recording, read_recording
    from distill.stages.augment import prepare, teacher_params, verifier_params

    by_key = {key: response.text for key, response, _ in read_recording(bundled_recording("augment"))}
    cfg = AugmentConfig(max_seeds=MAX_SEEDS)
    model = cfg.teacher  # example-teacher: the recording's teacher and verifier
    prepared = prepare(cfg)
    candidates = prepared.candidates()
    requests = blueprint_requests(candidates, prepared.templates["blueprint"], teacher_params(cfg))
    table: dict[str, str] = {}
    for candidate, request in zip(candidates, requests):
        text = by_key[request_key(RECORDED_BACKEND, model, request)]
        table[request.messages[-1]["content"]] = text
        result, output = check_schema(text)
        if result.passed:
            problem = new_problem(candidate.entry, output)
            verify = verify_request(problem, prepared.templates["verify"], verifier_params(cfg), label=candidate.id)
            key = request_key(RECORDED_BACKEND, model, verify)
            if key in by_key:
                table[verify.messages[-1]["content"]] = by_key[key]
    return table


@pytest.fixture(scope="module")
def scripted():
    table = recorded_answers()
    misses: list[str] = []

    def answer(body) -> str:
        prompt = gemini_prompt(body)
        if prompt not in table:
            misses.append(prompt[:80])
            return "알 수 없는 요청이다.\n정답: 1"
        return table[prompt]

    answer.misses = misses  # type: ignore[attr-defined]
    return answer


def live_config(tmp_path: Path, name: str, **overrides) -> AugmentConfig:
    values = dict(
        teacher=MODEL,
        teacher_backend="gemini",
        max_seeds=MAX_SEEDS,
        cache_path=str(tmp_path / name / "cache.sqlite"),
        output_dir=str(tmp_path / name / "out"),
        timeout_s=5.0,
        max_retries=5,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        concurrency=4,
    )
    values.update(overrides)
    return AugmentConfig(**values)


def reference_run(tmp_path, gemini_env, scripted):
    with FakeGeminiServer(answer_fn=scripted) as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        result = run(live_config(tmp_path, "reference"))
    return result, len(server.successful_keys())


def test_every_candidate_finishes_through_every_fault_and_nothing_is_fetched_twice(
    mlflow_store, gemini_env, scripted, tmp_path, capsys
):
    reference, n_requests = reference_run(tmp_path, gemini_env, scripted)
    assert reference.candidates == 16 and reference.accepted == 12
    assert set(reference.gate_counts) == {"schema", "answers", "form", "decontamination", "verification", "dedup"}
    assert n_requests == 16 + 14  # every blueprint, and a re-solve of each candidate that reached verification

    faults = FaultPlan(
        script={index: kind for index, kind in enumerate(FAULT_KINDS)},
        rates={"429": 0.08, "500": 0.08, "503": 0.08, "slow": 0.04, "malformed": 0.08, "truncated": 0.08},
        max_faults_per_key=2,
        seed=11,
    )
    server = FakeGeminiServer(answer_fn=scripted, faults=faults, retry_after="0.05", slow_s=1.5)
    with server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        cfg = live_config(tmp_path, "faults", timeout_s=0.5)
        result = run(cfg)
        capsys.readouterr()
        injected = server.faults_injected()
        assert {call.fault for call in injected} == set(FAULT_KINDS)
        assert server.duplicate_successes() == []
        assert len(server.successful_keys()) == n_requests
        calls = len(server.calls)

        teacher, verifier = (result.metrics[f"llm/{role}/" + "failures"] for role in ("teacher", "verifier"))
        assert teacher == 0 and verifier == 0  # every candidate got its answers
        assert result.metrics["llm/retries"] == len(injected)
        assert result.metrics["llm/requests"] == calls
        assert result.metrics["llm/fetched"] == n_requests and result.metrics["llm/cost_usd"] > 0
        assert result.pairs_path.read_bytes() == reference.pairs_path.read_bytes()
        assert result.rejected_path.read_bytes() == reference.rejected_path.read_bytes()

        again = run(cfg)  # everything is cached now: no call reaches the server
        capsys.readouterr()
        assert len(server.calls) == calls and again.metrics["llm/cache_hits"] == n_requests
        assert again.pairs_path.read_bytes() == reference.pairs_path.read_bytes()
    assert scripted.misses == []


KILL_AFTER = 6


def augment_runs(status: str):
    import mlflow

    return mlflow.search_runs(
        experiment_names=["distill-augment"], filter_string=f"attributes.status = '{status}'", output_format="list"
    )


def test_sigkill_then_rerun_gives_the_same_dataset_and_pays_nothing_twice(
    mlflow_store, gemini_env, scripted, tmp_path, capsys
):
    reference, n_requests = reference_run(tmp_path, gemini_env, scripted)
    capsys.readouterr()

    faults = FaultPlan(rates={"429": 0.1, "500": 0.1, "truncated": 0.1}, max_faults_per_key=1, seed=5)
    server = FakeGeminiServer(answer_fn=scripted, latency_s=0.05, faults=faults, retry_after="0")
    cfg = live_config(tmp_path, "killed")
    with server:
        server.hold_after(KILL_AFTER)
        victim = stage_process("augment", cfg, server.base_url, extra_fields=("max_seeds",), cwd=tmp_path)
        stored_before = kill_when_settled(victim, server, lambda: cache_rows(Path(cfg.cache_path), "gemini"))
        assert not (Path(cfg.output_dir) / "pairs").exists()
        assert 0 < stored_before < n_requests

        [killed] = augment_runs("RUNNING")  # MLflow never heard of the kill

        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        resumed = run(cfg)
        printed = capsys.readouterr().out
        assert server.duplicate_successes() == []
        assert f"note: run {killed.info.run_id}" in printed and "marked it KILLED" in printed
        assert {r.info.run_id for r in augment_runs("KILLED")} == {killed.info.run_id}
        assert len(server.successes()) == n_requests

    assert resumed.metrics["llm/cache_hits"] == stored_before
    assert resumed.metrics["llm/fetched"] == n_requests - stored_before
    assert resumed.metrics["llm/failures"] == 0
    assert resumed.pairs_path.read_bytes() == reference.pairs_path.read_bytes()
    assert resumed.rejected_path.read_bytes() == reference.rejected_path.read_bytes()
    from datasets import load_from_disk

    assert load_from_disk(str(resumed.pairs_dir)).to_list() == load_from_disk(str(reference.pairs_dir)).to_list()
    assert json.loads(reference.pairs_path.read_text(encoding="utf-8").splitlines()[0])["teacher"] == MODEL
    assert scripted.misses == []


def test_a_blueprint_failing_its_schema_is_paid_once_stored_counted_and_repaired_once(
    mlflow_store, gemini_env, tmp_path, capsys
):
    """The teacher answers JSON that is not a BlueprintOutput, every time. The answer is stored
    and counted as paid; the one repair is a different request (the bad answer shown back), also
    paid once; nothing is sent twice under one key, now or on the rerun. With no usable blueprint
    the stage then fails loudly (failure_rate), its outputs and cache kept."""
    not_a_blueprint = json.dumps({"logic_structure": "구조만 쓰고 문제는 빠뜨렸다"}, ensure_ascii=False)
    cfg = live_config(tmp_path, "unusable", max_seeds=1, pairs_per_seed=1)
    with FakeGeminiServer(answer_fn=lambda body: not_a_blueprint) as server:
        gemini_env.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        with pytest.raises(StageFailed, match="teacher 1 of 1") as failed:
            run(cfg)
        capsys.readouterr()
        per_key = collections.Counter(call.key for call in server.calls)
        assert set(per_key.values()) == {1} and len(per_key) == 1 + cfg.max_repairs
        assert cache_rows(Path(cfg.cache_path), "gemini") == len(per_key)

        with pytest.raises(StageFailed):  # the rerun pays for nothing: both answers are cached
            run(cfg)
        capsys.readouterr()
        assert len(server.calls) == len(per_key)

    assert failed.value.reason == "failure_rate"
    first, _ = augment_runs("FAILED")[::-1]
    assert first.data.tags["distill.failure_reason"] == "failure_rate"
    import mlflow

    usage = mlflow.load_table("augment/llm_usage.json", run_ids=[first.info.run_id]).set_index("role")
    teacher = usage.loc["teacher"]
    assert teacher["fetched"] == 2 and teacher["unusable"] == 2
    assert teacher["repairs"] == 1 and teacher["failures"] == 0
    assert teacher["input_tokens"] > 0 and teacher["cost_usd"] > 0
    assert first.data.metrics["llm/unusable"] == 2 and first.data.metrics["llm/cost_usd"] == teacher["cost_usd"]
    [refused] = [json.loads(line) for line in (Path(cfg.output_dir) / "rejected_candidates.jsonl").open()]
    assert refused["gate"] == "schema" and "no usable response from the teacher" in refused["reason"]
    assert "does not match BlueprintOutput" in refused["reason"]
