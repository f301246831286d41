"""msting.daemon.store: the daemon's SQLite file, on real files in a temp directory.

Every check reads back what the store wrote, through the store or through a separate
plain sqlite3 connection (what a restarted daemon, or a person with the sqlite3 shell,
would see)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from msting.daemon.store import MAX_EVENTS, MIGRATIONS, Store

LATEST = len(MIGRATIONS)
ALL_TABLES = {"meta", "events", "jobs", "switches", "models", "llm_models", "llm_registry_models", "llm_service_configs", "usage", "rate_charges"}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "state.db"  # "data/" does not exist yet: the store makes it


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")}


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def _old_file(path: Path, version: int) -> None:
    """A file as an older msting left it: migrations 1..version applied, nothing more."""
    db = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:version]:
        db.executescript(script)
    db.execute(f"PRAGMA user_version={version}")
    db.close()


# ------------------------------------------------------------------ migrations


def test_a_fresh_file_gets_every_migration_and_wal(db_path: Path) -> None:
    assert not db_path.parent.exists()
    s = Store(db_path)
    try:
        assert db_path.is_file()
        assert s.schema_version == LATEST == 4
        assert _user_version(db_path) == LATEST
        assert _tables(db_path) == ALL_TABLES
        with sqlite3.connect(db_path) as other:  # WAL is a property of the file, seen by any connection
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        s.close()


def test_reopening_is_idempotent_and_keeps_everything(db_path: Path) -> None:
    s = Store(db_path)
    s.set_meta("active_profile", "fast")
    s.record_event("daemon_start", detail="pid 1")
    s.record_switch("default", "fast", True, 12.5, "reuse")
    s.save_model_state("fast", "tiny", "READY", None)
    s.save_job({"id": "job-1", "kind": "switch", "created": 1.0, "state": "succeeded", "target": "fast"})
    s.close()
    for _ in range(2):  # no migration runs twice (CREATE TABLE would fail if one did)
        s = Store(db_path)
        assert s.schema_version == LATEST
        assert s.get_meta("active_profile") == "fast"
        assert [e["kind"] for e in s.recent_events()] == ["daemon_start"]
        assert [(w["from"], w["to"]) for w in s.recent_switches()] == [("default", "fast")]
        assert s.model_states("fast")["tiny"]["state"] == "READY"
        assert s.get_job("job-1")["target"] == "fast"
        s.close()


def test_an_older_file_migrates_forward_keeping_its_data(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    _old_file(db_path, 1)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("INSERT INTO meta(key, value) VALUES('active_profile', ?)", (json.dumps("big"),))
    db.execute("INSERT INTO events(ts, kind, model, worker, detail) VALUES(1.0, 'worker_crash', 'tiny', 'w1', 'signal 9')")
    db.close()
    assert _tables(db_path) == {"meta", "events"}

    s = Store(db_path)
    try:
        assert s.schema_version == LATEST
        assert _tables(db_path) == ALL_TABLES
        assert s.get_meta("active_profile") == "big"
        assert s.recent_events() == [{"ts": 1.0, "kind": "worker_crash", "model": "tiny", "worker": "w1", "detail": "signal 9"}]
        # the new tables work at once
        s.record_switch("big", "default", False, 3.0, "boom")
        assert s.recent_switches()[0]["ok"] is False
    finally:
        s.close()


def test_a_failing_migration_rolls_back_and_leaves_the_file_as_it_was(db_path: Path) -> None:
    """Migration 2 creates jobs, its index, then switches; a file that already has a
    table named switches makes it fail half-way. Nothing of migration 2 may remain."""
    db_path.parent.mkdir(parents=True)
    _old_file(db_path, 1)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("CREATE TABLE switches (x)")
    db.execute("INSERT INTO meta(key, value) VALUES('k', '1')")
    db.close()

    with pytest.raises(sqlite3.OperationalError, match="switches already exists"):
        Store(db_path)
    assert _user_version(db_path) == 1
    assert _tables(db_path) == {"meta", "events", "switches"}  # no jobs table: its CREATE was rolled back
    with sqlite3.connect(db_path) as other:
        assert other.execute("SELECT value FROM meta WHERE key='k'").fetchone() == ("1",)
        assert other.execute("SELECT name FROM sqlite_master WHERE name='jobs_created'").fetchall() == []


def test_a_file_from_a_newer_msting_is_refused_and_left_as_it_is(db_path: Path) -> None:
    """A schema this code does not know is never used (nor downgraded): the refusal says
    what to do, and the file is untouched."""
    db_path.parent.mkdir(parents=True)
    _old_file(db_path, LATEST)
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version={LATEST + 5}")
    before = db_path.read_bytes()
    with pytest.raises(sqlite3.DatabaseError, match=f"schema version is {LATEST + 5}, from a newer msting"):
        Store(db_path)
    assert db_path.read_bytes() == before and _user_version(db_path) == LATEST + 5


# ------------------------------------------------------------------------- meta


def test_meta_round_trips_json_values_and_overwrites(store: Store) -> None:
    assert store.get_meta("missing") is None
    assert store.get_meta("missing", "default") == "default"
    values = {"s": "fast", "i": 3, "f": 0.5, "b": True, "l": [1, "two", None], "d": {"a": {"b": [1.5]}}, "u": "naïve ✓"}
    for key, value in values.items():
        store.set_meta(key, value)
    for key, value in values.items():
        assert store.get_meta(key) == value
    store.set_meta("s", "slow")
    assert store.get_meta("s") == "slow"
    # a stored null is a value, not a missing key
    store.set_meta("n", None)
    assert store.get_meta("n", "default") is None
    with sqlite3.connect(store.path) as other:
        assert other.execute("SELECT count(*) FROM meta WHERE key='s'").fetchone() == (1,)


def test_writes_are_committed_at_once(store: Store) -> None:
    """No transaction is left open: another connection (a daemon after kill -9) sees
    every write while this store is still open."""
    store.set_meta("active_profile", "fast")
    store.record_event("profile_switched")
    other = sqlite3.connect(store.path)
    try:
        assert other.execute("SELECT value FROM meta WHERE key='active_profile'").fetchone() == ('"fast"',)
        assert other.execute("SELECT kind FROM events").fetchall() == [("profile_switched",)]
    finally:
        other.close()
    second = Store(store.path)  # a second store on the same file, concurrently
    try:
        assert second.get_meta("active_profile") == "fast"
        second.set_meta("active_profile", "slow")
        assert store.get_meta("active_profile") == "slow"
    finally:
        second.close()


# ----------------------------------------------------------------------- events


def test_recent_events_are_the_newest_first(store: Store) -> None:
    before = time.time()
    for i in range(30):
        store.record_event(f"kind{i}", model="m" if i % 2 else None, worker=f"w{i}", detail=f"d{i}")
    after = time.time()
    ten = store.recent_events(10)
    assert [e["kind"] for e in ten] == [f"kind{i}" for i in range(29, 19, -1)]
    assert ten[0] == {"ts": ten[0]["ts"], "kind": "kind29", "model": "m", "worker": "w29", "detail": "d29"}
    assert ten[1]["model"] is None
    assert [e["kind"] for e in store.recent_events()] == [f"kind{i}" for i in range(29, 9, -1)]  # default 20
    assert len(store.recent_events(1000)) == 30
    assert store.recent_events(0) == []
    stamps = [e["ts"] for e in store.recent_events(30)]
    assert stamps == sorted(stamps, reverse=True)
    assert before <= stamps[-1] and stamps[0] <= after


def test_recent_events_on_an_empty_store(store: Store) -> None:
    assert store.recent_events() == []


def test_events_are_pruned_to_the_newest_max_events(store: Store) -> None:
    """Every 500th event deletes all but the newest MAX_EVENTS; between two prunes the
    log may hold up to 499 more."""
    for i in range(MAX_EVENTS + 499):
        store.record_event("e", detail=str(i))
    assert len(store.recent_events(10 * MAX_EVENTS)) == MAX_EVENTS + 499
    store.record_event("e", detail=str(MAX_EVENTS + 499))  # the 5500th: a prune
    kept = store.recent_events(10 * MAX_EVENTS)
    assert len(kept) == MAX_EVENTS
    assert kept[0]["detail"] == str(MAX_EVENTS + 499)
    assert kept[-1]["detail"] == "500"  # events 0..499 are gone, the rest in order
    assert [int(e["detail"]) for e in kept] == list(range(MAX_EVENTS + 499, 499, -1))


# ---------------------------------------------------------------- models, switches


def test_model_states_upsert_per_profile_and_name(store: Store) -> None:
    assert store.model_states("default") == {}
    store.save_model_state("default", "tiny", "STARTING", None)
    store.save_model_state("default", "big", "FATAL", "boot: file is corrupt")
    store.save_model_state("fast", "tiny", "READY", None)
    first = store.model_states("default")["tiny"]["updated"]
    store.save_model_state("default", "tiny", "READY", None)
    states = store.model_states("default")
    assert set(states) == {"tiny", "big"}
    assert states["tiny"]["state"] == "READY" and states["tiny"]["last_error"] is None
    assert states["tiny"]["updated"] >= first
    assert states["big"] == {"state": "FATAL", "last_error": "boot: file is corrupt", "updated": states["big"]["updated"]}
    fast = store.model_states("fast")
    assert list(fast) == ["tiny"] and fast["tiny"]["state"] == "READY"  # profiles do not mix
    store.save_model_state("default", "big", "READY", None)  # the error is cleared, not kept
    assert store.model_states("default")["big"]["last_error"] is None


def test_switches_are_listed_newest_first(store: Store) -> None:
    assert store.recent_switches() == []
    store.record_switch(None, "default", True, 1.5, None)
    for i in range(12):
        store.record_switch(f"p{i}", f"p{i + 1}", i % 3 != 0, float(i), f"detail {i}")
    latest = store.recent_switches()
    assert len(latest) == 10  # default limit
    assert latest[0] == {"ts": latest[0]["ts"], "from": "p11", "to": "p12", "ok": True, "duration_ms": 11.0, "detail": "detail 11"}
    assert [w["to"] for w in latest] == [f"p{i + 1}" for i in range(11, 1, -1)]
    everything = store.recent_switches(100)
    assert len(everything) == 13
    assert everything[-1] == {"ts": everything[-1]["ts"], "from": None, "to": "default", "ok": True, "duration_ms": 1.5, "detail": None}
    assert [w["ok"] for w in everything[:4]] == [True, True, False, True]  # p11, p10, p9 (9 % 3 == 0), p8
    assert all(type(w["ok"]) is bool for w in everything)


# ------------------------------------------------------------------------- jobs


def _job(job_id: str, created: float, state: str = "running", **extra) -> dict:
    return {"id": job_id, "kind": "switch", "created": created, "state": state, "target": "fast", **extra}


def test_jobs_are_stored_as_their_whole_dict_and_updated_in_place(store: Store) -> None:
    assert store.get_job("job-nope") is None
    job = _job("job-a", 100.0, steps=[{"name": "load", "state": "running"}], result=None)
    store.save_job(job)
    assert store.get_job("job-a") == job
    done = {**job, "state": "succeeded", "steps": [{"name": "load", "state": "done"}], "result": {"mode": "parallel"}}
    store.save_job(done)
    assert store.get_job("job-a") == done
    with sqlite3.connect(store.path) as other:  # one row, its state column follows the body
        assert other.execute("SELECT id, kind, created, state FROM jobs").fetchall() == [("job-a", "switch", 100.0, "succeeded")]


def test_recent_jobs_are_ordered_by_creation_not_by_update(store: Store) -> None:
    assert store.recent_jobs() == []
    for i, created in enumerate([5.0, 1.0, 3.0, 4.0, 2.0]):
        store.save_job(_job(f"job-{i}", created))
    store.save_job(_job("job-1", 1.0, state="failed"))  # an update does not move it up
    assert [j["id"] for j in store.recent_jobs()] == ["job-0", "job-3", "job-2", "job-4", "job-1"]
    assert [j["id"] for j in store.recent_jobs(2)] == ["job-0", "job-3"]
    assert store.recent_jobs()[-1]["state"] == "failed"


def test_a_job_that_is_not_json_is_refused_and_nothing_is_written(store: Store) -> None:
    with pytest.raises(TypeError):
        store.save_job(_job("job-x", 1.0, result={"when": object()}))
    assert store.get_job("job-x") is None


# ----------------------------------------------------------- corrupt, unwritable


def test_a_file_that_is_not_sqlite_fails_at_open(db_path: Path) -> None:
    """Today: sqlite3.DatabaseError "file is not a database", raised from Store(); the
    message does not name the file (see the report: the daemon dies with a traceback)."""
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"definitely not an SQLite file\n" * 200)
    with pytest.raises(sqlite3.DatabaseError, match="^file is not a database$"):
        Store(db_path)
    assert db_path.read_bytes() == b"definitely not an SQLite file\n" * 200  # left untouched


def test_a_truncated_file_fails_at_open(db_path: Path) -> None:
    s = Store(db_path)
    s.set_meta("k", 1)
    s.close()
    whole = db_path.read_bytes()
    assert len(whole) > 4096
    db_path.write_bytes(whole[:100])  # the header survives, the pages do not
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        Store(db_path)


def test_an_empty_file_is_a_new_database(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.touch()
    s = Store(db_path)
    try:
        assert s.schema_version == LATEST and s.get_meta("k") is None
    finally:
        s.close()


def test_a_directory_in_the_way_fails_at_open(db_path: Path) -> None:
    db_path.mkdir(parents=True)
    with pytest.raises(sqlite3.OperationalError, match="unable to open database file"):
        Store(db_path)


def test_a_file_in_the_way_of_the_data_directory_fails_before_sqlite(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file, not a directory")
    with pytest.raises(FileExistsError):
        Store(tmp_path / "data" / "state.db")


_PROBE = r"""
import json, sys
from pathlib import Path
from msting.daemon.store import Store
out = {}
try:
    s = Store(Path(sys.argv[1]))
