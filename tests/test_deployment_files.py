"""The deployment files at the top of the repository: docker-compose.yml, Dockerfile,
.dockerignore and Procfile say what the README promises (no Docker engine needed to check)."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
#: Settings the worker needs from the operator, passed through from the environment or .env.
UPSTREAM_VARIABLES = (
    "SLSKD_URL",
    "SLSKD_API_KEY",
    "MUSICBRAINZ_CONTACT",
    "SPOTIFY_CLIENT_ID",
    "SPOTIFY_CLIENT_SECRET",
)
#: Names that mark a value as a secret.
SECRET_WORDS = ("KEY", "SECRET", "PASSWORD", "TOKEN")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_redis_from_the_official_image_with_aof_on_a_named_volume() -> None:
    # Given the compose file
    redis = compose()["services"]["redis"]

    # Then Redis is the official image, appends to its AOF, keeps /data on a named volume
    # and is healthy when redis-cli ping answers
    assert re.fullmatch(r"redis(:[\w.-]+)?", redis["image"])
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    volume, _, mount = redis["volumes"][0].partition(":")
    assert mount == "/data" and volume in compose()["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_compose_workers_share_redis_take_upstream_settings_from_the_env_and_scale() -> None:
    # Given the worker service
    worker = compose()["services"]["worker"]
    env = worker["environment"]

    # Then it runs the worker command on the compose Redis ...
    assert worker["command"] == ["soulspot-jobs", "worker"]
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    # ... every upstream setting comes from the environment or .env, empty when unset ...
    for name in UPSTREAM_VARIABLES:
        assert env[name] == f"${{{name}:-}}", name
    # ... and nothing stops `--scale worker=N`: no fixed container name, no published port
    assert "container_name" not in worker
    assert "ports" not in worker


def test_compose_web_publishes_its_port_and_is_checked_on_health() -> None:
    # Given the web service
    web = compose()["services"]["web"]

    # Then it serves on 8000, published on the host, checked through GET /health
    assert web["command"][:2] == ["soulspot-jobs", "serve"]
    assert web["command"][web["command"].index("--port") + 1] == "8000"
    assert any(str(port).endswith(":8000") for port in web["ports"])
    check = web["healthcheck"]["test"]
    assert check[0] == "CMD" and "/health" in check[-1]
    assert web["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    # and the web process is given no upstream secret: it never calls an upstream
    assert not [name for name in web["environment"] if name.startswith(("SLSKD_", "SPOTIFY_"))]


class _HealthStub(http.server.BaseHTTPRequestHandler):
    """Answers GET /health with the status and body the test chose."""

    answer: tuple[int, dict[str, Any]] = (200, {"status": "healthy"})

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        status, body = self.answer
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def health_stub() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HealthStub)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize(
    ("status", "body", "healthy"),
    [
        (200, {"status": "healthy"}, True),
        (503, {"status": "degraded"}, True),
        (503, {"status": "unavailable"}, False),
        (500, {"error": "boom"}, False),
    ],
)
def test_the_web_healthcheck_accepts_healthy_and_degraded_answers_only(
    health_stub: http.server.ThreadingHTTPServer,
    status: int,
    body: dict[str, Any],
    healthy: bool,
) -> None:
    # Given the healthcheck's script, pointed at a stub /health answering `status` and `body`
    script = compose()["services"]["web"]["healthcheck"]["test"][-1]
    port = health_stub.server_address[1]
    script = script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    _HealthStub.answer = (status, body)

    # When the check runs
    result = subprocess.run([sys.executable, "-c", script], timeout=30)

    # Then it passes for 200 and for 503 "degraded" (an upstream down, the process fine)
    assert (result.returncode == 0) is healthy


def test_the_compose_file_validates_with_docker_compose_config() -> None:
    # Given docker-compose, when this machine has it (.ci/run installs it where it can)
    binary = shutil.which("docker-compose")
    # When it renders the file with an upstream secret set in the environment
    # Then the file is valid and the secret reaches the worker only
    if binary is not None:
        env = {"PATH": "/usr/bin:/bin", "SLSKD_API_KEY": "from-the-environment"}
        result = subprocess.run(
            [binary, "-f", str(COMPOSE), "config"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        rendered = yaml.safe_load(result.stdout)
        assert rendered["services"]["worker"]["environment"]["SLSKD_API_KEY"] == (
            "from-the-environment"
        )
        assert "SLSKD_API_KEY" not in rendered["services"]["web"]["environment"]
    # Without docker-compose the file is at least well-formed YAML with the three services
    assert set(compose()["services"]) == {"redis", "worker", "web"}


def test_the_image_runs_as_a_non_root_user_and_bakes_in_no_secret() -> None:
    # Given the Dockerfile and .dockerignore
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.strip() for line in dockerfile.splitlines() if line.strip()]
    ignored = (ROOT / ".dockerignore").read_text().split()

    # Then it builds on slim Python 3.11 and installs the package from the repository ...
    assert re.search(r"^FROM python:3\.11[\w.-]*-slim\b", dockerfile, re.MULTILINE)
    assert any(re.match(r"RUN pip install \.", line) for line in instructions)
    # ... runs as a user that is not root ...
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    # ... sets no secret-looking variable and never copies a local .env into the image
    for line in instructions:
        if line.startswith(("ENV ", "ARG ")):
            assert not any(word in line.upper() for word in SECRET_WORDS), line
    assert ".env" in ignored and ".git" in ignored and ".venv" in ignored
    assert "COPY . " not in dockerfile


def test_the_procfile_declares_a_web_and_a_worker_process() -> None:
    # Given the Procfile
    lines = (ROOT / "Procfile").read_text().splitlines()
    processes = dict(line.split(": ", 1) for line in lines if line.strip())

    # Then web serves on $PORT and worker runs the worker command
    assert set(processes) == {"web", "worker"}
    assert processes["web"].startswith("soulspot-jobs serve ")
    assert "$PORT" in processes["web"] or "${PORT" in processes["web"]
    assert processes["worker"].startswith("soulspot-jobs worker")
