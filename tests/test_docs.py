"""A command shown in the docs is run by a test: this one.

The shell commands of README.md and docs/operating.md run in order, as a self-hoster types them
(see :mod:`tests.docs_commands`): in a fresh working directory holding the README's ``.env``
with its URLs pointing at fake upstream servers, no ``REDIS_URL`` (so on the embedded Redis of a
temporary data directory), the virtualenv first on PATH. Long-running commands go to the
background and are stopped with SIGTERM at the end; every job a command enqueues into a shell
variable must reach ``done``. Every other documented command is listed in :data:`NOT_RUN` with
the reason and the test that covers it instead, so a new command in the docs cannot go untested.

The README's caller-supplied-backend example runs too, and the README stays a short front door
that links every page of the manual.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest
import redis

from soulspot_jobs.embedded import SharedRedis
from soulspot_jobs.fakes.catalog import CATALOG
from soulspot_jobs.fakes.musicbrainz import FakeMusicBrainz
from soulspot_jobs.fakes.slskd import FakeSlskd
from soulspot_jobs.fakes.spotify import DEFAULT_USER, FakeSpotify
from soulspot_jobs.jobs.records import JobStore
from soulspot_jobs.jobs.validation import parse_playlist_id
from soulspot_jobs.keys import LAYOUT, Keys
from tests.docs_commands import (
    ROOT,
    Block,
    Command,
    Session,
    block_commands,
    code_blocks,
    documented_commands,
    fenced_blocks,
    split_comment,
)

README = ROOT / "README.md"
DOCS = ROOT / "docs"
OPERATING = DOCS / "operating.md"
BENCH_README = ROOT / "bench" / "README.md"
#: The README is a front door, not a manual.
README_MAX_BYTES = 10_240
#: Environment variables the commands read their settings from; a session starts without any of
#: them, as on a machine where nothing was set but the README's ``.env``.
SETTING_VARIABLES = (
    "REDIS_URL",
    "BROKER_URL",
    "SOULSPOT_",
    "SLSKD_",
    "MUSICBRAINZ_",
    "SPOTIFY_",
    "CIRCUIT_BREAKER_",
    "RECOVERY_",
    "LOG_",
)
#: Set in the session's environment so that a job's polls and lookups take tenths of a second
#: rather than seconds (the environment wins over ``.env``; the fakes' rules allow it).
FAST_POLLS = {
    "SLSKD_SEARCH_POLL_INTERVAL": "0.1",
    "SLSKD_DOWNLOAD_POLL_INTERVAL": "0.1",
    "MUSICBRAINZ_MIN_INTERVAL": "0.3",
}
#: Seconds a documented job may take to be done.
JOB_DEADLINE = 30.0


class NotRun(NamedTuple):
    """Why a documented command is not run here, and which test covers it instead."""

    reason: str
    covered_by: str


#: Documented commands this test does not run, exactly as the docs write them.
NOT_RUN: dict[str, NotRun] = {
    "make demo": NotRun(
        "builds .venv and runs the whole demo, about a minute",
        "tests/demo/test_scenario.py runs `soulspot-jobs demo`, which is what it runs",
    ),
    "make test": NotRun(
        "runs the whole suite, this test included",
        ".ci/run (CI) runs exactly this",
    ),
    "soulspot-jobs worker --watch": NotRun(
        "restarts the workers on file changes, for development",
        "tests/operate/test_worker_command.py::"
        "test_worker_watch_restarts_the_workers_when_a_py_file_changes",
    ),
    "soulspot-jobs redis stop": NotRun(
        "would stop the Redis under the session's running workers",
        "tests/embedded/test_shared.py::test_redis_stop_stops_a_server_in_use_and_keeps_its_data",
    ),
    "honcho start": NotRun(
        "starts the Procfile's processes, for as long as it runs",
        "tests/operate/test_procfile.py runs `honcho start` on loopback",
    ),
    "docker-compose up -d --build --scale worker=3": NotRun(
        "no Docker engine here",
        "tests/test_deployment_files.py checks the files and runs `docker-compose config`",
    ),
    "BROKER_URL=amqp://user:password@rabbit:5672/%2F REDIS_URL=redis://redis:6379/0 "
    "soulspot-jobs worker": NotRun(
        "needs a RabbitMQ host",
        "tests/engines/test_rabbitmq.py runs the workers on a RabbitMQ node of its own",
    ),
    "SOULSPOT_ADMIN_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe())') "
    "soulspot-jobs serve --port 8000": NotRun(
        "serves the page until stopped, with a token nobody else knows",
        "tests/operate/web/ serve the page with an admin token and drive it in Chromium",
    ),
    'curl -s -X POST -H "Authorization: Bearer $SOULSPOT_ADMIN_TOKEN" '
    "http://127.0.0.1:8000/actions/breakers/slskd/reset": NotRun(
        "needs the page of the line above serving",
        "tests/operate/web/test_actions.py::test_a_script_with_the_admin_token_acts_and_gets_json",
    ),
}


def manual_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def all_documented_commands() -> list[Command]:
    return [c for page in [README, *manual_pages()] for c in documented_commands(page)]


def readme_dotenv() -> dict[str, str]:
    """The ``.env`` the README tells a self-hoster to write, as variables."""
    [block] = [text for text in code_blocks(README, "dotenv") if "SLSKD_URL=" in text]
    pairs = (line.split("=", 1) for line in block.splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs}


def documented_playlists() -> set[str]:
    """The playlist ids the documented ``enqueue playlist`` commands name."""
    found = set()
    for command in all_documented_commands():
        words = shlex.split(command.text.split("=$(", 1)[-1].rstrip(")"))
        for index, word in enumerate(words[:-1]):
            if word == "playlist" and words[index - 1] == "enqueue":
                found.add(parse_playlist_id(words[index + 1]))
    return found


# -- the upstreams, the environment and the session --------------------------------------------


@dataclass
class Upstreams:
    slskd: FakeSlskd
    musicbrainz: FakeMusicBrainz
    spotify: FakeSpotify


@pytest.fixture
def upstreams() -> Iterator[Upstreams]:
    """Fake slskd, MusicBrainz and Spotify on free loopback ports, taking the README's
    credentials, with each documented playlist owned by the user of the refresh token."""
    env = readme_dotenv()
    with (
        FakeSlskd(api_key=env["SLSKD_API_KEY"], search_duration=0.2, transfer_duration=0.3) as sl,
        FakeMusicBrainz(min_interval=0.2) as mb,
        FakeSpotify(
            client_id=env["SPOTIFY_CLIENT_ID"], client_secret=env["SPOTIFY_CLIENT_SECRET"]
        ) as sp,
    ):
        for playlist in documented_playlists():
            sp.add_playlist(playlist, list(CATALOG[:2]), owner=DEFAULT_USER)
        yield Upstreams(sl, mb, sp)


def write_dotenv(directory: Path, upstreams: Upstreams) -> None:
    """The README's ``.env``, its URLs and refresh token pointing at the fakes."""
    env = readme_dotenv()
    env["SLSKD_URL"] = upstreams.slskd.url
    env["SPOTIFY_REFRESH_TOKEN"] = upstreams.spotify.refresh_token
    env["SPOTIFY_API_URL"] = env["SPOTIFY_ACCOUNTS_URL"] = upstreams.spotify.url
    env["MUSICBRAINZ_URL"] = upstreams.musicbrainz.url
    (directory / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))