except Exception as exc:
    out["open"] = f"{type(exc).__name__}: {exc}"
else:
    out["open"] = "ok"
    out["read"] = s.get_meta("active_profile")
    try:
        s.set_meta("active_profile", "other")
        out["write"] = "ok"
    except Exception as exc:
        out["write"] = f"{type(exc).__name__}: {exc}"
    try:
        s.record_event("daemon_start")
        out["event"] = "ok"
    except Exception as exc:
        out["event"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another uid may enter (pytest's tmp_path is under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="msting-store-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        for p in [d, *d.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(d)


def _probe_without_write_access(path: Path) -> dict:
    """Run _PROBE as a process that may not write `path`: as root, as uid 65534
    (root ignores file modes); otherwise as ourselves."""
    cmd = [sys.executable, "-c", _PROBE, str(path)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop write access")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    src = Path(__file__).resolve().parents[3] / "src"
    env["PYTHONPATH"] = str(src)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=path.parent.parent)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _existing(path: Path) -> None:
    s = Store(path)
    s.set_meta("active_profile", "fast")
    s.close()  # the last close checkpoints and removes -wal and -shm
    assert not Path(f"{path}-wal").exists()


def test_a_read_only_file_in_a_read_only_directory_fails_at_open(shared_dir: Path) -> None:
    db = shared_dir / "data" / "state.db"
    _existing(db)
    db.chmod(0o444)
    db.parent.chmod(0o555)  # no -wal/-shm can be created either
    out = _probe_without_write_access(db)
    assert out == {"open": "OperationalError: attempt to write a readonly database"}, out
    db.parent.chmod(0o755)
    assert _user_version(db) == LATEST


def test_a_read_only_file_opens_and_reads_but_every_write_raises(shared_dir: Path) -> None:
    """Today: no error at open; the first write (the daemon's daemon_start event)
    raises sqlite3.OperationalError."""
    db = shared_dir / "data" / "state.db"
    _existing(db)
    db.chmod(0o444)
    db.parent.chmod(0o777)  # the -wal and -shm files can be made
    out = _probe_without_write_access(db)
    readonly = "OperationalError: attempt to write a readonly database"
    assert out == {"open": "ok", "read": "fast", "write": readonly, "event": readonly}, out
    db.chmod(0o644)
    s = Store(db)
    try:
        assert s.get_meta("active_profile") == "fast"
    finally:
        s.close()


def test_migration_3_keeps_the_jobs_of_a_version_2_file_and_adds_the_model_tables(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    _old_file(db_path, 2)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("INSERT INTO jobs(id, kind, created, state, body) VALUES('job-1', 'switch', 1.0, 'succeeded', ?)",
               (json.dumps({"id": "job-1", "kind": "switch", "created": 1.0, "state": "succeeded", "target": "fast"}),))
    db.close()
    s = Store(db_path)
    try:
        assert s.schema_version == LATEST and _tables(db_path) == ALL_TABLES
        assert [j["id"] for j in s.list_jobs(type="switch")] == ["job-1"] and s.list_jobs(state="running") == []
        s.save_installed_model({"name": "story", "source": "hf://a/b/story.gguf", "path": "/m/story.gguf", "size_bytes": 10,
                                "sha256": "ab" * 32, "revision": "r1", "capabilities": {"arch": "llama"}})
        first = s.installed_model("story")
        assert first["capabilities"] == {"arch": "llama"} and first["linked"] is False
        s.save_installed_model({**first, "revision": "r2", "installed_at": None})
        again = s.installed_model("story")
        assert again["revision"] == "r2" and again["installed_at"] == first["installed_at"]
        s.cache_registry_models("hf", "story", [{"id": "a/b", "source": "hf://a/b", "downloads": 3, "likes": 1, "files": ["x.gguf"]}])
        assert s.cached_registry_models("hf", "story", 5)[0]["files"] == ["x.gguf"]
        s.save_service_config("lan", "openai", {"urls": ["http://x"]})
        assert s.service_configs()["lan"]["kind"] == "openai"
        s.delete_installed_model("story")
        assert s.installed_models() == []
    finally:
        s.close()
