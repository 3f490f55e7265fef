"""Serving the admin API with uvicorn: alone (`crmqueue api`) or, for `crmqueue run`, in a
child process beside the consumers, so that serving it takes nothing from their threads
(the GIL) and a crash of one leaves the other running.

The child is tied to its parent by a pipe: it reads the pipe's end and stops when that
ends, which happens when the parent exits in any way (a kill -9 included) or re-executes
itself (SIGHUP: the write end is not inherited), so no API process outlives its consumers.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from crmqueue.config import Settings
from crmqueue.errors import CrmQueueError

log = logging.getLogger("crmqueue.api")
GRACE_SECONDS = 2  # how long a stopping server lets open requests (streams) finish


def serve(settings: Settings, host: str | None = None, port: int | None = None,
          watch_fd: int | None = None) -> None:  # fmt: skip
    """Serve the API until SIGINT/SIGTERM (or the end of `watch_fd`'s pipe)."""
    import uvicorn

    from crmqueue.api.app import create_app

    app = create_app(settings)
    config = uvicorn_config(app, settings, host, port)
    server = uvicorn.Server(config)
    if watch_fd is not None:
        # After a SIGHUP re-exec the previous child may still be closing its socket.
        _wait_for_port(config.host, config.port, 5.0)
    problem = _bind_problem(config.host, config.port)
    if problem is not None:
        raise CrmQueueError(
            f"admin API: cannot listen on {config.host}:{config.port}: {problem} (another"
            " process may hold it); choose another port with [api] port,"
            " CRMQUEUE_API__PORT or `crmqueue api --port`, or run without the API:"
            " `crmqueue run --no-api`"
        )
    if watch_fd is not None:

        def watch() -> None:
            with os.fdopen(watch_fd, "rb", buffering=0) as pipe:
                while pipe.read(1):
                    pass
            server.should_exit = True

        threading.Thread(target=watch, name="crmqueue-api-parent", daemon=True).start()
    server.run()


def _bind_problem(host: str, port: int) -> str | None:
    """Why `host:port` cannot be bound now (the OS's words), or None when it can."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            return None
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)


def uvicorn_config(
    app: Any, settings: Settings, host: str | None = None, port: int | None = None
) -> Any:
    """The uvicorn.Config `serve` runs `app` with. X-Forwarded-For and -Proto are believed
    only from ``[api] trusted_proxies`` (uvicorn's default would trust 127.0.0.1, so a
    client behind a TCP-level proxy on this host could pick its own address and dodge
    the failed-token limit)."""
    import uvicorn

    trusted = settings.api.trusted_proxies
    return uvicorn.Config(
        app,
        host=host or settings.api.host,
        port=settings.api.port if port is None else port,
        log_level=settings.logging.level.lower(),
        log_config=None,  # uvicorn's records go through crmqueue's handler (text or JSON)
        access_log=False,
        lifespan="off",
        server_header=False,
        # Open notification streams never end by themselves: close them on shutdown.
        timeout_graceful_shutdown=GRACE_SECONDS,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=list(trusted) if trusted else [],
    )


def _wait_for_port(host: str, port: int, seconds: float) -> None:
    """Return once `host:port` can be bound (or after `seconds`: uvicorn then says why)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_server((host, port), reuse_port=False) as _probe:
                return
        except OSError:
            time.sleep(0.1)


def start_child(config_file: str | None) -> subprocess.Popen[bytes]:
    """Start `crmqueue api` in a child process tied to this one (see the module docs);
    the same configuration file (and the inherited environment)."""
    read_end, write_end = os.pipe()  # both non-inheritable: only read_end is passed
    argv = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "crmqueue"]
    argv += ["api", "--watch-fd", str(read_end)]
    if config_file:
        argv += ["--config", config_file]
    child = subprocess.Popen(argv, pass_fds=(read_end,))
    os.close(read_end)
    _keep_open.append(write_end)  # closed by the exit (or exec) of this process
    _children.append(child)
    return child


def stop_children(seconds: float) -> None:
    """End the API children this process started and reap them, before a SIGHUP re-exec:
    the new image would never wait for them (zombies) and their port would still be
    held when its own child starts. Closing the pipe asks each to stop (the watcher in
    `serve`); one still running after `seconds` is killed."""
    while _keep_open:
        os.close(_keep_open.pop())
    deadline = time.monotonic() + seconds
    while _children:
        child = _children.pop()
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


_keep_open: list[int] = []
_children: list[subprocess.Popen[bytes]] = []


def describe(settings: Settings) -> str:
    return f"http://{settings.api.host}:{settings.api.port}"
