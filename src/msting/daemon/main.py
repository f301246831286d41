"""The daemon process: `python -m msting.daemon` (or `msting llm start --foreground`).

Start-up order: config (exit 78 on error, so an init system does not restart-loop; a
non-loopback `llm_service.host` without an API key is such an error) → logging → the
single-instance lock (exit 75 if another daemon holds it) → bind the Unix socket (0600)
and the TCP port → pidfile → serve → load the always-ready models.

Shutdown: signal handlers only enqueue the signal. The first SIGTERM/SIGINT makes
readiness 503 and refuses new requests, lets queued and in-flight requests finish
within `drain_grace_sec`, stops the workers (shutdown, SIGTERM, SIGKILL), closes the
open WebSocket connections (code 1001, going away) and exits 0.
A second signal kills the workers and exits at once.

Under systemd (``$NOTIFY_SOCKET``, msting.daemon.notify) each milestone is a ``STATUS=``
line, ``READY=1`` comes once readiness is ``ready`` (or ``idle``), ``WATCHDOG=1`` from the
event loop when ``$WATCHDOG_USEC`` is set, and ``STOPPING=1`` when the drain begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import logging.handlers
import os
import signal
import socket
import sqlite3
import sys

from msting.config import Config, ConfigError, Paths, load_config, resolve_paths
from msting.daemon import instance
from msting.daemon.exit_codes import DaemonExit
from msting.daemon.restart import RESTART, RESTART_SIGNAL, reexec
from msting.daemon.notify import Notifier, follow_readiness, keep_watchdog

log = logging.getLogger("msting.daemon")



def main(argv: list[str] | None = None) -> int:
    notifier = Notifier.from_environ()
    try:
        code = _main(notifier)
    finally:
        notifier.close()
    if code == RESTART:  # asked for through the API, and everything is released: the same pid starts again
        reexec()
    return code


def _main(notifier: Notifier) -> int:
    paths = resolve_paths()
    paths.ensure()
    try:
        config = load_config(paths)
    except ConfigError as exc:
        print(f"msting daemon: configuration error:\n{exc}", file=sys.stderr)
        notifier.status(f"configuration error (exit 78), fix it and start again: {exc}")
        return DaemonExit.CONFIG
    if not config.llm_service.enabled:
        where = config.source or "the default config"
        print(f"msting daemon: the service is disabled (llm_service.enabled is false in {where}); "
              "set it to true to run the daemon", file=sys.stderr)
        notifier.status(f"disabled: llm_service.enabled is false in {where} (exit 78)")
        return DaemonExit.CONFIG
    from msting.http.security import SecurityPolicy, is_loopback_address

    security = SecurityPolicy.from_config(config)  # the only read of the API key
    if not is_loopback_address(config.llm_service.host) and not security.auth_required:
        var, host, port = config.llm_service.api_key_env_var, config.llm_service.host, config.llm_service.port
        where = f"port {port} on any address of this machine" if host.strip("[]") in ("0.0.0.0", "::") else f"{host}:{port}"
        print(f"msting daemon: refusing to start: llm_service.host is {host!r}, which is not a loopback address, "
              f"and the API key variable {var} is not set (or empty) in the daemon's environment. "
              f"Anyone who can reach {where} could use the service without a key. "
              f"Set {var} to a secret key (clients then send 'Authorization: Bearer <key>'), "
              f"or set llm_service.host to 127.0.0.1.", file=sys.stderr)
        notifier.status(f"configuration error (exit 78): llm_service.host {host} is not loopback and {var} is not set")
        return DaemonExit.CONFIG
    setup_logging(config, paths)
    lock = instance.DaemonLock(paths.lockfile)
    try:
        lock.acquire()
    except instance.AlreadyRunning as exc:
        print(f"msting daemon: {exc}", file=sys.stderr)
        notifier.status(f"not started (exit 75): {exc}")
        return DaemonExit.ALREADY_RUNNING
    socket_path = config.socket_path(paths)
    sockets: list[socket.socket] = []
    try:
        try:
            sockets.append(instance.bind_unix_socket(socket_path))
            sockets.append(instance.bind_tcp_socket(config.llm_service.host, config.llm_service.port))
        except instance.RuntimeErrorWithHint as exc:
            log.error("%s", exc)
            print(f"msting daemon: {exc}", file=sys.stderr)
            notifier.status(f"not started: {exc}")
            return DaemonExit.FAILURE
        instance.write_pidfile(paths.pidfile, os.getpid())
        log.info("daemon %d starting: socket %s, url %s", os.getpid(), socket_path, config.url)
        log.info("security: %s", security.describe())
        notifier.status(f"starting: listening on {socket_path} and {config.url}")
        return asyncio.run(_serve(config, paths, sockets, security, notifier))
    finally:
        for sock in sockets:
            sock.close()
        # Remove our own files before releasing the lock: once the lock is free, a new
        # daemon may already be creating its socket at the same path.
        _kill_leftover_children()
        if instance.read_pidfile(paths.pidfile) == os.getpid():
            paths.pidfile.unlink(missing_ok=True)
        if sockets:
            socket_path.unlink(missing_ok=True)
        lock.release()
        log.info("daemon %d stopped", os.getpid())


def _kill_leftover_children() -> None:
    """No worker outlives the daemon, whatever path the exit took."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
            log.warning("killed leftover child process %d", child.pid)
        except psutil.Error:
            pass


