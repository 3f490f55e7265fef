"""``crmqueue run`` and ``crmqueue worker``: serve queues until a signal.

SIGTERM and SIGINT stop gracefully (running jobs finish within the grace, the rest are
handed back); SIGHUP does the same, then re-executes crmqueue in place; a second,
separate signal exits at once (leases bring running jobs back).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import click

from crmqueue import __version__
from crmqueue.cli.common import QUEUE_CHOICE, command, configure_logging, log, open_broker
from crmqueue.config import QUEUE_NAMES
from crmqueue.engine.queues import Broker
from crmqueue.errors import CrmQueueError

# A onefile executable runs as a launcher process and a Python process; the launcher
# forwards every signal it gets, so a signal sent to the whole process group (Ctrl-C,
# systemd's default KillMode) arrives twice within microseconds. The same signal again
# within this window is that echo, not a second request.
SIGNAL_ECHO_SECONDS = 0.5
# Set on the first stop/restart signal: the API child then ends too (a signal to the
# whole process group reaches it as well), which is no error to report.
_stopping = threading.Event()


def _serve(
    broker: Broker,
    queues: list[str],
    workers: dict[str, int],
    started: Callable[[], None] | None = None,
    scheduler: bool = False,
    before_restart: Callable[[], None] | None = None,
) -> None:
    from crmqueue.engine.runner import Consumer, exit_process

    configure_logging(broker.settings)
    executable = _executable_identity()
    consumer = Consumer(broker, queues, workers)
    stop = threading.Event()
    requests: list[tuple[int, float]] = []

    def on_signal(signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if requests and requests[-1][0] == signum and now - requests[-1][1] < SIGNAL_ECHO_SECONDS:
            return
        requests.append((signum, now))
        if len(requests) > 1:
            log.warning("second signal: exiting now; leases bring running jobs back")
            os._exit(1)
        action = "restarting" if signum == signal.SIGHUP else "stopping"
        log.info("received %s: %s gracefully", signal.Signals(signum).name, action)
        _stopping.set()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    consumer.start()
    schedules = None
    if scheduler and broker.settings.runner.scheduler:
        # Recurring schedules (crmqueue.schedules): a thread of its own; one process leads.
        from crmqueue.schedules import Scheduler

        schedules = Scheduler(broker.settings)
        schedules.start()
    click.echo(
        f"crmqueue {__version__} consuming {', '.join(queues)} (consumer {consumer.id})", err=True
    )
    if started is not None:  # after the consumers: what it starts never delays them
        started()
    while not stop.wait(1.0):
        pass
    if schedules is not None:
        schedules.stop()  # enqueues nothing more; the lead passes to another process
    consumer.stop()
    if requests[0][0] == signal.SIGHUP:
        if before_restart is not None:
            before_restart()
        _reexec(executable)
    exit_process(0)  # skips the interpreter teardown, up to a second past the grace


def _executable_identity() -> tuple[int, int, int] | None:
    """Which file the running executable is, to notice a replaced binary on SIGHUP."""
    if not getattr(sys, "frozen", False):
        return None
    try:
        info = os.stat(sys.executable)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_mtime_ns


def _reexec(started_from: tuple[int, int, int] | None) -> None:
    """Replace this process (same pid) with a fresh crmqueue with the same arguments: it
    reads the configuration and imports the job modules again."""
    env = None
    if getattr(sys, "frozen", False):
        argv = [sys.executable, *sys.argv[1:]]
        if _executable_identity() != started_from:
            # A new binary was installed over the running one: its own files must be
            # unpacked, not the old executable's (which the launcher keeps until exit).
            env = {**os.environ, "PYINSTALLER_RESET_ENVIRONMENT": "1"}
    else:
        argv = [sys.executable, "-m", "crmqueue", *sys.argv[1:]]
    log.info("re-executing %s", " ".join(argv))
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if env is None:
            os.execv(argv[0], argv)
        else:
            os.execve(argv[0], argv, env)
    except OSError as exc:
        raise CrmQueueError(f"cannot restart: {argv[0]}: {exc.strerror or exc}") from None


@command()
@click.option("--queues", default=",".join(QUEUE_NAMES), help="Comma-separated queues to consume.")
@click.option("--no-api", is_flag=True, help="Do not serve the admin API ([api] enabled).")
def run(queues: str, no_api: bool) -> None:
    """Run the consumers of all (or the given) queues, with periodic health and retention,
    the scheduler of recurring schedules ([runner] scheduler), and the admin API in a
    separate process (unless --no-api or [api] enabled = false)."""
    names = [name.strip() for name in queues.split(",") if name.strip()]
    unknown = [name for name in names if name not in QUEUE_NAMES]
    if unknown or not names:
        raise click.BadParameter(
            f"unknown queue {unknown[0] if unknown else '(none)'}; queues are "
            + ", ".join(QUEUE_NAMES),
            param_hint="--queues",
        )
    broker = open_broker()
    serve_api = stop_api = None
    if broker.settings.api.enabled and not no_api:
        from crmqueue.api.server import describe, start_child, stop_children
        from crmqueue.cli.common import config_file

        given = config_file()

        def serve_api() -> None:
            child = start_child(given)  # its own process: the consumers lose no CPU to it
            click.echo(f"crmqueue admin API on {describe(broker.settings)}", err=True)

            def report_exit() -> None:
                # The consumers keep running without the API; say so, not only the child.
                code = child.wait()
                if code and not _stopping.is_set():
                    log.error(
                        "admin API process exited with code %s (its error is above); the"
                        " consumers keep running without the API",
                        code,
                    )

            threading.Thread(target=report_exit, name="crmqueue-api-exit", daemon=True).start()

        def stop_api() -> None:
            stop_children(5.0)  # reaped and its port free before the restarted run's child

    _serve(broker, names, {}, serve_api, scheduler=True, before_restart=stop_api)


@command()
@click.argument("queue", type=QUEUE_CHOICE)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker threads.")
def worker(queue: str, workers: int | None) -> None:
    """Run one queue's consumer (run several, on several hosts, to scale out)."""
    _serve(open_broker(), [queue], {queue: workers} if workers else {})


COMMANDS = (run, worker)
