"""deploy/: the entrypoint run here as the container would run it, and the compose file checked against settings.

No container daemon runs on CI, so the image is never built here. What is
verified instead: the entrypoint script itself (migrate, then serve), twice
at once on one PostgreSQL; the compose file's environment against the real
settings; the Dockerfile's, Caddyfile's, unit's and alert rules' contract.
"""

from __future__ import annotations

import configparser
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from pydantic import BaseModel
from sqlalchemy import create_engine, text

from bot.config import SECRET_KEYS, Settings, load_settings
from bot.metrics import registry
from dialogs.clock import FrozenClock
from tests.conftest import MONDAY, TEST_DATA_KEY, _postgres_schema_url, make_companion

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
STARTED = "Application startup complete"
FIRST_MIGRATION = "Running upgrade  -> 0001"
# Variables the deployment reads that are not settings, and who reads them.
NOT_SETTINGS = {
    "COMPANION_WORKERS": DEPLOY / "entrypoint.sh",
    "COMPANION_EXTRAS": DEPLOY / "compose.yaml",
    "COMPANION_DOMAIN": DEPLOY / "Caddyfile",
}


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_schema_url()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _entrypoint(url: str, tmp_path: Path, workers: int) -> tuple[subprocess.Popen[str], int, queue.Queue[str]]:
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "COMPANION_CONFIG": str(DEPLOY / "config.yaml"),
        "DATABASE_URL": url,
        "COMPANION_DATA_KEY": TEST_DATA_KEY,
        "COMPANION_METRICS_TOKEN": "scrape",
        "COMPANION_SERVER__HOST": "127.0.0.1",
        "COMPANION_SERVER__PORT": str(port),
        "COMPANION_SCHEDULER__ENABLED": "false",
        "COMPANION_LOG_FORMAT": "text",
        "COMPANION_WORKERS": str(workers),
    }
    process = subprocess.Popen(
        ["sh", str(DEPLOY / "entrypoint.sh")],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return process, port, lines


def _until_started(lines: queue.Queue[str], workers: int, seen: list[str]) -> None:
    """Block on the servers' own start-up lines (a condition, not a fixed wait), at most two minutes."""
    started = 0
    while started < workers:
        line = lines.get(timeout=120)
        seen.append(line)
        started += STARTED in line


@pytest.mark.postgres
def test_two_entrypoints_started_together_migrate_once_and_both_serve(postgres_url: str, tmp_path: Path) -> None:
    one = _entrypoint(postgres_url, tmp_path, workers=2)
    two = _entrypoint(postgres_url, tmp_path, workers=1)
    logs: list[list[str]] = [[], []]
    try:
        _until_started(one[2], 2, logs[0])
        _until_started(two[2], 1, logs[1])
        for _, port, _ in (one, two):
            assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["status"] == "ready"
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer scrape"})
            assert metrics.status_code == 200 and "companion_unreachable_chats 0.0" in metrics.text
            assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
    finally:
        for process, _, _ in (one, two):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    everything = [line for log in logs for line in log]
    # The schema was created once: one process ran the migrations, the other waited on the lock and found them done.
    assert sum(FIRST_MIGRATION in line for line in everything) == 1, "".join(everything)
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    engine.dispose()
    assert versions == [_head()]


def test_workers_share_one_exposition_in_multiprocess_mode(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes count sends; whichever answers /metrics reports the sum (prometheus-client multiprocess)."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    child = (
        "import asyncio\n"
        "from bot.metrics import instrumented\n"
        "class Channel:\n"
        "    name = 'telegram'\n"
        "    async def send(self, address, message, progress=None):\n"
        "        return 'ok'\n"
        "channel = instrumented(Channel())\n"
        "for _ in range(3):\n"
        "    asyncio.run(channel.send('chat', None))\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", child], env=env, check=True, cwd=Path(__file__).parent.parent)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    companion = make_companion(sqlite_url, FrozenClock(MONDAY), tmp_path)
    exposed = generate_latest(registry(companion.db, companion.clock)).decode()
    companion.db.dispose()
    assert 'companion_sends_total{channel="telegram",result="sent"} 6.0' in exposed
    assert "companion_outbox_depth" in exposed  # the database's figures alongside


# -- the compose file against the settings ------------------------------------------------------


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _example() -> dict[str, str]:
    pairs = {}
    for line in (DEPLOY / "env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def _commented_example() -> dict[str, str]:
    """The optional lines too (``# NAME=value``)."""
    pairs = {}
    for line in (DEPLOY / "env.example").read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            pairs[match.group(1)] = match.group(2).strip()
    return pairs


def _interpolate(value: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name, operator, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        found = env.get(name, "")
        if operator == ":?" and not found:
            raise AssertionError(f"compose needs {name}: {rest}")
        return found or (rest if operator == ":-" else "")

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(:-|:\?)?([^}]*)\}", one, value)


def _is_setting(name: str) -> bool:
    fields = Settings.model_fields
    if any(field.validation_alias == name for field in fields.values()):
        return True
    if name in ("COMPANION_CONFIG", "DATABASE_URL"):
        return True
    if not name.startswith("COMPANION_"):
        return False
    section, _, key = name.removeprefix("COMPANION_").lower().partition("__")
    if not key:
        return section in fields and fields[section].validation_alias is None
    annotation = fields[section].annotation if section in fields else None
    return isinstance(annotation, type) and issubclass(annotation, BaseModel) and key in annotation.model_fields


