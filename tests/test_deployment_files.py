"""The deployment files at the top of the repository say what docs/deploying.md promises:
docker-compose.yml (and docker-compose.slskd.yml), Dockerfile, .dockerignore, .env.example,
constraints.txt, Procfile and Makefile. No Docker engine is needed; `docker-compose config`
(Debian's docker-compose 1.29, which .ci/run installs where it can) renders the compose files.

The settings checked here are read from the pydantic model, so a setting added to
``soulspot_jobs/settings.py`` is checked without touching this file.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import AliasChoices, BaseModel
from pydantic_settings import BaseSettings

from soulspot_jobs.settings import SERVICES, Settings, load_settings
from tests.polling import wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_SLSKD = ROOT / "docker-compose.slskd.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
CONSTRAINTS = ROOT / "constraints.txt"
#: The containers running soulspot-jobs; each must get every setting.
APP_SERVICES = ("worker", "web")
#: REDIS_URL when neither the shell nor .env sets it: the compose file's redis service.
COMPOSE_REDIS_URL = "redis://redis:6379/0"
#: What the worker's health check looks for in a process's command line.
WORKER_MARKER = "soulspot_jobs.worker"
#: Names that mark a value as a secret.
SECRET_WORDS = ("KEY", "SECRET", "PASSWORD", "TOKEN")
#: An image reference pinned to an exact version (``redis:7.4.11-bookworm``), digest optional.
PINNED_IMAGE = re.compile(r"[\w./-]+:\d+\.\d+\.\d+(-[\w.-]+)?(@sha256:[0-9a-f]{64})?")


# -- the settings, from the model ------------------------------------------------------------------


def _field_variables(model: type[BaseModel], prefix: str, nested: bool) -> Iterator[str]:
    """The environment variables of ``model``'s fields, read with ``prefix``."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
            group_prefix = annotation.model_config.get("env_prefix", "")
            delimiter = annotation.model_config.get("env_nested_delimiter")
            yield from _field_variables(annotation, group_prefix, nested=bool(delimiter))
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if nested:  # per-service overrides: CIRCUIT_BREAKER_SLSKD_API__TIMEOUT
                yield from (f"{prefix}{name}__{inner}".upper() for inner in annotation.model_fields)
            else:  # a plain grouping (observability): its groups carry their own prefix
                yield from _field_variables(annotation, prefix, nested=False)
        elif isinstance(field.validation_alias, AliasChoices):  # the first name is the main one
            yield next(name for name in field.validation_alias.choices if isinstance(name, str))
        elif isinstance(field.validation_alias, str):
            yield field.validation_alias
        else:
            yield f"{prefix}{name}".upper()


def setting_variables() -> list[str]:
    """Every environment variable soulspot-jobs reads, per-service breaker overrides included."""
    return list(dict.fromkeys(_field_variables(Settings, "", nested=False)))


def override_prefixes() -> list[str]:
    """``CIRCUIT_BREAKER_SLSKD_API__`` and the like: one per service with overrides."""
    return [f"CIRCUIT_BREAKER_{field.upper()}__" for field in SERVICES.values()]


