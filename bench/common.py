"""Shared pieces of the benchmarks: a private redis-server, medians, the machine's facts."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import urllib3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server of our own on a free loopback port, yielding its URL."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", data],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    proc.kill()
                    raise
                time.sleep(0.01)
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()},"
        f" {platform.system()} {platform.release()}"
    )


ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """A loopback test server of a bench module, run as ``python -m MODULE ARGS --port P``
    in its own process (so its CPU is not the measured process's): it prints "ready" once
    listening and answers GET /stats (its counts; ?times adds the arrival times) and
    POST /reset."""

    def __init__(self, module: str, *args: str, what: str = "server") -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args, "--port", str(self.port)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"the {what} did not start")
        self.http = urllib3.PoolManager(maxsize=2, retries=False)

    def stats(self, times: bool = False) -> dict[str, Any]:
        answer = self.http.request("GET", self.base_url + ("/stats?times" if times else "/stats"))
        figures: dict[str, Any] = json.loads(answer.data)
        return figures

    def reset(self) -> None:
        self.http.request("POST", self.base_url + "/reset")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@contextlib.contextmanager
def server_process(module: str, *args: str, what: str = "server") -> Iterator[ServerProcess]:
    server = ServerProcess(module, *args, what=what)
    try:
        yield server
    finally:
        server.close()
