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
    # 3: jobs of every type (installs, imports ... beside switches), the installed models,
    # what a registry search returned, and the LLM services' configurations as last seen
    """
    ALTER TABLE jobs ADD COLUMN finished REAL;
    CREATE INDEX jobs_state ON jobs (state);
    CREATE INDEX jobs_kind ON jobs (kind, created);
    CREATE TABLE llm_models (
        name TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        path TEXT NOT NULL,
        format TEXT NOT NULL DEFAULT 'gguf',
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        revision TEXT,
        capabilities TEXT NOT NULL DEFAULT '{}',
        linked INTEGER NOT NULL DEFAULT 0,
        job_id TEXT,
        installed_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE llm_registry_models (
        id TEXT NOT NULL,
        registry TEXT NOT NULL,
        source TEXT NOT NULL,
        downloads INTEGER,
        likes INTEGER,
        files TEXT,
        query TEXT,
        fetched_at REAL NOT NULL,
        PRIMARY KEY (registry, id)
    );
    CREATE TABLE llm_service_configs (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        config TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 4: one usage row per request (msting.policy.usage), and the rate limits' charges of
    # the last minute, so the limits hold across a restart (msting.policy.limits)
    """
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        client TEXT,
        service TEXT NOT NULL,
        model TEXT NOT NULL,
        kind TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        latency_ms REAL NOT NULL,
        ttft_ms REAL,
        cache_hit INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        fallbacks INTEGER NOT NULL,
        route TEXT
    );
    CREATE INDEX usage_at ON usage (at);
    CREATE TABLE rate_charges (key TEXT NOT NULL, at REAL NOT NULL, tokens INTEGER NOT NULL);
    CREATE INDEX rate_charges_at ON rate_charges (at);
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
            "INSERT INTO jobs(id, kind, created, state, finished, body) VALUES(?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET state=excluded.state, finished=excluded.finished, body=excluded.body",
            (job["id"], job["kind"], job["created"], job["state"], job.get("finished"), json.dumps(job)),
        )

    def get_job(self, job_id: str) -> dict | None:
        row = self._db.execute("SELECT body FROM jobs WHERE id=?", (job_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def running_jobs(self) -> list[dict]:
        """Jobs not ended (queued or running), oldest first."""
        rows = self._db.execute("SELECT body FROM jobs WHERE state IN ('running', 'queued') ORDER BY created").fetchall()
        return [json.loads(r[0]) for r in rows]

    def list_jobs(self, *, type: str | None = None, state: str | None = None, limit: int = 50) -> list[dict]:
        """Newest first, of `type` and in `state` when given."""
        where, args = [], []
        if type is not None:
            where.append("kind=?")
            args.append(type)
        if state is not None:
            where.append("state=?")
            args.append(state)
        sql = "SELECT body FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created DESC LIMIT ?"
        return [json.loads(r[0]) for r in self._db.execute(sql, (*args, limit)).fetchall()]

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

    # ---- installed models (llm_models) -------------------------------------------------

    _MODEL_COLUMNS = ("name", "source", "path", "format", "size_bytes", "sha256", "revision", "capabilities", "linked",
                      "job_id", "installed_at", "updated_at")

    def save_installed_model(self, row: dict) -> None:
        """Insert or replace the row of `row["name"]` (installed_at kept from the first install)."""
        now = time.time()
        values = {**row, "capabilities": json.dumps(row.get("capabilities") or {}), "linked": int(bool(row.get("linked"))),
                  "format": row.get("format") or "gguf", "installed_at": row.get("installed_at") or now, "updated_at": now}
        cols = self._MODEL_COLUMNS
        self._db.execute(
            f"INSERT INTO llm_models({', '.join(cols)}) VALUES({', '.join('?' * len(cols))}) ON CONFLICT(name) DO UPDATE SET "
            + ", ".join(f"{c}=excluded.{c}" for c in cols if c not in ("name", "installed_at")),
            tuple(values.get(c) for c in cols),
        )

    def _model_row(self, row: tuple) -> dict:
        out = dict(zip(self._MODEL_COLUMNS, row))
        out["capabilities"] = json.loads(out["capabilities"] or "{}")
        out["linked"] = bool(out["linked"])
        return out

    def installed_models(self) -> list[dict]:
        rows = self._db.execute(f"SELECT {', '.join(self._MODEL_COLUMNS)} FROM llm_models ORDER BY name").fetchall()
        return [self._model_row(r) for r in rows]

    def installed_model(self, name: str) -> dict | None:
        row = self._db.execute(f"SELECT {', '.join(self._MODEL_COLUMNS)} FROM llm_models WHERE name=?", (name,)).fetchone()
        return self._model_row(row) if row else None

    def delete_installed_model(self, name: str) -> None:
        self._db.execute("DELETE FROM llm_models WHERE name=?", (name,))

    # ---- registry search results (llm_registry_models) ---------------------------------

    def cache_registry_models(self, registry: str, query: str, entries: list[dict]) -> None:
        now = time.time()
        for e in entries:
            self._db.execute(
                "INSERT INTO llm_registry_models(id, registry, source, downloads, likes, files, query, fetched_at) "
                "VALUES(?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(registry, id) DO UPDATE SET source=excluded.source, "
                "downloads=excluded.downloads, likes=excluded.likes, files=excluded.files, query=excluded.query, "
                "fetched_at=excluded.fetched_at",
                (e["id"], registry, e["source"], e.get("downloads"), e.get("likes"),
                 json.dumps(e.get("files")) if e.get("files") is not None else None, query, now))

    def cached_registry_models(self, registry: str, query: str, limit: int) -> list[dict]:
        rows = self._db.execute("SELECT id, source, downloads, likes, files FROM llm_registry_models WHERE registry=? AND query=? "
                                "ORDER BY downloads DESC LIMIT ?", (registry, query, limit)).fetchall()
        return [{"id": r[0], "source": r[1], "downloads": r[2], "likes": r[3], "files": json.loads(r[4]) if r[4] else None}
                for r in rows]

    # ---- the LLM services' configurations (llm_service_configs) -------------------------

    def save_service_config(self, name: str, kind: str, config: dict) -> None:
        self._db.execute("INSERT INTO llm_service_configs(name, kind, config, updated_at) VALUES(?, ?, ?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET kind=excluded.kind, config=excluded.config, updated_at=excluded.updated_at",
                         (name, kind, json.dumps(config), time.time()))

    def service_configs(self) -> dict[str, dict]:
        rows = self._db.execute("SELECT name, kind, config, updated_at FROM llm_service_configs ORDER BY name").fetchall()
        return {r[0]: {"kind": r[1], "config": json.loads(r[2]), "updated_at": r[3]} for r in rows}

    def close(self) -> None:
        self._db.close()
