"""The response cache (keys, durability, concurrency), prices, retry pacing, redaction and the
replay backend's miss error."""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import BaseModel

from distill.errors import ConfigError, InputError
from distill.llm import (
    GenerationParams,
    PriceTable,
    ReplayMissError,
    Request,
    Response,
    ResponseCache,
    make_backend,
    request_key,
)
from distill.llm.base import Redactor, backoff_delay, parse_retry_after


class Verdict(BaseModel):
    reasoning: str
    answer: int


class OtherShape(BaseModel):
    answer: int


def _response(text: str, backend: str = "gemini", model: str = "m") -> Response:
    return Response(
        text=text, input_tokens=3, output_tokens=5, latency_s=0.1, backend=backend, model=model, finish_reason="STOP"
    )


def test_put_get_roundtrip_and_first_writer_wins(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    assert cache.put("k1", _response("첫 번째 답"), request='{"x": 1}') is True
    assert cache.put("k1", _response("다른 답")) is False
    got = cache.get("k1")
    assert got.text == "첫 번째 답" and got.cached and got.key == "k1"
    assert (got.input_tokens, got.output_tokens, got.finish_reason) == (3, 5, "STOP")
    assert cache.get("missing") is None
    assert "k1" in cache and len(cache) == 1
    assert json.loads(cache.request_of("k1")) == {"x": 1}
    with pytest.raises(ValueError):
        cache.put("k2", Response(text="", error="boom"))
    mode = sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_get_many_spans_chunks(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    for i in range(1203):
        cache.put(f"k{i}", _response(str(i)))
    found = cache.get_many([f"k{i}" for i in range(0, 1300)])
    assert len(found) == 1203
    assert found["k1202"].text == "1202"


def test_request_key_covers_what_changes_the_answer():
    base = Request.chat("질문", system="시스템", temperature=0.7, seed=1)
    key = request_key("gemini", "m", base)
    assert key == request_key("gemini", "m", Request.chat("질문", system="시스템", temperature=0.7, seed=1))
    # the label is for humans only
    assert key == request_key(
        "gemini", "m", Request.chat("질문", system="시스템", temperature=0.7, seed=1, label="teacher x")
    )
    different = [
        request_key("openai", "m", base),
        request_key("gemini", "m2", base),
        request_key("gemini", "m", Request.chat("질문!", system="시스템", temperature=0.7, seed=1)),
        request_key("gemini", "m", Request.chat("질문", temperature=0.7, seed=1)),
        request_key("gemini", "m", Request.chat("질문", system="시스템", temperature=0.8, seed=1)),
        request_key("gemini", "m", Request.chat("질문", system="시스템", temperature=0.7, seed=1, sample_index=1)),
        request_key("gemini", "m", Request.chat("질문", system="시스템", temperature=0.7, seed=1, schema=Verdict)),
        request_key("gemini", "m", Request.chat("질문", system="시스템", temperature=0.7, seed=1, schema=OtherShape)),
        request_key("gemini", "m", Request.chat("질문", system="시스템", temperature=0.7, seed=1, thinking=True)),
    ]
    assert len(set(different + [key])) == len(different) + 1


def test_request_validation():
    with pytest.raises(ValueError):
        Request(messages=())
    with pytest.raises(ValueError):
        Request(messages=({"role": "robot", "content": "x"},))
    with pytest.raises(ValueError):
        Request(messages=({"role": "user", "content": "x"},), sample_index=-1)
    request = Request.chat("a b c d e f g h i j k l m n o p", label="student item-3", sample_index=2)
    assert "student item-3" in request.describe() and "sample 2" in request.describe()
    assert GenerationParams(seed=5).seed_for(2) == 7 and GenerationParams().seed_for(2) is None


WRITER = textwrap.dedent(
    """
    import sys
    from distill.llm import Response, ResponseCache
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cache = ResponseCache(path)
    for i in range(n):
        cache.put(f"{tag}-{i}", Response(text=f"{tag} {i}", backend="gemini", model="m"))
        cache.put(f"shared-{i}", Response(text=f"shared {i}", backend="gemini", model="m"))
    print("done", flush=True)
    """
)


def test_concurrent_threads_and_processes_never_lose_or_corrupt(tmp_path):
    path = tmp_path / "shared.sqlite"
    ResponseCache(path).close()  # both processes and threads open an existing file
    n = 150
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"proc{p}", str(n)], stdout=subprocess.PIPE, text=True
        )
        for p in range(2)
    ]
    cache = ResponseCache(path)
    errors: list[BaseException] = []

    def thread_writer(tag: str) -> None:
        try:
            for i in range(n):
                cache.put(f"{tag}-{i}", Response(text=f"{tag} {i}", backend="gemini", model="m"))
                cache.put(f"shared-{i}", Response(text=f"shared {i}", backend="gemini", model="m"))
                assert cache.get(f"{tag}-{i}").text == f"{tag} {i}"
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread_writer, args=(f"thread{t}",)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outputs = [p.communicate(timeout=120) for p in processes]
    assert errors == []
    assert [p.returncode for p in processes] == [0, 0], outputs
    found = cache.get_many(cache.keys())
    assert len(found) == (2 + 4) * n + n
    for tag in ["proc0", "proc1", "thread0", "thread1", "thread2", "thread3"]:
        assert all(found[f"{tag}-{i}"].text == f"{tag} {i}" for i in range(n))
    assert all(found[f"shared-{i}"].text == f"shared {i}" for i in range(n))