def test_the_settings_are_read_from_the_model_nested_overrides_included(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given the variables derived from the settings model
    variables = setting_variables()

    # Then they include the top-level ones under their own names, every group's, and the
    # per-service overrides
    for name in (
        "REDIS_URL",
        "BROKER_URL",
        "SLSKD_TIMEOUT",
        "SPOTIFY_REFRESH_TOKEN",
        "MUSICBRAINZ_CONTACT",
        "LOG_FORMAT",
        "CIRCUIT_BREAKER_FAILURE_THRESHOLD",
        "CIRCUIT_BREAKER_SLSKD_API__FAILURE_THRESHOLD",
        "CIRCUIT_BREAKER_MUSICBRAINZ_API__ON_BACKEND_ERROR",
        "RECOVERY_HEARTBEAT_TIMEOUT",
        "SOULSPOT_KEY_PREFIX",
    ):
        assert name in variables, name

    # And when some of them are set, the settings read them under those names
    monkeypatch.chdir(tmp_path)  # no .env
    for name in list(os.environ):
        if name.upper() in variables:
            monkeypatch.delenv(name)
    monkeypatch.setenv("SLSKD_TIMEOUT", "7")
    monkeypatch.setenv("CIRCUIT_BREAKER_SPOTIFY_API__TIMEOUT", "42")
    monkeypatch.setenv("RECOVERY_INTERVAL", "3")
    settings = load_settings()
    assert settings.slskd.timeout == 7
    assert settings.observability.circuit_breaker.config_for("spotify-api").timeout == 42
    assert settings.recovery.interval == 3


# -- compose ---------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_redis_from_the_official_image_with_aof_on_a_named_volume() -> None:
    # Given the compose file
    redis = compose()["services"]["redis"]

    # Then Redis is the official image at an exact version, appends to its AOF, keeps /data on
    # a named volume and is healthy when redis-cli ping answers
    assert re.fullmatch(r"redis:7\.\d+\.\d+(-[\w.-]+)?", redis["image"])
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    volume, _, mount = redis["volumes"][0].partition(":")
    assert mount == "/data" and volume in compose()["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_every_image_is_pinned_to_an_exact_version() -> None:
    # Given the images the compose file pulls and the Dockerfile builds on
    pulled = [s["image"] for s in compose()["services"].values() if "build" not in s]
    bases = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)

    # Then each names an exact version: no floating tag such as redis:7 or python:3.11-slim
    assert pulled and bases
    for image in [*pulled, *bases]:
        assert PINNED_IMAGE.fullmatch(image), f"{image} floats: pin an exact version"
    assert all(re.match(r"python:3\.11\.\d+-slim", base) for base in bases), bases


def test_compose_gives_both_processes_the_env_file_and_an_overridable_redis_url() -> None:
    # Given the worker and the web services
    services = compose()["services"]

    for name in APP_SERVICES:
        service = services[name]
        # Then each reads every setting from .env, and REDIS_URL defaults to the redis service
        assert service["env_file"] in (".env", [".env"]), name
        assert service["environment"] == {"REDIS_URL": f"${{REDIS_URL:-{COMPOSE_REDIS_URL}}}"}
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_workers_scale_and_have_a_health_check() -> None:
    # Given the worker service
    worker = compose()["services"]["worker"]

    # Then it runs the worker command, has a health check of its own, and nothing stops
    # `--scale worker=N`: no fixed container name, no published port
    assert worker["command"] == ["soulspot-jobs", "worker"]
    check = worker["healthcheck"]
    assert check["test"][:3] == ["CMD", "python", "-c"] and WORKER_MARKER in check["test"][-1]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_compose_web_publishes_its_port_on_loopback_unless_told_otherwise() -> None:
    # Given the web service
    web = compose()["services"]["web"]

    # Then it serves on 8000 in its container, published on the host's loopback by default,
    # and keeps the image's health check
    assert web["command"][:2] == ["soulspot-jobs", "serve"]
    assert web["command"][web["command"].index("--port") + 1] == "8000"
    assert web["ports"] == ["${SOULSPOT_WEB_HOST:-127.0.0.1}:${SOULSPOT_WEB_PORT:-8000}:8000"]
    assert "healthcheck" not in web


# -- docker-compose config -------------------------------------------------------------------------


@pytest.fixture
def docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("no docker-compose here (.ci/run installs Debian's where it can)")
    return binary


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the compose files in a directory of their own, where a test writes the .env."""
    for path in ROOT.glob("docker-compose*.yml"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def render(
    binary: str,
    project: Path,
    dotenv: dict[str, str],
    shell: dict[str, str] | None = None,
    files: tuple[str, ...] = ("docker-compose.yml",),
) -> dict[str, Any]:
    """``docker-compose config`` of ``files`` in ``project`` with ``dotenv`` as its .env and
    only ``shell`` (plus PATH) in the environment."""
    (project / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    options = [arg for name in files for arg in ("-f", name)]
    result = subprocess.run(
        [binary, *options, "config"],
        cwd=project,
        env={"PATH": "/usr/bin:/bin", **(shell or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_every_setting_in_env_reaches_the_worker_and_the_web(
    docker_compose: str, project: Path
) -> None:
    # Given an .env setting every variable of the settings model, each to a value of its own
    values = {name: f"value-of-{name.lower()}" for name in setting_variables()}

    # When docker-compose renders the shipped file
    rendered = render(docker_compose, project, values)

    # Then every one of them reaches both processes unchanged
    for service in APP_SERVICES:
        environment = rendered["services"][service]["environment"]
        missing = {name for name in values if environment.get(name) != values[name]}
        assert not missing, f"{service} does not get {sorted(missing)}"


def test_redis_url_is_the_compose_redis_unless_env_or_the_shell_say_otherwise(
    docker_compose: str, project: Path
) -> None:
    def redis_urls(dotenv: dict[str, str], shell: dict[str, str] | None = None) -> set[str]:
        rendered = render(docker_compose, project, dotenv, shell)
        return {rendered["services"][s]["environment"]["REDIS_URL"] for s in APP_SERVICES}

    # Given no REDIS_URL, then the compose redis service
    assert redis_urls({"LOG_LEVEL": "INFO"}) == {COMPOSE_REDIS_URL}
    # Given REDIS_URL in .env, then that one
    assert redis_urls({"REDIS_URL": "redis://managed:6380/2"}) == {"redis://managed:6380/2"}
    # Given REDIS_URL in the shell too, then the shell's
    shell = {"REDIS_URL": "rediss://elsewhere:6379/0"}
    assert redis_urls({"REDIS_URL": "redis://managed:6380/2"}, shell) == {shell["REDIS_URL"]}


def test_the_shipped_env_example_renders_and_loads(docker_compose: str, project: Path) -> None:
    # Given .env.example copied to .env, as docs/deploying.md says
    dotenv = _dotenv(ENV_EXAMPLE)

    # When docker-compose renders the file
    rendered = render(docker_compose, project, dotenv)

    # Then the worker and the web get its settings, on the compose Redis
    for service in APP_SERVICES:
        environment = rendered["services"][service]["environment"]
        assert environment["SLSKD_URL"] == dotenv["SLSKD_URL"]
        assert environment["REDIS_URL"] == COMPOSE_REDIS_URL


def test_the_slskd_override_joins_the_worker_to_slskds_external_network(
    docker_compose: str, project: Path
) -> None:
    # Given the override named in .env through COMPOSE_FILE, with slskd's network named
    dotenv = {
        "COMPOSE_FILE": "docker-compose.yml:docker-compose.slskd.yml",
        "SLSKD_NETWORK": "media_default",
        "SLSKD_URL": "http://slskd:5030",
    }

    # When docker-compose renders the project (no -f: it reads COMPOSE_FILE)
    rendered = render(docker_compose, project, dotenv, files=())

    # Then the worker is on its default network and on slskd's, which compose does not own
    worker = rendered["services"]["worker"]
    assert set(worker["networks"]) == {"default", "slskd"}
    assert rendered["networks"]["slskd"] == {"external": True, "name": "media_default"}
    assert worker["environment"]["SLSKD_URL"] == "http://slskd:5030"
    # And without SLSKD_NETWORK the network is a compose project "slskd"'s default one
    rendered = render(docker_compose, project, {}, files=("docker-compose.yml", COMPOSE_SLSKD.name))
    assert rendered["networks"]["slskd"]["name"] == "slskd_default"


# -- .env.example ----------------------------------------------------------------------------------


def _dotenv(path: Path) -> dict[str, str]:
    """The variables a file sets (``NAME=value`` lines; comments on lines of their own)."""
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {name.strip(): value.strip() for name, value in pairs}


def test_env_example_lists_every_setting_and_is_valid_as_it_is(tmp_path: Path) -> None:
    # Given .env.example
    text = ENV_EXAMPLE.read_text()
    mentioned = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))

    # Then it names every setting (each service's overrides by example), set or commented out
    plain = [name for name in setting_variables() if "__" not in name]
    assert not [name for name in plain if name not in mentioned]
    for prefix in override_prefixes():
        assert any(name.startswith(prefix) for name in mentioned), prefix
    # And it sets no secret to a made-up value, and only lines without inline comments
    for name, value in _dotenv(ENV_EXAMPLE).items():
        if any(word in name for word in SECRET_WORDS):
            assert value == "", name
        assert " #" not in value, name
    # And as .env it loads (empty values keep their defaults)
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    result = subprocess.run(
        [sys.executable, "-c", "from soulspot_jobs.settings import load_settings as l; l()"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k.upper() not in setting_variables()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# -- the health checks -----------------------------------------------------------------------------


def dockerfile_healthcheck() -> list[str]:
    """The exec form of the Dockerfile's HEALTHCHECK, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("HEALTHCHECK ")]
    command = json.loads(line.split(" CMD ", 1)[1])
    assert isinstance(command, list)
    return command


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
def test_the_image_health_check_accepts_healthy_and_degraded_answers_only(
    health_stub: http.server.ThreadingHTTPServer,
    status: int,
    body: dict[str, Any],
    healthy: bool,
) -> None:
    # Given the image's health check, pointed at a stub /health answering `status` and `body`
    command = dockerfile_healthcheck()
    assert command[:2] == ["python", "-c"]
    port = health_stub.server_address[1]
    script = command[-1].replace("8000", str(port))
    _HealthStub.answer = (status, body)

    # When the check runs
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)

    # Then it passes for 200 and for 503 "degraded" (an upstream down, the process fine)
    assert (result.returncode == 0) is healthy


