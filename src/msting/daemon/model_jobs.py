"""The model jobs: install (download from a source), import (a local GGUF file, copied
or linked), update (install again when the upstream's revision changed), delete,
load and unload. `ModelJobs.submit` checks a request and returns its job at once;
the work runs as a task of the local service, the blocking parts (HTTP, disk,
hashing) in a thread per job.

Installed models are `<models dir>/<name>.gguf`, recorded in the store's `llm_models`
with their source, sha256, revision and capabilities. Partial downloads are in
`<models dir>/.downloads/`, named by what they fetch, so a cancelled or interrupted
install of the same file resumes, and two installs of one file share one transfer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from msting.api.errors import Conflict, InvalidRequest, MstingError, NotFound, Unavailable
from msting.daemon.downloads.http import FetchError
from msting.daemon.downloads.sources import Resolved, SourceError, kind_of, model_name, resolve, search_hub
from msting.daemon.downloads.transfer import Fetched, Stopped, Transfer, TransferFailed, Want
from msting.daemon.jobs import Job, Jobs, JobState
from msting.daemon.local.service import LocalService
from msting.models.installed import installed_path

log = logging.getLogger("msting.daemon.model_jobs")

TYPES = ("install", "import", "load", "unload", "update", "delete")
RESUMABLE = ("install", "update")  # their work goes on after a daemon restart
STEPS = {
    "install": ["resolving", "downloading", "verifying", "installing"],
    "update": ["resolving", "downloading", "verifying", "installing"],
    "import": ["copying", "verifying", "installing"],
    "delete": ["deleting"],
    "load": ["loading"],
    "unload": ["unloading"],
}
PARAMS = {
    "install": {"source": str, "sha256": str, "name": str},
    "import": {"path": str, "name": str, "link": bool},
    "update": {"name": str},
    "delete": {"name": str},
    "load": {"name": str},
    "unload": {"name": str},
}
REQUIRED = {"install": "source", "import": "path", "update": "name", "delete": "name", "load": "name", "unload": "name"}
COPY_CHUNK = 4 << 20


class _Halted(Exception):
    """The job's thread was told to stop (cancel or shutdown)."""


@dataclass
class Shared:
    """One transfer that several jobs wait for (installs of the same file)."""

    transfer: Transfer
    task: asyncio.Future
    watchers: list[Callable[[int, int | None], None]] = field(default_factory=list)
    jobs: set[str] = field(default_factory=set)  # the jobs still waiting for the bytes
    users: int = 0  # the jobs that have not installed the file yet: the last one removes the part


def _capabilities(path: Path) -> dict:
    try:
        from msting.models.capabilities import capabilities_of  # type: ignore[import-not-found]
    except ImportError:
        return {}
    try:
        return dict(capabilities_of(path))
    except Exception as exc:  # a capability reader's bug must not fail an install
        log.warning("capabilities of %s: %s", path, exc)
        return {}


def _check_gguf(path: Path) -> None:
    from msting.models.gguf_file import ModelFileError, read_gguf_info

    try:
        read_gguf_info(path)
    except ModelFileError as exc:
        raise TransferFailed("not_gguf", f"{exc}; nothing was installed") from None


