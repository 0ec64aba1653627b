"""The shell commands the docs show, read out of their Markdown, and a session that runs them.

Commands are the lines of the fenced blocks marked ``bash``, ``sh``, ``shell`` or ``console``:

* in ``bash``/``sh``/``shell`` blocks every line is a command, except blank lines and comments;
* in ``console`` blocks only the lines after the prompt ``$ `` are; the others are their output.

A trailing ``# comment`` is dropped; a comment saying ``exits N`` gives the exit status the
command is documented to end with (0 otherwise). A line ending in ``\\`` continues on the next.
Here-documents are refused: a command must fit on its lines as written.

:class:`Session` runs commands one after another the way a self-hoster types them in a terminal
that ran ``source .venv/bin/activate``: each in a ``bash`` of its own, in one working directory,
with one environment. ``NAME=$(command)`` keeps the output as the shell variable ``NAME`` for the
commands after it. Long-running commands (the workers, ``serve``) are started in the background
and waited for until they are ready; :meth:`Session.stop` ends them with SIGTERM.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.polling import wait_until
from tests.processes import Spawned

#: The repository's root: README.md and docs/ are read from here.
ROOT = Path(__file__).resolve().parents[1]
#: Fenced-block languages whose lines are shell commands.
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console"})
#: What marks a command in a ``console`` block.
PROMPT = "$ "
#: What ``source .venv/bin/activate`` does, the session does by putting the venv first on PATH.
ACTIVATE = frozenset({"source .venv/bin/activate", ". .venv/bin/activate"})
#: Commands that run until they are stopped, by how they begin (after any ``VAR=value``).
LONG_RUNNING = ("soulspot-jobs worker", "soulspot-jobs serve", "dramatiq soulspot_jobs.worker")
#: The port the docs show for ``soulspot-jobs serve``; a session replaces it with a free one.
DOCUMENTED_PORT = 8000
#: What Dramatiq logs when one worker process has started consuming.
WORKER_READY = "Worker process is ready for action."
#: Seconds a command may take; seconds a long-running one may take to be ready, and to stop.
COMMAND_DEADLINE = 60.0
START_DEADLINE = 60.0
STOP_DEADLINE = 30.0

_FENCE = re.compile(r"^\s*```\s*([\w-]*)")
_EXITS = re.compile(r"\bexits (\d+)\b")
_ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)=\$\((.*)\)$")
_LEADING_VARIABLES = re.compile(r"^((?:[A-Za-z_]\w*=\S*\s+)*)(.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, the line number of its first line, its lines."""

    language: str
    first_line: int
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Command:
    """One documented command, as written (continuations joined), and where it is written."""

    text: str
    where: str
    #: The exit status the docs promise (a trailing ``# exits N``), else 0.
    status: int = 0


def fenced_blocks(markdown: str) -> list[Block]:
    """Every fenced block of ``markdown``, in order."""
    blocks: list[Block] = []
    language: str | None = None
    first = 0
    lines: list[str] = []
    for number, line in enumerate(markdown.splitlines(), start=1):
        fence = _FENCE.match(line)
        if language is None:
            if fence:
                language, first, lines = fence.group(1).lower(), number + 1, []
        elif line.strip() == "```":
            blocks.append(Block(language, first, tuple(lines)))
            language = None
        else:
            lines.append(line)
    return blocks


def split_comment(line: str) -> tuple[str, str]:
    """``line`` as ``(code, comment)``: a ``#`` starts a comment at the start of the line or
    after a blank, outside quotes, as in bash."""
    quote: str | None = None
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip(), line[index + 1 :].strip()
    return line.rstrip(), ""


def block_commands(block: Block, source: str) -> list[Command]:
    """The commands of one shell block; ``source`` names its file in ``Command.where``."""
    commands: list[Command] = []
    console = block.language == "console"
    pending: list[str] = []
    pending_line = 0
    for offset, raw in enumerate(block.lines):
        number = block.first_line + offset
        if pending:
            line = raw.strip()
            line = line[2:] if line.startswith("> ") else line
        elif console:
            if not raw.startswith(PROMPT):
                continue  # output
            line, pending_line = raw[len(PROMPT) :], number
        else:
            line, pending_line = raw, number
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1].strip())
            continue
        code, comment = split_comment(line)
        text = " ".join([*pending, code.strip()]).strip()
        pending = []
        if "<<" in text:
            raise ValueError(f"{source}:{pending_line}: here-documents are not supported: {text}")
        exits = _EXITS.search(comment)
        status = int(exits.group(1)) if exits else 0
        commands.append(Command(text, f"{source}:{pending_line}", status))
    if pending:
        raise ValueError(f"{source}:{pending_line}: a continued line never ends")
    return commands


def documented_commands(path: Path) -> list[Command]:
    """Every shell command of the Markdown file ``path``, in order."""
    source = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    blocks = fenced_blocks(path.read_text(encoding="utf-8"))
    return [
        command
        for block in blocks
        if block.language in SHELL_LANGUAGES
        for command in block_commands(block, source)
    ]


def code_blocks(path: Path, language: str) -> list[str]:
    """The text of every fenced block of ``language`` in ``path``."""
    blocks = fenced_blocks(path.read_text(encoding="utf-8"))
    return ["\n".join(block.lines) for block in blocks if block.language == language]


def program_of(text: str) -> str:
    """The command without the ``VAR=value`` assignments it may begin with."""
    match = _LEADING_VARIABLES.match(text)
    assert match is not None
    return match.group(2)


def is_long_running(text: str) -> bool:
    return program_of(text).startswith(LONG_RUNNING)