def test_readonly_and_export(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    for i in range(5):
        cache.put(f"k{i}", _response(f"t{i}"))
    copied = cache.export(tmp_path / "bundle" / "replay.sqlite", keys=["k1", "k3", "nope"])
    assert copied == 2
    bundle = ResponseCache(tmp_path / "bundle" / "replay.sqlite", readonly=True)
    assert sorted(bundle.get_many(["k1", "k2", "k3"])) == ["k1", "k3"]
    with pytest.raises(PermissionError):
        bundle.put("k9", _response("x"))
    mode = sqlite3.connect(tmp_path / "bundle" / "replay.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "delete"
    with pytest.raises(ConfigError):
        ResponseCache(tmp_path / "absent.sqlite", readonly=True)


def test_replay_answers_from_cache_and_names_a_miss(tmp_path):
    cache_path = tmp_path / "replay.sqlite"
    cache = ResponseCache(cache_path)
    recorded = Request.chat("조선의 건국 연도는? 선택지: 1. 1392 2. 1443", temperature=0.0, label="teacher seed-1")
    cache.put(request_key("gemini", "gemini-2.5-flash", recorded), _response("정답: 1", model="gemini-2.5-flash"))
    replay = make_backend("replay", "gemini-2.5-flash", cache=cache_path)
    [answer] = replay.generate([recorded])
    assert answer.text == "정답: 1" and answer.cached and answer.backend == "gemini"
    assert replay.usage.cache_hits == 1 and replay.usage.requests == 0

    missing = Request.chat(
        "훈민정음 반포 연도는 언제인가? 아주 긴 질문 본문", temperature=0.0, label="teacher seed-2", sample_index=1
    )
    with pytest.raises(ReplayMissError) as caught:
        replay.generate([recorded, missing])
    message = str(caught.value)
    assert "teacher seed-2" in message and "sample 1" in message
    assert "훈민정음 반포 연도는" in message and "gemini-2.5-flash" in message
    assert request_key("gemini", "gemini-2.5-flash", missing) in message
    assert "1 of 2" in message
    with pytest.raises(ConfigError):
        make_backend("replay", "m", cache=tmp_path / "nowhere.sqlite")


def test_price_table(tmp_path, caplog):
    table = PriceTable.default()
    assert table.cost("gemini-2.5-flash", 1_000_000, 0) == pytest.approx(table.prices["gemini-2.5-flash"][0])
    # longest prefix wins: flash-lite is not priced as flash
    assert table.lookup("gemini-2.5-flash-lite-preview") == table.prices["gemini-2.5-flash-lite"]
    assert table.lookup("models/gemini-2.5-pro") == table.prices["gemini-2.5-pro"]
    with caplog.at_level(logging.WARNING, logger="distill.llm"):
        assert table.cost("my-own-model", 10**6, 10**6) == 0.0
        assert table.cost("my-own-model", 10**6, 10**6) == 0.0
    assert sum("my-own-model" in r.message for r in caplog.records) == 1

    yaml_file = tmp_path / "prices.yaml"
    yaml_file.write_text("my-own-model: {input: 1.0, output: 4.0}\ngemini-2.5-flash: [0.5, 5]\n")
    custom = PriceTable.from_file(yaml_file)
    assert custom.cost("my-own-model", 500_000, 250_000) == pytest.approx(0.5 + 1.0)
    assert custom.lookup("gemini-2.5-flash") == (0.5, 5.0)
    assert custom.lookup("gemini-2.5-pro") is not None  # defaults kept
    json_file = tmp_path / "prices.json"
    json_file.write_text(json.dumps({"x": {"input": 2, "output": 3}}))
    assert PriceTable.from_file(json_file, extend_defaults=False).prices == {"x": (2.0, 3.0)}
    bad = tmp_path / "bad.yaml"
    bad.write_text("x: {input: cheap}\n")
    with pytest.raises(InputError) as caught:
        PriceTable.from_file(bad)
    assert "bad.yaml" in str(caught.value) and "'x'" in str(caught.value)


def test_retry_pacing_and_redaction(monkeypatch):
    rng = random.Random(0)
    delays = [backoff_delay(3, 0.5, 60.0, None, rng) for _ in range(200)]
    assert all(0.0 <= d <= 4.0 for d in delays) and max(delays) > 2.0  # full jitter up to base * 2**attempt
    assert all(backoff_delay(0, 0.5, 60.0, 7.0, rng) >= 7.0 for _ in range(20))  # Retry-After is a floor
    assert all(backoff_delay(10, 0.5, 3.0, None, rng) <= 3.0 for _ in range(50))  # capped
    assert parse_retry_after("2") == 2.0 and parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= parse_retry_after(future) <= 31

    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-secret-123456")
    redact = Redactor("explicit-key-abcdef")
    text = redact("failed with explicit-key-abcdef and sk-env-secret-123456")
    assert "explicit-key-abcdef" not in text and "sk-env-secret-123456" not in text
    assert text.count("<redacted>") == 2
