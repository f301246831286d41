"""The daemon's memory: one SQLite file (WAL) behind this small module.

Schema changes are numbered migrations applied in order; `PRAGMA user_version`
records how far a file has come, so an older file is upgraded in place.
Writes are tiny and synchronous: WAL with synchronous=NORMAL keeps them well under
a millisecond, which is fine on the event loop.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Callable

MIGRATIONS: list[str] = [
    # 1: daemon facts and a log of lifecycle events (starts, crashes, FATAL, restarts)
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        model TEXT,
        worker TEXT,
        detail TEXT
    );
    CREATE INDEX events_ts ON events (ts);
    """,
    # 2: jobs with their progress, the switch history, and the last known state of each model
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        created REAL NOT NULL,
        state TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX jobs_created ON jobs (created);
    CREATE TABLE switches (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        from_profile TEXT,
        to_profile TEXT NOT NULL,
        ok INTEGER NOT NULL,
        duration_ms REAL,
        detail TEXT
    );
    CREATE TABLE models (
        profile TEXT NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        last_error TEXT,
        updated REAL NOT NULL,
        PRIMARY KEY (profile, name)
    );
    """,
]

MAX_EVENTS = 5000  # older events are pruned so the file stays small


class Store:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._refuse_newer()  # before WAL mode changes the file
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=2000")
        self._migrate()
        # Told of each event as it is recorded (kind, model, detail): the metrics count them.
        self.listeners: list[Callable[[str, str | None, str | None], None]] = []

    def _refuse_newer(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            self._db.close()
            # a sqlite3.Error, so the daemon reports it as it reports any unusable database
            raise sqlite3.DatabaseError(f"its schema version is {version}, from a newer msting (this one knows up to "
                                        f"{len(MIGRATIONS)}); use that msting, or move the file aside")

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):  # executescript() would COMMIT first
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={number}")
                self._db.execute("COMMIT")
            except Exception:
                self._db.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def set_meta(self, key: str, value) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                         (key, json.dumps(value)))

    def get_meta(self, key: str, default=None):
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def record_event(self, kind: str, *, model: str | None = None, worker: str | None = None, detail: str | None = None) -> None:
        cur = self._db.execute("INSERT INTO events(ts, kind, model, worker, detail) VALUES(?, ?, ?, ?, ?)",
                               (time.time(), kind, model, worker, detail))
        if cur.lastrowid and cur.lastrowid % 500 == 0:
            self._db.execute("DELETE FROM events WHERE id <= ?", (cur.lastrowid - MAX_EVENTS,))
        for listener in self.listeners:
            listener(kind, model, detail)

    def recent_events(self, limit: int = 20) -> list[dict]:
        rows = self._db.execute("SELECT ts, kind, model, worker, detail FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [{"ts": ts, "kind": kind, "model": model, "worker": worker, "detail": detail} for ts, kind, model, worker, detail in rows]

    def save_job(self, job: dict) -> None:
        self._db.execute(
            "INSERT INTO jobs(id, kind, created, state, body) VALUES(?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET state=excluded.state, body=excluded.body",
            (job["id"], job["kind"], job["created"], job["state"], json.dumps(job)),
        )

    def get_job(self, job_id: str) -> dict | None:
        row = self._db.execute("SELECT body FROM jobs WHERE id=?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def running_jobs(self) -> list[dict]:
        rows = self._db.execute("SELECT body FROM jobs WHERE state='running' ORDER BY created").fetchall()
        return [json.loads(r[0]) for r in rows]

    def recent_jobs(self, limit: int = 20) -> list[dict]:
        rows = self._db.execute("SELECT body FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def record_switch(self, from_profile: str | None, to_profile: str, ok: bool, duration_ms: float, detail: str | None) -> None:
        self._db.execute("INSERT INTO switches(ts, from_profile, to_profile, ok, duration_ms, detail) VALUES(?, ?, ?, ?, ?, ?)",
                         (time.time(), from_profile, to_profile, int(ok), duration_ms, detail))

    def recent_switches(self, limit: int = 10) -> list[dict]:
        rows = self._db.execute("SELECT ts, from_profile, to_profile, ok, duration_ms, detail FROM switches ORDER BY id DESC LIMIT ?",
                                (limit,)).fetchall()
        return [{"ts": r[0], "from": r[1], "to": r[2], "ok": bool(r[3]), "duration_ms": r[4], "detail": r[5]} for r in rows]

    def save_model_state(self, profile: str, name: str, state: str, last_error: str | None) -> None:
        self._db.execute(
            "INSERT INTO models(profile, name, state, last_error, updated) VALUES(?, ?, ?, ?, ?) "
            "ON CONFLICT(profile, name) DO UPDATE SET state=excluded.state, last_error=excluded.last_error, updated=excluded.updated",
            (profile, name, state, last_error, time.time()),
        )

    def model_states(self, profile: str) -> dict[str, dict]:
        rows = self._db.execute("SELECT name, state, last_error, updated FROM models WHERE profile=?", (profile,)).fetchall()
        return {r[0]: {"state": r[1], "last_error": r[2], "updated": r[3]} for r in rows}

    def close(self) -> None:
        self._db.close()
