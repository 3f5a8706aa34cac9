"""What the benchmarks share: the bench data key, fresh databases, the machine line, and process memory."""

from __future__ import annotations

import os
import platform
import socket
import time
import uuid
from pathlib import Path
from typing import Final

from sqlalchemy import create_engine, text

from storage import crypto

# Client text is encrypted at rest; every process of a run uses this one (benchmark-only) key.
KEY: Final = "YmVuY2htYXJrLW9ubHkta2V5LTMyLWJ5dGVzLWxvbmc="
crypto.use([KEY.encode()])

POSTGRES: Final = os.environ.get("COMPANION_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def fresh_url(backend: str, workdir: Path) -> str:
    """An empty database: a new SQLite file, or a new schema in the bench PostgreSQL database."""
    if backend == "sqlite":
        return f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.db'}"
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(POSTGRES)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    return f"{POSTGRES}?options=-csearch_path%3D{schema}"


def drop(url: str) -> None:
    """Remove what :func:`fresh_url` made on PostgreSQL (SQLite files go with their temporary directory)."""
    if "search_path" in url:
        schema = url.rsplit("%3D", 1)[1]
        engine = create_engine(POSTGRES)
        with engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB, Python {platform.python_version()}, "
        f"load average {load_average()}"
    )


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of one process in MB, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def children(pid: int) -> list[int]:
    """Direct child processes (uvicorn's workers), by scanning /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) comes after the command name in parentheses, which may contain spaces.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def wait_http(url: str, timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200 (the service finished starting)."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.2)