def test_the_image_health_check_fails_when_nothing_listens() -> None:
    # Given the image's health check, pointed at a port nobody listens on
    script = dockerfile_healthcheck()[-1].replace("8000", "1")

    # Then it fails
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert result.returncode != 0


@pytest.fixture
def worker_check() -> str:
    """The worker's health check, looking for a marker of this test's own instead of
    soulspot_jobs.worker (other workers may run on this machine)."""
    script = compose()["services"]["worker"]["healthcheck"]["test"][-1]
    assert WORKER_MARKER in script
    return script.replace(WORKER_MARKER, f"marker-{uuid.uuid4().hex}")


def _run_check(script: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url}
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )


def test_the_worker_health_check_passes_while_dramatiq_runs_and_redis_answers(
    worker_check: str, redis_url: str
) -> None:
    # Given a process whose command line carries the marker (as Dramatiq's does), and a Redis
    marker = re.search(r"marker-[0-9a-f]{32}", worker_check)
    assert marker is not None
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", marker.group(0)]
    )
    try:
        wait_until(lambda: Path(f"/proc/{sleeper.pid}/cmdline").exists(), "the process")

        # When the check runs, then it passes
        result = _run_check(worker_check, redis_url)
        assert result.returncode == 0, result.stderr

        # And when Redis does not answer, it fails, saying so
        result = _run_check(worker_check, "redis://127.0.0.1:1/0")
        assert result.returncode != 0 and "PING" in result.stderr
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_worker_health_check_fails_without_a_dramatiq_process(
    worker_check: str, redis_url: str
) -> None:
    # Given a Redis that answers but no process carrying the marker (the check's own command
    # line, which holds it too, does not count)
    # When the check runs, then it fails, saying why
    result = _run_check(worker_check, redis_url)
    assert result.returncode != 0 and "no Dramatiq process" in result.stderr