def test_the_compose_environment_is_what_the_settings_read(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "chroma", "migrate", "companion", "caddy"} <= set(services)
    example = _example()
    companion = services["companion"]
    assert companion["env_file"] == ".env"  # secrets come from the git-ignored file
    environment = {k: _interpolate(str(v), example) for k, v in companion["environment"].items()}
    for name in environment:
        assert _is_setting(name) or name in NOT_SETTINGS, f"{name} is not a setting"
        assert name not in SECRET_KEYS or name == "DATABASE_URL", f"{name} is a secret: it belongs in .env"
    for name, value in {**example, **environment}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(DEPLOY / "config.yaml")

    # Every address points at the service that compose runs under that name.
    database = re.match(r"postgresql://(\w+):([^@]*)@([\w.-]+):(\d+)/(\w+)$", settings.url)
    assert database, settings.url
    user, password, host, port, name = database.groups()
    postgres = services["postgres"]
    assert host == "postgres" and port == "5432"
    assert (user, name) == (postgres["environment"]["POSTGRES_USER"], postgres["environment"]["POSTGRES_DB"])
    assert password == example["POSTGRES_PASSWORD"]
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert settings.memory.chroma_url == "http://chroma:8000"
    assert services["chroma"]["volumes"]
    published = companion["ports"][0].rsplit(":", 1)[-1]
    assert settings.server.port == int(published) and settings.server.host == "0.0.0.0"
    assert environment["COMPANION_WORKERS"] == "2"
    assert not settings.demo_enabled  # `run --workers 2` refuses the demo
    assert companion["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["entrypoint"] == ["companion", "db", "upgrade"]
    # The one-shot migrate step sees the same database as the workers.
    assert services["migrate"]["environment"] == {
        k: v for k, v in companion["environment"].items() if k != "COMPANION_WORKERS"
    }
    assert services["caddy"]["profiles"] == ["https"]
    for name, reader in NOT_SETTINGS.items():
        assert name in reader.read_text(), f"{name} is read by nobody"


def test_the_example_env_file_holds_no_real_secret_and_the_real_one_is_ignored() -> None:
    for name, value in _commented_example().items():
        if name in SECRET_KEYS or name.endswith(("_TOKEN", "_SECRET", "_KEY", "_PASSWORD", "_SID")):
            assert value in ("", "change-me"), f"{name} has a value in env.example"
        assert _is_setting(name) or name in NOT_SETTINGS or name in ("POSTGRES_PASSWORD", "OPENAI_API_KEY"), name
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/.env"], cwd=DEPLOY.parent)
    assert ignored.returncode == 0, "deploy/.env must be git-ignored"


def test_the_dockerfile_contract() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert len(stages) == 2 and all(s == "${PYTHON_IMAGE}" for s in stages)
    assert "slim" in re.search(r"ARG PYTHON_IMAGE=(\S+)", dockerfile).group(1)  # type: ignore[union-attr]
    final = dockerfile.split("\nFROM ")[-1]
    assert "COPY --from=build /opt/companion /opt/companion" in final
    assert re.search(r"^USER companion$", final, re.MULTILINE)
    assert "HEALTHCHECK" in final and "/readyz" in final
    assert "[test]" not in dockerfile and "memory-local" not in dockerfile.split("# (never")[0]
    assert 'ENTRYPOINT ["companion-entrypoint"]' in final
    assert "COPY deploy/entrypoint.sh /usr/local/bin/companion-entrypoint" in final
    assert f"EXPOSE {load_settings(DEPLOY / 'config.yaml').server.port}" in final


def test_caddy_forwards_the_webhooks_and_never_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    patterns = re.search(r"@public path (.+)", caddyfile).group(1).split()  # type: ignore[union-attr]
    example = _commented_example()
    for name in ("COMPANION_TELEGRAM__WEBHOOK_URL", "COMPANION_WHATSAPP__PUBLIC_URL"):
        monkeypatch.setenv(name, example[name])
    settings = load_settings(DEPLOY / "config.yaml")

    def forwarded(path: str) -> bool:
        return any(path == p or (p.endswith("/*") and path.startswith(p[:-1])) for p in patterns)

    for path in (settings.telegram.webhook_path, settings.whatsapp.inbound_path, settings.whatsapp.status_path):
        assert forwarded(path), path
    assert forwarded("/slack/events") and forwarded("/dashboard/login")
    assert not forwarded("/metrics") and not forwarded("/readyz") and not forwarded("/")


def test_the_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "companion.service").read_text())
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert service["User"] == "companion" and service["Group"] == "companion"
    assert service["StateDirectory"] == "companion" and service["StateDirectoryMode"] == "0700"
    assert service["ExecStart"] == "/opt/companion/bin/companion run"
    assert service["UMask"] == "0077"
    config = load_settings(DEPLOY / "config.yaml")
    assert str(config.sqlite_path).startswith("/var/lib/companion/")  # inside the 0700 state directory


def test_the_alert_rules_use_the_figures_metrics_exposes(sqlite_url: str, tmp_path: Path) -> None:
    rules = yaml.safe_load((DEPLOY / "alerts.yaml").read_text())["groups"][0]["rules"]
    by_name = {rule["alert"]: rule["expr"] for rule in rules}
    assert "> 300" in by_name["CompanionOutboxStuck"]
    assert "companion_alerts_overdue" in by_name["CompanionCrisisAlertUnacknowledged"]
    assert "> 600" in by_name["CompanionSweepStalled"]
    companion = make_companion(sqlite_url, FrozenClock(MONDAY), tmp_path)
    exposed = generate_latest(registry(companion.db, companion.clock)).decode()
    companion.db.dispose()
    families = set(re.findall(r"^# TYPE (\S+)", exposed, re.MULTILINE))
    for expr in by_name.values():
        for name in re.findall(r"companion_[a-z_]+", expr):
            assert name in families, f"{name} is not exposed"


def _head() -> str:
    from alembic.script import ScriptDirectory

    from storage.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head