def self_hoster_environment(data_dir: Path) -> dict[str, str]:
    """No setting but the data directory; the virtualenv first on PATH, as activating it does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_VARIABLES)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SOULSPOT_DATA_DIR"] = str(data_dir)
    env.update(FAST_POLLS)
    return env


class JobStates:
    """Reads job states from the embedded Redis of a data directory (once it runs)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.client: redis.Redis | None = None

    def __call__(self, job_id: str) -> str | None:
        if self.client is None:
            status = SharedRedis(self.data_dir).status()
            if not status.running or status.url is None:
                return None
            self.client = redis.Redis.from_url(status.url)
        job = JobStore(self.client, Keys()).get(job_id)
        return None if job is None else job.state.value

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


@pytest.fixture
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def session(
    tmp_path: Path, data_dir: Path, upstreams: Upstreams, free_port: int
) -> Iterator[Session]:
    """A terminal in a fresh directory holding the README's ``.env``; whatever it left running
    is killed afterwards (the ``data_dir`` fixture then stops the embedded Redis)."""
    home = tmp_path / "home"
    home.mkdir()
    write_dotenv(home, upstreams)
    states = JobStates(data_dir)
    terminal = Session(
        home,
        self_hoster_environment(data_dir),
        port=free_port,
        job_state=states,
        job_deadline=JOB_DEADLINE,
    )
    yield terminal
    terminal.kill()
    states.close()