# -- the image -------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_the_image_installs_the_runtime_dependencies_only_with_the_constraints() -> None:
    # Given the Dockerfile's instructions
    instructions = dockerfile_instructions()
    copies = " ".join(line for line in instructions if line.startswith("COPY "))
    installs = [line for line in instructions if "pip install" in line]

    # Then it copies constraints.txt and installs the package from the repository with it, ...
    assert "constraints.txt" in copies.split()
    assert len(installs) == 1, installs
    words = shlex.split(installs[0].split("pip install", 1)[1].split("&&")[0])
    assert words == ["-c", "constraints.txt", "."], words
    # ... never an extra (dev, test tools), nor anything else
    assert "[" not in installs[0]
    assert not [line for line in instructions if re.search(r"apt-get|apk add", line)]
    # ... and it has a health check
    assert any(line.startswith("HEALTHCHECK ") for line in instructions)


def test_the_image_runs_as_a_non_root_user_and_bakes_in_no_secret() -> None:
    # Given the Dockerfile and .dockerignore
    dockerfile = DOCKERFILE.read_text()
    instructions = dockerfile_instructions()
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    # Then it runs as a user that is not root ...
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    # ... sets no secret-looking variable and never copies a local .env into the image
    for line in instructions:
        if line.startswith(("ENV ", "ARG ")):
            assert not any(word in line.upper() for word in SECRET_WORDS), line
    assert ".env" in ignored and ".git" in ignored and ".venv" in ignored
    assert "constraints.txt" not in ignored
    assert "COPY . " not in dockerfile


