"""The durable response cache: one SQLite file, one row per request key.

Why SQLite in WAL mode: readers never block the writer, a committed row survives a SIGKILL the
instant after the commit, and several processes (sweep workers, a rerun beside a running
stage) can share one file. Every write is its own short transaction (`INSERT OR IGNORE`: the
first answer stored for a key wins and is never replaced), with a busy timeout so concurrent
writers wait instead of failing. Each thread (and each process) gets its own connection.

Only responses and a description of the request are stored; never credentials.

Provider batch jobs (distill/llm/batch.py) live in the same file: `batch_jobs` holds each job's
name and the request keys it carries, written the moment the provider created the job (so a
killed stage re-attaches to it instead of paying twice), `batch_intents` holds a job about to be
created (its display name and keys, written before the create call: a create whose reply was
lost, or a kill before the job was stored, is found again by that name in the provider's list
of jobs instead of being paid twice), and `batch_results` holds result lines
imported from a file (`python -m distill llm import-batch`, e.g. the output of `vllm run-batch`)
until the stage that asked for them turns them into responses.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from distill.llm.base import Response, iter_chunks

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key        TEXT PRIMARY KEY,
    backend    TEXT NOT NULL,
    model      TEXT NOT NULL,
    response   TEXT NOT NULL,
    request    TEXT,
    created_at REAL NOT NULL
)
"""

_BATCH_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS batch_jobs (
    name        TEXT PRIMARY KEY,
    backend     TEXT NOT NULL,
    model       TEXT NOT NULL,
    keys        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    state       TEXT NOT NULL,
    closed      INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
)
""",
    """
CREATE TABLE IF NOT EXISTS batch_results (
    key         TEXT PRIMARY KEY,
    job         TEXT NOT NULL,
    line        TEXT NOT NULL,
    created_at  REAL NOT NULL
)
""",
    """
