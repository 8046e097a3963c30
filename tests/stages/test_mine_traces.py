"""A mine run on the default replay backend leaves its LLM calls in the run's Traces: one trace
per batch (teacher, student, judge), linked to the run, carrying the batch's token counts, with
a bounded sample of request spans (`trace_requests`)."""

from __future__ import annotations

from distill.stages.mine import MineConfig, run


def test_a_replay_mine_run_traces_each_role_with_its_token_counts(mlflow_store, tmp_path, capsys):
    from mlflow import MlflowClient

    cfg = MineConfig(judge="on", trace_requests=4, output_dir=str(tmp_path / "out"))
    result = run(cfg)
    capsys.readouterr()

    client = MlflowClient()
    experiment = client.get_run(result.run_id).info.experiment_id
    traces = client.search_traces(
        locations=[experiment], filter_string=f"metadata.mlflow.sourceRun = '{result.run_id}'"
    )
    by_role = {trace.data.spans[0].name: client.get_trace(trace.info.trace_id) for trace in traces}
    assert set(by_role) == {"teacher", "student", "judge"}

    attempts = result.attempts
    for role, trace in by_role.items():
        of_role = attempts[attempts["role"] == role]
        # the trace's tokens are those of every answer of the role, not only of the sampled spans
        usage = trace.info.token_usage
        assert usage["input_tokens"] == of_role["input_tokens"].sum() > 0
        assert usage["output_tokens"] == of_role["output_tokens"].sum() > 0
        root, *requests = trace.data.spans
        assert root.attributes["distill.model"] == getattr(cfg, "student" if role == "student" else "teacher")
        assert root.attributes["distill.requests_in_batch"] == len(of_role)
        assert root.attributes["distill.usage.cache_hits"] == len(of_role)  # replay: every answer from the cache
        # bounded: at most trace_requests request spans however large the batch
        assert len(requests) == min(cfg.trace_requests, len(of_role))
        for span in requests:
            assert span.parent_id == root.span_id and span.attributes["distill.cache"] == "hit"
            assert len(span.attributes["distill.request_key"]) == 64
            assert span.attributes["mlflow.chat.tokenUsage"]["input_tokens"] > 0
    assert len(attempts[attempts["role"] == "student"]) > cfg.trace_requests  # the bound was tested
