"""Export mode and `python -m distill llm import-batch`: the OpenAI batch JSONL for `vllm run-batch`,
its output imported into the response cache, and the same answers, resume and caching as a
provider batch run.

`vllm run-batch` itself needs a GPU; here its part is played by the fake OpenAI server's own
answer function writing the output format vLLM writes (custom_id, response.status_code, body)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fakes.fake_openai import FakeOpenAIServer, output_line

from distill.llm import Request, make_backend
from distill.llm.batch import BatchPending, BatchSettings
from distill.llm.cache import ResponseCache

REPO = Path(__file__).resolve().parents[3]
MODEL = "Qwen/Qwen3-8B"


def asked(n: int = 6) -> list[Request]:
    return [
        Request.chat(f"문제 {i}: 옳은 것은?\n1. 가\n2. 나\n3. 다\n4. 라", temperature=0.6, seed=3, sample_index=i % 2)
        for i in range(n)
    ]


def exporter(tmp_path, base_url: str, mode: str = "export"):
    return make_backend(
        "openai",
        MODEL,
        cache=tmp_path / "cache.sqlite",
        base_url=base_url,
        mode=mode,
        batch=BatchSettings(export_dir=str(tmp_path / "batch"), poll_s=0.01),
        prices=None,
    )


def run_batch_offline(input_file: Path, output_file: Path, keep=lambda index: True) -> int:
    """What `vllm run-batch -i input -o output` does, with the fake's answers: returns lines written."""
    answer = FakeOpenAIServer()._body
    lines = [json.loads(text) for text in input_file.read_text(encoding="utf-8").splitlines()]
    written = 0
    with open(output_file, "w", encoding="utf-8") as fh:
        for index, line in enumerate(lines):
            assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
            if keep(index):
                fh.write(
                    json.dumps(output_line(line["custom_id"], answer(line["body"], "")), ensure_ascii=False) + "\n"
                )
                written += 1
    return written


def import_batch_cli(output_file: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distill", "llm", "import-batch", str(output_file), "--cache", str(cache)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ},
        timeout=120,
    )


def test_export_run_batch_import_gives_the_online_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-needed-offline")
    requests = asked()
    with FakeOpenAIServer() as server:
        with make_backend(
            "openai", MODEL, cache=tmp_path / "online.sqlite", base_url=f"{server.base_url}/v1"
        ) as online:
            reference = online.generate(requests, progress=False)
        online_calls = len(server.calls)

        # 1. export: the requests the cache lacks as OpenAI batch JSONL, nothing sent
        backend = exporter(tmp_path, f"{server.base_url}/v1")
        with pytest.raises(BatchPending, match="vllm run-batch") as stopped:
            backend.generate(requests, progress=False)
        backend.close()
        [exported] = sorted((tmp_path / "batch").glob("*.jsonl"))
        assert str(exported) in str(stopped.value)
        assert len(server.calls) == online_calls and not server.jobs
        keys = [json.loads(line)["custom_id"] for line in exported.read_text().splitlines()]
        assert keys == [backend.key(q) for q in requests]

        # 2. the offline run answers half; importing it and rerunning stores that half, the rest waits
        output = tmp_path / "results.jsonl"
        run_batch_offline(exported, output, keep=lambda index: index < 3)
        done = import_batch_cli(output, tmp_path / "cache.sqlite")
        assert done.returncode == 0, done.stderr
        assert "imported 3 result lines" in done.stdout and "3 exported requests still without" in done.stdout
        backend = exporter(tmp_path, f"{server.base_url}/v1")
        with pytest.raises(BatchPending):
            backend.generate(requests, progress=False)
        assert backend.usage.fetched == 3 and backend.usage.batch_jobs == 0  # re-attached, no new file
        backend.close()
        assert len(list((tmp_path / "batch").glob("*.jsonl"))) == 1

        # 3. the whole output imported: every answer, byte for byte the online one, at batch price
        run_batch_offline(exported, output)
        assert import_batch_cli(output, tmp_path / "cache.sqlite").returncode == 0
        with exporter(tmp_path, f"{server.base_url}/v1") as backend:
            responses = backend.generate(requests, progress=False)
        assert [r.text for r in responses] == [r.text for r in reference]
        assert backend.usage.fetched == 3 and backend.usage.cache_hits == 3
        with ResponseCache(tmp_path / "cache.sqlite") as cache, ResponseCache(tmp_path / "online.sqlite") as ref:
            for key in keys:
                mine, theirs = json.loads(cache.get(key).to_cache_json()), json.loads(ref.get(key).to_cache_json())
                mine.pop("latency_s"), theirs.pop("latency_s")
                assert mine == theirs
            assert all(job.closed for job in cache.batch_jobs())

        # 4. an online run on that cache sends nothing
        with exporter(tmp_path, f"{server.base_url}/v1", mode="online") as later:
            assert [r.text for r in later.generate(requests, progress=False)] == [r.text for r in reference]
        assert len(server.calls) == online_calls


def test_a_bad_output_line_is_one_error_and_nothing_is_imported(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-needed-offline")
    backend = exporter(tmp_path, "http://127.0.0.1:9/v1")
    with pytest.raises(BatchPending):
        backend.generate(asked(4), progress=False)
    backend.close()
    [exported] = sorted((tmp_path / "batch").glob("*.jsonl"))
    output = tmp_path / "results.jsonl"
    run_batch_offline(exported, output)
    lines = output.read_text().splitlines()
    lines[2] = lines[2].replace(json.loads(lines[2])["custom_id"], "f" * 64)
    output.write_text("\n".join(lines) + "\n")

    done = import_batch_cli(output, tmp_path / "cache.sqlite")
    assert done.returncode == 2
    [message] = done.stderr.strip().splitlines()
    assert str(output) in message and "row 3" in message and "custom_id" in message
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        assert cache.batch_results(json.loads(line)["custom_id"] for line in lines[:2]) == {}


def test_importing_the_same_partial_output_twice_keeps_the_rest_pending(tmp_path, monkeypatch):
    """Lines imported again for answers already cached (the same growing output file imported
    twice, or a kill between storing the answers and dropping their lines) must count once:
    the export stays pending for the rest, with no resubmission and no second file."""
    from distill.llm.batch import import_batch

    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-needed-offline")
    requests = asked(4)
    backend = exporter(tmp_path, "http://127.0.0.1:9/v1")
    with pytest.raises(BatchPending):
        backend.generate(requests, progress=False)
    backend.close()
    [exported] = sorted((tmp_path / "batch").glob("*.jsonl"))
    output = tmp_path / "results.jsonl"
    run_batch_offline(exported, output, keep=lambda index: index < 2)
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        assert import_batch(cache, output) == (2, 2)
    backend = exporter(tmp_path, "http://127.0.0.1:9/v1")
    with pytest.raises(BatchPending):
        backend.generate(requests, progress=False)
    backend.close()
    assert backend.usage.fetched == 2
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        assert import_batch(cache, output) == (2, 2)  # the same two lines again

    backend = exporter(tmp_path, "http://127.0.0.1:9/v1")
    with pytest.raises(BatchPending, match=exported.name):
        backend.generate(requests, progress=False)
    backend.close()
    assert backend.usage.batch_resubmitted == 0 and backend.usage.batch_jobs == 0
    assert sorted((tmp_path / "batch").glob("*.jsonl")) == [exported]