def worker_processes(text: str) -> int:
    """How many worker processes a worker command starts (Dramatiq's default: one per CPU)."""
    words = shlex.split(program_of(text))
    for index, word in enumerate(words[:-1]):
        if word in ("--processes", "-p"):
            return int(words[index + 1])
    return os.cpu_count() or 1


@dataclass
class Outcome:
    """What a command run in the foreground printed, and how it exited."""

    command: Command
    code: int
    stdout: str
    stderr: str


class Session:
    """Documented commands run in order, in ``cwd``, with ``env`` (see the module docstring).

    ``port`` replaces :data:`DOCUMENTED_PORT`. ``job_state(job_id)`` reads a job's state; a job
    id kept from ``soulspot-jobs enqueue`` in a shell variable must reach ``done``, waited for
    right after the command (within ``job_deadline`` seconds).
    """

    def __init__(
        self,
        cwd: Path,
        env: Mapping[str, str],
        *,
        port: int,
        job_state: Callable[[str], str | None],
        job_deadline: float = 30.0,
    ) -> None:
        self.cwd = cwd
        self.env = dict(env)
        self.port = port
        self.job_state = job_state
        self.job_deadline = job_deadline
        #: Shell variables set by ``NAME=$(command)``.
        self.variables: dict[str, str] = {}
        self.outcomes: list[Outcome] = []
        self.background: list[tuple[Command, Spawned]] = []
        #: Every command run, in order (the activation included).
        self.ran: list[Command] = []

    # -- running ---------------------------------------------------------------------------

    def localise(self, text: str) -> str:
        """``text`` with the documented port replaced by the session's."""
        port = str(self.port)
        text = re.sub(rf"(?<=--port ){DOCUMENTED_PORT}\b", port, text)
        return re.sub(rf"(?<=127\.0\.0\.1:|localhost:){DOCUMENTED_PORT}\b", port, text)

    def run(self, command: Command) -> None:
        """Run one command as documented; fail the test when it does not do as documented."""
        self.ran.append(command)
        text = self.localise(command.text)
        if text in ACTIVATE:
            bin_dir = Path(self.env["PATH"].split(os.pathsep)[0])
            assert (bin_dir / "activate").is_file(), f"{command.where}: PATH starts {bin_dir}"
            return
        assignment = _ASSIGNMENT.match(text)
        if assignment is not None:
            name, inner = assignment.groups()
            outcome = self._foreground(command, inner)
            value = outcome.stdout.strip()
            self.variables[name] = value
            if program_of(inner).startswith("soulspot-jobs enqueue"):
                self._wait_done(command, value)
            return
        if is_long_running(text):
            self._start(command, text)
            return
        self._foreground(command, text)

    def _environment(self) -> dict[str, str]:
        return {**self.env, **self.variables}

    def _foreground(self, command: Command, text: str) -> Outcome:
        finished = subprocess.run(
            ["bash", "-c", text],
            cwd=self.cwd,
            env=self._environment(),
            capture_output=True,
            text=True,
            timeout=COMMAND_DEADLINE,
        )
        outcome = Outcome(command, finished.returncode, finished.stdout, finished.stderr)
        self.outcomes.append(outcome)
        assert outcome.code == command.status, (
            f"{command.where}: `{text}` exited {outcome.code}, documented {command.status}\n"
            f"stdout: {outcome.stdout[-2000:]}\nstderr: {outcome.stderr[-2000:]}"
        )
        return outcome

    def _start(self, command: Command, text: str) -> None:
        """Start a long-running command (``exec``'d, so that signals reach it) and wait until
        it is ready: every worker process ready, or ``/health`` answering."""
        variables, program = _LEADING_VARIABLES.match(text).groups()  # type: ignore[union-attr]
        spawned = Spawned(
            ["bash", "-c", f"{variables}exec {program}"], env=self._environment(), cwd=self.cwd
        )
        self.background.append((command, spawned))
        if program.startswith("soulspot-jobs serve"):
            url = f"http://127.0.0.1:{self.port}/health"

            def answers() -> bool:
                assert spawned.process.poll() is None, (
                    f"{command.where}: `{text}` exited {spawned.process.returncode}:\n"
                    + "".join(spawned.stderr[-20:])
                )
                return _answers(url)

            wait_until(answers, f"{command.where}: {url} to answer", START_DEADLINE)
        else:
            spawned.wait_for(WORKER_READY, count=worker_processes(text), timeout=START_DEADLINE)

    def _wait_done(self, command: Command, job_id: str) -> None:
        final = ("done", "failed")
        wait_until(
            lambda: self.job_state(job_id) in final,
            f"job {job_id} of {command.where} to finish",
            self.job_deadline,
        )
        assert self.job_state(job_id) == "done", f"{command.where}: job {job_id} failed"

    # -- stopping --------------------------------------------------------------------------

    def stop(self) -> dict[str, int | None]:
        """SIGTERM every background command at once, as closing the terminals would; their
        exit statuses by command (``None``: still running :data:`STOP_DEADLINE` seconds later,
        then killed)."""
        for _, spawned in self.background:
            spawned.process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for command, spawned in self.background:
            try:
                codes[command.text] = spawned.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                codes[command.text] = None
            finally:
                spawned.kill_group()
        self.background.clear()
        return codes

    def kill(self) -> None:
        """Kill whatever still runs (clean-up after a failure)."""
        for _, spawned in self.background:
            spawned.kill_group()
        self.background.clear()


def _answers(url: str) -> bool:
    """Whether an HTTP server answers ``url`` at all (any status)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