def run_page(session: Session, page: Path) -> dict[str, int | None]:
    """Run every command of ``page`` but those in :data:`NOT_RUN`; the background ones' exit
    statuses once stopped with SIGTERM."""
    for command in documented_commands(page):
        if command.text not in NOT_RUN:
            session.run(command)
    return session.stop()


# -- every documented command is run, or listed with a reason ----------------------------------


def test_every_documented_command_is_run_by_a_session_or_listed_as_not_run() -> None:
    # Given every shell command of the README and the manual
    commands = all_documented_commands()
    run_pages = {README.relative_to(ROOT).as_posix(), OPERATING.relative_to(ROOT).as_posix()}

    # When the commands that no session runs are collected
    unrun = [c for c in commands if c.where.rsplit(":", 1)[0] not in run_pages]

    # Then each of them is listed as not run, with a reason and the test covering it
    missing = [f"{c.where}: {c.text}" for c in unrun if c.text not in NOT_RUN]
    assert not missing, "documented commands nobody runs (run them, or list them in NOT_RUN)"
    assert commands and all(reason.reason and reason.covered_by for reason in NOT_RUN.values())


def test_no_command_is_listed_as_not_run_unless_the_docs_show_it() -> None:
    # Given the documented commands
    documented = {c.text for c in all_documented_commands()}

    # Then every entry of NOT_RUN is still documented, and names a test file that exists
    assert set(NOT_RUN) <= documented, set(NOT_RUN) - documented
    for entry in NOT_RUN.values():
        path = entry.covered_by.split("::")[0].split()[0]
        assert (ROOT / path).exists(), path


def test_the_readme_commands_run_as_a_self_hoster_types_them(session: Session) -> None:
    # Given a terminal with the README's .env, fake upstreams and no Redis running
    # When every command of the README runs in order (make demo and make test aside)
    codes = run_page(session, README)

    # Then each exited as documented and every job it enqueued was done (checked as it ran),
    # and the workers and the endpoints stopped cleanly on SIGTERM
    assert codes and all(code == 0 for code in codes.values()), codes
    assert "soulspot-jobs worker" in codes
    # And what the shell kept were job ids (each of which reached done)
    assert session.variables
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in session.variables.values())


def test_the_operating_guide_commands_run_as_written(session: Session) -> None:
    # Given a terminal with the README's .env, fake upstreams and no Redis running
    # When every command of docs/operating.md runs in order
    codes = run_page(session, OPERATING)

    # Then each exited with its documented status, and the background ones stopped with 0
    assert codes and all(code == 0 for code in codes.values()), codes
    assert any(o.command.status != 0 for o in session.outcomes)  # the error examples ran too


# -- the README's Python example ---------------------------------------------------------------


