"""Shared by the mine stage's integration tests: a scripted Gemini teacher for the fake server,
and small readers for the stage's outputs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.fakes import stable_hash
from tests.fakes.fake_gemini import gemini_prompt

TEACHER_MODEL = "gemini-2.5-flash"
JUDGE_ANSWER = "풀이 A가 오답 선택지를 배제하는 근거를 더 분명히 든다.\n판정: A"


def bundled_seeds():
    from distill.stages.mine import MineConfig, load_seed_items

    return load_seed_items(MineConfig())


def teacher_is_right(item_id: str) -> bool:
    """The scripted teacher is wrong on about one item in six (fixed by a hash of the id)."""
    return stable_hash("teacher", item_id) % 6 != 0


def scripted_teacher(items):
    """answer_fn for FakeGeminiServer: answers each seed (right unless `teacher_is_right` says
    otherwise) and every judge prompt with a verdict."""
    by_question = {f"질문:\n{item.question.strip()}\n": item for item in items}

    def answer(body) -> str:
        prompt = gemini_prompt(body)
        if "풀이 A:" in prompt and "풀이 B:" in prompt:
            return JUDGE_ANSWER
        matches = [item for marker, item in by_question.items() if marker in prompt]
        assert len(matches) == 1, "the prompt should hold exactly one seed question"
        item = matches[0]
        choice = item.answer if teacher_is_right(item.id) else item.answer % item.n_choices + 1
        return f"지문의 단서를 선택지와 하나씩 대조하였다.\n정답: {choice}"

    return answer


def live_teacher_config(tmp_path: Path, name: str, **overrides):
    """A MineConfig whose teacher is Gemini (the fake server) and whose student is the bundled
    recording, writing under tmp_path/name."""
    from distill.stages.mine import MineConfig

    values = dict(
        teacher_backend="gemini",
        teacher=TEACHER_MODEL,
        judge="on",
        cache_path=str(tmp_path / name / "cache.sqlite"),
        output_dir=str(tmp_path / name / "out"),
        timeout_s=5.0,
        max_retries=5,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        concurrency=4,
    )
    values.update(overrides)
    return MineConfig(**values)


def cache_rows(path: Path, backend: str | None = None) -> int:
    """Rows in a response cache file, read the way another process would (no distill code)."""
    if not Path(path).exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.OperationalError:
        return 0
    try:
        if backend is None:
            return int(conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
        return int(conn.execute("SELECT COUNT(*) FROM responses WHERE backend = ?", (backend,)).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def cache_keys(path: Path, backend: str) -> set[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return {row[0] for row in conn.execute("SELECT key FROM responses WHERE backend = ?", (backend,))}
    finally:
        conn.close()


def comparable_attempts(path: Path):
    """attempts.parquet without latency_s: wall time is not a model output, so two runs that
    fetched the same answers at different speeds still produced the same attempts."""
    import pandas as pd

    return pd.read_parquet(path).drop(columns=["latency_s"])
