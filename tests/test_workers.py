"""`companion run --workers 2` on PostgreSQL: two server processes on one port, stopped together."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_DATA_KEY, _postgres_schema_url

STARTED = "Application startup complete"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_schema_url()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(url: str, tmp_path: Path) -> tuple[subprocess.Popen[str], int, queue.Queue[str]]:
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "COMPANION_DATA_KEY": TEST_DATA_KEY,
        "COMPANION_SERVER__PORT": str(port),
        "COMPANION_SCHEDULER__ENABLED": "false",
        "COMPANION_WEB__DEMO": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "run", "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return process, port, lines


def _wait_for_workers(lines: queue.Queue[str], count: int) -> None:
    """Block on the workers' own start-up lines (a condition, not a fixed wait), at most a minute."""
    seen = 0
    while seen < count:
        line = lines.get(timeout=60)
        seen += STARTED in line


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.postgres
def test_two_workers_serve_one_port_and_stop_together(postgres_url: str, tmp_path: Path) -> None:
    process, port, lines = _start(postgres_url, tmp_path)
    try:
        _wait_for_workers(lines, 2)
        for _ in range(10):  # a new connection each time
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()["database"] == "postgresql"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.postgres
def test_a_worker_that_dies_stops_the_service_with_an_error(postgres_url: str, tmp_path: Path) -> None:
    """The service manager should restart the whole service rather than run on half its workers."""
    process, _, lines = _start(postgres_url, tmp_path)
    try:
        _wait_for_workers(lines, 2)
        workers = [pid for pid in _children(process.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        assert process.wait(timeout=60) == 1
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.postgres
def test_workers_refuse_sqlite_and_the_demo(postgres_url: str, sqlite_url: str) -> None:
    """Several workers need SKIP LOCKED (PostgreSQL), and the demo's clock lives in one process."""
    from typer.testing import CliRunner

    from bot.cli import app

    runner = CliRunner()
    on_sqlite = runner.invoke(app, ["run", "--workers", "2"], env={"DATABASE_URL": sqlite_url})
    assert on_sqlite.exit_code == 2 and "needs PostgreSQL" in on_sqlite.output
    env = {"DATABASE_URL": postgres_url, "COMPANION_DATA_KEY": TEST_DATA_KEY}
    with_demo = runner.invoke(app, ["run", "--workers", "2"], env=env)
    assert with_demo.exit_code == 2 and "try-it demo runs in one process" in with_demo.output