def test_the_readme_backend_example_runs_its_message_and_leaves_no_thread_behind(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # Given the README's example with a caller-supplied backend, on the test Redis
    examples = code_blocks(README, "python")
    [example] = [block for block in examples if "RedisBackend.from_url" in block]
    literal = re.search(r'RedisBackend\.from_url\("([^"]+)"\)', example)
    assert literal is not None
    script = example.replace(literal.group(1), redis_url) + (
        "\n\nimport json as _json, threading as _threading\n"
        "print(_json.dumps([t.name for t in _threading.enumerate() if t.is_alive()]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_VARIABLES)}

    # When it runs in a fresh interpreter
    finished = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**env, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Then it ends cleanly, with no thread of ours alive (the caller closed its backend)
    assert finished.returncode == 0, finished.stderr
    threads = json.loads(finished.stdout.strip().splitlines()[-1])
    assert not [name for name in threads if name.startswith("soulspot")], threads
    # And the message ran through its breaker: one success counted for slskd-api
    successes = redis_client.hget(f"{Keys().breakers}:slskd-api", "total_successes")
    assert int(successes or 0) == 1


# -- the README is a front door; the manual's links hold ----------------------------------------


def test_the_readme_is_at_most_10_kib_and_links_every_manual_page() -> None:
    # Given the README
    text = README.read_text(encoding="utf-8")

    # Then it is small, and links every page of docs/ and the benchmarks' README
    assert len(README.read_bytes()) <= README_MAX_BYTES
    linked = {target.split("#")[0] for target in _links(text)}
    pages = {page.relative_to(ROOT).as_posix() for page in manual_pages()}
    assert pages and pages <= linked, pages - linked
    assert "bench/README.md" in linked


def test_every_local_link_of_the_docs_leads_to_a_file_and_heading_that_exist() -> None:
    # Given every link of the README, the manual and the benchmarks' README
    broken = []
    for page in [README, BENCH_README, *manual_pages()]:
        for target in _links(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page

            # Then the file exists, and so does the heading it points at
            if not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_redis_keys_table_is_the_layout_of_keys_py() -> None:
    # Given the Redis keys table of the architecture page
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in (DOCS / "architecture.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `<prefix>:")
    ]

    # Then it lists keys.LAYOUT, in order (a key belongs to the first family it matches)
    expected = [
        [
            f"`{family.pattern.replace('{prefix}', '<prefix>')}`",
            family.owner,
            family.lifetime,
            "yes" if family.persistent else "no",
        ]
        for family in LAYOUT
    ]
    assert rows == expected


# -- how commands are read out of Markdown -------------------------------------------------------


def test_a_console_block_yields_its_prompted_lines_with_their_documented_exit_status() -> None:
    # Given a console block with commands, output and an exit status in a comment
    block = Block(
        "console",
        10,
        (
            "$ soulspot-jobs status   # exits 1",
            "error: cannot reach Redis",
            '$ job=$(soulspot-jobs enqueue download "A - B")',
            "$ soulspot-jobs jobs show \\",
            '>   "$job"',
        ),
    )

    # When its commands are read
    commands = block_commands(block, "page.md")

    # Then only the prompted lines are commands, continuations joined, statuses kept
    assert commands == [
        Command("soulspot-jobs status", "page.md:10", 1),
        Command('job=$(soulspot-jobs enqueue download "A - B")', "page.md:12", 0),
        Command('soulspot-jobs jobs show "$job"', "page.md:13", 0),
    ]


def test_comments_are_dropped_as_bash_drops_them() -> None:
    # Given lines with a '#' after a blank, inside quotes, inside a word, and at the start
    # Then only a '#' at the start or after a blank, outside quotes, starts a comment
    assert split_comment("make demo   # run it") == ("make demo", "run it")
    assert split_comment('echo "C# minor" # key') == ('echo "C# minor"', "key")
    assert split_comment("curl http://h/#anchor") == ("curl http://h/#anchor", "")
    assert split_comment("# only a comment") == ("", "only a comment")


def test_a_bash_block_skips_comment_lines_and_a_here_document_is_refused() -> None:
    # Given bash blocks, one with a comment line and one with a here-document
    fine = Block("bash", 1, ("# set up", "", "make setup  # once"))
    heredoc = Block("bash", 1, ("cat > .env <<'ENV'", "A=1", "ENV"))

    # Then the first yields its one command, and the second is refused
    assert block_commands(fine, "p.md") == [Command("make setup", "p.md:3")]
    with pytest.raises(ValueError, match="here-documents"):
        block_commands(heredoc, "p.md")


def test_fenced_blocks_are_found_with_their_language_and_first_line() -> None:
    # Given Markdown with a bash and a python block
    markdown = "text\n```bash\nls\n```\n\n```python\nx = 1\n```\n"

    # When its blocks are read
    blocks = fenced_blocks(markdown)

    # Then each comes with its language, the number of its first line and its lines
    assert blocks == [Block("bash", 3, ("ls",)), Block("python", 7, ("x = 1",))]


# -- helpers -----------------------------------------------------------------------------------


def _links(markdown: str) -> list[str]:
    """Targets of the Markdown links of ``markdown`` outside fenced blocks."""
    return re.findall(r"\]\(([^)\s]+)\)", _prose(markdown))


def _prose(markdown: str) -> str:
    """``markdown`` without its fenced blocks."""
    kept, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return "\n".join(kept)


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of ``page``'s headings: lower case, punctuation dropped,
    spaces as hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", _prose(page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