# -- constraints.txt -------------------------------------------------------------------------------


def constraints() -> dict[str, str]:
    """Each pinned distribution's version, by normalised name."""
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, separator, version = line.partition("==")
            assert separator and version.strip(), f"not pinned as name==version: {line}"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def installed_closure(requirements: list[Requirement]) -> set[str]:
    """The distributions ``requirements`` need, transitively, as installed here (each one's
    requirements read from its metadata, with the extras asked of it)."""
    expanded: dict[str, set[str]] = {}  # name -> the extras whose requirements were added
    pending = list(requirements)
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if name in expanded and extras <= expanded[name]:
            continue
        expanded.setdefault(name, set()).update(extras)
        for text in metadata.requires(requirement.name) or []:
            inner = Requirement(text)
            if inner.marker is None or any(
                inner.marker.evaluate({"extra": extra}) for extra in {"", *extras}
            ):
                pending.append(inner)
    return set(expanded)


def test_constraints_pin_every_runtime_dependency_and_nothing_else() -> None:
    # Given constraints.txt and pyproject.toml's runtime dependencies
    pins = constraints()
    requirements = runtime_requirements()

    # Then every direct dependency is pinned, at a version its specifier allows ...
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in constraints.txt: run `make constraints`"
        assert requirement.specifier.contains(pins[name], prereleases=True), requirement
    # ... and so is everything they need, as installed here, and nothing more (no dev tool)
    needed = installed_closure(requirements)
    assert not needed - set(pins), f"missing: {sorted(needed - set(pins))}; run make constraints"
    assert not set(pins) - needed, f"not runtime dependencies: {sorted(set(pins) - needed)}"
    assert "soulspot-jobs" not in pins


# -- Procfile and Makefile -------------------------------------------------------------------------


def test_the_procfile_runs_both_processes_from_the_checkouts_venv_or_path() -> None:
    # Given the Procfile
    lines = (ROOT / "Procfile").read_text().splitlines()
    processes = dict(line.split(": ", 1) for line in lines if line.strip())

    # Then web serves on $PORT, on loopback unless WEB_HOST says otherwise, and worker runs the
    # worker command; each finds soulspot-jobs in the checkout's .venv first, then on PATH
    assert set(processes) == {"web", "worker"}
    venv_first = 'PATH="$PWD/.venv/bin:$PATH" exec '
    assert processes["web"].startswith(venv_first + "soulspot-jobs serve ")
    assert '--host "${WEB_HOST:-127.0.0.1}"' in processes["web"]
    assert '--port "${PORT:-8000}"' in processes["web"]
    assert processes["worker"] == venv_first + "soulspot-jobs worker"


@pytest.fixture
def make() -> str:
    binary = shutil.which("make")
    if binary is None:
        pytest.skip("no make here")
    return binary


def _dry_run(make: str, target: str, venv: Path) -> list[str]:
    result = subprocess.run(
        [make, "-n", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_make_demo_installs_the_runtime_dependencies_and_make_test_adds_the_dev_tools(
    make: str, tmp_path: Path
) -> None:
    # Given no virtualenv yet
    venv = tmp_path / "venv"

    # When `make demo` and `make test` are dry-run
    demo = _dry_run(make, "demo", venv)
    test = _dry_run(make, "test", venv)

    # Then the demo installs the package alone; the tests add the dev extra
    assert f"{venv}/bin/pip install -e ." in demo
    assert not [line for line in demo if "[dev]" in line]
    assert f"{venv}/bin/pip install -e '.[dev]'" in test


def test_make_installs_nothing_once_the_stamps_are_newer_than_pyproject(
    make: str, tmp_path: Path
) -> None:
    # Given a virtualenv whose two stamps are newer than pyproject.toml
    venv = tmp_path / "venv"
    venv.mkdir()
    later = (ROOT / "pyproject.toml").stat().st_mtime + 60
    for stamp in (".installed-run", ".installed-dev"):
        (venv / stamp).touch()
        os.utime(venv / stamp, (later, later))

    # When `make demo` and `make test` are dry-run, then neither installs anything
    for target in ("demo", "test"):
        assert not [line for line in _dry_run(make, target, venv) if "pip install" in line]