def setup_logging(config: Config, paths: Paths) -> None:
    cfg = config.logging
    root = logging.getLogger("msting")
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    root.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    log_file = config.log_file(paths)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=cfg.max_bytes, backupCount=cfg.backups, encoding="utf-8")
    file_handler.setLevel(cfg.file_level.upper())
    file_handler.setFormatter(fmt)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(cfg.console_level.upper())
    console.setFormatter(fmt)
    root.addHandler(file_handler)
    root.addHandler(console)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = [file_handler, console]
        logging.getLogger(name).setLevel(logging.WARNING)


def _make_server(app, sockets_timeout: float):
    import uvicorn

    from msting.http.security import http_protocol_class, peer_check_available

    if not peer_check_available():
        log.info("no SO_PEERCRED on this platform: the Unix socket relies on its 0600 mode alone")

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # the daemon owns signal handling (see _serve)
            yield

    config = uvicorn.Config(
        app,
        loop="asyncio",
        lifespan="off",
        log_config=None,
        access_log=False,
        # Nothing fronts the daemon: X-Forwarded-* headers from a local client must not
        # rewrite the peer address (and skipping the middleware saves time per request).
        proxy_headers=False,
        # httptools' protocol, subclassed to drop Unix-socket peers of another uid at
        # accept. WebSockets upgrade from a connection that protocol accepted, so the
        # websockets implementation ("auto" picks the websockets package) needs no check.
        http=http_protocol_class(),
        ws="auto",
        timeout_graceful_shutdown=sockets_timeout,
        timeout_keep_alive=30,
    )
    return Server(config)