CREATE TABLE IF NOT EXISTS batch_intents (
    display     TEXT PRIMARY KEY,
    backend     TEXT NOT NULL,
    model       TEXT NOT NULL,
    keys        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    created_at  REAL NOT NULL
)
""",
)

BUSY_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class BatchJobRecord:
    """One provider batch job as the cache database remembers it."""

    name: str
    backend: str
    model: str
    keys: tuple[str, ...]
    """The request keys the job carries (its requests' cache keys)."""
    kind: str
    """first (new requests), retry (transient per-request errors of an earlier job) or
    resubmit (the unfinished requests of an expired or failed job: done at most once)."""
    attempt: int
    """1 for a request's first job, +1 for each retry job."""
    state: str
    closed: bool
    """Its results were collected (or given up on): never re-attached."""
    created_at: float


@dataclass(frozen=True)
class BatchIntent:
    """A batch job about to be created: written before the create call, dropped once the job is
    stored (or known never to have been made)."""

    display: str
    """The job's display name: derived from its request keys, so the provider's list finds it."""
    keys: tuple[str, ...]
    kind: str
    attempt: int


class ResponseCache:
    """A response cache at `path` (created when missing unless `readonly`).

    `readonly=True` opens an existing file without ever writing to it (e.g. a cache shipped as
    package data in a read-only install); `put` then raises.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._local = threading.local()
        self._all_connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        if readonly:
            if not self.path.is_file():
                from distill.errors import ConfigError

                raise ConfigError(f"response cache {self.path} does not exist")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection()  # create the table now, so errors show up at construction

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r}{', readonly' if self.readonly else ''})"

    # -- connections ---------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        if self.readonly:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(
                uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
        else:
            conn = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            # NORMAL in WAL mode: a commit is durable against a process kill (only an OS crash
            # or power loss can drop the last commits), and it costs no fsync per row.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._retry_locked(lambda: conn.execute(_SCHEMA))
            for statement in _BATCH_SCHEMA:
                self._retry_locked(lambda statement=statement: conn.execute(statement))
        self._local.conn = conn
        self._local.pid = os.getpid()
        with self._lock:
            self._all_connections.append(conn)
        return conn

    @staticmethod
    def _retry_locked(action, attempts: int = 50):
        """Schema/journal changes can meet 'database is locked' outside the busy handler when
        several processes open a brand-new file at once; retry briefly."""
        for attempt in range(attempts):
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def close(self) -> None:
        with self._lock:
            connections, self._all_connections = self._all_connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reads ---------------------------------------------------------------------------------

    def get(self, key: str) -> Response | None:
        row = self._connection().execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else Response.from_cache_json(row[0], key)

    def get_many(self, keys: Iterable[str]) -> dict[str, Response]:
        unique = list(dict.fromkeys(keys))
        found: dict[str, Response] = {}
        conn = self._connection()
        for chunk in iter_chunks(unique, 500):
            marks = ",".join("?" * len(chunk))
            for key, payload in conn.execute(
                f"SELECT key, response FROM responses WHERE key IN ({marks})", tuple(chunk)
            ):
                found[key] = Response.from_cache_json(payload, key)
        return found

    def request_of(self, key: str) -> str | None:
        """The stored description of the request behind `key` (JSON text), if any."""
        row = self._connection().execute("SELECT request FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def __contains__(self, key: str) -> bool:
        return self._connection().execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self._connection().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def keys(self) -> list[str]:
        return [row[0] for row in self._connection().execute("SELECT key FROM responses ORDER BY created_at, key")]

    # -- writes --------------------------------------------------------------------------------

    def put(self, key: str, response: Response, *, request: str | None = None) -> bool:
        """Store a successful response; True when this call inserted it (first writer wins)."""
        if self.readonly:
            raise PermissionError(f"{self} is read-only")
        if response.error is not None:
            raise ValueError("failed responses are never cached")
        cursor = self._connection().execute(
            "INSERT OR IGNORE INTO responses (key, backend, model, response, request, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key, response.backend, response.model, response.to_cache_json(), request, time.time()),
        )
        return cursor.rowcount == 1

    # -- provider batch jobs -------------------------------------------------------------------

    def add_batch_job(
        self, name: str, *, backend: str, model: str, keys: Iterable[str], kind: str, attempt: int, state: str
    ) -> None:
        """Remember a job the provider just created (called before anything else can fail)."""
        now = time.time()
        self._connection().execute(
            "INSERT OR REPLACE INTO batch_jobs (name, backend, model, keys, kind, attempt, state, closed, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (name, backend, model, json.dumps(list(keys)), kind, int(attempt), state, now, now),
        )

    def add_batch_intent(
        self, display: str, *, backend: str, model: str, keys: Iterable[str], kind: str, attempt: int
    ) -> None:
        """Remember a job about to be created under the display name `display` (before the call)."""
        self._connection().execute(
            "INSERT OR REPLACE INTO batch_intents (display, backend, model, keys, kind, attempt, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (display, backend, model, json.dumps(list(keys)), kind, int(attempt), time.time()),
        )

    def batch_intents(self, backend: str, model: str) -> list[BatchIntent]:
        """Jobs of this backend and model whose create call was made but whose job was never stored."""
        rows = self._connection().execute(
            "SELECT display, keys, kind, attempt FROM batch_intents WHERE backend = ? AND model = ?"
            " ORDER BY created_at, display",
            (backend, model),
        )
        return [BatchIntent(row[0], tuple(json.loads(row[1])), row[2], int(row[3])) for row in rows.fetchall()]

    def drop_batch_intent(self, display: str) -> None:
        self._connection().execute("DELETE FROM batch_intents WHERE display = ?", (display,))

    def has_batch_job(self, name: str) -> bool:
        """Whether a job of this name is stored (open or closed)."""
        return self._connection().execute("SELECT 1 FROM batch_jobs WHERE name = ?", (name,)).fetchone() is not None

    def update_batch_job(self, name: str, *, state: str, closed: bool = False) -> None:
        self._connection().execute(
            "UPDATE batch_jobs SET state = ?, closed = MAX(closed, ?), updated_at = ? WHERE name = ?",
            (state, int(closed), time.time(), name),
        )

    def batch_jobs(
        self, backend: str | None = None, model: str | None = None, *, open_only: bool = False
    ) -> list[BatchJobRecord]:
        """Stored jobs, oldest first (of one backend and model when given; `open_only`: not closed)."""
        sql = "SELECT name, backend, model, keys, kind, attempt, state, closed, created_at FROM batch_jobs WHERE 1=1"
        args: list = []
        if backend is not None:
            sql, args = sql + " AND backend = ?", [*args, backend]
        if model is not None:
            sql, args = sql + " AND model = ?", [*args, model]
        if open_only:
            sql += " AND closed = 0"
        rows = self._connection().execute(sql + " ORDER BY created_at, name", args).fetchall()
        return [
            BatchJobRecord(
                name=row[0],
                backend=row[1],
                model=row[2],
                keys=tuple(json.loads(row[3])),
                kind=row[4],
                attempt=int(row[5]),
                state=row[6],
                closed=bool(row[7]),
                created_at=float(row[8]),
            )
            for row in rows
        ]

    def put_batch_results(self, job: str, lines: Iterable[tuple[str, str]]) -> int:
        """Store imported result lines (key, line JSON) of `job` in one transaction; a later
        import of the same key replaces the earlier one. Returns the lines stored."""
        rows = [(key, job, line, time.time()) for key, line in lines]
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO batch_results (key, job, line, created_at) VALUES (?, ?, ?, ?)", rows
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return len(rows)

    def batch_results(self, keys: Iterable[str]) -> dict[str, str]:
        """Imported result lines by key, for the keys that have one."""
        found: dict[str, str] = {}
        conn = self._connection()
        for chunk in iter_chunks(list(dict.fromkeys(keys)), 500):
            marks = ",".join("?" * len(chunk))
            for key, line in conn.execute(f"SELECT key, line FROM batch_results WHERE key IN ({marks})", tuple(chunk)):
                found[key] = line
        return found

    def drop_batch_results(self, keys: Iterable[str]) -> None:
        """Forget imported lines once their responses are in the cache."""
        conn = self._connection()
        for chunk in iter_chunks(list(dict.fromkeys(keys)), 500):
            marks = ",".join("?" * len(chunk))
            conn.execute(f"DELETE FROM batch_results WHERE key IN ({marks})", tuple(chunk))

    def export(self, destination: str | os.PathLike, keys: Iterable[str] | None = None) -> int:
        """Copy entries (all, or `keys`) into a new self-contained file in rollback-journal mode,
        suitable for shipping as package data. Returns the number of rows copied."""
        from distill.io import atomic_path

        wanted = None if keys is None else list(dict.fromkeys(keys))
        with atomic_path(destination) as tmp:
            out = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                out.execute("PRAGMA journal_mode=DELETE")
                out.execute(_SCHEMA)
                conn = self._connection()
                columns = "key, backend, model, response, request, created_at"
                if wanted is None:
                    rows = conn.execute(f"SELECT {columns} FROM responses ORDER BY key").fetchall()
                else:
                    rows = []
                    for chunk in iter_chunks(wanted, 500):
                        marks = ",".join("?" * len(chunk))
                        rows += conn.execute(
                            f"SELECT {columns} FROM responses WHERE key IN ({marks})", tuple(chunk)
                        ).fetchall()
                out.execute("BEGIN")
                out.executemany(f"INSERT OR IGNORE INTO responses ({columns}) VALUES (?, ?, ?, ?, ?, ?)", rows)
                out.execute("COMMIT")
            finally:
                out.close()
        return len(rows)


def open_cache(cache: ResponseCache | str | os.PathLike | None, *, readonly: bool = False) -> ResponseCache:
    """A ResponseCache from an instance, a path, or None (the default file under DISTILL_HOME)."""
    if isinstance(cache, ResponseCache):
        return cache
    if cache is None:
        from distill.paths import distill_home

        cache = distill_home() / "llm_cache.sqlite"
    return ResponseCache(cache, readonly=readonly)