def _sha256_of(path: Path, on_bytes: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            if stop is not None and stop.is_set():
                raise _Halted()
            digest.update(chunk)
            done += len(chunk)
            if on_bytes:
                on_bytes(done)
    return digest.hexdigest()


class ModelJobs:
    def __init__(self, service: LocalService, jobs: Jobs, env: dict[str, str] | None = None):
        self.service = service
        self.jobs = jobs
        self.store = service.store
        self.models_dir = service.paths.models_dir
        self.parts_dir = self.models_dir / ".downloads"
        self.env = dict(os.environ if env is None else env)
        self.settings = service.config.models
        self._shared: dict[str, Shared] = {}
        self._stops: dict[str, threading.Event] = {}
        self._by_source: dict[str, str] = {}  # a running install's source -> its job id
        self._record_services()

    def _record_services(self) -> None:
        """The configured LLM services as this daemon saw them (llm_service_configs)."""
        services = self.service.config.as_dict().get("llm", {}).get("services") or {}
        for name, body in (services.items() if isinstance(services, dict) else []):
            self.store.save_service_config(name, str(body.get("api_format") or "openai"), body)

    def resume(self) -> None:
        """Jobs a previous daemon left unfinished go on (downloads resume from their part)."""
        for job in self.jobs.resumed:
            log.info("resuming %s job %s (%s)", job.type, job.id, job.params)
            self._start(job)

    # ---- requests --------------------------------------------------------------------

    def submit(self, type_: Any, params: Any) -> dict:
        if type_ not in TYPES:
            raise InvalidRequest("invalid_request", f"type: must be one of {', '.join(TYPES)}, got {type_!r}", param="type")
        if not isinstance(params, dict):
            raise InvalidRequest("invalid_request", "params: must be an object", param="params")
        allowed = PARAMS[type_]
        for key, value in params.items():
            if key not in allowed:
                raise InvalidRequest("invalid_request", f"params.{key}: unknown for a {type_} job (known: {', '.join(allowed)})",
                                     param=f"params.{key}")
            if value is not None and not isinstance(value, allowed[key]):
                raise InvalidRequest("invalid_request", f"params.{key}: must be a {allowed[key].__name__}", param=f"params.{key}")
        clean = {k: v for k, v in params.items() if v is not None}
        need = REQUIRED[type_]
        if not clean.get(need):
            raise InvalidRequest("invalid_request", f"params.{need}: is required for a {type_} job", param=f"params.{need}")
        if self.service.stopping:
            raise Unavailable("shutting_down", "the daemon is shutting down", retry_after=5)
        check = getattr(self, f"_check_{type_}")
        target = check(clean)
        if type_ == "install":
            same = self._by_source.get(self._source_key(clean))
            live = self.jobs.live(same) if same else None
            if live is not None and not live.state.terminal:
                return live.to_dict()  # the same file: one transfer, one job
        job = self.jobs.create(type_, target, STEPS[type_], params=clean, start=False)
        self._start(job)
        return job.to_dict()

    @staticmethod
    def _source_key(params: dict) -> str:
        return f"{params['source']}|{(params.get('sha256') or '').lower()}|{params.get('name') or ''}"

    def _check_name(self, params: dict, key: str = "name") -> str | None:
        name = params.get(key)
        if name is not None and model_name(name) != name:
            raise InvalidRequest("invalid_request", f"params.{key}: a model name uses letters, digits, '.', '_' and '-', "
                                 f"starting with a letter or digit; got {name!r}", param=f"params.{key}")
        return name

    def _check_install(self, params: dict) -> str:
        try:
            kind_of(params["source"])
        except SourceError as exc:
            raise InvalidRequest("invalid_request", f"params.source: {exc}", param="params.source") from None
        sha = params.get("sha256")
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha)):
            raise InvalidRequest("invalid_request", "params.sha256: must be 64 hex digits", param="params.sha256")
        self._check_name(params)
        return params["source"]

    def _check_import(self, params: dict) -> str:
        path = Path(params["path"])
        if not path.is_absolute():
            raise InvalidRequest("invalid_request", f"params.path: must be an absolute path, got {params['path']!r}", param="params.path")
        if not path.is_file():
            raise InvalidRequest("invalid_request", f"params.path: no file {path}", param="params.path")
        self._check_name(params)
        return str(path)

    def _installed(self, params: dict) -> dict:
        name = self._check_name(params)
        row = self.store.installed_model(name) if name else None
        if row is None:
            known = ", ".join(r["name"] for r in self.store.installed_models()) or "none"
            raise NotFound("model_not_found", f"no installed model {name!r} (installed: {known})")
        return row

    def _check_update(self, params: dict) -> str:
        return self._installed(params)["name"]

    def _check_delete(self, params: dict) -> str:
        row = self._installed(params)
        users = self._users_of(Path(row["path"]))
        if users:
            raise Conflict("model_in_use", f"model {row['name']!r} is used by the active profile "
                           f"'{self.service.routing.profile}' (as {', '.join(users)}); switch to another profile first")
        return row["name"]

    def _users_of(self, path: Path) -> list[str]:
        """The active profile's models served from `path`."""
        try:
            target = path.resolve()
        except OSError:
            target = path
        out = []
        for m in self.service.routing.models.values():
            p = m.spec.path
            if p is not None and (Path(p) == path or Path(p).resolve() == target):
                out.append(m.name)
        return out

    def _check_load(self, params: dict) -> str:
        return self.service.admission.find(params["name"]).name  # a NotFound for a model not in the profile

    _check_unload = _check_load

    # ---- running ---------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        if job.type == "install":
            self._by_source[self._source_key(job.params)] = job.id
        stop = threading.Event()
        self._stops[job.id] = stop
        self.jobs.on_cancel(job, lambda: self._halt(job.id))
        self.service.spawn(self._run(job, stop), name=f"{job.type} job {job.id}")

    def _halt(self, job_id: str) -> None:
        stop = self._stops.get(job_id)
        if stop is not None:
            stop.set()
        for key, shared in list(self._shared.items()):
            if job_id in shared.jobs:
                shared.jobs.discard(job_id)
                if not shared.jobs:  # nobody waits for it any more
                    shared.transfer.halt()

    async def _run(self, job: Job, stop: threading.Event) -> None:
        self.jobs.start(job)
        try:
            runner = getattr(self, f"_run_{job.type}")
            result = await runner(job, stop)
            self.jobs.finish(job, result=result)
        except asyncio.CancelledError:  # the daemon is stopping: a resumable job goes on at the next start
            stop.set()
            if job.type not in RESUMABLE and not job.state.terminal:
                self.jobs.finish(job, error={"code": "interrupted", "message": "the daemon stopped while this job ran"})
            raise
        except (_Halted, Stopped):
            pass  # cancelled: the job is already so
        except TransferFailed as exc:
            self.jobs.finish(job, error={"code": exc.code, "message": str(exc)})
        except SourceError as exc:
            self.jobs.finish(job, error={"code": "bad_source", "message": str(exc)})
        except FetchError as exc:
            self.jobs.finish(job, error={"code": "fetch_failed", "message": str(exc)})
        except MstingError as exc:
            self.jobs.finish(job, error={"code": exc.code, "message": exc.message})
        except OSError as exc:
            self.jobs.finish(job, error={"code": "io_error", "message": str(exc)})
        except Exception as exc:
            log.exception("%s job %s", job.type, job.id)
            self.jobs.finish(job, error={"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            self._stops.pop(job.id, None)
            if job.type == "install" and self._by_source.get(self._source_key(job.params)) == job.id:
                del self._by_source[self._source_key(job.params)]

    def _thread(self, fn: Callable[[], Any]) -> asyncio.Future:
        """Run `fn` in a daemon thread of its own (a download must not hold up the
        daemon's exit, as the default executor's threads would)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def body() -> None:
            try:
                value = fn()
            except BaseException as exc:  # noqa: B036 - handed to the awaiting task
                loop.call_soon_threadsafe(lambda failure=exc: future.done() or future.set_exception(failure))
            else:
                loop.call_soon_threadsafe(lambda: future.done() or future.set_result(value))

        threading.Thread(target=body, name="msting-model-job", daemon=True).start()
        return future

    def _progress(self, job: Job) -> Callable[[int, int | None], None]:
        """A callback for another thread: byte progress onto the job, in the loop."""
        loop = asyncio.get_running_loop()

        def report(done: int, total: int | None) -> None:
            loop.call_soon_threadsafe(lambda: job.state is JobState.RUNNING and self.jobs.advance(job, done, total))

        return report

    # ---- install and update ------------------------------------------------------------

    async def _resolve(self, job: Job, source: str, sha256: str | None) -> Resolved:
        self.jobs.begin(job, "resolving", source)
        resolved = await self._thread(lambda: resolve(source, sha256=sha256, env=self.env,
                                                      ollama_registry=self.settings.ollama_registry,
                                                      timeout=self.settings.stall_timeout_sec))
        size = f"{resolved.size} bytes" if resolved.size is not None else "size unknown"
        self.jobs.end(job, "resolving", f"{resolved.url} ({size}" + (f", sha256 {resolved.sha256[:12]}…)" if resolved.sha256 else ")"))
        return resolved

    async def _run_install(self, job: Job, stop: threading.Event) -> dict:
        resolved = await self._resolve(job, job.params["source"], job.params.get("sha256"))
        name = job.params.get("name") or resolved.name
        return await self._fetch_and_install(job, resolved, name, stop)

    async def _run_update(self, job: Job, stop: threading.Event) -> dict:
        row = self.store.installed_model(job.params["name"])
        if row is None:
            raise NotFound("model_not_found", f"no installed model {job.params['name']!r}")
        if row["source"].startswith("file:"):
            raise InvalidRequest("not_updatable", f"model {row['name']!r} was imported from {row['source'][5:]}; there is no upstream to update from")
        resolved = await self._resolve(job, row["source"], None)
        same = resolved.revision is not None and resolved.revision == row["revision"]
        if same or (resolved.sha256 is not None and resolved.sha256 == row["sha256"]):
            for step in ("downloading", "verifying", "installing"):
                self.jobs.end(job, step, "up to date", state="skipped")
            return {"model": row["name"], "path": row["path"], "sha256": row["sha256"], "size_bytes": row["size_bytes"],
                    "updated": False, "revision": row["revision"]}
        result = await self._fetch_and_install(job, resolved, row["name"], stop)
        return {**result, "updated": True, "previous_revision": row["revision"]}

    def _key(self, resolved: Resolved) -> str:
        basis = resolved.sha256 or f"{resolved.url}|{resolved.revision or ''}"
        return hashlib.sha256(basis.encode()).hexdigest()[:32]

    async def _fetch_and_install(self, job: Job, resolved: Resolved, name: str, stop: threading.Event) -> dict:
        if job.state.terminal:
            raise _Halted()
        self.jobs.begin(job, "downloading", resolved.url)
        key = self._key(resolved)
        while (old := self._shared.get(key)) is not None and old.transfer.stop.is_set():
            # a halted transfer still making its part durable: a new one goes on from that part
            await asyncio.wait([old.task])
            if self._shared.get(key) is old:
                self._shared.pop(key)
        shared = self._join(job, resolved)
        try:
            fetched = await self._wait_transfer(job, shared)
            again = f", resumed at byte {fetched.resumed_from}" if fetched.resumed_from else ""
            self.jobs.end(job, "downloading", f"{fetched.size} bytes, {fetched.fetched} fetched{again}")
            self.jobs.begin(job, "verifying")
            part = fetched.part
            await self._thread(lambda: _check_gguf(part))
            how = "sha256 matches the source's" if resolved.sha256 else "no sha256 from the source; computed"
            self.jobs.end(job, "verifying", f"{how}: {fetched.sha256}")
            return await self._install(job, part, name, source=resolved.source, sha256=fetched.sha256, size=fetched.size,
                                       revision=resolved.revision or fetched.etag or fetched.sha256, move=True)
        finally:
            shared.users -= 1
            if shared.users == 0 and shared.task.done() and not shared.task.cancelled() and shared.task.exception() is None:
                shared.transfer.discard()  # every job that waited has its copy

    def _join(self, job: Job, resolved: Resolved) -> Shared:
        """The transfer of this file: the one running, or a new one."""
        key = self._key(resolved)
        shared = self._shared.get(key)
        if shared is None:
            transfer = Transfer(Want(resolved.url, resolved.size, resolved.sha256, resolved.headers), self.parts_dir, key,
                                stall_sec=self.settings.stall_timeout_sec, max_retries=self.settings.max_retries)
            watchers: list[Callable[[int, int | None], None]] = []

            def fan_out(done: int, total: int | None) -> None:
                for watch in list(watchers):
                    watch(done, total)

            transfer.on_progress = fan_out
            shared = Shared(transfer, self._thread(transfer.run), watchers)
            self._shared[key] = shared
            shared.task.add_done_callback(lambda _: self._shared.pop(key, None) if self._shared.get(key) is shared else None)
        shared.jobs.add(job.id)
        shared.users += 1
        shared.watchers.append(self._progress(job))
        if resolved.size is not None:
            self.jobs.advance(job, 0, resolved.size)
        return shared

    async def _wait_transfer(self, job: Job, shared: Shared) -> Fetched:
        try:
            fetched = await asyncio.shield(shared.task)
        except asyncio.CancelledError:
            shared.jobs.discard(job.id)
            if not shared.jobs:
                shared.transfer.halt()
            raise
        if job.state.terminal:
            raise _Halted()
        return fetched

    async def _install(self, job: Job, source_file: Path, name: str, *, source: str, sha256: str, size: int,
                       revision: str | None, move: bool, link: bool = False) -> dict:
        self.jobs.begin(job, "installing", name)
        target = installed_path(self.models_dir, name)

        def place() -> None:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.unlink(missing_ok=True)
            if link:
                os.symlink(source_file, tmp)
            elif move:  # a hard link: a download shared with other jobs stays until the last has its copy
                try:
                    os.link(source_file, tmp)
                except OSError:
                    shutil.copyfile(source_file, tmp)
            os.replace(tmp, target)

        if job.state.terminal:
            raise _Halted()
        await self._thread(place)
        capabilities = await self._thread(lambda: _capabilities(target))
        self.store.save_installed_model({"name": name, "source": source, "path": str(target), "size_bytes": size, "sha256": sha256,
                                         "revision": revision, "capabilities": capabilities, "linked": link, "job_id": job.id})
        self.jobs.end(job, "installing", str(target))
        return {"model": name, "path": str(target), "sha256": sha256, "size_bytes": size}

    # ---- import, delete, load, unload -------------------------------------------------

    async def _run_import(self, job: Job, stop: threading.Event) -> dict:
        src = Path(job.params["path"])
        name = job.params.get("name") or model_name(src.stem)
        link = bool(job.params.get("link"))
        size = src.stat().st_size
        self.jobs.advance(job, 0, size)
        report = self._progress(job)
        self.jobs.begin(job, "copying", f"linking {src}" if link else f"copying {src}")
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        part = self.parts_dir / f"import-{job.id}.part"

        def copy() -> str:
            if link:
                return _sha256_of(src, lambda n: report(n, size), stop)
            digest = hashlib.sha256()
            done = 0
            try:
                with open(src, "rb") as f, open(part, "wb") as out:
                    while chunk := f.read(COPY_CHUNK):
                        if stop.is_set():
                            raise _Halted()
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        report(done, size)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            return digest.hexdigest()

        sha = await self._thread(copy)
        self.jobs.end(job, "copying", f"{size} bytes")
        self.jobs.begin(job, "verifying")
        try:
            await self._thread(lambda: _check_gguf(src if link else part))
        except TransferFailed:
            part.unlink(missing_ok=True)
            raise
        self.jobs.end(job, "verifying", f"a GGUF file, sha256 {sha}")
        try:
            return await self._install(job, src if link else part, name, source=f"file:{src}", sha256=sha, size=size,
                                       revision=sha, move=not link, link=link)
        finally:
            part.unlink(missing_ok=True)

    async def _run_delete(self, job: Job, stop: threading.Event) -> dict:
        row = self._installed(job.params)
        users = self._users_of(Path(row["path"]))
        if users:  # a switch since the request
            raise Conflict("model_in_use", f"model {row['name']!r} is used by the active profile (as {', '.join(users)})")
        self.jobs.begin(job, "deleting", row["path"])
        path = Path(row["path"])
        freed = 0 if row["linked"] else (path.stat().st_size if path.exists() else 0)
        path.unlink(missing_ok=True)
        self.store.delete_installed_model(row["name"])
        self.jobs.end(job, "deleting", f"removed {path}" + (" (a link; its target kept)" if row["linked"] else ""))
        return {"model": row["name"], "path": str(path), "freed_bytes": freed}

    async def _run_load(self, job: Job, stop: threading.Event) -> dict:
        self.jobs.begin(job, "loading", job.params["name"])
        return await self.service.load(job.params["name"], self.service.config.llm_service.startup_timeout_sec)

    async def _run_unload(self, job: Job, stop: threading.Event) -> dict:
        self.jobs.begin(job, "unloading", job.params["name"])
        return await self.service.unload(job.params["name"])

    # ---- the installed models, and the hub's --------------------------------------------

    def installed(self) -> list[dict]:
        out = []
        for row in self.store.installed_models():
            path = Path(row["path"])
            details = row.pop("capabilities")  # what the file is: the name /v1/models gives it
            out.append({**row, "details": details, "present": path.exists(), "in_use": bool(self._users_of(path))})
        return out

    async def search(self, query: str, limit: int) -> list[dict]:
        try:
            found = await self._thread(lambda: search_hub(query, limit, self.env))
        except FetchError as exc:
            raise Unavailable("registry_unreachable", f"cannot search the Hugging Face hub: {exc}", retry_after=30) from None
        self.store.cache_registry_models("hf", query, found)
        return found