async def _serve(config: Config, paths: Paths, sockets: list[socket.socket], security=None,
                 notifier: Notifier | None = None) -> int:
    from msting.daemon.control import DaemonControl
    from msting.daemon.jobs import Jobs
    from msting.daemon.model_jobs import RESUMABLE, ModelJobs
    from msting.daemon.metrics import DaemonMetrics
    from msting.daemon.local.plan import restore_routing
    from msting.daemon.local.service import LocalService
    from msting.daemon.local.spares import WorkerLauncher
    from msting.daemon.store import Store
    from msting.config.profiles import load_named_profile
    from msting.http.app import build_app
    from msting.http.security import SecurityPolicy
    from msting.http.ws import close_websockets
    from msting.policy.pipeline import PolicyPipeline
    from msting.providers.local import LocalProvider
    from msting.providers.remote.provider import RemoteProvider
    from msting.policy.limits import Limiter
    from msting.policy.usage import Prices, UsageDB, UsageLog
    from msting.providers.router import Observers, Router
    from msting.providers.stub import StubProvider

    from msting.timeslice import LoopSlice

    notifier = notifier or Notifier(None)
    loop_slice = LoopSlice(lambda outcome: log.info("event loop thread: %s (local workers up: %s)", outcome,
                                                    "yes" if loop_slice.short else "none"))
    log.info("event loop thread: the kernel's default time slice until a local worker is up (msting.timeslice)")
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[int] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig)

    try:
        store = Store(paths.state_db)
        store.record_event("daemon_start", detail=f"pid {os.getpid()}")
    except sqlite3.Error as exc:
        message = (f"cannot use the state database {paths.state_db}: {exc}; it holds the active profile, jobs and events: "
                   "fix its permissions, or move it aside to start with a fresh one")
        log.error("%s", message)
        print(f"msting daemon: {message}", file=sys.stderr)
        notifier.status(f"not started (exit 78): {message}")
        return DaemonExit.CONFIG
    try:
        launcher = WorkerLauncher(enabled=config.llm_service.warm_spare, on_serving=loop_slice.serving)
        routing = await asyncio.to_thread(restore_routing, config, paths, store, launcher)
    except ConfigError as exc:
        log.error("the default profile is invalid:\n%s", exc)
        print(f"msting daemon: configuration error:\n{exc}", file=sys.stderr)
        notifier.status(f"configuration error (exit 78), fix the profile and start again: {exc}")
        return DaemonExit.CONFIG
    service = LocalService(config, paths, routing, store, launcher)
    local = LocalProvider(service)
    jobs = Jobs(store, resumable=RESUMABLE)
    model_jobs = ModelJobs(service, jobs)
    metrics = DaemonMetrics(service, jobs, store)
    # Rate limits inside the Router's chain walk; one usage row per request (msting.policy).
    limiter = Limiter.from_config(config.llm)
    usage = UsageLog(UsageDB(paths.state_db), Prices.from_config(config.llm), config.llm.usage.retention_days, limiter)
    usage.start()  # the last minute's charges first: the limits hold across a restart
    metrics.usage = usage.text
    control = DaemonControl(local, jobs, metrics=metrics, restart=lambda: signals.put_nowait(RESTART_SIGNAL),
                            model_jobs=model_jobs, usage=usage)
    remotes = [RemoteProvider(spec, env=os.environ, max_tokens=config.llm.max_tokens, temperature=config.llm.temperature)
               for spec in config.llm.services]
    router = Router([local, StubProvider(), *remotes], default=config.llm.default_service,
                    fallback_chain=config.llm.fallback_chain, observer=Observers(metrics.requests, usage), limits=limiter)
    metrics.attach(router.services, control.readiness)
    # The request policies in front of the Router: routing (rules, router model), then the
    # response cache; the active profile's policy is read again when a switch changes it.
    pipeline = PolicyPipeline(router, local=local.name, active_profile=lambda: service.routing.profile,
                              load_policy=lambda name: load_named_profile(paths, config, name).policy)
    pipeline.active()
    app = build_app(pipeline, control, security=security or SecurityPolicy.from_config(config))
    server = _make_server(app, config.llm_service.stop_timeout_sec)
    serve_task = asyncio.create_task(server.serve(sockets=sockets), name="http")
    while not server.started:
        if serve_task.done():
            serve_task.result()
            return DaemonExit.FAILURE
        await asyncio.sleep(0.01)
    service.start()
    model_jobs.resume()  # downloads a previous daemon left unfinished go on
    for remote in remotes:
        remote.start()
    # Everything built so far (modules, app, routing) lives as long as the daemon: move
    # it out of the collector's sight, so that a full collection under load walks only
    # the objects made since (a gen-2 pass over all of them took ~20 ms: a /health
    # stall). Collect first so nothing collectable is frozen.
    gc.collect()
    gc.freeze()
    where = f"{config.socket_path(paths)} and {config.url}"

    def milestone() -> tuple[str, str]:
        status, reason, _ = control.readiness()
        switching = f"; a profile switch is running (job {service.switch_job})" if service.switch_job else ""
        if status == "ready":
            return status, (f"ready: profile {service.routing.profile}, default model {service.routing.default_model}, "
                            f"on {where}{switching}")
        return status, (f"{status}: {reason}" if reason else status) + switching

    readiness_task = asyncio.create_task(follow_readiness(notifier, milestone), name="notify readiness")
    watchdog_task = asyncio.create_task(keep_watchdog(notifier), name="notify watchdog")

    sig = await signals.get()
    control.begin_stop()  # live feeds (the debug page's) end now
    log.info("received %s: draining (grace %gs)", signal.Signals(sig).name, config.llm_service.drain_grace_sec)
    readiness_task.cancel()  # from here on the stop's own lines
    draining = (f"draining in-flight requests (up to {config.llm_service.drain_grace_sec:g} s), "
                "then stopping the workers")
    if sig == RESTART_SIGNAL:  # the same pid comes back: a reload to systemd, not a stop
        notifier.reloading(f"restarting: {draining}, then starting again in the same process")
    else:
        notifier.stopping(f"stopping ({signal.Signals(sig).name}): {draining}")
    shutdown = asyncio.create_task(service.shutdown(config.llm_service.drain_grace_sec), name="shutdown")
    second = asyncio.create_task(signals.get())
    done, _ = await asyncio.wait({shutdown, second}, return_when=asyncio.FIRST_COMPLETED)
    forced = second in done
    if forced:
        log.warning("second signal: forcing exit")
        notifier.status("stopping: second signal, killing the workers and exiting now")
        service.kill_workers()
        server.force_exit = True
        shutdown.cancel()
    else:
        second.cancel()
    watchdog_task.cancel()
    if not forced:
        notifier.status("stopping: workers stopped, closing the WebSocket connections and the HTTP server")
        # Before uvicorn's shutdown, which would wait for each open connection up to
        # stop_timeout_sec: every /v1/ws client is told the daemon is going away (1001).
        await close_websockets(app, config.llm_service.stop_timeout_sec)
    server.should_exit = True
    try:
        await asyncio.wait_for(serve_task, timeout=config.llm_service.stop_timeout_sec + 5)
    except asyncio.TimeoutError:
        log.warning("HTTP server did not stop in time")
    for remote in remotes:
        await remote.close()
    await usage.close()  # the last rows, and the charges of the window
    store.record_event("daemon_stop", detail="forced" if forced else "graceful")
    store.close()
    if forced:
        return DaemonExit.FAILURE
    return RESTART if sig == RESTART_SIGNAL else DaemonExit.OK
